"""Helpers shared by the rules of the ops that move channels without computing on them
(``shape_rules.py``, ``reshape_rules.py``) and by the op table in ``rules.py``: which axis an
input carries its channels on, refusing outputs whose input has none, plain pass-through.
"""

from __future__ import annotations

import onnx

from .builder import Builder
from .shape_values import Const, Kept


def input_axis(b: Builder, t, default: int = 1) -> int:
    axis = b.axis_of(t)
    return default if axis is None else axis


def carries_none(b: Builder, t) -> bool:
    """``t`` is a feature map whose producer defined no channels (a graph input, an op that
    blocked, a LayerNormalization over the channels). An op that only moves channels then has
    none to move, and its output carries none either: guessing axis 1 would put channels on a
    token or spatial axis of a channels-last tensor ([N, L, C], [N, H, W, C]), and the MatMul
    that reads it would no longer see its contraction axis as free to produce new channels."""
    return bool(t.name) and b.axis_of(t) is None and not b.is_const(t) and t.name not in b.spread


def refuse_from(b: Builder, x, outputs) -> None:
    """Outputs of an op that moves channels of ``x``, which has none: they have none, for
    the reason ``x`` has none."""
    for y in outputs:
        if y.name:
            b.refuse(y, b.why_undefined(x))


def checked_channel_axis(node, b: Builder, x, y) -> int | None:
    """The channel axis ``x`` carries into ``y``, or None after refusing ``y`` (``x`` has no
    channel axis, or carries no channels: then ``y`` gets ``x``'s reason)."""
    if b.rank(x) < 2:
        b.refuse(y, f"{node.op} '{node.name}': input '{x.name}' has no channel axis")
        return None
    if carries_none(b, x):
        refuse_from(b, x, [y])
        return None
    return input_axis(b, x)


def passthrough(node, b: Builder, x=None, y=None) -> None:
    """Output channel i is input channel i, on the same axis."""
    x = node.inputs[0] if x is None else x
    y = node.outputs[0] if y is None else y
    axis = checked_channel_axis(node, b, x, y)
    if axis is not None:
        b.tie(b.dim(x, axis), b.define(y, axis))


def remove_attr(node: onnx.NodeProto, name: str) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            return


def alias_kept(b: Builder, y, axis: int):
    """The kept size of axis ``axis`` of an alias: that of its constant's axis, if anyone slices it."""
    source, axes = b.aliases[y.name]
    return Const(b.shape(y)[axis]) if axes[axis] is None else Kept((source, axes[axis]))
