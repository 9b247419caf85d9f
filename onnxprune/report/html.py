"""The HTML rendering of a :class:`~onnxprune.report.Report`: one self-contained page.

Everything is inline: CSS in a ``<style>`` element, plots as base64 PNGs drawn by matplotlib
(Agg, no display needed), no script and no link to any other file or host, so the page can be
mailed, archived next to the model, or opened on an air-gapped machine. Kept apart from
``build.py`` and ``text.py`` because it is the only part that needs matplotlib (the ``[report]`` extra).

    html = render_html(build_report("model.onnx"))
"""

from __future__ import annotations

import base64
import io
from html import escape

from ..errors import DependencyError
from .model import Report, layer_status, percent

COLOURS = {"prunable": "#2f6fbf", "blocked": "#d9822b", "other": "#9aa4ae"}

CSS = """
:root{--fg:#1f2328;--muted:#59636e;--line:#d0d7de;--alt:#f6f8fa;--ok:#1a7f37;--bad:#a04100;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 56px}
h1{font-size:24px;margin:0 0 2px}
h2{font-size:18px;margin:36px 0 12px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h3{font-size:15px;margin:20px 0 8px}
p{margin:6px 0}
.muted{color:var(--muted)}
nav{margin:12px 0 4px;display:flex;flex-wrap:wrap;gap:6px}
nav a{color:var(--accent);text-decoration:none;border:1px solid var(--line);border-radius:14px;padding:1px 10px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:12px;margin:16px 0}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 14px;background:#fff}
.card .k{color:var(--muted);font-size:11px;text-transform:uppercase;letter-spacing:.05em}
.card .v{font-size:21px;font-weight:600;font-variant-numeric:tabular-nums}
.card .d{font-size:12px;color:var(--muted)}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--alt);position:sticky;top:0;z-index:1;font-weight:600}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tbody tr:nth-child(even) td{background:#fafbfc}
table.kv{width:auto} table.kv th{position:static;background:none;color:var(--muted);font-weight:normal;padding-right:24px}
.scroll{max-height:640px;overflow:auto;border:1px solid var(--line);border-radius:6px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;overflow-wrap:anywhere}
.nw{white-space:nowrap} .layers td:last-child{min-width:150px} .after{color:var(--accent)}
.small{font-size:11px} .note{background:#fff8c5;border:1px solid #eed888;border-radius:6px;padding:6px 10px;font-size:13px}
.blockers td:first-child{width:230px;white-space:nowrap}
.badge{display:inline-block;padding:0 7px;border-radius:10px;font-size:11px;font-weight:600;white-space:nowrap}
.ok{background:#dafbe1;color:var(--ok)} .bad{background:#fff1e5;color:var(--bad)} .na{background:var(--alt);color:var(--muted)}
.reason{color:var(--bad);font-size:12px}
.bar{display:inline-block;vertical-align:middle;background:#eaeef2;border-radius:3px;height:8px;width:140px;margin-right:8px}
.bar>span{display:block;height:8px;border-radius:3px;background:#d9822b}
figure{margin:18px 0}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:12px;margin-top:4px}
details summary{cursor:pointer;color:var(--accent);font-size:12px}
footer{margin-top:40px;color:var(--muted);font-size:12px}
"""


def render_html(report: Report) -> str:
    """The whole page as one string (UTF-8, no external resources)."""
    require_matplotlib()
    sections = [
        ("summary", "Summary", _summary(report)),
        ("plan", "Plan: before and after", _plan(report) if report.plan else None),
        ("plots", "Cost per layer", _plots(report)),
        ("layers", "Layers", _layers(report)),
        ("groups", "Channel groups", _groups(report)),
        ("blockers", "Blockers", _blockers(report)),
        ("scores", "Channel scores", _scores(report) if report.scores else None),
        ("sensitivity", "Sensitivity", _sensitivity(report) if report.sensitivity else None),
    ]
    present = [(anchor, title, body) for anchor, title, body in sections if body is not None]
    nav = "".join(f'<a href="#{a}">{escape(t)}</a>' for a, t, _ in present)
    body = "".join(f'<section id="{a}"><h2>{escape(t)}</h2>{b}</section>' for a, t, b in present)
    data = report.to_dict()
    name = (report.model["path"] or "model").replace("\\", "/").rsplit("/", 1)[-1]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>onnxprune report: {escape(name)}</title><style>{CSS}</style></head><body><main>"
        f"<h1>onnxprune report: {escape(name)}</h1>"
        f'<p class="muted"><code>{escape(report.model["path"] or "(in memory)")}</code> &middot; '
        f'{escape(report.model["fingerprint"][:23])}&hellip;</p>'
        f"<nav>{nav}</nav>{body}"
        f'<footer>onnxprune {escape(data["onnxprune_version"])} &middot; schema {escape(data["schema"])} &middot; '
        "MACs are multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul at batch 1.</footer>"
        "</main></body></html>\n"
    )


# --- sections ---------------------------------------------------------------------------------------
def _summary(r: Report) -> str:
    m = r.model
    prunable = sum(1 for g in r.groups if g["prunable"])
    cards = [
        ("MACs", _si(r.macs), f"{r.macs:,}"),
        ("Parameters", _si(r.params), f"{r.params:,}"),
        ("Prunable MACs", escape(percent(r.prunable_macs_share)), "in layers whose outputs can be pruned"),
        ("Channel groups", f"{prunable} / {len(r.groups)}", "prunable / total"),
    ]
    if r.plan:
        cards += [
            ("MACs after", _si(r.plan["macs_after"]), f"-{r.plan['flops_reduction']:.1%}"),
            ("Parameters after", _si(r.plan["params_after"]), f"-{r.plan['params_reduction']:.1%}"),
        ]
    if r.latency and r.latency.get("speedup"):
        cards.append(("Speed-up (measured)", f"{r.latency['speedup']:.2f}&times;",
                      f"predicted from MACs {r.latency['predicted_speedup']:.2f}&times;"))
    card_html = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div><div class="d">{d}</div></div>'
                        for k, v, d in cards)
    rows = [
        ("opset", m["opset"]), ("IR version", m["ir_version"]), ("producer", m["producer"] or "?"), ("nodes", m["nodes"]),
        ("inputs", ", ".join(f"{k} {v}" for k, v in m["inputs"].items())), ("outputs", ", ".join(m["outputs"])),
    ]
    return f'<div class="cards">{card_html}</div>' + _kv(rows)


def _plan(r: Report) -> str:
    p = r.plan
    match = {True: '<span class="badge ok">measured = predicted</span>',
             False: '<span class="badge bad">measured differs from the prediction</span>',
             None: '<span class="badge na">no prediction in the plan</span>'}[p["prediction_matches"]]
    pred = p["predicted"]
    rows = [
        ("MACs", r.macs, p["macs_after"], pred.get("macs_after"), p["flops_reduction"]),
        ("parameters", r.params, p["params_after"], pred.get("params_after"), p["params_reduction"]),
    ]
    table = _table(
        ["", "before", "after (measured)", "after (plan)", "reduction"],
        [[escape(k), _n(b), _n(a), _n(pr) if pr is not None else "&ndash;", f"{red:.1%}"] for k, b, a, pr, red in rows],
        numeric={1, 2, 3, 4},
    )
    settings = p["settings"]
    desc = ", ".join(f"{k} {escape(str(v))}" for k, v in settings.items()
                     if k in ("criterion", "allocation", "reconstruct", "seed"))
    added = (f'<p class="muted">The measured parameters include {p["params_added"]:,} that the plan does not predict: '
             "biases the reconstruction added to compensated layers that had none.</p>") if p.get("params_added") else ""
    html = (f"<p>{p['groups_pruned']} groups pruned, {p['channels_removed']:,} channels removed. {match}</p>"
            + (f'<p class="muted">plan settings: {desc}</p>' if desc else "") + table + added)
    return html + (_latency(r) if r.latency else '<p class="muted">Latency not measured.</p>')


def _latency(r: Report) -> str:
    lat = r.latency
    rows = [[name, f"{t['median_ms']:.3f}", f"{t['p10_ms']:.3f}", f"{t['p90_ms']:.3f}"]
            for name, t in (("original", lat["before"]), ("pruned", lat["after"]))]
    if lat.get("predicted_after_ms") is not None:
        rows.append(["pruned, predicted from MACs", f"{lat['predicted_after_ms']:.3f}", "&ndash;", "&ndash;"])
    speed = (f"<p>Speed-up: <b>{lat['speedup']:.2f}&times;</b> measured, {lat['predicted_speedup']:.2f}&times; "
             "predicted if latency were proportional to MACs.</p>") if lat.get("predicted_speedup") else ""
    if lat.get("speedup") is not None and lat["speedup"] < 1.05:
        speed += ('<p class="note">The pruned model is not measurably faster. On a model this small the time goes to '
                  "per-operator overhead rather than MACs, and CPU convolution kernels are fastest with channel counts that "
                  "are multiples of 8 or 16: try <code>--round-to 8</code>, a larger batch, or the target device.</p>")
    return (f"<h3>Latency</h3><p class=\"muted\">onnxruntime {escape(lat['provider'])}, batch {lat['batch']}, "
            f"{lat['threads']} thread(s), median of {lat['runs']} interleaved runs after {lat['warmup_runs']} warm-up runs.</p>"
            + _table(["model", "median ms", "p10 ms", "p90 ms"], rows, numeric={1, 2, 3}) + speed)


def _plots(r: Report) -> str:
    if not r.layers:
        return '<p class="muted">No layer with MACs or parameters.</p>'
    after = " Light bars: before pruning; dark bars: after." if r.plan else ""
    return (_figure(per_layer_figure(r, "macs", "MACs"),
                    f"MACs per layer with MACs, coloured by whether its output channels can be pruned.{after}")
            + _figure(per_layer_figure(r, "params", "parameters"), f"Parameters per layer with parameters.{after}"))


def _layers(r: Report) -> str:
    after = r.plan is not None
    head = ["#", "layer", "op", "output" + (" &rarr; after" if after else ""), "MACs", "params"]
    head += ["MACs after", "params after"] if after else []
    rows = []
    for l in r.layers:
        shape = _shape(l["output_shape"])
        a = l["after"] or {}
        if after and a.get("output_shape") is not None and a["output_shape"] != l["output_shape"]:
            shape += f'<br><span class="after">&rarr; {_shape(a["output_shape"])}</span>'
        row = [str(l["index"]), _name(l["name"]), escape(l["op"]), f'<span class="nw">{shape}</span>', _n(l["macs"]), _n(l["params"])]
        if after:
            row += [_n(a.get("macs")), _n(a.get("params"))]
        row += [", ".join(map(str, l["out_groups"])) or "&ndash;", _status(l)]
        rows.append(row)
    head += ["group", "status"]
    numeric = {0, 4, 5} | ({6, 7} if after else set())
    return f'<div class="scroll layers">{_table(head, rows, numeric)}</div>'


def _groups(r: Report) -> str:
    kept = r.plan is not None
    head = ["id", "name", "channels"] + (["kept"] if kept else []) + ["status", "producers", "consumers", "members"]
    rows = []
    for g in r.groups:
        status = '<span class="badge ok">prunable</span>' if g["prunable"] else (
            '<span class="badge bad">blocked</span>' + "".join(f'<div class="reason">{escape(x)}</div>' for x in g["blocked"])
            if g["blocked"] else '<span class="badge na">single channel</span>')
        row = [str(g["id"]), _name(g["name"]), str(g["size"])]
        row += [str(g["kept"])] if kept else []
        row += [status, _code_list(g["producers"]), _code_list(g["consumers"]),
                f"<details><summary>{len(g['dims'])} tensors</summary>{_code_list(g['dims'], limit=None)}</details>"]
        rows.append(row)
    return f'<div class="scroll">{_table(head, rows, numeric={0, 2, 3} if kept else {0, 2})}</div>'


def _blockers(r: Report) -> str:
    if not r.blockers:
        return "<p>Nothing is blocked.</p>"
    rows = [[f'<span class="bar"><span style="width:{min(b["macs_share"], 1) * 100:.1f}%"></span></span>{b["macs_share"]:.1%}',
             escape(b["reason"])] for b in r.blockers]
    intro = ("Each reason that blocks a channel group, with the share of the model's MACs it pins: MACs of layers "
             "whose output and input channels no prunable group can remove.")
    if not any(b["macs_share"] > 0 for b in r.blockers):
        intro += (" <b>None pins any MACs</b>: every weighted layer can shrink on its output or its input side; "
                  "the blocked groups only fix the model's interface (its inputs and outputs).")
    return f'<p class="muted">{intro}</p><div class="blockers">{_table(["MACs pinned", "reason"], rows)}</div>'


def _scores(r: Report) -> str:
    s = r.scores
    calibration = s.get("calibration")
    outputs = {g["id"]: g.get("output") or [] for g in r.groups}
    g_kept = {g["id"]: g["kept"] for g in r.groups if "kept" in g} if r.plan else {}
    rows = []
    for g in s["groups"]:
        name = _name(g["name"])
        if calibration and outputs.get(g["id"]):
            seen = outputs[g["id"]]
            name += (f'<div class="muted small">on {_name(seen[0])}'
                     + (f" +{len(seen) - 1} more" if len(seen) > 1 else "") + "</div>")
        # Issue 15.15: no "0.00" beside a pruned group: a suggestion of nothing is a dash, and the
        # plan's own share stands next to it.
        planned = (f"{1 - g_kept[g['id']] / g['size']:.0%}" if g["id"] in g_kept else "&ndash;")
        rows.append([str(g["id"]), name, str(g["size"]), f"{g['min']:.4g}", f"{g['median']:.4g}",
                     f"{g['max']:.4g}", f"{g['low_share']:.1%}",
                     f"{g['recommended_ratio']:.2f}" if g["recommended_ratio"] > 0 else "&ndash;"]
                    + ([planned] if g_kept else []))
    source = (f" from {calibration['images']:,} calibration images ({escape(calibration['provider'])}), measured on the "
              "tensor where each group's channels leave their activation") if calibration else ""
    if g_kept:
        source += (". The last column is what the plan removes, chosen by its allocation to meet the target; the "
                   "low-score ratio is only what the scores alone would suggest")
    if s["low_share"] > 0:
        advice = (f"{s['low_share']:.1%} of the prunable channels are low. Removing only low channels suggests a per-group "
                  + (f"ratio (the low-score column) and a uniform ratio of at most <b>{s['uniform_safe_ratio']:.2f}</b>. "
                   if s["uniform_safe_ratio"] > 0 else "ratio (the low-score column); some groups have no low channel, "
                   "so no uniform ratio is suggested. ") + "Measure it with the sensitivity analysis before relying on it.")
    else:
        advice = ("<b>No channel is low</b>: the scores do not single out channels that are safe to remove, so they recommend "
                  "no ratio; measure the damage of each ratio with the sensitivity analysis (<code>onnxprune sensitivity</code>).")
    intro = (f"<p>Criterion <b>{escape(str(s['criterion'] or 'given'))}</b>{source}. A channel is <i>low</i> when it scores "
             f"below {s['low_score']:.0%} of its group's median. {advice}</p>")
    return (intro + _figure(_scores_figure(s), "Channel scores divided by the group's median; the dashed line is the low-score threshold.")
            + f'<div class="scroll">{_table(["id", "group", "channels", "min", "median", "max", "low", "low-score ratio"] + (["plan removes"] if g_kept else []), rows, numeric={0, 2, 3, 4, 5, 6, 7, 8})}</div>')


def _sensitivity(r: Report) -> str:
    s = r.sensitivity
    head = ["id", "group", "safe ratio"] + [f"{x:.0%}" for x in s["ratios"]]
    from .labels import damage_text

    rows = [[str(g["id"]), f"<code>{escape(g['name'])}</code>", f"{g['safe_ratio']:.2f}"]
            + [damage_text(d, s["metric"]) for d in g["damage"]] for g in s["groups"]]
    intro = (f"<p>Damage ({escape(str(s['metric']))}) when a group alone loses a share of its channels "
             f"({escape(str(s['criterion']))} order). Safe ratio: the largest share whose damage stays within {s['tolerance']:g}.</p>")
    return (intro + _figure(_sensitivity_figure(s), "Damage per group against the share of its channels removed.")
            + f'<div class="scroll">{_table(head, rows, numeric=set(range(2, len(head))))}</div>')


# --- plots -----------------------------------------------------------------------------------------
def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError("matplotlib is not installed: pip install 'onnxprune[report]'") from exc


def _axes(width: float, height: float):
    """A figure on its own Agg canvas: no pyplot, so no global figure registry and no display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def per_layer_figure(r: Report, key: str, label: str):
    """The per-layer bar chart of ``key`` (MACs or params), before and after the plan; a long model
    names every k-th layer on the axis (at most 48 names)."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import EngFormatter

    layers = [l for l in r.layers if l[key]] or r.layers  # a BatchNormalization has no MACs: no empty slot for it
    n = len(layers)
    fig, ax = _axes(min(max(11.4, 2 + 0.16 * n), 16.0), 3.8)
    x = list(range(n))
    kind = ["prunable" if l["prunable"] else "blocked" if l["blocked"] else "other" for l in layers]
    colours = [COLOURS[k] for k in kind]
    before = [l[key] for l in layers]
    ax.bar(x, before, color=colours, alpha=0.35 if r.plan else 1.0, width=0.8)
    handles = [Patch(color=COLOURS[k], label=t) for k, t in
               (("prunable", "prunable"), ("blocked", "blocked"), ("other", "follows its input")) if k in kind]
    if r.plan:
        ax.bar(x, [(l["after"] or {}).get(key, 0) for l in layers], color=colours, width=0.5)
        handles.append(Patch(facecolor="#dddddd", edgecolor="#999999", label="light: before, dark: after pruning"))
    # Above the axes, so that it never hides a bar.
    ax.legend(handles=handles, fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=len(handles), frameon=False)
    ax.yaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel(label)
    ax.set_xlim(-0.6, n - 0.4)
    step = -(-n // 48)  # issue 15.15: a long model names every step-th layer instead of numbering them
    ax.set_xticks(x[::step], [axis_label(l["name"], l["op"]) for l in layers[::step]], rotation=90, fontsize=7)
    if step > 1:
        ax.set_xlabel(f"layer (every {step}{'nd' if step == 2 else 'rd' if step == 3 else 'th'} named)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _scores_figure(s: dict):
    groups = s["groups"]
    fig, ax = _axes(min(max(11.4, 2 + 0.3 * len(groups)), 16.0), 3.6)
    ax.boxplot([g["normalised"] for g in groups], widths=0.6, flierprops={"markersize": 3})
    ax.axhline(s["low_score"], color=COLOURS["blocked"], linestyle="--", linewidth=1)
    ax.set_ylim(bottom=0)
    ax.set_xticks(range(1, len(groups) + 1), [str(g["id"]) for g in groups], fontsize=7)
    ax.set_xlabel("channel group")
    ax.set_ylabel("score / group median")
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _sensitivity_figure(s: dict):
    from .labels import distinct_labels, line_styles

    fig, ax = _axes(11.4, 4.2)
    labels = distinct_labels({g["id"]: g["name"] for g in s["groups"]}, 26)  # issue 15.15
    for g, (colour, style) in zip(s["groups"], line_styles(len(s["groups"]))):
        ax.plot(s["ratios"], g["damage"], marker=".", linewidth=1, color=colour, linestyle=style,
                label=f"{g['id']}: {labels[g['id']]}")
    ax.axhline(s["tolerance"], color=COLOURS["blocked"], linestyle="--", linewidth=1)
    ax.set_xlabel("share of the group's channels removed")
    ax.set_ylabel(str(s["metric"]))
    if len(s["groups"]) <= 20:
        ax.legend(fontsize=7, ncol=2, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(alpha=0.3)
    return fig


def _figure(fig, caption: str) -> str:
    """Embed a matplotlib figure as a base64 PNG (no timestamp or version in the metadata)."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}"><figcaption>{escape(caption)}</figcaption></figure>'


# --- small pieces ------------------------------------------------------------------------------------
def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """Cells are HTML already (callers escape text); ``numeric`` columns are right-aligned."""
    cls = lambda i: ' class="n"' if i in numeric else ""
    th = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _kv(rows) -> str:
    return '<table class="kv"><tbody>' + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows) + "</tbody></table>"


def _status(layer: dict) -> str:
    status = layer_status(layer)
    if status == "prunable":
        return '<span class="badge ok">prunable</span>'
    if status == "follows its input":
        return '<span class="badge na">follows its input</span>'
    return '<span class="badge bad">blocked</span>' + "".join(f'<div class="reason">{escape(x)}</div>' for x in layer["blocked"])


def _code_list(items: list[str], limit: int | None = 4) -> str:
    if not items:
        return "&ndash;"
    shown = items if limit is None else items[:limit]
    more = f' <span class="muted">+{len(items) - len(shown)} more</span>' if len(items) > len(shown) else ""
    return "<br>".join(f'<code class="nw">{escape(x)}</code>' for x in shown) + more


def _name(text: str) -> str:
    """A tensor or node name as code that may wrap after '/', '.', '+' or '_' (never mid-word)."""
    out = escape(text)
    for sep in ("/", "+"):
        out = out.replace(sep, sep + "<wbr>")
    return f"<code>{out}</code>"


def axis_label(name: str, op: str, width: int = 22) -> str:
    """A short axis label for a layer: '/stages/stages.1/stages.1.0/conv1/Conv' -> 'stages.1.0/conv1'.

    Drops a trailing '/<op>' and every path segment that the next one repeats as its prefix
    (PyTorch's exporter writes module paths that way), then keeps the end."""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] == op:
        parts = parts[:-1]
    parts = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p))]
    return _short("/".join(parts) or name or op, width)


def _shape(shape) -> str:
    return "&times;".join(escape(str(d)) for d in shape) if shape else "&ndash;"


def _n(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "&ndash;"


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:,}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "\u2026" + text[-(width - 1):]
