"""Model inputs and the checks every data source goes through.

:class:`InputSpec` describes one graph input (name, shape, dtype); the functions below check
arrays against it and fail with a one-line :class:`DataError` that names the input, what the
model expects and what was given. Shared by the datasets, the image reader and the loader.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ..errors import DataError

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


def cast_array(name: str, array: np.ndarray, spec: InputSpec) -> np.ndarray:
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


def check_array(name: str, array: np.ndarray, spec: InputSpec, where: str = "") -> None:
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
    cast_array(name, array[:0], spec)  # dtype compatibility only; value ranges are checked per batch
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


def check_labels(labels: np.ndarray | None, num_samples: int, source: str) -> np.ndarray | None:
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


def pick_inputs(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> dict:
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


def array_notes(arrays: Mapping[str, np.ndarray], specs: Sequence[InputSpec], source: str) -> tuple[str, ...]:
    """Say which array feeds an input when it is not named after it, and which arrays go unused
    (issue 15.7): a misnamed archive must not be read silently."""
    names = [k for k in arrays if k != LABELS_KEY or any(s.name == LABELS_KEY for s in specs)]
    if len(specs) == 1 and len(names) == 1 and names[0] != specs[0].name:
        return (f"input '{specs[0].name}' reads array '{names[0]}' of {source} (its only array)",)
    unused = [k for k in names if k not in {s.name for s in specs}]
    return (f"array(s) {', '.join(repr(k) for k in unused)} of {source} are not model inputs and were not used",) if unused else ()
