"""``onnxprune compress``: prune a model to a FLOPs or parameter target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import input_shape_option, output_path, parse_input_shapes

EXAMPLES_COMPRESS = """
\b
Examples:
  onnxprune compress model.onnx --flops 0.3
  onnxprune compress model.onnx --params 0.5 --round-to 8 -o small.onnx --json
  onnxprune compress model.onnx --flops 0.3 --input-shape input:1,3,320,320
"""


@click.command(epilog=EXAMPLES_COMPRESS)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--flops", type=float, help="Fraction of MACs to remove, e.g. 0.3.")
@click.option("--params", type=float, help="Fraction of parameters to remove (instead of --flops).")
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@click.option("--plan", "plan_path", type=click.Path(), help="Plan JSON path [default: OUTPUT with .plan.json].")
@click.option("--criterion", type=click.Choice(["l1", "l2", "fpgm", "bn_scale", "random"]), help="Channel score [default: l1].")
@click.option("--allocation", type=click.Choice(["uniform"]), default="uniform", show_default=True,
              help="uniform: one ratio for every group, found by binary search (ACRA).")
@click.option("--max-ratio", type=float, default=0.8, show_default=True, help="Most of any group's channels that may go.")
@click.option("--min-channels", type=int, default=1, show_default=True, help="Fewest channels any group keeps.")
@click.option("--round-to", type=int, default=1, show_default=True, help="Kept channel counts are multiples of N (fast kernels).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random choices (random criterion, checks).")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
def compress(model, flops, params, output, plan_path, criterion, allocation, max_ratio, min_channels, round_to, seed,
             input_shapes, force, as_json, quiet):
    """Prune MODEL to remove a fraction of its FLOPs (MACs) or parameters."""
    from onnxprune import Limits, Settings, Target, compress as run_compress, save_model
    from onnxprune.graph import write_bytes_atomic

    if (flops is None) == (params is None):
        raise click.UsageError("give exactly one of --flops or --params")
    target = Target("flops", flops) if flops is not None else Target("params", params)
    out = output_path(model, output, ".pruned.onnx", force)
    plan_out = Path(plan_path) if plan_path else out.with_suffix(".plan.json")
    settings = Settings(target, criterion, allocation, Limits(max_ratio, min_channels, round_to), seed)
    result = run_compress(model, settings, parse_input_shapes(input_shapes))
    save_model(result.model, out)
    write_bytes_atomic(plan_out, result.plan.to_json().encode())
    summary = {**result.summary, "output": str(out), "plan": str(plan_out)}
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif not quiet:
        click.echo(format_summary(summary))


def format_summary(s: dict) -> str:
    g, seconds = s["groups"], s["seconds"]
    return "\n".join([
        f"MACs     {s['macs_before']:>15,} -> {s['macs_after']:>15,}  (-{s['flops_reduction']:.1%})",
        f"params   {s['params_before']:>15,} -> {s['params_after']:>15,}  (-{s['params_reduction']:.1%})",
        f"target   remove {s['target']['fraction']:.0%} of {s['target']['kind']}; achieved {s['achieved']:.1%}"
        f" with {s['allocation']} ratio {s['uniform_ratio']:.3f}, criterion {s['criterion']}",
        f"groups   {g['pruned']} pruned of {g['prunable']} prunable ({g['total']} total, {g['blocked']} blocked); "
        f"{s['channels']['removed']} of {s['channels']['prunable']} channels removed",
        f"time     {sum(seconds.values()):.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + ")",
        f"wrote    {s['output']} and {s['plan']}",
    ])
