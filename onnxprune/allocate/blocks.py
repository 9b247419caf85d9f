"""Allocation as an optimisation over aligned channel blocks.

Each prunable group loses its channels in *blocks*, least important first: a group of ``n``
channels with block ``B`` first drops a *remainder block* of ``n % B`` channels (when ``n`` is not
a multiple of ``B``) and then whole blocks of ``B``, so every kept count below ``n`` is a multiple
of ``B``. Limits apply on top: at most ``max_ratio`` of the channels go, at least
``min_channels`` (rounded up to ``B``) and at least one block stay; a group with fewer than ``B``
channels is not pruned.

The block of a group is the runtime's alignment ``align`` (onnxruntime CPU: its NCHWc block),
divided by what the group's channels already bring on each tensor they live in: a channel that
is a run of ``m`` adjacent channels of a tensor (a GroupNormalization group of ``m`` channels)
needs only ``align / gcd(align, m)`` per block. (A grouped convolution's channel is ``G`` strided
copies, one per conv group: those keep the full ``align``.) Because a group's kept count is then aligned on every dim it
touches, every tensor built from aligned groups is aligned too: both inputs of a Concat (and so
the Concat), each conv group of a grouped convolution (the analysis ties channel ``l`` of every
conv group into one channel, so a group's count *is* the per-conv-group count), depthwise convs.

The problem: choose blocks removed ``b[g]`` to minimise ``sum loss[g][b[g]]`` subject to the
reduction ``1 - cost(b) / cost(0)`` lying in ``[target, target + tolerance]`` (where no choice
lands in that band, the smallest reduction >= target). Costs are not separable (a convolution
costs ``cin * cout``), so no knapsack table is exact; the search is

1. a lazy greedy that removes the block with the least marginal loss per marginal cost, cost
   recomputed exactly by ``cost_fn`` (stale ratios are lower bounds when costs are products of
   kept counts, so the lazy greedy takes the same steps as the plain one);
2. exchange steps: add back one block, remove one, or add back one and remove another, first to
   bring an overshoot into the band, then while the loss drops inside it.

tests/test_blocks.py compares it with brute force on small graphs (stated gap there).

    order = ranked(scores)
    loss = score_loss(scores, order, group_blocks(analysis, 16), limits)
    allocation = allocate_blocks(analysis, macs_of(cost), order, loss, Target("flops", 0.5), limits, 16)
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass

import numpy as np

from ..analysis import Analysis
from ..cost import Cost, CostModel
from ..errors import TargetError
from ..settings import Limits, Target
from .search import Allocation, ranked

TOLERANCE = 0.01  # the band above the target the search aims for (the issue allows 0.015)
MAX_EXCHANGES = 200
SMALL = 12  # groups up to which three-block exchanges are tried


MIN_BLOCKS = 4  # a group with fewer blocks of an alignment of 16 or more is aligned to half of it


def narrow_alignment(size: int, align: int) -> int:
    """The alignment a group of ``size`` channels keeps: ``align``, or half of it (not below 8)
    where the group has fewer than MIN_BLOCKS blocks of it."""
    return align // 2 if align >= 16 and size < MIN_BLOCKS * align else align


def group_block(analysis: Analysis, gid: int, align: int) -> int:
    """Channels per block of group ``gid`` so that every dim it touches stays a multiple of ``align``.

    A narrow group is aligned to ``align // 2`` instead (a multiple of 8 when the block is 16 still
    runs onnxruntime's blocked kernels, padded): with blocks of 16 a 16-channel group could not be
    pruned at all and a 32-channel one only halved, which pushed all pruning onto the wide layers and
    cost the bundled ResNet-20 12 points of top-1 at --flops 0.5 against multiples of 8."""
    if align <= 1:
        return 1
    g = analysis.groups[gid]
    align = narrow_alignment(g.size, align)
    block = 1
    for did, local in g.atom_index.items():
        m = len(local) // g.size if g.size and len(local) % g.size == 0 else 1
        if m > 1:  # only runs of m adjacent atoms per channel (GroupNorm) count; a grouped conv's
            chans = np.asarray(g.channel_atoms[did])[np.argsort(local)]  # strided copies need align per conv group
            if not np.all(chans.reshape(-1, m) == chans.reshape(-1, m)[:, :1]):
                m = 1
        need = align // math.gcd(align, max(m, 1))
        block = block * need // math.gcd(block, need)
    return block


def group_blocks(analysis: Analysis, align: int, groups=None) -> dict[int, int]:
    ids = [g.id for g in analysis.prunable_groups] if groups is None else list(groups)
    return {gid: group_block(analysis, gid, align) for gid in ids}


def kept_steps(n: int, block: int, limits: Limits) -> list[int]:
    """Kept counts after removing 0, 1, 2, ... blocks: ``[n, n - n % block, ...]`` down to the limits."""
    floor = max(limits.min_channels, n - int(np.floor(limits.max_ratio * n + 1e-9)), 1)
    floor = -(-floor // block) * block
    steps = [n]
    k = (n // block) * block
    if k == n:
        k -= block
    while k >= floor and k > 0:
        steps.append(k)
        k -= block
    return steps


def _blocks_of(align, gid: int) -> int:
    return int(align.get(gid, 1)) if isinstance(align, dict) else int(align)


def score_loss(scores: dict[int, np.ndarray], order: dict[int, np.ndarray], align, limits: Limits) -> dict[int, np.ndarray]:
    """``loss[g][b]``: sum of the group-normalised scores (score / group mean) of the channels the
    ``b`` last-ranked blocks hold; ``align`` is one block size or ``{gid: block}`` (group_blocks)."""
    out = {}
    for gid, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        mean = float(np.mean(s)) if len(s) else 0.0
        norm = s / mean if mean > 0 else np.ones_like(s)
        removed = np.concatenate([[0.0], np.cumsum(norm[np.asarray(order[gid])][::-1])])
        steps = kept_steps(len(s), _blocks_of(align, gid), limits)
        out[gid] = np.array([removed[len(s) - k] for k in steps], dtype=np.float64)
    return out


def deviation_loss(sizes: dict[int, int], ideal_removed: dict[int, float], align, limits: Limits) -> dict[int, np.ndarray]:
    """Loss of rounding a continuous allocation (uniform ratio, sensitivity threshold) to blocks:
    squared distance of the removed share to the ideal one, weighted by the group size."""
    out = {}
    for gid, n in sizes.items():
        steps = np.asarray(kept_steps(n, _blocks_of(align, gid), limits), dtype=np.float64)
        out[gid] = ((n - steps) - ideal_removed.get(gid, 0.0)) ** 2 / max(n, 1)
    return out


@dataclass
class BlockAllocation(Allocation):
    """An Allocation whose ``achieved`` is the reduction of the cost the search used."""

    cost_value: float = 0.0
    base_value: float = 0.0

    @property
    def achieved(self) -> float:
        if self.target.kind in ("flops", "params") and self.details.get("cost_kind") == self.target.kind:
            return self.cost.reduction(self.base, self.target.kind)
        return 1.0 - self.cost_value / self.base_value if self.base_value else 0.0


class SizedCost:
    """A ``cost_fn(keep)`` that is a function of the kept dim sizes: the block search then keeps
    the sizes up to date block by block instead of recounting every atom per evaluation (5 ms ->
    ~50 us on DenseNet-121's 320k atoms)."""

    def __init__(self, analysis: Analysis, of_sizes):
        self.analysis, self.of_sizes = analysis, of_sizes

    def __call__(self, keep: np.ndarray) -> float:
        return float(self.of_sizes(self.analysis.kept_sizes(keep)))


class _State:
    """Blocks removed per group, with the keep vector (or, for a SizedCost, the dim sizes)
    updated in place, and the cost of candidate moves."""

    def __init__(self, analysis, cost_fn, order, steps):
        self.analysis, self.cost_fn, self.order, self.steps = analysis, cost_fn, order, steps
        self.b = {gid: 0 for gid in steps}
        self.evaluations = 0
        self.sized = isinstance(cost_fn, SizedCost)
        if self.sized:
            self.sizes = analysis.kept_sizes(analysis.full_keep()).astype(np.float64)
            self.contrib = {gid: self._contributions(gid) for gid in steps}
        else:
            self.keep = analysis.full_keep()

    def _contributions(self, gid: int):
        """(dims of the group, [dims, steps] atoms of the group kept in each dim at each step)."""
        g = self.analysis.groups[gid]
        rank = np.empty(g.size, dtype=np.int64)
        rank[np.asarray(self.order[gid], dtype=np.int64)] = np.arange(g.size)
        dims = np.array(sorted(g.channel_atoms), dtype=np.int64)
        steps = np.asarray(self.steps[gid], dtype=np.int64)
        table = np.stack([np.searchsorted(np.sort(rank[g.channel_atoms[d]]), steps) for d in dims]) \
            if len(dims) else np.zeros((0, len(steps)))
        return dims, table.astype(np.float64)

    def _set(self, gid: int, b: int) -> None:
        if self.sized:
            dims, table = self.contrib[gid]
            self.sizes[dims] += table[:, b] - table[:, self.b[gid]]
            self.b[gid] = b
            return
        start = int(self.analysis.group_offsets[gid])
        order, steps = self.order[gid], self.steps[gid]
        k = steps[b]
        self.keep[start + np.asarray(order[:k], dtype=np.int64)] = True
        self.keep[start + np.asarray(order[k:], dtype=np.int64)] = False
        self.b[gid] = b

    def cost_with(self, moves: dict[int, int]) -> float:
        """Cost with ``b[g] += delta`` for each move, state left unchanged."""
        old = {g: self.b[g] for g in moves}
        for g, d in moves.items():
            self._set(g, old[g] + d)
        try:
            self.evaluations += 1
            return float(self.cost_fn.of_sizes(self.sizes) if self.sized else self.cost_fn(self.keep))
        finally:
            for g, b in old.items():
                self._set(g, b)

    def apply(self, moves: dict[int, int]) -> None:
        for g, d in moves.items():
            self._set(g, self.b[g] + d)

    def can(self, gid: int, d: int) -> bool:
        return 0 <= self.b[gid] + d < len(self.steps[gid])


def allocate_blocks(analysis: Analysis, cost_fn, order: dict[int, np.ndarray], loss: dict[int, np.ndarray],
                    target: Target, limits: Limits, align: int, base_cost: float | None = None,
                    tolerance: float = TOLERANCE, cost_model: CostModel | None = None,
                    cost_kind: str | None = None) -> BlockAllocation:
    """Blocks removed per group minimising the summed loss with the reduction of ``cost_fn`` in
    ``[target.fraction, target.fraction + tolerance]`` (module docstring). ``align`` is the
    runtime alignment (per-group blocks follow from it, see ``group_block``); ``loss[g]`` longer
    than the group's steps is cut, shorter limits its removal. Raises TargetError (message with
    the largest reachable reduction) when even removing every allowed block misses the target."""
    cost_model = cost_model or CostModel(analysis)
    blocks = group_blocks(analysis, align, loss.keys())
    steps = {}
    for gid, lo in loss.items():
        s = kept_steps(analysis.groups[gid].size, blocks[gid], limits)[: len(lo)]
        if len(s) > 1:
            steps[gid] = s
    loss = {gid: np.asarray(loss[gid], dtype=np.float64)[: len(steps[gid])] for gid in steps}
    base = float(cost_fn(analysis.full_keep())) if base_cost is None else float(base_cost)
    goal = base * (1.0 - target.fraction)  # cost to reach (<=)
    band = base * (1.0 - target.fraction - tolerance)  # aim not below this cost

    most = _State(analysis, cost_fn, order, steps).cost_with({g: len(s) - 1 for g, s in steps.items()}) if steps else base
    if most > goal * (1 + 1e-12):
        reachable = 1.0 - most / base if base else 0.0
        raise TargetError(f"cannot remove {target.fraction:.1%} of the {_what(target)}: at most {reachable:.1%} is "
                          f"reachable with blocks of {align} channels and --max-ratio {limits.max_ratio:g}")
    runs = []
    for fill in (False, True):  # two starts, the better kept
        st = _State(analysis, cost_fn, order, steps)
        current = _greedy(st, loss, base, goal, band, fill)
        if current > goal:  # a cost that is not monotone in the blocks stalled the greedy: start from the most
            st.apply({g: len(s) - 1 - st.b[g] for g, s in steps.items()})
            current = most
        current = _exchange(st, loss, current, goal, band)  # 2. exchange steps
        value = float(sum(loss[g][b] for g, b in st.b.items()))
        runs.append(((current >= band * (1 - 1e-12), -value if current >= band * (1 - 1e-12) else current), st, current))
        evaluations = sum(r[1].evaluations for r in runs)
    _, st, current = max(runs, key=lambda r: r[0])
    st.evaluations = evaluations
    return _result(analysis, st, cost_model, order, target, base, current, align, blocks, limits, cost_kind,
                   loss)


def _greedy(st: _State, loss, base: float, goal: float, band: float, fill: bool) -> float:
    """Lazy greedy: remove the block with the least marginal loss per marginal cost until the cost
    is <= goal. ``fill``: a block whose removal would overshoot the band is set aside while
    others still fit; the best of those set aside ends the run if nothing else reaches the goal."""
    current = base
    heap, aside = [], []

    def ratio(g):
        dc = current - st.cost_with({g: 1})
        dl = loss[g][st.b[g] + 1] - loss[g][st.b[g]]
        return (dl / dc if dc > 0 else math.inf), dc

    for g in st.steps:
        heapq.heappush(heap, (ratio(g)[0], g))
    while current > goal and heap:
        r, g = heapq.heappop(heap)
        fresh, dc = ratio(g)
        if heap and fresh > heap[0][0] + 1e-15 and fresh != r:
            heapq.heappush(heap, (fresh, g))
            continue
        if fill and current - dc < band:
            aside.append(g)
            continue
        st.apply({g: 1})
        current = st.cost_with({})  # exact, no drift
        if st.can(g, 1):
            heapq.heappush(heap, (ratio(g)[0], g))
    if current > goal and aside:
        g = min(aside, key=lambda h: ratio(h)[0])
        st.apply({g: 1})
        current = st.cost_with({})
    return current


def _moves(st: _State):
    groups = list(st.steps)
    for g in groups:
        if st.can(g, -1):
            yield {g: -1}
        if st.can(g, 1):
            yield {g: 1}
    for g in groups:
        if not st.can(g, -1):
            continue
        for h in groups:
            if h != g and st.can(h, 1):
                yield {g: -1, h: 1}
    if len(groups) <= SMALL:  # small problems: three-block exchanges too (cheap there, coarse steps need them)
        for g, h, k in itertools.permutations(groups, 3):
            if h < k and st.can(g, -1) and st.can(h, 1) and st.can(k, 1):
                yield {g: -1, h: 1, k: 1}
            if h < k and st.can(g, 1) and st.can(h, -1) and st.can(k, -1):
                yield {g: 1, h: -1, k: -1}


def _repair(st: _State, loss, goal: float, back: int) -> tuple[dict[int, int], float] | None:
    """Compound move: add back one block of ``back``, then remove blocks of the other groups
    (least marginal loss per marginal cost) until the cost is <= goal again; state unchanged."""
    moves = {back: -1}
    st.apply({back: -1})
    try:
        current = st.cost_with({})
        while current > goal:
            best = None
            for g in st.steps:
                if g == back or not st.can(g, 1):
                    continue
                c = st.cost_with({g: 1})
                dc, dl = current - c, loss[g][st.b[g] + 1] - loss[g][st.b[g]]
                if dc > 0 and (best is None or dl / dc < best[0]):
                    best = (dl / dc, g, c)
            if best is None:
                return None
            st.apply({best[1]: 1})
            moves[best[1]] = moves.get(best[1], 0) + 1
            current = best[2]
        return moves, current
    finally:
        st.apply({g: -d for g, d in moves.items()})


def _candidates(st: _State, loss, compound: bool, goal: float):
    """(moves, cost or None) of every one/two-block move, or of every compound move (``_repair``)."""
    if not compound:
        for m in _moves(st):
            yield m, None
        return
    for g in st.steps:
        if st.can(g, -1):
            r = _repair(st, loss, goal, g)
            if r is not None:
                yield r


def _exchange(st: _State, loss, current: float, goal: float, band: float) -> float:
    """Local search. Feasible: cost <= goal; inside the band: cost >= band. First leave an
    overshoot (cost < band) for a feasible state closer to the band (into the band with the least
    loss); then take loss-decreasing moves that stay feasible and do not move further below the
    band. One/two-block moves first; compound moves (add back one block, greedy repair) when
    those find nothing."""
    def dloss(m):
        return sum(loss[g][st.b[g] + d] - loss[g][st.b[g]] for g, d in m.items())

    def step(compound: bool, landing: bool):
        best = None
        floor = min(band, current)
        for m, c in _candidates(st, loss, compound, goal):
            dl = dloss(m)
            if not landing and (dl >= -1e-12 or (best is not None and dl >= best[0][1])):
                continue
            c = st.cost_with(m) if c is None else c
            if landing and current < c <= goal:
                key = (c >= band, -dl if c >= band else c)  # into the band with least loss, else closest
                if best is None or key > best[0]:
                    best = (key, m, c)
            elif not landing and floor <= c <= goal:
                best = ((0, dl), m, c)
        return best

    for landing in (True, False):
        for _ in range(MAX_EXCHANGES):
            if landing and current >= band:
                break
            best = step(False, landing) or step(True, landing)
            if best is None:
                break
            st.apply(best[1])
            current = best[2]
    return current


def _what(target: Target) -> str:
    return {"flops": "MACs", "params": "parameters"}.get(target.kind, f"{target.kind}")


def _result(analysis, st, cost_model, order, target, base, current, align, blocks, limits, cost_kind, loss):
    kept = {gid: np.sort(np.asarray(order[gid][: st.steps[gid][b]])) for gid, b in st.b.items() if b > 0}
    keep = analysis.keep_vector(kept)
    full_kept = {gid: np.arange(analysis.groups[gid].size) for gid in order if gid not in kept}
    details = {"align": align, "blocks": {g: blocks[g] for g in st.steps}, "loss": float(sum(loss[g][b] for g, b in st.b.items())),
               "evaluations": st.evaluations, "cost_kind": cost_kind, "removed_blocks": dict(st.b)}
    return BlockAllocation({**full_kept, **kept}, keep, cost_model.evaluate(keep), cost_model.evaluate(analysis.full_keep()),
                           target, strategy="blocks", details=details, cost_value=current, base_value=base)


def macs_of(cost: CostModel) -> SizedCost:
    return SizedCost(cost.analysis, lambda sizes: cost.mac_terms.values(sizes).sum())


def params_of(cost: CostModel) -> SizedCost:
    return SizedCost(cost.analysis, lambda sizes: cost.param_terms.values(sizes).sum())


def cost_fn_for(cost: CostModel, kind: str):
    return macs_of(cost) if kind == "flops" else params_of(cost)


def round_allocation(analysis: Analysis, cost: CostModel, scores: dict[int, np.ndarray], target: Target,
                     limits: Limits, continuous) -> BlockAllocation:
    """The final rounding of a continuous allocation (``continuous(limits) -> Allocation`` with exact
    counts: ACRA uniform, sensitivity, global) to blocks of ``limits.round_to``: the blocks
    nearest to its per-group counts (deviation_loss) that meet the target, by the block search.
    Called by the allocators when ``round_to > 1``."""
    from dataclasses import replace

    ideal = continuous(replace(limits, round_to=1))
    order = ranked(scores)
    sizes = {gid: len(s) for gid, s in scores.items()}
    removed = {gid: float(n - len(ideal.kept.get(gid, range(n)))) for gid, n in sizes.items()}
    align = limits.round_to
    blocks = group_blocks(analysis, align, sizes)
    loss = deviation_loss(sizes, removed, blocks, limits)
    result = allocate_blocks(analysis, cost_fn_for(cost, target.kind), order, loss, target, limits, align,
                             cost_model=cost, cost_kind=target.kind)
    result.strategy, result.ratio = ideal.strategy, ideal.ratio
    result.details = {**ideal.details, "rounding": result.details}
    return result


def allocate_global_blocks(analysis: Analysis, cost: CostModel, scores: dict[int, np.ndarray], target: Target,
                           limits: Limits) -> BlockAllocation:
    """Global ranking over aligned blocks: the block search with the normalised scores as loss."""
    order = ranked(scores)
    loss = score_loss(scores, order, group_blocks(analysis, limits.round_to, scores), limits)
    result = allocate_blocks(analysis, cost_fn_for(cost, target.kind), order, loss, target, limits, limits.round_to,
                             cost_model=cost, cost_kind=target.kind)
    result.strategy = "global"
    return result
