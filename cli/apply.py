"""``onnxprune apply``: reproduce a pruned model from a plan."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxprune.errors import OnnxPruneError

from .common import input_shape_option, output_path, parse_input_shapes


@click.command()
@click.argument("model", type=click.Path())
@click.argument("plan", type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def apply(model, plan, output, input_shapes, force, as_json):
    """Reproduce a pruned model from MODEL and a PLAN written by compress (byte-identical)."""
    from onnxprune import Plan, apply_plan, save_model

    try:
        text = Path(plan).read_text()
    except OSError as exc:
        raise OnnxPruneError(f"{plan}: cannot read plan ({exc.strerror})") from exc
    out = output_path(model, output, ".pruned.onnx", force)
    pruned = apply_plan(model, Plan.from_json(text), parse_input_shapes(input_shapes))
    save_model(pruned, out)
    if as_json:
        click.echo(json.dumps({"output": str(out)}))
    else:
        click.echo(f"wrote {out}")
