"""Rewrite: apply a keep vector to the model, producing a slimmer ONNX model.

The rewrite edits a copy of the normalised proto in place rather than re-exporting an
onnx-graphsurgeon graph: node order, names, attributes, opset, IR version, metadata and
symbolic input dimensions then survive untouched, and only what pruning changes differs.
Three things change: constants are sliced along their pruned axes, the rules' patches fix
attributes and shape constants (a depthwise Conv's ``group``, Split sizes, Slice bounds,
Reshape targets), and stale intermediate shapes are dropped and re-inferred.

    pruned = rewrite(analysis, allocation.keep)
    verify(analysis.model, pruned)
"""

from __future__ import annotations

import copy
from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .analysis import Analysis, Dim
from .errors import ModelError, first_line
from .model.graph import graph_inputs
from .runtime.session import run


class PatchContext:
    """What a rule's patch sees at rewrite time."""

    def __init__(self, analysis: Analysis, keep_atoms: np.ndarray, proto: onnx.ModelProto):
        self.analysis = analysis
        self.keep_atoms = keep_atoms
        self.proto = proto
        self.inits = {t.name: t for t in proto.graph.initializer}
        self.uses = Counter(name for node in proto.graph.node for name in node.input)
        self.opset = next((i.version for i in proto.opset_import if i.domain in ("", "ai.onnx")), 1)

    def kept_index(self, d: Dim) -> np.ndarray:
        return np.flatnonzero(self.keep_atoms[d.offset : d.offset + d.size])

    def kept_size(self, d: Dim) -> int:
        return int(self.keep_atoms[d.offset : d.offset + d.size].sum())

    def constant(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.inits[name])

    def set_attr(self, node: onnx.NodeProto, name: str, value) -> None:
        for attr in node.attribute:
            if attr.name == name:
                if helper.get_attribute_value(attr) == value:
                    return
                attr.CopyFrom(helper.make_attribute(name, value))
                return
        node.attribute.append(helper.make_attribute(name, value))

    def replace_constant(self, node: onnx.NodeProto, pos: int, values: np.ndarray, base: str) -> None:
        """Point input ``pos`` of ``node`` at ``values``; a shared constant is copied, not changed."""
        while len(node.input) <= pos:
            node.input.append("")
        old = node.input[pos]
        if old in self.inits:
            current = self.constant(old)
            if current.shape == values.shape and np.array_equal(current, values):
                return
            if self.uses[old] == 1:
                self.inits[old].CopyFrom(numpy_helper.from_array(values.astype(current.dtype), old))
                return
        name = base
        while name in self.inits:
            name += "_"
        tensor = numpy_helper.from_array(values, name)
        self.proto.graph.initializer.append(tensor)
        self.inits[name] = self.proto.graph.initializer[-1]
        self.uses[name] += 1
        if old:
            self.uses[old] -= 1
        node.input[pos] = name


def rewrite(analysis: Analysis, keep: np.ndarray) -> onnx.ModelProto:
    """A new model with the channels ``keep`` marks as False removed (the analysed model is untouched)."""
    proto = copy.deepcopy(analysis.model.proto)
    keep_atoms = analysis.kept_atoms(keep)
    ctx = PatchContext(analysis, keep_atoms, proto)

    cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for d in analysis.dims:
        if d.constant:
            idx = ctx.kept_index(d)
            if len(idx) < d.size:
                cuts.setdefault(d.tensor, []).append((d.axis, idx))
    for name, axes in cuts.items():
        array = ctx.constant(name)
        for axis, idx in axes:
            array = np.take(array, idx, axis=axis)
        ctx.inits[name].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(array), name))

    if cuts or not keep.all():
        for node_index, fix in analysis.patches:
            fix(proto.graph.node[node_index], ctx)

    _refresh_shapes(proto, cuts)
    return proto


def _refresh_shapes(proto: onnx.ModelProto, cuts) -> None:
    """Drop intermediate shapes (stale after pruning) and infer them again."""
    if not cuts:
        return
    inits = {t.name: t for t in proto.graph.initializer}
    for vi in proto.graph.input:  # IR < 4 lists initializers as inputs too
        if vi.name in cuts:
            shape = vi.type.tensor_type.shape
            shape.Clear()
            for d in inits[vi.name].dims:
                shape.dim.add().dim_value = d
    del proto.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=False)
        proto.graph.value_info.extend(inferred.graph.value_info)
    except Exception:  # shapes are an optional annotation; the checker below is the real test
        pass


def verify(original: onnx.ModelProto, pruned: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]], seed: int = 0) -> None:
    """Invariant 3: the pruned model passes the full checker, runs in onnxruntime and keeps the
    original's input/output names and output shapes. Raises ModelError otherwise."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:
        raise ModelError(f"pruned model fails the ONNX checker: {first_line(exc)}") from exc
    if [i.name for i in graph_inputs(pruned)] != [i.name for i in graph_inputs(original)]:
        raise ModelError("pruned model changed the input names")
    if [o.name for o in pruned.graph.output] != [o.name for o in original.graph.output]:
        raise ModelError("pruned model changed the output names")
    feeds = random_inputs(original, input_shapes, seed)
    outs_a = run(original, feeds)
    outs_b = run(pruned, feeds)
    for o, a, b in zip(original.graph.output, outs_a, outs_b):
        if np.shape(a) != np.shape(b):
            raise ModelError(f"pruned model output '{o.name}' has shape {np.shape(b)}, expected {np.shape(a)}")


_NP_TYPES = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
             onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.INT64: np.int64,
             onnx.TensorProto.INT32: np.int32, onnx.TensorProto.UINT8: np.uint8,
             onnx.TensorProto.INT8: np.int8, onnx.TensorProto.BOOL: np.bool_}


def random_inputs(proto: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph_inputs(proto):
        dtype = _NP_TYPES.get(vi.type.tensor_type.elem_type, np.float32)
        shape = shapes[vi.name]
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds
