"""Calibration and evaluation data: batches of ``{input_name: ndarray}`` checked against the model.

A :class:`Dataset` yields feed dicts for onnxruntime, in a fixed order, as often as asked and at
any batch size. :func:`load_data` builds one from what a user has at hand:

* a ``.npz`` file with one array per model input (a single array for a single-input model) and
  optionally ``labels``;
* a ``.npy`` file (single-input models);
* a directory of images (Pillow): the shorter side is resized, the centre cropped to the input's
  height and width, pixels scaled to [0, 1], normalised by ``mean``/``std``, laid out NCHW (or
  NHWC for an input declared so, as tf2onnx writes Keras models);
  a directory of class sub-directories gives labels (torchvision's ImageFolder convention);
* in Python, a dict of arrays or any iterable of feed dicts.

    specs = input_specs(onnx.load("resnet50.onnx"))
    data = load_data("images/", specs, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    for feed in data.batches(32): ...

Everything is checked against the model's inputs and fails with a one-line :class:`DataError`
that names the input, what the model expects and what was given.
"""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .errors import DataError, DependencyError, first_line

__all__ = [
    "ArrayDataset",
    "Dataset",
    "ImageFolderDataset",
    "ImageSource",
    "InputSpec",
    "IterableDataset",
    "input_specs",
    "load_data",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Resize the shorter side to size / CROP_FRACTION, then crop the centre: the ImageNet evaluation
# convention (256 -> 224) under which torchvision's pretrained models report their accuracy.
CROP_FRACTION = 0.875
LABELS_KEY = "labels"
DEFAULT_BATCH_SIZE = 32

Dim = int | str | None


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (``None`` or a name for symbolic dims) and numpy dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    def shape_text(self) -> str:
        """The shape as people write it: ``[N,3,224,224]``."""
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"

    def static_dim(self, axis: int) -> int | None:
        """The declared size at ``axis``, or ``None`` where it is symbolic (a name, ``?``, or a
        non-positive value such as the ``-1`` batch some exporters write)."""
        d = self.shape[axis]
        return d if isinstance(d, int) and d > 0 else None

    def declared_batch(self) -> int | None:
        """The fixed batch size the model declares (axis 0), or ``None`` where it is symbolic."""
        return self.static_dim(0) if self.shape else None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers, in graph order."""
    initializers = {t.name for t in model.graph.initializer}
    specs = []
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tt = vi.type.tensor_type
        shape = tuple(  # a non-positive dim_value (-1, 0) is symbolic, as in graph.py
            (d.dim_value if d.dim_value > 0 else None) if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim
        )
        specs.append(InputSpec(vi.name, shape, np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))))
    return specs


# --------------------------------------------------------------------------- validation


def _cast(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The array in the input's dtype, or a DataError when the cast would change its meaning.

    Floats cast to floats (float64 -> float32) and integers to integers whose range holds the
    values. Integers are never cast to floats: raw uint8 pixels fed to a float model are almost
    always a forgotten scaling, which would silently ruin the calibration.
    """
    given, want = array.dtype, spec.dtype
    if given == want:
        return array
    kinds = given.kind + want.kind
    if kinds in ("ff", "bb"):
        out = array.astype(want)
        if kinds == "ff" and want.itemsize < given.itemsize and not np.isfinite(out).all():
            raise DataError(f"input '{name}': values overflow {want} (given {given})")
        return out
    if given.kind in "iu" and want.kind in "iu":
        info = np.iinfo(want)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise DataError(f"input '{name}': expected dtype {want}, given {given} values that do not fit")
        return array.astype(want)
    hint = " (scale the data to floats explicitly)" if want.kind == "f" else ""
    raise DataError(f"input '{name}': expected dtype {want}, given {given}{hint}")


def _check_array(name: str, array: np.ndarray, spec: InputSpec, where: str = "") -> None:
    """Rank, static dims, dtype kind and finiteness of one input's data (all samples at once)."""
    expected = spec.shape_text()
    if array.ndim != len(spec.shape):
        raise DataError(
            f"input '{name}'{where}: expected rank {len(spec.shape)} {expected}, "
            f"given shape {tuple(array.shape)}"
        )
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if axis > 0 and spec.static_dim(axis) is not None and want != got:
            raise DataError(
                f"input '{name}'{where}: expected shape {expected}, given {tuple(array.shape)} "
                f"(dim {axis} is {got}, expected {want})"
            )
    _cast(name, array[:0], spec)  # dtype compatibility only; value ranges are checked per batch
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            sample = int(np.argwhere(bad)[0][0])
            raise DataError(
                f"input '{name}'{where}: data contains NaN or Inf "
                f"({int(bad.sum())} values, first in sample {sample})"
            )


def declared_batch(specs: Sequence[InputSpec]) -> int | None:
    """The one fixed batch size the inputs declare (``[1, 1, 64, W]`` -> 1), or ``None``: every
    onnxruntime run over these inputs must use it (calibration, reconstruction, evaluation)."""
    static = {s.declared_batch() for s in specs} - {None}
    return static.pop() if len(static) == 1 else None


def _check_labels(labels: np.ndarray | None, num_samples: int, source: str) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1) if np.ndim(labels) else np.asarray(labels).reshape(1)
    if len(labels) != num_samples:
        raise DataError(
            f"labels in {source}: expected {num_samples} values (one per sample), given {len(labels)}"
        )
    if labels.dtype.kind not in "iu":
        raise DataError(f"labels in {source}: expected integer class indices, given dtype {labels.dtype}")
    return labels.astype(np.int64)


def _pick_inputs(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> dict:
    """Match arrays to inputs by name; a lone array feeds a single-input model."""
    names = [k for k in arrays if k != LABELS_KEY or any(s.name == LABELS_KEY for s in specs)]
    if len(specs) == 1 and len(names) == 1 and names[0] != specs[0].name:
        return {specs[0].name: np.asarray(arrays[names[0]])}
    missing = [s.name for s in specs if s.name not in arrays]
    if missing:
        raise DataError(
            f"input '{missing[0]}' is missing from {source} (given: {', '.join(names) or 'nothing'})"
        )
    return {s.name: np.asarray(arrays[s.name]) for s in specs}


def _array_notes(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> tuple[str, ...]:
    """Say which array feeds an input when it is not named after it, and which arrays go unused
    (issue 15.7): a misnamed archive must not be read silently."""
    names = [k for k in arrays if k != LABELS_KEY or any(s.name == LABELS_KEY for s in specs)]
    if len(specs) == 1 and len(names) == 1 and names[0] != specs[0].name:
        return (f"input '{specs[0].name}' reads array '{names[0]}' of {source} (its only array)",)
    unused = [k for k in names if k not in {s.name for s in specs}]
    return (f"array(s) {', '.join(repr(k) for k in unused)} of {source} are not model inputs and were not used",) if unused else ()


# --------------------------------------------------------------------------- datasets


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
        self.notes = _array_notes(arrays, self.specs, source)
        arrays = _pick_inputs(arrays, self.specs, source)
        for spec in self.specs:
            _check_array(spec.name, arrays[spec.name], spec)
        counts = {name: len(a) for name, a in arrays.items()}
        if len(set(counts.values())) > 1:
            raise DataError(f"inputs in {source} have different numbers of samples: {counts}")
        self._n = next(iter(counts.values()), 0)
        if self._n == 0:
            raise DataError(f"no samples in {source}")
        self.arrays = arrays
        self.labels = _check_labels(labels, self._n, source)
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE

    @property
    def num_samples(self) -> int:
        return self._n

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        size = batch_size or self.batch_size
        spec_of = {s.name: s for s in self.specs}
        for start in range(0, self._n, size):
            yield {k: _cast(k, a[start : start + size], spec_of[k]) for k, a in self.arrays.items()}

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
            arrays = _pick_inputs(feed, self.specs, f"batch {index}")
            batch = {}
            for spec in self.specs:
                a = np.asarray(arrays[spec.name])
                if a.ndim == len(spec.shape) - 1:
                    a = a[None]
                _check_array(spec.name, a, spec, f" (batch {index})")
                batch[spec.name] = _cast(spec.name, a, spec)
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
        return stream if size is None else _rebatch(stream, size)

    def take(self, n: int) -> IterableDataset:
        limit = n if self._limit is None else min(n, self._limit)
        return IterableDataset(self._source, self.specs, batch_size=self.batch_size, limit=limit)


def _rebatch(stream: Iterator[dict[str, np.ndarray]], size: int) -> Iterator[dict[str, np.ndarray]]:
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


class ImageFolderDataset(Dataset):
    """Image files decoded batch by batch (never all in memory), in sorted path order."""

    def __init__(self, files: Sequence[Path], spec: InputSpec, size: tuple[int, int], *,
                 labels: np.ndarray | None = None, mean=None, std=None, channel_order: str = "RGB",
                 crop_fraction: float = CROP_FRACTION, batch_size: int | None = None):
        self.specs = [spec]
        self.files = list(files)
        self.size = size
        self.labels = labels
        self.layout = image_layout(spec)  # "NCHW", or "NHWC" as tf2onnx writes Keras inputs
        self.channels = spec.static_dim(1 if self.layout == "NCHW" else 3)
        self.mean = _per_channel("mean", mean, self.channels, 0.0)
        self.std = _per_channel("std", std, self.channels, 1.0)
        if channel_order not in ("RGB", "BGR"):
            raise DataError(f"channel order must be RGB or BGR, given {channel_order!r}")
        self.channel_order = channel_order
        self.crop_fraction = crop_fraction
        self.batch_size = batch_size or DEFAULT_BATCH_SIZE

    @property
    def num_samples(self) -> int:
        return len(self.files)

    def batches(self, batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        size = batch_size or self.batch_size
        for start in range(0, len(self.files), size):
            images = [self._load(p) for p in self.files[start : start + size]]
            batch = np.stack(images)
            yield {self.specs[0].name: batch if self.layout == "NCHW" else np.ascontiguousarray(batch.transpose(0, 2, 3, 1))}

    def take(self, n: int) -> ImageFolderDataset:
        out = copy.copy(self)
        out.files = self.files[:n]
        out.labels = None if self.labels is None else self.labels[:n]
        return out

    def select(self, indices: np.ndarray) -> ImageFolderDataset:
        """The images at ``indices``, in that order (the held-out split, issue 15.13)."""
        out = copy.copy(self)
        out.files = [self.files[i] for i in indices]
        out.labels = None if self.labels is None else self.labels[indices]
        return out

    def _load(self, path: Path) -> np.ndarray:
        """One image as a ``[C, H, W]`` array of the input's dtype."""
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("L" if self.channels == 1 else "RGB")
                img = _resize_and_crop(img, self.size, self.crop_fraction)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read image '{path}': {exc}") from exc
        pixels = np.asarray(img)
        pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
        if self.channel_order == "BGR":
            pixels = pixels[:, :, ::-1]
        chw = pixels.transpose(2, 0, 1)
        if self.specs[0].dtype.kind != "f":
            return np.ascontiguousarray(chw, dtype=self.specs[0].dtype)
        x = chw.astype(np.float32) / 255.0
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x.astype(self.specs[0].dtype)


def _per_channel(what: str, value, channels: int, default: float) -> np.ndarray:
    if value is None:
        return np.full(channels, default, np.float32)
    v = np.asarray(value, np.float32).reshape(-1)
    if v.size == 1:
        return np.full(channels, v[0], np.float32)
    if v.size != channels:
        raise DataError(f"{what}: expected 1 or {channels} values (one per channel), given {v.size}")
    if what == "std" and (v == 0).any():
        raise DataError("std: values must be non-zero")
    return v


def _resize_and_crop(img, size: tuple[int, int], crop_fraction: float):
    """Resize the shorter side to ``target / crop_fraction``, then take the centre ``size``."""
    from PIL import Image

    h, w = size
    if (img.height, img.width) != (h, w):
        short = round(max(h, w) / crop_fraction)
        scale = short / min(img.width, img.height)
        new = (max(w, round(img.width * scale)), max(h, round(img.height * scale)))
        img = img.resize(new, Image.BILINEAR)
        left, top = (img.width - w) // 2, (img.height - h) // 2
        img = img.crop((left, top, left + w, top + h))
    return img


# --------------------------------------------------------------------------- loading


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
            data = _image_folder(path, specs, input_size, mean, std, channel_order, labels,
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


def _image_folder(path: Path, specs, input_size, mean, std, channel_order, labels, crop_fraction,
                  batch_size) -> ImageFolderDataset:
    """Sorted image files of a directory, or of its class sub-directories (which give labels)."""
    try:
        import PIL  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DependencyError("reading images needs Pillow: pip install 'onnxprune[images]'") from exc
    if len(specs) != 1:
        raise DataError(f"an image directory feeds one input, but the model has {len(specs)}")
    spec = specs[0]
    if image_layout(spec) is None:
        raise DataError(
            f"input '{spec.name}': image directories need an NCHW or NHWC input with 1 or 3 channels, "
            f"the model expects {spec.shape_text()}"
        )
    size = _image_size(spec, input_size)
    files, lab = _images_in(path), None
    classes = [] if files else sorted(p for p in path.iterdir() if p.is_dir())
    if classes:
        per_class = [_images_in(folder) for folder in classes]
        files = [f for found in per_class for f in found]
        if labels:
            lab = np.repeat(np.arange(len(classes)), [len(found) for found in per_class])
    if not files:
        raise DataError(f"no samples in '{path}': no image files ({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    return ImageFolderDataset(files, spec, size, labels=lab, mean=mean, std=std,
                              channel_order=channel_order, crop_fraction=crop_fraction,
                              batch_size=batch_size)


def image_layout(spec: InputSpec) -> str | None:
    """``"NCHW"`` where axis 1 has 1 or 3 channels, else ``"NHWC"`` where axis 3 has (Keras
    models converted by tf2onnx), else ``None``."""
    if len(spec.shape) != 4:
        return None
    if spec.static_dim(1) in (1, 3):
        return "NCHW"
    return "NHWC" if spec.static_dim(3) in (1, 3) else None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _image_size(spec: InputSpec, input_size) -> tuple[int, int]:
    """(H, W) from ``input_size`` or the input's static dims."""
    if input_size is not None:
        h, w = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        for axis, v in ((2, h), (3, w)) if image_layout(spec) == "NCHW" else ((1, h), (2, w)):
            want = spec.static_dim(axis)
            if want is not None and want != v:
                raise DataError(
                    f"input '{spec.name}': input size {h}x{w} does not match the model's {spec.shape_text()}"
                )
        return int(h), int(w)
    h, w = (spec.static_dim(2), spec.static_dim(3)) if image_layout(spec) == "NCHW" else (spec.static_dim(1), spec.static_dim(2))
    if h is None or w is None:
        raise DataError(
            f"input '{spec.name}' has a symbolic height or width {spec.shape_text()}; give input_size (--input-size H,W)"
        )
    return h, w
