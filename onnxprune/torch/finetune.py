"""Fine-tune an ONNX model in PyTorch, optionally distilling from a teacher ONNX model.

After pruning, a short fine-tuning run recovers most of the lost accuracy, and the unpruned
model is the natural teacher. ``finetune`` runs the student through :func:`to_torch`, trains
it, and returns the trained weights written back into a copy of the student ONNX model.

Data is a factory of batches, called once per epoch, so any source (numpy arrays, a torch
DataLoader wrapped in a generator, files) fits::

    def batches():
        for i in range(0, len(images), 64):
            yield {"input": images[i:i + 64], "labels": labels[i:i + 64]}

    result = finetune(pruned, batches, teacher=original, epochs=3, lr=1e-3,
                      eval_batches_fn=val_batches)
    onnx.save(result.model, "pruned_finetuned.onnx")

Loss. With a teacher: ``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, the
distillation term of Hinton et al. (the ``T**2`` keeps its gradients comparable across
temperatures). With labels: cross-entropy. With both: ``alpha * distill + (1 - alpha) * CE``.
The learning rate follows a cosine schedule from ``lr`` to 0 over the run (per step when the
batch iterable has a ``len()``, otherwise per epoch).

Model selection. When there is evaluation data (``eval_batches_fn`` or ``eval_fn``) the untouched
student is evaluated first (history entry ``epoch 0``) and the best epoch is kept: highest
evaluation accuracy, or, without labels, lowest evaluation distillation loss. If no epoch beats
the starting point the result is the unchanged student. Without evaluation data the last epoch
is kept.

The library never prints: pass ``progress`` to receive one dict per step and per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from ..errors import DataError, OnnxPruneError
from .module import OnnxModule, to_torch, write_back
from .nodes import TORCH_DTYPES

Batch = dict[str, np.ndarray]
BatchesFn = Callable[[], Iterable[Batch]]
Progress = Callable[[dict[str, Any]], None]


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes:
        model: a new ModelProto with the weights of the best epoch (the student is unchanged).
        history: one dict per epoch with keys ``epoch``, ``loss`` (mean training loss),
            ``distill_loss`` (mean training distillation term), ``train_acc``, ``eval_acc``,
            ``eval_distill_loss``, ``lr`` (at the epoch's last step) and ``steps``; values that
            do not apply are None. With evaluation data, ``history[0]`` is the untouched
            student (``epoch`` 0, training fields None).
        best_epoch: the epoch whose weights are in ``model`` (0: the untouched student).
    """

    model: onnx.ModelProto
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0


def finetune(
    student: onnx.ModelProto,
    batches_fn: BatchesFn,
    *,
    teacher: onnx.ModelProto | None = None,
    epochs: int = 1,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    temperature: float = 4.0,
    alpha: float = 0.5,
    label_key: str = "labels",
    eval_batches_fn: BatchesFn | None = None,
    eval_fn: Callable[[OnnxModule], float] | None = None,
    augment: bool = False,
    train_bn: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
) -> FinetuneResult:
    """Train ``student`` on the batches, distilling from ``teacher`` and/or fitting labels.

    Args:
        student: the ONNX model to train (not modified). Its first output is the logits.
        batches_fn: called once per epoch; returns an iterable of dicts mapping each model
            input name to an array (N, ...) and, optionally, ``label_key`` to class indices (N,)
            or class probabilities (N, C).
        teacher: ONNX model whose first output gives the target logits; run by the torch
            bridge in eval mode without gradients, on the same (augmented) inputs.
        epochs, lr: number of passes and peak learning rate (cosine-annealed to 0).
        optimizer: ``"adamw"`` or ``"sgd"`` (with ``momentum``); ``weight_decay`` for both.
        temperature, alpha: distillation temperature T and weight of the distillation term
            when labels are present too (``alpha * distill + (1 - alpha) * cross-entropy``).
        eval_batches_fn: evaluation batches (same format); gives ``eval_acc`` when they carry
            labels and ``eval_distill_loss`` when there is a teacher.
        eval_fn: custom score of the module in eval mode, higher is better; when given it is
            reported (and selects the best epoch) as ``eval_acc``.
        augment: random horizontal flip and random crop (zero padding of 4 pixels, then a
            crop of the original size, as for CIFAR) of every 4-D float input, i.e. NCHW
            images; the teacher sees the same augmented images. Off by default.
        train_bn: let BatchNormalization use and update batch statistics (see ``to_torch``).
        seed: seeds the augmentation; on the CPU a run is bit-for-bit reproducible.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        progress: called with ``{"event": "step", "epoch", "step", "loss", "lr"}`` after every
            step and ``{"event": "epoch", ...history entry}`` after every epoch (and after the
            evaluation of the untouched student, as epoch 0).

    Raises:
        DataError: a batch lacks a model input, or there is neither a teacher nor labels.
        OnnxPruneError: an invalid setting, or the loss became NaN/inf (lower the learning rate).
    """
    _check_settings(epochs, lr, optimizer, temperature, alpha)
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    model = to_torch(student, train_bn=train_bn).to(dev)
    teacher_model = to_torch(teacher).to(dev).eval().requires_grad_(False) if teacher is not None else None
    opt = _optimizer(optimizer, model, lr, weight_decay, momentum)
    loader = _Loader(model, teacher_model, label_key, dev)
    loss_fn = _Loss(temperature, alpha)
    run = _Run(model, teacher_model, opt, loader, loss_fn, lr, epochs, augment, generator, progress)

    evaluate = eval_batches_fn is not None or eval_fn is not None
    history: list[dict[str, Any]] = []
    best_epoch, best_state = epochs, None
    if evaluate:
        history.append({**_empty_entry(0), **_evaluate(model, teacher_model, loader, loss_fn, eval_batches_fn, eval_fn)})
        best_epoch = 0
        _report(progress, history[0])
    for epoch in range(1, epochs + 1):
        entry = run.epoch(epoch, batches_fn)
        if evaluate:
            entry.update(_evaluate(model, teacher_model, loader, loss_fn, eval_batches_fn, eval_fn))
            if _better(entry, history[best_epoch]):  # history[k] is epoch k
                best_epoch = epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        history.append(entry)
        _report(progress, entry)
    if best_epoch == 0:  # no epoch beat the untouched student
        result = onnx.ModelProto()
        result.CopyFrom(student)
        return FinetuneResult(result, history, 0)
    if best_state is not None:
        model.load_state_dict(best_state)
    return FinetuneResult(write_back(model, student), history, best_epoch)


def _report(progress: Progress | None, entry: dict[str, Any]) -> None:
    if progress is not None:
        progress({"event": "epoch", **entry})


# --------------------------------------------------------------------------------------------
# Settings


def _check_settings(epochs: int, lr: float, optimizer: str, temperature: float, alpha: float) -> None:
    if epochs < 1:
        raise OnnxPruneError(f"epochs must be at least 1, got {epochs}")
    if not lr > 0:
        raise OnnxPruneError(f"lr must be positive, got {lr}")
    if optimizer not in ("sgd", "adamw"):
        raise OnnxPruneError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if not temperature > 0:
        raise OnnxPruneError(f"temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise OnnxPruneError(f"alpha must be in [0, 1], got {alpha}")


def resolve_device(device: str | torch.device) -> torch.device:
    """Resolve ``"auto"`` to CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OnnxPruneError(f"device {device!r} was requested but CUDA is not available to torch")
    return dev


def _optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float, momentum: float):
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cosine_lr(base_lr: float, step: int, total: int) -> float:
    """Cosine annealing from ``base_lr`` (step 0) towards 0 (step ``total``)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / max(total, 1)))


# --------------------------------------------------------------------------------------------
# Data


class _Loader:
    """Turns batch dicts into tensors on the device, with a clear error for missing inputs."""

    def __init__(self, model: OnnxModule, teacher: OnnxModule | None, label_key: str, device: torch.device):
        self.names = list(dict.fromkeys(model.input_names + (teacher.input_names if teacher else [])))
        self.dtypes = _input_dtypes(model, teacher)
        self.label_key = label_key
        self.device = device

    def __call__(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        if not isinstance(batch, dict):
            raise DataError(f"a batch must be a dict of input name -> array, got {type(batch).__name__}")
        missing = [n for n in self.names if n not in batch]
        if missing:
            raise DataError(f"batch lacks model input(s) {missing}; it has {sorted(batch)}")
        inputs = {n: self._tensor(batch[n], self.dtypes.get(n)) for n in self.names}
        labels = batch.get(self.label_key)
        if labels is not None:
            labels = torch.as_tensor(np.asarray(labels)).to(self.device)
            labels = labels.long() if not labels.is_floating_point() else labels.float()
        return inputs, labels

    def _tensor(self, value: Any, dtype: torch.dtype | None) -> torch.Tensor:
        t = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        return t.to(device=self.device, dtype=dtype or t.dtype)


def _input_dtypes(*models: OnnxModule | None) -> dict[str, torch.dtype]:
    """Declared input element types, so float64 arrays feed a float32 model."""
    dtypes = {}
    for m in models:
        for name, elem in (m.input_types.items() if m is not None else ()):
            if elem in TORCH_DTYPES:
                dtypes.setdefault(name, TORCH_DTYPES[elem])
    return dtypes


def augment_images(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random horizontal flip and random crop (after zero padding by ``pad``) of NCHW images."""
    n, _, h, w = x.shape
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(-1, 1, 1, 1)
    x = torch.where(flip, x.flip(3), x)
    if pad <= 0:
        return x
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def _augment(inputs: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: augment_images(v, generator) if v.dim() == 4 and v.is_floating_point() else v for k, v in inputs.items()}


# --------------------------------------------------------------------------------------------
# Loss and metrics


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T**2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch."""
    t = temperature
    log_p = F.log_softmax(student_logits / t, dim=1)
    log_q = F.log_softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


class _Loss:
    """Distillation and/or cross-entropy, whichever signals the batch provides."""

    def __init__(self, temperature: float, alpha: float):
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, logits, teacher_logits, labels) -> tuple[torch.Tensor, torch.Tensor | None]:
        if teacher_logits is None and labels is None:
            raise DataError("nothing to learn from: pass a teacher or put labels in the batches")
        distill = None if teacher_logits is None else distillation_loss(logits, teacher_logits, self.temperature)
        if labels is None:
            return distill, distill
        ce = F.cross_entropy(logits, labels)
        if distill is None:
            return ce, None
        return self.alpha * distill + (1.0 - self.alpha) * ce, distill


def _logits(output: Any) -> torch.Tensor:
    """The first model output as (N, classes)."""
    out = output[0] if isinstance(output, tuple) else output
    return out.reshape(out.shape[0], -1)


def _correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    target = labels.argmax(1) if labels.is_floating_point() else labels
    return int((logits.argmax(1) == target).sum())


def _forward(model: OnnxModule, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return _logits(model(**{n: inputs[n] for n in model.input_names}))


# --------------------------------------------------------------------------------------------
# Training and evaluation


class _Run:
    """One training run: the epoch loop with learning-rate schedule and bookkeeping."""

    def __init__(self, model, teacher, opt, loader, loss_fn, lr, epochs, augment, generator, progress):
        self.model, self.teacher, self.opt = model, teacher, opt
        self.loader, self.loss_fn = loader, loss_fn
        self.lr, self.epochs = lr, epochs
        self.augment, self.generator, self.progress = augment, generator, progress

    def _set_lr(self, epoch: int, step: int, steps: int | None) -> float:
        if steps:  # known epoch length: anneal per step
            lr = cosine_lr(self.lr, (epoch - 1) * steps + step, self.epochs * steps)
        else:
            lr = cosine_lr(self.lr, epoch - 1, self.epochs)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def epoch(self, epoch: int, batches_fn: BatchesFn) -> dict[str, Any]:
        """Train for one pass over ``batches_fn()``; return the epoch's history entry."""
        self.model.train()
        batches = batches_fn()
        steps = len(batches) if hasattr(batches, "__len__") else None
        totals = _Totals()
        lr = self.lr
        for step, batch in enumerate(batches):
            inputs, labels = self.loader(batch)
            if self.augment:
                inputs = _augment(inputs, self.generator)
            lr = self._set_lr(epoch, step, steps)
            loss, distill, logits = self._step(inputs, labels)
            if not math.isfinite(loss):
                raise OnnxPruneError(
                    f"the loss became {loss} at epoch {epoch}, step {step}: training diverged (lower lr) "
                    "or the batch holds non-finite values"
                )
            totals.add(logits, labels, loss, distill)
            if self.progress is not None:
                self.progress({"event": "step", "epoch": epoch, "step": step, "loss": loss, "lr": lr})
        if totals.count == 0:
            raise DataError("batches_fn() yielded no batches")
        return {**_empty_entry(epoch), **totals.summary("loss", "distill_loss", "train_acc"), "lr": lr, "steps": totals.steps}

    def _step(self, inputs, labels) -> tuple[float, float | None, torch.Tensor]:
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = _forward(self.teacher, inputs)
        logits = _forward(self.model, inputs)
        loss, distill = self.loss_fn(logits, teacher_logits, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach()), None if distill is None else float(distill.detach()), logits.detach()


class _Totals:
    """Batch-size weighted sums of losses and correct predictions over an epoch."""

    def __init__(self):
        self.count = self.steps = 0
        self.loss = 0.0
        self.distill = self.correct = self.labelled = None

    def add(self, logits, labels, loss: float | None, distill: float | None) -> None:
        n = logits.shape[0]
        self.count += n
        self.steps += 1
        self.loss = None if loss is None else self.loss + loss * n
        if distill is not None:
            self.distill = (self.distill or 0.0) + distill * n
        if labels is not None:
            self.correct = (self.correct or 0) + _correct(logits, labels)
            self.labelled = (self.labelled or 0) + n

    def summary(self, loss_key: str | None, distill_key: str, acc_key: str) -> dict[str, Any]:
        out = {
            distill_key: None if self.distill is None else self.distill / self.count,
            acc_key: None if self.labelled is None else self.correct / self.labelled,
        }
        if loss_key:
            out[loss_key] = None if self.loss is None else self.loss / self.count
        return out


def _empty_entry(epoch: int) -> dict[str, Any]:
    keys = ("loss", "distill_loss", "train_acc", "eval_acc", "eval_distill_loss", "lr", "steps")
    return {"epoch": epoch, **dict.fromkeys(keys)}


@torch.no_grad()
def _evaluate(model, teacher, loader, loss_fn, eval_batches_fn, eval_fn) -> dict[str, Any]:
    """Evaluation accuracy and distillation loss (None where they do not apply)."""
    model.eval()
    out: dict[str, Any] = {"eval_acc": None, "eval_distill_loss": None}
    if eval_batches_fn is not None:
        totals = _Totals()
        for batch in eval_batches_fn():
            inputs, labels = loader(batch)
            logits = _forward(model, inputs)
            distill = None
            if teacher is not None:
                distill = float(distillation_loss(logits, _forward(teacher, inputs), loss_fn.temperature))
            totals.add(logits, labels, None, distill)
        if totals.count == 0:
            raise DataError("eval_batches_fn() yielded no batches")
        out.update(totals.summary(None, "eval_distill_loss", "eval_acc"))
    if eval_fn is not None:
        out["eval_acc"] = float(eval_fn(model))
    model.train()
    return out


def _better(entry: dict[str, Any], best: dict[str, Any]) -> bool:
    """Higher evaluation accuracy wins; without accuracy, lower evaluation distillation loss."""
    if entry["eval_acc"] is not None:
        return entry["eval_acc"] > best["eval_acc"]
    if entry["eval_distill_loss"] is not None:
        return entry["eval_distill_loss"] < best["eval_distill_loss"]
    return True
