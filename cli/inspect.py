"""``onnxprune inspect``: the pre-deployment report of a model (text, JSON or HTML)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxprune.scoring.registry import inspect_criteria, needs_data

from .common import image_options, input_shape_option, output_path, parse_input_shapes, read_plan, same_path

SUMMARY_FORMAT = "onnxprune.coverage/1"

INSPECT_CRITERIA = inspect_criteria()

EXAMPLES_INSPECT = """
\b
Examples:
  onnxprune inspect model.onnx
  onnxprune inspect model.onnx --format html                 # writes model.report.html
  onnxprune inspect model.onnx --data calib.npz --format html -o report.html   # + HRank score distributions
  onnxprune inspect model.onnx --plan model.pruned.plan.json -o report.html --criterion l1
  onnxprune inspect model.onnx --json | jq .blockers
  onnxprune inspect a.onnx b.onnx --summary                  # prunable share of MACs, blockers by op type
  onnxprune inspect *.onnx --summary --json --no-compress
"""


@click.command(epilog=EXAMPLES_INSPECT)
@click.argument("models", metavar="MODEL [MODEL...]", nargs=-1, required=True, type=click.Path())
@click.option("--summary", is_flag=True,
              help="One row per model: MACs and conv MACs, the share of each that is prunable, the blockers "
                   "by op type, and the result of compressing at --flops (text or json; several models allowed).")
@click.option("--flops", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.3, show_default=True,
              help="With --summary: the FLOPs reduction tried on each model, invariants checked on the result.")
@click.option("--no-compress", is_flag=True, help="With --summary: analysis only, do not try --flops.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]),
              help="Report format [default: from -o's extension (.txt, .json, .html), else text].")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("-o", "--output", type=click.Path(),
              help="Write the report to FILE instead of stdout (html: default MODEL.report.html).")
@click.option("--plan", "plan_path", type=click.Path(),
              help="Add before/after per layer and measured latency for this plan (from compress).")
@click.option("--data", type=click.Path(),
              help="Calibration data (.npz/.npy/images): score distributions per group (HRank by default) and "
                   "recommended safe ratios.")
@image_options
@click.option("--criterion", type=click.Choice(INSPECT_CRITERIA),
              help="Add each group's distribution of these channel scores, with recommended ratios.")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(),
              help="Add sensitivity curves (onnxprune.sensitivity/1 JSON) with each group's safe ratio.")
@click.option("--runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Latency with --plan: onnxruntime runs per model (median is reported; 0 skips).")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Latency with --plan: onnxruntime intra-op threads.")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def inspect(models, summary, flops, no_compress, fmt, as_json, output, plan_path, data, criterion, sensitivity_path, runs,
            threads, input_shapes, force, with_images):
    """Per-layer MACs/params, the channel groups, and every blocked group with its reason.

    With --summary: the coverage of one or several models (what share of their MACs pruning
    can reach, and what blocks the rest)."""
    from onnxprune.report import build_report, render
    from onnxprune.settings import ReportSettings
    from onnxprune.model.files import check_writable, write_text_atomic

    to_stdout = output == "-"  # issue 15.5: "-o -" is standard output, not a file named "-"
    output = None if to_stdout else output
    fmt = resolve_format(fmt, as_json, output)
    ctx = click.get_current_context()
    if summary:
        return inspect_summary(models, None if no_compress else flops, fmt, output, parse_input_shapes(input_shapes), force,
                               [o for o in ("plan_path", "data", "criterion", "sensitivity_path", "runs", "threads")
                                if ctx.get_parameter_source(o) == click.core.ParameterSource.COMMANDLINE])
    for name in ("flops", "no_compress"):
        if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError(f"--{name.replace('_', '-')} needs --summary")
    if len(models) > 1:
        raise click.UsageError(f"got {len(models)} models: several models need --summary")
    model = models[0]
    out = None
    if output or (fmt == "html" and not to_stdout):  # checked before the (slow) report is built
        out = output_path(model, output, ".report.html", force)
        check_writable(out)
    plan = read_plan(plan_path) if plan_path else None
    sensitivity = read_sensitivity(sensitivity_path) if sensitivity_path else None
    settings = ReportSettings(latency_runs=runs, threads=threads)
    if criterion is not None and needs_data(criterion) and data is None:
        raise click.UsageError(f"--criterion {criterion} scores feature maps: give --data")
    report = build_report(model, plan=plan, input_shapes=parse_input_shapes(input_shapes), criterion=criterion,
                          sensitivity=sensitivity, settings=settings, data=with_images(data))
    text = render(report, fmt)
    if out is None:
        click.echo(text, nl=False)
        return
    write_text_atomic(out, text)
    click.echo(f"wrote {out}")


def inspect_summary(models, flops, fmt, output, shapes, force, conflicting) -> int:
    """``inspect --summary``: coverage_summary per model, as a table or JSON. A model that cannot
    be analysed is a one-line error; among several, its row says why, the others are printed,
    and the exit status is 1 with one line on stderr."""
    from onnxprune.analysis.coverage import coverage_summary, format_coverage
    from onnxprune.errors import OnnxPruneError
    from onnxprune.model.files import check_writable, write_text_atomic

    if conflicting:
        names = ", ".join("--" + o.replace("_path", "").replace("_", "-") for o in conflicting)
        raise click.UsageError(f"--summary cannot be combined with {names}")
    if fmt == "html":
        raise click.UsageError("--summary writes text or json, not html")
    out = None
    if output:
        out = output_path(models[0], output, ".summary.txt", force)
        for m in models:
            if Path(m).exists() and out.exists() and same_path(Path(m), out):
                raise OnnxPruneError(f"output {out} is the input model {m}; choose another path with -o")
        check_writable(out)
    rows = [coverage_summary(m, input_shapes=shapes, flops=flops) for m in models]
    if len(rows) == 1 and "error" in rows[0]:
        raise OnnxPruneError(rows[0]["error"])  # names the file
    if fmt == "json":
        text = json.dumps({"format": SUMMARY_FORMAT, "flops_target": flops, "models": rows}, indent=1, default=float) + "\n"
    else:
        text = format_coverage(rows, all_macs=True)
    if out is None:
        click.echo(text, nl=False)
    else:
        write_text_atomic(out, text)
        click.echo(f"wrote {out}")
    failed = [r["error"] for r in rows if "error" in r]
    if failed:
        click.echo(f"error: {len(failed)} of {len(rows)} models could not be analysed; first: {failed[0]}", err=True)
        return 1
    return 0


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
    from onnxprune.allocate.sensitivity import Sensitivity

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"{path}: cannot read sensitivity analysis ({getattr(exc, 'strerror', None) or exc})") from exc
    return Sensitivity.from_json(text)
