"""Datasets: feed dicts in a fixed order, restartable, at any batch size.

:class:`ArrayDataset` holds arrays in memory (with ``select`` for the held-out split);
:class:`IterableDataset` checks and re-batches any iterable of feed dicts on the fly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import DataError
from .specs import DEFAULT_BATCH_SIZE, InputSpec, array_notes, cast_array, check_array, check_labels, pick_inputs


class Dataset:
    """Feed dicts for a model, in a fixed order, restartable, at any batch size.

    ``num_samples`` is ``None`` where it is unknown before reading (a plain iterable); ``labels``
    is an int64 array aligned with the samples, or ``None``.
    """

    specs: list[InputSpec]
    labels: np.ndarray | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    notes: tuple[str, ...] = ()  # what was read from where, where it is not obvious (issue 15.7)

    @property
    def num_samples(self) -> int | None:
        raise NotImplementedError

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """A fresh iterator over ``{input_name: array[batch, ...]}``; the last batch may be smaller."""
        raise NotImplementedError

    def take(self, n: int) -> Dataset:
        """The first ``n`` samples."""
        raise NotImplementedError


class ArrayDataset(Dataset):
    """Samples held in memory as one array per input (from .npz, .npy or a dict of arrays)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], *,
                 labels: np.ndarray | None = None, source: str = "the data",
                 batch_size: int | None = None):
        self.specs = list(specs)
        self.source = source
        self.notes = array_notes(arrays, self.specs, source)
        arrays = pick_inputs(arrays, self.specs, source)
        for spec in self.specs:
            check_array(spec.name, arrays[spec.name], spec)
        counts = {name: len(a) for name, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise DataError(f"inputs in {source} have different numbers of samples: {counts}")
        self._n = next(iter(counts.values()), 0)
        if self._n == 0:
            raise DataError(f"no samples in {source}")
        self.arrays = arrays
        self.labels = check_labels(labels, self._n, source)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE

    @property
    def num_samples(self) -> int:
        return self._n

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        size = batch_size or self.batch_size
        spec_of = {s.name: s for s in self.specs}
        for start in range(0, self._n, size):
            yield {k: cast_array(k, a[start : start + size], spec_of[k]) for k, a in self.arrays.items()}

    def take(self, n: int) -> ArrayDataset:
        out = copy.copy(self)
        out.arrays = {k: a[:n] for k, a in self.arrays.items()}
        out._n = min(n, self._n)
        out.labels = None if self.labels is None else self.labels[:n]
        return out

    def select(self, indices: np.ndarray) -> ArrayDataset:
        """The samples at ``indices``, in that order (the held-out split, issue 15.13)."""
        out = copy.copy(self)
        out.arrays = {k: a[indices] for k, a in self.arrays.items()}
        out._n = len(indices)
        out.labels = None if self.labels is None else self.labels[indices]
        return out


class IterableDataset(Dataset):
    """Feed dicts from any iterable, checked batch by batch and re-batched on the fly.

    A one-shot iterator (a generator) can be read once; a list or another re-iterable source can
    be read again. A dict that lacks the batch axis (one sample) gets it added.
    """

    def __init__(self, source: Iterable[Mapping[str, np.ndarray]], specs: Sequence[InputSpec], *,
                 batch_size: int | None = None, limit: int | None = None):
        self.specs = list(specs)
        self._source = source
        self._one_shot = iter(source) is source
        self._used = False
        self._limit = limit
        self.batch_size = batch_size
        self.labels = None

    @property
    def one_shot(self) -> bool:
        """Whether the source can be read only once (a generator)."""
        return self._one_shot

    @property
    def num_samples(self) -> int | None:
        if not isinstance(self._source, Sequence):
            return None
        first = self.specs[0]
        n = 0
        for feed in self._source:
            a = np.asarray(feed[first.name]) if isinstance(feed, Mapping) and first.name in feed else None
            n += 0 if a is None else 1 if a.ndim == len(first.shape) - 1 else len(a)
        return n if self._limit is None else min(n, self._limit)

    def _checked(self) -> Iterator[dict[str, np.ndarray]]:
        if self._one_shot and self._used:
            raise DataError("the data is a one-shot iterator and was already read; pass a list instead")
        self._used = True
        seen = 0
        for index, feed in enumerate(self._source):
            if not isinstance(feed, Mapping):
                raise DataError(f"batch {index}: expected a dict of input arrays, given {type(feed).__name__}")
            arrays = pick_inputs(feed, self.specs, f"batch {index}")
            batch = {}
            for spec in self.specs:
                a = np.asarray(arrays[spec.name])
                if a.ndim == len(spec.shape) - 1:
                    a = a[None]
                check_array(spec.name, a, spec, f" (batch {index})")
                batch[spec.name] = cast_array(spec.name, a, spec)
            sizes = {len(a) for a in batch.values()}
            if len(sizes) > 1:
                raise DataError(f"batch {index}: inputs have different batch sizes {sorted(sizes)}")
            if self._limit is not None:
                batch = {k: a[: self._limit - seen] for k, a in batch.items()}
            seen += len(next(iter(batch.values())))
            if len(next(iter(batch.values()))):
                yield batch
            if self._limit is not None and seen >= self._limit:
                return
        if seen == 0:
            raise DataError("no samples in the data")

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        size = batch_size or self.batch_size
        stream = self._checked()
        return stream if size is None else rebatch(stream, size)

    def take(self, n: int) -> IterableDataset:
        limit = n if self._limit is None else min(n, self._limit)
        return IterableDataset(self._source, self.specs, batch_size=self.batch_size, limit=limit)


def rebatch(stream: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Cut and join the batches of a stream into batches of exactly ``size`` (the last: fewer)."""
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for batch in stream:
        pending.append(batch)
        count += len(next(iter(batch.values())))
        while count >= size:
            joined = {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}
            yield {k: a[:size] for k, a in joined.items()}
            rest = {k: a[size:] for k, a in joined.items()}
            count -= size
            pending = [rest] if count else []
    if count:
        yield {k: np.concatenate([b[k] for b in pending]) for k in pending[0]}

