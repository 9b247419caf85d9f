"""Dependency rules of the ops that move channels without computing on them: Reshape and its
kin, Transpose, Concat, Split, Slice, Gather, Expand, Tile, Pad, Resize.

Their work is index bookkeeping: which input atom each output position holds, and which shape
values (Reshape targets, Slice bounds, Split sizes) must follow the pruned counts. ``rules.py``
holds the table that maps op types to these functions.
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import Builder, Spread
from .shape_values import Const, Kept, Prefix


def _in_axis(b: Builder, t, default: int = 1) -> int:
    axis = b.axis_of(t)
    return default if axis is None else axis


def _carries_none(b: Builder, t) -> bool:
    """``t`` is a feature map whose producer defined no channels (a graph input, an op that
    blocked, a LayerNormalization over the channels). An op that only moves channels then has
    none to move, and its output carries none either: guessing axis 1 would put channels on a
    token or spatial axis of a channels-last tensor ([N, L, C], [N, H, W, C]), and the MatMul
    that reads it would no longer see its contraction axis as free to produce new channels."""
    return bool(t.name) and b.axis_of(t) is None and not b.is_const(t) and t.name not in b.spread


def _refuse_from(b: Builder, x, outputs) -> None:
    """Outputs of an op that moves channels of ``x``, which has none: they have none, for
    the reason ``x`` has none."""
    for y in outputs:
        if y.name:
            b.refuse(y, b.why_undefined(x))


def _channel_axis(node, b: Builder, x, y) -> int | None:
    """The channel axis ``x`` carries into ``y``, or None after refusing ``y`` (``x`` has no
    channel axis, or carries no channels: then ``y`` gets ``x``'s reason)."""
    if b.rank(x) < 2:
        b.refuse(y, f"{node.op} '{node.name}': input '{x.name}' has no channel axis")
        return None
    if _carries_none(b, x):
        _refuse_from(b, x, [y])
        return None
    return _in_axis(b, x)


def _passthrough(node, b: Builder, x=None, y=None) -> None:
    """Output channel i is input channel i, on the same axis."""
    x = node.inputs[0] if x is None else x
    y = node.outputs[0] if y is None else y
    axis = _channel_axis(node, b, x, y)
    if axis is not None:
        b.tie(b.dim(x, axis), b.define(y, axis))


def _remove_attr(node: onnx.NodeProto, name: str) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            return


def resize(node, b: Builder) -> None:
    """Resize/Upsample: the channel axis must keep its size; an explicit ``sizes`` entry for it
    becomes the kept count, scales and the other sizes must not change."""
    x, y = node.inputs[0], node.outputs[0]
    axis = _in_axis(b, x)
    none = _carries_none(b, x)
    if not none and b.shape(y)[axis] != b.shape(x)[axis]:
        b.block_node(f"{node.op} '{node.name}' resizes the channel axis")
        return
    _passthrough(node, b)
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
    r, axis = b.rank(x), _in_axis(b, x)
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
    if axis in axes and (pads[axes.index(axis)] or pads[n + axes.index(axis)]) and not _carries_none(b, x):
        b.block_node(f"Pad '{node.name}' pads the channel axis")
        return
    _passthrough(node, b)
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
    none = [t for t in node.inputs if _carries_none(b, t)]
    if not axes and none:
        _refuse_from(b, none[0], [y])
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
    axis = _in_axis(b, x)
    if _carries_none(b, x):
        _refuse_from(b, x, node.outputs)
        if len(node.inputs) > 1 and node.inputs[1].name and not b.is_const(node.inputs[1]):
            b.expect(1, [Const(b.shape(y)[split_axis]) for y in node.outputs], "split sizes")
        return
    if split_axis != axis:
        for y in node.outputs:
            _passthrough(node, b, x, y)
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
        _remove_attr(node, "num_outputs")  # opset 18 equal split: sizes become explicit
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
    r, axis = b.rank(x), _in_axis(b, x)
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
    if axis not in axes or _carries_none(b, x):
        _passthrough(node, b)
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
    if axis not in axes or _carries_none(b, x):
        _passthrough(node, b)
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
    gaxis, channel = int(node.attrs.get("axis", 0)) % r, _in_axis(b, x)
    indices = b.int_values(idx)
    if indices is None:
        b.block_node(f"Gather '{node.name}' has indices computed at run time")
        return
    if _carries_none(b, x):
        _refuse_from(b, x, [y])
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
        required = [Const(v) if v == 1 else _alias_kept(b, y, k + lead) for k, v in enumerate(target)]
    elif _carries_none(b, x):
        _refuse_from(b, x, [y])
        required = [Const(v) for v in target]
    else:
        axis = _in_axis(b, x)
        out_axis = axis + ro - rx
        dx, dy = b.dim(x, axis), b.define(y, out_axis)
        b.tie(dx, dy)
        required = [Kept(dy) if k + lead == out_axis and v != 1 else Const(v) for k, v in enumerate(target)]
    b.expect(1, required, "target shape")


def _alias_kept(b: Builder, y, axis: int):
    """The kept size of axis ``axis`` of an alias: that of its constant's axis, if anyone slices it."""
    source, axes = b.aliases[y.name]
    return Const(b.shape(y)[axis]) if axes[axis] is None else Kept((source, axes[axis]))


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
    elif _carries_none(b, x):
        _refuse_from(b, x, [y])
    else:
        axis = _in_axis(b, x)
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
    if _carries_none(b, x):
        _refuse_from(b, x, [y])  # no channel axis to move: say why, do not guess one
        return
    axis = _in_axis(b, x)
    b.tie(b.dim(x, axis), b.define(y, perm.index(axis)))


def reshape(node, b: Builder) -> None:
    """Reshape/Flatten/Squeeze/Unsqueeze: push the channel index through the reshape.

    The source atom at each position of the input's channel axes is reshaped like the data. If
    one output axis alone carries it, that axis is the channel axis (Flatten of [1, C, H, W] gives
    H*W consecutive features per channel, the block that feeds a Gemm). If several do (channel
    shuffle's [N, C, H, W] -> [N, g, C/g, H, W]) the output is *spread*: the longest of those axes
    shrinks, its positions are tied across the others (equal counts per block), and Transpose and
    the Reshape back carry the index until one channel axis appears again. Target entries that
    must change are patched (literals) or proved (computed at run time from shapes).
    """
    x, y = node.inputs[0], node.outputs[0]
    in_shape, out_shape = b.shape(x), b.shape(y)
    spread = b.spread_of(x)
    if b.is_const(x):
        return _reshape_constant(node, b, x, y)
    if _carries_none(b, x):  # no channels: the target must keep giving the same shape
        _refuse_from(b, x, [y])
        if node.op == "Reshape":
            _expect_reshape_target(node, b, [Const(v) for v in out_shape])
        return
    if spread is None and (len(in_shape) < 2 or len(out_shape) < 1):
        b.block_node(f"{node.op} '{node.name}': no channel axis")
        return
    if spread is None:
        axis = _in_axis(b, x)
        src, axes, index, shrink = b.dim(x, axis), (axis,), np.arange(in_shape[axis]), axis
    else:
        src, axes, index, shrink = spread.src, spread.axes, spread.index, spread.shrink
    i0, i1, o0, o1 = _aligned_segment(in_shape, out_shape, min(axes), max(axes) + 1)
    seg_in, seg_out = in_shape[i0:i1], out_shape[o0:o1]
    if not seg_out:
        b.block_node(f"{node.op} '{node.name}' removes the channel axis")
        return
    atoms = _broadcast(index, [a - i0 for a in axes], seg_in).reshape(seg_out)
    varying = [k for k in range(len(seg_out)) if not _constant_along(atoms, k)]
    if not varying:  # a single channel: the longest axis carries it
        varying = [max(range(len(seg_out)), key=lambda v: (seg_out[v], -v))]
    required = [Const(v) for v in out_shape]
    here = b.model.index_of(node)
    if len(varying) == 1:
        k = varying[0]
        per_position = np.moveaxis(atoms, k, 0).reshape(seg_out[k], -1)[:, 0]
        if spread is not None and _shuffle_as_gather(node, b, spread, out_shape, o0 + k, per_position):
            return
        if spread is not None:
            spread.settle()
        dy = b.define(y, o0 + k)
        b.tie(src, dy, per_position, None)
        required[o0 + k] = Kept(dy)
    else:
        if spread is None:
            k = max(varying, key=lambda v: (seg_out[v], v))
            rows = np.moveaxis(atoms, k, 0).reshape(seg_out[k], -1)
            deferred = [lambda: b.tie(src, src, rows.reshape(-1), np.repeat(rows[:, 0], rows.shape[1]))]
            spread = Spread(src, (), index, shrink, (), (in_shape, axes[0]), deferred)
        else:
            coords = _broadcast(np.arange(in_shape[shrink]), [shrink - i0], seg_in).reshape(seg_out)
            along = [v for v in range(len(seg_out)) if not _constant_along(coords, v)]
            if len(along) != 1:
                b.block_node(f"{node.op} '{node.name}' mixes the shortened axis of spread channels with others")
                return
            k = along[0]
        index = atoms[tuple(slice(None) if v in varying else 0 for v in range(len(seg_out)))]
        b.set_spread(y, spread.then(here, axes=tuple(o0 + v for v in varying), index=index, shrink=o0 + k))
        required[o0 + k] = Kept(src, seg_out[k], src.size)
        if node.op == "Reshape":  # checked only if the shuffle does not become a Gather
            _expect_reshape_target(node, b, required, later=spread.deferred)
        return
    if node.op == "Reshape":
        _expect_reshape_target(node, b, required)


_CHAIN_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


def _shuffle_as_gather(node, b: Builder, spread, out_shape, axis: int, per_position) -> bool:
    """A chain Reshape -> Transpose -> Reshape that gives back the spread tensor's shape with the
    channels permuted (channel shuffle) is ``Gather(x, perm, axis)``. Rewritten as that Gather
    (the first node) and Identities (the rest), it needs no ties across blocks: every channel
    stays its own decision. Only if the chain's tensors feed nothing else."""
    shape, origin_axis = spread.origin or (None, None)
    if tuple(shape or ()) != tuple(out_shape) or origin_axis != axis:
        return False
    nodes = b.model.graph.nodes
    outputs = {o.name for o in b.model.graph.outputs}
    for i in spread.chain:
        t = nodes[i].outputs[0]
        if len(t.outputs) != 1 or t.name in outputs:
            return False
    dy = b.define(node.outputs[0], axis)
    b.tie(spread.src, dy, per_position, None)
    first, *rest = [i for i in spread.chain if nodes[i].op in _CHAIN_OPS]
    b.patch(_to_identity)
    b.patches.append((first, _to_gather(spread.src, dy, per_position, axis)))
    for i in rest:
        b.patches.append((i, _to_identity))
    spread.deferred.clear()
    return True


def _to_gather(dx, dy, per_position, axis: int):
    def fix(node: onnx.NodeProto, ctx) -> None:
        indices = np.searchsorted(ctx.kept_index(dx), per_position[ctx.kept_index(dy)]).astype(np.int64)
        del node.input[1:]
        del node.attribute[:]
        node.op_type = "Gather"
        node.attribute.append(onnx.helper.make_attribute("axis", axis))
        ctx.replace_constant(node, 1, indices, f"{node.name or node.output[0]}_indices")

    return fix


def _to_identity(node: onnx.NodeProto, ctx) -> None:
    del node.input[1:]
    del node.attribute[:]
    node.op_type = "Identity"


def _expect_reshape_target(node, b: Builder, required, later: list | None = None) -> None:
    """Each target entry must give its axis's size after pruning (-1 is inferred from the rest;
    0 copies the input's size, which the check compares like any computed entry). ``later``:
    register the check there instead of now (a shuffle's inner Reshape)."""
    target = b.int_values(node.inputs[1])
    if target is None:
        b.block_node(f"Reshape '{node.name}' has a target shape computed at run time by ops onnxprune cannot evaluate")
        return
    wanted = [None if v == -1 else required[k] for k, v in enumerate(target.reshape(-1).tolist())]
    copies = None if int(node.attrs.get("allowzero", 0)) else node.inputs[0]
    check = lambda: b.expect(1, wanted, "target shape", zero_copies=copies, node=node)  # noqa: E731
    later.append(check) if later is not None else check()


def _reshape_constant(node, b: Builder, x, y) -> None:
    """A reshaped constant that only gains or loses axes of size 1 (a bias [C] -> [1, C, 1, 1]) is
    an alias of the constant; any other reshape of a constant is left alone (its consumers block
    where they would need to slice it)."""
    in_axes = [a for a, n in enumerate(b.shape(x)) if n > 1]
    out_axes = [a for a, n in enumerate(b.shape(y)) if n > 1]
    if [b.shape(x)[a] for a in in_axes] != [b.shape(y)[a] for a in out_axes]:
        b.refuse(y, f"{node.op} '{node.name}' rearranges the constant '{x.name}'")
        return
    axes = [None] * b.rank(y)
    for i, o in zip(in_axes, out_axes):
        axes[o] = i
    b.alias(y, x, axes)
    if node.op == "Reshape":
        target = b.int_values(node.inputs[1])
        if target is None:
            return
        wanted = [None if v in (-1, 0) else _alias_kept(b, y, k) for k, v in enumerate(target.reshape(-1).tolist())]
        b.expect(1, wanted, "target shape")


def _aligned_segment(in_shape, out_shape, lo: int, hi: int):
    """Smallest input axes [i0, i1) covering [lo, hi) and output axes [o0, o1) of equal size that a
    row-major reshape maps onto each other (prefix products agree at both ends)."""
    pin = np.cumprod([1, *in_shape], dtype=np.int64)
    pout = np.cumprod([1, *out_shape], dtype=np.int64)
    common = set(pin.tolist()) & set(pout.tolist())
    i0 = max(k for k in range(lo + 1) if pin[k] in common)
    i1 = min(k for k in range(hi, len(in_shape) + 1) if pin[k] in common)
    o0 = max(k for k in range(len(out_shape) + 1) if pout[k] == pin[i0])
    o1 = min(k for k in range(len(out_shape) + 1) if pout[k] == pin[i1])
    return i0, i1, o0, max(o1, o0)


def _broadcast(values: np.ndarray, axes, shape) -> np.ndarray:
    """``values`` (laid over ``axes`` of ``shape``) broadcast to the whole of ``shape``."""
    view = [1] * len(shape)
    for a, n in zip(axes, values.shape):
        view[a] = n
    return np.broadcast_to(values.reshape(view), tuple(shape))


def _constant_along(array: np.ndarray, k: int) -> bool:
    return array.shape[k] <= 1 or bool((np.diff(array, axis=k) == 0).all())


