"""LDRF-style reconstruction: re-express the removed channels through the kept ones and fold
the compensation into the next layers' weights, so the pruned model stays as slim as plain
pruning (no layer is added) but loses less before any fine-tuning.

For every linear *consumer* of a pruned tensor X (Conv, ConvTranspose, Gemm, MatMul with a
constant weight), with target channels T and inputs Z = [X_K; 1]:

    fit      T ~ A Z           ridge least squares from streamed moments E[T Z'], E[Z Z']
    fold     W'[:, k] = sum_c W[:, c] A[c, k]        bias += sum_c W[:, c] A[c, K]

summed over a convolution's spatial taps and over the positions of a Flatten block. Two modes:

* ``local``  — T = X of the original model, Z = its kept channels: one calibration pass; only
  the removed rows are fitted (kept rows are the identity), so nothing changes where nothing
  was removed.
* ``ldrf``   — T = X of the original model, Z = the kept channels of the *pruned* network built
  so far (earlier consumers already compensated), so errors do not accumulate; consumers are
  processed in waves of increasing depth, one calibration pass per wave. Each pass runs only the
  layers between the previous wave and this one: the activations where the computed part of
  the graph meets the rest (its frontier) are kept per batch, in memory up to a budget and on
  disk beyond it, and a fold invalidates only what lies below the folded layers.

The fit is optionally restricted to the principal subspace that carries ``energy`` of X's
variance (the LDRF embedding); a fit that increases the consumer's output error on the
calibration statistics is dropped (plain removal for that consumer).

The fold is exact algebra; only the fit approximates. Consumers read X directly, so non-linear
ops before them (MaxPool, ReLU) need no special care: the fit is made on what the consumer
actually reads. The one exception is Flatten/Reshape into Gemm: the moments are taken on the
4-D map before the Flatten, and one channel map A is shared by all positions of a channel's
block (a feature-level fit would need a (C*H*W)^2 Gram matrix).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis import Analysis
from ..runtime.frontier import Frontier, NotReplayable, digest
from ..runtime.session import session
from ..runtime.submodel import exposing
from .consumers import Consumer, channels_of, find_consumers
from .fit import fit, output_errors
from .fold import apply_folds, weight_blocks
from .moments import Moments


@dataclass
class ReconstructionSummary:
    """What reconstruction did per consumer (shown in summaries)."""

    fitted: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    gain: dict[str, float] = field(default_factory=dict)  # consumer -> error(compensated)/error(plain)
    passes: int = 0


def reconstruct(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, batches, mode: str = "ldrf",
                ridge: float = 1e-3, energy: float | None = None, max_positions: int = 1024, seed: int = 0,
                progress=None, frontier: bool = True) -> tuple[onnx.ModelProto, ReconstructionSummary]:
    """Compensate the channels ``keep`` removes in the consumers of ``pruned`` (see module doc).

    ``batches``: a re-iterable of ``{input name: array}``; ``max_positions`` spatial positions
    per image are sampled (seeded) for the moments, which keeps the cost of the Gram matrices
    bounded on large maps without biasing them. ``frontier=False`` runs every LDRF pass from the
    graph inputs (the reference the frontier-cached passes are tested against).
    """
    if mode not in ("local", "ldrf"):
        raise ValueError(f"unknown reconstruction mode {mode!r}")
    atoms = analysis.kept_atoms(keep)
    consumers = find_consumers(analysis)
    touched = [not atoms[c.in_dim.offset : c.in_dim.offset + c.in_dim.size].all() for c in consumers]
    report = ReconstructionSummary()
    if not any(touched):
        return pruned, report
    if mode == "local":
        selected = [i for i, t in enumerate(touched) if t]
        waves = [selected]
    else:
        waves = depth_waves(analysis, consumers, _upstream_pruned(analysis, consumers, touched, atoms))
    fits: dict[int, np.ndarray] = {}
    current = copy.deepcopy(pruned) if mode == "ldrf" else pruned
    # subgraphs (If/Loop bodies) read outer tensors a segment would not carry: whole-prefix passes
    frontier = frontier and mode == "ldrf" and len(waves) > 1 and not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in current.graph.node for a in n.attribute)
    runners = (Frontier(analysis.model.proto, batches), Frontier(current, batches)) if frontier else None
    try:
        for w, wave in enumerate(waves):
            observed = sorted({consumers[i].observed for i in wave})
            # local: the moments of all channels (one Gram per tensor); kept subsets are sub-blocks
            args = (analysis, atoms if mode == "ldrf" else analysis.kept_atoms(analysis.full_keep()),
                    current if mode == "ldrf" else None, observed, batches, max_positions, seed)
            later = {consumers[i].observed for wave_ in waves[w + 1:] for i in wave_}
            try:
                moments = stream_moments(*args, runners=runners, later=later)
            except NotReplayable:  # a source that yields other data on every pass: run each prefix whole
                for r in runners:
                    r.close()
                runners = None
                moments = stream_moments(*args)
            report.passes += 1
            for i in wave:
                c = consumers[i]
                o_dim = analysis.by_key[(c.observed, c.observed_axis)]
                kept = np.flatnonzero(atoms[o_dim.offset : o_dim.offset + o_dim.size])
                m = moments[c.observed] if mode == "ldrf" else moments[c.observed].restrict(kept)
                a = fit(m, kept, ridge, energy, local=(mode == "local"))
                plain = np.zeros_like(a)
                plain[kept, np.arange(len(kept))] = 1.0
                w3, _ = weight_blocks(np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64), c)
                e_fit, e_plain = output_errors(w3, [a, plain], m)
                label = analysis.model.graph.nodes[c.node].name or c.weight
                report.gain[label] = round(e_fit / e_plain, 6) if e_plain > 0 else 1.0
                if np.isfinite(e_fit) and e_fit < e_plain:
                    fits[i] = a
                    report.fitted.append(label)
                else:
                    report.fallback.append(label)
            if mode == "ldrf":  # the next waves see this wave's consumers compensated
                folded = {i: fits[i] for i in wave if i in fits}
                apply_folds(analysis, keep, current, folded, consumers, in_place=True)
                if runners is not None:  # every reader of the folded weights (shared ones too) and below
                    runners[1].invalidate({n for i in folded for n in (consumers[i].weight, consumers[i].bias) if n})
            if progress:
                progress(w + 1, len(waves))
    finally:
        for r in runners or ():
            r.close()
    if mode == "local":
        current = apply_folds(analysis, keep, pruned, fits, consumers)
    return current, report


def _upstream_pruned(analysis, consumers, touched, atoms) -> list[bool]:
    """LDRF also corrects consumers whose own input lost nothing but whose input drifted
    because something upstream was pruned; consumers fed only by unpruned layers are skipped."""
    pruned_tensors = {d.tensor for d in analysis.dims if not atoms[d.offset : d.offset + d.size].all()}
    result = []
    for i, c in enumerate(consumers):
        result.append(touched[i] or bool(ancestor_tensors(analysis, c.observed) & pruned_tensors))
    return result


def ancestor_tensors(analysis: Analysis, name: str) -> set[str]:
    """Every tensor ``name`` is computed from (itself included)."""
    tensors = analysis.model.tensors
    seen, stack = set(), [tensors[name]]
    while stack:
        t = stack.pop()
        if t.name in seen:
            continue
        seen.add(t.name)
        for node in t.inputs:
            stack.extend(node.inputs)
    return seen


def depth_waves(analysis: Analysis, consumers: list[Consumer], active: list[bool]) -> list[list[int]]:
    """Group active consumers by depth: a consumer's fit needs every consumer upstream of its
    input compensated first."""
    nodes = analysis.model.graph.nodes
    by_output = {}
    for i, c in enumerate(consumers):
        if active[i]:
            for t in nodes[c.node].outputs:
                by_output.setdefault(t.name, []).append(i)
    depth: dict[int, int] = {}
    for i in sorted((i for i, a in enumerate(active) if a), key=lambda i: consumers[i].node):
        upstream = [j for t in ancestor_tensors(analysis, consumers[i].observed) for j in by_output.get(t, []) if j != i]
        depth[i] = 1 + max((depth[j] for j in upstream if j in depth), default=-1)
    waves: dict[int, list[int]] = {}
    for i, d in depth.items():
        waves.setdefault(d, []).append(i)
    return [waves[d] for d in sorted(waves)]


def stream_moments(analysis: Analysis, atoms: np.ndarray, pruned: onnx.ModelProto | None, observed: list[str],
             batches, max_positions: int, seed: int, runners: tuple | None = None,
             later: set[str] | None = None) -> dict[str, Moments]:
    """Stream the calibration data; targets from the original model, inputs from ``pruned``
    (LDRF) or from the original's kept channels (local). ``runners``: (original, pruned)
    ``Frontier`` objects that run only the part of each graph not computed yet; ``later``: the
    tensors the passes after this one observe."""
    if runners is None:

        sessions = [session(exposing(analysis.model.proto, observed))]
        if pruned is not None:
            sessions.append(session(exposing(pruned, observed)))

        def outputs():
            names = [{i.name for i in sess.get_inputs()} for sess in sessions]
            for batch in batches:
                yield [dict(zip(observed, sess.run(observed, {k: v for k, v in batch.items() if k in n})))
                       for sess, n in zip(sessions, names)], batch
        stream = outputs()
    else:
        def lockstep():
            for r in runners:
                r.begin(observed, later)
            for b, batch in enumerate(batches):
                batch_print = digest(batch)
                yield [r.step(b, batch, batch_print) for r in runners], batch
            for r in runners:
                r.finish()
        stream = lockstep()
    rng = np.random.default_rng(seed)
    moments = {name: Moments() for name in observed}
    axes = {name: next(d.axis for (t, _), d in analysis.by_key.items() if t == name and not d.constant) for name in observed}
    for outs, batch in stream:
        outs_a, outs_b = outs[0], (outs[1] if len(outs) > 1 else None)
        for name in observed:
            t = channels_of(outs_a[name], axes[name])
            d = analysis.by_key[(name, axes[name])]
            kept = np.flatnonzero(atoms[d.offset : d.offset + d.size])
            if outs_b is not None:
                z = channels_of(outs_b[name], axes[name])
            else:
                z = None if len(kept) == t.shape[0] else t[kept]
            if t.shape[1] > max_positions * len(next(iter(batch.values()))):
                pick = rng.choice(t.shape[1], size=max_positions * len(next(iter(batch.values()))), replace=False)
                t, z = t[:, pick], (None if z is None else z[:, pick])
            moments[name].update(t, z)
        del outs, outs_a, outs_b  # before the next batch runs: two batches of activations never coexist
    return moments
