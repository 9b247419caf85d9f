"""load_data: a Dataset from a path (.npz, .npy, image directory), a dict or an iterable."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, first_line
from .datasets import ArrayDataset, Dataset, IterableDataset
from .images import CROP_FRACTION, image_folder
from .specs import LABELS_KEY, InputSpec


@dataclass(frozen=True)
class ImageSource:
    """An image directory with its preprocessing (the CLI's ``--input-size``, ``--mean``,
    ``--std``, ``--channel-order``, ``--crop-fraction``; issue 15.12). ``load_data`` reads it like
    the bare path with these keyword arguments; given for a file instead of a directory, it is
    refused rather than ignored. ``mean``/``std`` are in [0, 1] pixel units."""

    path: str
    input_size: int | tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    crop_fraction: float = CROP_FRACTION

    def __fspath__(self) -> str:
        return str(self.path)

    def is_default(self) -> bool:
        return self == ImageSource(self.path)


def load_data(
    source,
    specs: Sequence[InputSpec],
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    input_size: int | tuple[int, int] | None = None,
    mean=None,
    std=None,
    channel_order: str = "RGB",
    labels: bool = True,
    crop_fraction: float = CROP_FRACTION,
) -> Dataset:
    """A :class:`Dataset` from a file, a directory, a dict of arrays or an iterable of feed dicts.

    ``limit`` keeps the first samples; ``labels=False`` ignores labels in the source;
    ``input_size``, ``mean``, ``std``, ``channel_order`` and ``crop_fraction`` apply to image
    directories only.

        data = load_data("calib.npz", input_specs(model), limit=256)
        data.num_samples, data.labels
    """
    specs = list(specs)
    if not specs:
        raise DataError("the model has no inputs to feed")
    if isinstance(source, ImageSource):  # issue 15.12: preprocessing given with the path
        if not source.is_default() and not Path(source.path).is_dir():
            raise DataError(f"'{source.path}' is not an image directory: --input-size, --mean, --std, --channel-order "
                            "and --crop-fraction apply to image directories only")
        input_size, mean, std = source.input_size, source.mean, source.std
        channel_order, crop_fraction, source = source.channel_order, source.crop_fraction, source.path
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            data = image_folder(path, specs, input_size, mean, std, channel_order, labels,
                                crop_fraction, batch_size)
        else:
            data = _array_file(path, specs, labels, batch_size)
    elif isinstance(source, Mapping):
        arrays = dict(source)
        lab = arrays.pop(LABELS_KEY, None) if not any(s.name == LABELS_KEY for s in specs) else None
        data = ArrayDataset(arrays, specs, labels=lab if labels else None, batch_size=batch_size)
    elif isinstance(source, Iterable):
        data = IterableDataset(source, specs, batch_size=batch_size)
    else:
        raise DataError(f"cannot read data from a {type(source).__name__}; give a path, a dict or an iterable")
    return data if limit is None else data.take(limit)


def _array_file(path: Path, specs, labels: bool, batch_size) -> ArrayDataset:
    """An .npz archive (arrays named after inputs, optional labels) or an .npy array."""
    if not path.exists():
        raise DataError(f"cannot read data file '{path}': no such file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read data file '{path}': not an .npy or .npz file ({first_line(exc)})") from exc
    if isinstance(loaded, np.ndarray):
        if len(specs) != 1:
            raise DataError(
                f"'{path}' holds one array but the model has {len(specs)} inputs; use an .npz named after them"
            )
        return ArrayDataset({specs[0].name: loaded}, specs, source=f"'{path}'", batch_size=batch_size)
    with loaded:
        try:
            arrays = {k: loaded[k] for k in loaded.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise DataError(f"cannot read data file '{path}': {first_line(exc)}") from exc
    lab = None
    if LABELS_KEY in arrays and not any(s.name == LABELS_KEY for s in specs):
        lab = arrays.pop(LABELS_KEY)
    if not arrays:
        raise DataError(f"no samples in '{path}': it holds no arrays")
    return ArrayDataset(arrays, specs, labels=lab if labels else None, source=f"'{path}'",
                        batch_size=batch_size)
