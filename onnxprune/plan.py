"""The pruning plan: the one artifact passed between stages, JSON-serialisable.

A plan names the model it was made for (fingerprint), the kept channel indices of every pruned
group, the settings that produced it and the predicted cost. ``apply_plan`` reproduces the pruned
model from it deterministically.

    plan = Plan.from_json(Path("model.plan.json").read_text())
    pruned = apply_plan(load_model("model.onnx"), plan)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .analysis import Analysis
from .errors import PlanError

FORMAT = "onnxprune.plan/1"


@dataclass
class GroupPlan:
    id: int
    name: str
    key: list[str]  # the dims of the group, "tensor:axis": identifies it across runs
    size: int
    kept: list[int]


@dataclass
class Plan:
    fingerprint: str
    groups: list[GroupPlan]
    settings: dict = field(default_factory=dict)
    predicted: dict = field(default_factory=dict)
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise PlanError(f"not an onnxprune plan (format {data.get('format')!r}, expected {FORMAT!r})")
            groups = [GroupPlan(**g) for g in data["groups"]]
            return cls(data["fingerprint"], groups, data.get("settings", {}), data.get("predicted", {}))
        except PlanError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PlanError(f"not a valid onnxprune plan: {exc}") from exc


def group_key(analysis: Analysis, gid: int) -> list[str]:
    return [f"{analysis.dims[d].tensor}:{analysis.dims[d].axis}" for d in analysis.groups[gid].dims]


def make_plan(analysis: Analysis, kept: dict[int, np.ndarray], settings: dict, predicted: dict) -> Plan:
    groups = []
    for gid in sorted(kept):
        g = analysis.groups[gid]
        k = np.asarray(kept[gid]).tolist()
        if len(k) < g.size:
            groups.append(GroupPlan(gid, g.name, group_key(analysis, gid), g.size, [int(i) for i in k]))
    return Plan(analysis.model.fingerprint, groups, settings, predicted)


def plan_keep(analysis: Analysis, plan: Plan) -> dict[int, np.ndarray]:
    """Check that the plan fits this model's analysis and return ``{group id: kept channels}``."""
    if plan.fingerprint != analysis.model.fingerprint:
        raise PlanError(
            f"the plan was made for another model (plan {plan.fingerprint[:19]}..., model {analysis.model.fingerprint[:19]}...)"
        )
    kept = {}
    for gp in plan.groups:
        if gp.id >= len(analysis.groups) or group_key(analysis, gp.id) != gp.key:
            raise PlanError(f"plan group {gp.id} ({gp.name}) does not match the model's channel groups")
        g = analysis.groups[gp.id]
        idx = np.asarray(gp.kept, dtype=np.int64)
        if not g.prunable:
            raise PlanError(f"plan prunes group {gp.id} ({gp.name}), which is blocked: {'; '.join(g.blocked)}")
        if idx.size == 0 or idx.min() < 0 or idx.max() >= g.size or len(np.unique(idx)) != idx.size:
            raise PlanError(f"plan group {gp.id} ({gp.name}) keeps invalid channel indices")
        kept[gp.id] = np.sort(idx)
    return kept
