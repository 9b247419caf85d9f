"""The report rendered as JSON (schema ``onnxprune.report/1``) or as a terminal page."""

from __future__ import annotations

import json

import numpy as np

from .labels import damage_text, distinct_labels
from .model import Report, layer_status, percent


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
    labels = distinct_labels({g["id"]: g["name"] for g in s["groups"]}, 40)  # issue 15.15
    for g in s["groups"]:
        lines.append(f"{g['id']:>5} {g['safe_ratio']:>6.2f}  " + " ".join(f"{damage_text(d, s['metric']):>7}" for d in g["damage"])
                     + f"  {labels[g['id']]}")
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
