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

from .datasets import ArrayDataset, Dataset, IterableDataset
from .images import CROP_FRACTION, IMAGE_EXTENSIONS, ImageFolderDataset, image_layout
from .load import ImageSource, load_data
from .specs import DEFAULT_BATCH_SIZE, LABELS_KEY, InputSpec, declared_batch, input_specs

__all__ = [
    "ArrayDataset",
    "Dataset",
    "ImageFolderDataset",
    "ImageSource",
    "InputSpec",
    "IterableDataset",
    "input_specs",
    "load_data",
    "declared_batch",
    "image_layout",
    "DEFAULT_BATCH_SIZE",
    "LABELS_KEY",
    "CROP_FRACTION",
    "IMAGE_EXTENSIONS",
]
