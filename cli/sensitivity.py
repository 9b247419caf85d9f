"""``onnxprune sensitivity``: per-group damage curves for ACRA's sensitivity allocation."""

from __future__ import annotations


import click

from onnxprune.scoring.registry import ALL_CRITERIA

from .common import Progress, image_options, input_shape_option, output_path, parse_input_shapes


@click.command(epilog="""
\b
Examples:
  onnxprune sensitivity model.onnx --data calib.npz -o sens.json --plot sens.png
  onnxprune compress model.onnx --flops 0.5 --data calib.npz --allocation sensitivity --sensitivity sens.json
""")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, type=click.Path(), help="Evaluation data (.npz/.npy/images); labels give accuracy drop.")
@image_options
@click.option("-o", "--output", type=click.Path(), help="Curves JSON [default: MODEL.sensitivity.json].")
@click.option("--plot", type=click.Path(), help="Also write a PNG of the curves.")
@click.option("--criterion", type=click.Choice(ALL_CRITERIA),
              default="hrank", show_default=True, help="Order in which each group's channels are removed.")
@click.option("--eval-images", type=int, default=512, show_default=True, help="Images per evaluation.")
@click.option("--metric", type=click.Choice(["accuracy_drop", "kl", "disagreement", "error"]),
              help="Damage measure [default: accuracy_drop with labels, else kl for classifiers, error otherwise]. "
                   "kl is smoother than a top-1 drop on a few hundred images (docs/ACCURACY.md).")
@click.option("--reconstruct", type=click.Choice(["local", "none"]), default="local", show_default=True,
              help="Measure each candidate after local reconstruction (what compress's default ldrf leaves) "
                   "or after plain removal (for --reconstruct none).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@input_shape_option
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def sensitivity(model, data, output, plot, criterion, eval_images, metric, reconstruct, device, input_shapes, force, as_json, quiet, with_images):
    """Prune each channel group alone at 10%..90% and measure the damage on the data."""
    from onnxprune.model.files import write_bytes_atomic
    from onnxprune.pipeline import sensitivity_analysis
    from onnxprune.report.plots import plot_sensitivity

    from .compress import providers_for

    out = output_path(model, output, ".sensitivity.json", force)
    with Progress(quiet or as_json) as progress:
        sens, _ = sensitivity_analysis(model, with_images(data), criterion, parse_input_shapes(input_shapes), eval_images,
                                       progress=progress, providers=providers_for(device), reconstruct=reconstruct, metric=metric)
    write_bytes_atomic(out, sens.to_json().encode())
    if plot:
        plot_sensitivity(sens, plot)
    if as_json:
        click.echo(sens.to_json())
        return
    click.echo(f"{len(sens.curves)} groups x {len(sens.ratios)} ratios = {sens.evaluations} evaluations in "
               f"{sens.seconds:.1f} s; metric {sens.metric}"
               + ("; after local reconstruction" if sens.compensated else "; plain removal"))
    from onnxprune.report.labels import damage_text, distinct_labels

    labels = distinct_labels({gid: sens.names.get(gid, "") or str(gid) for gid in sens.curves}, 40)  # issue 15.15
    click.echo(f"{'group':>5}  {'name':<40} " + " ".join(f"{r:>7.0%}" for r in sens.ratios))
    for gid, curve in sens.curves.items():
        click.echo(f"{gid:>5}  {labels[gid]:<40} " + " ".join(f"{damage_text(v, sens.metric):>7}" for v in curve))
    click.echo(f"wrote {out}" + (f" and {plot}" if plot else ""))
