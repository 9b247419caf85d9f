"""The pipeline as plain functions that read top to bottom: load, analyse, score, allocate,
rewrite, verify. The CLI calls these; they return data and never print.

    result = compress("model.onnx", Settings(target=Target("flops", 0.3)))
    save_model(result.model, "model.pruned.onnx")
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import onnx

from .allocate import Allocation, Limits, Target, allocate_uniform, main_blockers
from .analysis import Analysis, analyse
from .cost import Cost, CostModel
from .criteria import CRITERIA, score_groups
from .errors import OnnxPruneError, TargetError
from .graph import Model, load_model
from .plan import Plan, make_plan, plan_keep
from .rewrite import rewrite, verify


@dataclass(frozen=True)
class Settings:
    """What ``compress`` does. ``criterion=None`` picks the default (l1 without data)."""

    target: Target
    criterion: str | None = None
    allocation: str = "uniform"
    limits: Limits = field(default_factory=Limits)
    seed: int = 0
    verify: bool = True


@dataclass
class Result:
    model: onnx.ModelProto
    plan: Plan
    summary: dict
    analysis: Analysis
    allocation: Allocation


class Timer:
    """Wall time per stage, in the order the stages ran."""

    def __init__(self):
        self.stages: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.stages[name] = round(now - self._t, 4)
        self._t = now


def prepare(source, input_shapes=None) -> tuple[Model, Analysis, CostModel]:
    model = source if isinstance(source, Model) else load_model(source, input_shapes)
    analysis = analyse(model)
    return model, analysis, CostModel(analysis)


def compress(source, settings: Settings, input_shapes=None) -> Result:
    """Prune ``source`` (path, ModelProto or Model) to the settings' target."""
    timer = Timer()
    model, analysis, cost = prepare(source, input_shapes)
    timer.lap("analysis")
    if not analysis.prunable_groups:
        raise TargetError(f"no prunable channel group in the model: {_first_blocker(analysis)}")
    criterion = settings.criterion or "l1"
    if criterion not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion {criterion!r}; available: {', '.join(sorted(CRITERIA))}")
    scores = score_groups(analysis, criterion, seed=settings.seed)
    timer.lap("scoring")
    if settings.allocation != "uniform":
        raise OnnxPruneError(f"unknown allocation {settings.allocation!r}; available: uniform")
    allocation = allocate_uniform(analysis, cost, scores, settings.target, settings.limits)
    timer.lap("allocation")
    pruned = rewrite(analysis, allocation.keep)
    timer.lap("rewrite")
    if settings.verify:
        verify(model.proto, pruned, model.input_shapes, settings.seed)
        timer.lap("verify")
    record = {
        "target": asdict(settings.target),
        "criterion": criterion,
        "allocation": settings.allocation,
        "limits": asdict(settings.limits),
        "seed": settings.seed,
        "uniform_ratio": allocation.ratio,
        "input_shapes": {k: list(v) for k, v in model.input_shapes.items()},
    }
    predicted = _cost_dict(allocation.base, allocation.cost)
    plan = make_plan(analysis, allocation.kept, record, predicted)
    summary = summarise(analysis, allocation, criterion, timer)
    return Result(pruned, plan, summary, analysis, allocation)


def apply_plan(source, plan: Plan, input_shapes=None, check: bool = True) -> onnx.ModelProto:
    """Reproduce the pruned model from a plan (byte-identical to ``compress``'s output)."""
    model, analysis, _ = prepare(source, input_shapes or {k: tuple(v) for k, v in plan.settings.get("input_shapes", {}).items()} or None)
    keep = analysis.keep_vector(plan_keep(analysis, plan))
    pruned = rewrite(analysis, keep)
    if check:
        verify(model.proto, pruned, model.input_shapes)
    return pruned


def summarise(analysis: Analysis, allocation: Allocation, criterion: str, timer: Timer) -> dict:
    groups = analysis.groups
    pruned = [gid for gid, k in allocation.kept.items() if len(k) < groups[gid].size]
    return {
        **_cost_dict(allocation.base, allocation.cost),
        "target": {"kind": allocation.target.kind, "fraction": allocation.target.fraction},
        "achieved": round(allocation.achieved, 6),
        "criterion": criterion,
        "allocation": allocation.strategy,
        "uniform_ratio": allocation.ratio,
        "groups": {
            "total": len(groups),
            "prunable": len(analysis.prunable_groups),
            "pruned": len(pruned),
            "blocked": sum(1 for g in groups if g.blocked),
        },
        "channels": {
            "prunable": int(sum(g.size for g in analysis.prunable_groups)),
            "removed": int(sum(groups[gid].size - len(k) for gid, k in allocation.kept.items())),
        },
        "seconds": timer.stages,
    }


def _cost_dict(before: Cost, after: Cost) -> dict:
    return {
        "macs_before": before.macs,
        "macs_after": after.macs,
        "params_before": before.params,
        "params_after": after.params,
        "flops_reduction": round(after.reduction(before, "flops"), 6),
        "params_reduction": round(after.reduction(before, "params"), 6),
    }


def _first_blocker(analysis: Analysis) -> str:
    reasons = [g.blocked[0] for g in analysis.groups if g.blocked]
    if not reasons:
        return "no channel has more than one member"
    common = max(set(reasons), key=reasons.count)
    return common


def measured_cost(proto: onnx.ModelProto, input_shapes) -> Cost:
    """MACs and parameters counted on a (pruned) model by analysing it afresh."""
    _, analysis, cost = prepare(proto, input_shapes)
    return cost.evaluate(analysis.full_keep())


def inspect_model(source, input_shapes=None) -> dict:
    """Per-layer costs, channel groups and blockers, as plain data (rendered by the CLI/report)."""
    model, analysis, cost = prepare(source, input_shapes)
    keep = analysis.full_keep()
    total = cost.evaluate(keep)
    per_node = cost.per_node(keep)
    group_of_dim = {}
    for g in analysis.groups:
        for d in g.dims:
            group_of_dim.setdefault(d, []).append(g.id)
    layers = []
    for i, node in enumerate(model.graph.nodes):
        if i not in per_node:
            continue
        out_groups = sorted({gid for d in analysis.dims if d.node == i and d.role in ("out", "depthwise") for gid in group_of_dim.get(d.id, [])})
        in_groups = sorted({gid for d in analysis.dims if d.node == i and d.role == "in" for gid in group_of_dim.get(d.id, [])})
        y = node.outputs[0] if node.outputs else None
        layers.append({
            "index": i,
            "name": node.name,
            "op": node.op,
            "output_shape": list(y.shape) if y is not None and y.shape is not None else None,
            "macs": per_node[i].macs,
            "params": per_node[i].params,
            "out_groups": out_groups,
            "in_groups": in_groups,
            "prunable": any(analysis.groups[g].prunable for g in out_groups),
            "blocked": sorted({r for g in out_groups for r in analysis.groups[g].blocked}),
        })
    groups = [{
        "id": g.id,
        "name": g.name,
        "size": g.size,
        "prunable": g.prunable,
        "blocked": g.blocked,
        "dims": [analysis.dims[d].label for d in g.dims],
        "producers": [analysis.dims[d].label for d in g.dims if analysis.dims[d].role == "out"],
        "consumers": [analysis.dims[d].label for d in g.dims if analysis.dims[d].role == "in"],
    } for g in analysis.groups]
    prunable_macs = sum(l["macs"] for l in layers if l["prunable"])
    return {
        "model": {
            "path": model.path,
            "fingerprint": model.fingerprint,
            "opset": next((i.version for i in model.proto.opset_import if i.domain in ("", "ai.onnx")), None),
            "ir_version": model.proto.ir_version,
            "producer": f"{model.proto.producer_name} {model.proto.producer_version}".strip(),
            "inputs": {k: list(v) for k, v in model.input_shapes.items()},
            "outputs": [o.name for o in model.proto.graph.output],
            "nodes": len(model.graph.nodes),
        },
        "macs": total.macs,
        "params": total.params,
        "prunable_macs_share": prunable_macs / total.macs if total.macs else 0.0,
        "layers": layers,
        "groups": groups,
        "blockers": [{"reason": r, "macs_share": round(s, 6)} for r, s in main_blockers(analysis, cost)],
    }
