"""Label-free recovery: distil the pruned model from the original on the calibration samples.

One-shot channel selection and least-squares refits leave an error that a short distillation
from the original model removes, with no labels and a few hundred samples (global AdaPrune,
BRECQ, SNOWS). This module is the torch-free front: settings, data loading, and the glue the
pipeline calls; the training itself is :mod:`onnxprune.torch.recover`, imported only when a run
starts (``pip install 'onnxprune[torch]'``).

    result = recover(pruned, original, "calib.npz", RecoverSettings(time=60))
    result.model, result.report["heldout_after"]

The returned model is never worse than ``pruned`` on the held-out part of the samples: when no
state beats the starting point, ``pruned`` comes back unchanged (``report["kept"] == "unchanged"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import onnx

from .data import input_specs, load_data
from .errors import ModelError, OnnxPruneError, require_torch
from .settings import RecoverSettings

__all__ = ["RecoverResult", "RecoverSettings", "kept_channels", "plan_record", "recover", "recover_stage",
           "replay_recovery", "replays_recovery", "summary_of", "torch_available"]


@dataclass
class RecoverResult:
    """``model``: the recovered ModelProto (``pruned`` itself, copied, when nothing beat it);
    ``report``: held-out fidelity before/after, steps, seconds, why it stopped (see the torch module)."""

    model: onnx.ModelProto
    report: dict


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def recover(pruned: onnx.ModelProto, original: onnx.ModelProto, data, settings: RecoverSettings | None = None, *,
            channels: dict | None = None, progress=None, replay: dict | None = None, **overrides) -> RecoverResult:
    """Distil ``pruned`` from ``original`` on ``data`` (anything ``load_data`` reads; labels ignored).

    ``channels`` maps an activation of ``original`` to ``(axis, kept indices)`` in ``pruned``, so
    that pruned intermediate tensors are matched to the original's kept channels (the pipeline
    passes it; without it only tensors whose shape did not change are matched). ``progress``
    receives one dict per step and per held-out evaluation. ``replay`` (from a previous report's
    ``"replay"``) reruns exactly the same schedule, for ``apply``. Keyword ``overrides`` replace
    settings fields: ``recover(p, o, d, time=30, mode="blockwise")``.
    """
    settings = replace(settings or RecoverSettings(), **overrides)  # validated in __post_init__
    require_torch()
    from .torch.recover import distil

    if not isinstance(pruned, onnx.ModelProto) or not isinstance(original, onnx.ModelProto):
        raise OnnxPruneError("recover takes the pruned and the original model as onnx.ModelProto")
    dataset = data if hasattr(data, "batches") else load_data(data, input_specs(original), labels=False)
    arrays = _arrays(dataset, settings.max_samples)
    model, report = distil(pruned, original, arrays, settings, channels or {}, progress, replay)
    report["settings"] = {k: v for k, v in asdict(settings).items() if k not in ("device",)}
    return RecoverResult(model, report)


def _arrays(dataset, limit: int) -> dict[str, np.ndarray]:
    """All samples (at most ``limit``) as one array per input, in the data's order."""
    parts: dict[str, list[np.ndarray]] = {}
    count = 0
    for batch in dataset.batches():
        for name, value in batch.items():
            parts.setdefault(name, []).append(np.asarray(value))
        count += len(next(iter(batch.values())))
        if count >= limit:
            break
    if not parts:
        raise OnnxPruneError("recovery got no samples")
    return {name: np.concatenate(p)[:limit] for name, p in parts.items()}


def kept_channels(analysis, keep: np.ndarray) -> dict[str, tuple[int, np.ndarray]]:
    """``{activation: (axis, kept channel indices)}`` for every activation that pruning shrank."""
    atoms = analysis.kept_atoms(keep)
    out: dict[str, tuple[int, np.ndarray]] = {}
    seen: set[str] = set()
    for d in analysis.dims:
        if d.constant:
            continue
        if d.tensor in seen:  # a tensor pruned along two axes: not matched channel-wise
            out.pop(d.tensor, None)
            continue
        seen.add(d.tensor)
        idx = analysis.kept_index(atoms, d)
        if len(idx) < d.size:
            out[d.tensor] = (d.axis, idx)
    return out


# --------------------------------------------------------------------------------------------
# Pipeline glue (compress and apply call these; kept here so their hooks stay one line each)


def recover_stage(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis, keep, dataset,
                  settings: RecoverSettings, progress=None, replay: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """The pipeline's recovery stage: ``(model, report)``; progress as ``(done, total)``."""
    def relay(event: dict) -> None:
        if progress is not None and event.get("event") == "step":
            progress(event["step"], event["total"])

    try:
        result = recover(pruned, original, dataset, settings, channels=kept_channels(analysis, keep),
                         progress=relay, replay=replay)
    except ModelError as exc:  # an op the torch bridge lacks: compress still delivers the pruned model
        return pruned, {"mode": settings.mode, "kept": "unchanged", "steps": 0, "skipped": f"recovery skipped: {exc}"}
    return result.model, result.report


def summary_of(report: dict) -> dict:
    """What the summary and the plan keep of a recovery report."""
    keys = ("mode", "kept", "stopped", "steps", "planned_steps", "seconds", "heldout_before", "heldout_after",
            "train_samples", "heldout_samples", "features", "augment", "replay", "skipped")
    return {k: report[k] for k in keys if k in report}


def plan_record(settings: RecoverSettings, report: dict) -> dict:
    """What the plan keeps so that ``apply`` replays the recovery: the settings and the steps run."""
    return {"settings": asdict(settings), "replay": report.get("replay"), "kept": report["kept"]}


def replays_recovery(plan_settings: dict) -> bool:
    """Whether a plan's recorded recovery changed the weights (then ``apply`` must replay it)."""
    return (plan_settings.get("recover") or {}).get("kept", "unchanged") != "unchanged"


def replay_recovery(original: onnx.ModelProto, pruned: onnx.ModelProto, analysis, keep, dataset,
                    record: dict) -> onnx.ModelProto:
    """``apply``'s recovery: the recorded run (:func:`plan_record`) again, step for step."""
    model, _ = recover_stage(original, pruned, analysis, keep, dataset, RecoverSettings(**record["settings"]),
                             replay=record["replay"])
    return model
