"""The masking oracle: what a pruned model must compute (invariant 1), in one place.

Removing channels is equivalent to keeping them and zeroing every consumer's weights of the
removed channels (integer weights behind ``DequantizeLinear``: their zero point, which
dequantises to 0). :func:`masked_weights` gives those weights; :func:`masked_model` the original
model with them in place. The tests, ``onnxprune inspect --coverage``'s invariant check and the
sensitivity analysis' masked evaluation all use these functions, and :func:`equivalent` is the
one tolerance policy for comparing a pruned model's outputs with the masked model's.

Tolerance. Both models compute the same sums in float32, in different orders and with zero
terms dropped; the difference grows with depth and with the magnitude of the outputs. A wrong
channel changes an output by about its own magnitude. So the policy is relative to the largest
output magnitude: ``|pruned - masked| <= RTOL * (|masked| + max(1, max|masked|))``, with RTOL =
1e-3, ten times above the float32 reordering seen on deep real models (ResNet-50, EfficientNet)
on any x86-64 CPU, and far below what a structural error gives.

    expected = run(masked_model(analysis, keep), feeds)
    assert all(equivalent(a, b) for a, b in zip(expected, run(rewrite(analysis, keep), feeds)))
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from .builder import IN
from .groups import Analysis

RTOL = 1e-3


def masked_weights(analysis: Analysis, keep: np.ndarray, base: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Consumer weights (name -> array) with the input channels ``keep`` removes set to zero
    (integer weights: to their zero point). Only the weights ``keep`` touches are returned;
    ``base`` gives the arrays to start from (default: the model's initializers)."""
    atoms = analysis.kept_atoms(keep)
    out: dict[str, np.ndarray] = {}
    for d in analysis.dims:
        if d.role != IN or not d.constant:
            continue
        removed = np.flatnonzero(~atoms[d.offset : d.offset + d.size])
        if not removed.size:
            continue
        w = out.get(d.tensor)
        if w is None:
            w = np.array(base[d.tensor] if base is not None else analysis.model.tensors[d.tensor].values, copy=True)
        index = [slice(None)] * w.ndim
        index[d.axis] = removed
        dq = analysis.model.dequantizers.get(d.tensor)
        w[tuple(index)] = 0 if dq is None else dq.zeros_like(w)[tuple(index)]
        out[d.tensor] = w
    return out


def masked_model(analysis: Analysis, keep: np.ndarray) -> onnx.ModelProto:
    """The original model with :func:`masked_weights` in place of its initializers."""
    proto = copy.deepcopy(analysis.model.proto)
    inits = {t.name: t for t in proto.graph.initializer}
    for name, w in masked_weights(analysis, keep).items():
        inits[name].CopyFrom(numpy_helper.from_array(w, name))
    return proto


def tolerance(expected: np.ndarray) -> float:
    """The absolute tolerance for outputs ``expected``: RTOL x max(1, max |expected|)."""
    return RTOL * max(1.0, float(np.abs(expected).max())) if np.size(expected) else RTOL


def equivalent(expected: np.ndarray, got: np.ndarray) -> bool:
    """Same shape, and equal within the one tolerance policy (module docstring)."""
    return np.shape(expected) == np.shape(got) and bool(np.allclose(got, expected, rtol=RTOL, atol=tolerance(expected)))


def assert_equivalent(expected: np.ndarray, got: np.ndarray, what: str = "") -> None:
    """:func:`equivalent` with numpy's report of the largest differences when it fails (tests)."""
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=tolerance(expected), err_msg=what)
