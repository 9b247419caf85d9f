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
  processed in waves of increasing depth, one calibration pass per wave.

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

from .analysis import IN, OUT, Analysis, Dim

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
class Moments:
    """Streamed sums for the fit: targets T (C channels) and inputs Z (K kept channels)."""

    n: int = 0
    t: np.ndarray | None = None  # sum T
    z: np.ndarray | None = None  # sum Z
    tt: np.ndarray | None = None  # sum T T'
    tz: np.ndarray | None = None  # sum T Z'
    zz: np.ndarray | None = None  # sum Z Z'

    def update(self, target: np.ndarray, inputs: np.ndarray | None) -> None:
        """``target`` [C, samples], ``inputs`` [K, samples] (float64 accumulation); ``inputs``
        None means the inputs are the targets (one Gram instead of three)."""
        # Per-batch products in float32 (BLAS sgemm/ssyrk, twice the float64 speed; the
        # relative rounding, ~sqrt(samples) x 6e-8, is far below the fit's 1e-3 ridge), summed
        # over batches in float64. Sums of T and Z in float64.
        t = np.ascontiguousarray(target, dtype=np.float32)
        if inputs is None:
            tt = (t @ t.T).astype(np.float64)
            s = t.sum(1, dtype=np.float64)
            parts = dict(t=s, z=s, tt=tt, tz=tt, zz=tt)
        else:
            z = np.ascontiguousarray(inputs, dtype=np.float32)
            parts = dict(t=t.sum(1, dtype=np.float64), z=z.sum(1, dtype=np.float64), tt=(t @ t.T).astype(np.float64),
                         tz=(t @ z.T).astype(np.float64), zz=(z @ z.T).astype(np.float64))
        for key, value in parts.items():
            current = getattr(self, key)
            setattr(self, key, value if current is None else current + value)
        self.n += t.shape[1]

    def restrict(self, kept: np.ndarray) -> "Moments":
        """The moments of (all channels, kept channels) from the moments of (all, all)."""
        return Moments(self.n, self.t, self.t[kept], self.tt, self.tt[:, kept], self.tt[np.ix_(kept, kept)])


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
                progress=None) -> tuple[onnx.ModelProto, Report]:
    """Compensate the channels ``keep`` removes in the consumers of ``pruned`` (see module doc).

    ``batches``: a re-iterable of ``{input name: array}``; ``max_positions`` spatial positions
    per image are sampled (seeded) for the moments, which keeps the cost of the Gram matrices
    bounded on large maps without biasing them.
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
    for w, wave in enumerate(waves):
        observed = sorted({consumers[i].observed for i in wave})
        # local: the moments of all channels (one Gram per tensor); kept subsets are sub-blocks
        moments = _moments(analysis, atoms if mode == "ldrf" else analysis.kept_atoms(analysis.full_keep()),
                           current if mode == "ldrf" else None, observed, batches, max_positions, seed)
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
            apply_folds(analysis, keep, current, {i: fits[i] for i in wave if i in fits}, consumers, in_place=True)
        if progress:
            progress(w + 1, len(waves))
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
             batches, max_positions: int, seed: int) -> dict[str, Moments]:
    """Stream the calibration data; targets from the original model, inputs from ``pruned``
    (LDRF) or from the original's kept channels (local)."""
    from .rewrite import session

    original = _exposing(analysis.model.proto, observed)
    second = _exposing(pruned, observed) if pruned is not None else None
    sess_a = session(original)
    sess_b = session(second) if second is not None else None
    rng = np.random.default_rng(seed)
    moments = {name: Moments() for name in observed}
    axes = {name: next(d.axis for (t, _), d in analysis.by_key.items() if t == name and not d.constant) for name in observed}
    names_a = {i.name for i in sess_a.get_inputs()}
    names_b = {i.name for i in sess_b.get_inputs()} if sess_b is not None else set()
    for batch in batches:
        outs_a = dict(zip(observed, sess_a.run(observed, {k: v for k, v in batch.items() if k in names_a})))
        outs_b = (dict(zip(observed, sess_b.run(observed, {k: v for k, v in batch.items() if k in names_b})))
                  if sess_b is not None else None)
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
        del outs_a, outs_b  # before the next batch runs: two batches of activations never coexist
    return moments


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
