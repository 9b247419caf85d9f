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

from .analysis import BN_SCALE, DEPTHWISE, IN, OUT, Builder


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
        b.block_node(f"Conv '{node.name}' is a grouped convolution (group={group}); only group=1 and depthwise are supported")


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
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    group = int(node.attrs.get("group", 1))
    if not b.is_const(w) or group != 1:
        b.block_node(f"ConvTranspose '{node.name}': only constant weights with group=1 are supported")
        return
    b.tie(b.dim(x, 1), b.dim(w, 0, IN))
    dy = b.define(y, 1)
    b.tie(dy, b.dim(w, 1, OUT))
    if bias is not None:
        b.tie(dy, b.dim(bias, 0))


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
        if not b.is_const(node.inputs[1]):
            b.block_node(f"{node.op} '{node.name}' has axes computed at run time")
            return
        axes = b.value(node.inputs[1]).tolist()
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


def resize(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    axis = _in_axis(b, x)
    if b.shape(y)[axis] != b.shape(x)[axis]:
        b.block_node(f"{node.op} '{node.name}' resizes the channel axis")
        return
    _passthrough(node, b)
    sizes = node.inputs[3] if node.op == "Resize" and len(node.inputs) > 3 else None
    if sizes is not None and sizes.name:
        if not b.is_const(sizes):
            b.block_node(f"Resize '{node.name}' has sizes computed at run time")
            return
        b.patch(_set_const_entry(3, axis, b.dim(x, axis)))


def pad(node, b: Builder) -> None:
    x = node.inputs[0]
    r, axis = b.rank(x), _in_axis(b, x)
    pads = node.attrs.get("pads")
    if pads is None and len(node.inputs) > 1:
        if not b.is_const(node.inputs[1]):
            b.block_node(f"Pad '{node.name}' has pads computed at run time")
            return
        pads = b.value(node.inputs[1]).tolist()
    axes = list(range(r))
    if len(node.inputs) > 3 and node.inputs[3].name:
        axes = [a % r for a in b.value(node.inputs[3]).tolist()]
    n = len(axes)
    if axis in axes and (pads[axes.index(axis)] or pads[n + axes.index(axis)]):
        b.block_node(f"Pad '{node.name}' pads the channel axis")
        return
    _passthrough(node, b)


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
    x = node.inputs[0]
    r = b.rank(x)
    split_axis = int(node.attrs.get("axis", 0)) % r
    axis = _in_axis(b, x)
    if split_axis != axis:
        for y in node.outputs:
            _passthrough(node, b, x, y)
        return
    if len(node.inputs) > 1 and node.inputs[1].name and not b.is_const(node.inputs[1]):
        b.block_node(f"Split '{node.name}' has sizes computed at run time")
        return
    dx = b.dim(x, axis)
    offset = 0
    for y in node.outputs:
        dy = b.define(y, axis)
        b.tie(dx, dy, offset + np.arange(dy.size), None)
        offset += dy.size
    outputs = [b.by_key[(y.name, axis)] for y in node.outputs]
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
    x, y = node.inputs[0], node.outputs[0]
    r, axis = b.rank(x), _in_axis(b, x)
    consts = [t for t in node.inputs[1:] if t.name]
    if not all(b.is_const(t) for t in consts):
        b.block_node(f"Slice '{node.name}' has bounds computed at run time")
        return
    starts, ends = b.value(node.inputs[1]).tolist(), b.value(node.inputs[2]).tolist()
    axes = b.value(node.inputs[3]).tolist() if len(node.inputs) > 3 and node.inputs[3].name else list(range(len(starts)))
    steps = b.value(node.inputs[4]).tolist() if len(node.inputs) > 4 and node.inputs[4].name else [1] * len(starts)
    axes = [a % r for a in axes]
    if axis not in axes:
        _passthrough(node, b)
        return
    i = axes.index(axis)
    if steps[i] != 1:
        b.block_node(f"Slice '{node.name}' takes every {steps[i]}th channel (steps other than 1 are not supported)")
        return
    n = b.shape(x)[axis]
    start, stop, _ = slice(starts[i], ends[i]).indices(n)
    dx, dy = b.dim(x, axis), b.define(y, axis)
    b.tie(dx, dy, np.arange(start, max(start, stop)), None)
    b.patch(_set_slice_bounds(dx, i, start, max(start, stop)))


def _set_slice_bounds(dx, i: int, start: int, stop: int):
    def fix(node: onnx.NodeProto, ctx) -> None:
        kept = ctx.kept_index(dx)
        for pos, bound, label in ((1, start, "starts"), (2, stop, "ends")):
            values = ctx.constant(node.input[pos]).copy()
            values[i] = np.searchsorted(kept, bound)
            ctx.replace_constant(node, pos, values, f"{node.name or node.output[0]}_{label}")

    return fix


def transpose(node, b: Builder) -> None:
    x, y = node.inputs[0], node.outputs[0]
    axis = _in_axis(b, x)
    perm = node.attrs.get("perm") or list(reversed(range(b.rank(x))))
    b.tie(b.dim(x, axis), b.define(y, list(perm).index(axis)))


def reshape(node, b: Builder) -> None:
    """Reshape/Flatten/Squeeze/Unsqueeze: push the channel index through the reshape.

    The input's channel index, broadcast to the input's shape, is reshaped like the data; the
    output axis along which that index alone varies becomes the channel axis. Flatten of
    [1, C, H, W] gives axis 1 with H*W consecutive features per channel (the block that feeds a
    Gemm). If no single axis carries the index (a channel-shuffle's [1, g, C/g, H, W]), block.
    """
    x, y = node.inputs[0], node.outputs[0]
    in_shape, out_shape = b.shape(x), b.shape(y)
    axis = _in_axis(b, x)
    if len(in_shape) < 2 or len(out_shape) < 1:
        b.block_node(f"{node.op} '{node.name}': no channel axis")
        return
    index = np.broadcast_to(
        np.arange(in_shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(in_shape))]), in_shape
    ).reshape(out_shape)
    candidates = [k for k in range(len(out_shape)) if out_shape[k] > 1 and _varies_only_along(index, k)]
    if len(candidates) != 1:
        b.block_node(f"{node.op} '{node.name}' spreads the channel axis over several axes (shape {list(in_shape)} -> {list(out_shape)})")
        return
    k = candidates[0]
    dx, dy = b.dim(x, axis), b.define(y, k)
    per_position = np.moveaxis(index, k, 0).reshape(out_shape[k], -1)[:, 0]
    b.tie(dx, dy, per_position, None)
    if node.op == "Reshape":
        shape_t = node.inputs[1]
        if not b.is_const(shape_t):
            b.block(dx, f"Reshape '{node.name}' has a target shape computed at run time")
            return
        if b.value(shape_t)[k] > 0:
            b.patch(_set_const_entry(1, k, dy))


def _varies_only_along(index: np.ndarray, k: int) -> bool:
    rows = np.moveaxis(index, k, 0).reshape(index.shape[k], -1)
    return bool((rows == rows[:, :1]).all())


def _set_const_entry(input_pos: int, entry: int, d):
    """Patch entry ``entry`` of the constant input ``input_pos`` to the kept size of ``d``."""

    def fix(node: onnx.NodeProto, ctx) -> None:
        values = ctx.constant(node.input[input_pos]).copy()
        values[entry] = ctx.kept_size(d)
        ctx.replace_constant(node, input_pos, values, f"{node.name or node.output[0]}_shape")

    return fix


def softmax(node, b: Builder) -> None:
    x = node.inputs[0]
    r, channel = b.rank(x), _in_axis(b, x)
    old = _opset(b) < 13  # before opset 13, Softmax normalised over all axes from `axis` on
    axis = int(node.attrs.get("axis", 1 if old else -1)) % r
    if channel == axis or (old and channel > axis):
        b.block_node(f"{node.op} '{node.name}' normalises over the channel axis")
        return
    _passthrough(node, b)


def shape_only(node, b: Builder) -> None:
    """Shape/Size read sizes, not values: their outputs are no channel tensors. If a computed
    size ends up hard-coding a channel count, the rewrite's onnxruntime check reports it."""
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
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Transpose": transpose,
    "Reshape": reshape,
    "Flatten": reshape,
    "Squeeze": reshape,
    "Unsqueeze": reshape,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "Shape": shape_only,
    "Size": shape_only,
}


def supported_ops() -> list[str]:
    return sorted(RULES)
