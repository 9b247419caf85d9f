"""The one place that opens onnxruntime sessions.

:func:`open_session` picks the execution providers (CUDA when available unless told
otherwise, CPU always last), sets threads and spinning, and hands models over protobuf's 2 GiB
limit to onnxruntime through a temporary file with external data. :func:`session` and
:func:`run` are the short forms the rewrite check, the reconstruction and the sensitivity
measurement use (CPU, no idle spinning, the bare ``InferenceSession``).

    runner = open_session(proto, threads=1); runner.session.run(None, feeds); runner.close()
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import ModelError, first_line, require_onnxruntime
from ..model.files import PROTO_LIMIT

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def _provider_name(p) -> str:
    return p[0] if isinstance(p, (tuple, list)) else p


def resolve_providers(requested: Sequence | None = None) -> tuple[list, list[str]]:
    """The providers to hand onnxruntime, and warnings for requested ones it does not have.

    ``None`` means CUDA when this onnxruntime build has it, else CPU. Unavailable providers are
    dropped (instead of letting onnxruntime fail or log), and CPU always closes the list.

        resolve_providers(["CUDAExecutionProvider"])  # on a CPU build:
        # (['CPUExecutionProvider'], ['CUDAExecutionProvider is not available ...; using CPU'])
    """
    ort = require_onnxruntime()
    available = ort.get_available_providers()
    if requested is None:
        return ([CUDA, CPU] if CUDA in available else [CPU]), []
    requested = [requested] if isinstance(requested, str) else list(requested)
    kept = [p for p in requested if _provider_name(p) in available]
    dropped = [_provider_name(p) for p in requested if _provider_name(p) not in available]
    if not any(_provider_name(p) == CPU for p in kept):
        kept.append(CPU)
    warnings = [
        f"{name} is not available in this onnxruntime (available: {', '.join(available)}); "
        f"using {_provider_name(kept[0])}"
        for name in dropped
    ]
    return kept, warnings


@dataclass
class Runner:
    """An onnxruntime session plus what it needs to stay alive (a temporary model file)."""

    session: Any
    provider: str
    warnings: list[str]
    _tmp: Any = None

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def open_session(model, providers: Sequence | None = None, *, spinning: bool = True,
                 threads: int = 0, inter_op_threads: int = 0, profile_prefix: str | None = None,
                 optimized_path: str | None = None) -> Runner:
    """An onnxruntime session over a ModelProto, a serialised model (bytes) or a path, with the
    provider really used.

    ``spinning=False`` stops onnxruntime's idle threads from busy-waiting between runs; the
    calibration pass turns it off because numpy works between runs and would compete with
    them for the cores. ``threads`` sets onnxruntime's intra-op threads, ``inter_op_threads``
    its inter-op threads (0: its defaults). ``profile_prefix`` turns on onnxruntime's profiler
    (``session.end_profiling()`` returns the JSON's path) and ``optimized_path`` saves the
    optimised graph; the latency model (runtime.latency) uses both.
    """
    ort = require_onnxruntime()
    chosen, warnings = resolve_providers(providers)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the library never prints; problems come back as errors
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = inter_op_threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    tmp = None
    if isinstance(model, onnx.ModelProto):
        _check_external_data(model)
        if model.ByteSize() < PROTO_LIMIT:
            source = model.SerializeToString()
        else:
            tmp = tempfile.TemporaryDirectory(prefix="onnxprune-")
            source = str(Path(tmp.name) / "model.onnx")
            onnx.save_model(model, source, save_as_external_data=True, location="model.onnx.data")
    elif isinstance(model, (bytes, bytearray)):
        source = bytes(model)
    else:
        source = str(model)
    try:
        session = ort.InferenceSession(source, options, providers=chosen)
    except Exception as exc:  # onnxruntime raises its own exception types
        if tmp is not None:
            tmp.cleanup()
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc
    used = session.get_providers()[0]
    wanted = _provider_name(chosen[0])
    if used != wanted:
        warnings.append(f"{wanted} could not be initialised; onnxruntime runs on {used}")
    return Runner(session, used, warnings, tmp)


def _check_external_data(model: onnx.ModelProto) -> None:
    """Refuse a model whose weights were left in external files (onnxruntime cannot find them)."""
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(
                f"initializer '{t.name}' is stored in an external file that was not loaded; "
                "pass the model path or load it with onnx.load(path) (external data included)"
            )


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask), for onnxruntime's thread counts."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def session_for(model, providers):
    """Use a given onnxruntime session as is; open (and close) one for a model or path."""
    if hasattr(model, "run") and hasattr(model, "get_outputs"):
        yield model
        return
    runner = open_session(model, providers)
    try:
        yield runner.session
    finally:
        runner.close()


def session(proto: onnx.ModelProto, providers=None):
    """A bare onnxruntime session on CPU (or ``providers``) without idle spinning.

    Idle onnxruntime threads otherwise spin for a while after each run and starve the numpy
    work (moments, metrics) that follows every batch: 3-10x slower reconstruction on 2 cores.
    """
    return open_session(proto, providers or [CPU], spinning=False).session


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = session(proto)
    try:
        return sess.run(None, feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime failed to run the model: {first_line(exc)}") from exc


def interleaved_latency(original, pruned, feeds: dict[str, np.ndarray], *, runs: int, warmup_runs: int = 3,
                        threads: int = 1) -> dict:
    """Median onnxruntime CPU latency of two models on the same ``feeds``, in milliseconds.

    Runs are interleaved (original, pruned, original, ...) so that frequency scaling or a noisy
    neighbour slows both models alike instead of biasing the speed-up. The report's latency
    section and ``compress``'s measured speed-up both come from here.
    """
    before, after = interleaved_timings([original, pruned], feeds, runs=runs, warmup_runs=warmup_runs,
                                        threads=threads)
    return {
        "provider": "CPUExecutionProvider",
        "threads": threads,
        "runs": runs,
        "warmup_runs": warmup_runs,
        "batch": int(next(iter(feeds.values())).shape[0]) if feeds else 1,
        "before": before,
        "after": after,
        "speedup": round(before["median_ms"] / after["median_ms"], 4) if after["median_ms"] > 0 else None,
    }


def interleaved_timings(models: list, feeds: dict[str, np.ndarray], *, runs: int, warmup_runs: int = 3,
                        threads: int = 1, shuffle_seed: int | None = None) -> list[dict]:
    """``timing_summary`` of each model, every round running each model once on ``feeds``: in the
    given order, or shuffled per round with ``shuffle_seed`` (many variants side by side)."""
    sessions = [open_session(m, [CPU], threads=threads, inter_op_threads=1) for m in models]
    times: list[list[float]] = [[] for _ in models]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    try:
        for _ in range(warmup_runs):
            for r in sessions:
                r.session.run(None, feeds)
        for _ in range(runs):
            for j in (rng.permutation(len(sessions)) if rng is not None else range(len(sessions))):
                start = time.perf_counter()
                sessions[j].session.run(None, feeds)
                times[j].append((time.perf_counter() - start) * 1000)
    finally:
        for r in sessions:
            r.close()
    return [timing_summary(t) for t in times]


def timing_summary(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": round(float(np.median(a)), 4), "p10_ms": round(float(np.percentile(a, 10)), 4),
            "p90_ms": round(float(np.percentile(a, 90)), 4)}
