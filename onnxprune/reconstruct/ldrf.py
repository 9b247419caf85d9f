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
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from ..analysis.builder import IN, OUT, Analysis, Dim
from ..runtime.session import session
from .moments import Moments

LINEAR_CONSUMERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


@dataclass
class Consumer:
    """One weight that contracts a pruned tensor, and the tensor whose moments feed its fit."""

    node: int  # node index
    weight: str
    in_dim: Dim
    out_axis: int | None  # axis of the weight indexing the consumer's outputs
    bias: str | None  # the consumer's bias initializer (None: no bias input)
    observed: str  # tensor whose channels are fitted
    observed_axis: int
    positions: np.ndarray  # [C_observed, P]: in-dim atom of each (channel, position)


@dataclass
class Report:
    """What reconstruction did per consumer (shown in summaries)."""

    fitted: list[str] = field(default_factory=list)
    fallback: list[str] = field(default_factory=list)
    gain: dict[str, float] = field(default_factory=dict)  # consumer -> error(compensated)/error(plain)
    passes: int = 0


def channels_of(t: np.ndarray, axis: int) -> np.ndarray:
    """Activation [.., C, ..] -> [C, samples] (every other axis is a sample axis)."""
    return np.moveaxis(t, axis, 0).reshape(t.shape[axis], -1)


def find_consumers(analysis: Analysis) -> list[Consumer]:
    """Every constant weight dim with the IN role whose input channels can be mapped back to one
    observed activation, one atom block per channel."""
    graph = analysis.model.graph
    result = []
    for d in analysis.dims:
        if d.role != IN or not d.constant or d.node is None:
            continue
        node = graph.nodes[d.node]
        if node.op not in LINEAR_CONSUMERS:
            continue
        if not np.issubdtype(np.asarray(analysis.model.tensors[d.tensor].values).dtype, np.floating):
            continue  # an integer weight behind DequantizeLinear: a float fold would need requantising
        observed = _observed_tensor(analysis, node.inputs[0])
        if observed is None:
            continue
        o_dim = analysis.by_key[(observed.name, analysis_axis(analysis, observed))]
        positions = _positions(analysis, o_dim, d)
        if positions is None:
            continue
        out_dim = next((x for x in analysis.dims if x.tensor == d.tensor and x.role == OUT), None)
        out_axis = out_dim.axis if out_dim is not None else _default_out_axis(node, d)
        bias = _bias_of(node)
        result.append(Consumer(d.node, d.tensor, d, out_axis, bias, observed.name, o_dim.axis, positions))
    return result


def analysis_axis(analysis: Analysis, t: gs.Tensor) -> int | None:
    for (name, axis), _ in analysis.by_key.items():
        if name == t.name and not analysis.by_key[(name, axis)].constant:
            return axis
    return None


def _observed_tensor(analysis: Analysis, t: gs.Tensor) -> gs.Tensor | None:
    """The consumer's input, or for a Flatten/Reshape block the map before it."""
    if analysis_axis(analysis, t) is None:
        return None
    while t.inputs and t.inputs[0].op in _SHAPE_OPS:
        src = t.inputs[0].inputs[0]
        if analysis_axis(analysis, src) is None or len(src.shape) <= len(t.shape):
            break
        t = src
    return t


def _positions(analysis: Analysis, o_dim: Dim, in_dim: Dim) -> np.ndarray | None:
    """[C_observed, P] in-dim atoms of each observed channel, or None if the map is not a clean
    one-channel-to-P-atoms block structure."""
    ch_obs = analysis.atom_channel[o_dim.offset : o_dim.offset + o_dim.size]
    ch_in = analysis.atom_channel[in_dim.offset : in_dim.offset + in_dim.size]
    if len(np.unique(ch_obs)) != len(ch_obs):
        return None
    order = np.argsort(ch_obs)
    where = np.searchsorted(ch_obs[order], ch_in)
    if np.any(where >= len(ch_obs)) or np.any(ch_obs[order][np.minimum(where, len(ch_obs) - 1)] != ch_in):
        return None
    owner = order[where]  # observed channel of each in-dim atom
    counts = np.bincount(owner, minlength=o_dim.size)
    if counts.min() != counts.max() or counts.min() == 0:
        return None
    return np.argsort(owner, kind="stable").reshape(o_dim.size, counts[0])


def _default_out_axis(node: gs.Node, d: Dim) -> int | None:
    if node.op in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return 1 - d.axis if node.op in ("Gemm", "MatMul", "ConvTranspose") else 0
    return None


def _bias_of(node: gs.Node) -> str | None:
    if node.op in ("Conv", "ConvTranspose", "Gemm") and len(node.inputs) > 2 and node.inputs[2].name:
        return node.inputs[2].name if isinstance(node.inputs[2], gs.Constant) else None
    return None


# --- the fit ------------------------------------------------------------------------------------
def fit(m: Moments, kept: np.ndarray, ridge: float = 1e-3, energy: float | None = None,
        local: bool = True) -> np.ndarray:
    """A [C, K+1] with T ~ A [Z; 1]. ``ridge`` is relative: lambda = ridge * mean diagonal of
    the input second moment, so it scales with the activations. In ``local`` mode the kept rows
    are fixed to the identity (only removed channels are re-expressed)."""
    n = m.n
    k = len(kept)
    zz = np.zeros((k + 1, k + 1))
    zz[:k, :k], zz[:k, k], zz[k, :k], zz[k, k] = m.zz / n, m.z / n, m.z / n, 1.0
    tz = np.concatenate([m.tz / n, (m.t / n)[:, None]], axis=1)
    lam = ridge * max(np.trace(zz[:k, :k]) / max(k, 1), 1e-12)
    reg = np.eye(k + 1) * lam
    reg[k, k] = 0.0  # the intercept is not shrunk
    a = np.linalg.solve(zz + reg, tz.T).T
    if energy is not None:
        a = _embed(a, m, energy)
    if local:
        a[kept] = 0.0
        a[kept, np.arange(k)] = 1.0
    return a


def _embed(a: np.ndarray, m: Moments, energy: float) -> np.ndarray:
    """Keep the fitted prediction's component inside the principal subspace of T that holds
    ``energy`` of its variance; outside it, predict the mean (LDRF's embedding)."""
    mean = m.t / m.n
    cov = m.tt / m.n - np.outer(mean, mean)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    total = max(vals.clip(min=0).sum(), 1e-30)
    r = int(np.searchsorted(np.cumsum(vals.clip(min=0)) / total, energy) + 1)
    u = vecs[:, :r]
    p = u @ u.T
    out = p @ a
    out[:, -1] += (np.eye(len(mean)) - p) @ mean
    return out


def output_errors(w3: np.ndarray, fits: list[np.ndarray], m: Moments) -> list[float]:
    """E|| W (T - A [Z;1]) ||^2 summed over taps/positions, from the moments (cross-tap
    correlations ignored), for several fits A: the check that decides between compensation and
    plain removal. The term that does not depend on the fit is computed once.

    With R = the weight's rows [rows x P, C] and B = R A: trace(R E[(T-AZ)(T-AZ)'] R') =
    tr(R Stt R') - 2 tr(R Stz B') + tr(B Szz B'), all from products with R, never a C x C x K
    product (the weight usually has fewer rows than the Gram has channels).
    """
    n = m.n
    wm = w3.reshape(-1, w3.shape[-2], w3.shape[-1])  # [rows, C, P]
    rows = np.moveaxis(wm, 2, 1).reshape(-1, wm.shape[1])  # [rows x P, C]
    base = float(((rows @ (m.tt / n)) * rows).sum())
    k = fits[0].shape[1] - 1
    szz = np.zeros((k + 1, k + 1))
    szz[:k, :k], szz[:k, k], szz[k, :k], szz[k, k] = m.zz / n, m.z / n, m.z / n, 1.0
    stz = np.concatenate([m.tz / n, (m.t / n)[:, None]], axis=1)
    rs = rows @ stz  # [rows x P, K+1]
    out = []
    for a in fits:
        b = rows @ a
        out.append(base - 2.0 * float((rs * b).sum()) + float(((b @ szz) * b).sum()))
    return out


# --- the fold -----------------------------------------------------------------------------------
def weight_blocks(w: np.ndarray, c: Consumer) -> tuple[np.ndarray, int | None]:
    """The weight as [..., C_observed, P] (in-dim last) and the out axis's position in it."""
    moved = np.moveaxis(w, c.in_dim.axis, -1)
    out_axis = None
    if c.out_axis is not None:
        out_axis = c.out_axis if c.out_axis < c.in_dim.axis else c.out_axis - 1
    return moved[..., c.positions], out_axis


def fold(w: np.ndarray, c: Consumer, a: np.ndarray, kept_channels: np.ndarray):
    """Folded weight (in-dim reduced to the kept channels' atoms, other axes untouched) and the
    bias delta per output of the consumer (None where the consumer has no output axis)."""
    w3, out_axis = weight_blocks(w, c)  # [..., C, P]
    rows = np.moveaxis(w3, -2, -1)  # [..., P, C]
    new = (rows.reshape(-1, rows.shape[-1]) @ a[:, :-1]).reshape(*rows.shape[:-1], a.shape[1] - 1)
    new = np.moveaxis(new, -1, -2)  # [..., K, P]; one 2-D matmul (a batched one loops per row)
    delta = None
    if out_axis is not None:
        contrib = (w3 * a[:, -1][:, None]).sum(axis=(-2, -1))
        delta = contrib.sum(axis=tuple(i for i in range(contrib.ndim) if i != out_axis)) if contrib.ndim else contrib
    k = len(kept_channels)
    folded = new.reshape(*new.shape[:-2], k * c.positions.shape[1])
    return np.moveaxis(folded, -1, c.in_dim.axis), delta


def apply_folds(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, fits: dict[int, np.ndarray],
                consumers: list[Consumer], in_place: bool = False) -> onnx.ModelProto:
    """Write folded weights (sliced like the plain rewrite on every other pruned axis) and biases.
    Each consumer must be folded once: LDRF folds wave by wave ``in_place`` into one copy."""
    proto = pruned if in_place else copy.deepcopy(pruned)
    inits = {t.name: t for t in proto.graph.initializer}
    atoms = analysis.kept_atoms(keep)
    for i, c in enumerate(consumers):
        if i not in fits:
            continue
        o_dim = analysis.by_key[(c.observed, c.observed_axis)]
        kept_channels = np.flatnonzero(atoms[o_dim.offset : o_dim.offset + o_dim.size])
        w = np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64)
        new_w, delta = fold(w, c, fits[i], kept_channels)
        new_w = _slice_other_axes(analysis, atoms, c.weight, new_w, skip_axis=c.in_dim.axis)
        dtype = numpy_helper.to_array(inits[c.weight]).dtype
        inits[c.weight].CopyFrom(numpy_helper.from_array(new_w.astype(dtype), c.weight))
        if delta is not None and np.any(delta != 0) and analysis.model.graph.nodes[c.node].op != "MatMul":
            _add_bias(analysis, atoms, proto, inits, c, delta, dtype)
    return proto


def _slice_other_axes(analysis, atoms, name, array, skip_axis):
    for (tname, axis), d in analysis.by_key.items():
        if tname == name and axis != skip_axis:
            array = np.take(array, np.flatnonzero(atoms[d.offset : d.offset + d.size]), axis=axis)
    return array


def _add_bias(analysis, atoms, proto, inits, c: Consumer, delta, dtype) -> None:
    out_dim = next((d for (t, a), d in analysis.by_key.items() if t == c.weight and a == c.out_axis), None)
    if out_dim is not None:
        delta = delta[np.flatnonzero(atoms[out_dim.offset : out_dim.offset + out_dim.size])]
    node = proto.graph.node[c.node]
    if node.op_type == "Gemm":  # Y = alpha A B + beta C
        attrs = {a.name: a.f for a in node.attribute if a.name in ("alpha", "beta")}
        delta = delta * attrs.get("alpha", 1.0) / (attrs.get("beta", 1.0) or 1.0)
    if c.bias is not None:
        current = numpy_helper.to_array(inits[c.bias])
        inits[c.bias].CopyFrom(numpy_helper.from_array((current + delta.reshape(current.shape)).astype(current.dtype), c.bias))
        return
    if node.op_type == "ConvTranspose":
        return  # a strided transpose conv spreads a constant unevenly: no exact bias exists
    name = f"{c.weight}_onnxprune_bias"
    proto.graph.initializer.append(numpy_helper.from_array(delta.astype(dtype), name))
    inits[name] = proto.graph.initializer[-1]
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = name
    if node.op_type == "Gemm":
        for attr in node.attribute:
            if attr.name == "beta" and attr.f == 0.0:
                attr.f = 1.0


# --- orchestration --------------------------------------------------------------------------------
def reconstruct(analysis: Analysis, keep: np.ndarray, pruned: onnx.ModelProto, batches, mode: str = "ldrf",
                ridge: float = 1e-3, energy: float | None = None, max_positions: int = 1024, seed: int = 0,
                progress=None, frontier: bool = True) -> tuple[onnx.ModelProto, Report]:
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
    report = Report()
    if not any(touched):
        return pruned, report
    if mode == "local":
        selected = [i for i, t in enumerate(touched) if t]
        waves = [selected]
    else:
        waves = _waves(analysis, consumers, _upstream_pruned(analysis, consumers, touched, atoms))
    fits: dict[int, np.ndarray] = {}
    current = copy.deepcopy(pruned) if mode == "ldrf" else pruned
    # subgraphs (If/Loop bodies) read outer tensors a segment would not carry: whole-prefix passes
    frontier = frontier and mode == "ldrf" and len(waves) > 1 and not any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in current.graph.node for a in n.attribute)
    runners = (_Frontier(analysis.model.proto, batches), _Frontier(current, batches)) if frontier else None
    try:
        for w, wave in enumerate(waves):
            observed = sorted({consumers[i].observed for i in wave})
            # local: the moments of all channels (one Gram per tensor); kept subsets are sub-blocks
            args = (analysis, atoms if mode == "ldrf" else analysis.kept_atoms(analysis.full_keep()),
                    current if mode == "ldrf" else None, observed, batches, max_positions, seed)
            later = {consumers[i].observed for wave_ in waves[w + 1:] for i in wave_}
            try:
                moments = _moments(*args, runners=runners, later=later)
            except NotReplayable:  # a source that yields other data on every pass: run each prefix whole
                for r in runners:
                    r.close()
                runners = None
                moments = _moments(*args)
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
        result.append(touched[i] or bool(_ancestors(analysis, c.observed) & pruned_tensors))
    return result


def _ancestors(analysis: Analysis, name: str) -> set[str]:
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


def _waves(analysis: Analysis, consumers: list[Consumer], active: list[bool]) -> list[list[int]]:
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
        upstream = [j for t in _ancestors(analysis, consumers[i].observed) for j in by_output.get(t, []) if j != i]
        depth[i] = 1 + max((depth[j] for j in upstream if j in depth), default=-1)
    waves: dict[int, list[int]] = {}
    for i, d in depth.items():
        waves.setdefault(d, []).append(i)
    return [waves[d] for d in sorted(waves)]


def _moments(analysis: Analysis, atoms: np.ndarray, pruned: onnx.ModelProto | None, observed: list[str],
             batches, max_positions: int, seed: int, runners: tuple | None = None,
             later: set[str] | None = None) -> dict[str, Moments]:
    """Stream the calibration data; targets from the original model, inputs from ``pruned``
    (LDRF) or from the original's kept channels (local). ``runners``: (original, pruned)
    ``_Frontier`` objects that run only the part of each graph not computed yet; ``later``: the
    tensors the passes after this one observe."""
    if runners is None:

        sessions = [session(_exposing(analysis.model.proto, observed))]
        if pruned is not None:
            sessions.append(session(_exposing(pruned, observed)))

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
                digest = _digest(batch)
                yield [r.step(b, batch, digest) for r in runners], batch
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


FRONTIER_MEMORY = 2 << 30  # bytes of frontier activations kept in memory per model; the rest goes to disk


class _Frontier:
    """Runs a model up to requested tensors, wave after wave, without recomputing what an earlier
    wave computed: the outputs of computed nodes that uncomputed nodes read (the frontier) are
    kept for every batch, and the next run starts from them. ``invalidate`` forgets what lies
    below nodes whose weights changed (LDRF folds the model in place between waves).

    Written here rather than with ``onnx.utils.Extractor``: that needs shapes inferred for every
    intermediate tensor and copies the whole model per extraction; a segment here is the node
    list between known tensors, its inputs typed from the stored arrays.
    """

    def __init__(self, proto: onnx.ModelProto, batches, memory: int | None = None):
        import tempfile

        self.proto, self.batches = proto, batches
        self.memory = FRONTIER_MEMORY if memory is None else memory
        self.done: set[int] = set()  # nodes whose outputs are valid (kept where the frontier needs them)
        self.store: dict[str, list] = {}  # frontier tensor -> per batch: array or .npy path
        self.dtypes: dict[str, np.dtype] = {}
        self.prints: list[bytes] | None = None  # per batch: digest of the inputs the store was computed from
        self.used = 0
        self._tmp = tempfile.TemporaryDirectory(prefix="onnxprune_frontier_")
        self._files = 0

    def close(self) -> None:
        self._tmp.cleanup()

    def _links(self):
        graph = self.proto.graph
        producer = {t: i for i, n in enumerate(graph.node) for t in n.output if t}
        readers: dict[str, list[int]] = {}
        for i, n in enumerate(graph.node):
            for t in n.input:
                readers.setdefault(t, []).append(i)
        return producer, readers

    def invalidate(self, weights: set[str]) -> None:
        """Initializers that changed: their readers and everything below are computed again."""
        gone = changed_nodes(self.proto.graph, weights)
        self.done -= gone
        producer, _ = self._links()
        for t in [t for t in self.store if producer.get(t) in gone]:
            self._drop(t)

    def _keep(self, arr: np.ndarray):
        if self.used + arr.nbytes <= self.memory:
            self.used += arr.nbytes
            return arr
        from pathlib import Path

        self._files += 1
        path = Path(self._tmp.name) / f"{self._files}.npy"
        np.save(path, arr)
        return path

    def _drop(self, name: str) -> None:
        for v in self.store.pop(name):
            if isinstance(v, np.ndarray):
                self.used -= v.nbytes
            else:
                v.unlink(missing_ok=True)

    def _load(self, name: str, b: int) -> np.ndarray:
        v = self.store[name][b]
        return v if isinstance(v, np.ndarray) else np.load(v)

    def begin(self, outputs: list[str], later: set[str] | None = None) -> None:
        """Prepare a pass producing ``outputs``: ``step`` per batch (in the same order on every
        pass), then ``finish``; afterwards the nodes run are done and their frontier kept. With
        ``later`` (the tensors later passes will ask for) only the frontier those need is kept:
        side branches that no later pass reads (auxiliary heads, other outputs) are not stored."""

        self.outputs = outputs
        graph = self.proto.graph
        producer, readers = self._links()
        # Run every node that makes a needed tensor not stored: the stored frontier is where a
        # pass starts (a node that lost its stored input to a fold reaches further up).
        # Constant nodes are recomputed, never stored per batch (some exporters keep weights in them).
        segment = _producers_above(graph, producer, set(outputs), stop=set(self.store))
        self.next_done = {i for i in self.done | segment if graph.node[i].op_type != "Constant"}
        wanted = None if later is None else _producers_above(graph, producer, later)
        self.frontier = {t for i in self.next_done for t in graph.node[i].output
                         if t and any(r not in self.next_done and (wanted is None or r in wanted)
                                      for r in readers.get(t, []))}
        read = {t for i in segment for t in graph.node[i].input}
        self.stored_in = sorted(t for t in read if t in self.store)
        self.new = sorted(t for i in segment for t in graph.node[i].output if t in self.frontier)
        fetch = [o for o in outputs if o in producer and producer[o] in segment]
        self.run_out = list(dict.fromkeys([*fetch, *self.new]))
        self.sess = session(_segment(self.proto, sorted(segment), {t: self.dtypes[t] for t in self.stored_in},
                                     self.run_out)) if self.run_out else None
        self.feeds = {i.name for i in self.sess.get_inputs()} if self.sess else set()
        self.kept = {t: [] for t in self.new}
        self.prints_now = []

    def step(self, b: int, batch: dict[str, np.ndarray], digest: bytes) -> dict[str, np.ndarray]:
        """The pass's outputs for batch number ``b`` (``digest``: ``_digest(batch)``)."""
        self.prints_now.append(digest)
        if self.prints is not None and (b >= len(self.prints) or self.prints_now[b] != self.prints[b]):
            raise NotReplayable("the calibration batches differ from one pass to the next")
        got = {}
        if self.sess is not None:
            feeds = {k: v for k, v in batch.items() if k in self.feeds}
            feeds.update({t: self._load(t, b) for t in self.stored_in})
            got = dict(zip(self.run_out, self.sess.run(self.run_out, feeds)))
        for t in self.new:
            self.kept[t].append(self._keep(got[t]))
            self.dtypes[t] = got[t].dtype
        return {o: got[o] if o in got else batch[o] if o in batch else self._load(o, b) for o in self.outputs}

    def finish(self) -> None:
        self.sess = None
        if self.prints is not None and len(self.prints_now) != len(self.prints):
            raise NotReplayable("the calibration batches differ from one pass to the next")
        self.prints = self.prints_now
        for t in [t for t in self.store if t not in self.frontier]:
            self._drop(t)
        self.store.update(self.kept)
        self.done, self.kept = self.next_done, {}


def _producers_above(graph, producer: dict[str, int], names: set[str], stop: set[str] = frozenset()) -> set[int]:
    """The nodes that ``names`` depend on, not looking above the tensors in ``stop``."""
    seen, stack = set(), [producer[t] for t in names if t in producer and t not in stop]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack.extend(producer[t] for t in graph.node[i].input if t in producer and t not in stop)
    return seen


def changed_nodes(graph: onnx.GraphProto, names: set[str]) -> set[int]:
    """Indices of the nodes whose result can change with the tensors ``names``: their readers
    and everything downstream."""
    consumers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.node):
        for t in n.input:
            consumers.setdefault(t, []).append(i)
    changed, stack = set(), [i for t in names for i in consumers.get(t, [])]
    while stack:
        i = stack.pop()
        if i not in changed:
            changed.add(i)
            stack.extend(j for t in graph.node[i].output for j in consumers.get(t, []))
    return changed



class NotReplayable(Exception):
    """The batches changed between passes: stored activations cannot be paired with them."""


def _digest(batch: dict[str, np.ndarray]) -> bytes:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for k in sorted(batch):
        a = np.ascontiguousarray(batch[k])
        h.update(k.encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


def _segment(proto: onnx.ModelProto, nodes: list[int], inputs: dict[str, np.dtype], outputs: list[str]) -> onnx.ModelProto:
    """The model made of ``nodes`` (indices, in graph order) reading the stored tensors ``inputs``
    (name -> dtype) as graph inputs, shapes left to onnxruntime, besides the original inputs."""
    graph = proto.graph
    used = {t for i in nodes for t in graph.node[i].input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    del g.node[:], g.output[:], g.initializer[:], g.value_info[:], g.input[:]
    g.node.extend(graph.node[i] for i in nodes)
    g.initializer.extend(t for t in graph.initializer if t.name in used)
    g.input.extend(i for i in graph.input if i.name in used)
    for name, dtype in inputs.items():
        g.input.append(onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(dtype), None))
    for name in outputs:
        g.output.append(onnx.ValueInfoProto(name=name))
    return out


def _exposing(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A model whose graph outputs are ``names``: only the nodes and initializers they need (an
    LDRF wave deep in the network runs the whole prefix, an early wave a few layers), types
    left for onnxruntime to infer."""
    graph = proto.graph
    producer = {t: i for i, n in enumerate(graph.node) for t in n.output}
    needed, stack = set(), [producer[n] for n in names if n in producer]
    while stack:
        i = stack.pop()
        if i in needed:
            continue
        needed.add(i)
        stack.extend(producer[t] for t in graph.node[i].input if t in producer)
        for a in graph.node[i].attribute:  # a subgraph may read outer tensors: keep everything
            if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                needed = set(range(len(graph.node)))
                stack = []
                break
    used = {t for i in needed for t in graph.node[i].input}
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    del g.node[:], g.output[:], g.initializer[:], g.value_info[:]
    g.node.extend(graph.node[i] for i in sorted(needed))
    g.initializer.extend(t for t in graph.initializer if t.name in used)
    kept_inputs = [i for i in graph.input if i.name in used or i.name in names]
    del g.input[:]
    g.input.extend(kept_inputs)
    for name in names:
        g.output.append(onnx.ValueInfoProto(name=name))
    return out


# --- compensation inside the masked evaluator ---------------------------------------------------
class Compensator:
    """Local reconstruction for the sensitivity analysis, without rewriting the model.

    The masked evaluator (sensitivity.py) evaluates a candidate by feeding zeroed consumer
    weights to one session. With a compensator it feeds the *folded* weights instead, scattered
    back to the full input width (zeros at the removed channels), plus the corrected biases: the
    same function as the locally reconstructed pruned model, so each group's curve measures the
    damage that reconstruction leaves, not the damage of plain removal. The moments are those of
    the original model over all channels, gathered once; any kept subset is a sub-block of them
    (``Moments.restrict``), so an evaluation costs one small ridge solve per touched consumer.
    """

    def __init__(self, analysis: Analysis, batches, ridge: float = 1e-3, max_positions: int = 256, seed: int = 0):
        self.analysis = analysis
        self.ridge = ridge
        self.consumers = [c for c in find_consumers(analysis) if analysis.model.graph.nodes[c.node].op != "ConvTranspose"]
        observed = sorted({c.observed for c in self.consumers})
        everything = analysis.kept_atoms(analysis.full_keep())
        self.moments = _moments(analysis, everything, None, observed, batches, max_positions, seed) if observed else {}
        self.biases: dict[int, str] = {}
        self.base: dict[str, np.ndarray] = {}

    def prepare(self, proto: onnx.ModelProto) -> list[str]:
        """Give every compensated Conv/Gemm a bias input (zeros where it had none: the same
        function) and return the bias names the evaluator must feed."""
        inits = {t.name: t for t in proto.graph.initializer}
        for i, c in enumerate(self.consumers):
            node = proto.graph.node[c.node]
            if node.op_type not in ("Conv", "Gemm") or c.out_axis is None:
                continue
            if c.bias is not None:
                name = c.bias
            else:
                w = inits[c.weight]
                name = f"{c.weight}_onnxprune_bias"
                if name not in inits:
                    zeros = np.zeros(w.dims[c.out_axis], dtype=numpy_helper.to_array(w).dtype)
                    proto.graph.initializer.append(numpy_helper.from_array(zeros, name))
                    inits[name] = proto.graph.initializer[-1]
                while len(node.input) < 3:
                    node.input.append("")
                node.input[2] = name
                for attr in node.attribute:
                    if attr.name == "beta" and attr.f == 0.0:
                        attr.f = 1.0
            self.biases[i] = name
            self.base[name] = numpy_helper.to_array(inits[name])
        return sorted(set(self.biases.values()))

    def weights(self, keep: np.ndarray) -> dict[str, np.ndarray]:
        """Folded full-width weights and corrected biases of the consumers ``keep`` touches
        (consumers where compensation does not lower the output error are left out: the
        evaluator masks them plainly)."""
        analysis = self.analysis
        atoms = analysis.kept_atoms(keep)
        out: dict[str, np.ndarray] = {}
        for i, c in enumerate(self.consumers):
            if atoms[c.in_dim.offset : c.in_dim.offset + c.in_dim.size].all():
                continue
            o_dim = analysis.by_key[(c.observed, c.observed_axis)]
            kept = np.flatnonzero(atoms[o_dim.offset : o_dim.offset + o_dim.size])
            if not len(kept):
                continue
            m = self.moments[c.observed].restrict(kept)
            a = fit(m, kept, self.ridge, None, local=True)
            plain = np.zeros_like(a)
            plain[kept, np.arange(len(kept))] = 1.0
            w = np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64)
            w3, _ = weight_blocks(w, c)
            e_fit, e_plain = output_errors(w3, [a, plain], m)
            if not e_fit < e_plain:
                continue
            folded, delta = fold(w, c, a, kept)
            moved = np.zeros(np.moveaxis(w, c.in_dim.axis, -1).shape)
            moved[..., c.positions[kept].reshape(-1)] = np.moveaxis(folded, c.in_dim.axis, -1)
            dtype = np.asarray(analysis.model.tensors[c.weight].values).dtype
            out[c.weight] = np.moveaxis(moved, -1, c.in_dim.axis).astype(dtype)
            name = self.biases.get(i)
            if name is not None and delta is not None:
                node = analysis.model.graph.nodes[c.node]
                if node.op == "Gemm":
                    delta = delta * node.attrs.get("alpha", 1.0) / (node.attrs.get("beta", 1.0) or 1.0)
                current = out.get(name, self.base[name])
                out[name] = (current + delta.reshape(current.shape)).astype(current.dtype)
        return out
