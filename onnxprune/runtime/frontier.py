"""Prefix-activation caches: run a model from stored intermediate activations instead of from
its inputs. :class:`Frontier` serves the reconstruction's passes (the computed part of the graph
grows wave by wave, folds invalidate what lies below them); the sensitivity analysis' focused
evaluator (``allocate.sensitivity``) caches the tensors entering the changed part once and
runs only the suffix."""

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


class Frontier:
    """Runs a model up to requested tensors, wave after wave, without recomputing what an earlier
    wave computed: the outputs of computed nodes that uncomputed nodes read (the frontier) are
    kept for every batch, and the next run starts from them. ``invalidate`` forgets what lies
    below nodes whose weights changed (LDRF folds the model in place between waves).

    Written here rather than with ``onnx.utils.Extractor``: that needs shapes inferred for every
    intermediate tensor and copies the whole model per extraction; a segment here is the node
    list between known tensors, its inputs typed from the stored arrays.
    """

    def __init__(self, proto: onnx.ModelProto, batches, memory: int | None = None):
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
        self.sess = session(cut_segment(self.proto, sorted(segment), {t: self.dtypes[t] for t in self.stored_in},
                                     self.run_out)) if self.run_out else None
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


class SuffixCache:
    """The part of a graph that weights ``names`` can change, fed by cached activations.

    ``build`` runs the prefix once per batch and keeps the tensors entering the changed part
    (up to ``budget`` bytes); ``run`` then evaluates only that suffix with new weights. The
    sensitivity analysis' masked evaluator uses it (``MaskedEvaluator.focus_on``).
    """

    def __init__(self, sess, inputs: set[str], cached: list[dict[str, np.ndarray]], output: str):
        self.sess, self.inputs, self.cached, self.output = sess, inputs, cached, output

    def run(self, weights: dict[str, np.ndarray]) -> list[np.ndarray]:
        fed = {k: v for k, v in weights.items() if k in self.inputs}
        return [self.sess.run([self.output], {**c, **fed})[0] for c in self.cached]

    @classmethod
    def build(cls, proto: onnx.ModelProto, names: set[str], output: str, batches, providers, budget: int):
        graph = proto.graph
        nodes = list(graph.node)
        if not names or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for n in nodes for a in n.attribute):
            return None
        changed = changed_nodes(graph, names)
        produced = {t for i in changed for t in nodes[i].output}
        inits = {t.name for t in graph.initializer}
        model_inputs = {t.name for t in graph.input} - inits
        cut = sorted({t for i in changed for t in nodes[i].input if t and t not in produced and t not in inits})
        if len(changed) == len(nodes) or output not in produced:
            return None  # nothing to save (or the output does not depend on the weights)
        from_prefix = [t for t in cut if t not in model_inputs]
        cached = []
        if from_prefix:
            prefix = onnx.ModelProto()
            prefix.CopyFrom(proto)
            del prefix.graph.output[:]
            prefix.graph.output.extend(onnx.ValueInfoProto(name=t) for t in from_prefix)
            sess, used = session(prefix, providers), 0
            for b in batches:
                arrays = dict(zip(from_prefix, sess.run(from_prefix, b)))
                used += sum(a.nbytes for a in arrays.values())
                if used > budget:
                    return None
                cached.append({**{t: b[t] for t in cut if t in model_inputs}, **arrays})
        else:
            cached = [{t: b[t] for t in cut} for b in batches]
        suffix = onnx.ModelProto()
        suffix.CopyFrom(proto)
        g = suffix.graph
        del g.node[:], g.input[:], g.output[:]
        g.node.extend(nodes[i] for i in sorted(changed))
        needed = {t for i in changed for t in nodes[i].input}
        kept_inits = [t for t in graph.initializer if t.name in needed]
        del g.initializer[:]
        g.initializer.extend(kept_inits)
        produced_or_cut = produced | set(cut)
        kept_info = [v for v in graph.value_info if v.name in produced_or_cut]
        del g.value_info[:]
        g.value_info.extend(kept_info)
        batched = set(model_inputs)  # tensors computed from the data carry its batch; constants do not
        for node in nodes:
            if any(t in batched for t in node.input):
                batched.update(node.output)
        for t in cut:
            a = cached[0][t]
            # Batches may differ in size. A cut constant (PaddlePaddle's Reshape'd [1, C, 1, 1] biases)
            # keeps its shape: a shared "N" would let onnxruntime fuse Conv + Add as equal shapes (issue 15).
            shape = ["N", *a.shape[1:]] if a.ndim and t in batched else list(a.shape)
            g.input.append(onnx.helper.make_tensor_value_info(t, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), shape))
        g.input.extend(i for i in graph.input if i.name in names and i.name in needed)
        g.output.append(onnx.ValueInfoProto(name=output))
        return cls(session(suffix, providers), {i.name for i in g.input}, cached, output)
