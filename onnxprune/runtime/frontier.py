"""Prefix-activation caching: run a model from stored intermediate activations instead of from
its inputs. One implementation, :class:`PrefixCache` (per-batch store in memory up to a budget,
then on disk or refused; segments cut with ``submodel.segment``), in two configurations:
:class:`Frontier` serves the reconstruction's passes (the computed part of the graph grows wave
by wave, folds invalidate what lies below them); :class:`SuffixCache` serves the sensitivity
analysis' focused evaluator (``allocate.sensitivity``): the tensors entering the part some
weights change are stored once, and each evaluation runs only that suffix."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import onnx

from .session import session
from .submodel import changed_nodes, producers_above
from .submodel import segment as cut_segment


FRONTIER_MEMORY = 2 << 30  # bytes of frontier activations kept in memory per model; the rest goes to disk


class PrefixCache:
    """Stored activations of a model, per batch, and sessions that start from them.

    Two ways to use it. Waves (``begin``/``step``/``finish``, :class:`Frontier`): run the model
    up to requested tensors without recomputing what an earlier wave computed: the outputs of
    computed nodes that uncomputed nodes read (the frontier) are kept for every batch, and the
    next run starts from them; ``invalidate`` forgets what lies below nodes whose weights
    changed (LDRF folds the model in place between waves). A fixed suffix (``focus``/``run``,
    :class:`SuffixCache`): store once the tensors entering the part of the graph that some
    weights change, then evaluate only that part, as often as wanted, with new weights.

    Activations beyond ``memory`` bytes go to disk (``spill``) or make ``fill`` refuse.
    Written here rather than with ``onnx.utils.Extractor``: that needs shapes inferred for every
    intermediate tensor and copies the whole model per extraction; a segment here is the node
    list between known tensors, its inputs typed from the stored arrays.
    """

    def __init__(self, proto: onnx.ModelProto, batches, memory: int | None = None, spill: bool = True,
                 providers=None):
        self.proto, self.batches, self.spill, self.providers = proto, batches, spill, providers
        self.memory = FRONTIER_MEMORY if memory is None else memory
        self.done: set[int] = set()  # nodes whose outputs are valid (kept where the frontier needs them)
        self.store: dict[str, list] = {}  # frontier tensor -> per batch: array or .npy path
        self.dtypes: dict[str, np.dtype] = {}
        self.prints: list[bytes] | None = None  # per batch: digest of the inputs the store was computed from
        self.used = 0
        self._tmp: tempfile.TemporaryDirectory | None = None  # made on the first spill
        self._files = 0

    def close(self) -> None:
        if self._tmp is not None:
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
        """The array, or the path it was saved to; None where it does not fit and ``spill`` is off."""
        if self.used + arr.nbytes <= self.memory:
            self.used += arr.nbytes
            return arr
        if not self.spill:
            return None
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="onnxprune_frontier_")
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

    def _cut(self, nodes: list[int], stored: list[str], outputs: list[str], shapes=None, graph_inputs=None,
             value_info: bool = False):
        """A session running ``nodes`` from the ``stored`` tensors (typed from the stored arrays)."""
        inputs = {t: self.dtypes[t] for t in stored}
        model = cut_segment(self.proto, nodes, inputs, outputs, shapes, graph_inputs, value_info)
        return session(model, self.providers)

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
        segment = producers_above(graph, producer, set(outputs), stop=set(self.store))
        self.next_done = {i for i in self.done | segment if graph.node[i].op_type != "Constant"}
        wanted = None if later is None else producers_above(graph, producer, later)
        self.frontier = {t for i in self.next_done for t in graph.node[i].output
                         if t and any(r not in self.next_done and (wanted is None or r in wanted)
                                      for r in readers.get(t, []))}
        read = {t for i in segment for t in graph.node[i].input}
        self.stored_in = sorted(t for t in read if t in self.store)
        self.new = sorted(t for i in segment for t in graph.node[i].output if t in self.frontier)
        fetch = [o for o in outputs if o in producer and producer[o] in segment]
        self.run_out = list(dict.fromkeys([*fetch, *self.new]))
        self.sess = self._cut(sorted(segment), self.stored_in, self.run_out) if self.run_out else None
        self.feeds = {i.name for i in self.sess.get_inputs()} if self.sess else set()
        self.kept = {t: [] for t in self.new}
        self.prints_now = []

    def step(self, b: int, batch: dict[str, np.ndarray], digest: bytes) -> dict[str, np.ndarray]:
        """The pass's outputs for batch number ``b`` (``digest``: ``digest(batch)``)."""
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

    # --- a fixed suffix fed by stored activations (SuffixCache) ---------------------------------
    def fill(self, names: list[str]) -> bool:
        """Compute the tensors ``names`` for every batch, with the nodes above them, and store
        them. False (nothing stored) where they exceed ``memory`` and ``spill`` is off."""
        if not names:
            return True
        producer, _ = self._links()
        nodes = producers_above(self.proto.graph, producer, set(names), stop=set(self.store))
        sess, kept = self._cut(sorted(nodes), [], names), {t: [] for t in names}
        feeds = {i.name for i in sess.get_inputs()}
        for b in self.batches:
            for t, a in zip(names, sess.run(names, {k: v for k, v in b.items() if k in feeds})):
                self.dtypes[t] = a.dtype
                v = self._keep(a)
                if v is None:
                    self.used -= sum(v.nbytes for vs in kept.values() for v in vs if isinstance(v, np.ndarray))
                    return False
                kept[t].append(v)
        self.store.update(kept)
        return True

    def focus(self, names: set[str], output: str) -> bool:
        """Prepare ``run``: store the tensors entering the nodes whose result the weights
        ``names`` (graph inputs) can change, and a session of those nodes alone. False where
        nothing would be saved (no names, subgraphs, every node changes, ``output`` does not
        depend on the names) or the stored tensors would exceed the budget."""
        graph = self.proto.graph
        nodes = list(graph.node)
        if not names or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for n in nodes for a in n.attribute):
            return False
        changed = changed_nodes(graph, names)
        produced = {t for i in changed for t in nodes[i].output}
        inits = {t.name for t in graph.initializer}
        model_inputs = {t.name for t in graph.input} - inits
        cut = sorted({t for i in changed for t in nodes[i].input if t and t not in produced and t not in inits})
        if len(changed) == len(nodes) or output not in produced:
            return False
        if not self.fill([t for t in cut if t not in model_inputs]):
            return False
        first = self.batches[0]
        for t in cut:
            if t not in self.store:  # a model input, fed from the batches
                self.dtypes[t] = first[t].dtype
        batched = set(model_inputs)  # tensors computed from the data carry its batch; constants do not
        for node in nodes:
            if any(t in batched for t in node.input):
                batched.update(node.output)
        shapes = {}
        for t in cut:
            a = self._load(t, 0) if t in self.store else first[t]
            # Batches may differ in size. A cut constant (PaddlePaddle's Reshape'd [1, C, 1, 1] biases)
            # keeps its shape: a shared "N" would let onnxruntime fuse Conv + Add as equal shapes (issue 15).
            shapes[t] = ["N", *a.shape[1:]] if a.ndim and t in batched else list(a.shape)
        self.output, self.stored_in = output, cut
        self.sess = self._cut(sorted(changed), cut, [output], shapes, graph_inputs=names, value_info=True)
        # the weights are overridable initializers, not listed among get_inputs()
        self.inputs = {i.name for i in [*self.sess.get_inputs(), *self.sess.get_overridable_initializers()]}
        return True

    def run(self, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The focused output per batch with ``weights`` (those the suffix reads are fed)."""
        fed = {k: v for k, v in weights.items() if k in self.inputs}
        out = []
        for i, b in enumerate(self.batches):
            feeds = {t: self._load(t, i) if t in self.store else b[t] for t in self.stored_in}
            out.append(self.sess.run([self.output], {**feeds, **fed})[0])
        return out


class Frontier(PrefixCache):
    """The reconstruction's configuration: waves of passes, activations beyond ``memory``
    spilled to disk (``FRONTIER_MEMORY`` by default)."""


class NotReplayable(Exception):
    """The batches changed between passes: stored activations cannot be paired with them."""


def digest(batch: dict[str, np.ndarray]) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(batch):
        a = np.ascontiguousarray(batch[k])
        h.update(k.encode())
        h.update(str((a.dtype, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.digest()


class SuffixCache(PrefixCache):
    """The sensitivity analysis' configuration (``MaskedEvaluator.focus_on``): the part of a
    graph that weights ``names`` can change, fed by activations stored once, in memory only."""

    @classmethod
    def build(cls, proto: onnx.ModelProto, names: set[str], output: str, batches, providers, budget: int):
        """The cache ready to ``run``, or None where focusing saves nothing or exceeds ``budget`` bytes."""
        cache = cls(proto, batches, memory=budget, spill=False, providers=providers)
        if cache.focus(names, output):
            return cache
        cache.close()
        return None
