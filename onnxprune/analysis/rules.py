"""Per-op dependency rules: one small function per op type, in one table (``RULES``).

Rules of ops that only move channels live in ``shape_rules.py`` (Slice, Concat, ...) and
``reshape_rules.py`` (Reshape and its kin), with their shared helpers in ``shape_common.py``.
A rule receives the node and the analysis ``Builder`` and states how channels flow through the
node: which output axis carries channels (``b.define``), which input and output atoms are the
same channel (``b.tie``), which weight axes are produced or consumed (``b.dim(w, axis, role)``),
and what must be patched when channels disappear (``b.patch``). An op with no rule blocks every
channel it touches; nothing is guessed.
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import BN_SCALE, DEPTHWISE, IN, OUT, Builder
from .reshape_rules import reshape
from .shape_common import carries_none, checked_channel_axis, input_axis, passthrough, refuse_from
from .shape_rules import concat, expand, gather, pad, resize, slice_, split, tile, transpose


# --- helpers ---------------------------------------------------------------------------------
def _refuse_extra_outputs(node, b: Builder, reason: str) -> None:
    for t in node.outputs[1:]:
        if t.name:
            b.refuse(t, reason)


def unary(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    spread = b.spread_of(x)
    if spread is not None:  # a shuffle's [N, g, C/g, H, W] passes through unchanged
        b.set_spread(y, spread.then(b.model.index_of(node)))
    else:
        passthrough(node, b)
    _refuse_extra_outputs(node, b, f"{node.op} '{node.name}': secondary output")


def elementwise(node, b: Builder) -> None:
    """Broadcasting ops (Add, Mul, PRelu, Where, ...): aligned channel axes are the same channel.

    Residual additions tie both branches; SE blocks tie the scale [N,C,1,1] to the features;
    a per-channel constant ([C,1,1] or [1,C,1,1]) is sliced with them; a scalar broadcasts.
    The channel axis is the one the operands carry (the last one of a channels-last MatMul
    output). Operands that carry none (a LayerNorm's output, a graph input) give an output
    with none, not a guessed axis 1.
    """
    y = node.outputs[0]
    r = b.rank(y)
    if r < 2:
        b.block_node(f"{node.op} '{node.name}': output has no channel axis")
        return
    spread = [t for t in node.inputs if b.spread_of(t) is not None]
    if len(spread) == 1 and all(t in spread or int(np.prod(b.shape(t))) == 1 for t in node.inputs):
        b.set_spread(y, b.spread[spread[0].name].then(b.model.index_of(node)))  # scaled by a scalar
        return
    axes = {b.axis_of(t) + (r - b.rank(t)) for t in node.inputs if b.axis_of(t) is not None}
    none = [t for t in node.inputs if carries_none(b, t)]
    if not axes and none:
        refuse_from(b, none[0], [y])
        return
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
        passthrough(node, b)  # channels are a batch axis of the product: they pass through
        return
    b.tie(b.dim(x, last), b.dim(w, 0, IN))
    b.tie(b.define(y, b.rank(y) - 1), b.dim(w, 1, OUT))


def einsum(node, b: Builder) -> None:
    """Einsum of a feature map with a constant weight, read from the equation.

    The letter of the input's channel axis decides: contracted with the weight (``bchw,oc->bohw``)
    the weight axis consumes it and the weight's only new output letter produces the output
    channels; kept in the output it passes through (the weight, if it has that letter, is sliced
    with it, like a per-channel scale). Summed away without the weight, the channels block.
    An input that carries no channels (a LayerNorm's output) is read like MatMul's: the one letter
    it shares with the weight only is consumed, the weight's only new letter produces channels.
    """
    terms, out = einsum_terms(node, b)
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
    if carries_none(b, x):
        contracted = [c for c in tx if c in tw and c not in out]
        if len(contracted) != 1:
            refuse_from(b, x, [y])
            return
        axis = tx.index(contracted[0])
    else:
        axis = input_axis(b, x)
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


def einsum_terms(node, b: Builder):
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
    passthrough(node, b)
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
    axis = input_axis(b, x)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            passthrough(node, b)
        else:
            b.block_node(f"{node.op} '{node.name}' reduces over all axes, channels included")
        return
    axes = [a % r for a in axes]
    if carries_none(b, x):
        refuse_from(b, x, [y])
        return
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
    channel = input_axis(b, x)
    if carries_none(b, x):
        refuse_from(b, x, node.outputs)
        return
    if channel >= first:
        b.block_node(
            f"LayerNormalization '{node.name}' normalises over the channel axis {channel} of '{x.name}' "
            f"(its mean and variance over all channels change when one is removed)"
        )
        return
    passthrough(node, b)
    _refuse_extra_outputs(node, b, f"LayerNormalization '{node.name}': statistics output")


def group_norm(node, b: Builder) -> None:
    """GroupNormalization: statistics per group of C/G channels, so only whole groups can go.

    The channels of a group are tied into one; ``num_groups`` is patched to the kept groups.
    Scale and bias have C entries (opset 21) or one per group (opset 18).
    """
    x, y = node.inputs[0], node.outputs[0]
    groups = int(node.attrs["num_groups"])
    c = b.shape(x)[1]
    if input_axis(b, x) != 1 or c % groups:
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

def softmax(node, b: Builder) -> None:
    x = node.inputs[0]
    r, channel = b.rank(x), input_axis(b, x)
    old = _opset(b) < 13  # before opset 13, Softmax normalised over all axes from `axis` on
    axis = int(node.attrs.get("axis", 1 if old else -1)) % r
    if not carries_none(b, x) and (channel == axis or (old and channel > axis)):
        b.block_node(f"{node.op} '{node.name}' normalises over the channel axis")
        return
    passthrough(node, b)


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
    axis = checked_channel_axis(node, b, x, y)
    if axis is None:
        return
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
