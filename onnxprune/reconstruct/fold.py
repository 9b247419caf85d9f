"""Folding a fit into the consumer's weights and bias: exact algebra, no layer added."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis import Analysis
from .consumers import Consumer


def weight_blocks(w: np.ndarray, c: Consumer) -> tuple[np.ndarray, int | None]:
    """The weight as [..., C_observed, P] (in-dim last) and the out axis's position in it."""
    moved = np.moveaxis(w, c.in_dim.axis, -1)
    out_axis = None
    if c.out_axis is not None:
        out_axis = c.out_axis if c.out_axis < c.in_dim.axis else c.out_axis - 1
    return moved[..., c.positions], out_axis


def fold(w: np.ndarray, c: Consumer, a: np.ndarray, kept_channels: np.ndarray):
    """Folded weight (in-dim reduced to the kept channels' atoms, other axes untouched) and the
    bias delta per output of the consumer (None where the consumer has no output axis)."""
    w3, out_axis = weight_blocks(w, c)  # [..., C, P]
    rows = np.moveaxis(w3, -2, -1)  # [..., P, C]
    new = (rows.reshape(-1, rows.shape[-1]) @ a[:, :-1]).reshape(*rows.shape[:-1], a.shape[1] - 1)
    new = np.moveaxis(new, -1, -2)  # [..., K, P]; one 2-D matmul (a batched one loops per row)
    delta = None
    if out_axis is not None:
        contrib = (w3 * a[:, -1][:, None]).sum(axis=(-2, -1))
        delta = contrib.sum(axis=tuple(i for i in range(contrib.ndim) if i != out_axis)) if contrib.ndim else contrib
    k = len(kept_channels)
    folded = new.reshape(*new.shape[:-2], k * c.positions.shape[1])
    return np.moveaxis(folded, -1, c.in_dim.axis), delta


def apply_folds(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, fits: dict[int, np.ndarray],
                consumers: list[Consumer], in_place: bool = False) -> onnx.ModelProto:
    """Write folded weights (sliced like the plain rewrite on every other pruned axis) and biases.
    Each consumer must be folded once: LDRF folds wave by wave ``in_place`` into one copy."""
    proto = pruned if in_place else copy.deepcopy(pruned)
    inits = {t.name: t for t in proto.graph.initializer}
    atoms = analysis.kept_atoms(keep)
    for i, c in enumerate(consumers):
        if i not in fits:
            continue
        o_dim = analysis.by_key[(c.observed, c.observed_axis)]
        kept_channels = np.flatnonzero(atoms[o_dim.offset : o_dim.offset + o_dim.size])
        w = np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64)
        new_w, delta = fold(w, c, fits[i], kept_channels)
        new_w = slice_other_axes(analysis, atoms, c.weight, new_w, skip_axis=c.in_dim.axis)
        dtype = numpy_helper.to_array(inits[c.weight]).dtype
        inits[c.weight].CopyFrom(numpy_helper.from_array(new_w.astype(dtype), c.weight))
        if delta is not None and np.any(delta != 0) and analysis.model.graph.nodes[c.node].op != "MatMul":
            add_bias(analysis, atoms, proto, inits, c, delta, dtype)
    return proto


def slice_other_axes(analysis, atoms, name, array, skip_axis):
    """``array`` (the initializer ``name``'s new value) with the pruned channels of every analysed
    axis but ``skip_axis`` removed, as the rewrite removed them (used by the OBS fold too)."""
    for (tname, axis), d in analysis.by_key.items():
        if tname == name and axis != skip_axis:
            array = np.take(array, np.flatnonzero(atoms[d.offset : d.offset + d.size]), axis=axis)
    return array


def add_bias(analysis, atoms, proto, inits, c: Consumer, delta, dtype) -> None:
    """Add ``delta`` (per output channel of the unpruned consumer, in ``A @ B`` units) to the
    consumer's bias in ``proto``, creating the bias input where it has none."""
    out_dim = next((d for (t, a), d in analysis.by_key.items() if t == c.weight and a == c.out_axis), None)
    if out_dim is not None:
        delta = delta[np.flatnonzero(atoms[out_dim.offset : out_dim.offset + out_dim.size])]
    node = proto.graph.node[c.node]
    if node.op_type == "Gemm":  # Y = alpha A B + beta C
        attrs = {a.name: a.f for a in node.attribute if a.name in ("alpha", "beta")}
        delta = delta * attrs.get("alpha", 1.0) / (attrs.get("beta", 1.0) or 1.0)
    if c.bias is not None:
        current = numpy_helper.to_array(inits[c.bias])
        inits[c.bias].CopyFrom(numpy_helper.from_array((current + delta.reshape(current.shape)).astype(current.dtype), c.bias))
        return
    if node.op_type == "ConvTranspose":
        return  # a strided transpose conv spreads a constant unevenly: no exact bias exists
    attach_bias(proto, inits, node, f"{c.weight}_onnxprune_bias", delta.astype(dtype))


def attach_bias(proto: onnx.ModelProto, inits: dict, node: onnx.NodeProto, name: str, values: np.ndarray) -> str:
    """Give a Conv/Gemm ``node`` that has no bias the initializer ``name`` (``values``, added
    once) as its third input, and make a Gemm's ``beta`` count it (beta 0 would ignore it).
    Reconstruction, the compensated sensitivity session and the OBS refit all need this."""
    if name not in inits:
        proto.graph.initializer.append(numpy_helper.from_array(values, name))
        inits[name] = proto.graph.initializer[-1]
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    if node.op_type == "Gemm":
        for attr in node.attribute:
            if attr.name == "beta" and attr.f == 0.0:
                attr.f = 1.0
    return name


# --- orchestration --------------------------------------------------------------------------------
