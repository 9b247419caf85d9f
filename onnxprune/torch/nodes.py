"""The node representation and small helpers shared by the torch bridge's op functions
(``ops.py``, ``shape_ops.py``): parsed nodes, attribute and constant readers, padding maths."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import onnx
import torch


Value = torch.Tensor | None

TORCH_DTYPES = {
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
WEIGHT_SLOTS = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "Gemm": (0, 1, 2),
    "MatMul": (0, 1),
    "BatchNormalization": (1, 2),
    "PRelu": (1,),
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
}

DEFAULT_DOMAINS = ("", "ai.onnx")


# --------------------------------------------------------------------------------------------
# Node representation


@dataclass
class State:
    """Flags shared by the module and its nodes: whether it is training, and BN behaviour."""

    training: bool = False
    train_bn: bool = False


@dataclass
class Node:
    """One ONNX node, parsed once: op function, value names, attributes and opset."""

    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any]
    opset: int
    state: State
    fn: Callable = field(repr=False, default=None)

    def get(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


# --------------------------------------------------------------------------------------------
# Small helpers shared by the op functions


def ints(t: Value) -> list[int] | None:
    """A (shape-like) tensor as a list of python ints; None stays None."""
    return None if t is None else [int(v) for v in t.reshape(-1).tolist()]


def floats(t: Value) -> list[float] | None:
    return None if t is None else [float(v) for v in t.reshape(-1).tolist()]


def present(t: Value) -> Value:
    """Optional inputs may be given as empty tensors; treat those as absent."""
    return None if t is None or t.numel() == 0 else t


def align(*xs: torch.Tensor) -> list[torch.Tensor]:
    """Move CPU tensors (shape arithmetic, integer constants) to the device of the others."""
    devices = {x.device for x in xs}
    if len(devices) == 1:
        return list(xs)
    target = next(d for d in devices if d.type != "cpu")
    return [x.to(target) for x in xs]


def binary(fn: Callable) -> Callable:
    """Wrap a broadcasting torch function as an op: f(node, a, b)."""
    return lambda n, a, b: fn(*align(a, b))


def variadic(fn: Callable) -> Callable:
    """Fold a binary torch function over any number of inputs (Max, Min, Sum)."""

    def run(n, *xs):
        xs = align(*xs)
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return out

    return run


def to_torch_pads(pads: list[int]) -> list[int]:
    """ONNX pads [b1, .., bn, e1, .., en] (first dim first) -> F.pad order (last dim first)."""
    nd = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(nd)):
        out += [pads[i], pads[nd + i]]
    return out


def spatial_pads(n: Node, sizes, kernel, strides, dilations) -> list[int]:
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


def window(n: Node, x: torch.Tensor, kernel) -> tuple[list[int], list[int], list[int]]:
    """Strides, dilations and explicit pads of a windowed op over x's spatial dims."""
    nd = len(kernel)
    strides = list(n.get("strides", [1] * nd))
    dilations = list(n.get("dilations", [1] * nd))
    pads = spatial_pads(n, x.shape[2:], kernel, strides, dilations)
    return strides, dilations, pads


def torch_can_pad(pads: list[int], kernel, dilations=None) -> bool:
    """torch pooling pads symmetrically and at most half the (effective) kernel."""
    nd = len(kernel)
    dilations = dilations or [1] * nd
    symmetric = pads[:nd] == pads[nd:]
    return symmetric and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(pads, kernel, dilations))
