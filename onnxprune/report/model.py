"""The report's data: one structure (schema ``onnxprune.report/1``, docs/REPORTS.md) that the
text, JSON and HTML renderers read, and the settings of its optional sections."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SCHEMA = "onnxprune.report/1"
FORMATS = {".html": "html", ".htm": "html", ".json": "json", ".txt": "text"}


@dataclass
class Report:
    """Everything a report shows, as plain JSON-ready data (see docs/REPORTS.md)."""

    model: dict
    macs: int
    params: int
    prunable_macs_share: float
    layers: list[dict]
    groups: list[dict]
    blockers: list[dict]
    plan: dict | None = None
    latency: dict | None = None
    scores: dict | None = None
    sensitivity: dict | None = None
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        from .. import __version__

        return {"schema": SCHEMA, "onnxprune_version": __version__, **asdict(self)}


def layer_status(layer: dict) -> str:
    """``prunable``, ``blocked: <reasons>``, or ``follows its input`` for a layer whose output
    channels are not a group of their own (e.g. a BatchNormalization: its group is its input's)."""
    if layer["prunable"]:
        return "prunable"
    if layer["blocked"]:
        return "blocked: " + "; ".join(layer["blocked"])
    return "follows its input"


def percent(share: float) -> str:
    """A share as a percentage that never rounds a partial share to 100% or 0%."""
    if 0.9995 <= share < 1:
        return ">99.9%"
    if 0 < share < 0.0005:
        return "<0.1%"
    return f"{share:.1%}"
