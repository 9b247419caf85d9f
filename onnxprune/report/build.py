"""The pre-deployment report: one data structure, rendered as text, JSON or a self-contained HTML page.

A :class:`Report` holds what ``inspect_model`` finds (model summary, per-layer costs, channel
groups, blockers) plus optional sections, each filled only when its input is given:

* **plan** — a plan (or a pruned model from ``compress``) applied: per-layer MACs/params after
  pruning, measured on the rewritten model, next to the totals the plan predicted;
* **latency** — onnxruntime CPU latency before and after (median of N interleaved runs, batch 1,
  fixed threads) against the speed-up the MAC reduction predicts;
* **scores** — per-group distribution of channel scores (any criterion, data-free or calibrated:
  l1, HRank ranks, APoZ) with the share of low-scoring channels as a recommended ratio;
* **sensitivity** — per-group damage curves with the largest ratio whose damage stays under a
  tolerance.

The JSON form is the schema ``onnxprune.report/1`` documented field by field in docs/REPORTS.md;
every key is always present (``null`` when a section was not requested).

    report = build_report("model.onnx", plan=Plan.from_json(Path("model.plan.json").read_text()))
    print(render_text(report))
    write_report("model.report.html", "model.onnx", result=result)   # format from the extension
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import onnx

from ..analysis import Analysis, analyse
from ..cost import Cost
from ..scoring.weights import CRITERIA, score_groups
from ..errors import OnnxPruneError, PlanError
from ..runtime.session import interleaved_latency
from ..model.graph import Model, load_model
from ..model.files import check_writable, write_text_atomic
from ..pipeline import Result, inspect_model, load_inputs, prepare
from ..plan import Plan, plan_keep
from ..rewrite import random_inputs, rewrite
from ..scoring.activations import collect, data_scores
from ..scoring.registry import DATA_CRITERIA
from ..settings import ReportSettings
from .model import FORMATS, Report
from .text import render_json, render_text

# --- building ------------------------------------------------------------------------------------
def build_report(
    source,
    plan: Plan | None = None,
    pruned: onnx.ModelProto | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    scores: dict[int, np.ndarray] | None = None,
    criterion: str | None = None,
    sensitivity=None,
    settings: ReportSettings | None = None,
    result: Result | None = None,
    data=None,
) -> Report:
    """Inspect ``source`` (path, ModelProto or Model) and add the sections whose inputs are given.

    ``plan`` alone is applied to the model (channel structure only, see ``pruned_structure``);
    ``pruned`` (the model ``compress`` returned) is used as is. ``scores`` maps group ids to per-channel
    scores, higher = more important (without them, a data-free ``criterion`` such as "l1" is
    computed from the weights); ``sensitivity`` is a ``Sensitivity`` or its JSON dict.

    With ``result`` (what ``compress`` returned) the report reuses the model compress loaded
    (``source`` is then only a label), compares it with ``result.model`` and takes ``result.plan``
    and the scores and sensitivity curves the run computed, unless given explicitly.

    ``data`` (calibration data, anything ``onnxprune.data.load_data`` reads) scores the channels
    on feature maps: ``criterion`` ``hrank`` (the default with data), ``apoz`` or
    ``mean_activation``, on the first ``settings.calibration_images`` samples.
    """
    settings = settings or ReportSettings()
    calibration = None  # images and provider of the pass that computed the scores, if one did
    if result is not None:  # the model compress loaded: no second (slow) load
        source = result.analysis.model
        plan = plan or result.plan
        pruned = pruned if pruned is not None else result.model
        if scores is None and getattr(result, "scores", None) is not None:
            scores, criterion = result.scores, criterion or result.summary.get("criterion")
            run = result.summary.get("calibration")
            calibration = {"images": run["images"], "provider": run["provider"]} if run else None
        if sensitivity is None and getattr(result, "sensitivity", None) is not None:
            sensitivity = result.sensitivity
    if input_shapes is None and plan is not None and plan.settings.get("input_shapes"):
        input_shapes = {k: tuple(v) for k, v in plan.settings["input_shapes"].items()}
    dataset = None
    if data is not None:  # the data's shapes fix symbolic input dims
        model, dataset, _ = load_inputs(source, input_shapes, data)
        criterion = criterion or "hrank"
    else:
        model = source if isinstance(source, Model) else load_model(source, input_shapes)  # loaded once: the slow part
    analysis = analyse(model)  # once, for every section
    inspection = inspect_model(model, analysis=analysis)
    report = Report(**{f.name: inspection[f.name] for f in fields(Report) if f.name in inspection})
    report.settings = asdict(settings)
    for layer in report.layers:
        layer["after"] = None
    for group in report.groups:
        group["kept"] = None
    if plan is not None and pruned is None:
        pruned = pruned_structure(analysis, plan)
    if pruned is not None:
        report.plan = compare(report, plan, pruned, model.input_shapes, original=model)
        if settings.latency_runs > 0:
            report.latency = measure_latency(model.proto, pruned, model.input_shapes, settings)
            report.latency.update(_predicted_latency(report))
    if scores is None and criterion is not None:
        if criterion in DATA_CRITERIA:
            scores, calibration = calibrated_scores(analysis, dataset, criterion, settings)
        else:
            scores = data_free_scores(analysis, criterion)
    if scores:
        report.scores = summarise_scores(report, scores, criterion, settings)
        report.scores["calibration"] = calibration
    if sensitivity is not None:
        report.sensitivity = summarise_sensitivity(report, sensitivity, settings)
    return report


def pruned_structure(analysis: Analysis, plan: Plan) -> onnx.ModelProto:
    """The model with the plan's channels removed, without reconstruction.

    Costs and latency depend only on the kept channels, not on the compensated weights, so a
    plan made with reconstruction needs no calibration data to be reported on.
    """
    return rewrite(analysis, analysis.keep_vector(plan_keep(analysis, plan)))


def data_free_scores(analysis: Analysis, criterion: str) -> dict[int, np.ndarray]:
    """Scores of every prunable group from the weights alone (``criterion`` in ``CRITERIA``)."""
    if criterion not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion {criterion!r}; data-free: {', '.join(sorted(CRITERIA))}; "
                             f"with calibration data: {', '.join(DATA_CRITERIA)}")
    return score_groups(analysis, criterion)


def calibrated_scores(analysis: Analysis, dataset, criterion: str, settings: ReportSettings) -> tuple[dict, dict]:
    """Scores from one onnxruntime pass over the data (``criterion`` in ``DATA_CRITERIA``), where
    the criteria observe each group (``groups[].output``), and what the pass used."""
    if dataset is None:
        raise OnnxPruneError(f"criterion {criterion} scores feature maps: give calibration data")
    if criterion in ("recon", "obs"):  # obs: issue 17
        raise OnnxPruneError(f"criterion {criterion} is a removal order, not a score distribution: use hrank, apoz or mean_activation")
    if settings.calibration_images and (dataset.num_samples is None or dataset.num_samples > settings.calibration_images):
        dataset = dataset.take(settings.calibration_images)
    stats = collect(analysis, dataset, [criterion])
    scores = data_scores(analysis, criterion, stats)
    return scores, {"images": stats.num_images, "provider": stats.provider}


def compare(report: Report, plan: Plan | None, pruned: onnx.ModelProto, shapes, original: Model | None = None) -> dict:
    """Fill each layer's ``after`` from the pruned model and return the plan section.

    The after-costs are *measured*: the pruned model is analysed afresh, so a mismatch with the
    plan's prediction (invariant 4) shows up as ``prediction_matches: false``. Parameters in
    initializers that ``original`` does not have (the biases reconstruction gives a compensated
    layer that had none) are counted in ``params_added``; the prediction, made for the channel
    structure, is compared without them.
    """
    model, analysis, cost = prepare(pruned, shapes)
    added = _added_params(model, original) if original is not None else 0
    keep = analysis.full_keep()
    per_node, total = cost.per_node(keep), cost.evaluate(keep)
    nodes = model.graph.nodes
    by_name = {n.name: i for i, n in enumerate(nodes)}
    for layer in report.layers:
        i = layer["index"]
        if not (i < len(nodes) and nodes[i].op == layer["op"] and nodes[i].name == layer["name"]):
            i = by_name.get(layer["name"])  # a rewrite keeps node order; this is a safety net
        if i is None:
            continue
        c = per_node.get(i, Cost(0, 0))
        y = nodes[i].outputs[0] if nodes[i].outputs else None
        layer["after"] = {"macs": c.macs, "params": c.params, "output_shape": _shape(y)}
    kept = {gp.id: len(gp.kept) for gp in plan.groups} if plan is not None else {}
    for group in report.groups:
        group["kept"] = kept.get(group["id"], group["size"])
    predicted = dict(plan.predicted) if plan is not None else {}
    matches = None
    if "macs_after" in predicted:
        matches = predicted["macs_after"] == total.macs and predicted.get("params_after") == total.params - added
    return {
        "fingerprint": plan.fingerprint if plan is not None else None,
        "settings": dict(plan.settings) if plan is not None else {},
        "macs_after": total.macs,
        "params_after": total.params,
        "flops_reduction": round(1 - total.macs / report.macs, 6) if report.macs else 0.0,
        "params_reduction": round(1 - total.params / report.params, 6) if report.params else 0.0,
        "predicted": predicted,
        "prediction_matches": matches,
        "params_added": added,
        "groups_pruned": sum(1 for g in report.groups if g["kept"] < g["size"]),
        "channels_removed": sum(g["size"] - g["kept"] for g in report.groups),
    }


def _added_params(pruned: Model, original: Model) -> int:
    """Parameters (as the cost model counts them) in initializers the original model lacks."""
    import onnx_graphsurgeon as gs

    from ..cost import is_float

    known = set(original.tensors)
    seen: set[str] = set()
    added = 0
    for node in pruned.graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen and t.name not in known and is_float(t) and len(t.shape) > 0:
                seen.add(t.name)
                added += int(np.prod(t.shape))
    return added


def measure_latency(original: onnx.ModelProto, pruned: onnx.ModelProto, shapes, settings: ReportSettings) -> dict:
    """Median onnxruntime CPU latency of both models on random inputs of ``shapes``, in
    milliseconds, interleaved (``runtime.session.interleaved_latency``)."""
    return interleaved_latency(original, pruned, random_inputs(original, shapes, seed=0), runs=settings.latency_runs,
                               warmup_runs=settings.warmup_runs, threads=settings.threads)


def _predicted_latency(report: Report) -> dict:
    """What the MAC reduction predicts if latency were proportional to MACs."""
    after = report.plan["macs_after"]
    if not report.macs or not after:
        return {"predicted_speedup": None, "predicted_after_ms": None}
    ratio = after / report.macs
    return {"predicted_speedup": round(1 / ratio, 4),
            "predicted_after_ms": round(report.latency["before"]["median_ms"] * ratio, 4)}


def summarise_scores(report: Report, scores: dict[int, np.ndarray], criterion: str | None,
                     settings: ReportSettings) -> dict:
    """Per-group score statistics, a histogram of scores / group maximum, and recommended ratios.

    A channel is *low* when it scores below ``low_score`` x its group's median (below zero-or-equal
    when the median itself is zero, e.g. HRank on mostly dead feature maps). Removing only low
    channels is the data's suggestion of a safe ratio; the sensitivity curves measure it.
    """
    rows = []
    for gid in sorted(scores):
        s = np.asarray(scores[gid], dtype=np.float64).reshape(-1)
        group = report.groups[gid] if 0 <= gid < len(report.groups) else None
        if group is None or s.size != group["size"]:
            raise ValueError(f"scores of group {gid} do not match the model's channel groups")
        median, peak = float(np.median(s)), float(np.max(s))
        low = float(np.mean(s < settings.low_score * median)) if median > 0 else float(np.mean(s <= 0))
        counts, edges = np.histogram(s / peak if peak > 0 else np.zeros_like(s), bins=settings.bins, range=(0.0, 1.0))
        rows.append({
            "id": gid, "name": group["name"], "size": int(s.size),
            "min": float(s.min()), "median": median, "mean": float(s.mean()), "max": peak,
            "low_share": round(low, 6),
            "recommended_ratio": round(min(low, settings.max_ratio), 6),
            "histogram": {"edges": [round(float(e), 6) for e in edges], "counts": counts.tolist()},
            "normalised": [round(float(v), 6) for v in (s / median if median > 0 else s)],
        })
    total = sum(r["size"] for r in rows)
    return {
        "criterion": criterion,
        "low_score": settings.low_score,
        "groups": rows,
        "low_share": round(sum(r["low_share"] * r["size"] for r in rows) / total, 6) if total else 0.0,
        "uniform_safe_ratio": min((r["recommended_ratio"] for r in rows), default=0.0),
    }


def summarise_sensitivity(report: Report, sensitivity, settings: ReportSettings) -> dict:
    """Damage curves per group and the largest ratio whose damage stays within the tolerance."""
    from ..allocate.sensitivity import ratio_at

    data = json.loads(sensitivity.to_json()) if hasattr(sensitivity, "to_json") else dict(sensitivity)
    if data.get("fingerprint") not in (None, report.model["fingerprint"]):
        raise PlanError("the sensitivity analysis was made for another model (fingerprint differs)")
    ratios = [float(r) for r in data["ratios"]]
    names = {int(k): v for k, v in data.get("names", {}).items()}
    rows = []
    for gid, curve in sorted((int(k), v) for k, v in data["curves"].items()):
        safe = ratio_at(np.asarray(curve, dtype=np.float64), np.asarray(ratios), settings.damage_tolerance)
        name = names.get(gid) or (report.groups[gid]["name"] if gid < len(report.groups) else str(gid))
        rows.append({"id": gid, "name": name, "damage": [float(v) for v in curve], "safe_ratio": round(safe, 4)})
    return {"metric": data.get("metric"), "criterion": data.get("criterion"), "ratios": ratios,
            "tolerance": settings.damage_tolerance, "groups": rows}


def _shape(t) -> list | None:
    return [int(d) if isinstance(d, (int, np.integer)) else str(d) for d in t.shape] if t is not None and t.shape is not None else None


def format_of(path: str | os.PathLike) -> str:
    """The report format that a file name asks for: .html/.htm, .json or .txt."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OnnxPruneError(f"cannot tell the report format from '{Path(path).name}': use .html, .json or .txt")
    return fmt


def render(report: Report, fmt: str) -> str:
    if fmt == "html":
        from .html import render_html

        return render_html(report)
    if fmt == "json":
        return render_json(report)
    if fmt == "text":
        return render_text(report)
    raise OnnxPruneError(f"unknown report format {fmt!r}: use text, json or html")


def write_report(
    path: str | os.PathLike,
    model_source,
    plan: Plan | None = None,
    result: Result | None = None,
    fmt: str | None = None,
    **options,
) -> Report:
    """Build the report of ``model_source`` and write it atomically to ``path``.

    The format comes from ``fmt`` or the extension (.html, .json, .txt). ``result`` (what
    ``compress`` returned) and ``options`` go to :func:`build_report` (``scores``, ``criterion``,
    ``sensitivity``, ``settings``, ...). The path is checked before the (slow) report is built.

        result = compress("m.onnx", settings)
        write_report("m.report.html", "m.onnx", result=result)
    """
    path = Path(path)
    fmt = fmt or format_of(path)
    check_writable(path)
    report = build_report(model_source, plan=plan, result=result, **options)
    write_text_atomic(path, render(report, fmt))
    return report


