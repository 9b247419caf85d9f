"""Allocations that give groups different ratios: ``allocate_sensitivity`` from measured damage
curves (ACRA's sensitivity strategy: every group gets the largest ratio whose damage stays under a
shared threshold, the threshold binary-searched to meet the target), and ``allocate_global``
from channel scores ranked across groups.

    allocation = allocate_sensitivity(analysis, cost, scores, sens, Target("flops", 0.5))
"""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..cost import CostModel
from ..settings import Limits, Target
from .search import Allocation, bisect, keep_from_counts, ranked, unreachable_message
from .sensitivity import Sensitivity, ratio_at


def allocate_sensitivity(
    analysis: Analysis,
    cost: CostModel,
    scores: dict[int, np.ndarray],
    sens: Sensitivity,
    target: Target,
    limits: Limits = Limits(),
) -> Allocation:
    """Each group gets ``ratio_at(curve, threshold)``; the threshold is binary-searched so the
    network removes at least the target fraction. Groups without a curve keep everything."""
    if limits.round_to > 1:  # --- block search hook (issue 16): exact counts, then rounded to aligned blocks
        from .blocks import round_allocation

        curved = {gid: s for gid, s in scores.items() if gid in sens.curves}
        return round_allocation(analysis, cost, curved, target, limits,
                                lambda exact: allocate_sensitivity(analysis, cost, scores, sens, target, exact))
    base = cost.evaluate(analysis.full_keep())
    order = ranked(scores)
    ratios = np.asarray(sens.ratios)
    curves = {gid: np.asarray(sens.curves[gid]) for gid in scores if gid in sens.curves}

    def at(threshold: float):
        counts = {gid: limits.kept(len(scores[gid]), ratio_at(c, ratios, threshold)) for gid, c in curves.items()}
        kept = keep_from_counts(analysis, order, counts)
        keep = analysis.keep_vector(kept)
        return kept, keep, cost.evaluate(keep)

    hi = max((float(np.max(np.maximum.accumulate(np.maximum(c, 0)))) for c in curves.values()), default=0.0) + 1e-9
    hi, (kept, keep, final) = bisect(at, 0.0, hi, base, target,
                                      lambda r: unreachable_message(analysis, cost, target, r, limits))
    ratios_used = {gid: round(ratio_at(c, ratios, hi), 4) for gid, c in curves.items()}
    return Allocation(kept, keep, final, base, target, ratio=None, strategy="sensitivity",
                      details={"threshold": hi, "metric": sens.metric, "ratios": ratios_used})


def allocate_global(
    analysis: Analysis,
    cost: CostModel,
    scores: dict[int, np.ndarray],
    target: Target,
    limits: Limits = Limits(),
) -> Allocation:
    """Rank channels across groups on normalised scores and cut the lowest until the target is met.

    Scores are normalised per group by the group's mean score, so a channel's value reads "how
    important relative to its layer's average channel"; raw scores are not comparable across
    layers (an L1 norm grows with fan-in, an HRank rank with the map size). Per-group bounds
    (``--max-ratio``, minimum channels, ``--round-to``) cap how many channels a group can lose.
    """
    if limits.round_to > 1:  # --- block search hook (issue 16): the same ranking, over aligned blocks
        from .blocks import allocate_global_blocks

        return allocate_global_blocks(analysis, cost, scores, target, limits)
    base = cost.evaluate(analysis.full_keep())
    order = ranked(scores)
    norm = {gid: s / (np.mean(s) if np.mean(s) > 0 else 1.0) for gid, s in scores.items()}

    def at(threshold: float):
        counts = {}
        for gid, s in norm.items():
            below = int((s < threshold).sum())
            ratio = below / len(s)
            counts[gid] = limits.kept(len(s), ratio)
        kept = keep_from_counts(analysis, order, counts)
        keep = analysis.keep_vector(kept)
        return kept, keep, cost.evaluate(keep)

    lo = min((float(s.min()) for s in norm.values()), default=0.0)
    hi = max((float(s.max()) for s in norm.values()), default=0.0) + 1e-9
    hi, (kept, keep, final) = bisect(at, lo, hi, base, target,
                                      lambda r: unreachable_message(analysis, cost, target, r, limits))
    return Allocation(kept, keep, final, base, target, strategy="global", details={"threshold": hi})
