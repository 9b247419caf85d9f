"""Fashion-MNIST loader (numpy only) for the bundled reference models.

The data comes from Debian's ``dataset-fashion-mnist`` package, which installs
the four original gzipped IDX files under ``/usr/share/datasets/fashion-mnist/``.
Set ``FASHION_MNIST_DIR`` to read them from another directory.

Normalisation
-------------
Every bundled model was trained on ``normalize(images)``::

    x = (pixel / 255 - MEAN) / STD,   MEAN = 0.2860, STD = 0.3530

MEAN and STD are the per-pixel mean and standard deviation of the 60,000
training images scaled to [0, 1] (measured: 0.28604, 0.35302), rounded to four
decimals.  They are fixed constants, not recomputed at run time, so that an
exported ONNX model and any calibration data built for it agree exactly.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN = 0.2860
STD = 0.3530
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


def data_dir() -> Path:
    """Directory holding the IDX files (``$FASHION_MNIST_DIR`` or the Debian path)."""
    return Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR))


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one gzipped IDX file of unsigned bytes with ``ndim`` dimensions."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    zero, dtype_code, got_ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != _IDX_UBYTE or got_ndim != ndim:
        raise ValueError(f"{path}: not a {ndim}-d unsigned-byte IDX file")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {shape} values, found {data.size}")
    return data.reshape(shape)


def load(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a split (``"train"``: 60,000 images, ``"test"``: 10,000 images).

    Returns ``(images, labels)``: uint8 ``[N, 28, 28]`` and int64 ``[N]``.
    """
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = data_dir()
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            "Fashion-MNIST files not found: " + ", ".join(missing)
            + ". Install them with `apt-get install dataset-fashion-mnist` "
            "(Debian/Ubuntu) or point FASHION_MNIST_DIR at a directory holding "
            "the four original *-ubyte.gz files."
        )
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 28, 28]`` -> float32 ``[N, 1, 28, 28]`` with the fixed MEAN/STD."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(f"expected uint8 [N, H, W], got {images.dtype} {images.shape}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.float32(MEAN)) / np.float32(STD)
    return x[:, None, :, :]
