"""``onnxprune inspect``: the pre-deployment report of a model (text, JSON or HTML)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import input_shape_option, output_path, parse_input_shapes, read_plan

DATA_FREE_CRITERIA = ["l1", "l2", "fpgm", "bn_scale", "random"]

EXAMPLES_INSPECT = """
\b
Examples:
  onnxprune inspect model.onnx
  onnxprune inspect model.onnx --format html                 # writes model.report.html
  onnxprune inspect model.onnx --plan model.pruned.plan.json -o report.html --criterion l1
  onnxprune inspect model.onnx --json | jq .blockers
"""


@click.command(epilog=EXAMPLES_INSPECT)
@click.argument("model", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]),
              help="Report format [default: from -o's extension (.txt, .json, .html), else text].")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", type=click.Path(),
              help="Write the report to FILE instead of stdout (html: default MODEL.report.html).")
@click.option("--plan", "plan_path", type=click.Path(),
              help="Add before/after per layer and measured latency for this plan (from compress).")
@click.option("--criterion", type=click.Choice(DATA_FREE_CRITERIA),
              help="Add each group's distribution of these channel scores, with recommended ratios.")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(),
              help="Add sensitivity curves (onnxprune.sensitivity/1 JSON) with each group's safe ratio.")
@click.option("--runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Latency with --plan: onnxruntime runs per model (median is reported; 0 skips).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Latency with --plan: onnxruntime intra-op threads.")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def inspect(model, fmt, as_json, output, plan_path, criterion, sensitivity_path, runs, threads, input_shapes, force):
    """Per-layer MACs/params, the channel groups, and every blocked group with its reason."""
    from onnxprune.report import ReportSettings, build_report, check_writable, render, write_text_atomic

    fmt = resolve_format(fmt, as_json, output)
    out = None
    if output or fmt == "html":  # checked before the (slow) report is built
        out = output_path(model, output, ".report.html", force)
        check_writable(out)
    plan = read_plan(plan_path) if plan_path else None
    sensitivity = read_sensitivity(sensitivity_path) if sensitivity_path else None
    settings = ReportSettings(latency_runs=runs, threads=threads)
    report = build_report(model, plan=plan, input_shapes=parse_input_shapes(input_shapes), criterion=criterion,
                          sensitivity=sensitivity, settings=settings)
    text = render(report, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(out, text)
    click.echo(f"wrote {out}")


def resolve_format(fmt: str | None, as_json: bool, output: str | None) -> str:
    """--json or --format win; else the output's extension; else text."""
    from onnxprune.report import FORMATS

    if as_json and fmt not in (None, "json"):
        raise click.UsageError(f"--json conflicts with --format {fmt}")
    if as_json or fmt:
        return "json" if as_json else fmt
    if output:
        suffix = Path(output).suffix.lower()
        if suffix not in FORMATS:
            raise click.UsageError(f"cannot tell the report format from '{Path(output).name}': use .txt, .json or .html, or pass --format")
        return FORMATS[suffix]
    return "text"


def read_sensitivity(path: str):
    from onnxprune.errors import OnnxPruneError
    from onnxprune.sensitivity import Sensitivity

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"{path}: cannot read sensitivity analysis ({getattr(exc, 'strerror', None) or exc})") from exc
    return Sensitivity.from_json(text)
