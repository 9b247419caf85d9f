"""Run an ONNX graph as a ``torch.nn.Module`` and write trained weights back into the ONNX file.

Fine-tuning a pruned model needs autograd, which onnxruntime does not give us, and the
general-purpose converters (onnx2torch, onnx2pytorch) break on what today's exporters produce.
This bridge is deliberately small: it interprets the graph node by node, in topological order,
with one short torch function per ONNX op (see ``_OPS``), so the module computes exactly what
the file computes, and every trainable tensor stays tied to the initializer it came from.

    module = to_torch(model)                    # nn.Module; BN uses frozen running statistics
    loss = criterion(module(x), y); loss.backward(); optimizer.step()
    tuned = write_back(module, model)           # a new ModelProto, same structure and names

Which tensors train. A float initializer (or ``Constant`` node value) becomes an
``nn.Parameter`` when it is used as a weight or bias: Conv / ConvTranspose weight and bias, any
constant operand of Gemm and MatMul, the bias ``Add`` that follows a MatMul, BatchNormalization
scale and bias, PRelu slope, InstanceNormalization and LayerNormalization scale and bias. Chains
of ``Identity`` nodes are followed, so an initializer the exporter shared between several convs
stays one shared parameter (exactly as the graph says). Every other float constant (BN running
mean/variance, Clip bounds, Resize scales ...) is a buffer; integer constants (shapes, axes) are
plain CPU tensors.

Batch normalization. By default BN always uses its running statistics (the inference formula)
while its scale and bias still train: small fine-tuning batches would otherwise corrupt the
statistics. ``to_torch(model, train_bn=True)`` makes BN behave like ``torch.nn.BatchNorm``: in
``module.train()`` it normalises with batch statistics and updates the running mean/variance
(ONNX ``momentum`` m maps to torch momentum ``1 - m``); ``write_back`` then stores them too.
"""

from __future__ import annotations

import heapq
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import onnx
import onnx.inliner
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from ..errors import DataError, ModelError

Value = torch.Tensor | None

_TORCH_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.UINT16: torch.uint16,
    onnx.TensorProto.UINT32: torch.uint32,
    onnx.TensorProto.UINT64: torch.uint64,
    onnx.TensorProto.BOOL: torch.bool,
}

# Inputs (by position) that hold trainable weights and biases.
_WEIGHT_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
}

_DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------------------------
# Node representation


@dataclass
class _State:
    """Flags shared by the module and its nodes: whether it is training, and BN behaviour."""

    training: bool = False
    train_bn: bool = False


@dataclass
class _Node:
    """One ONNX node, parsed once: op function, value names, attributes and opset."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    state: _State
    fn: Callable = field(repr=False, default=None)

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


# --------------------------------------------------------------------------------------------
# Small helpers shared by the op functions


def _ints(t: Value) -> list[int] | None:
    """A (shape-like) tensor as a list of python ints; None stays None."""
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def _floats(t: Value) -> list[float] | None:
    return None if t is None else [float(v) for v in t.reshape(-1).tolist()]


def _present(t: Value) -> Value:
    """Optional inputs may be given as empty tensors; treat those as absent."""
    return None if t is None or t.numel() == 0 else t


def _align(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Move CPU tensors (shape arithmetic, integer constants) to the device of the others."""
    devices = {x.device for x in xs}
    if len(devices) == 1:
        return list(xs)
    target = next(d for d in devices if d.type != "cpu")
    return [x.to(target) for x in xs]


def _binary(fn: Callable) -> Callable:
    """Wrap a broadcasting torch function as an op: f(node, a, b)."""
    return lambda n, a, b: fn(*_align(a, b))


def _variadic(fn: Callable) -> Callable:
    """Fold a binary torch function over any number of inputs (Max, Min, Sum)."""

    def run(n, *xs):
        xs = _align(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


def _torch_pads(pads: list[int]) -> list[int]:
    """ONNX pads [b1, .., bn, e1, .., en] (first dim first) -> F.pad order (last dim first)."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[nd + i]]
    return out


def _spatial_pads(n: _Node, sizes, kernel, strides, dilations) -> list[int]:
    """Explicit begin/end pads for Conv and pooling, resolving ``auto_pad``."""
    nd = len(kernel)
    auto = n.get("auto_pad", "NOTSET")
    if auto == "VALID":
        return [0] * (2 * nd)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations):
            total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
            begin = total // 2 if auto == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins + ends
    return list(n.get("pads", [0] * (2 * nd)))


def _window(n: _Node, x: torch.Tensor, kernel) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and explicit pads of a windowed op over x's spatial dims."""
    nd = len(kernel)
    strides = list(n.get("strides", [1] * nd))
    dilations = list(n.get("dilations", [1] * nd))
    pads = _spatial_pads(n, x.shape[2:], kernel, strides, dilations)
    return strides, dilations, pads


def _torch_can_pad(pads: list[int], kernel, dilations=None) -> bool:
    """torch pooling pads symmetrically and at most half the (effective) kernel."""
    nd = len(kernel)
    dilations = dilations or [1] * nd
    symmetric = pads[:nd] == pads[nd:]
    return symmetric and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(pads, kernel, dilations))


# --------------------------------------------------------------------------------------------
# Convolution, normalisation and dense layers


def _conv(n, x, w, b=None):
    """Conv: 1D/2D/3D, groups, dilations, strides, explicit or automatic (SAME/VALID) pads."""
    nd = w.dim() - 2
    strides, dilations, pads = _window(n, x, w.shape[2:])
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    group = n.get("group", 1)
    if pads[:nd] == pads[nd:]:
        return conv(x, w, b, strides, pads[:nd], dilations, group)
    return conv(F.pad(x, _torch_pads(pads)), w, b, strides, 0, dilations, group)


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
        y = F.pad(y, _torch_pads(crop))
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
    lo = _present(lo) if lo is not None else n.get("min")
    hi = _present(hi) if hi is not None else n.get("max")
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
    a, b = _align(a, b)
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _pow(n, a, b):
    """Pow keeps the base's type even when the exponent has another one."""
    a, b = _align(a, b)
    return torch.pow(a, b).to(a.dtype)


def _cast(n, x):
    return x.to(_TORCH_DTYPES[n.get("to")])


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
    strides, dilations, pads = _window(n, x, kernel)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    ceil = bool(n.get("ceil_mode", 0))
    if _torch_can_pad(pads, kernel, dilations):
        return pool(x, kernel, strides, pads[:nd], dilations, ceil_mode=ceil)
    x = F.pad(x, _torch_pads(pads), value=-math.inf)
    return pool(x, kernel, strides, 0, dilations, ceil_mode=ceil)


def _avg_pool(n, x):
    """AveragePool with count_include_pad and ceil_mode.

    Pads torch cannot express are applied with F.pad; excluding them from the count is then
    done by dividing by the pooled mask of real positions (the divisors cancel).
    """
    kernel = list(n.get("kernel_shape"))
    nd = len(kernel)
    strides, _, pads = _window(n, x, kernel)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[nd - 1]
    ceil = bool(n.get("ceil_mode", 0))
    include = bool(n.get("count_include_pad", 0))
    if _torch_can_pad(pads, kernel):
        return pool(x, kernel, strides, pads[:nd], ceil_mode=ceil, count_include_pad=include)
    padded = pool(F.pad(x, _torch_pads(pads)), kernel, strides, 0, ceil_mode=ceil)
    if include:
        return padded
    mask = F.pad(torch.ones_like(x[:1, :1]), _torch_pads(pads))
    return padded / pool(mask, kernel, strides, 0, ceil_mode=ceil)


def _global_pool(fn: Callable) -> Callable:
    return lambda n, x: fn(x, dim=tuple(range(2, x.dim())), keepdim=True)


def _reduce(fn: Callable) -> Callable:
    """Reduce*: axes as attribute (old opsets) or input (ReduceSum 13+, others 18+)."""

    def run(n, x, axes=None):
        axes = _ints(axes) if axes is not None else n.get("axes")
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
# Shapes, indexing and data movement


def _shape(n, x):
    """Shape (with opset-15 start/end) as a CPU int64 tensor, so shape maths stays on the CPU."""
    dims = list(x.shape)[n.get("start", 0) : n.get("end", None)]
    return torch.tensor(dims, dtype=torch.int64)


def _flatten(n, x):
    axis = n.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(n, x, shape):
    """Reshape: 0 copies the input dim unless ``allowzero``; -1 is inferred."""
    dims = _ints(shape)
    if not n.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _squeeze(n, x, axes=None):
    axes = _ints(_present(axes)) if axes is not None else n.get("axes")
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


def _unsqueeze(n, x, axes=None):
    axes = _ints(axes) if axes is not None else list(n.get("axes"))
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _transpose(n, x):
    perm = n.get("perm")
    return x.permute(list(perm) if perm is not None else list(reversed(range(x.dim()))))


def _concat(n, *xs):
    return torch.cat(_align(*xs), dim=n.get("axis"))


def _split(n, x, split=None):
    """Split by sizes (attribute or input) or into equal parts (``num_outputs`` / #outputs)."""
    axis = n.get("axis", 0)
    sizes = _ints(_present(split)) if split is not None else n.get("split")
    if sizes:
        return torch.split(x, list(sizes), dim=axis)
    parts = n.get("num_outputs", len(n.outputs))
    return torch.split(x, -(-x.shape[axis] // parts), dim=axis)


def _slice_axis(x, axis, start, end, step):
    """One axis of Slice with ONNX clamping rules; negative steps go through index_select."""
    dim = x.shape[axis]
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return x[(slice(None),) * axis + (slice(start, end, step),)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return x.index_select(axis, torch.arange(start, end, step, device=x.device))


def _slice(n, x, starts=None, ends=None, axes=None, steps=None):
    """Slice: starts/ends/axes as attributes (opset < 10) or inputs with optional steps."""
    starts = _ints(starts) if starts is not None else list(n.get("starts"))
    ends = _ints(ends) if ends is not None else list(n.get("ends"))
    axes = _ints(axes) if axes is not None else list(n.get("axes", range(len(starts))))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, axis % x.dim(), start, end, step)
    return x


def _pad(n, x, pads=None, value=None, axes=None):
    """Pad (constant, reflect, edge, wrap); pads as attribute (opset < 11) or input, optional axes."""
    pads = _ints(pads) if pads is not None else list(n.get("pads", n.get("paddings")))
    value = _present(value)
    value = value.item() if value is not None else n.get("value", 0.0)
    rank = x.dim()
    axes = [a % rank for a in _ints(axes)] if axes is not None else list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    torch_pads = _torch_pads(full)
    while torch_pads and torch_pads[-2:] == [0, 0]:  # drop leading dims that are not padded
        del torch_pads[-2:]
    if not torch_pads:
        return x
    mode = n.get("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    k = len(torch_pads) // 2  # torch pads up to 3 trailing dims of an (N, C, ...) tensor
    if k > 3:
        raise ModelError(f"Pad node {n.name!r}: mode {mode} over more than 3 dims is not supported")
    lead = x.shape[: rank - k]
    y = x.reshape(1, -1, *x.shape[rank - k :])
    y = F.pad(y, torch_pads, mode={"reflect": "reflect", "edge": "replicate", "wrap": "circular"}[mode])
    return y.reshape(*lead, *y.shape[2:])


def _gather(n, x, idx):
    """Gather along ``axis`` with (possibly negative, possibly scalar) indices."""
    axis = n.get("axis", 0) % x.dim()
    idx = idx.to(x.device).long()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(*x.shape[:axis], *idx.shape, *x.shape[axis + 1 :])


def _gather_elements(n, x, idx):
    axis = n.get("axis", 0) % x.dim()
    idx = idx.to(x.device).long()
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx))


def _constant_of_shape(n, shape):
    value = n.get("value")
    if value is None:
        return torch.zeros(_ints(shape))
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _expand(n, x, shape):
    """Expand uses bidirectional broadcasting (the target may have 1s where x does not)."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _where(n, cond, a, b):
    cond, a, b = _align(cond, a, b)
    return torch.where(cond, a, b)


def _range(n, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


def _depth_to_space(n, x):
    b = n.get("blocksize")
    N, C, H, W = x.shape
    if n.get("mode", "DCR") == "CRD":
        return F.pixel_shuffle(x, b)
    y = x.reshape(N, b, b, C // (b * b), H, W).permute(0, 3, 4, 1, 5, 2)
    return y.reshape(N, C // (b * b), H * b, W * b)


def _space_to_depth(n, x):
    b = n.get("blocksize")
    N, C, H, W = x.shape
    y = x.reshape(N, C, H // b, b, W // b, b).permute(0, 3, 5, 1, 2, 4)
    return y.reshape(N, C * b * b, H // b, W // b)


# --------------------------------------------------------------------------------------------
# Resize / Upsample (nearest and linear, separable, computed like onnxruntime in float32)


def _source_coords(mode: str, out_len: int, in_len: int, scale: float) -> torch.Tensor:
    """Map output positions to input coordinates (ONNX ``coordinate_transformation_mode``)."""
    x = torch.arange(out_len, dtype=torch.float32)
    scale = torch.tensor(scale, dtype=torch.float32)
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(x)
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "align_corners":
        return x * (in_len - 1) / (out_len - 1) if out_len > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise ModelError(f"Resize coordinate_transformation_mode {mode!r} is not supported by the torch bridge")


def _nearest_index(mode: str, coords: torch.Tensor, scale: float) -> torch.Tensor:
    """Round input coordinates to a pixel (ONNX ``nearest_mode``; 'simple' is opset 10's)."""
    if mode == "round_prefer_floor":
        return torch.ceil(coords - 0.5)
    if mode == "round_prefer_ceil":
        return torch.floor(coords + 0.5)
    if mode == "floor" or (mode == "simple" and scale >= 1):
        return torch.floor(coords)
    return torch.ceil(coords)


def _resize_axis(x, axis, out_len, scale, mode, coord_mode, nearest_mode):
    """Resize one axis: nearest picks a row, linear blends the two neighbours."""
    in_len = x.shape[axis]
    coords = _source_coords(coord_mode, out_len, in_len, scale)
    if mode == "nearest":
        idx = _nearest_index(nearest_mode, coords, scale).clamp(0, in_len - 1).long()
        return x.index_select(axis, idx.to(x.device))
    lo = torch.floor(coords)
    w = (coords - lo).to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - axis - 1)))
    lo_idx = lo.clamp(0, in_len - 1).long().to(x.device)
    hi_idx = (lo + 1).clamp(0, in_len - 1).long().to(x.device)
    return x.index_select(axis, lo_idx) * (1 - w) + x.index_select(axis, hi_idx) * w


def _resize_plan(n, x, scales, sizes) -> list[tuple[int, float]]:
    """Per-axis (output length, scale) from scales or sizes, honouring ``axes`` and
    ``keep_aspect_ratio_policy``; lengths are truncated like onnxruntime (float32 product)."""
    rank = x.dim()
    axes = [a % rank for a in n.get("axes", range(rank))]
    plan = [(x.shape[a], 1.0) for a in range(rank)]
    if sizes is not None:
        sizes = _ints(sizes)
        ratios = [np.float32(s) / np.float32(x.shape[a]) for a, s in zip(axes, sizes)]
        policy = n.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            r = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(np.floor(np.float32(x.shape[a]) * r + np.float32(0.5))) for a in axes]
            ratios = [r] * len(axes)
        for a, s, r in zip(axes, sizes, ratios):
            plan[a] = (s, float(r))
    else:
        for a, s in zip(axes, _floats(scales)):
            plan[a] = (int(np.float32(x.shape[a]) * np.float32(s)), s)
    return plan


def _interpolate(x, plan, mode, coord_mode, nearest_mode):
    for axis, (out_len, scale) in enumerate(plan):
        if out_len != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, axis, out_len, scale, mode, coord_mode, nearest_mode)
    return x


def _resize(n, x, roi=None, scales=None, sizes=None):
    """Resize (opset 10: X, scales; 11+: X, roi, scales, sizes) with nearest or linear."""
    if n.opset < 11:  # opset 10 has no roi: the second input is the scales
        scales, coord, nearest = roi, "asymmetric", "simple"
    else:
        coord = n.get("coordinate_transformation_mode", "half_pixel")
        nearest = n.get("nearest_mode", "round_prefer_floor")
    plan = _resize_plan(n, x, _present(scales), _present(sizes))
    return _interpolate(x, plan, n.get("mode", "nearest"), coord, nearest)


def _upsample(n, x, scales=None):
    """Upsample (deprecated; opset 7 attribute scales, opset 9 input scales)."""
    scales = _floats(scales) if scales is not None else list(n.get("scales"))
    plan = [(int(np.float32(d) * np.float32(s)), s) for d, s in zip(x.shape, scales)]
    return _interpolate(x, plan, n.get("mode", "nearest"), "asymmetric", "simple")


# --------------------------------------------------------------------------------------------
# The op table: ONNX op type -> f(node, *inputs) returning a tensor or a tuple of tensors.

_OPS: dict[str, Callable] = {
    # layers
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "Gemm": _gemm,
    "MatMul": _binary(torch.matmul),
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
    "Add": _binary(torch.add),
    "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul),
    "Div": _div,
    "Max": _variadic(torch.maximum),
    "Min": _variadic(torch.minimum),
    "Sum": _variadic(torch.add),
    "Mean": lambda n, *xs: _variadic(torch.add)(n, *xs) / len(xs),
    "Einsum": lambda n, *xs: torch.einsum(n.get("equation"), *_align(*xs)),
    # comparisons and logic
    "Equal": _binary(torch.eq),
    "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le),
    "Greater": _binary(torch.gt),
    "GreaterOrEqual": _binary(torch.ge),
    "And": _binary(torch.logical_and),
    "Or": _binary(torch.logical_or),
    "Xor": _binary(torch.logical_xor),
    "Not": lambda n, x: torch.logical_not(x),
    "Where": _where,
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
    "Shape": _shape,
    "Size": lambda n, x: torch.tensor(x.numel(), dtype=torch.int64),
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": _transpose,
    "Concat": _concat,
    "Split": _split,
    "Slice": _slice,
    "Pad": _pad,
    "Gather": _gather,
    "GatherElements": _gather_elements,
    "ConstantOfShape": _constant_of_shape,
    "Expand": _expand,
    "Tile": lambda n, x, repeats: x.repeat(_ints(repeats)),
    "Range": _range,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Resize": _resize,
    "Upsample": _upsample,
}

# "Constant" is evaluated once when the module is built (its value may become a Parameter).
SUPPORTED_OPS = tuple(sorted([*_OPS, "Constant"]))


# --------------------------------------------------------------------------------------------
# Checks done when the module is built, so that an unsupported graph fails early.


def _check_node(node: onnx.NodeProto, attrs: dict[str, Any]) -> str | None:
    """Why this node (of a supported op) cannot run, or None."""
    op, used_outputs = node.op_type, [o for o in node.output if o]
    if op in ("BatchNormalization", "LayerNormalization", "MaxPool") and len(used_outputs) > 1:
        return f"{op} with more than one output (training statistics / indices) is not supported"
    if op == "AveragePool" and any(d != 1 for d in attrs.get("dilations", [])):
        return "AveragePool with dilations is not supported"
    if op == "Resize":
        if attrs.get("mode", "nearest") not in ("nearest", "linear"):
            return f"Resize mode {attrs['mode']!r} is not supported (nearest and linear are)"
        if attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
            return "Resize with coordinate_transformation_mode tf_crop_and_resize is not supported"
        if attrs.get("antialias", 0):
            return "Resize with antialias is not supported"
    if op == "Upsample" and attrs.get("mode", "nearest") not in ("nearest", "linear"):
        return f"Upsample mode {attrs['mode']!r} is not supported"
    if op == "Pad" and attrs.get("mode", "constant") not in ("constant", "reflect", "edge", "wrap"):
        return f"Pad mode {attrs['mode']!r} is not supported"
    return None


def _attr_value(attr: onnx.AttributeProto) -> Any:
    """Python value of an attribute: strings decoded, tensors as torch tensors."""
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, onnx.TensorProto):
        return _to_torch_tensor(_to_numpy(value))
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode() for v in value]
    return value


def _to_numpy(proto: onnx.TensorProto) -> np.ndarray:
    try:
        return numpy_helper.to_array(proto)
    except Exception as exc:  # external data not loaded, unknown dtype ...
        raise ModelError(f"cannot read tensor {proto.name!r}: {exc}") from exc


def _is_float(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.floating) or array.dtype.name == "bfloat16"


def _to_torch_tensor(array: np.ndarray) -> torch.Tensor:
    """numpy -> torch, keeping the dtype (bfloat16 arrives as an ml_dtypes array)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    """The value of a Constant node (tensor, float(s) or int(s) attribute)."""
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None or attr.name not in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        kind = attr.name if attr is not None else "no single value attribute"
        raise ModelError(f"Constant node {node.name or node.output[0]!r}: {kind} is not supported by the torch bridge")
    if attr.name == "value":
        return _to_numpy(attr.t)
    value = onnx.helper.get_attribute_value(attr)
    dtype = np.float32 if attr.name.startswith("value_float") else np.int64
    return np.asarray(value, dtype=dtype)


# Keys that would clash with attributes of the ParameterDict / Module holding the tensors.
_RESERVED = frozenset(dir(torch.nn.ParameterDict())) | frozenset(dir(torch.nn.Module()))


def _sanitise(name: str, taken: set[str]) -> str:
    """A unique torch-safe key for an ONNX name (``layer1.0.conv1.weight`` -> ``layer1_0_conv1_weight``)."""
    base = re.sub(r"\W", "_", name) or "_"
    key, i = base, 1
    while key in taken or key in _RESERVED:
        key, i = f"{base}_{i}", i + 1
    taken.add(key)
    return key


def _alias_resolver(nodes: list[onnx.NodeProto]) -> Callable[[str], str]:
    """A function mapping a value name to the value an ``Identity`` chain forwards."""
    alias = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Identity" and n.input and n.output}

    def source(name: str) -> str:
        seen = set()
        while name in alias and name not in seen:
            seen.add(name)
            name = alias[name]
        return name

    return source


def _topological(nodes: list[_Node], available: set[str]) -> list[_Node]:
    """Nodes in an order where every input is computed first (Kahn's algorithm, stable)."""
    producer = {o: i for i, nd in enumerate(nodes) for o in nd.outputs if o}
    waiting = [0] * len(nodes)
    users: dict[int, list[int]] = {}
    for i, nd in enumerate(nodes):
        for name in set(nd.inputs) - available - {""}:
            if name not in producer:
                raise ModelError(f"node {nd.name or nd.op!r} needs {name!r}, which no node or graph input provides")
            waiting[i] += 1
            users.setdefault(producer[name], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        i = heapq.heappop(ready)
        ordered.append(nodes[i])
        for j in users.get(i, ()):
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(ordered) < len(nodes):
        raise ModelError("the graph has a cycle")
    return ordered


# --------------------------------------------------------------------------------------------
# The module


class OnnxModule(torch.nn.Module):
    """An ONNX graph executed with torch ops. Build it with :func:`to_torch`.

    Attributes:
        weights: trainable initializers, keyed by sanitised ONNX name.
        constants: a sub-module whose buffers are the other float constants (BN statistics ...).
        onnx_names: sanitised key -> exact ONNX initializer (or Constant output) name, for both.
        input_names / output_names: the graph's inputs (without initializers) and outputs.
        input_types: ONNX element type (``onnx.TensorProto.FLOAT`` ...) of each input.
        train_bn: whether BN uses batch statistics in training mode (see the module docstring).
    """

    def __init__(self, model: onnx.ModelProto, train_bn: bool = False):
        super().__init__()
        graph = model.graph
        main_constants = {n.output[0] for n in graph.node if n.op_type == "Constant" and n.output}
        if len(model.functions):
            model = onnx.inliner.inline_local_functions(model)
            graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 1)
        self._state = _State(train_bn=train_bn)
        self.train_bn = train_bn
        self._check_supported(graph)

        values = {t.name: _to_numpy(t) for t in graph.initializer}
        kept_nodes = []
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
                values[node.output[0]] = _constant_node_value(node)
            else:
                kept_nodes.append(node)
        # Tensors write_back can store: initializers and the main graph's Constant nodes.
        self._writable = {t.name for t in graph.initializer} | (main_constants & set(values))
        trainable = self._trainable(kept_nodes, values) & self._writable
        if train_bn:
            self._check_bn_stats(kept_nodes, trainable)
        self.weights = torch.nn.ParameterDict()
        self.constants = torch.nn.Module()
        self.onnx_names: dict[str, str] = {}
        self._static: dict[str, torch.Tensor] = {}
        self._keys: dict[str, tuple[str, str]] = {}  # ONNX name -> ("weights"|"constants", key)
        taken: set[str] = set()
        for name, array in values.items():
            tensor = _to_torch_tensor(array)
            if not tensor.is_floating_point():
                self._static[name] = tensor
                continue
            key = _sanitise(name, taken)
            self.onnx_names[key] = name
            if name in trainable:
                self.weights[key] = torch.nn.Parameter(tensor)
                self._keys[name] = ("weights", key)
            else:
                self.constants.register_buffer(key, tensor)
                self._keys[name] = ("constants", key)

        self.input_names = [i.name for i in graph.input if i.name not in values]
        self.input_types = {i.name: i.type.tensor_type.elem_type for i in graph.input if i.name not in values}
        self.output_names = [o.name for o in graph.output]
        nodes = [self._parse(node, opset) for node in kept_nodes]
        self._nodes = _topological(nodes, set(self.input_names) | set(values))
        self._free_after = self._last_uses()

    # -- construction helpers ---------------------------------------------------------------

    @staticmethod
    def _check_supported(graph: onnx.GraphProto) -> None:
        """Raise one ModelError naming every op this bridge cannot run."""
        bad = sorted(
            {
                n.op_type if n.domain in _DEFAULT_DOMAINS else f"{n.domain}.{n.op_type}"
                for n in graph.node
                if n.domain not in _DEFAULT_DOMAINS or (n.op_type not in _OPS and n.op_type != "Constant")
            }
        )
        if bad:
            what = f"op {bad[0]} is" if len(bad) == 1 else f"ops {', '.join(bad)} are"
            raise ModelError(f"{what} not supported by the torch bridge; supported: {', '.join(SUPPORTED_OPS)}")

    @staticmethod
    def _trainable(nodes: list[onnx.NodeProto], values: dict[str, np.ndarray]) -> set[str]:
        """Names of float constants used as weights or biases (they become Parameters)."""
        source = _alias_resolver(nodes)
        producer = {o: n.op_type for n in nodes for o in n.output}
        trainable = set()
        for n in nodes:
            slots = _WEIGHT_SLOTS.get(n.op_type, ())
            if n.op_type == "Add" and any(producer.get(source(i)) == "MatMul" for i in n.input):
                slots = (0, 1)  # the bias of a Linear exported as MatMul + Add
            for slot in slots:
                if slot < len(n.input) and source(n.input[slot]) in values:
                    trainable.add(source(n.input[slot]))
        return {t for t in trainable if _is_float(values[t])}

    @staticmethod
    def _check_bn_stats(nodes: list[onnx.NodeProto], trainable: set[str]) -> None:
        """With train_bn, running statistics are updated in place: they must not be Parameters."""
        source = _alias_resolver(nodes)
        for n in nodes:
            if n.op_type != "BatchNormalization":
                continue
            tied = [source(i) for i in n.input[3:5] if source(i) in trainable]
            if tied:
                raise ModelError(
                    f"BatchNormalization {n.name or n.output[0]!r}: running statistics {tied} share an initializer "
                    "with a trainable weight (the exporter merged identical tensors), so train_bn=True cannot "
                    "update them; use train_bn=False"
                )

    def _parse(self, node: onnx.NodeProto, opset: int) -> _Node:
        attrs = {a.name: _attr_value(a) for a in node.attribute}
        problem = _check_node(node, attrs)
        if problem:
            raise ModelError(f"node {node.name or node.output[0]!r}: {problem}")
        return _Node(
            op=node.op_type,
            name=node.name,
            inputs=list(node.input),
            outputs=list(node.output),
            attrs=attrs,
            opset=opset,
            state=self._state,
            fn=_OPS[node.op_type],
        )

    def _last_uses(self) -> list[list[str]]:
        """For each node, the intermediate values no later node (nor the output) needs."""
        keep = set(self.output_names)
        last: dict[str, int] = {}
        for i, nd in enumerate(self._nodes):
            for name in nd.inputs:
                last[name] = i
        produced = {o for nd in self._nodes for o in nd.outputs}
        free: list[list[str]] = [[] for _ in self._nodes]
        for name, i in last.items():
            if name in produced and name not in keep:
                free[i].append(name)
        return free

    # -- running ------------------------------------------------------------------------------

    def tensor(self, onnx_name: str) -> torch.Tensor:
        """The parameter, buffer or static tensor holding an ONNX initializer / Constant value."""
        if onnx_name in self._keys:
            where, key = self._keys[onnx_name]
            return self.weights[key] if where == "weights" else getattr(self.constants, key)
        return self._static[onnx_name]

    def onnx_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """(exact ONNX name, Parameter) pairs."""
        for key, param in self.weights.items():
            yield self.onnx_names[key], param

    def _bind_inputs(self, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        if len(args) > len(self.input_names):
            raise DataError(f"the model takes {len(self.input_names)} input(s) {self.input_names}, got {len(args)}")
        bound = dict(zip(self.input_names, args))
        for name, value in kwargs.items():
            if name not in self.input_names or name in bound:
                raise DataError(f"unexpected or duplicate input {name!r}; the model's inputs are {self.input_names}")
            bound[name] = value
        missing = [n for n in self.input_names if n not in bound]
        if missing:
            raise DataError(f"missing model input(s) {missing}")
        return {k: torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in bound.items()}

    def forward(self, *args, **kwargs):
        """Run the graph. Inputs by position (graph order) or by name; numpy arrays are accepted.

        Returns the single output tensor, or a tuple in graph output order.
        """
        self._state.training = self.training
        env: dict[str, Any] = dict(self._static)
        for name, (where, key) in self._keys.items():
            env[name] = self.weights[key] if where == "weights" else getattr(self.constants, key)
        env.update(self._bind_inputs(args, kwargs))
        for node, free in zip(self._nodes, self._free_after):
            result = node.fn(node, *[env[i] if i else None for i in node.inputs])
            if not isinstance(result, (tuple, list)):
                result = (result,)
            for name, value in zip(node.outputs, result):
                if name:
                    env[name] = value
            for name in free:
                env.pop(name, None)
        outputs = tuple(env[name] for name in self.output_names)
        return outputs[0] if len(outputs) == 1 else outputs

    def extra_repr(self) -> str:
        return f"nodes={len(self._nodes)}, inputs={self.input_names}, outputs={self.output_names}, train_bn={self.train_bn}"


# --------------------------------------------------------------------------------------------
# Public API


def to_torch(model: onnx.ModelProto, train_bn: bool = False) -> OnnxModule:
    """Build a torch module that executes ``model``'s graph.

    Args:
        model: an ONNX model with its weights loaded (external data included). It is not
            modified; model-local functions are inlined in a copy.
        train_bn: when False (default) BatchNormalization always uses the running statistics
            (its scale and bias still train). When True, BN in ``module.train()`` uses batch
            statistics and updates the running statistics, which :func:`write_back` then
            stores. With either setting, ``module.eval()`` gives the ONNX model's own output.

    Returns:
        An :class:`OnnxModule` (in training mode, like any new nn.Module; call ``.eval()`` for
        inference). Its ``forward(*inputs)`` / ``forward(**named_inputs)`` returns a tensor for
        a single-output graph, otherwise a tuple in graph output order.

    Raises:
        ModelError: the graph uses ops (or op variants) the bridge does not implement; the
            message names them and lists the supported ops.
    """
    if not isinstance(model, onnx.ModelProto):
        raise ModelError(f"to_torch expects an onnx.ModelProto, got {type(model).__name__}")
    return OnnxModule(model, train_bn=train_bn)


def write_back(module: OnnxModule, model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose weights are the module's current parameters (and buffers).

    Only tensor data changes: each initializer (or Constant node value) keeps its name, dtype,
    shape and position, and the graph, opset, IR version and metadata are copied unchanged.
    Tensors whose value did not change are left byte-for-byte as they were, so a round trip
    without training reproduces the input exactly. BN running statistics are written as well,
    which matters only for a module built with ``train_bn=True``. ``model`` is not modified.
    """
    if not isinstance(module, OnnxModule):
        raise ModelError(f"write_back needs a module made by to_torch, got {type(module).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    initializers = {t.name: t for t in out.graph.initializer}
    constants = {n.output[0]: n for n in out.graph.node if n.op_type == "Constant" and n.output}
    for name in module.onnx_names.values():
        if name not in module._writable:
            continue  # a constant from an inlined function: never trained
        tensor = module.tensor(name).detach()
        if name in initializers:
            _write_tensor(initializers[name], tensor)
        elif name in constants:
            _write_constant(constants[name], tensor)
        else:
            raise ModelError(f"the model has no initializer or Constant named {name!r}; was the module built from it?")
    return out


def _as_numpy(tensor: torch.Tensor, like: np.ndarray, name: str) -> np.ndarray:
    """A module tensor as an array with the dtype and shape of the original ONNX tensor."""
    if tuple(tensor.shape) != like.shape:
        raise ModelError(f"tensor {name!r} has shape {tuple(tensor.shape)} in the module but {like.shape} in the model")
    t = tensor.cpu()
    if like.dtype.name == "bfloat16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(like.dtype)
    return t.to(_torch_dtype_of(like)).numpy()


def _torch_dtype_of(array: np.ndarray) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=array.dtype)).dtype


def _write_tensor(proto: onnx.TensorProto, tensor: torch.Tensor) -> None:
    """Replace a TensorProto's data in place (as raw_data) unless the value is unchanged."""
    old = _to_numpy(proto)
    new = _as_numpy(tensor, old, proto.name)
    if new.tobytes() == old.tobytes():
        return
    raw = numpy_helper.from_array(new).raw_data
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        proto.ClearField(f)
    proto.raw_data = raw


def _write_constant(node: onnx.NodeProto, tensor: torch.Tensor) -> None:
    """Write a value into a Constant node, in whichever attribute form it already uses."""
    attr = node.attribute[0]
    if attr.name == "value":
        _write_tensor(attr.t, tensor)
        return
    old = _constant_node_value(node)
    new = _as_numpy(tensor, old, node.output[0])
    if new.tobytes() == old.tobytes():
        return
    if attr.name == "value_float":
        attr.f = float(new)
    else:  # value_floats
        del attr.floats[:]
        attr.floats.extend(float(v) for v in new)
