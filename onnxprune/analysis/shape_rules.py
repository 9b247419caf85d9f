"""Dependency rules of the ops that move channels without computing on them: Transpose, Concat,
Split, Slice, Gather, Expand, Tile, Pad, Resize (Reshape and its kin: ``reshape_rules.py``).

Their work is index bookkeeping: which input atom each output position holds, and which shape
values (Reshape targets, Slice bounds, Split sizes) must follow the pruned counts. ``rules.py``
holds the table that maps op types to these functions.
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import Builder
from .shape_common import alias_kept, carries_none, input_axis, passthrough, refuse_from, remove_attr
from .shape_values import Const, Kept, Prefix


def resize(node, b: Builder) -> None:
    """Resize/Upsample: the channel axis must keep its size; an explicit ``sizes`` entry for it
    becomes the kept count, scales and the other sizes must not change."""
    x, y = node.inputs[0], node.outputs[0]
    axis = input_axis(b, x)
    none = carries_none(b, x)
    if not none and b.shape(y)[axis] != b.shape(x)[axis]:
        b.block_node(f"{node.op} '{node.name}' resizes the channel axis")
        return
    passthrough(node, b)
    dy = None if none else b.by_key.get((y.name, axis))
    for pos, t in enumerate(node.inputs[1:], start=1):
        if not t.name or (node.op == "Resize" and pos == 1):
            continue  # roi does not depend on sizes
        values = b.int_values(t)
        if values is None:
            b.block_node(f"{node.op} '{node.name}' has scales or sizes computed by ops onnxprune cannot evaluate")
            return
        is_sizes = node.op == "Resize" and pos == 3
        if is_sizes or not b.is_const(t):
            values = values.reshape(-1).tolist()
            b.expect(pos, [Kept(dy) if is_sizes and a == axis and dy is not None else Const(v) for a, v in enumerate(values)],
                     "sizes" if is_sizes else "scales")


def pad(node, b: Builder) -> None:
    x = node.inputs[0]
    r, axis = b.rank(x), input_axis(b, x)
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        values = b.int_values(node.inputs[1])
        if values is None:
            b.block_node(f"Pad '{node.name}' has pads computed at run time")
            return
        pads = values.tolist()
    axes = list(range(r))
    if len(node.inputs) > 3 and node.inputs[3].name:
        values = b.int_values(node.inputs[3])
        if values is None:
            b.block_node(f"Pad '{node.name}' has axes computed at run time")
            return
        axes = [a % r for a in values.tolist()]
    n = len(axes)
    if axis in axes and (pads[axes.index(axis)] or pads[n + axes.index(axis)]) and not carries_none(b, x):
        b.block_node(f"Pad '{node.name}' pads the channel axis")
        return
    passthrough(node, b)
    if "pads" not in node.attrs and not b.is_const(node.inputs[1]):
        b.expect(1, [Const(p) for p in pads], "pads")


def concat(node, b: Builder) -> None:
    y = node.outputs[0]
    r = b.rank(y)
    if r < 2:
        b.block_node(f"Concat '{node.name}': output has no channel axis")
        return
    cat_axis = int(node.attrs["axis"]) % r
    axes = {b.axis_of(t) for t in node.inputs if b.axis_of(t) is not None}
    none = [t for t in node.inputs if carries_none(b, t)]
    if not axes and none:
        refuse_from(b, none[0], [y])
        return
    channel_axis = axes.pop() if len(axes) == 1 else (1 if not axes else None)
    if channel_axis is None:
        b.block_node(f"Concat '{node.name}' joins tensors whose channels are on different axes")
        return
    dy = b.define(y, channel_axis)
    offset = 0
    for t in node.inputs:
        dt = b.dim(t, channel_axis)
        if cat_axis == channel_axis:
            b.tie(dt, dy, None, offset + np.arange(dt.size))
            offset += dt.size
        else:
            b.tie(dt, dy)


def split(node, b: Builder) -> None:
    """Split: output k takes a run of input channels. Sizes given as attribute (opset < 13),
    constant input, none (equal parts; opset 18 ``num_outputs``) are patched to the kept counts;
    sizes computed at run time from channel counts are proved to follow them or replaced."""
    x = node.inputs[0]
    r = b.rank(x)
    split_axis = int(node.attrs.get("axis", 0)) % r
    axis = input_axis(b, x)
    if carries_none(b, x):
        refuse_from(b, x, node.outputs)
        if len(node.inputs) > 1 and node.inputs[1].name and not b.is_const(node.inputs[1]):
            b.expect(1, [Const(b.shape(y)[split_axis]) for y in node.outputs], "split sizes")
        return
    if split_axis != axis:
        for y in node.outputs:
            passthrough(node, b, x, y)
        return
    computed = len(node.inputs) > 1 and node.inputs[1].name and not b.is_const(node.inputs[1])
    dx = b.dim(x, axis)
    offset = 0
    outputs = []
    for y in node.outputs:
        dy = b.define(y, axis)
        b.tie(dx, dy, offset + np.arange(dy.size), None)
        offset += dy.size
        outputs.append(dy)
    if computed:
        b.expect(1, [Kept(d) for d in outputs], "split sizes")
    else:
        b.patch(_set_split_sizes(outputs))


def _set_split_sizes(outputs):
    def fix(node: onnx.NodeProto, ctx) -> None:
        sizes = [ctx.kept_size(d) for d in outputs]
        if sizes == [d.size for d in outputs]:
            return
        remove_attr(node, "num_outputs")  # opset 18 equal split: sizes become explicit
        if ctx.opset < 13:
            ctx.set_attr(node, "split", sizes)
        else:
            ctx.replace_constant(node, 1, np.array(sizes, dtype=np.int64), f"{node.name or node.output[0]}_split")

    return fix


def slice_(node, b: Builder) -> None:
    """Slice: on the channel axis, output channel i is input channel start + i*step.

    With step > 1 the channels between two taken ones are tied to the first, so a plan removes
    whole periods and the pruned slice keeps its step (YOLO's Focus takes x[:, :, ::2, ::2]:
    spatial steps pass channels through). Bounds are patched to the kept counts; bounds computed
    at run time from the channel count (``x.chunk(2, 1)``) become constants.
    """
    x, y = node.inputs[0], node.outputs[0]
    r, axis = b.rank(x), input_axis(b, x)
    if "starts" in node.attrs:
        return _slice_v1(node, b, x, y, r, axis)
    params = [b.int_values(t) if t.name else None for t in node.inputs[1:5]]
    params += [None] * (4 - len(params))
    if params[0] is None or params[1] is None or any(p is None for p, t in zip(params, node.inputs[1:5]) if t.name):
        b.block_node(f"Slice '{node.name}' has bounds computed at run time by ops onnxprune cannot evaluate")
        return
    starts, ends = params[0].tolist(), params[1].tolist()
    axes = [a % r for a in params[2].tolist()] if params[2] is not None else list(range(len(starts)))
    steps = params[3].tolist() if params[3] is not None else [1] * len(starts)
    computed = [pos for pos, t in enumerate(node.inputs[1:5], start=1) if t.name and not b.is_const(t)]
    if axis not in axes or carries_none(b, x):
        passthrough(node, b)
        for pos in computed:
            b.expect(pos, [Const(v) for v in params[pos - 1].reshape(-1).tolist()], "bounds")
        return
    i = axes.index(axis)
    sel = _slice_channels(node, b, x, y, axis, starts[i], ends[i], steps[i])
    if sel is None:
        return
    dx, (start, stop, _) = b.dim(x, axis), sel
    wanted = {1: Prefix(dx, start), 2: Prefix(dx, stop)}
    for pos in (1, 2, 3, 4):
        t = node.inputs[pos] if pos < len(node.inputs) else None
        if t is None or not t.name:
            continue
        values = params[pos - 1].reshape(-1).tolist()
        required = [wanted[pos] if pos in wanted and k == i else Const(v) for k, v in enumerate(values)]
        b.expect(pos, required, "bounds")


def _slice_channels(node, b: Builder, x, y, axis, start, end, step):
    """Tie the taken channels (and each one's period) of a slice on the channel axis."""
    if step < 0:
        b.block_node(f"Slice '{node.name}' takes channels in reverse order (step {step})")
        return None
    n = b.shape(x)[axis]
    start, stop, _ = slice(start, end, step).indices(n)
    taken = np.arange(start, stop, step)
    if taken.size == 0:
        b.block_node(f"Slice '{node.name}' takes no channel")
        return None
    dx, dy = b.dim(x, axis), b.define(y, axis)
    b.tie(dx, dy, taken, None)
    for t in taken[:] if step > 1 else []:
        between = np.arange(t + 1, min(t + step, stop))
        if between.size:
            b.tie(dx, dx, between, np.full(between.size, t))
    return start, stop, step


def _slice_v1(node, b: Builder, x, y, r, axis) -> None:
    """Slice-1 (opset < 10): bounds are attributes, patched directly."""
    starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
    axes = [a % r for a in node.attrs.get("axes", range(len(starts)))]
    if axis not in axes or carries_none(b, x):
        passthrough(node, b)
        return
    i = axes.index(axis)
    sel = _slice_channels(node, b, x, y, axis, starts[i], ends[i], 1)
    if sel is not None:
        b.patch(_set_slice_attrs(b.dim(x, axis), i, sel[0], sel[1]))


def _set_slice_attrs(dx, i: int, start: int, stop: int):
    def fix(node: onnx.NodeProto, ctx) -> None:
        kept = ctx.kept_index(dx)
        for name, bound in (("starts", start), ("ends", stop)):
            values = _attr_ints(node, name)
            values[i] = int(np.searchsorted(kept, bound))
            ctx.set_attr(node, name, values)

    return fix


def _attr_ints(node: onnx.NodeProto, name: str) -> list[int]:
    return next(list(a.ints) for a in node.attribute if a.name == name)


def gather(node, b: Builder) -> None:
    """Gather: along another axis the channels pass through (moved by the index rank); along the
    channel axis with constant indices, output channel i is input channel indices[i] and the
    indices are patched to the kept positions."""
    x, idx, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if b.rank(x) < 2:
        b.refuse(y, f"Gather '{node.name}' output is no feature map")
        return
    r = b.rank(x)
    gaxis, channel = int(node.attrs.get("axis", 0)) % r, input_axis(b, x)
    indices = b.int_values(idx)
    if indices is None:
        b.block_node(f"Gather '{node.name}' has indices computed at run time")
        return
    if carries_none(b, x):
        refuse_from(b, x, [y])
        if not b.is_const(idx):
            b.expect(1, [Const(v) for v in indices.reshape(-1).tolist()], "indices")
        return
    if gaxis != channel:
        out_axis = channel if channel < gaxis else channel - 1 + indices.ndim
        b.tie(b.dim(x, channel), b.define(y, out_axis))
        if not b.is_const(idx):
            b.expect(1, [Const(v) for v in indices.reshape(-1).tolist()], "indices")
        return
    if indices.ndim != 1 or not b.is_const(idx):
        b.block_node(f"Gather '{node.name}' picks channels with {'computed' if not b.is_const(idx) else 'scalar'} indices")
        return
    n = b.shape(x)[channel]
    picked = indices % n
    dx, dy = b.dim(x, channel), b.define(y, channel)
    b.tie(dx, dy, picked, None)
    b.patch(_set_gather_indices(dx, dy, picked))


def _set_gather_indices(dx, dy, picked):
    def fix(node: onnx.NodeProto, ctx) -> None:
        kept_out = ctx.kept_index(dy)
        values = np.searchsorted(ctx.kept_index(dx), picked[kept_out])
        dtype = ctx.constant(node.input[1]).dtype
        ctx.replace_constant(node, 1, values.astype(dtype), f"{node.name or node.output[0]}_indices")

    return fix


def expand(node, b: Builder) -> None:
    """Expand: a feature map keeps its channel axis (the target's entry becomes the kept count
    or stays 1); an expanded constant is an alias of the constant along its unbroadcast axes."""
    x, y = node.inputs[0], node.outputs[0]
    ro, rx = b.rank(y), b.rank(x)
    target = b.int_values(node.inputs[1])
    if target is None:
        b.block_node(f"Expand '{node.name}' has a target shape computed at run time by ops onnxprune cannot evaluate")
        return
    target = target.reshape(-1).tolist()
    lead = ro - len(target)
    if b.is_const(x):
        axes = [a - (ro - rx) if a >= ro - rx and b.shape(x)[a - (ro - rx)] == b.shape(y)[a] else None for a in range(ro)]
        b.alias(y, x, axes)
        required = [Const(v) if v == 1 else alias_kept(b, y, k + lead) for k, v in enumerate(target)]
    elif carries_none(b, x):
        refuse_from(b, x, [y])
        required = [Const(v) for v in target]
    else:
        axis = input_axis(b, x)
        out_axis = axis + ro - rx
        dx, dy = b.dim(x, axis), b.define(y, out_axis)
        b.tie(dx, dy)
        required = [Kept(dy) if k + lead == out_axis and v != 1 else Const(v) for k, v in enumerate(target)]
    b.expect(1, required, "target shape")


def tile(node, b: Builder) -> None:
    """Tile: repeats along the channel axis tie copy j's channel i to input channel i."""
    x, y = node.inputs[0], node.outputs[0]
    repeats = b.int_values(node.inputs[1])
    if repeats is None:
        b.block_node(f"Tile '{node.name}' has repeats computed at run time by ops onnxprune cannot evaluate")
        return
    repeats = repeats.reshape(-1).tolist()
    if b.is_const(x):
        b.alias(y, x, [a if repeats[a] == 1 else None for a in range(b.rank(x))])
    elif carries_none(b, x):
        refuse_from(b, x, [y])
    else:
        axis = input_axis(b, x)
        dx, dy = b.dim(x, axis), b.define(y, axis)
        b.tie(dx, dy, np.arange(dy.size) % dx.size, None)
    if not b.is_const(node.inputs[1]):
        b.expect(1, [Const(v) for v in repeats], "repeats")


def transpose(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    perm = list(node.attrs.get("perm") or reversed(range(b.rank(x))))
    spread = b.spread_of(x)
    if spread is not None:
        out_axes = [perm.index(a) for a in spread.axes]
        order = np.argsort(out_axes)
        b.set_spread(y, spread.then(b.model.index_of(node), axes=tuple(sorted(out_axes)),
                                    index=spread.index.transpose(order), shrink=perm.index(spread.shrink)))
        return
    if carries_none(b, x):
        refuse_from(b, x, [y])  # no channel axis to move: say why, do not guess one
        return
    axis = input_axis(b, x)
    b.tie(b.dim(x, axis), b.define(y, perm.index(axis)))
