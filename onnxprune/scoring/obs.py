"""Structured Optimal Brain Surgeon: choose the channels by what the refit can recover.

For every linear consumer of a group (Conv with group 1, Gemm, MatMul with a constant weight)
the weight acts on the *unfolded* input: a k x k convolution's input channel owns k*k columns
(im2col), a Flatten -> Gemm block's channel owns its positions. With X_p the unfolded inputs of
the pruned network built so far, X_d those of the dense network (each augmented with a constant
1: the unpenalised intercept that becomes the bias), per image:

    H = E[X_p X_p'] + lambda I      lambda = ridge * mean(diag), the intercept not damped
    G = E[X_d X_p']                 W* = W G H^-1     (the refit optimum; target: W X_d)

Removing the channel set S (all its columns) costs, in squared output error per image,

    cost(S) = tr(W*_S (H^-1_SS)^-1 W*_S')
    W* <- W* - W*_S (H^-1_SS)^-1 H^-1_{S,:}      H^-1 <- H^-1 - H^-1_{:,S} (H^-1_SS)^-1 H^-1_{S,:}

(OBS's 1/2 tr(...) is half the error increase; we count the increase itself). The update is the
exact least-squares refit on the remaining columns, so a greedy removal gives, for free, the
group's error at every width. A group read by several consumers (residual stream, concat, SE)
sums their costs, each divided by its consumer's output energy tr(W* H W*') so that a consumer
is not weighted by its activation scale.

Two uses (``compress --criterion obs``):

* ``obs_profiles`` — one pass over the dense network: per group the channel order (most
  important first) and ``loss[b]``, the cumulative relative error after ``b`` blocks of ``align``
  channels are removed. Used for the allocation (and by an error-profile allocator).
* ``obs_select`` (``scoring/obs_select.py``) — once the allocation fixed how many channels each group
  keeps, the groups are chosen again in the network's order, each from the statistics of the
  network pruned so far, one pass per group. It returns the kept channels and the refitted
  weights, which ``reconstruct.obs_fold.fold_obs`` writes into the rewritten model
  (``--reconstruct obs``); LDRF can
  instead refit from the same kept channels.

Spatial positions of a convolution are subsampled (``max_positions`` per image, seeded) and the
products are formed and summed in float64 (``reconstruct.moments.gram``, the one Gram
implementation), so memory is O(columns^2) per consumer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ..analysis import Analysis, ChannelGroup
from ..reconstruct.consumers import Consumer, find_consumers
from ..reconstruct.moments import gram
from ..runtime.frontier import NotReplayable, digest
from ..runtime.session import session
from ..runtime.submodel import exposing
from .weights import group_magnitude

OBS_CRITERIA = ("obs",)


@dataclass(frozen=True)
class ObsSettings:
    """``ridge``: damping relative to mean(diag H); ``max_positions``: sampled output positions
    per image of a convolution; ``align``: channels removed per greedy step (profile blocks)."""

    ridge: float = 1e-2
    max_positions: int = 64
    align: int = 1
    seed: int = 0
    refresh: bool = True  # refit, after the selection, consumers whose input changed since their refit
    frontier: bool = True  # passes run only the layers not computed yet (runtime.frontier.Frontier)


# --- consumers as matrices -----------------------------------------------------------------------
@dataclass
class Layer:
    """One consumer as ``W [out, columns]`` acting on the unfolded input ``input``."""

    consumer: Consumer
    w: np.ndarray  # effective weight, alpha applied; last column = intercept (zero)
    input: str  # tensor the node reads
    op: str
    kk: int  # columns per in-dim atom (k*k for a conv, 1 otherwise)
    conv: dict = field(default_factory=dict)  # kernel, strides, pads, dilations
    alpha: float = 1.0
    beta: float = 1.0
    trans_b: bool = False
    intercept: bool = True

    def columns(self, atoms: np.ndarray) -> np.ndarray:
        """Columns of W read by in-dim ``atoms`` ([n] -> [n, kk])."""
        return np.asarray(atoms)[:, None] * self.kk + np.arange(self.kk)[None, :]


def _attrs(node) -> dict:
    return dict(node.attrs)


def layers_of(analysis: Analysis) -> list[Layer]:
    """The consumers OBS can refit: Conv (group 1, 2-D, explicit pads), Gemm (transA 0),
    MatMul with a 2-D constant second input."""
    nodes = analysis.model.graph.nodes
    out = []
    for c in find_consumers(analysis):
        node = nodes[c.node]
        a = _attrs(node)
        w = np.asarray(analysis.model.tensors[c.weight].values, dtype=np.float64)
        x = node.inputs[0]
        if node.inputs[1].name != c.weight:
            continue
        if node.op == "Conv":
            if w.ndim != 4 or a.get("group", 1) != 1 or a.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
                continue
            kh, kw = w.shape[2:]
            pads = list(a.get("pads", [0, 0, 0, 0]))
            conv = dict(kernel=(kh, kw), strides=tuple(a.get("strides", [1, 1])), pads=pads,
                        dilations=tuple(a.get("dilations", [1, 1])))
            wm = w.reshape(w.shape[0], -1)
            layer = Layer(c, _with_intercept(wm), x.name, "Conv", kh * kw, conv)
        elif node.op == "Gemm":
            if a.get("transA", 0):
                continue
            tb = bool(a.get("transB", 0))
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
            wm = (w if tb else w.T) * alpha
            layer = Layer(c, _with_intercept(wm), x.name, "Gemm", 1, alpha=alpha, beta=beta or 1.0, trans_b=tb)
        elif node.op == "MatMul":
            if w.ndim != 2:
                continue
            layer = Layer(c, w.T.copy(), x.name, "MatMul", 1, intercept=False)
        else:
            continue
        out.append(layer)
    return out


def _with_intercept(wm: np.ndarray) -> np.ndarray:
    return np.concatenate([wm, np.zeros((wm.shape[0], 1))], axis=1)


def unfold(layer: Layer, x: np.ndarray, rng: np.random.Generator, max_positions: int) -> tuple[np.ndarray, float]:
    """Sampled rows of the unfolded input, [samples, columns(+1)], and the weight of each
    sampled row (positions it stands for). Conv rows are im2col patches at sampled outputs."""
    x = np.asarray(x)
    if layer.op == "Conv":
        n, c, h, w_ = x.shape
        (kh, kw), (sh, sw), (dh, dw) = layer.conv["kernel"], layer.conv["strides"], layer.conv["dilations"]
        pt, pl, pb, pr = layer.conv["pads"]
        ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wo = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
        total = n * ho * wo
        take = min(total, max_positions * n)
        pick = np.sort(rng.choice(total, size=take, replace=False)) if take < total else np.arange(total)
        img, rest = pick // (ho * wo), pick % (ho * wo)
        oy, ox = rest // wo, rest % wo
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        rows = oy[:, None] * sh + np.arange(kh)[None, :] * dh
        cols = ox[:, None] * sw + np.arange(kw)[None, :] * dw
        patches = xp[img[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # [S, kh, kw, C]
        flat = patches.transpose(0, 3, 1, 2).reshape(take, c * kh * kw)
        scale = total / take
    else:
        flat = x.reshape(-1, x.shape[-1])
        scale = 1.0
    if layer.intercept:
        flat = np.concatenate([flat, np.ones((flat.shape[0], 1), flat.dtype)], axis=1)
    return np.ascontiguousarray(flat, dtype=np.float32), scale


@dataclass
class Gram:
    """Per-image sums: ``hpp`` = E[X_p X_p'], ``hdp`` = E[X_d X_p'] (None: the dense pass)."""

    images: int = 0
    hpp: np.ndarray | None = None
    hdp: np.ndarray | None = None


def gather(analysis: Analysis, layers: list[Layer], batches, masked: onnx.ModelProto | None,
           removed: dict[int, np.ndarray], settings: ObsSettings, seed: int = 0, runners: list | None = None) -> list[Gram]:
    """One calibration pass: dense inputs from the original model, pruned inputs from
    ``masked`` (None: dense only, hdp = hpp). ``removed[i]``: columns of layer i that the pruned
    network no longer has (zeroed in X_p). ``runners``: [dense, masked] ``runtime.frontier.Frontier``
    objects that run only what earlier passes did not (emptied, and the pass run whole, if the
    batches differ from one pass to the next)."""
    names = sorted({l.input for l in layers})
    if runners:
        try:
            return _accumulate(layers, _frontier_stream(runners, names, batches), removed, settings, seed, True)
        except NotReplayable:
            for r in runners:
                r.close()
            runners.clear()
    return _accumulate(layers, _session_stream(analysis, masked, names, batches), removed, settings, seed,
                       masked is not None)


def _session_stream(analysis, masked, names, batches):
    sessions = [session(exposing(p, names)) for p in (analysis.model.proto, masked) if p is not None]
    feeds = [{i.name for i in s.get_inputs()} for s in sessions]
    for batch in batches:
        yield [dict(zip(names, s.run(names, {k: v for k, v in batch.items() if k in f})))
               for s, f in zip(sessions, feeds)], batch


def _frontier_stream(runners, names, batches):
    for r in runners:
        r.begin(names)
    for b, batch in enumerate(batches):
        yield [r.step(b, batch, digest(batch)) for r in runners], batch
    for r in runners:
        r.finish()


def _accumulate(layers, stream, removed, settings, seed, paired: bool) -> list[Gram]:
    rng = np.random.default_rng([seed, 17])
    grams = [Gram() for _ in layers]
    for outs, batch in stream:
        n_img = len(next(iter(batch.values())))
        for i, layer in enumerate(layers):
            state = rng.bit_generator.state
            xd, scale = unfold(layer, outs[0][layer.input], rng, settings.max_positions)
            if paired:
                rng.bit_generator.state = state  # the same positions in both networks
                xp, _ = unfold(layer, outs[1][layer.input], rng, settings.max_positions)
            else:
                xp = xd
            if i in removed and len(removed[i]):
                xp = xp.copy() if xp is xd else xp
                xp[:, removed[i]] = 0.0
            g = grams[i]
            hpp = gram(xp.T)[1] * scale  # float64 products and sums (reconstruct.moments)
            hdp = hpp if xp is xd else gram(xd.T, xp.T)[1] * scale
            g.hpp = hpp if g.hpp is None else g.hpp + hpp
            g.hdp = hdp if g.hdp is None else g.hdp + hdp
            g.images += n_img
        del outs
    return grams


# --- the greedy ------------------------------------------------------------------------------------
class ConsumerState:
    """One consumer during a group's greedy removal. ``w``/``hinv`` hold the live columns only:
    once half of them are gone they are compacted, so a long trajectory costs about twice its
    first step's n^2 per step on average instead of n^2 throughout. ``full_w``: W* over every
    column (removed ones zero)."""

    def __init__(self, layer: Layer, gram: Gram, chans: np.ndarray, cols: np.ndarray, ridge: float):
        n = gram.images
        h = gram.hpp / n
        ncol = h.shape[0]
        body = ncol - 1 if layer.intercept else ncol
        diag = np.diag(h)[:body]
        live = diag[diag > 0]
        lam = ridge * (live.mean() if live.size else 1.0)
        h = h + np.diag(np.r_[np.full(body, lam), np.zeros(ncol - body)])
        self.hinv = np.linalg.inv(h)
        self.hinv = (self.hinv + self.hinv.T) / 2
        self.w = (layer.w @ (gram.hdp / n)) @ self.hinv  # W* = W G H^-1
        energy = float(np.einsum("ij,jk,ik->", self.w, h, self.w))
        self.norm = 1.0 / energy if energy > 0 else 1.0
        self.chans, self.cols = chans, cols  # group channels present, [m, kk*P] their (full) columns
        self.pos = np.arange(ncol)  # full column -> live index, -1 once removed
        self.dead = 0  # removed columns still held in w/hinv

    @property
    def full_w(self) -> np.ndarray:
        out = np.zeros((self.w.shape[0], len(self.pos)))
        live = np.flatnonzero(self.pos >= 0)
        out[:, live] = self.w[:, self.pos[live]]
        return out

    def costs(self, size: int, alive: np.ndarray) -> np.ndarray:
        """Relative cost of removing each single channel of the group (0 where absent)."""
        out = np.zeros(size)
        sel = alive[self.chans]
        if not sel.any():
            return out
        cols = self.pos[self.cols[sel]]
        hb = self.hinv[cols[:, :, None], cols[:, None, :]]  # [m, k, k]
        wb = self.w[:, cols]  # [out, m, k]
        wtw = np.einsum("omj,oml->mjl", wb, wb)
        np.add.at(out, self.chans[sel], (np.linalg.inv(hb) * wtw).sum(axis=(1, 2)) * self.norm)
        return out

    def remove(self, channels: np.ndarray) -> float:
        """Remove the group channels ``channels`` (those present here); returns their joint cost."""
        mask = np.isin(self.chans, channels)
        if not mask.any():
            return 0.0
        full = self.cols[mask].ravel()
        idx = self.pos[full]
        m = np.linalg.inv(self.hinv[np.ix_(idx, idx)])
        ws = self.w[:, idx]
        cost = float(np.einsum("oi,ij,oj->", ws, m, ws)) * self.norm
        hs = self.hinv[idx, :]
        self.w -= (ws @ m) @ hs
        self.hinv -= hs.T @ m @ hs
        self.w[:, idx] = 0.0
        self.hinv[idx, :] = 0.0
        self.hinv[:, idx] = 0.0
        self.pos[full] = -1
        self.dead += len(idx)
        if 2 * self.dead >= self.hinv.shape[0]:
            self._compact()
        return cost

    def _compact(self) -> None:
        live = np.flatnonzero(self.pos >= 0)
        keep = self.pos[live]  # increasing: live indices keep the full columns' order
        self.hinv = self.hinv[np.ix_(keep, keep)]
        self.w = self.w[:, keep]
        self.pos[live] = np.arange(len(live))
        self.dead = 0


def consumer_states(group: ChannelGroup, layers: list[Layer], grams: dict[int, Gram],
                    settings: ObsSettings) -> dict[int, ConsumerState]:
    """The greedy's state of every refittable consumer of ``group`` with statistics in ``grams``."""
    out = {}
    for i, layer in enumerate(layers):
        d = layer.consumer.in_dim.id
        if d not in group.atom_index or i not in grams:
            continue
        atoms, chans = group.atom_index[d], group.channel_atoms[d]
        order = np.argsort(chans, kind="stable")
        counts = np.bincount(chans, minlength=group.size)
        present = np.flatnonzero(counts)
        if len(set(counts[present].tolist())) != 1:
            continue  # uneven atoms per channel: not a clean block structure
        cols = layer.columns(atoms[order]).reshape(len(present), -1)
        out[i] = ConsumerState(layer, grams[i], present, cols, settings.ridge)
    return out


def greedy(group: ChannelGroup, states: dict[int, ConsumerState], remove: int, align: int = 1):
    """Remove ``remove`` channels, ``align`` at a time (the cheapest single costs form a step's
    block; its joint cost is exact). Returns (removal order, cumulative cost after each step)."""
    alive = np.ones(group.size, dtype=bool)
    removed, cum, total = [], [], 0.0
    while len(removed) < remove:
        step = min(align, remove - len(removed))
        cost = sum((s.costs(group.size, alive) for s in states.values()), np.zeros(group.size))
        cand = np.flatnonzero(alive)
        pick = cand[np.lexsort((cand, cost[cand]))[:step]]
        total += sum(s.remove(pick) for s in states.values())
        alive[pick] = False
        removed.extend(pick.tolist())
        cum.append(total)
    return np.asarray(removed, dtype=np.int64), np.asarray(cum)


# --- profiles -------------------------------------------------------------------------------------
def obs_profiles(analysis: Analysis, batches, settings: ObsSettings = ObsSettings(),
                 groups: list[ChannelGroup] | None = None):
    """``(order, loss)`` from the dense network's statistics (one pass). ``order[gid]``: channels
    most important first; ``loss[gid][b]``: cumulative relative error after ``b`` blocks of
    ``align`` channels are removed (``b = 0 .. size // align``; loss[0] = 0). Groups without a
    consumer OBS can refit get the group-magnitude order and, as loss, the share of the group's
    weight energy removed."""
    groups = analysis.prunable_groups if groups is None else groups
    layers = layers_of(analysis)
    wanted = {d for g in groups for d in g.atom_index}
    used = [i for i, l in enumerate(layers) if l.consumer.in_dim.id in wanted]
    grams = dict(zip(used, gather(analysis, [layers[i] for i in used], batches, None, {}, settings, settings.seed)))
    order, loss = {}, {}
    for g in groups:
        states = consumer_states(g, layers, grams, settings)
        nblocks = g.size // settings.align
        if states:
            removed, cum = greedy(g, states, nblocks * settings.align, settings.align)
            rest = np.setdiff1d(np.arange(g.size), removed)  # the remainder (size % align) counts as most important
            order[g.id] = np.r_[rest, removed[::-1]].astype(np.int64)
            loss[g.id] = np.r_[0.0, cum]
        else:
            score = group_magnitude(g, analysis)
            order[g.id] = np.lexsort((np.arange(g.size), -score))
            share = np.cumsum(score[order[g.id][::-1]]) / max(score.sum(), 1e-300)
            loss[g.id] = np.r_[0.0, share[settings.align - 1 :: settings.align][:nblocks]]
    return order, loss


def scores_from_profiles(order: dict[int, np.ndarray], loss: dict[int, np.ndarray], align: int = 1) -> dict[int, np.ndarray]:
    """Per channel, the group's cumulative error when the channel's block goes: comparable
    across groups (``--allocation global`` then removes channels at equal error), and within a
    group it reproduces ``order`` (a small rank term breaks ties; never-removed channels top)."""
    out = {}
    for gid, o in order.items():
        size, lg = len(o), np.asarray(loss[gid], dtype=np.float64)
        nremoved = (len(lg) - 1) * align
        step = np.arange(size)[::-1]  # removal step of order[p]: the last channel goes first
        block = np.minimum(step // align + 1, len(lg) - 1)
        value = np.where(step < nremoved, lg[block], lg[-1] * 2 + 1.0)
        top = max(float(np.abs(value).max()), 1e-30)
        s = np.zeros(size)
        s[o] = value + top * 1e-9 * np.arange(size, 0, -1) / size
        out[gid] = s
    return out
