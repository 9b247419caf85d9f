"""Channel importance criteria: plain functions ``(group, analysis, stats, seed) -> scores``.

A higher score means a more important channel; the allocator removes the lowest-scoring ones.
A group can have several producers (the convolutions feeding a residual sum); their per-channel
scores are normalised by their maximum and summed, so each producer has an equal say.

Data-free criteria read the weights:

* ``l1`` / ``l2`` — norm of each output filter (Li et al., "Pruning filters for efficient ConvNets").
* ``fpgm`` — distance of each filter to the others; filters near the geometric median are
  redundant (He et al., FPGM).
* ``bn_scale`` — |gamma| of the BatchNormalization after the producer (network slimming);
  falls back to ``l1`` where a group has no BatchNorm.
* ``random`` — a seeded control.
* ``group_magnitude`` / ``group_l1`` — every weight of the channel's group (Torch-Pruning's
  default reduction; issue 17).

Data-driven criteria (``hrank``, ``apoz``, ``mean_activation``) score the feature maps that the
group's consumers read; their statistics come from the calibration pass (``calibrate.py``).
"""

from __future__ import annotations

import numpy as np

from ..analysis import BN_SCALE, IN, OUT, Analysis, ChannelGroup
from .registry import WEIGHT_CRITERIA


def per_channel(group: ChannelGroup, dim_id: int, atom_values: np.ndarray) -> np.ndarray:
    """Sum the values of a dim's atoms into the group's channels."""
    out = np.zeros(group.size)
    np.add.at(out, group.channel_atoms[dim_id], atom_values[group.atom_index[dim_id]])
    return out


def weight_rows(analysis: Analysis, dim_id: int) -> np.ndarray:
    """The weight as a matrix with one row per atom of the dim (the dim's axis first)."""
    d = analysis.dims[dim_id]
    w = np.asarray(analysis.model.tensors[d.tensor].values)
    dq = analysis.model.dequantizers.get(d.tensor)
    w = dq.dequantize(w) if dq is not None else w.astype(np.float64)  # int8 values mean nothing alone
    return np.moveaxis(w, d.axis, 0).reshape(w.shape[d.axis], -1)


def _weight_dims(analysis: Analysis, group: ChannelGroup, role: str) -> list[int]:
    return [i for i in group.dims if analysis.dims[i].role == role]


def combine(parts: list[np.ndarray], size: int) -> np.ndarray:
    """Mean of the parts, each scaled to a peak of 1: a group seen on several tensors (a residual
    stream, a concat) gets scores on the same [0, 1] scale as a group seen on one."""
    total = np.zeros(size)
    for p in parts:
        peak = np.abs(p).max()
        total += p / peak if peak > 0 else p
    return total / max(len(parts), 1)


def _norm(p: int):
    def criterion(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
        dims = _weight_dims(analysis, group, OUT) or _weight_dims(analysis, group, IN)
        parts = []
        for d in dims:
            rows = weight_rows(analysis, d)
            norms = np.abs(rows).sum(1) if p == 1 else np.sqrt((rows**2).sum(1))
            parts.append(per_channel(group, d, norms))
        return combine(parts, group.size)

    return criterion


def fpgm(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
    """Sum of Euclidean distances from each channel's filter to every other filter."""
    dims = _weight_dims(analysis, group, OUT) or _weight_dims(analysis, group, IN)
    parts = []
    for d in dims:
        rows = weight_rows(analysis, d)
        # Atoms of one channel (a Flatten block) are concatenated into one filter vector.
        local, chans = group.atom_index[d], group.channel_atoms[d]
        order = np.argsort(chans, kind="stable")
        counts = np.bincount(chans, minlength=group.size)
        if len(set(counts.tolist())) != 1:
            parts.append(per_channel(group, d, np.sqrt((rows**2).sum(1))))
            continue
        filters = rows[local[order]].reshape(group.size, -1)
        sq = (filters**2).sum(1)
        dist2 = np.maximum(sq[:, None] + sq[None, :] - 2 * filters @ filters.T, 0)
        parts.append(np.sqrt(dist2).sum(1))
    return combine(parts, group.size)


def bn_scale(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
    dims = _weight_dims(analysis, group, BN_SCALE)
    if not dims:
        return l1(group, analysis, stats, seed)
    parts = []
    for d in dims:
        gamma = np.abs(np.asarray(analysis.model.tensors[analysis.dims[d].tensor].values, dtype=np.float64))
        parts.append(per_channel(group, d, gamma))
    return combine(parts, group.size)


def random(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, group.id])
    return rng.random(group.size)


l1 = _norm(1)
l2 = _norm(2)


def _group_norm(p: int):
    """Group magnitude (issue 17): a data-free score that reads every weight a channel decision
    removes. A channel lives in several tensors (the producers' filters, the consumers' input
    slices, BatchNorm scales); ``l1`` reads the producers only, Torch-Pruning's
    ``GroupMagnitudeImportance`` (the default of its pruners) scores each member and reduces
    over the group, so a filter whose output the next layers barely read counts as unimportant:

        member score  = sum over the member's slice of |w|^p   (p = 2: squared L2 norm, no root)
        channel score = mean over the members that carry the channel, divided by the mean over
                        the group's channels

    (a member is one weight dim with role out, in or bn_scale; a Flatten block's atoms sum into
    their channel). ``group_l1`` is the same with p = 1."""

    def criterion(group: ChannelGroup, analysis: Analysis, stats=None, seed: int = 0) -> np.ndarray:
        total = np.zeros(group.size)
        members = np.zeros(group.size)
        for d in group.dims:
            dim = analysis.dims[d]
            if dim.role not in (OUT, IN, BN_SCALE) or not dim.constant:
                continue
            values = (np.abs(weight_rows(analysis, d)) ** p).sum(1)
            total += per_channel(group, d, values)
            members += per_channel(group, d, np.ones(len(values))) > 0
        score = total / np.maximum(members, 1)
        mean = score.mean()
        return score / mean if mean > 0 else score

    return criterion


group_magnitude = _group_norm(2)
group_l1 = _group_norm(1)

# The functions of the weight criteria of ``registry.REGISTRY`` (the data criteria are scored
# from calibration statistics in ``activations.py``).
CRITERIA = {
    "l1": l1,
    "l2": l2,
    "fpgm": fpgm,
    "bn_scale": bn_scale,
    "random": random,
    "group_magnitude": group_magnitude,
    "group_l1": group_l1,
}

assert tuple(CRITERIA) == WEIGHT_CRITERIA, "scoring.registry and scoring.weights.CRITERIA disagree"


def score_groups(analysis: Analysis, criterion: str, stats=None, seed: int = 0) -> dict[int, np.ndarray]:
    fn = CRITERIA[criterion]
    return {g.id: np.asarray(fn(g, analysis, stats, seed), dtype=np.float64) for g in analysis.prunable_groups}
