"""Op functions of the torch bridge for shapes, indexing, data movement and Resize/Upsample
(``SHAPE_OPS``; ``ops.OPS`` includes them)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError
from .nodes import align, floats, ints, present, to_torch_pads


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
    dims = ints(shape)
    if not n.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _squeeze(n, x, axes=None):
    axes = ints(present(axes)) if axes is not None else n.get("axes")
    if not axes:
        return x.squeeze()
    return x.squeeze(tuple(a % x.dim() for a in axes))


def _unsqueeze(n, x, axes=None):
    axes = ints(axes) if axes is not None else list(n.get("axes"))
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _transpose(n, x):
    perm = n.get("perm")
    return x.permute(list(perm) if perm is not None else list(reversed(range(x.dim()))))


def _concat(n, *xs):
    return torch.cat(align(*xs), dim=n.get("axis"))


def _split(n, x, split=None):
    """Split by sizes (attribute or input) or into equal parts (``num_outputs`` / #outputs)."""
    axis = n.get("axis", 0)
    sizes = ints(present(split)) if split is not None else n.get("split")
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
    starts = ints(starts) if starts is not None else list(n.get("starts"))
    ends = ints(ends) if ends is not None else list(n.get("ends"))
    axes = ints(axes) if axes is not None else list(n.get("axes", range(len(starts))))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        x = _slice_axis(x, axis % x.dim(), start, end, step)
    return x


def _pad(n, x, pads=None, value=None, axes=None):
    """Pad (constant, reflect, edge, wrap); pads as attribute (opset < 11) or input, optional axes."""
    pads = ints(pads) if pads is not None else list(n.get("pads", n.get("paddings")))
    value = present(value)
    value = value.item() if value is not None else n.get("value", 0.0)
    rank = x.dim()
    axes = [a % rank for a in ints(axes)] if axes is not None else list(range(rank))
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    torch_pads = to_torch_pads(full)
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
        return torch.zeros(ints(shape))
    return torch.full(ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


def _expand(n, x, shape):
    """Expand uses bidirectional broadcasting (the target may have 1s where x does not)."""
    return x.expand(torch.broadcast_shapes(x.shape, tuple(ints(shape))))


def _where(n, cond, a, b):
    cond, a, b = align(cond, a, b)
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
        sizes = ints(sizes)
        ratios = [np.float32(s) / np.float32(x.shape[a]) for a, s in zip(axes, sizes)]
        policy = n.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            r = min(ratios) if policy == "not_larger" else max(ratios)
            sizes = [int(np.floor(np.float32(x.shape[a]) * r + np.float32(0.5))) for a in axes]
            ratios = [r] * len(axes)
        for a, s, r in zip(axes, sizes, ratios):
            plan[a] = (s, float(r))
    else:
        for a, s in zip(axes, floats(scales)):
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
    plan = _resize_plan(n, x, present(scales), present(sizes))
    return _interpolate(x, plan, n.get("mode", "nearest"), coord, nearest)


def _upsample(n, x, scales=None):
    """Upsample (deprecated; opset 7 attribute scales, opset 9 input scales)."""
    scales = floats(scales) if scales is not None else list(n.get("scales"))
    plan = [(int(np.float32(d) * np.float32(s)), s) for d, s in zip(x.shape, scales)]
    return _interpolate(x, plan, n.get("mode", "nearest"), "asymmetric", "simple")


SHAPE_OPS: dict[str, Callable] = {
    "Where": _where,
    "Shape": _shape,
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
    "Range": _range,
    "DepthToSpace": _depth_to_space,
    "SpaceToDepth": _space_to_depth,
    "Resize": _resize,
    "Upsample": _upsample,
}
