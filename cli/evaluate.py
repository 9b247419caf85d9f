"""``onnxprune evaluate``: top-1 accuracy of a model, and agreement with a reference model."""

from __future__ import annotations

import json

import click

from .common import image_options


@click.command(epilog="""
\b
Examples:
  onnxprune evaluate model.pruned.onnx --data val.npz
  onnxprune evaluate model.pruned.onnx --data val.npz --reference model.onnx --json
""")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Data (.npz/.npy/images); labels give accuracy.")
@image_options
@click.option("--reference", type=click.Path(), help="Original model: report top-1 agreement with it.")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def evaluate(model, data, reference, batch_size, as_json, with_images):
    """Run MODEL over the data with onnxruntime: top-1 accuracy and agreement with --reference."""
    from onnxprune.scoring.calibrate import run_model
    from onnxprune.data import input_specs, load_data
    from onnxprune.errors import DataError
    from onnxprune.model.files import read_model

    proto = read_model(model)
    dataset = load_data(with_images(data), input_specs(proto))
    logits = run_model(proto, dataset, batch_size=batch_size)
    y = next(iter(logits.values()))
    result = {"model": model, "samples": int(len(y))}
    if dataset.labels is not None:
        result["top1"] = float((y.reshape(len(y), -1).argmax(1) == dataset.labels).mean())
    if reference:
        y0 = next(iter(run_model(read_model(reference), dataset, batch_size=batch_size).values()))
        result["agreement"] = float((y.reshape(len(y), -1).argmax(1) == y0.reshape(len(y0), -1).argmax(1)).mean())
    if "top1" not in result and "agreement" not in result:
        raise DataError("nothing to measure: the data has no labels and no --reference was given")
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo("  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()))
