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
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import onnx

from .analysis import analyse
from .cost import Cost
from .criteria import CRITERIA, score_groups
from .errors import OnnxPruneError, PlanError, require_onnxruntime
from .graph import Model, load_model, write_bytes_atomic
from .pipeline import Result, inspect_model, load_inputs, prepare
from .plan import Plan, plan_keep
from .rewrite import random_inputs, rewrite
from .scoring import DATA_CRITERIA, collect, data_scores

SCHEMA = "onnxprune.report/1"
FORMATS = {".html": "html", ".htm": "html", ".json": "json", ".txt": "text"}


@dataclass(frozen=True)
class ReportSettings:
    """How the optional sections are measured.

    ``latency_runs=0`` skips the latency measurement; ``calibration_images`` caps the samples
    of calibration data scored (0: all). ``low_score`` defines a low-scoring channel
    as one scoring below that share of its group's median; ``damage_tolerance`` is the damage a
    sensitivity curve may reach at the recommended ratio (in the curve's metric).
    """

    latency_runs: int = 20
    warmup_runs: int = 3
    threads: int = 1
    low_score: float = 0.5
    max_ratio: float = 0.8
    damage_tolerance: float = 0.01
    bins: int = 10
    calibration_images: int = 512


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
        from . import __version__

        return {"schema": SCHEMA, "onnxprune_version": __version__, **asdict(self)}


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
    inspection = inspect_model(model)
    report = Report(**{f.name: inspection[f.name] for f in fields(Report) if f.name in inspection})
    report.settings = asdict(settings)
    for layer in report.layers:
        layer["after"] = None
    for group in report.groups:
        group["kept"] = None
    if plan is not None and pruned is None:
        pruned = pruned_structure(model, plan)
    if pruned is not None:
        report.plan = compare(report, plan, pruned, model.input_shapes, original=model)
        if settings.latency_runs > 0:
            report.latency = measure_latency(model.proto, pruned, model.input_shapes, settings)
            report.latency.update(_predicted_latency(report))
    if scores is None and criterion is not None:
        if criterion in DATA_CRITERIA:
            scores, calibration = calibrated_scores(model, dataset, criterion, settings)
        else:
            scores = data_free_scores(model, criterion)
    if scores:
        report.scores = summarise_scores(report, scores, criterion, settings)
        report.scores["calibration"] = calibration
    if sensitivity is not None:
        report.sensitivity = summarise_sensitivity(report, sensitivity, settings)
    return report


def pruned_structure(model: Model, plan: Plan) -> onnx.ModelProto:
    """The model with the plan's channels removed, without reconstruction.

    Costs and latency depend only on the kept channels, not on the compensated weights, so a
    plan made with reconstruction needs no calibration data to be reported on.
    """
    analysis = analyse(model)
    return rewrite(analysis, analysis.keep_vector(plan_keep(analysis, plan)))


def data_free_scores(model: Model, criterion: str) -> dict[int, np.ndarray]:
    """Scores of every prunable group from the weights alone (``criterion`` in ``CRITERIA``)."""
    if criterion not in CRITERIA:
        raise OnnxPruneError(f"unknown criterion {criterion!r}; data-free: {', '.join(sorted(CRITERIA))}; "
                             f"with calibration data: {', '.join(DATA_CRITERIA)}")
    return score_groups(analyse(model), criterion)


def calibrated_scores(model: Model, dataset, criterion: str, settings: ReportSettings) -> tuple[dict, dict]:
    """Scores from one onnxruntime pass over the data (``criterion`` in ``DATA_CRITERIA``), where
    the criteria observe each group (``groups[].output``), and what the pass used."""
    if dataset is None:
        raise OnnxPruneError(f"criterion {criterion} scores feature maps: give calibration data")
    if criterion == "recon":
        raise OnnxPruneError("criterion recon is a removal order, not a score distribution: use hrank, apoz or mean_activation")
    if settings.calibration_images and (dataset.num_samples is None or dataset.num_samples > settings.calibration_images):
        dataset = dataset.take(settings.calibration_images)
    analysis = analyse(model)
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

    from .cost import _is_float

    known = set(original.tensors)
    seen: set[str] = set()
    added = 0
    for node in pruned.graph.nodes:
        for t in node.inputs:
            if isinstance(t, gs.Constant) and t.name not in seen and t.name not in known and _is_float(t) and len(t.shape) > 0:
                seen.add(t.name)
                added += int(np.prod(t.shape))
    return added


def measure_latency(original: onnx.ModelProto, pruned: onnx.ModelProto, shapes, settings: ReportSettings) -> dict:
    """Median onnxruntime CPU latency of both models, in milliseconds.

    Runs are interleaved (original, pruned, original, ...) so that frequency scaling or a noisy
    neighbour slows both models alike instead of biasing the speed-up.
    """
    ort = require_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    feeds = random_inputs(original, shapes, seed=0)
    sessions = [ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
                for m in (original, pruned)]
    for _ in range(settings.warmup_runs):
        for s in sessions:
            s.run(None, feeds)
    times: list[list[float]] = [[], []]
    for _ in range(settings.latency_runs):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, feeds)
            t.append((time.perf_counter() - start) * 1000)
    before, after = (_timing(t) for t in times)
    return {
        "provider": "CPUExecutionProvider",
        "threads": settings.threads,
        "runs": settings.latency_runs,
        "warmup_runs": settings.warmup_runs,
        "batch": int(next(iter(shapes.values()))[0]) if shapes else 1,
        "before": before,
        "after": after,
        "speedup": round(before["median_ms"] / after["median_ms"], 4) if after["median_ms"] > 0 else None,
    }


def _timing(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 4), "p10_ms": round(float(np.percentile(a, 10)), 4),
            "p90_ms": round(float(np.percentile(a, 90)), 4)}


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
    from .sensitivity import ratio_at

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


# --- rendering: JSON and text -----------------------------------------------------------------
def render_json(report: Report) -> str:
    """The report as JSON (schema ``onnxprune.report/1``), keys sorted, one trailing newline."""
    return json.dumps(report.to_dict(), indent=1, sort_keys=True, default=_jsonable) + "\n"


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def render_text(report: Report) -> str:
    """A terminal report: summary, per-layer table, groups, blockers, then the optional sections."""
    sections = [_text_summary(report), _text_layers(report), _text_groups(report), _text_blockers(report)]
    if report.plan:
        sections.append(_text_plan(report))
    if report.latency:
        sections.append(_text_latency(report.latency))
    if report.scores:
        sections.append(_text_scores(report.scores))
    if report.sensitivity:
        sections.append(_text_sensitivity(report.sensitivity))
    return "\n\n".join(s for s in sections if s) + "\n"


def layer_status(layer: dict) -> str:
    """``prunable``, ``blocked: <reasons>``, or ``follows its input`` for a layer whose output
    channels are not a group of their own (e.g. a BatchNormalization: its group is its input's)."""
    if layer["prunable"]:
        return "prunable"
    if layer["blocked"]:
        return "blocked: " + "; ".join(layer["blocked"])
    return "follows its input"


def _text_summary(r: Report) -> str:
    m = r.model
    return "\n".join([
        f"model    {m['path'] or '(in memory)'}  opset {m['opset']}  IR {m['ir_version']}  {m['nodes']} nodes"
        f"  producer {m['producer'] or '?'}",
        "inputs   " + ", ".join(f"{k} {v}" for k, v in m["inputs"].items()) + f"   outputs {', '.join(m['outputs'])}",
        f"MACs     {r.macs:,}   params {r.params:,}   prunable MACs {percent(r.prunable_macs_share)}",
    ])


def _text_layers(r: Report) -> str:
    after = r.plan is not None
    name_w = min(max([len(l["name"]) for l in r.layers] + [5]), 40)
    op_w = max([len(l["op"]) for l in r.layers] + [2])
    head = f"{'layer':<{name_w}} {'op':<{op_w}} {'output':<16} {'MACs':>14} {'params':>11}"
    head += f" {'MACs after':>14} {'params after':>12}" if after else ""
    lines = [head + "  groups  status"]
    for l in r.layers:
        shape = "x".join(str(d) for d in (l["output_shape"] or []))
        row = f"{_short(l['name'], name_w):<{name_w}} {l['op']:<{op_w}} {shape:<16} {l['macs']:>14,} {l['params']:>11,}"
        if after:
            a = l["after"] or {"macs": 0, "params": 0}
            row += f" {a['macs']:>14,} {a['params']:>12,}"
        groups = ",".join(map(str, l["out_groups"])) or "-"
        lines.append(f"{row}  {groups:<6}  {layer_status(l)}")
    return "\n".join(lines)


def _text_groups(r: Report) -> str:
    kept = r.plan is not None
    lines = [f"{'group':>5} {'channels':>8}" + (f" {'kept':>5}" if kept else "") + "  status    name"]
    for g in r.groups:
        status = "prunable" if g["prunable"] else "blocked "
        extra = f" {g['kept']:>5}" if kept else ""
        lines.append(f"{g['id']:>5} {g['size']:>8}{extra}  {status}  {_short(g['name'], 60)}")
        lines += [f"{'':>16}  - {reason}" for reason in g["blocked"]]
    return "\n".join(lines)


def _text_blockers(r: Report) -> str:
    if not r.blockers:
        return "blockers: none"
    lines = ["blockers by share of MACs they pin (MACs no prunable group can remove):"]
    lines += [f"  {b['macs_share']:6.1%}  {b['reason']}" for b in r.blockers]
    if not any(b["macs_share"] > 0 for b in r.blockers):
        lines.append("  (none pins MACs: every weighted layer can shrink on its output or input side)")
    return "\n".join(lines)


def _text_plan(r: Report) -> str:
    p = r.plan
    match = {True: "measured = predicted", False: "MISMATCH with the plan's prediction", None: "no prediction in the plan"}
    return "\n".join([
        "plan",
        f"  MACs     {r.macs:>15,} -> {p['macs_after']:>15,}  (-{p['flops_reduction']:.1%})",
        f"  params   {r.params:>15,} -> {p['params_after']:>15,}  (-{p['params_reduction']:.1%})",
        f"  groups   {p['groups_pruned']} pruned, {p['channels_removed']} channels removed; {match[p['prediction_matches']]}",
    ] + ([f"  params   {p['params_added']:,} of them added by reconstruction (biases of compensated layers)"]
         if p.get("params_added") else []))


def _text_latency(lat: dict) -> str:
    b, a = lat["before"], lat["after"]
    lines = [
        f"latency  onnxruntime {lat['provider']}, batch {lat['batch']}, {lat['threads']} thread(s), median of {lat['runs']} runs",
        f"  before     {b['median_ms']:9.3f} ms  (p10 {b['p10_ms']:.3f}, p90 {b['p90_ms']:.3f})",
        f"  after      {a['median_ms']:9.3f} ms  (p10 {a['p10_ms']:.3f}, p90 {a['p90_ms']:.3f})",
    ]
    if lat.get("predicted_speedup"):
        lines.append(f"  speed-up   measured {lat['speedup']:.2f}x, predicted from MACs {lat['predicted_speedup']:.2f}x"
                     f" ({lat['predicted_after_ms']:.3f} ms)")
    return "\n".join(lines)


def _text_scores(s: dict) -> str:
    lines = [
        f"scores ({s['criterion'] or 'given'}): low = below {s['low_score']:.0%} of the group's median; "
        f"{s['low_share']:.1%} of channels are low; uniform safe ratio {s['uniform_safe_ratio']:.2f}",
        f"{'group':>5} {'channels':>8} {'min':>10} {'median':>10} {'max':>10} {'low':>6}  name",
    ]
    for g in s["groups"]:
        lines.append(f"{g['id']:>5} {g['size']:>8} {g['min']:>10.4g} {g['median']:>10.4g} {g['max']:>10.4g}"
                     f" {g['low_share']:>6.1%}  {_short(g['name'], 50)}")
    return "\n".join(lines)


def _text_sensitivity(s: dict) -> str:
    lines = [f"sensitivity ({s['metric']}, {s['criterion']} order); safe ratio = damage <= {s['tolerance']:g}",
             f"{'group':>5} {'safe':>6}  " + " ".join(f"{r:>7.0%}" for r in s["ratios"]) + "  name"]
    from .labels import damage_text, distinct_labels

    labels = distinct_labels({g["id"]: g["name"] for g in s["groups"]}, 40)  # issue 15.15
    for g in s["groups"]:
        lines.append(f"{g['id']:>5} {g['safe_ratio']:>6.2f}  " + " ".join(f"{damage_text(d, s['metric']):>7}" for d in g["damage"])
                     + f"  {labels[g['id']]}")
    return "\n".join(lines)


def percent(share: float) -> str:
    """A share as a percentage that never rounds a partial share to 100% or 0%."""
    if 0.9995 <= share < 1:
        return ">99.9%"
    if 0 < share < 0.0005:
        return "<0.1%"
    return f"{share:.1%}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


# --- writing ----------------------------------------------------------------------------------------
def format_of(path: str | os.PathLike) -> str:
    """The report format that a file name asks for: .html/.htm, .json or .txt."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise OnnxPruneError(f"cannot tell the report format from '{Path(path).name}': use .html, .json or .txt")
    return fmt


def render(report: Report, fmt: str) -> str:
    if fmt == "html":
        from .report_html import render_html

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


def check_writable(path: str | os.PathLike) -> None:
    """Fail before the (slow) report is built if ``path`` cannot be a file: it is a directory,
    its directory does not exist or is not one, or no file can be created in it (checked by
    creating and removing an empty temporary file there, which also catches read-only mounts
    and a root user on a filesystem that refuses new files)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OnnxPruneError(f"cannot write {path}: it is a directory")
    if parent.exists() and not parent.is_dir():
        raise OnnxPruneError(f"cannot write {path}: {parent} is not a directory")
    if not parent.is_dir():
        raise OnnxPruneError(f"cannot write {path}: directory {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=str(parent))
    except OSError as exc:
        raise OnnxPruneError(f"cannot write {path}: cannot create a file in {parent} ({exc.strerror or exc})") from exc
    try:
        os.close(fd)
    finally:
        os.unlink(probe)


def write_text_atomic(path: Path, text: str) -> None:
    try:
        write_bytes_atomic(path, text.encode("utf-8"))
    except OSError as exc:  # e.g. replacing a file inside a read-only directory
        raise OnnxPruneError(f"cannot write {path}: {exc.strerror or exc}") from exc
