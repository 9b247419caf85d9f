"""Sequential OBS selection (see ``scoring/obs.py``): once the allocation fixed how many channels each
group keeps, the groups are chosen in the network's order, each from the statistics of the
network pruned so far; ``reconstruct.obs_fold.fold_obs`` folds the refitted weights into the
rewritten model.

The network pruned so far is a masked copy of the dense model: the removed channels' consumer
columns zeroed, the earlier groups' OBS weights (and intercepts, as biases) written in, so it
computes what the pruned model would. One pass per group (through ``runtime.frontier.Frontier``,
so a pass runs only the layers not computed yet), then refresh passes in LDRF's wave order for
the consumers whose input changed after their refit.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..analysis import IN, Analysis, ChannelGroup
from ..reconstruct.ldrf import ancestor_tensors, depth_waves
from ..reconstruct.fold import attach_bias
from ..reconstruct.obs_fold import weight_layout
from ..runtime.frontier import Frontier
from .obs import ConsumerState, Layer, ObsSettings, consumer_states, gather, greedy, layers_of
from .weights import group_magnitude


# --- sequential selection ---------------------------------------------------------------------------
@dataclass
class Selection:
    """What ``obs_select`` chose: kept channels per group, and the refitted weight W* (columns
    of every input channel, removed ones zero; last column the intercept) per layer index."""

    kept: dict[int, np.ndarray]
    layers: list[Layer]
    weights: dict[int, np.ndarray]
    passes: int = 0


def _first_consumer(analysis: Analysis, g: ChannelGroup) -> int:
    nodes = [analysis.dims[d].node for d in g.dims if analysis.dims[d].role == IN and analysis.dims[d].node is not None]
    return min(nodes, default=10**9)


def obs_select(analysis: Analysis, counts: dict[int, int], batches, settings: ObsSettings = ObsSettings(),
               fallback: dict[int, np.ndarray] | None = None) -> Selection:
    """Keep ``counts[gid]`` channels of each group, groups taken in the order of their first
    consumer, each from the statistics of the network pruned so far (one pass per pruned group).
    ``fallback[gid]``: channel order for groups without a consumer OBS can refit."""
    layers = layers_of(analysis)
    masked = copy.deepcopy(analysis.model.proto)
    inits = {t.name: t for t in masked.graph.initializer}
    biases = _prepare_biases(analysis, masked, inits, layers)

    subgraphs = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                    for n in masked.graph.node for a in n.attribute)
    runners = [] if subgraphs or not settings.frontier else [Frontier(analysis.model.proto, batches), Frontier(masked, batches)]
    try:
        return _select(analysis, counts, batches, settings, fallback, layers, masked, inits, biases, runners)
    finally:
        for r in runners:
            r.close()


def _select(analysis, counts, batches, settings, fallback, layers, masked, inits, biases, runners) -> Selection:
    removed_cols: dict[int, np.ndarray] = {}
    weights: dict[int, np.ndarray] = {}
    kept: dict[int, np.ndarray] = {}
    todo = sorted((g for g in analysis.prunable_groups if counts.get(g.id, g.size) < g.size),
                  key=lambda g: (_first_consumer(analysis, g), g.id))
    passes = 0
    written: dict[int, int] = {}  # layer -> pass of its last refit
    decided: dict[int, int] = {}  # group -> pass of its selection
    for g in todo:
        remove = g.size - counts[g.id]
        used = [i for i, l in enumerate(layers) if l.consumer.in_dim.id in g.atom_index]
        states = {}
        if used:
            grams = gather(analysis, [layers[i] for i in used], batches, masked,
                           {k: removed_cols[i] for k, i in enumerate(used) if i in removed_cols},
                           settings, settings.seed + passes, runners)
            passes += 1
            states = consumer_states(g, layers, dict(zip(used, grams)), settings)
        if states:
            gone, _ = greedy(g, states, remove, settings.align)
        else:
            order = fallback[g.id] if fallback and g.id in fallback else np.lexsort(
                (np.arange(g.size), -group_magnitude(g, analysis)))
            gone = np.asarray(order[g.size - remove:], dtype=np.int64)
        kept[g.id] = np.setdiff1d(np.arange(g.size), gone)
        decided[g.id] = passes
        for i, s in states.items():
            weights[i] = s.full_w
            written[i] = passes
            _write(analysis, layers[i], weights[i], inits, biases.get(i))
        changed = _zero_inputs(analysis, g, gone, inits)
        if runners:  # the masked model's readers of the changed weights, and below, run again
            runners[1].invalidate(changed | {n for i in states for n in (layers[i].consumer.weight, biases.get(i)) if n})
        for i in used:
            d = layers[i].consumer.in_dim.id
            atoms = g.atom_index[d][np.isin(g.channel_atoms[d], gone)]
            cols = layers[i].columns(atoms).ravel()
            removed_cols[i] = np.union1d(removed_cols.get(i, np.zeros(0, np.int64)), cols)
    if settings.refresh and todo:
        passes = _refresh(analysis, layers, todo, decided, written, batches, masked, removed_cols, settings,
                          inits, biases, weights, passes, runners)
    return Selection(kept, layers, weights, passes)


def _refresh(analysis, layers, todo, decided, written, batches, masked, removed_cols, settings, inits, biases,
             weights, passes, runners) -> int:
    """Refit (W* = W G H^-1 on the kept columns) every layer whose input was changed by a group
    selected after the layer's last refit, in waves of depth (LDRF's order), one pass a wave.
    A residual stream is selected early, before the blocks it feeds are pruned: its later
    consumers would otherwise keep a refit made for inputs the pruned network no longer has."""
    tensors = {g.id: {analysis.dims[d].tensor for d in g.dims if not analysis.dims[d].constant} for g in todo}
    stale = []
    for i, layer in enumerate(layers):
        above = ancestor_tensors(analysis, layer.input)
        stale.append(any(p > written.get(i, -1) and tensors[gid] & above for gid, p in decided.items()))
    for wave in depth_waves(analysis, [l.consumer for l in layers], stale):
        grams = gather(analysis, [layers[i] for i in wave], batches, masked,
                       {k: removed_cols[i] for k, i in enumerate(wave) if i in removed_cols}, settings, settings.seed + passes,
                       runners)
        passes += 1
        for i, gram in zip(wave, grams):
            s = ConsumerState(layers[i], gram, np.zeros(0, np.int64), np.zeros((0, layers[i].kk), np.int64), settings.ridge)
            weights[i] = s.full_w
            _write(analysis, layers[i], weights[i], inits, biases.get(i))
        if runners:
            runners[1].invalidate({n for i in wave for n in (layers[i].consumer.weight, biases.get(i)) if n})
    return passes


def _prepare_biases(analysis, proto, inits, layers) -> dict[int, str]:
    """A bias input on every Conv/Gemm layer (zeros where it had none: the same function), so
    the intercept of the refit has somewhere to go in the masked model."""
    out = {}
    for i, l in enumerate(layers):
        if not l.intercept:
            continue
        c = l.consumer
        node = proto.graph.node[c.node]
        if c.bias is not None:
            out[i] = c.bias
            continue
        zeros = np.zeros(l.w.shape[0], numpy_helper.to_array(inits[c.weight]).dtype)
        out[i] = attach_bias(proto, inits, node, f"{c.weight}_onnxprune_obs_bias", zeros)
    return out


def _write(analysis, layer: Layer, wstar, inits, bias: str | None) -> None:
    c = layer.consumer
    w, icpt = weight_layout(analysis, layer, wstar)
    dtype = numpy_helper.to_array(inits[c.weight]).dtype
    inits[c.weight].CopyFrom(numpy_helper.from_array(w.astype(dtype), c.weight))
    if bias is not None and icpt is not None:
        base = (np.asarray(analysis.model.tensors[c.bias].values, dtype=np.float64) if c.bias is not None
                else np.zeros(len(icpt)))
        new = base + icpt / (layer.beta if layer.op == "Gemm" else 1.0)
        inits[bias].CopyFrom(numpy_helper.from_array(new.reshape(base.shape).astype(dtype), bias))


def _zero_inputs(analysis, g: ChannelGroup, gone: np.ndarray, inits) -> set[str]:
    """Zero the removed channels' input columns of every consumer weight of the group (the
    masked model then computes what the pruned one does); returns the weights changed."""
    changed = set()
    for d in g.dims:
        dim = analysis.dims[d]
        if dim.role != IN or not dim.constant or dim.tensor not in inits:
            continue
        atoms = g.atom_index[d][np.isin(g.channel_atoms[d], gone)]
        if not len(atoms):
            continue
        arr = numpy_helper.to_array(inits[dim.tensor]).copy()
        idx = [slice(None)] * arr.ndim
        idx[dim.axis] = atoms
        arr[tuple(idx)] = 0
        inits[dim.tensor].CopyFrom(numpy_helper.from_array(arr, dim.tensor))
        changed.add(dim.tensor)
    return changed
