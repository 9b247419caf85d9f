"""``onnxprune finetune``: recover accuracy of a pruned model in PyTorch, back to ONNX."""

from __future__ import annotations

import json

import click

from .common import image_options, output_path

EXAMPLES = """
\b
Examples:
  onnxprune finetune model.pruned.onnx --teacher model.onnx --data train.npz --epochs 3 -o model.tuned.onnx
  onnxprune finetune model.pruned.onnx --data train.npz --eval-data val.npz --no-labels --teacher model.onnx
"""


def tune_options(fn):
    options = [
        click.option("--epochs", type=int, default=3, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate (cosine schedule)."),
        click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True),
        click.option("--tune-batch-size", type=int, default=128, show_default=True),
        click.option("--temperature", type=float, default=4.0, show_default=True, help="Distillation temperature."),
        click.option("--alpha", type=float, default=0.5, show_default=True,
                     help="Weight of distillation vs cross-entropy when both apply."),
        click.option("--augment", is_flag=True, help="Random flip and crop of NCHW image inputs."),
        click.option("--no-labels", is_flag=True, help="Ignore labels: distillation only."),
        click.option("--tune-holdout", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                     help="Without --eval-data: the share of the training data (at most 512 samples) held out to "
                          "choose the best epoch (the input model if no epoch improves on it); 0 trains on all."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def tune_settings(epochs, lr, optimizer, tune_batch_size, temperature, alpha, augment, no_labels, seed, device,
                  tune_holdout=0.1):
    from onnxprune.settings import TuneSettings

    return TuneSettings(epochs=epochs, lr=lr, optimizer=optimizer, batch_size=tune_batch_size, temperature=temperature,
                        alpha=alpha, augment=augment, seed=seed, device=device, use_labels=not no_labels,
                        holdout=tune_holdout)


class EpochPrinter:
    """Prints one line per epoch on stderr (the library reports; the CLI prints)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __call__(self, event: dict) -> None:
        if self.quiet or event.get("event") != "epoch":
            return
        parts = [f"epoch {event['epoch']}"]
        for key in ("loss", "distill_loss", "train_acc", "eval_acc", "eval_distill_loss"):
            if event.get(key) is not None:
                parts.append(f"{key} {event[key]:.4f}")
        click.echo("  ".join(parts), err=True)


@click.command(epilog=EXAMPLES)
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Training data (.npz/.npy/images); labels optional.")
@click.option("--teacher", type=click.Path(), help="The original model to distil from.")
@click.option("--eval-data", type=click.Path(), help="Evaluation data: the best epoch is kept.")
@image_options
@click.option("-o", "--output", type=click.Path(), help="Output [default: MODEL.tuned.onnx].")
@tune_options
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the history as JSON.")
@click.option("-q", "--quiet", is_flag=True)
def finetune(model, data, teacher, eval_data, output, epochs, lr, optimizer, tune_batch_size, temperature, alpha,
             augment, no_labels, tune_holdout, seed, device, force, as_json, quiet, with_images):
    """Fine-tune MODEL with labels and/or distillation from --teacher; write the weights back to ONNX."""
    from onnxprune.model.files import read_model, save_model
    from onnxprune.tune import describe_tuning, finetune_model

    out = output_path(model, output, ".tuned.onnx", force)
    settings = tune_settings(epochs, lr, optimizer, tune_batch_size, temperature, alpha, augment, no_labels, seed, device,
                             tune_holdout)
    data, eval_data = with_images(data), with_images(eval_data)
    result = finetune_model(read_model(model), data, teacher=read_model(teacher) if teacher else None,
                            eval_data=eval_data, settings=settings, progress=EpochPrinter(quiet or as_json))
    save_model(result.model, out)
    if as_json:
        click.echo(json.dumps({"output": str(out), "best_epoch": result.best_epoch, "history": result.history,
                               "outcome": describe_tuning(result), "eval_source": result.eval_source}))
    elif not quiet:
        click.echo(f"{describe_tuning(result)}; wrote {out}")
