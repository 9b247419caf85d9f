"""Dependency rule of Reshape and its kin (Flatten, Squeeze, Unsqueeze): push the channel
index through the reshape, recognise channel shuffles ([N, g, C/g, H, W] -> transpose -> back),
and name the target-shape values that must follow the pruned counts. ``rules.py`` holds the table.
"""

from __future__ import annotations

import numpy as np
import onnx

from .builder import Builder, Spread
from .shape_common import alias_kept, carries_none, input_axis, refuse_from
from .shape_values import Const, Kept


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
    if carries_none(b, x):  # no channels: the target must keep giving the same shape
        refuse_from(b, x, [y])
        if node.op == "Reshape":
            _expect_reshape_target(node, b, [Const(v) for v in out_shape])
        return
    if spread is None and (len(in_shape) < 2 or len(out_shape) < 1):
        b.block_node(f"{node.op} '{node.name}': no channel axis")
        return
    if spread is None:
        axis = input_axis(b, x)
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
        wanted = [None if v in (-1, 0) else alias_kept(b, y, k) for k, v in enumerate(target.reshape(-1).tolist())]
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
