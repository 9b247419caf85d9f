"""The one list of channel criteria: name -> does it need calibration data, and what it measures.

The CLI's ``--criterion`` choices, ``compress``'s validation, the report and the scoring code
all read this table (no numpy is imported here, so the CLI can build its options cheaply).
The functions live beside their kind: weight criteria in ``scoring.weights.CRITERIA``,
activation criteria in ``scoring.activations`` (through the calibration collectors), structured
OBS (``obs``, its own passes over the data) in ``scoring.obs``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Criterion:
    name: str
    needs_data: bool
    summary: str
    inspect: bool = True  # ``inspect --criterion`` can show its per-group score distribution


_ALL = (
    Criterion("hrank", True, "average rank of each channel's feature maps (HRank)"),
    Criterion("apoz", True, "share of non-zero activations (1 - APoZ)"),
    Criterion("mean_activation", True, "mean absolute activation"),
    Criterion("recon", True, "output error of removing the channel, given the others (Gram matrix)", inspect=False),
    Criterion("obs", True, "structured Optimal Brain Surgeon: what the refit of the next layers cannot recover "
              "(scoring/obs.py; a removal order, scored by error profiles)", inspect=False),
    Criterion("l1", False, "L1 norm of the producing weights"),
    Criterion("l2", False, "L2 norm of the producing weights"),
    Criterion("fpgm", False, "distance from the geometric median of the group's filters (FPGM)"),
    Criterion("bn_scale", False, "|gamma| of the following BatchNormalization"),
    Criterion("random", False, "seeded random scores (a control)"),
    Criterion("group_magnitude", False, "squared L2 norm over every weight of the channel's group (Torch-Pruning)"),
    Criterion("group_l1", False, "L1 norm over every weight of the channel's group"),
)
REGISTRY: dict[str, Criterion] = {c.name: c for c in _ALL}

ALL_CRITERIA = tuple(REGISTRY)  # CLI order: the data criteria first
DATA_CRITERIA = tuple(c.name for c in _ALL if c.needs_data)
WEIGHT_CRITERIA = tuple(c.name for c in _ALL if not c.needs_data)


def needs_data(name: str) -> bool:
    return REGISTRY[name].needs_data


def inspect_criteria() -> list[str]:
    """``inspect --criterion`` choices: the weight criteria, then the data ones it can show."""
    return list(WEIGHT_CRITERIA) + [c.name for c in _ALL if c.needs_data and c.inspect]
