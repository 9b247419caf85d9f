"""Every settings dataclass in one place, each validated where it is made (``__post_init__``):
a bad value fails when the settings are built, before any model is read.

    Target, Limits       the reduction asked for and the per-group bounds (allocation)
    Settings             what ``compress`` does
    EvaluationSettings   how candidates are evaluated (sensitivity analysis)
    ReportSettings       how the report's optional sections are measured
    TuneSettings         fine-tuning (``--finetune-data``)
    RecoverSettings      label-free recovery after pruning (issue 18, ``onnxprune.recover``)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import OnnxPruneError, TargetError
from .scoring.registry import ALL_CRITERIA, DATA_CRITERIA, WEIGHT_CRITERIA

RECONSTRUCT_MODES = ("none", "local", "ldrf", "obs")  # obs: the OBS refit of criterion obs (issue 17)
ALLOCATIONS = ("uniform", "sensitivity", "global")


@dataclass(frozen=True)
class Target:
    """Remove ``fraction`` of the model's ``kind`` ("flops" = MACs, or "params"; "latency": the
    latency model's prediction, set by allocate.speed.latency_allocator)."""

    kind: str
    fraction: float

    def __post_init__(self):
        if self.kind not in ("flops", "params", "latency"):
            raise TargetError(f"unknown target kind {self.kind!r}: use flops or params")
        if not 0.0 < self.fraction < 1.0:
            raise TargetError(
                f"--{self.kind} must be a fraction strictly between 0 and 1 (the share to remove), got {self.fraction:g}"
            )


@dataclass(frozen=True)
class Limits:
    """Per-group bounds: at most ``max_ratio`` of a group's channels go, at least
    ``min_channels`` stay, and kept counts are multiples of ``round_to`` where possible."""

    max_ratio: float = 0.8
    min_channels: int = 1
    round_to: int = 1

    def __post_init__(self):
        if not 0.0 < self.max_ratio <= 1.0:
            raise TargetError(f"--max-ratio must be in (0, 1], got {self.max_ratio:g}")
        if self.min_channels < 1 or self.round_to < 1:
            raise TargetError("--min-channels and --round-to must be at least 1")

    def kept(self, n: int, ratio: float) -> int:
        """Channels kept of ``n`` at ``ratio``: monotone non-increasing in ``ratio``."""
        ratio = min(ratio, self.max_ratio)
        kept = n - int(np.floor(ratio * n + 1e-9))
        if self.round_to > 1 and n >= self.round_to:
            kept = int(np.ceil(kept / self.round_to) * self.round_to)
        floor = max(self.min_channels, n - int(np.floor(self.max_ratio * n + 1e-9)))
        return int(min(n, max(kept, min(floor, n), 1)))


def auto_round_to(device: str = "cpu") -> int:
    """What ``round_to`` "auto" means, for the API and the CLI alike (issue 15.9): the channel
    alignment the runtime pads to, probed once per process (issue 16: onnxruntime's NCHWc block,
    16 with AVX-512, 8 with AVX2; 8 for cuda). Kept counts in its multiples keep the fast blocked
    kernels (docs/LATENCY.md); ``round_to_fallback`` steps down where it cannot reach the target."""
    from .runtime.latency import detect_alignment  # at call time: runtime.latency imports this module

    return detect_alignment(device)


def auto_limits(max_ratio: float = 0.8, min_channels: int = 1, device: str = "cpu") -> Limits:
    """The limits of ``--round-to auto``, the default of ``Settings`` (pair them with ``round_to_fallback=True``)."""
    return Limits(max_ratio, min_channels, auto_round_to(device))


@dataclass(frozen=True)
class Settings:
    """What ``compress`` does. ``None`` picks the default: criterion ``hrank`` with data, ``l1``
    without; reconstruction ``ldrf`` with data, ``none`` without (``obs`` with criterion ``obs``). The
    defaults are the CLI's: ``round_to`` auto (``auto_limits``: the probed alignment, stepping down
    where it cannot reach the target), a fifth of the data held out to measure the result.
    ``Limits(round_to=N)`` with ``round_to_fallback=False`` is ``--round-to N``."""

    target: Target
    criterion: str | None = None
    allocation: str = "uniform"
    limits: Limits = field(default_factory=auto_limits)  # round_to "auto", as the CLI (issue 15.9)
    reconstruct: str | None = None
    seed: int = 0
    verify: bool = True
    calib_batches: int | None = None
    batch_size: int | None = None
    eval_images: int = 512  # sensitivity evaluation images (first N of the evaluation data)
    rank_early_stop: float | None = None  # HRank early stop tolerance (rank units, patience 32 images)
    round_to_fallback: bool = True  # retry with round_to 1 where limits.round_to makes the target unreachable
    sensitivity_metric: str | None = None  # None: accuracy_drop with labels, else kl (classifiers) or error
    providers: tuple | None = None
    # Issue 15.13: without eval_data, this share of data (at most eval_images samples, spread
    # evenly) is held out of calibration to measure the result; 0 calibrates on all of it.
    holdout: float = 0.2
    evaluate: bool = True  # measure top-1/agreement/output error on held-out or eval data
    exclude: tuple[str, ...] = ()  # issue 15.14: globs on node/weight names whose output channels all stay
    dry_run: bool = False  # issue 15.14: stop after the allocation (Result.model is None)
    recover: RecoverSettings | None = None  # issue 18: distil from the original after reconstruction (needs torch)

    def __post_init__(self):
        """The checks that need no data or model (those that do are made by ``compress``)."""
        if not 0.0 <= self.holdout < 1.0:
            raise OnnxPruneError(f"--holdout must be in [0, 1), got {self.holdout:g}")
        if self.eval_images < 1:
            raise OnnxPruneError(f"--eval-images must be at least 1, got {self.eval_images}")
        if self.criterion is not None and self.criterion not in ALL_CRITERIA:
            known = sorted(WEIGHT_CRITERIA) + list(DATA_CRITERIA)
            raise OnnxPruneError(f"unknown criterion {self.criterion!r}; available: {', '.join(known)}")
        if self.reconstruct is not None and self.reconstruct not in RECONSTRUCT_MODES:
            raise OnnxPruneError(f"unknown reconstruction {self.reconstruct!r}; available: {', '.join(RECONSTRUCT_MODES)}")
        if self.rank_early_stop is not None and (self.criterion not in (None, "hrank") or not self.rank_early_stop > 0):
            raise OnnxPruneError("--rank-early-stop takes a positive tolerance and applies to --criterion hrank only")
        if self.reconstruct == "obs" and self.criterion != "obs":  # issue 17
            raise OnnxPruneError("--reconstruct obs folds the OBS refit: it needs --criterion obs")
        if self.allocation not in ALLOCATIONS:
            raise OnnxPruneError(f"unknown allocation {self.allocation!r}; available: {', '.join(ALLOCATIONS)}")
        if self.recover is not None and not isinstance(self.recover, RecoverSettings):  # issue 18
            raise OnnxPruneError(f"Settings.recover takes RecoverSettings or None, got {type(self.recover).__name__}")

    @property
    def evaluation(self) -> "EvaluationSettings":
        return EvaluationSettings(self.eval_images, self.batch_size, self.calib_batches, self.seed, self.providers)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the masked evaluator reads the evaluation data: the first ``eval_images`` images in
    batches of ``batch_size`` (None: 128), and, with local reconstruction, ``calib_batches`` of
    the calibration data (None: all)."""

    eval_images: int = 512
    batch_size: int | None = None
    calib_batches: int | None = None
    seed: int = 0
    providers: tuple | None = None


@dataclass(frozen=True)
class ReportSettings:
    """How the optional sections are measured.

    ``latency_runs=0`` skips the latency measurement; ``calibration_images`` caps the samples
    of calibration data scored (0: all). ``low_score`` defines a low-scoring channel
    as one scoring below that share of its group's median; ``damage_tolerance`` is the damage a
    sensitivity curve may reach at the recommended ratio (in the curve's metric).
    """

    latency_runs: int = 20
    warmup_runs: int = 3
    threads: int = 1
    low_score: float = 0.5
    max_ratio: float = 0.8
    damage_tolerance: float = 0.01
    bins: int = 10
    calibration_images: int = 512


@dataclass(frozen=True)
class TuneSettings:
    epochs: int = 3
    lr: float = 1e-3
    optimizer: str = "adamw"
    batch_size: int = 128
    temperature: float = 4.0
    alpha: float = 0.5
    augment: bool = False
    train_bn: bool = False
    seed: int = 0
    device: str = "auto"
    use_labels: bool = True
    # Issue 15.10: without eval_data, this share of the training data (at most ``holdout_max``
    # samples, spread evenly) is held out to choose the best epoch, so a run that hurts is caught; 0: train on all.
    holdout: float = 0.1
    holdout_max: int = 512

    def __post_init__(self):
        if not 0.0 <= self.holdout < 1.0:
            raise OnnxPruneError(f"--tune-holdout must be in [0, 1), got {self.holdout:g}")


# --- issue 18: label-free recovery -------------------------------------------------------------

RECOVER_MODES = ("global", "blockwise")
RECOVER_AUGMENTS = ("auto", "mixup", "none")
DEFAULT_RECOVER_TIME = 180.0  # seconds; ResNet-50 at 224 with 256 images stays within 10 min of compress on 2 cores
DEFAULT_RECOVER_EPOCHS = 30  # over the training part of the samples; the small bundled models finish well under 1 min


@dataclass(frozen=True)
class RecoverSettings:
    """What :func:`onnxprune.recover` does.

    ``time`` (seconds, whole stage) and ``steps`` (optimizer steps) bound the run, whichever ends
    first; ``None`` for ``time`` is :data:`DEFAULT_RECOVER_TIME`, and without ``steps`` the run is
    at most ``epochs`` passes over the training samples. ``mode`` "global" distils the whole model
    (outputs plus intermediate features); "blockwise" refits one block after the other (BRECQ).
    ``holdout`` is the held-out share of the samples (at least 16 samples) used for early stopping
    and for the never-worse guarantee. ``augment`` "auto" shifts image inputs by a few pixels
    (never flips) and leaves other inputs alone.
    """

    time: float | None = None
    steps: int | None = None
    epochs: int = DEFAULT_RECOVER_EPOCHS
    mode: str = "global"
    lr: float = 1e-3
    batch_size: int = 64
    temperature: float = 4.0
    feature_weight: float = 1.0
    max_features: int = 32
    holdout: float = 0.125
    patience: int | None = None  # stop after this many held-out evaluations without improvement (second half)
    augment: str = "auto"  # "auto" (image shifts) | "mixup" (shifts and mixup) | "none"
    seed: int = 0
    device: str = "cpu"
    max_samples: int = 4096

    def __post_init__(self):
        if self.mode not in RECOVER_MODES:
            raise OnnxPruneError(f"unknown recovery mode {self.mode!r}; available: {', '.join(RECOVER_MODES)}")
        if self.time is not None and not self.time > 0:
            raise OnnxPruneError(f"recovery time must be positive seconds, got {self.time}")
        if self.steps is not None and self.steps < 1:
            raise OnnxPruneError(f"recovery steps must be at least 1, got {self.steps}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not self.temperature > 0:
            raise OnnxPruneError("recovery epochs, batch size, learning rate and temperature must be positive")
        if not 0.0 < self.holdout < 1.0:
            raise OnnxPruneError(f"recovery holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.augment not in RECOVER_AUGMENTS:
            raise OnnxPruneError(f"recovery augment must be 'auto', 'mixup' or 'none', got {self.augment!r}")
        if self.max_samples < 2 or self.max_features < 0 or self.feature_weight < 0:
            raise OnnxPruneError("recovery max_samples must be at least 2, max_features and feature_weight at least 0")

    @property
    def budget(self) -> float:
        """The time budget in seconds (``time``, or the default)."""
        return DEFAULT_RECOVER_TIME if self.time is None else float(self.time)
