"""Prune to a measured speed-up (``--speedup X``) or latency (``--latency-ms T``) on the deployment runtime.

The allocation is the block search (allocate/blocks.py) with the latency model (runtime/latency.py) as its cost:
a block's cost is its predicted latency over every node it touches, the loss the channels'
normalised scores (or the sensitivity curves). The pruned model is then *measured* against the
original (interleaved, fixed threads); where the measured speed-up misses the target by more
than ``tolerance`` the search runs again with the target corrected by the miss
(``asked * target / measured``), at most ``rounds`` times, and the round closest to the target
is kept. The summary's ``speed`` entry gives target, predicted and measured speed-up per round.

    speed = SpeedTarget(speedup=2.0, deployment=Deployment(threads=1))
    result = compress("model.onnx", Settings(target=placeholder_target(speed)), allocator=latency_allocator(speed))

Kept counts are multiples of at least 4 even with ``--round-to 1``: onnxruntime runs other counts
in its plain layout with reorders (several times slower), which the latency model, fitted on
aligned variants, does not predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import TargetError
from ..runtime.latency import Deployment, feeds_for, measure_speedup, profile_model
from ..settings import Limits, Target
from .blocks import SizedCost, allocate_blocks, group_blocks, kept_steps, score_loss
from .search import ranked


@dataclass(frozen=True)
class SpeedTarget:
    """Exactly one of ``speedup`` (original latency / pruned latency) or ``latency_ms``."""

    speedup: float | None = None
    latency_ms: float | None = None
    deployment: Deployment = field(default_factory=Deployment)
    tolerance: float = 0.03  # measured may miss the target by this share before a re-solve
    rounds: int = 3
    cache_dir: str | None = None
    measure_s: float = 1.5  # interleaved timing per round (each model)

    def __post_init__(self):
        if (self.speedup is None) == (self.latency_ms is None):
            raise TargetError("give exactly one of --speedup or --latency-ms")
        if self.speedup is not None and not self.speedup > 1.0:
            raise TargetError(f"--speedup must be greater than 1, got {self.speedup:g}")
        if self.latency_ms is not None and not self.latency_ms > 0:
            raise TargetError(f"--latency-ms must be positive, got {self.latency_ms:g}")


def placeholder_target(speed: SpeedTarget) -> Target:
    """The Target recorded in Settings/plan: the share of latency to remove (refined by the allocator)."""
    return Target("latency", 1.0 - 1.0 / speed.speedup if speed.speedup else 0.5)


def curve_loss(sens, scores, order, blocks, limits: Limits) -> dict[int, np.ndarray]:
    """Sensitivity damage (monotone envelope, interpolated) at each block step, plus a tiny
    score term so equal damages still prefer the less important channels."""
    base = score_loss(scores, order, blocks, limits)
    out = {}
    for gid, s in scores.items():
        n = len(s)
        steps = np.asarray(kept_steps(n, blocks.get(gid, 1), limits), dtype=np.float64)
        if gid in sens.curves:
            env = np.maximum.accumulate(np.concatenate([[0.0], np.maximum(sens.curves[gid], 0.0)]))
            damage = np.interp((n - steps) / n, np.concatenate([[0.0], sens.ratios]), env)
        else:
            damage = np.full(len(steps), np.inf)
            damage[0] = 0.0
        out[gid] = damage + 1e-6 * base[gid]
    return out


def uniform_loss(analysis, model, scores, order, blocks, limits: Limits, fraction: float) -> dict[int, np.ndarray]:
    """ACRA uniform under the latency model: the one ratio (exact counts) whose predicted latency
    drops by ``fraction``, found by bisection, as the blocks' deviation loss (blocks.deviation_loss)."""
    from dataclasses import replace

    from .blocks import deviation_loss

    exact = replace(limits, round_to=1)
    sizes = {gid: len(s) for gid, s in scores.items()}
    base = model.predict(analysis.full_keep())

    def reduction(r):
        keep = analysis.keep_vector({g: order[g][: exact.kept(n, r)] for g, n in sizes.items()})
        return 1.0 - model.predict(keep) / base

    lo, hi = 0.0, limits.max_ratio
    if reduction(hi) >= fraction:
        for _ in range(40):
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if reduction(mid) >= fraction else (mid, hi)
    removed = {g: float(n - exact.kept(n, hi)) for g, n in sizes.items()}
    return deviation_loss(sizes, removed, blocks, limits)


def latency_allocator(speed: SpeedTarget, progress=None, allocation: str = "uniform"):
    """An ``allocator`` for ``pipeline.compress`` that meets a measured speed-up (module docstring).
    ``allocation`` as compress's: uniform (one ratio, rounded to blocks), global (normalised scores
    as loss), sensitivity (the curves as loss; compress passes them)."""
    from ..rewrite import rewrite

    dep = speed.deployment

    def allocate(analysis, cost, scores, limits, sensitivity=None):
        model = profile_model(analysis, dep, speed.cache_dir,
                              progress=(lambda d, t: progress("profile", d, t)) if progress else None)
        align = max(limits.round_to, 4)  # below 4 onnxruntime leaves the blocked layout (module docstring)
        full = analysis.full_keep()
        base_pred = model.predict(full)
        goal = speed.speedup if speed.speedup is not None else model.base_ms / speed.latency_ms
        order = ranked(scores)
        blocks = group_blocks(analysis, align, scores)
        if sensitivity is not None:
            loss = curve_loss(sensitivity, scores, order, blocks, limits)
            loss = {g: v for g, v in loss.items() if np.isfinite(v).sum() > 1}
            loss = {g: v[np.isfinite(v)] for g, v in loss.items()}
        else:
            loss = score_loss(scores, order, blocks, limits)
        kind = "sensitivity" if sensitivity is not None else allocation
        if goal <= 1.0:
            raise TargetError(f"the original already runs in {model.base_ms:.3g} ms (<= {speed.latency_ms:g} ms): "
                              "nothing to prune for this latency")
        feeds = feeds_for(analysis.model.proto, analysis, dep.batch)
        original = analysis.model.proto.SerializeToString()
        rounds, asked, best = [], goal, None
        for _ in range(speed.rounds):
            if kind == "uniform":
                loss = uniform_loss(analysis, model, scores, order, blocks, limits, 1.0 - 1.0 / asked)
            try:
                alloc = allocate_blocks(analysis, SizedCost(analysis, model.predict_sizes), order, loss, Target("latency", 1.0 - 1.0 / asked),
                                        limits, align, base_cost=base_pred, cost_model=cost, cost_kind="latency")
            except TargetError:
                if not rounds:
                    raise TargetError(_unreachable(goal, analysis, model, order, loss, limits, align)) from None
                break
            predicted = base_pred / alloc.cost_value
            measured = measure_speedup(original, rewrite(analysis, alloc.keep).SerializeToString(), feeds, dep,
                                       budget_s=speed.measure_s)
            rounds.append({"asked": round(asked, 4), "predicted": round(predicted, 4), **measured})
            miss = abs(measured["speedup"] / goal - 1.0)
            if best is None or miss < best[0]:
                best = (miss, alloc, len(rounds) - 1)
            if miss <= speed.tolerance:
                break
            asked = asked * goal / measured["speedup"]
            if asked <= 1.0:
                break
        _, alloc, i = best
        alloc.details["speed"] = {
            "target": round(goal, 4), "latency_ms_target": speed.latency_ms,
            "predicted": rounds[i]["predicted"], "measured": rounds[i]["speedup"],
            "original_ms": rounds[i]["original_ms"], "pruned_ms": rounds[i]["pruned_ms"],
            "rounds": rounds, "chosen_round": i + 1, "align": align,
            "device": dep.device, "threads": dep.threads, "batch": dep.batch,
            "model": {"seconds": model.seconds, "heldout_error": model.error, "base_ms": model.base_ms},
        }
        alloc.strategy = f"{kind} (latency)"
        alloc.target = Target("latency", 1.0 - 1.0 / goal)
        return alloc

    return allocate


def _unreachable(goal, analysis, model, order, loss, limits, align) -> str:
    blocks = group_blocks(analysis, align, loss)
    kept = {gid: np.sort(order[gid][: kept_steps(analysis.groups[gid].size, blocks[gid], limits)[len(loss[gid]) - 1]])
            for gid in loss}
    most = model.predict(analysis.full_keep()) / model.predict(analysis.keep_vector(kept))
    return (f"cannot reach a {goal:.2f}x speed-up: at most {most:.2f}x is reachable (predicted, blocks of {align} "
            f"channels, --max-ratio {limits.max_ratio:g})")
