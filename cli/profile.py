"""``onnxprune profile``: the latency model of a model on this machine's runtime; and the
``--speedup`` / ``--latency-ms`` options of ``compress`` (kept here so compress.py stays small)."""

from __future__ import annotations

import json

import click

EXAMPLES_PROFILE = """
\b
Examples:
  onnxprune profile model.onnx                      # 1 thread, batch 1, CPU
  onnxprune profile model.onnx --threads 2 --batch 8 --json
  onnxprune compress model.onnx --speedup 2 --threads 2   # uses (and fills) the same cache
"""


def speed_options(fn):
    """--speedup, --latency-ms and the deployment setting (--threads, --batch) of compress."""
    options = [
        click.option("--speedup", type=float, metavar="X",
                     help="Prune until the model runs X times faster on this machine's onnxruntime (measured, "
                          "--device/--threads/--batch), instead of --flops/--params."),
        click.option("--latency-ms", type=float, metavar="T", help="Prune until one run takes T ms (as --speedup)."),
        click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                     help="onnxruntime intra-op threads of the deployment (--speedup, --latency-ms)."),
        click.option("--batch", "deploy_batch", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Batch of the deployment (--speedup, --latency-ms)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def resolve_target(flops, params, speedup, latency_ms, device, threads, batch, allocation="uniform"):
    """(Target, allocator or None) from the target options; a usage error unless exactly one is given."""
    from onnxprune import Target
    from onnxprune.errors import OnnxPruneError

    given = [name for name, v in (("--flops", flops), ("--params", params), ("--speedup", speedup),
                                  ("--latency-ms", latency_ms)) if v is not None]
    if len(given) != 1:
        raise click.UsageError("give exactly one of --flops, --params, --speedup or --latency-ms"
                               + (f" (got {' and '.join(given)})" if given else ""))
    if flops is not None:
        return Target("flops", flops), None
    if params is not None:
        return Target("params", params), None
    from onnxprune.allocate.speed import SpeedTarget, latency_allocator, placeholder_target
    from onnxprune.runtime.latency import Deployment

    try:
        speed = SpeedTarget(speedup=speedup, latency_ms=latency_ms,
                            deployment=Deployment("cuda" if device == "cuda" else "cpu", threads, batch))
    except OnnxPruneError as exc:
        raise click.UsageError(str(exc)) from None
    return placeholder_target(speed), latency_allocator(speed, allocation=allocation)


def auto_round_to(device: str) -> int:
    """--round-to auto: the detected alignment of the runtime (onnxruntime's NCHWc block on CPU)."""
    from onnxprune.runtime.latency import detect_alignment

    return detect_alignment("cuda" if device == "cuda" else "cpu")


def speed_lines(s: dict) -> list[str]:
    sp = s.get("speed")
    if not sp:
        return []
    lines = [f"speed    target {sp['target']:.2f}x" + (f" ({sp['latency_ms_target']:g} ms)" if sp.get("latency_ms_target") else "")
             + f"; predicted {sp['predicted']:.2f}x; measured {sp['measured']:.2f}x ({sp['original_ms']:.3g} -> "
             f"{sp['pruned_ms']:.3g} ms, {sp['device']}, {sp['threads']} thread(s), batch {sp['batch']})"]
    if len(sp["rounds"]) > 1:
        lines.append("rounds   " + "; ".join(f"asked {r['asked']:.2f}x: predicted {r['predicted']:.2f}x, measured "
                                              f"{r['speedup']:.2f}x" for r in sp["rounds"])
                     + f" (kept round {sp['chosen_round']})")
    m = sp["model"]
    lines.append(f"latency  model profiled in {m['seconds']:.1f} s (0 = cached)" +
                 (f", held-out error {m['heldout_error']:.1%}" if m.get("heldout_error") is not None else ""))
    return lines


@click.command(epilog=EXAMPLES_PROFILE)
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="onnxruntime execution provider of the deployment.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="onnxruntime intra-op threads.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Batch of the deployment.")
@click.option("--refresh", is_flag=True, help="Profile again even if a cached model exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the latency model as JSON.")
@click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
              help="Concrete shape for an input with symbolic dimensions (repeatable).")
def profile(model, device, threads, batch, refresh, as_json, input_shapes):
    """Measure MODEL's latency per prunable layer on this machine and fit the latency model that
    `compress --speedup` uses (cached by model, provider, threads, batch and CPU)."""
    import time

    from onnxprune.pipeline import prepare
    from onnxprune.runtime.latency import Deployment, cache_key, cache_path, default_cache_dir, profile_model

    from .common import parse_input_shapes

    dep = Deployment(device, threads, batch)
    _, analysis, _ = prepare(model, parse_input_shapes(input_shapes))
    start = time.perf_counter()
    lm = profile_model(analysis, dep, refresh=refresh)
    took = time.perf_counter() - start
    if as_json:
        data = json.loads(lm.to_json())
        data["cache"] = str(cache_path(cache_key(analysis, dep), default_cache_dir()))
        data["heldout_error"] = lm.error
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"model    {model}: {lm.base_ms:.3f} ms on {dep.device}, {threads} thread(s), batch {batch}; "
               f"channel alignment {lm.alignment}")
    click.echo(f"fit      {len(lm.nodes)} weighted nodes, rest {lm.rest[0]:.3f} ms + activations; "
               f"profiled in {lm.seconds:.1f} s" + (" (cached)" if took < 0.5 * max(lm.seconds, 0.01) else ""))
    for f in lm.fitted:
        click.echo(f"  fit      uniform {f['ratio']:.2f}: measured {f['measured']:.3f} ms, predicted {f['predicted']:.3f} ms")
    for h in lm.heldout:
        click.echo(f"  held-out random: measured {h['measured']:.3f} ms, predicted {h['predicted']:.3f} ms "
                   f"({(h['predicted'] - h['measured']) / h['measured']:+.1%})")
