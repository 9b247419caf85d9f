"""Image directories: files decoded batch by batch, resized, centre-cropped and normalised.

The shorter side is resized, the centre cropped to the input's height and width, pixels scaled
to [0, 1], normalised by ``mean``/``std``, laid out NCHW (or NHWC for an input declared so, as
tf2onnx writes Keras models); class sub-directories give labels (torchvision's ImageFolder).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, DependencyError
from .datasets import Dataset
from .specs import DEFAULT_BATCH_SIZE, InputSpec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Resize the shorter side to size / CROP_FRACTION, then crop the centre: the ImageNet evaluation
# convention (256 -> 224) under which torchvision's pretrained models report their accuracy.
CROP_FRACTION = 0.875


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


def image_folder(path: Path, specs, input_size, mean, std, channel_order, labels, crop_fraction,
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
