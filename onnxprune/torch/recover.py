"""Label-free recovery in torch: the pruned model learns to reproduce the original's outputs and
intermediate features on calibration samples (no labels), with its pruned channels left out.

Files: losses, captured runs and the feature matcher in :mod:`.recover_loss`, the optimisation
loop and budget in :mod:`.recover_fit`, the block-wise trainer in :mod:`.recover_blocks`.

Loss. Per model output: ``T**2 * KL`` of the tempered softmax for a classifier (a 2-D ``[N, C]``
output) and, per position, for sequence posteriors (a 3-D output whose last axis holds
probabilities, log-probabilities or comes from a (Log)Softmax node: CTC heads, ``[N, T, C]`` or
``[T, N, C]``); normalised MSE (``|s - t|^2 / |t|^2``) otherwise. Plus ``feature_weight`` times
the mean normalised MSE at intermediate tensors that exist in both models: the inputs of the
pruned model's weighted layers (what global AdaPrune matches), either unchanged in shape or
matched to the original's kept channels (``channels``).

Mask. The pruned model's channels are physically gone, so only the remaining weights train and
every shape stays as it is; BatchNormalization keeps its running statistics (small batches).

Guarantee. ``holdout`` of the samples (at least 16) never train; the held-out fidelity (KL at
T=1 or normalised MSE of the outputs) is measured before training and during it, the best state
is kept, and when nothing beats the start the pruned model comes back unchanged.

Budget and determinism. The run stops at the step budget, at the time budget (the number of
steps is fixed after a short warm-up from the measured step time, so the learning-rate schedule
is step-based) or, in the second half, after ``patience`` evaluations without improvement. With the same settings and
the same number of steps (``replay``) a CPU run is bit-for-bit reproducible.

Block-wise mode (BRECQ): the graph is cut where a single tensor carries everything forward
(residual block outputs); each block in turn learns to map the recovered prefix's output to the
original's block output, then the next block starts from the new prefix.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import OnnxPruneError
from .finetune import resolve_device
from .module import OnnxModule, to_torch, write_back
from .nodes import TORCH_DTYPES
from .recover_blocks import train_blockwise
from .recover_fit import PROBE, Budget, fit
from .recover_loss import Matcher, kl, output_kind, output_loss, run

MIN_HOLDOUT = 16
MEMORY_BUDGET = 2 << 30  # bytes of activations a training step may hold (student, its gradients, the teacher)
IMAGE_CHANNELS = (1, 3, 4)


# --------------------------------------------------------------------------------------------
# Data: split, batches, augmentation


def _is_image(t: torch.Tensor) -> bool:
    return t.dim() == 4 and t.is_floating_point() and t.shape[1] in IMAGE_CHANNELS and min(t.shape[2:]) >= 16


def shift_images(x: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Shift every NCHW image by up to ``max_shift`` pixels each way (edge pixels repeated): a
    small translation keeps the label of any image task, unlike a flip (text, digits, lanes)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


class Samples:
    """All samples as tensors, split once (seeded) into training and held-out parts."""

    def __init__(self, arrays: dict[str, np.ndarray], student: OnnxModule, teacher: OnnxModule, settings, device):
        dtypes = {**{n: TORCH_DTYPES.get(e) for n, e in teacher.input_types.items()},
                  **{n: TORCH_DTYPES.get(e) for n, e in student.input_types.items()}}
        names = list(dict.fromkeys(student.input_names + teacher.input_names))
        missing = [n for n in names if n not in arrays]
        if missing:
            raise OnnxPruneError(f"recovery data lacks model input(s) {missing}")
        self.x = {n: torch.from_numpy(np.ascontiguousarray(arrays[n])).to(device=device, dtype=dtypes.get(n)) for n in names}
        self.n = len(next(iter(self.x.values())))
        generator = torch.Generator().manual_seed(settings.seed)
        order = torch.randperm(self.n, generator=generator)
        held = max(MIN_HOLDOUT, int(round(self.n * settings.holdout)))
        self.heldout, self.train = order[:held].sort().values, order[held:]
        self.augment = settings.augment in ("auto", "mixup")
        self.mixup = settings.augment == "mixup"
        self.images = {n for n, t in self.x.items() if self.augment and _is_image(t)}

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t[index.to(t.device)] for n, t in self.x.items()}

    def chunks(self, index: torch.Tensor, size: int):
        for start in range(0, len(index), size):
            yield self.take(index[start : start + size])

    def augmented(self, batch: dict, generator: torch.Generator) -> dict:
        """Image inputs: each image shifted by up to 1/14 of its size (2 pixels at 28, 16 at 224);
        with ``augment="mixup"`` half of the batch is also mixed with another image (weight up to
        0.5: the original model scores any input, labels play no part)."""
        out = dict(batch)
        for name in self.images:
            t = shift_images(batch[name], generator, max(1, round(min(batch[name].shape[2:]) / 14)))
            if self.mixup:
                n = t.shape[0]
                partner = torch.randperm(n, generator=generator).to(t.device)
                weight = torch.rand(n, generator=generator) * 0.5
                weight[torch.rand(n, generator=generator) < 0.5] = 0.0
                weight = weight.to(t.device, t.dtype).view(-1, *([1] * (t.dim() - 1)))
                t = (1 - weight) * t + weight * t[partner]
            out[name] = t
        return out


# --------------------------------------------------------------------------------------------
# Evaluation


class HeldOut:
    """Teacher outputs on the held-out samples, computed once; scores a student against them."""

    def __init__(self, samples: Samples, teacher: OnnxModule, batch_size: int):
        self.samples, self.batch_size = samples, batch_size
        self.kinds: list[str] = []
        with torch.no_grad():
            self.targets = [run(teacher, b)[0] for b in samples.chunks(samples.heldout, batch_size)]

    @torch.no_grad()
    def score(self, student: OnnxModule) -> dict:
        """``loss`` (summed over outputs: KL at T=1 per position, or normalised MSE) and, for
        the first classifier-like output, ``agreement`` (share of positions whose arg-max matches)."""
        was = student.training
        student.eval()
        num, den = np.zeros(len(self.kinds)), np.zeros(len(self.kinds))
        first = next((k for k, kind in enumerate(self.kinds) if kind in ("class", "seq")), None)
        agree = 0
        for batch, target in zip(self.samples.chunks(self.samples.heldout, self.batch_size), self.targets):
            outs = run(student, batch)[0]
            for k, (kind, s, t) in enumerate(zip(self.kinds, outs, target)):
                if kind in ("class", "seq"):
                    positions = s.numel() // s.shape[-1]
                    num[k] += float(kl(s, t, 1.0)) * positions
                    den[k] += positions
                    if k == first:
                        agree += int((s.argmax(-1) == t.argmax(-1)).sum())
                elif kind == "mse":
                    num[k] += float(((s.double() - t.double()) ** 2).sum())
                    den[k] += float((t.double() ** 2).sum())
        student.train(was)
        out = {"loss": float(sum(n / max(d, 1e-30) for n, d in zip(num, den) if d))}
        if first is not None:
            out["agreement"] = agree / den[first]
        return out


# --------------------------------------------------------------------------------------------
# The run


@contextmanager
def _deterministic():
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def distil(pruned: onnx.ModelProto, original: onnx.ModelProto, arrays: dict[str, np.ndarray], settings,
           channels: dict, progress=None, replay: dict | None = None) -> tuple[onnx.ModelProto, dict]:
    """Recover ``pruned`` from ``original`` on ``arrays``; ``(model, report)`` (see the module doc)."""
    t0 = time.perf_counter()
    with _deterministic():
        torch.manual_seed(settings.seed)
        dev = resolve_device(settings.device)
        student = to_torch(pruned).to(dev)
        teacher = to_torch(original).to(dev).eval().requires_grad_(False)
        samples = Samples(arrays, student, teacher, settings, dev)
        report: dict[str, Any] = {"mode": settings.mode, "train_samples": len(samples.train),
                                  "heldout_samples": len(samples.heldout), "augment": sorted(samples.images)}
        if len(samples.train) < MIN_HOLDOUT:
            unchanged = onnx.ModelProto()
            unchanged.CopyFrom(pruned)
            return unchanged, {**report, "kept": "unchanged", "steps": 0, "seconds": round(time.perf_counter() - t0, 3),
                               "stopped": f"skipped: {samples.n} samples, recovery needs at least {2 * MIN_HOLDOUT}"}
        settings = replace(settings, batch_size=batch_size(student, samples, settings.batch_size))
        report["batch_size"] = settings.batch_size
        heldout = HeldOut(samples, teacher, settings.batch_size)  # its targets tell the output kinds
        producer = {o: nd.op for nd in teacher.nodes for o in nd.outputs}
        kinds = heldout.kinds = [output_kind(t, producer.get(n)) for t, n in zip(heldout.targets[0], teacher.output_names)]
        train = train_blockwise if settings.mode == "blockwise" else _train_global
        best_state, info = train(student, teacher, samples, heldout, kinds, channels, settings, t0, progress, replay)
    report.update(info)
    report["seconds"] = round(time.perf_counter() - t0, 3)
    if best_state is None:
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(pruned)
        report["kept"] = "unchanged"
        return unchanged, report
    student.load_state_dict(best_state)
    return write_back(student, pruned), report


@torch.no_grad()
def batch_size(student: OnnxModule, samples: Samples, most: int) -> int:
    """Samples per step: at most ``most``, fewer where one sample's activations are large (a
    step keeps every student activation for the backward pass, about three times one forward;
    64 images of ResNet-50 at 224 would hold some 15 GB)."""
    one = samples.take(samples.train[:1])
    env = student.environment()
    env.update({n: one[n] for n in student.input_names})
    names = {o for nd in student.nodes for o in nd.outputs if o}
    per_sample = sum(t.numel() * t.element_size() for t in student.execute(env, capture=names).values()
                     if isinstance(t, torch.Tensor))
    return int(max(1, min(most, len(samples.train), MEMORY_BUDGET // max(3 * per_sample, 1))))


def _train_global(student, teacher, samples, heldout, kinds, channels, settings, t0, progress, replay):
    """Whole-model distillation (outputs + features); returns (best state or None, report items)."""
    probe = samples.take(samples.train[: min(PROBE, len(samples.train))])
    matcher = Matcher(student, teacher, channels, probe, settings.max_features) if settings.feature_weight > 0 else None
    names = list(matcher.select) if matcher else []
    generator = torch.Generator().manual_seed(settings.seed + 1)

    def batch_loss(index: torch.Tensor) -> torch.Tensor:
        batch = samples.augmented(samples.take(samples.train[index]), generator)
        with torch.no_grad():
            t_out, t_feats = run(teacher, batch, names)
        s_out, s_feats = run(student, batch, names)
        loss = output_loss(kinds, s_out, t_out, settings.temperature)
        feat = matcher.loss(s_feats, t_feats) if matcher else None
        return loss if feat is None else loss + settings.feature_weight * feat

    bs = min(settings.batch_size, len(samples.train))
    by_steps = settings.steps if settings.steps is not None else settings.epochs * math.ceil(len(samples.train) / bs)
    budget = Budget(t0 + settings.budget, by_steps, 0.0, replay)
    params = [p for p in student.parameters() if p.requires_grad]
    best_state, info = fit(student, params, batch_loss, len(samples.train), lambda: heldout.score(student), budget,
                           settings, generator, progress)
    info["features"] = len(names)
    return best_state, info
