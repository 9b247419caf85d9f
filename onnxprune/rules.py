"""Per-op dependency rules: one small function per op type, in one table (``RULES``).

A rule receives the node and the analysis ``Builder`` and states how channels flow through the
node: which output axis carries channels (``b.define``), which input and output atoms are the
same channel (``b.tie``), which weight axes are produced or consumed (``b.dim(w, axis, role)``),
and what must be patched when channels disappear (``b.patch``). An op with no rule blocks every
channel it touches; nothing is guessed.
"""

from __future__ import annotations

import numpy as np
import onnx

from .analysis import BN_SCALE, DEPTHWISE, IN, OUT, Builder, Spread
from .shape_values import Const, Kept, Prefix


# --- helpers ---------------------------------------------------------------------------------
def _in_axis(b: Builder, t, default: int = 1) -> int:
    axis = b.axis_of(t)
    return default if axis is None else axis


def _passthrough(node, b: Builder, x=None, y=None) -> None:
    """Output channel i is input channel i, on the same axis."""
    x = node.inputs[0] if x is None else x
    y = node.outputs[0] if y is None else y
    if b.rank(x) < 2:
        b.refuse(y, f"{node.op} '{node.name}': input '{x.name}' has no channel axis")
        return
    axis = _in_axis(b, x)
    b.tie(b.dim(x, axis), b.define(y, axis))


def _refuse_extra_outputs(node, b: Builder, reason: str) -> None:
    for t in node.outputs[1:]:
        if t.name:
            b.refuse(t, reason)


def unary(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    spread = b.spread_of(x)
    if spread is not None:  # a shuffle's [N, g, C/g, H, W] passes through unchanged
        b.set_spread(y, spread)
    else:
        _passthrough(node, b)
    _refuse_extra_outputs(node, b, f"{node.op} '{node.name}': secondary output")


def elementwise(node, b: Builder) -> None:
    """Broadcasting ops (Add, Mul, PRelu, Where, ...): aligned channel axes are the same channel.

    Residual additions tie both branches; SE blocks tie the scale [N,C,1,1] to the features;
    a per-channel constant ([C,1,1] or [1,C,1,1]) is sliced with them; a scalar broadcasts.
    """
    y = node.outputs[0]
    r = b.rank(y)
    if r < 2:
        b.block_node(f"{node.op} '{node.name}': output has no channel axis")
        return
    spread = [t for t in node.inputs if b.spread_of(t) is not None]
    if len(spread) == 1 and all(t in spread or int(np.prod(b.shape(t))) == 1 for t in node.inputs):
        b.set_spread(y, b.spread[spread[0].name])  # scaling a shuffled tensor by a scalar
        return
    axes = {b.axis_of(t) + (r - b.rank(t)) for t in node.inputs if b.axis_of(t) is not None}
    if len(axes) > 1:
        b.block_node(f"{node.op} '{node.name}' combines tensors whose channels are on different axes")
        return
    axis = axes.pop() if axes else 1
    dy = b.define(y, axis)
    for t in node.inputs:
        local = axis - (r - b.rank(t))
        if local < 0 or b.shape(t)[local] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        b.tie(b.dim(t, local), dy)


def batch_norm(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    axis = 1
    dx, dy = b.dim(x, axis), b.define(y, axis)
    b.tie(dx, dy)
    for i, t in enumerate(node.inputs[1:5]):
        b.tie(b.dim(t, 0, BN_SCALE if i == 0 else ""), dx)
    _refuse_extra_outputs(node, b, f"BatchNormalization '{node.name}' in training mode")


def instance_norm(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    dx, dy = b.dim(x, 1), b.define(y, 1)
    b.tie(dx, dy)
    for t in node.inputs[1:3]:
        b.tie(b.dim(t, 0), dx)


def conv(node, b: Builder) -> None:
    """Conv: weight axis 0 produces the output channels, axis 1 consumes the input channels.

    Grouped (1 < group < C_in): weight axis 1 (C_in/G) is shared by all groups, so input channel
    j*C_in/G + l of every group j is weight atom l, and removing l removes it from every group
    at once; output channel j*C_out/G + l is tied across groups so each keeps as many outputs.
    ``group`` stays G. Depthwise (group = C_in): whole groups go, ``group`` is patched.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if not b.is_const(w) or (bias is not None and not b.is_const(bias)):
        b.block_node(f"Conv '{node.name}' has weights computed at run time")
        return
    group = int(node.attrs.get("group", 1))
    c_in, c_out, w_in = b.shape(x)[1], b.shape(w)[0], b.shape(w)[1]
    if group == 1:
        b.tie(b.dim(x, 1), b.dim(w, 1, IN))
        _conv_outputs(b, y, w, bias)
    elif group == c_in and w_in == 1:
        # Depthwise (channel multiplier m): output channel j reads input channel j // m, so input
        # channel c and outputs m*c .. m*c+m-1 form one channel; `group` is patched to the new C.
        m = c_out // c_in
        dx, dy = b.dim(x, 1), _conv_outputs(b, y, w, bias, role=DEPTHWISE)
        b.tie(dx, dy, np.arange(c_out) // m, np.arange(c_out))
        b.patch(_set_group_to_kept(dx))
    else:
        b.tie(b.dim(x, 1), b.dim(w, 1, IN), np.arange(c_in), np.arange(c_in) % w_in)
        _tie_blocks(b, _conv_outputs(b, y, w, bias), group)


def _tie_blocks(b: Builder, d, blocks: int) -> None:
    """Split ``d`` into ``blocks`` equal blocks and tie atom l of every block to atom l of the
    first: every block then keeps the same channels (a grouped conv's groups, a chunk's halves)."""
    if blocks <= 1 or d.size % blocks:
        return
    index = np.arange(d.size)
    b.tie(d, d, index, index % (d.size // blocks))


def _conv_outputs(b: Builder, y, w, bias, role: str = OUT):
    dy = b.define(y, 1)
    b.tie(dy, b.dim(w, 0, role))
    if bias is not None:
        b.tie(dy, b.dim(bias, 0))
    return dy


def _set_group_to_kept(d):
    def fix(node: onnx.NodeProto, ctx) -> None:
        ctx.set_attr(node, "group", ctx.kept_size(d))

    return fix


def conv_transpose(node, b: Builder) -> None:
    """ConvTranspose: weight [C_in, C_out/G, k, k]; axis 0 consumes, axis 1 produces.

    Grouped: input channels are tied across groups (equal counts per group) and output channel
    j*C_out/G + l of every group is weight atom l of axis 1. Depthwise (group = C_in): input c and
    its C_out/G outputs are one channel and ``group`` is patched.
    """
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    if not b.is_const(w) or (bias is not None and not b.is_const(bias)):
        b.block_node(f"ConvTranspose '{node.name}' has weights computed at run time")
        return
    group = int(node.attrs.get("group", 1))
    c_in, m = b.shape(x)[1], b.shape(w)[1]
    dy = b.define(y, 1)
    if bias is not None:
        b.tie(dy, b.dim(bias, 0))
    if group > 1 and group == c_in:
        dx = b.dim(x, 1)
        b.tie(dx, b.dim(w, 0, DEPTHWISE))
        b.tie(dx, dy, np.arange(c_in * m) // m, None)
        b.patch(_set_group_to_kept(dx))
        return
    dx = b.dim(x, 1)
    b.tie(dx, b.dim(w, 0, IN))
    _tie_blocks(b, dx, group)
    b.tie(dy, b.dim(w, 1, OUT), None, np.arange(m * group) % m)


def gemm(node, b: Builder) -> None:
    a, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if int(node.attrs.get("transA", 0)) or not b.is_const(w):
        b.block_node(f"Gemm '{node.name}': only transA=0 with a constant B is supported")
        return
    k_axis, n_axis = (1, 0) if int(node.attrs.get("transB", 0)) else (0, 1)
    b.tie(b.dim(a, 1), b.dim(w, k_axis, IN))
    dy = b.define(y, 1)
    b.tie(dy, b.dim(w, n_axis, OUT))
    if len(node.inputs) > 2 and node.inputs[2].name:
        c = node.inputs[2]
        shape = b.shape(c)
        if shape and shape[-1] > 1:
            b.tie(b.dim(c, len(shape) - 1), dy)


def matmul(node, b: Builder) -> None:
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not b.is_const(w) or b.rank(w) != 2:
        b.block_node(f"MatMul '{node.name}': only a constant 2-D right operand is supported")
        return
    last = b.rank(x) - 1
    axis = b.axis_of(x)
    if axis is not None and axis != last:
        _passthrough(node, b)  # channels are a batch axis of the product: they pass through
        return
    b.tie(b.dim(x, last), b.dim(w, 0, IN))
    b.tie(b.define(y, b.rank(y) - 1), b.dim(w, 1, OUT))


def einsum(node, b: Builder) -> None:
    """Einsum of a feature map with a constant weight, read from the equation.

    The letter of the input's channel axis decides: contracted with the weight (``bchw,oc->bohw``)
    the weight axis consumes it and the weight's only new output letter produces the output
    channels; kept in the output it passes through (the weight, if it has that letter, is sliced
    with it, like a per-channel scale). Summed away without the weight, the channels block.
    """
    terms, out = _einsum_terms(node, b)
    if terms is None:
        b.block_node(f"Einsum '{node.name}': equation {node.attrs.get('equation')!r} is not understood")
        return
    xs = [i for i, t in enumerate(node.inputs) if not b.is_const(t)]
    ws = [i for i, t in enumerate(node.inputs) if b.is_const(t)]
    if len(xs) != 1 or len(ws) > 1:
        b.block_node(f"Einsum '{node.name}': only one feature map and at most one constant weight are supported")
        return
    x, tx, y = node.inputs[xs[0]], terms[xs[0]], node.outputs[0]
    w, tw = (node.inputs[ws[0]], terms[ws[0]]) if ws else (None, "")
    axis = _in_axis(b, x)
    letter = tx[axis]
    dx = b.dim(x, axis)
    if letter in out:
        dy = b.define(y, out.index(letter))
        b.tie(dx, dy)
        if letter in tw and b.shape(w)[tw.index(letter)] > 1:
            b.tie(b.dim(w, tw.index(letter)), dy)
        return
    if letter not in tw:
        b.block_node(f"Einsum '{node.name}' sums over the channel axis '{letter}' of '{x.name}'")
        return
    b.tie(dx, b.dim(w, tw.index(letter), IN))
    new = [c for c in out if c in tw and c not in tx]
    if len(new) != 1:
        b.refuse(y, f"Einsum '{node.name}' has no single output axis made by its weight")
        return
    b.tie(b.define(y, out.index(new[0])), b.dim(w, tw.index(new[0]), OUT))


def _einsum_terms(node, b: Builder):
    """Per-input letter strings and the output string, with '...' expanded to private letters."""
    equation = str(node.attrs.get("equation", "")).replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(node.inputs):
        return None, None
    spare = iter("0123456789")
    ellipsis = ""
    expanded = []
    for term, t in zip(terms, node.inputs):
        if "..." in term:
            n = b.rank(t) - (len(term) - 3)
            if not ellipsis or len(ellipsis) < n:
                ellipsis = ellipsis + "".join(next(spare) for _ in range(n - len(ellipsis)))
            term = term.replace("...", ellipsis[len(ellipsis) - n :])
        if len(term) != b.rank(t):
            return None, None
        expanded.append(term)
    if not arrow:
        letters = "".join(expanded)
        rhs = ellipsis + "".join(sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ellipsis))
    else:
        rhs = rhs.replace("...", ellipsis)
    return expanded, rhs


def pool(node, b: Builder) -> None:
    if b.axis_of(node.inputs[0]) not in (None, 1):
        b.block_node(f"{node.op} '{node.name}' expects channels on axis 1")
        return
    _passthrough(node, b)
    _refuse_extra_outputs(node, b, f"{node.op} '{node.name}': indices output")


def reduce(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    r = b.rank(x)
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        values = b.int_values(node.inputs[1])
        if values is None:
            b.block_node(f"{node.op} '{node.name}' has axes computed at run time")
            return
        axes = values.reshape(-1).tolist()
    axis = _in_axis(b, x)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            _passthrough(node, b)
        else:
            b.block_node(f"{node.op} '{node.name}' reduces over all axes, channels included")
        return
    axes = [a % r for a in axes]
    if axis in axes:
        b.block_node(f"{node.op} '{node.name}' reduces over the channel axis")
        return
    out_axis = axis if int(node.attrs.get("keepdims", 1)) else axis - sum(a < axis for a in axes)
    b.tie(b.dim(x, axis), b.define(y, out_axis))


def layer_norm(node, b: Builder) -> None:
    """LayerNormalization over axes [axis, rank): if those include the channel axis, mean and
    variance are taken over all channels, and removing one changes every output: blocked."""
    x = node.inputs[0]
    r = b.rank(x)
    first = int(node.attrs.get("axis", -1)) % r
    channel = _in_axis(b, x)
    if channel >= first:
        b.block_node(
            f"LayerNormalization '{node.name}' normalises over the channel axis {channel} of '{x.name}' "
            f"(its mean and variance over all channels change when one is removed)"
        )
        return
    _passthrough(node, b)
    _refuse_extra_outputs(node, b, f"LayerNormalization '{node.name}': statistics output")


def group_norm(node, b: Builder) -> None:
    """GroupNormalization: statistics per group of C/G channels, so only whole groups can go.

    The channels of a group are tied into one; ``num_groups`` is patched to the kept groups.
    Scale and bias have C entries (opset 21) or one per group (opset 18).
    """
    x, y = node.inputs[0], node.outputs[0]
    groups = int(node.attrs["num_groups"])
    c = b.shape(x)[1]
    if _in_axis(b, x) != 1 or c % groups:
        b.block_node(f"GroupNormalization '{node.name}' expects channels on axis 1, divisible by num_groups")
        return
    per = c // groups
    dx, dy = b.dim(x, 1), b.define(y, 1)
    b.tie(dx, dy)
    b.tie(dx, dx, np.arange(c), np.arange(c) // per * per)
    for t in node.inputs[1:3]:
        if b.shape(t)[0] == c:
            b.tie(b.dim(t, 0), dx)
        elif b.shape(t)[0] == groups and groups > 1:
            b.tie(b.dim(t, 0), dx, None, np.arange(groups) * per)
    b.patch(_set_group_count(dx, per))


def _set_group_count(d, per: int):
    def fix(node: onnx.NodeProto, ctx) -> None:
        ctx.set_attr(node, "num_groups", ctx.kept_size(d) // per)

    return fix


def resize(node, b: Builder) -> None:
    """Resize/Upsample: the channel axis must keep its size; an explicit ``sizes`` entry for it
    becomes the kept count, scales and the other sizes must not change."""
    x, y = node.inputs[0], node.outputs[0]
    axis = _in_axis(b, x)
    if b.shape(y)[axis] != b.shape(x)[axis]:
        b.block_node(f"{node.op} '{node.name}' resizes the channel axis")
        return
    _passthrough(node, b)
    dy = b.by_key.get((y.name, axis))
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
            b.expect(pos, [Kept(dy) if is_sizes and a == axis else Const(v) for a, v in enumerate(values)],
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
    if axis in axes and (pads[axes.index(axis)] or pads[n + axes.index(axis)]):
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
    if axis not in axes:
        _passthrough(node, b)
        for pos in computed:
            b.expect(pos, [Const(v) for v in params[pos - 1].reshape(-1).tolist()], "bounds")
        return
    i = axes.index(axis)
    sel = _slice_channels(node, b, x, y, axis, starts[i], ends[i], steps[i])
    if sel is None:
        return
    dx, (start, stop, step) = b.dim(x, axis), sel
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
    if axis not in axes:
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
        b.set_spread(y, Spread(spread.src, tuple(sorted(out_axes)), spread.index.transpose(order), perm.index(spread.shrink)))
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
    if len(varying) == 1:
        k = varying[0]
        dy = b.define(y, o0 + k)
        b.tie(src, dy, np.moveaxis(atoms, k, 0).reshape(seg_out[k], -1)[:, 0], None)
        required[o0 + k] = Kept(dy)
    else:
        if spread is None:
            k = max(varying, key=lambda v: (seg_out[v], v))
            rows = np.moveaxis(atoms, k, 0).reshape(seg_out[k], -1)
            b.tie(src, src, rows.reshape(-1), np.repeat(rows[:, 0], rows.shape[1]))
        else:
            coords = _broadcast(np.arange(in_shape[shrink]), [shrink - i0], seg_in).reshape(seg_out)
            along = [v for v in range(len(seg_out)) if not _constant_along(coords, v)]
            if len(along) != 1:
                b.block_node(f"{node.op} '{node.name}' mixes the shortened axis of spread channels with others")
                return
            k = along[0]
        index = atoms[tuple(slice(None) if v in varying else 0 for v in range(len(seg_out)))]
        b.set_spread(y, Spread(src, tuple(o0 + v for v in varying), index, o0 + k))
        required[o0 + k] = Kept(src, seg_out[k], src.size)
    if node.op == "Reshape":
        _expect_reshape_target(node, b, required)


def _expect_reshape_target(node, b: Builder, required) -> None:
    """Each target entry must give its axis's size after pruning (-1 is inferred from the rest;
    0 copies the input's size, which the check compares like any computed entry)."""
    target = b.int_values(node.inputs[1])
    if target is None:
        b.block_node(f"Reshape '{node.name}' has a target shape computed at run time by ops onnxprune cannot evaluate")
        return
    wanted = [None if v == -1 else required[k] for k, v in enumerate(target.reshape(-1).tolist())]
    copies = None if int(node.attrs.get("allowzero", 0)) else node.inputs[0]
    b.expect(1, wanted, "target shape", zero_copies=copies)


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


def softmax(node, b: Builder) -> None:
    x = node.inputs[0]
    r, channel = b.rank(x), _in_axis(b, x)
    old = _opset(b) < 13  # before opset 13, Softmax normalised over all axes from `axis` on
    axis = int(node.attrs.get("axis", 1 if old else -1)) % r
    if channel == axis or (old and channel > axis):
        b.block_node(f"{node.op} '{node.name}' normalises over the channel axis")
        return
    _passthrough(node, b)


def quantize(node, b: Builder) -> None:
    """QuantizeLinear/DequantizeLinear of a feature map: channels pass through, per-channel
    scales and zero points (on the channel axis) are sliced with them.

    DequantizeLinear of constants (int8 weights, int32 biases) is a weight: its output is an
    alias of the integer tensor, so Conv/Gemm slice the integers, and a per-channel scale and
    zero point on the same axis are sliced with that axis.
    """
    x, y = node.inputs[0], node.outputs[0]
    params = [t for t in node.inputs[1:3] if t.name]
    if int(node.attrs.get("block_size", 0)):
        b.block_node(f"{node.op} '{node.name}' uses blocked quantization")
        return
    r = b.rank(x)
    q_axis = int(node.attrs.get("axis", 1)) % max(r, 1)
    per_channel = [t for t in params if int(np.prod(b.shape(t))) > 1]
    if node.op == "DequantizeLinear" and all(b.is_const(t) for t in (x, *params)):
        b.alias(y, x, list(range(r)))
        if per_channel:
            dq = b.dim(x, q_axis)
            for t in per_channel:
                b.tie(b.dim(t, 0), dq)
        return
    if r < 2:
        b.refuse(y, f"{node.op} '{node.name}': input '{x.name}' has no channel axis")
        return
    axis = _in_axis(b, x)
    if per_channel and q_axis != axis:
        b.block_node(f"{node.op} '{node.name}' quantizes per channel along axis {q_axis}, not the channel axis {axis}")
        return
    dx, dy = b.dim(x, axis), b.define(y, axis)
    b.tie(dx, dy)
    for t in per_channel:
        b.tie(b.dim(t, 0), dx)


def shape_only(node, b: Builder) -> None:
    """Shape/Size read sizes, not values: their outputs are no channel tensors. Where a size
    ends up in a Reshape target or Slice bound, that rule proves it follows the pruning."""
    for t in node.inputs:
        b.spread_of(t)
    for t in node.outputs:
        b.refuse(t, f"{node.op} '{node.name}' output is a shape, not a feature map")


def unknown_op(node, b: Builder) -> None:
    b.block_node(f"{node.op} '{node.name}' has no pruning rule")


def _opset(b: Builder) -> int:
    for imp in b.model.proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 1


def _remove_attr(node: onnx.NodeProto, name: str) -> None:
    for i, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[i]
            return


UNARY = [
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus", "Softsign",
    "Erf", "Elu", "Selu", "Celu", "Gelu", "Mish", "ThresholdedRelu", "Exp", "Log", "Sqrt", "Neg", "Abs",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast",
]
ELEMENTWISE = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where"]
POOLS = ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]
REDUCES = ["ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceProd"]

RULES = {
    **{op: unary for op in UNARY},
    **{op: elementwise for op in ELEMENTWISE},
    **{op: pool for op in POOLS},
    **{op: reduce for op in REDUCES},
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Einsum": einsum,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Expand": expand,
    "Tile": tile,
    "Transpose": transpose,
    "Reshape": reshape,
    "Flatten": reshape,
    "Squeeze": reshape,
    "Unsqueeze": reshape,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "QuantizeLinear": quantize,
    "DequantizeLinear": quantize,
    "Shape": shape_only,
    "Size": shape_only,
}


def supported_ops() -> list[str]:
    return sorted(RULES)
