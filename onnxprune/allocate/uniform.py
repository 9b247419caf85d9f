"""ACRA's uniform allocation: every prunable group loses the same ratio ``r`` of its channels;
``r`` is the smallest ratio whose pruned network removes at least the target fraction (binary
search on the cost model: FLOPs are not linear in ``r`` because channels are coupled).

    allocation = allocate_uniform(analysis, cost, scores, Target("flops", 0.3))
    allocation.ratio, allocation.achieved
"""

from __future__ import annotations

import numpy as np

from ..analysis import Analysis
from ..cost import CostModel
from ..settings import Limits, Target
from .search import Allocation, bisect, keep_from_counts, ranked, unreachable_message


def allocate_uniform(
    analysis: Analysis,
    cost: CostModel,
    scores: dict[int, np.ndarray],
    target: Target,
    limits: Limits = Limits(),
) -> Allocation:
    if limits.round_to > 1:  # --- block search hook (issue 16): exact counts, then rounded to aligned blocks
        from .blocks import round_allocation

        return round_allocation(analysis, cost, scores, target, limits,
                                lambda exact: allocate_uniform(analysis, cost, scores, target, exact))
    base = cost.evaluate(analysis.full_keep())
    order = ranked(scores)
    sizes = {gid: len(s) for gid, s in scores.items()}

    def at(ratio: float):
        kept = keep_from_counts(analysis, order, {g: limits.kept(n, ratio) for g, n in sizes.items()})
        keep = analysis.keep_vector(kept)
        return kept, keep, cost.evaluate(keep)

    hi, (kept, keep, final) = bisect(at, 0.0, limits.max_ratio, base, target,
                                      lambda r: unreachable_message(analysis, cost, target, r, limits))
    return Allocation(kept, keep, final, base, target, ratio=hi, strategy="uniform")
