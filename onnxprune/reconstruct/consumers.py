"""The consumers of pruned tensors: every linear layer (Conv, ConvTranspose, Gemm, MatMul with a
constant weight) that contracts a pruned channel axis, the tensor whose moments feed its fit,
and how its weight's axes map to the observed channels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis import IN, OUT, Analysis, Dim

LINEAR_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass
class Consumer:
    """One weight that contracts a pruned tensor, and the tensor whose moments feed its fit."""

    node: int  # node index
    weight: str
    in_dim: Dim
    out_axis: int | None  # axis of the weight indexing the consumer's outputs
    bias: str | None  # the consumer's bias initializer (None: no bias input)
    observed: str  # tensor whose channels are fitted
    observed_axis: int
    positions: np.ndarray  # [C_observed, P]: in-dim atom of each (channel, position)


def channels_of(t: np.ndarray, axis: int) -> np.ndarray:
    """Activation [.., C, ..] -> [C, samples] (every other axis is a sample axis)."""
    return np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1)


def find_consumers(analysis: Analysis) -> list[Consumer]:
    """Every constant weight dim with the IN role whose input channels can be mapped back to one
    observed activation, one atom block per channel."""
    graph = analysis.model.graph
    result = []
    for d in analysis.dims:
        if d.role != IN or not d.constant or d.node is None:
            continue
        node = graph.nodes[d.node]
        if node.op not in LINEAR_CONSUMERS:
            continue
        if not np.issubdtype(np.asarray(analysis.model.tensors[d.tensor].values).dtype, np.floating):
            continue  # an integer weight behind DequantizeLinear: a float fold would need requantising
        observed = _observed_tensor(analysis, node.inputs[0])
        if observed is None:
            continue
        o_dim = analysis.by_key[(observed.name, analysis_axis(analysis, observed))]
        positions = _positions(analysis, o_dim, d)
        if positions is None:
            continue
        out_dim = next((x for x in analysis.dims if x.tensor == d.tensor and x.role == OUT), None)
        out_axis = out_dim.axis if out_dim is not None else _default_out_axis(node, d)
        bias = _bias_of(node)
        result.append(Consumer(d.node, d.tensor, d, out_axis, bias, observed.name, o_dim.axis, positions))
    return result


def analysis_axis(analysis: Analysis, t: gs.Tensor) -> int | None:
    for (name, axis), _ in analysis.by_key.items():
        if name == t.name and not analysis.by_key[(name, axis)].constant:
            return axis
    return None


def _observed_tensor(analysis: Analysis, t: gs.Tensor) -> gs.Tensor | None:
    """The consumer's input, or for a Flatten/Reshape block the map before it."""
    if analysis_axis(analysis, t) is None:
        return None
    while t.inputs and t.inputs[0].op in _SHAPE_OPS:
        src = t.inputs[0].inputs[0]
        if analysis_axis(analysis, src) is None or len(src.shape) <= len(t.shape):
            break
        t = src
    return t


def _positions(analysis: Analysis, o_dim: Dim, in_dim: Dim) -> np.ndarray | None:
    """[C_observed, P] in-dim atoms of each observed channel, or None if the map is not a clean
    one-channel-to-P-atoms block structure."""
    ch_obs = analysis.atom_channel[o_dim.offset : o_dim.offset + o_dim.size]
    ch_in = analysis.atom_channel[in_dim.offset : in_dim.offset + in_dim.size]
    if len(np.unique(ch_obs)) != len(ch_obs):
        return None
    order = np.argsort(ch_obs)
    where = np.searchsorted(ch_obs[order], ch_in)
    if np.any(where >= len(ch_obs)) or np.any(ch_obs[order][np.minimum(where, len(ch_obs) - 1)] != ch_in):
        return None
    owner = order[where]  # observed channel of each in-dim atom
    counts = np.bincount(owner, minlength=o_dim.size)
    if counts.min() != counts.max() or counts.min() == 0:
        return None
    return np.argsort(owner, kind="stable").reshape(o_dim.size, counts[0])


def _default_out_axis(node: gs.Node, d: Dim) -> int | None:
    if node.op in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return 1 - d.axis if node.op in ("Gemm", "MatMul", "ConvTranspose") else 0
    return None


def _bias_of(node: gs.Node) -> str | None:
    if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name:
        return node.inputs[2].name if isinstance(node.inputs[2], gs.Constant) else None
    return None


# --- the fit ------------------------------------------------------------------------------------
