"""Folding the structured OBS refit (``scoring/obs_select.py``) into the rewritten model:
the refitted weights W* of every consumer OBS refitted, sliced like the plain rewrite, and their
intercepts added to the biases (``compress --reconstruct obs``)."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis import Analysis
from .fold import add_bias, slice_other_axes


def weight_layout(analysis: Analysis, layer, wstar: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """W* back in the initializer's layout, and the intercept in output units (None: none).
    ``layer``: a ``scoring.obs.Layer`` (consumer, op, alpha, transB, intercept)."""
    shape = np.shape(analysis.model.tensors[layer.consumer.weight].values)
    body = wstar[:, :-1] if layer.intercept else wstar
    if layer.op == "Conv":
        w = body.reshape(shape)
    elif layer.op == "Gemm":
        b = body / layer.alpha
        w = b if layer.trans_b else b.T
    else:
        w = body.T
    return w, (wstar[:, -1] if layer.intercept else None)


def fold_obs(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, selection) -> onnx.ModelProto:
    """Write the refitted weights (sliced like the plain rewrite) and intercepts into ``pruned``.
    ``selection``: a ``scoring.obs_select.Selection`` (its ``layers`` and ``weights``)."""
    proto = copy.deepcopy(pruned)
    inits = {t.name: t for t in proto.graph.initializer}
    atoms = analysis.kept_atoms(keep)
    for i in sorted(selection.weights):
        layer = selection.layers[i]
        c = layer.consumer
        w, icpt = weight_layout(analysis, layer, selection.weights[i])
        w = slice_other_axes(analysis, atoms, c.weight, w, skip_axis=None)
        dtype = numpy_helper.to_array(inits[c.weight]).dtype
        inits[c.weight].CopyFrom(numpy_helper.from_array(w.astype(dtype), c.weight))
        if icpt is not None and np.any(icpt != 0):
            add_bias(analysis, atoms, proto, inits, c, icpt / layer.alpha, dtype)
    return proto
