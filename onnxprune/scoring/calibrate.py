"""One streaming onnxruntime pass that feeds intermediate activations to collectors.

:func:`calibrate` builds a single session over a *copy* of the model whose outputs are exactly
the requested tensors (nodes that do not lead to them are dropped), streams the data through it
batch by batch, hands every activation to its collectors and drops it. Memory is bounded by a
few batches of the requested activations (see ``memory_budget``) plus the collectors' sums.

    requests = {"relu1_out": [RankCollector(), ApozCollector()], "fc_in": [GramCollector()]}
    result = calibrate(model, requests, load_data("calib.npz", input_specs(model)))
    result.stats["relu1_out"]["rank"], result.provider, result.num_images

The batch size follows a memory budget: the bytes per image of the requested activations, read
from inferred shapes, divide ``memory_budget`` (512 MiB by default). :func:`run_model` and
:func:`evaluate_top1` run a whole model for evaluation.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from .ranks import one_blas_thread
from ..data import DEFAULT_BATCH_SIZE, Dataset, InputSpec, input_specs, load_data
from ..errors import DataError, ModelError, OnnxPruneError, first_line
from ..model.files import PROTO_LIMIT
from ..runtime.session import cpu_count, open_session, session_for
from ..runtime.submodel import needed_nodes, subgraph_inputs

__all__ = [
    "CalibrationResult",
    "activation_bytes_per_image",
    "calibrate",
    "evaluate_top1",
    "observed_model",
    "run_model",
]

# Bytes of requested activations alive at once. onnxruntime's own working memory (roughly
# proportional to the batch too) comes on top: ResNet-50 peaks near 2 GB with this default.
DEFAULT_MEMORY_BUDGET = 512 << 20
MAX_AUTO_BATCH = 256

Key = str | tuple[str, str]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CalibrationResult:
    """What one calibration pass produced.

    ``stats[key][collector.name]`` is ``collector.result()``; ``key`` is a tensor name, or a pair
    of names for two-tensor collectors. ``num_images`` counts the images run through the model,
    ``provider`` is the execution provider onnxruntime really used, ``wall_time`` is in seconds,
    ``converged`` says whether every collector had converged when the pass ended, and
    ``warnings`` holds one-line notes for the user (e.g. a CUDA request that fell back to CPU).
    """

    stats: dict[Key, dict[str, Any]]
    num_images: int
    provider: str
    wall_time: float
    batch_size: int
    converged: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)
    rank_images: tuple[int, int] | None = None  # (fewest, most) images HRank used per tensor (early stop)


# --------------------------------------------------------------------------- providers


# --------------------------------------------------------------------------- the observed model


def observed_model(
    model: onnx.ModelProto, tensors: Sequence[str]
) -> tuple[onnx.ModelProto, dict[str, onnx.ValueInfoProto]]:
    """A copy of the model whose outputs are ``tensors``, and the inferred type of each.

    Shapes are inferred on the copy; a tensor whose type stays unknown is declared float (what
    every activation a CNN pruner observes is), because onnxruntime needs a type for each output.
    The argument is never modified.
    """
    graph = model.graph
    produced = {out for node in graph.node for out in node.output if out}
    initializers = {t.name for t in graph.initializer}
    for name in tensors:
        if name in initializers:
            raise ModelError(f"tensor '{name}' is a constant (initializer), not an activation")
        if name not in produced:
            raise ModelError(f"tensor '{name}' is not produced by any node of the model")
    nodes = needed_nodes(graph, tensors)
    used = {n for node in nodes for n in list(node.input) + subgraph_inputs(node)}
    inputs = {vi.name for vi in graph.input}

    out = onnx.ModelProto()
    out.CopyFrom(model)  # ProtoBuf copy: the caller's model is left as it was
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept_init = [t for t in graph.initializer if t.name in used or t.name in inputs]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept_init)
    del out.graph.output[:]

    types = _inferred_types(out)
    for name in tensors:
        vi = types.get(name)
        if vi is None or not vi.type.tensor_type.elem_type:
            vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            types[name] = vi
        out.graph.output.append(vi)
    return out, types


def _inferred_types(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    """Value infos of every tensor shape inference can type (none if it cannot run)."""
    known = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.input)}
    try:
        inferred = shape_inference.infer_shapes(model) if model.ByteSize() < PROTO_LIMIT else model
    except Exception:  # inference is best effort: onnxruntime still runs untyped-shape outputs
        return known
    known.update({vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)})
    return known


def activation_bytes_per_image(vi: onnx.ValueInfoProto) -> int | None:
    """Bytes of one image's slice of a tensor (all dims but the first), or None if unknown."""
    tt = vi.type.tensor_type
    if not tt.elem_type or not tt.HasField("shape") or len(tt.shape.dim) == 0:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim[1:]]
    if any(d is None for d in dims):
        return None
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def _batch_size(specs: Sequence[InputSpec], per_image: int | None, budget: int, data: Dataset) -> int:
    """Images per batch: the model's static batch if it has one, else what fits the budget."""
    static = {s.static_dim(0) for s in specs if s.shape}
    static.discard(None)
    if len(static) == 1:
        return static.pop()
    size = data.batch_size or DEFAULT_BATCH_SIZE
    if per_image is not None:
        size = max(1, min(MAX_AUTO_BATCH, budget // max(1, per_image)))
    return min(size, data.num_samples) if data.num_samples else size


# --------------------------------------------------------------------------- calibration


def _as_dataset(batches, specs: Sequence[InputSpec]) -> Dataset:
    return batches if isinstance(batches, Dataset) else load_data(batches, specs)


def _tensor_names(requests: Mapping[Key, Sequence]) -> list[str]:
    names: list[str] = []
    for key in requests:
        for name in (key,) if isinstance(key, str) else key:
            if name not in names:
                names.append(name)
    return names


def _check_requests(requests: Mapping[Key, Sequence]) -> None:
    if not requests or not any(requests.values()):
        raise OnnxPruneError("nothing to calibrate: no collector was requested")
    for key, collectors in requests.items():
        names = [c.name for c in collectors]
        if len(set(names)) != len(names):
            raise OnnxPruneError(f"tensor {key!r}: two collectors share a name ({', '.join(names)})")


def calibrate(
    model: onnx.ModelProto | str | Path,
    requests: Mapping[Key, Sequence],
    batches: Dataset | Iterable[Mapping[str, np.ndarray]],
    *,
    providers: Sequence | None = None,
    progress: Progress | None = None,
    max_batches: int | None = None,
    stop_when_converged: bool = False,
    batch_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    overlap: bool = True,
    workers: int | None = None,
) -> CalibrationResult:
    """Stream the data through the model once and feed every requested activation to its collectors.

    ``requests`` maps a tensor name to collectors (``update(a)``), or a pair of names to
    two-tensor collectors (``update(x, y)``). ``progress(images_done, images_total)`` is called
    after each batch (total 0 when unknown). With ``stop_when_converged`` the pass ends as soon as
    every collector reports ``converged``. ``batch_size=None`` picks one from ``memory_budget``.
    With ``overlap`` onnxruntime computes the next batch in a background thread while the
    collectors reduce the current one (see :func:`_overlapped`); ``workers`` threads (default:
    one per core) reduce different tensors in parallel.
    """
    start = time.perf_counter()
    if isinstance(model, (str, Path)):
        model = onnx.load(str(model))
    _check_requests(requests)
    specs = input_specs(model)
    data = _as_dataset(batches, specs)
    names = _tensor_names(requests)
    outputs = [n for n in names if n not in {s.name for s in specs}]
    observed, types = observed_model(model, outputs)
    in_flight = _IN_FLIGHT if overlap else 1
    per_image = _per_image_bytes([types[n] for n in outputs])
    size = batch_size or _batch_size(specs, per_image, memory_budget // in_flight, data)

    # onnxruntime's default is one thread per *physical* core (one on a 2-vCPU machine); here it
    # gets every core, or all but one when a core runs the collectors beside it.
    threads = max(1, cpu_count() - 1) if overlap else cpu_count()
    workers = cpu_count() if workers is None else workers
    runner = open_session(observed, providers, spinning=False, threads=threads)
    total = _total_images(data, size, max_batches)
    stream = _activations(runner.session, outputs, names, data.batches(size), max_batches)
    stream = _overlapped(stream) if overlap else stream
    pool = ThreadPoolExecutor(workers, thread_name_prefix="onnxprune-collect") if workers > 1 else None
    try:
        # The collectors' many small LAPACK calls gain nothing from BLAS threads, and those
        # threads would fight onnxruntime's and the pool's for the cores.
        with one_blas_thread():
            done, converged = _consume(stream, requests, progress, total, stop_when_converged, pool)
    finally:
        stream.close()
        if pool is not None:
            pool.shutdown()
        runner.close()
    if done == 0:
        raise DataError("no samples in the data")
    stats = {key: {c.name: c.result() for c in cs} for key, cs in requests.items()}
    return CalibrationResult(
        stats=stats, num_images=done, provider=runner.provider,
        wall_time=time.perf_counter() - start, batch_size=size, converged=converged,
        warnings=tuple(runner.warnings),
    )


def _consume(stream, requests, progress, total, stop_when_converged, pool) -> tuple[int, bool]:
    """Feed each batch's activations to the collectors; returns (images, all converged)."""
    collectors = [c for cs in requests.values() for c in cs]
    done, converged = 0, False
    for count, values in stream:
        _feed(requests, values, pool)
        del values  # the activations go before the next batch arrives
        done += count
        if progress is not None:
            progress(done, total)
        converged = bool(collectors) and all(getattr(c, "converged", False) for c in collectors)
        if stop_when_converged and converged:
            break
    return done, converged


# Batches alive at once when overlapping: one in the collectors, one waiting in the queue, one
# being produced by onnxruntime. The memory budget is shared between them.
_IN_FLIGHT = 3


def _activations(session, outputs, names, batches, max_batches):
    """``(images, {tensor: activation})`` per batch: the requested outputs plus requested inputs."""
    for index, feed in enumerate(batches):
        if max_batches is not None and index >= max_batches:
            return
        values = dict(zip(outputs, _run(session, outputs, feed))) if outputs else {}
        values.update({k: v for k, v in feed.items() if k in names})
        yield len(next(iter(feed.values()))), values


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def _overlapped(items: Iterator, depth: int = 1) -> Generator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead of the consumer.

    onnxruntime and numpy's linear algebra release the GIL, so the next batch's inference runs
    on one set of cores while the collectors reduce the current batch on another. Closing the
    generator (early stop, an error) stops the thread after its current item.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            put(_Failure(exc))

    worker = threading.Thread(target=work, name="onnxprune-inference", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        worker.join()


def _per_image_bytes(infos: Sequence[onnx.ValueInfoProto]) -> int | None:
    sizes = [activation_bytes_per_image(vi) for vi in infos]
    return None if any(s is None for s in sizes) else sum(sizes)


def _total_images(data: Dataset, size: int, max_batches: int | None) -> int:
    total = data.num_samples or 0
    if max_batches is not None:
        total = min(total, size * max_batches) if total else size * max_batches
    return total


def _run(session, outputs: list[str], feed: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """One onnxruntime run, with its failure turned into a one-line error."""
    inputs = {i.name for i in session.get_inputs()}
    try:
        return session.run(outputs, {k: v for k, v in feed.items() if k in inputs})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DataError(f"onnxruntime failed on the data: {first_line(exc)}") from exc


def _feed(requests: Mapping[Key, Sequence], values: Mapping[str, np.ndarray], pool=None) -> None:
    """Hand each collector its activation(s), one tensor per pool task; name the tensor in any failure.

    Different tensors have different collectors, so they can be reduced in parallel; the heavy
    parts (matmul, LAPACK) release the GIL. One tensor's collectors run in order in one task.
    """
    def update(key, collectors):
        arrays = [values[key]] if isinstance(key, str) else [values[k] for k in key]
        for c in collectors:
            try:
                c.update(*arrays)
            except ValueError as exc:
                raise OnnxPruneError(f"tensor {key!r} ({c.name}): {exc}") from exc

    if pool is None:
        for key, collectors in requests.items():
            update(key, collectors)
        return
    for task in [pool.submit(update, key, cs) for key, cs in requests.items()]:
        task.result()


# --------------------------------------------------------------------------- evaluation


def _batches_of(batches, batch_size):
    """A Dataset's batches at ``batch_size``, or the given iterable of feed dicts as it is."""
    return batches.batches(batch_size) if isinstance(batches, Dataset) else iter(batches)


def run_model(
    model,
    batches: Dataset | Iterable[Mapping[str, np.ndarray]],
    *,
    providers: Sequence | None = None,
    output_names: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Run a model (ModelProto, path or onnxruntime session) over the data; outputs concatenated.

        logits = run_model(model, data)["logits"]      # [num_samples, classes]
    """
    with session_for(model, providers) as session:
        names = list(output_names or [o.name for o in session.get_outputs()])
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for feed in _batches_of(batches, batch_size):
            for name, value in zip(names, _run(session, names, feed)):
                parts[name].append(value)
    if not any(parts.values()):
        raise DataError("no samples in the data")
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def evaluate_top1(
    model,
    dataset: Dataset,
    *,
    providers: Sequence | None = None,
    output_name: str | None = None,
    batch_size: int | None = None,
) -> float:
    """Top-1 accuracy of the model's first output (or ``output_name``) against ``dataset.labels``.

        acc = evaluate_top1(model, load_data("val/", input_specs(model)))
    """
    labels = dataset.labels
    if labels is None:
        raise DataError("top-1 accuracy needs labels, and the data has none")
    correct = seen = 0
    with session_for(model, providers) as session:
        name = output_name or session.get_outputs()[0].name
        for feed in dataset.batches(batch_size):
            (logits,) = _run(session, [name], feed)
            predicted = logits.reshape(len(logits), -1).argmax(axis=1)
            correct += int((predicted == labels[seen : seen + len(predicted)]).sum())
            seen += len(predicted)
    if seen == 0:
        raise DataError("no samples in the data")
    return correct / seen
