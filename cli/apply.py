"""``onnxprune apply``: reproduce a pruned model from a plan."""

from __future__ import annotations

import json
import warnings

import click

from .common import image_options, input_shape_option, output_path, parse_input_shapes, read_plan


@click.command(epilog="""
\b
Examples:
  onnxprune compress model.onnx --flops 0.5 --data calib.npz -o small.onnx   # writes small.plan.json
  onnxprune apply model.onnx small.plan.json --data calib.npz -o again.onnx  # the same bytes as small.onnx
  onnxprune apply model.onnx data-free.plan.json -o again.onnx              # a plan made without --data
""")
@click.argument("model", type=click.Path())
@click.argument("plan", type=click.Path())
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@click.option("--data", type=click.Path(), help="The calibration data of a plan made with reconstruction.")
@image_options
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file; apply a plan to other --data than "
              "it was made with (with a warning: the reconstructed weights then differ).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def apply(model, plan, output, data, input_shapes, force, as_json, with_images):
    """Reproduce a pruned model from MODEL and a PLAN written by compress (byte-identical)."""
    from onnxprune import apply_plan, save_model

    parsed = read_plan(plan)
    out = output_path(model, output, ".pruned.onnx", force)
    with warnings.catch_warnings(record=True) as caught:  # issue 15.8: other data only with --force, loudly
        warnings.simplefilter("always")
        pruned = apply_plan(model, parsed, parse_input_shapes(input_shapes), data=with_images(data), other_data=force)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    save_model(pruned, out)
    if as_json:
        click.echo(json.dumps({"output": str(out)}))
    else:
        click.echo(f"wrote {out}")
