"""Data-driven channel scores: which activations to observe for each group, one calibration
pass for all of them, and the scores the criteria derive.

A group is observed where its channels are *read*: the input of each linear consumer (after
the activation, as HRank prescribes), or for a Flatten->Gemm block the map before the Flatten.
A consumer that reads a 1x1 map (GlobalAveragePool -> FC) is observed before the pooling, since
the rank of a 1x1 map says nothing. Groups with no observable consumer fall back to ``l1``.

* ``hrank`` — mean rank of each channel's feature maps (higher = keep).
* ``apoz`` — 1 - average percentage of zeros.
* ``mean_activation`` — mean |activation|.
* ``recon`` — the error a channel's removal leaves *after* least-squares compensation by the
  other channels: for the channel Gram matrix S (ridge-regularised), the residual variance of
  channel c given the others is 1 / [S^-1]_cc; it is weighted by the squared norm of the
  consumers' weights reading c. Channels are removed greedily, the inverse downdated after each
  removal (as Optimal Brain Surgeon does), and the removal order becomes the score.

    stats = collect(analysis, data, ["hrank"])
    scores = data_scores(analysis, "hrank", stats)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..analysis import Analysis
from .collectors import ApozCollector, GramCollector, MeanActivationCollector, RankCollector
from .weights import CRITERIA, combine
from ..reconstruct.consumers import Consumer, find_consumers
from ..reconstruct.fold import weight_blocks

_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


@dataclass
class Observation:
    tensor: str
    axis: int
    dim: int  # dim id of the observed tensor's channel axis
    consumers: list[Consumer]


def observations(analysis: Analysis) -> dict[str, Observation]:
    """Observed tensors (keyed by name) with the consumers that read them."""
    result: dict[str, Observation] = {}
    for c in find_consumers(analysis):
        name, axis = c.observed, c.observed_axis
        t = analysis.model.tensors[name]
        # A 1x1 map (global pooling before an FC) has rank 0 or 1: look at the map before the pool.
        if len(t.shape) == 4 and int(np.prod(t.shape[2:])) == 1 and t.inputs and t.inputs[0].op in _POOLS:
            src = t.inputs[0].inputs[0]
            if (src.name, axis) in analysis.by_key:
                name = src.name
        d = analysis.by_key[(name, axis)]
        obs = result.setdefault(name, Observation(name, axis, d.id, []))
        obs.consumers.append(c)
    return result


class _VectorRank(ApozCollector):
    """HRank of a [N, C] activation: a 1x1 map per channel has rank 1 where it is non-zero, so
    the mean rank is exactly 1 - APoZ. With an early stop it counts as converged after the
    patience's worth of images (it is exact and cheap: it must not keep the pass going)."""

    def __init__(self, *, axis: int = 1, patience: int | None = None):
        super().__init__(axis=axis)
        self.patience, self.images = patience, 0

    def update(self, batch):
        super().update(batch)
        self.images += np.shape(batch)[0]

    @property
    def converged(self) -> bool:
        return self.patience is not None and self.images >= self.patience


def _collector(criterion: str, axis: int, rank_patience: int | None, rank: int = 4, rank_tol: float = 0.05):
    if criterion == "hrank" and rank < 4:
        return _VectorRank(axis=axis, patience=rank_patience)
    if criterion == "hrank":
        return RankCollector(axis=axis, patience=rank_patience, tol=rank_tol)
    if criterion == "apoz":
        return ApozCollector(axis=axis)
    if criterion == "mean_activation":
        return MeanActivationCollector(axis=axis)
    if criterion == "recon":
        return GramCollector(axis=axis)
    raise ValueError(f"{criterion!r} is not a data-driven criterion")


def collect(analysis: Analysis, data, criteria: list[str], *, providers=None, progress=None,
            max_batches=None, rank_patience: int | None = None, batch_size: int | None = None,
            rank_tol: float = 0.05):
    """One calibration pass over ``data`` collecting what ``criteria`` need on every observed
    tensor that belongs to a prunable group. Returns the CalibrationResult.

    ``rank_patience``/``rank_tol``: HRank's early stop (RankCollector): a tensor's ranks stop
    once no channel's mean rank moved by ``rank_tol`` over the last ``rank_patience`` images;
    the pass ends when every tensor has stopped. ``result.rank_images`` = (fewest, most)
    images whose ranks were used."""
    from .calibrate import calibrate

    prunable_dims = {d for g in analysis.prunable_groups for d in g.dims}
    obs = {n: o for n, o in observations(analysis).items() if o.dim in prunable_dims}
    rank = {name: len(analysis.model.tensors[name].shape) for name in obs}
    requests = {name: [_collector(c, o.axis, rank_patience, rank[name], rank_tol) for c in criteria]
                for name, o in obs.items()}
    result = calibrate(analysis.model.proto, requests, data, providers=providers, progress=progress,
                       max_batches=max_batches, stop_when_converged=rank_patience is not None and criteria == ["hrank"],
                       batch_size=batch_size)
    used = [c.images for cs in requests.values() for c in cs if isinstance(c, RankCollector)]
    return replace(result, rank_images=(min(used), max(used))) if used and rank_patience is not None else result


def data_scores(analysis: Analysis, criterion: str, calibration, seed: int = 0) -> dict[int, np.ndarray]:
    """Per prunable group, scores from the calibration statistics (``l1`` where unobserved)."""
    obs = observations(analysis)
    stats = calibration.stats
    scores = {}
    for g in analysis.prunable_groups:
        parts = []
        for name, o in obs.items():
            if o.dim not in g.atom_index or name not in stats:
                continue
            local, chans = g.atom_index[o.dim], g.channel_atoms[o.dim]
            if criterion == "recon":
                parts.append(_recon_scores(analysis, g, o, stats[name]["gram"], local, chans))
                continue
            key = {"hrank": "rank", "apoz": "apoz", "mean_activation": "mean_activation"}[criterion]
            if key not in stats[name]:  # hrank of a [N, C] activation was collected as APoZ
                key = "apoz"
            values = np.asarray(stats[name][key], dtype=np.float64)
            if key == "apoz":
                values = 1.0 - values
            per = np.zeros(g.size)
            counts = np.zeros(g.size)
            np.add.at(per, chans, values[local])
            np.add.at(counts, chans, 1)
            parts.append(per / np.maximum(counts, 1))
        scores[g.id] = combine(parts, g.size) if parts else CRITERIA["l1"](g, analysis, None, seed)
    return scores


def _recon_scores(analysis, g, o: Observation, gram, local, chans) -> np.ndarray:
    """Greedy OBS-style order: repeatedly drop the channel whose compensated removal costs least."""
    s = np.asarray(gram.second_moment)[np.ix_(local, local)]
    weight = np.zeros(len(local))
    for c in o.consumers:
        w3, _ = weight_blocks(np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64), c)
        per_channel = (w3**2).reshape(-1, w3.shape[-2], w3.shape[-1]).sum(axis=(0, 2))  # [C_observed]
        weight += per_channel[local]
    lam = 1e-3 * max(np.trace(s) / max(len(s), 1), 1e-12)
    p = np.linalg.inv(s + lam * np.eye(len(s)))
    alive = np.ones(len(s), dtype=bool)
    order = np.zeros(len(s))
    for step in range(len(s)):
        cost = np.where(alive, weight / np.maximum(np.diag(p), 1e-30), np.inf)
        c = int(np.argmin(cost))
        order[c] = step
        alive[c] = False
        pc = p[:, c].copy()
        p -= np.outer(pc, pc) / max(pc[c], 1e-30)  # inverse of the Gram without channel c
        p[c, :] = p[:, c] = 0.0
    # Removal order -> per-channel score (a channel removed later is more important).
    per = np.zeros(g.size)
    counts = np.zeros(g.size)
    np.add.at(per, chans, order + 1.0)
    np.add.at(counts, chans, 1)
    return per / np.maximum(counts, 1)
