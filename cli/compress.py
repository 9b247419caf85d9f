"""``onnxprune compress``: prune a model to a FLOPs or parameter target."""

from __future__ import annotations

import json
from pathlib import Path

import click

from onnxprune.allocate.blocks import MIN_BLOCKS, narrow_alignment
from onnxprune.scoring.registry import ALL_CRITERIA

from .common import Progress, data_options, image_options, input_shape_option, output_path, parse_input_shapes, side_output
from .finetune import EpochPrinter, tune_options, tune_settings
from .profile import auto_round_to, resolve_target, speed_lines, speed_options  # --- issue 16
from .recover import RECOVER_SKIPPED, format_recovery, recover_options, recover_settings  # issue 18

EXAMPLES_COMPRESS = """
\b
Examples:
  onnxprune compress model.onnx --flops 0.5 --data calib.npz      # HRank + LDRF reconstruction, measured
  onnxprune compress model.onnx --flops 0.5 --data images/ --mean imagenet --std imagenet
  onnxprune compress model.onnx --flops 0.3                       # data-free (L1): large accuracy loss
  onnxprune compress model.onnx --flops 0.5 --exclude 'head*' --dry-run   # allocation only, nothing written
  onnxprune compress model.onnx --flops 0.5 --data calib.npz --allocation sensitivity --eval-data val.npz
  onnxprune compress model.onnx --params 0.5 --round-to 16 -o small.onnx --json
  onnxprune compress model.onnx --flops 0.3 --input-shape input:1,3,320,320
  onnxprune compress model.onnx --flops 0.5 --data calib.npz --report model.report.html
  onnxprune compress model.onnx --speedup 2 --threads 2           # measured on this machine
"""



def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:  # issue 15.6: out-of-range values are usage errors (exit 2)
        raise click.BadParameter(f"expected a positive whole number or 'auto', got {text!r}", param_hint="--round-to")
    return value


# Issue 15.6: a target outside (0, 1) is a usage error (exit 2), as in `inspect --flops`.
FRACTION = click.FloatRange(0, 1, min_open=True, max_open=True)


CRITERIA = list(ALL_CRITERIA)


@click.command(epilog=EXAMPLES_COMPRESS)
@click.argument("model", type=click.Path(dir_okay=True))
@click.option("--flops", type=FRACTION, help="Fraction of MACs to remove, e.g. 0.3.")
@click.option("--params", type=FRACTION, help="Fraction of parameters to remove (instead of --flops).")
@speed_options
@click.option("-o", "--output", type=click.Path(), help="Pruned model path [default: MODEL.pruned.onnx].")
@click.option("--plan", "plan_path", type=click.Path(), help="Plan JSON path [default: OUTPUT with .plan.json].")
@click.option("--criterion", type=click.Choice(CRITERIA),
              help="Channel score [default: hrank with --data, else l1]. hrank/apoz/mean_activation/recon/obs need --data; obs: structured Optimal Brain Surgeon (channels chosen by what the refit recovers); group_magnitude: all weights of the channel group (Torch-Pruning's default).")
@click.option("--allocation", type=click.Choice(["uniform", "sensitivity", "global"]), default="uniform", show_default=True,
              help="uniform: one ratio for all groups (ACRA binary search); sensitivity: per-group damage curves "
                   "and a shared threshold (ACRA); global: channels ranked across groups.")
@click.option("--reconstruct", type=click.Choice(["none", "local", "ldrf", "obs"]),
              help="Compensate removed channels in the next layers [default: obs with --criterion obs, ldrf with "
                   "--data, else none]; obs: fold the Optimal Brain Surgeon refit (with --criterion obs).")
@click.option("--sensitivity", "sensitivity_path", type=click.Path(), help="Reuse a saved `onnxprune sensitivity` JSON.")
@click.option("--sensitivity-metric", type=click.Choice(["accuracy_drop", "kl", "disagreement", "error"]),
              help="Damage measure of --allocation sensitivity [default: accuracy_drop with labels, else kl "
                   "(classifiers) or error].")
@click.option("--max-ratio", type=click.FloatRange(0, 1, min_open=True), default=0.8, show_default=True, help="Most of any group's channels that may go.")
@click.option("--min-channels", type=click.IntRange(min=1), default=1, show_default=True, help="Fewest channels any group keeps.")
@click.option("--round-to", default="auto", show_default=True, metavar="N|auto",
              help="Kept channel counts are multiples of N where a group has at least N channels. onnxruntime's CPU "
                   "convolutions leave their fast blocked (NCHWc) kernels for other counts: with 1, pruned models "
                   "ran at 0.46-0.67x of the FLOPs-predicted speed-up (7 of 12 slower than the original at batch 16), "
                   "with 8 at 0.70-0.89x, with 16 at 0.87-0.97x (docs/LATENCY.md, geometric means over models and "
                   "targets, AVX-512 CPU). auto: the block onnxruntime pads to on this "
                   "machine (probed: 16 with AVX-512, 8 with AVX2; 8 for cuda), stepping down to 8/4, then exact counts, "
                   "where it cannot reach the target (the summary says so). Counts are chosen by an exact search "
                   "over aligned blocks, so targets are met within about a point.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random choices.")
@click.option("--rank-early-stop", type=click.FloatRange(0, min_open=True), metavar="TOL",
              help="HRank: stop ranking a layer once no channel's mean rank moved by TOL over the last 32 images "
                   "(0.2: 3.2x plain inference instead of 6.5x for exact ranks on ResNet-50, 98.1% of kept channels "
                   "identical; docs/CALIBRATION.md) [default: rank every image].")
@data_options
@image_options
@input_shape_option
@click.option("--finetune", "finetune_data", type=click.Path(),
              help="Fine-tune the pruned model on this data (needs the [torch] extra), distilling from MODEL.")
@tune_options
@recover_options
@click.option("--report", "report_path", type=click.Path(),
              help="Also write the report of this run (.html, .json or .txt by extension); checked before compressing.")
@click.option("--holdout", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Without --eval-data: the share of --data (at most --eval-images samples, spread evenly) held out of "
                   "calibration to measure top-1, agreement and output error before and after; 0 calibrates on all.")
@click.option("--latency-runs", type=click.IntRange(min=0), default=20, show_default=True,
              help="Measure the speed-up on this machine: median of N interleaved onnxruntime CPU runs of both models "
                   "(batch 1, 1 thread); 0 skips.")
@click.option("--exclude", multiple=True, metavar="PATTERN",
              help="Keep every output channel of the layers whose node name or weight name matches this glob "
                   "(repeatable), e.g. --exclude 'head.*' --exclude '/stem/conv/Conv'; their groups are not pruned.")
@click.option("--dry-run", is_flag=True, help="Print the allocation (channels kept per group) and the predicted "
              "cost, and write nothing.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, nothing printed on success.")
def compress(model, flops, params, speedup, latency_ms, threads, deploy_batch, output, plan_path, criterion, allocation, reconstruct, sensitivity_path,
             sensitivity_metric, max_ratio,
             min_channels, round_to, seed, rank_early_stop, data, eval_data, calib_batches, batch_size, eval_images, device, input_shapes,
             finetune_data, epochs, lr, optimizer, tune_batch_size, temperature, alpha, augment, no_labels, tune_holdout,
             recover, recover_time, recover_mode, report_path, holdout, latency_runs, exclude, dry_run, force, as_json,
             quiet, with_images):
    """Prune MODEL to remove a fraction of its FLOPs (MACs) or parameters."""
    from onnxprune import Limits, Settings, Target, compress as run_compress, save_model
    from onnxprune.errors import OnnxPruneError
    from onnxprune.allocate.sensitivity import Sensitivity
    from onnxprune.model.files import check_writable, write_bytes_atomic, write_text_atomic
    from onnxprune.report import build_report, format_of, render

    target, allocator = resolve_target(flops, params, speedup, latency_ms, device, threads, deploy_batch, allocation)
    from onnxprune.settings import auto_limits  # --round-to auto: the API's default too (issue 15.9)

    limits = (auto_limits(max_ratio, min_channels, "cuda" if device == "cuda" else "cpu") if round_to == "auto"
              else Limits(max_ratio, min_channels, _positive_int(round_to)))
    if dry_run and (report_path or finetune_data):  # issue 15.14
        raise click.UsageError("--dry-run writes nothing and builds no model: drop --report and --finetune")
    # Every output path is checked before the (slow) compression.
    out = output_path(model, output, ".pruned.onnx", force or dry_run)
    check_writable(out)
    plan_out = side_output(plan_path or out.with_suffix(".plan.json"), "--plan",
                           [("the input model", Path(model)), ("the pruned model's path", out)], force or dry_run)
    report_out, report_fmt = None, None
    if report_path:
        report_out = side_output(report_path, "--report", [("the input model", Path(model)),
                                 ("the pruned model's path", out), ("the plan's path", plan_out)], force)
        try:
            report_fmt = format_of(report_out)
        except OnnxPruneError as exc:
            raise click.BadParameter(f"{exc}", param_hint="--report") from exc
        if report_fmt == "html":
            from onnxprune.report.html import require_matplotlib

            require_matplotlib()
    if sensitivity_path and allocation != "sensitivity":  # issue 15.7: never ignored silently
        raise click.UsageError("--sensitivity FILE gives the curves of --allocation sensitivity; "
                               "add --allocation sensitivity (or drop --sensitivity)")
    sens = None
    if sensitivity_path:
        try:
            sens = Sensitivity.from_json(Path(sensitivity_path).read_text())
        except OSError as exc:
            raise OnnxPruneError(f"{sensitivity_path}: cannot read ({exc.strerror})") from exc
    settings = Settings(
        target=target, criterion=criterion, allocation=allocation,
        limits=limits,
        round_to_fallback=round_to == "auto",
        reconstruct=reconstruct, seed=seed, calib_batches=calib_batches, batch_size=batch_size,
        eval_images=eval_images, providers=providers_for(device), rank_early_stop=rank_early_stop,
        sensitivity_metric=sensitivity_metric, holdout=holdout, exclude=tuple(exclude), dry_run=dry_run,
        recover=None if dry_run else recover_settings(recover, recover_time, recover_mode, data, seed, device),
    )
    data, eval_data, finetune_data = with_images(data), with_images(eval_data), with_images(finetune_data)
    with Progress(quiet or as_json) as progress:
        result = run_compress(model, settings, parse_input_shapes(input_shapes), data=data, eval_data=eval_data,
                              sensitivity=sens, progress=progress, allocator=allocator)
    summary = {**result.summary, "output": str(out), "plan": str(plan_out)}
    if dry_run:
        summary["dry_run"] = True
        summary["allocation_groups"] = allocation_rows(result)
        click.echo(json.dumps(summary, indent=1) if as_json else format_dry_run(summary))
        return
    if recover is None and data and settings.recover is None:  # issue 18: default recovery without torch: say so
        summary["notes"] = summary.get("notes", []) + [RECOVER_SKIPPED]
    if finetune_data:
        from onnxprune.model.files import read_model
        from onnxprune.tune import finetune_model

        settings_t = tune_settings(epochs, lr, optimizer, tune_batch_size, temperature, alpha, augment, no_labels, seed,
                                   device, tune_holdout)
        tuned = finetune_model(result.model, finetune_data, teacher=read_model(model), eval_data=eval_data,
                               settings=settings_t, progress=EpochPrinter(quiet or as_json))
        result.model = tuned.model
        from onnxprune.tune import describe_tuning

        summary["finetune"] = {"best_epoch": tuned.best_epoch, "history": tuned.history,
                               "outcome": describe_tuning(tuned), "eval_source": tuned.eval_source}
    report_text, latency = None, None
    if report_out is not None:  # built before anything is saved: a failing report leaves no model without one
        report = build_report(model, result=result)
        report_text, latency = render(report, report_fmt), report.latency
        summary["report"] = str(report_out)
    # issue 15.13: the measured speed-up, as the report measures it; a --speedup/--latency-ms run has
    # measured it already at its deployment (summary "speed", issue 16): not measured twice
    if latency_runs and latency is None and "speed" not in summary:
        latency = measure_speedup(result, latency_runs)
    if latency:
        summary["speedup"] = {"measured": latency["speedup"], "predicted": _ratio(s=summary),
                              "before_ms": latency["before"]["median_ms"], "after_ms": latency["after"]["median_ms"],
                              "threads": latency["threads"], "runs": latency["runs"], "batch": latency["batch"]}
    save_model(result.model, out)
    write_bytes_atomic(plan_out, result.plan.to_json().encode())
    if report_text is not None:
        write_text_atomic(report_out, report_text)
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    elif not quiet:
        click.echo(format_summary(summary))


def measure_speedup(result, runs: int) -> dict:
    """Median latency of the original and the pruned model, interleaved, 1 thread (as the report)."""
    from onnxprune.evaluation import measure_speedup as measure

    model = result.analysis.model
    return measure(model.proto, result.model, model.input_shapes, runs)


def _ratio(s: dict) -> float | None:
    return round(s["macs_before"] / s["macs_after"], 4) if s["macs_after"] else None


def providers_for(device: str):
    if device == "cpu":
        return ("CPUExecutionProvider",)
    if device == "cuda":
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    return None  # auto


def allocation_rows(result) -> list[dict]:
    """Channels kept per prunable group, as the plan would record them (largest cut first)."""
    groups = result.analysis.groups
    rows = [{"group": gid, "name": groups[gid].name, "channels": groups[gid].size, "kept": int(len(kept))}
            for gid, kept in result.allocation.kept.items()]
    rows += [{"group": g.id, "name": g.name, "channels": g.size, "kept": g.size, "blocked": g.blocked[0]}
             for g in groups if any("--exclude" in b for b in g.blocked)]
    return sorted(rows, key=lambda r: (r["kept"] / r["channels"], r["group"]))


def format_dry_run(s: dict) -> str:
    lines = ["dry run: nothing written (without --dry-run: " + s["output"] + " and " + s["plan"] + ")",
             f"{'group':>5}  {'name':<40} {'channels':>8} {'kept':>6}"]
    for r in s["allocation_groups"]:
        lines.append(f"{r['group']:>5}  {r['name'][:40]:<40} {r['channels']:>8} {r['kept']:>6}" +
                     (f"  ({r['blocked']})" if r.get("blocked") else ""))
    summary = format_summary({**s, "output": "", "plan": ""}).splitlines()
    return "\n".join(lines + [line for line in summary if not line.startswith(("wrote", "time"))])


def format_outcome(s: dict) -> list[str]:
    """The lines that say how the pruned model does (issue 15.13): accuracy/fidelity on samples
    not calibrated on, and the speed-up measured here."""
    lines = []
    ev, held = s.get("evaluation"), s.get("holdout")
    if ev:
        where = (f"{ev['samples']} samples held out of --data (--holdout {held['fraction']:g}, spread evenly; "
                 f"{held['calibration_samples']} calibrated)" if ev.get("source") == "held out of data"
                 else f"{ev['samples']} samples of --eval-data")
        b, a = ev["before"], ev["after"]
        parts = [f"top-1 {b['top1']:.1%} -> {a['top1']:.1%}"] if "top1" in a else []
        parts += [f"agreement with the original {a['agreement']:.1%}"] if "agreement" in a else []
        parts += [f"output error {a['output_error']:.3g} (relative L2)"] if a.get("output_error") is not None else []
        lines.append(f"eval     {where}: " + ", ".join(parts) + (" (before fine-tuning)" if "finetune" in s else ""))
    elif held is not None:
        why = "--holdout 0" if not held["fraction"] else f"{held['calibration_samples']} samples are too few to hold some out"
        lines.append(f"eval     not measured ({why}): give --eval-data to measure the pruned model")
    sp = s.get("speedup")
    if sp and sp.get("measured"):
        lines.append(f"speed    {sp['measured']:.2f}x measured on this machine ({sp['before_ms']:.3g} -> {sp['after_ms']:.3g} ms, "
                     f"batch {sp['batch']}, {sp['threads']} thread, median of {sp['runs']} interleaved runs); "
                     f"MACs predict {sp['predicted']:.2f}x")
    return lines


def format_summary(s: dict) -> str:
    g, seconds = s["groups"], s["seconds"]
    how = f"{s['allocation']}" + (f" ratio {s['uniform_ratio']:.3f}" if s.get("uniform_ratio") is not None else "")
    lines = [
        f"MACs     {s['macs_before']:>15,} -> {s['macs_after']:>15,}  (-{s['flops_reduction']:.1%})",
        f"params   {s['params_before']:>15,} -> {s['params_after']:>15,}  (-{s['params_reduction']:.1%})",
        f"target   remove {s['target']['fraction']:.0%} of {s['target']['kind']}; achieved {s['achieved']:.1%}"
        f" with {how}, criterion {s['criterion']}, reconstruction {s.get('reconstruct', 'none')}",
        f"groups   {g['pruned']} pruned of {g['prunable']} prunable ({g['total']} total, {g['blocked']} blocked); "
        f"{s['channels']['removed']} of {s['channels']['prunable']} channels removed"
        + _multiples(s.get("round_to", 1)),
    ]
    lines += speed_lines(s)
    lines += [f"note     {n}" for n in s.get("notes", [])]
    if "calibration" in s:
        c = s["calibration"]
        early = c.get("rank_images")
        lines.append(f"data     {c['images']} calibration images on {c['provider']}" +
                     (f" (HRank early stop: ranks from {early['fewest']}-{early['most']} images per layer)" if early else "") +
                     "".join(f"; {w}" for w in c["warnings"]))
    if "reconstruction" in s:
        r = s["reconstruction"]
        lines.append(f"recon    {r['fitted']} consumers compensated, {r['fallback']} left plain, {r['passes']} passes")
    if "recovery" in s:
        lines.append(format_recovery(s["recovery"]))
    if "finetune" in s:
        lines.append(f"tuned    {s['finetune']['outcome']}")
    lines += format_outcome(s)
    lines += [
        f"time     {sum(seconds.values()):.2f} s (" + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()) + ")",
        f"wrote    {s['output']} and {s['plan']}" + (f" and {s['report']}" if s.get("report") else ""),
    ]
    return "\n".join(lines)


def _multiples(round_to: int) -> str:
    """The summary's word on kept counts, with the half block narrow groups get (allocate.blocks)."""
    if round_to <= 1:
        return ""
    half = narrow_alignment(0, round_to)
    narrow = f" ({half} in groups under {MIN_BLOCKS * round_to} channels)" if half != round_to else ""
    return f"; kept counts multiples of {round_to}{narrow}"
