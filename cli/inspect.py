"""``onnxprune inspect``: the pre-deployment report of a model."""

from __future__ import annotations

import json

import click

from .common import input_shape_option, parse_input_shapes


@click.command()
@click.argument("model", type=click.Path())
@input_shape_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", type=click.Path(), help="Write the report to a file instead of stdout.")
def inspect(model, input_shapes, fmt, as_json, output):
    """Per-layer FLOPs/params, the channel groups, and every blocked group with its reason."""
    from onnxprune import inspect_model
    from onnxprune.graph import write_bytes_atomic

    report = inspect_model(model, parse_input_shapes(input_shapes))
    text = json.dumps(report, indent=1) if (as_json or fmt == "json") else format_inspect(report)
    if output:
        write_bytes_atomic(output, (text + "\n").encode())
    else:
        click.echo(text)


def format_inspect(r: dict) -> str:
    m = r["model"]
    lines = [
        f"model    {m['path']}  opset {m['opset']}  IR {m['ir_version']}  {m['nodes']} nodes  producer {m['producer'] or '?'}",
        "inputs   " + ", ".join(f"{k} {v}" for k, v in m["inputs"].items()) + f"   outputs {', '.join(m['outputs'])}",
        f"MACs     {r['macs']:,}   params {r['params']:,}   prunable MACs {r['prunable_macs_share']:.1%}",
        "",
        f"{'layer':<44} {'op':<14} {'output':<20} {'MACs':>14} {'params':>10}  groups (out/in)",
    ]
    for l in r["layers"]:
        shape = "x".join(str(d) for d in (l["output_shape"] or []))
        status = "" if l["prunable"] else "  [blocked]"
        lines.append(
            f"{_short(l['name'], 44):<44} {l['op']:<14} {shape:<20} {l['macs']:>14,} {l['params']:>10,}  "
            f"{','.join(map(str, l['out_groups'])) or '-'}/{','.join(map(str, l['in_groups'])) or '-'}{status}"
        )
    lines += ["", f"{'group':>5} {'channels':>8}  status    name"]
    for g in r["groups"]:
        status = "prunable" if g["prunable"] else "blocked "
        lines.append(f"{g['id']:>5} {g['size']:>8}  {status}  {_short(g['name'], 60)}")
        for reason in g["blocked"]:
            lines.append(f"{'':>16}  - {reason}")
    if r["blockers"]:
        lines += ["", "blockers by share of MACs they pin:"]
        lines += [f"  {b['macs_share']:6.1%}  {b['reason']}" for b in r["blockers"]]
    return "\n".join(lines)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
