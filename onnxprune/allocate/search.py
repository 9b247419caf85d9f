"""Allocation: how many channels each group keeps, so the network meets a reduction target.

ACRA's uniform strategy gives every prunable group the same ratio ``r``. Because channels are
coupled, FLOPs are not linear in ``r``; ``r`` is found by binary search on the cost model: the
smallest ratio whose pruned network removes at least the target fraction.

    allocation = allocate_uniform(analysis, cost, scores, Target("flops", 0.3))
    allocation.ratio, allocation.achieved
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from ..analysis import Analysis
from ..cost import Cost, CostModel
from ..errors import TargetError
from ..settings import Limits, Target


@dataclass
class Allocation:
    kept: dict[int, np.ndarray]  # group id -> kept channel indices (sorted)
    keep: np.ndarray  # global keep vector
    cost: Cost
    base: Cost
    target: Target
    ratio: float | None = None
    strategy: str = "uniform"
    details: dict = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        return self.cost.reduction(self.base, self.target.kind)


def ranked(scores: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Channel order per group, most important first (ties: lower index first)."""
    return {gid: np.lexsort((np.arange(len(s)), -s)) for gid, s in scores.items()}


def keep_from_counts(analysis: Analysis, order: dict[int, np.ndarray], counts: dict[int, int]) -> dict[int, np.ndarray]:
    return {gid: np.sort(order[gid][:k]) for gid, k in counts.items()}


def bisect(at, lo: float, hi: float, base: Cost, target: Target, unreachable, steps: int = 50):
    """Smallest knob value in [lo, hi] whose candidate ``at(knob) -> (kept, keep, cost)`` meets the
    target (reduction is monotone in the knob). Raises TargetError(unreachable(best)) if ``hi`` fails."""
    best = at(hi)
    if best[2].reduction(base, target.kind) < target.fraction:
        raise TargetError(unreachable(best[2].reduction(base, target.kind)))
    for _ in range(steps):
        mid = (lo + hi) / 2
        trial = at(mid)
        if trial[2].reduction(base, target.kind) >= target.fraction:
            hi, best = mid, trial
        else:
            lo = mid
    return hi, best


def unreachable_message(analysis: Analysis, cost: CostModel, target: Target, reachable: float, limits: Limits) -> str:
    blockers = [(reason, share) for reason, share in main_blockers(analysis, cost) if share > 0]
    if blockers:
        text = "main blockers: " + "; ".join(f"{reason} ({share:.0%} of MACs)" for reason, share in blockers[:3])
    elif not analysis.prunable_groups:
        text = "no prunable channel group"
    else:
        text = "no blocked channel pins MACs, the per-group limits (--max-ratio, --min-channels, --round-to) stop the rest"
    return (
        f"cannot remove {target.fraction:.0%} of {target.kind.upper() if target.kind == 'flops' else 'parameters'}: "
        f"at most {reachable:.1%} is reachable with --max-ratio {limits.max_ratio:g}; {text}"
    )


def main_blockers(analysis: Analysis, cost: CostModel) -> list[tuple[str, float]]:
    """Blocking reasons ranked by the share of the model's MACs they pin (largest first).

    A MAC term of the cost model is ``coef * size(d1) * ... * size(dk)`` over the pruned axes of a
    weight (output and input channels). The MACs that connect channels of groups g1..gk (one per
    axis) go as soon as any of those channels goes, so they are *pinned* only when no gi is
    prunable: a conv whose output channels are prunable pins nothing, whatever blocks its input
    channels. Pinned MACs are credited to the (first) reason of every blocked gi, i.e. to each
    reason whose lifting alone would make them reducible, so shares may add up to more than 1.
    Every reason that blocks a group is listed, with 0 when it pins no MACs.
    """
    total = cost.evaluate(analysis.full_keep()).macs or 1
    members: dict[int, list] = {}  # dim id -> [(group, atoms of the dim in the group)] of unprunable groups
    pinned: dict[str, float] = {}
    for g in analysis.groups:
        if g.blocked:
            pinned.setdefault(g.blocked[0], 0.0)
        if not g.prunable:
            for did, local in g.atom_index.items():
                members.setdefault(did, []).append((g, len(local)))
    terms = cost.mac_terms
    for coef, row in zip(terms.coef, terms.dims):
        axes = [members.get(int(d), []) for d in row if d >= 0]
        for combo in itertools.product(*axes):
            macs = float(coef) * float(np.prod([n for _, n in combo]))
            for reason in {g.blocked[0] for g, _ in combo if g.blocked}:
                pinned[reason] += macs
    return sorted(((reason, macs / total) for reason, macs in pinned.items()), key=lambda x: -x[1])
