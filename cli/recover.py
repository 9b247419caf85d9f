"""Options of ``compress`` for label-free recovery (issue 18), kept apart from compress.py."""

from __future__ import annotations

import click

RECOVER_SKIPPED = "recovery skipped: torch is not installed (pip install 'onnxprune[torch]'); the model is not distilled"


def recover_options(fn):
    options = [
        click.option("--recover/--no-recover", "recover", default=None,
                     help="Distil the pruned model from MODEL on the --data samples, no labels (the best held-out "
                          "state is kept, never worse than before) [default: on with --data when torch is installed]."),
        click.option("--recover-time", type=float, metavar="SECONDS",
                     help="Time budget of recovery [default: 180 s, or 30 epochs over the samples if sooner]."),
        click.option("--recover-mode", type=click.Choice(["global", "blockwise"]), default="global", show_default=True,
                     help="global: whole-model distillation of outputs and features; blockwise: one residual block "
                          "after the other (BRECQ).")
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def recover_settings(recover, recover_time, recover_mode, data, seed, device):
    """RecoverSettings, or None when recovery does not run (off, no data, or torch missing by default)."""
    from onnxprune.errors import require_torch
    from onnxprune.recovery import torch_available
    from onnxprune.settings import RecoverSettings

    if recover and not data:
        raise click.UsageError("--recover distils on calibration samples: give --data")
    if not data or recover is False:
        return None
    if recover is None and not torch_available():
        return None
    if recover:
        require_torch()
    if recover_time is not None and not recover_time > 0:
        raise click.BadParameter("expected a positive number of seconds", param_hint="--recover-time")
    return RecoverSettings(time=recover_time, mode=recover_mode, seed=seed,
                           device=device)


def format_recovery(r: dict) -> str:
    if "heldout_before" not in r:
        return f"recover  {r.get('skipped') or r.get('stopped')}"
    b, a = r["heldout_before"], r["heldout_after"]
    agree = (f", agreement {b['agreement']:.1%} -> {a['agreement']:.1%}" if "agreement" in b else "")
    return (f"recover  held-out loss {b['loss']:.4g} -> {a['loss']:.4g}{agree} ({r['heldout_samples']} samples); "
            f"{r['steps']} steps in {r['seconds']:.1f} s, kept {r['kept']}, stopped: {r['stopped']}")
