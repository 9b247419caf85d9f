"""What a compression did to the model's outputs, measured on samples it was not calibrated on
(issue 15.13), and the identity of the calibration data that a plan records (issue 15.8).

Without ``eval_data``, ``compress`` holds out part of ``data``: ``holdout_count`` samples (a
fifth, at most ``max_samples``) spread evenly over the data, so that a folder of class
sub-directories keeps every class on both sides. The rest calibrates. The split depends only on
the number of samples, so ``apply_plan`` repeats it from the plan's record.

    calib, held = split_holdout(dataset, holdout_count(dataset.num_samples, 0.2, 512))
    evaluate_pair(original, pruned, held)   # {"before": {...}, "after": {...}, "samples": N}

Models run through ``scoring.calibrate.run_model`` and ``runtime.session`` (the one place that
opens onnxruntime sessions).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx

from .data import ArrayDataset, Dataset, ImageFolderDataset, declared_batch
from .errors import PlanError
from .rewrite import random_inputs
from .runtime.session import interleaved_latency
from .scoring.calibrate import run_model

MIN_SAMPLES_TO_SPLIT = 10  # fewer samples all calibrate: two held-out samples measure nothing

# Issue 15.11: what a data-free compress says instead of a measurement (it has nothing to measure on).
DATA_FREE_NOTE = (
    "data-free: channels chosen by {criterion} weight scores and nothing compensates the removed ones, so expect a "
    "large accuracy loss until the model is fine-tuned (docs/ACCURACY.md: ResNet-20 at 30% FLOPs, top-1 92.8% -> "
    "36.7% with l1; 91.7-92.2% with --data and its default LDRF reconstruction). Give --data with a few hundred "
    "representative inputs (it also measures the result), or fine-tune (--finetune)")


def holdout_count(num_samples: int | None, fraction: float, max_samples: int) -> int:
    """How many samples to hold out of ``num_samples`` (0 where the split is not possible)."""
    if not fraction or num_samples is None or num_samples < MIN_SAMPLES_TO_SPLIT:
        return 0
    return int(min(max_samples, np.floor(num_samples * fraction)))


def holdout_indices(num_samples: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(num_samples)`` (deterministic)."""
    if count <= 0:
        return np.zeros(0, np.int64)
    return np.unique(np.floor((np.arange(count) + 0.5) * num_samples / count).astype(np.int64))


def subset(dataset: Dataset, indices: np.ndarray) -> Dataset:
    """The samples at ``indices`` (in order) of an in-memory or image-folder dataset."""
    if not isinstance(dataset, (ArrayDataset, ImageFolderDataset)):  # pragma: no cover - callers split only these
        raise TypeError(f"cannot split a {type(dataset).__name__}")
    return dataset.select(indices)


def split_holdout(dataset: Dataset, count: int) -> tuple[Dataset, Dataset | None]:
    """(calibration part, held-out part or ``None``)."""
    if count <= 0 or not isinstance(dataset, (ArrayDataset, ImageFolderDataset)):
        return dataset, None
    held = holdout_indices(dataset.num_samples, count)
    rest = np.setdiff1d(np.arange(dataset.num_samples), held)
    return subset(dataset, rest), subset(dataset, held)


def data_fingerprint(dataset: Dataset | None) -> str | None:
    """sha256 of what calibration reads: the arrays' names, dtypes, shapes and bytes; for an
    image folder the file names and bytes and the preprocessing. ``None`` for a one-shot stream
    (reading it to hash it would consume it)."""
    if dataset is None:
        return None
    h = hashlib.sha256()
    if isinstance(dataset, ArrayDataset):
        for name in sorted(dataset.arrays):
            a = np.ascontiguousarray(dataset.arrays[name])
            h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
            h.update(a.tobytes())
    elif isinstance(dataset, ImageFolderDataset):
        h.update(json.dumps({"size": list(dataset.size), "mean": dataset.mean.tolist(), "std": dataset.std.tolist(),
                             "order": dataset.channel_order, "crop": dataset.crop_fraction}).encode())
        for f in dataset.files:
            h.update(f"\n{Path(f).parent.name}/{Path(f).name}\n".encode())  # class folder and file name
            h.update(Path(f).read_bytes())
    else:
        if getattr(dataset, "one_shot", True):
            return None
        for feed in dataset.batches():
            for name in sorted(feed):
                a = np.ascontiguousarray(feed[name])
                h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
                h.update(a.tobytes())
    return "sha256:" + h.hexdigest()


def evaluate_pair(original, pruned, dataset: Dataset, providers=None) -> dict:
    """Both models on ``dataset``, compared on their first output.

    ``top1`` (with labels): argmax of the flattened output per sample against the label;
    ``agreement``: share of positions where the pruned model's argmax over the last axis equals
    the original's (a classifier: per sample; a sequence model: per step); ``output_error``:
    ||after - before|| / ||before|| over all values (float64).
    """
    batch = declared_batch(dataset.specs) or 32
    name = original.graph.output[0].name
    y0 = run_model(original, dataset, providers=providers, output_names=[name], batch_size=batch)[name]
    y1 = run_model(pruned, dataset, providers=providers, output_names=[name], batch_size=batch)[name]
    y0, y1 = y0.astype(np.float64), y1.astype(np.float64)
    n = int(dataset.num_samples or len(y0))
    before, after = {}, {}
    if dataset.labels is not None and len(y0) == len(dataset.labels):
        before["top1"] = round(float((y0.reshape(len(y0), -1).argmax(1) == dataset.labels).mean()), 6)
        after["top1"] = round(float((y1.reshape(len(y1), -1).argmax(1) == dataset.labels).mean()), 6)
    if y0.ndim >= 2 and y0.shape[-1] > 1:
        after["agreement"] = round(float((y0.argmax(-1) == y1.argmax(-1)).mean()), 6)
    norm = float(np.linalg.norm(y0))
    after["output_error"] = float(f"{float(np.linalg.norm(y1 - y0)) / norm:.6g}") if norm > 0 else None  # 6 digits, not places
    return {"before": before, "after": after, "samples": n, "output": name}


def plan_calibration_data(plan, dataset: Dataset, other_data: bool) -> Dataset:
    """The calibration part of ``dataset`` as ``compress`` split it; a dataset that is not the
    one the plan was made with raises PlanError (issue 15.8), or warns with ``other_data``."""
    import warnings

    held = plan.settings.get("holdout", 0)
    if held and dataset.num_samples == plan.settings.get("data_samples"):
        dataset, _ = split_holdout(dataset, held)
    want = plan.settings.get("data_fingerprint")
    if want is None:
        return dataset
    got = data_fingerprint(dataset)
    if got != want:
        message = (f"the data differs from the plan's calibration data (plan {want[:19]}..., data "
                   f"{(got or 'unreadable stream')[:19]}...): the reconstructed weights will differ from compress's")
        if not other_data:
            raise PlanError(message + "; pass the same --data, or --force to apply anyway")
        warnings.warn(message, stacklevel=2)
    return dataset


def measure_speedup(original: onnx.ModelProto, pruned: onnx.ModelProto, shapes, runs: int) -> dict:
    """The measured speed-up that ``compress`` prints (issue 15.13): the report's interleaved
    latency measurement (1 thread, random inputs of ``shapes``), so both say the same."""
    return interleaved_latency(original, pruned, random_inputs(original, shapes, seed=0), runs=runs, threads=1)
