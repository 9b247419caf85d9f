"""The op table of the torch bridge: one short torch function per ONNX op (``OPS``), with the
node representation they receive. ``module.py`` builds an ``nn.Module`` that calls them in
topological order (see its docstring for which tensors train)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .nodes import TORCH_DTYPES, align, binary, ints, present, to_torch_pads, torch_can_pad, variadic, window
from .shape_ops import SHAPE_OPS


# --------------------------------------------------------------------------------------------
# Convolution, normalisation and dense layers


def _conv(n, x, w, b=None):
    """Conv: 1D/2D/3D, groups, dilations, strides, explicit or automatic (SAME/VALID) pads."""
    nd = w.dim() - 2
    strides, dilations, pads = window(n, x, w.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    group = n.get("group", 1)
    if pads[:nd] == pads[nd:]:
        return conv(x, w, b, strides, pads[:nd], dilations, group)
    return conv(F.pad(x, to_torch_pads(pads)), w, b, strides, 0, dilations, group)


def _conv_transpose(n, x, w, b=None):
    """ConvTranspose: transposed conv without padding, then crop ``pads`` / add ``output_padding``.

    Cropping after the fact handles asymmetric pads, ``output_shape`` and SAME padding, which
    torch's own ``padding`` argument cannot express; the bias is added last so that positions
    created by ``output_padding`` get it too.
    """
    nd = w.dim() - 2
    kernel, sizes = w.shape[2:], x.shape[2:]
    strides = list(n.get("strides", [1] * nd))
    dilations = list(n.get("dilations", [1] * nd))
    out_pad = list(n.get("output_padding", [0] * nd))
    full = [s * (i - 1) + (k - 1) * d + 1 + p for s, i, k, d, p in zip(strides, sizes, kernel, dilations, out_pad)]
    auto = n.get("auto_pad", "NOTSET")
    target = n.get("output_shape")
    if target is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        target = [i * s for i, s in zip(sizes, strides)]
    if target is not None:
        totals = [f - t for f, t in zip(full, list(target)[-nd:])]
        begins = [t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals]
        pads = begins + [t - b_ for t, b_ in zip(totals, begins)]
    elif auto == "VALID":
        pads = [0] * (2 * nd)
    else:
        pads = list(n.get("pads", [0] * (2 * nd)))
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    y = conv(x, w, None, strides, 0, 0, n.get("group", 1), dilations)
    crop = [-p for p in pads[:nd]] + [op - p for op, p in zip(out_pad, pads[nd:])]
    if any(crop):
        y = F.pad(y, to_torch_pads(crop))
    return y if b is None else y + b.reshape(1, -1, *([1] * nd))


def _gemm(n, a, b, c=None):
    """Gemm: alpha * A' @ B' + beta * C (F.linear for the common transB=1 layer)."""
    alpha, beta = n.get("alpha", 1.0), n.get("beta", 1.0)
    trans_a, trans_b = n.get("transA", 0), n.get("transB", 0)
    if trans_b and not trans_a and alpha == 1.0 and (c is None or (beta == 1.0 and c.dim() == 1)):
        return F.linear(a, b, c)
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return y


def _batch_norm(n, x, scale, bias, mean, var):
    """BatchNormalization (opsets 9-15): running statistics unless batch statistics are asked for.

    Batch statistics are used when the graph itself says ``training_mode=1`` (the running
    statistics are then left alone) or when the module was built with ``train_bn=True`` and is
    in training mode (the running statistics are then updated in place, like torch BN).
    """
    eps = n.get("epsilon", 1e-5)
    if n.state.train_bn and n.state.training:
        momentum = 1.0 - n.get("momentum", 0.9)
        return F.batch_norm(x, mean, var, scale, bias, True, momentum, eps)
    if n.get("training_mode", 0):
        return F.batch_norm(x, None, None, scale, bias, True, 0.0, eps)
    if mean.dtype != x.dtype:  # opset 15 allows statistics in another float type
        mean, var = mean.to(x.dtype), var.to(x.dtype)
    if mean.requires_grad or var.requires_grad:
        # The exporter shared a statistics initializer with a trained weight (identical values,
        # e.g. zeros at random init); F.batch_norm cannot differentiate through the statistics.
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + eps)
        return y * scale.reshape(shape) + bias.reshape(shape)
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


def _instance_norm(n, x, scale, bias):
    return F.instance_norm(x, weight=scale, bias=bias, eps=n.get("epsilon", 1e-5))


def _layer_norm(n, x, scale, bias=None):
    """LayerNormalization over dims ``axis..``; scale/bias may be broadcastable, not exact."""
    shape = x.shape[n.get("axis", -1) % x.dim():]
    eps = n.get("epsilon", 1e-5)
    if scale.shape == shape and (bias is None or bias.shape == shape):
        return F.layer_norm(x, shape, scale, bias, eps)
    y = F.layer_norm(x, shape, None, None, eps) * scale
    return y if bias is None else y + bias


def _lrn(n, x):
    """LRN: x / (bias + alpha/size * sum of squares over a channel window) ** beta."""
    size = n.get("size")
    front = (size - 1) // 2
    squares = (x * x).transpose(1, -1)
    squares = F.pad(squares, (front, size - 1 - front)).unfold(-1, size, 1).sum(-1).transpose(1, -1)
    return x / (n.get("bias", 1.0) + n.get("alpha", 1e-4) / size * squares) ** n.get("beta", 0.75)


# --------------------------------------------------------------------------------------------
# Activations and element-wise math


def _clip(n, x, lo=None, hi=None):
    """Clip: bounds are attributes before opset 11 and optional inputs from opset 11."""
    lo = present(lo) if lo is not None else n.get("min")
    hi = present(hi) if hi is not None else n.get("max")
    if lo is None and hi is None:
        return x
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        lo = lo.to(x.device) if isinstance(lo, torch.Tensor) else lo
        hi = hi.to(x.device) if isinstance(hi, torch.Tensor) else hi
        if isinstance(lo, float) or isinstance(hi, float):  # mixed: make both tensors
            lo = torch.tensor(lo, dtype=x.dtype, device=x.device) if isinstance(lo, float) else lo
            hi = torch.tensor(hi, dtype=x.dtype, device=x.device) if isinstance(hi, float) else hi
    return torch.clamp(x, lo, hi)


def _prelu(n, x, slope):
    """PRelu with an ONNX-style (unidirectionally broadcast) slope, e.g. shape [C, 1, 1]."""
    return torch.where(x >= 0, x, x * slope)


def _selu(n, x):
    alpha = n.get("alpha", 1.67326319217681884765625)
    gamma = n.get("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def _hard_sigmoid(n, x):
    return torch.clamp(n.get("alpha", 0.2) * x + n.get("beta", 0.5), 0.0, 1.0)


def _div(n, a, b):
    """Div: true division for floats, truncating division for integers (as onnxruntime)."""
    a, b = align(a, b)
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(n, a, b):
    """Pow keeps the base's type even when the exponent has another one."""
    a, b = align(a, b)
    return torch.pow(a, b).to(a.dtype)


def _cast(n, x):
    return x.to(TORCH_DTYPES[n.get("to")])


def _dropout(n, x, *ignored):
    """Dropout is the identity at inference; the optional mask output is all True."""
    if len(n.outputs) > 1 and n.outputs[1]:
        return x, torch.ones_like(x, dtype=torch.bool)
    return x


def _softmax(n, x, log=False):
    """(Log)Softmax: before opset 13 the input is coerced to 2D at ``axis`` (default 1)."""
    fn = F.log_softmax if log else F.softmax
    if n.opset >= 13:
        return fn(x, n.get("axis", -1))
    axis = n.get("axis", 1) % x.dim()
    return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)


def _arg(fn: Callable) -> Callable:
    """ArgMax / ArgMin with keepdims and select_last_index."""

    def run(n, x):
        axis = n.get("axis", 0) % x.dim()
        keep = bool(n.get("keepdims", 1))
        if not n.get("select_last_index", 0):
            return fn(x, axis, keep)
        return x.shape[axis] - 1 - fn(x.flip(axis), axis, keep)

    return run


# --------------------------------------------------------------------------------------------
# Pooling and reductions


def _max_pool(n, x):
    """MaxPool (1D/2D/3D) with strides, dilations, pads, auto_pad and ceil_mode."""
    kernel = list(n.get("kernel_shape"))
    nd = len(kernel)
    strides, dilations, pads = window(n, x, kernel)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    ceil = bool(n.get("ceil_mode", 0))
    if torch_can_pad(pads, kernel, dilations):
        return pool(x, kernel, strides, pads[:nd], dilations, ceil_mode=ceil)
    x = F.pad(x, to_torch_pads(pads), value=-math.inf)
    return pool(x, kernel, strides, 0, dilations, ceil_mode=ceil)


def _avg_pool(n, x):
    """AveragePool with count_include_pad and ceil_mode.

    Pads torch cannot express are applied with F.pad; excluding them from the count is then
    done by dividing by the pooled mask of real positions (the divisors cancel).
    """
    kernel = list(n.get("kernel_shape"))
    nd = len(kernel)
    strides, _, pads = window(n, x, kernel)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    ceil = bool(n.get("ceil_mode", 0))
    include = bool(n.get("count_include_pad", 0))
    if torch_can_pad(pads, kernel):
        return pool(x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)
    padded = pool(F.pad(x, to_torch_pads(pads)), kernel, strides, 0, ceil_mode=ceil)
    if include:
        return padded
    mask = F.pad(torch.ones_like(x[:1, :1]), to_torch_pads(pads))
    return padded / pool(mask, kernel, strides, 0, ceil_mode=ceil)


def _global_pool(fn: Callable) -> Callable:
    return lambda n, x: fn(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _reduce(fn: Callable) -> Callable:
    """Reduce*: axes as attribute (old opsets) or input (ReduceSum 13+, others 18+)."""

    def run(n, x, axes=None):
        axes = ints(axes) if axes is not None else n.get("axes")
        if not axes:
            if n.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, dim=tuple(axes), keepdim=bool(n.get("keepdims", 1)))

    return run


def _sum_square(x, dim, keepdim):
    return (x * x).sum(dim=dim, keepdim=keepdim)


def _l2(x, dim, keepdim):
    return torch.linalg.vector_norm(x, 2, dim=dim, keepdim=keepdim)


# --------------------------------------------------------------------------------------------
# The op table: ONNX op type -> f(node, *inputs) returning a tensor or a tuple of tensors.

OPS: dict[str, Callable] = {
    # layers
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": binary(torch.matmul),
    "BatchNormalization": _batch_norm,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "LRN": _lrn,
    # activations
    "Relu": lambda n, x: F.relu(x),
    "LeakyRelu": lambda n, x: F.leaky_relu(x, n.get("alpha", 0.01)),
    "PRelu": _prelu,
    "Clip": _clip,
    "Sigmoid": lambda n, x: torch.sigmoid(x),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": lambda n, x: F.hardswish(x),
    "Tanh": lambda n, x: torch.tanh(x),
    "Softplus": lambda n, x: F.softplus(x),
    "Softsign": lambda n, x: F.softsign(x),
    "Elu": lambda n, x: F.elu(x, n.get("alpha", 1.0)),
    "Celu": lambda n, x: F.celu(x, n.get("alpha", 1.0)),
    "Selu": _selu,
    "Gelu": lambda n, x: F.gelu(x, approximate=n.get("approximate", "none")),
    "Mish": lambda n, x: F.mish(x),
    "ThresholdedRelu": lambda n, x: torch.where(x > n.get("alpha", 1.0), x, torch.zeros_like(x)),
    "Softmax": _softmax,
    "LogSoftmax": lambda n, x: _softmax(n, x, log=True),
    # element-wise math
    "Erf": lambda n, x: torch.erf(x),
    "Exp": lambda n, x: torch.exp(x),
    "Log": lambda n, x: torch.log(x),
    "Sqrt": lambda n, x: torch.sqrt(x),
    "Neg": lambda n, x: torch.neg(x),
    "Abs": lambda n, x: torch.abs(x),
    "Reciprocal": lambda n, x: torch.reciprocal(x),
    "Floor": lambda n, x: torch.floor(x),
    "Ceil": lambda n, x: torch.ceil(x),
    "Sign": lambda n, x: torch.sign(x),
    "Pow": _pow,
    "Add": binary(torch.add),
    "Sub": binary(torch.sub),
    "Mul": binary(torch.mul),
    "Div": _div,
    "Max": variadic(torch.maximum),
    "Min": variadic(torch.minimum),
    "Sum": variadic(torch.add),
    "Mean": lambda n, *xs: variadic(torch.add)(n, *xs) / len(xs),
    "Einsum": lambda n, *xs: torch.einsum(n.get("equation"), *align(*xs)),
    # comparisons and logic
    "Equal": binary(torch.eq),
    "Less": binary(torch.lt),
    "LessOrEqual": binary(torch.le),
    "Greater": binary(torch.gt),
    "GreaterOrEqual": binary(torch.ge),
    "And": binary(torch.logical_and),
    "Or": binary(torch.logical_or),
    "Xor": binary(torch.logical_xor),
    "Not": lambda n, x: torch.logical_not(x),
    "ArgMax": _arg(torch.argmax),
    "ArgMin": _arg(torch.argmin),
    # pass-through and types
    "Identity": lambda n, x: x,
    "Dropout": _dropout,
    "Cast": _cast,
    "CastLike": lambda n, x, like: x.to(like.dtype),
    # pooling and reductions
    "MaxPool": _max_pool,
    "AveragePool": _avg_pool,
    "GlobalAveragePool": _global_pool(torch.mean),
    "GlobalMaxPool": _global_pool(torch.amax),
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "ReduceSumSquare": _reduce(_sum_square),
    "ReduceL2": _reduce(_l2),
    "ReduceLogSumExp": _reduce(torch.logsumexp),
    # shapes and data movement
    "Size": lambda n, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Tile": lambda n, x, repeats: x.repeat(ints(repeats)),
    # shapes, indexing, data movement, resize (shape_ops.py)
    **SHAPE_OPS,
}

# "Constant" is evaluated once when the module is built (its value may become a Parameter).
SUPPORTED_OPS = tuple(sorted([*OPS, "Constant"]))
