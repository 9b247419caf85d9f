"""Fine-tuning glue: datasets -> shuffled batch factories -> ``onnxprune.torch.finetune``.

Kept apart from ``onnxprune.torch`` so the pipeline and the CLI can describe fine-tuning without
importing torch; torch is imported only when a run starts (``pip install 'onnxprune[torch]'``).

    result = finetune_model(pruned, "train.npz", teacher=original, epochs=3, eval_data="val.npz")
    result.model, result.history
"""

from __future__ import annotations

import numpy as np
import onnx

from .data import ArrayDataset, input_specs, load_data
from .errors import DataError, require_torch
from .evaluation import holdout_count, split_holdout
from .settings import TuneSettings


def shuffled_batches(dataset, batch_size: int, seed: int, use_labels: bool = True):
    """A factory of batches with labels; in-memory data is reshuffled every epoch (seeded)."""
    rng = np.random.default_rng(seed)
    labels = dataset.labels if use_labels else None

    def batches():
        if isinstance(dataset, ArrayDataset):
            order = rng.permutation(dataset.num_samples)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = {k: v[idx] for k, v in dataset.arrays.items()}
                if labels is not None:
                    batch["labels"] = labels[idx]
                yield batch
            return
        yield from ordered_batches(dataset, batch_size)() if labels is not None else dataset.batches(batch_size)

    return batches


def ordered_batches(dataset, batch_size: int):
    """A factory of batches in the data's order, with labels when the data has them."""

    def batches():
        seen = 0
        for batch in dataset.batches(batch_size):
            n = len(next(iter(batch.values())))
            if dataset.labels is not None:
                batch = {**batch, "labels": dataset.labels[seen : seen + n]}
            seen += n
            yield batch

    return batches


def finetune_model(student: onnx.ModelProto, data, *, teacher: onnx.ModelProto | None = None, eval_data=None,
                   settings: TuneSettings = TuneSettings(), progress=None):
    """Fine-tune ``student`` on ``data`` (labels if present and ``use_labels``; distillation from
    ``teacher`` if given). Returns ``onnxprune.torch.FinetuneResult``."""
    require_torch()
    from .torch import finetune

    specs = input_specs(student)
    train = load_data(data, specs)
    if teacher is None and (train.labels is None or not settings.use_labels):
        raise DataError("fine-tuning needs labels in the training data or a --teacher model to distil from")
    evalset = load_data(eval_data, specs) if eval_data is not None else None
    source = "eval_data" if evalset is not None else None
    if evalset is None:
        train, evalset = split_holdout(train, holdout_count(train.num_samples, settings.holdout, settings.holdout_max))
        source = f"{evalset.num_samples} samples held out of the training data" if evalset is not None else None
    eval_fn = ordered_batches(evalset, settings.batch_size) if evalset is not None else None
    result = finetune(
        student, shuffled_batches(train, settings.batch_size, settings.seed, settings.use_labels), teacher=teacher,
        epochs=settings.epochs, lr=settings.lr, optimizer=settings.optimizer, temperature=settings.temperature,
        alpha=settings.alpha, eval_batches_fn=eval_fn, augment=settings.augment, train_bn=settings.train_bn,
        seed=settings.seed, device=settings.device, progress=progress,
    )
    result.eval_source = source  # what chose the best epoch (None: nothing; the last epoch is kept)
    return result


def describe_tuning(result) -> str:
    """One line that says what fine-tuning did (issue 15.10): which epoch was kept, by what
    measure, and when no epoch improved on the input that its weights were written back."""
    source = getattr(result, "eval_source", None)
    if source is None:
        return (f"kept the last epoch ({result.best_epoch}) unchecked: no evaluation data "
                "(give --eval-data, or leave --holdout above 0)")
    first, best = result.history[0], result.history[result.best_epoch]
    key = "eval_acc" if first.get("eval_acc") is not None else "eval_distill_loss"
    what = "top-1" if key == "eval_acc" else "distillation loss"
    if result.best_epoch == 0:
        last = result.history[-1]
        return (f"no epoch improved on the input model ({what} {first[key]:.4f} before, {last[key]:.4f} after the last "
                f"epoch, on {source}): its weights were written back unchanged")
    return (f"kept epoch {result.best_epoch} of {len(result.history) - 1}: {what} {first[key]:.4f} -> {best[key]:.4f} "
            f"on {source}")
