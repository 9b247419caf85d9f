"""A latency model of a model on its deployment runtime (onnxruntime, this machine).

What it models, and why so: onnxruntime's CPU convolutions run in a blocked layout (NCHWc)
when their channel counts are multiples of 4, and then compute on counts padded up to the block
(8 with AVX2, 16 with AVX-512): 52 channels cost what 64 cost. So a prunable node's time is fitted
as ``a + b * padded_macs`` where ``padded_macs`` is the node's MACs with its pruned channel counts
rounded up to the block (``alignment``); everything the fits do not cover (pooling, reorders,
session overhead, elementwise ops not fused into a convolution) is ``r0 + r1 * activation
elements``, the elements of the channel-carrying activations, since those ops scale with them.

Measurement: onnxruntime's profiler (``enable_profiling``) on the original and a few uniformly
pruned variants at the alignment; each kernel event is mapped back to the original node it
came from (the optimised graph names a fused NCHWc convolution after the last tensor of its
fused chain, ``<tensor>_nchwc``). The fit is checked on variants it did not see (random ratio
per group): ``heldout`` gives predicted vs measured whole-model latency.

The result is cached as JSON keyed by model fingerprint and input shapes, provider, threads,
batch, CPU and onnxruntime version: another thread count, batch or provider profiles anew.

    model = profile_model(analysis, Deployment(threads=1, batch=1))
    model.predict(keep)   # ms
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ..analysis import Analysis
from ..cost import CostModel
from ..errors import OnnxPruneError
from .session import open_session, resolve_providers

FORMAT = "onnxprune.latency/1"
FIT_RATIOS = (0.0, 0.25, 0.45, 0.6, 0.75)  # uniform variants the fits see
HELDOUT = 2  # random variants they do not see
QUANTILE = 10  # percentile of a kernel's times taken as its cost (see _parse_profile)
FUSED = ("BatchNormalization", "Relu", "Clip", "Add", "Sum", "Sigmoid", "HardSigmoid", "HardSwish", "LeakyRelu", "Mul")
PROVIDERS = {"cpu": ("CPUExecutionProvider",), "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider")}


@dataclass(frozen=True)
class Deployment:
    """Where the model will run: onnxruntime provider ("cpu" or "cuda"), intra-op threads, batch."""

    device: str = "cpu"
    threads: int = 1
    batch: int = 1

    def __post_init__(self):
        if self.device not in PROVIDERS:
            raise OnnxPruneError(f"unknown device {self.device!r}: use cpu or cuda")
        if self.threads < 1 or self.batch < 1:
            raise OnnxPruneError("--threads and --batch must be at least 1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def session(data: bytes, dep: Deployment, profile: str | None = None, optimized: str | None = None):
    """An onnxruntime session in the deployment setting (fixed threads, one inter-op thread, no
    idle spinning, full optimisation), opened by runtime.session; the deployment's provider must
    exist here (a latency model of another provider would be wrong, not slower)."""
    providers, _ = resolve_providers(list(PROVIDERS[dep.device]))
    if PROVIDERS[dep.device][0] not in providers:
        raise OnnxPruneError(f"onnxruntime here has no {PROVIDERS[dep.device][0]} (device {dep.device})")
    return open_session(data, providers, spinning=False, threads=dep.threads, inter_op_threads=1,
                        profile_prefix=profile, optimized_path=optimized).session


@functools.lru_cache(maxsize=None)
def detect_alignment(device: str = "cpu") -> int:
    """The channel alignment of the runtime. CPU: the NCHWc block, read from the optimised model
    onnxruntime saves for a probe convolution with 4 output channels (padded to the block);
    8 (AVX2) if the probe is inconclusive. CUDA: 8 (fp16 tensor cores)."""
    if device == "cuda":
        return 8
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 32, 3, 3), dtype=np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="probe")
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        try:
            session(model.SerializeToString(), Deployment(), optimized=path)
            opt = onnx.load(path)
        except Exception:  # no onnxruntime optimiser output: the AVX2 block
            return 8
    for node in opt.graph.node:
        if node.op_type == "Conv" and node.domain == "com.microsoft.nchwc":
            dims = {i.name: list(i.dims) for i in opt.graph.initializer}
            shape = dims.get(node.input[1])
            if shape and shape[0] in (4, 8, 16, 32):
                return max(int(shape[0]), 4)
    return 8


# --------------------------------------------------------------------------- the model


@dataclass
class LatencyModel:
    """``predict(keep) -> ms``: fitted per-node terms plus the rest of the graph."""

    key: dict
    alignment: int
    nodes: dict[int, list[float]]  # node index -> [a ms, b ms per padded MAC]
    rest: list[float]  # [r0 ms, r1 ms per activation element]
    base_ms: float  # measured latency of the original
    heldout: list[dict] = field(default_factory=list)  # {"predicted": ms, "measured": ms}
    fitted: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    format: str = FORMAT

    def bind(self, analysis: Analysis, cost: CostModel | None = None) -> "LatencyModel":
        self._features = _Features(analysis, cost or CostModel(analysis), self.alignment)
        n = len(self._features.nodes)
        self._a = np.zeros(n)
        self._b = np.zeros(n)
        for i, node in enumerate(self._features.nodes):
            a, b = self.nodes.get(int(node), [0.0, 0.0])
            self._a[i], self._b[i] = a, b
        return self

    def predict(self, keep: np.ndarray) -> float:
        return self.predict_sizes(self._features.analysis.kept_sizes(keep))

    def predict_sizes(self, sizes: np.ndarray) -> float:
        """ms from the kept size of every dim (what the block search keeps up to date)."""
        x, act = self._features.of_sizes(sizes)
        return float(self.rest[0] + self.rest[1] * act + np.sum(self._a + self._b * x))

    def padded_macs(self, keep: np.ndarray) -> np.ndarray:
        """Each weighted node's MACs with its kept channel counts padded to the alignment (the
        fits' ``x``): equal for counts that pad to the same block."""
        return self._features.of(keep)[0]

    @property
    def error(self) -> float | None:
        """Largest relative error on the held-out variants."""
        if not self.heldout:
            return None
        return max(abs(h["predicted"] - h["measured"]) / h["measured"] for h in self.heldout)

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items()}
        data["nodes"] = {str(k): v for k, v in self.nodes.items()}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "LatencyModel":
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise OnnxPruneError("not an onnxprune latency model")
        data["nodes"] = {int(k): v for k, v in data["nodes"].items()}
        return cls(**data)


class _Features:
    """Padded MACs per weighted node and activation elements, vectorised over the cost terms."""

    def __init__(self, analysis: Analysis, cost: CostModel, align: int):
        self.analysis, self.align = analysis, align
        terms = cost.mac_terms
        self.nodes = np.unique(terms.node)
        self.term_slot = np.searchsorted(self.nodes, terms.node)
        graph_nodes = analysis.model.graph.nodes
        self.pad = np.array([graph_nodes[int(i)].op in ("Conv", "ConvTranspose") for i in terms.node], dtype=bool)
        self.terms = terms
        per_channel = np.zeros(len(analysis.dims))
        tensors = analysis.model.tensors
        for d in analysis.dims:
            if not d.constant:
                shape = tensors[d.tensor].shape or []
                if all(isinstance(s, (int, np.integer)) and s > 0 for s in shape) and shape:
                    per_channel[d.id] = float(np.prod(shape)) / max(int(shape[d.axis]), 1)
        self.per_channel = per_channel

    def padded(self, sizes: np.ndarray) -> np.ndarray:
        a = self.align
        up = np.where(sizes % 4 == 0, -(-sizes // a) * a, sizes) if a > 1 else sizes
        return up

    def of(self, keep: np.ndarray) -> tuple[np.ndarray, float]:
        return self.of_sizes(self.analysis.kept_sizes(keep))

    def of_sizes(self, sizes: np.ndarray) -> tuple[np.ndarray, float]:
        sizes = np.rint(sizes).astype(np.int64)
        raw = np.append(sizes, 1).astype(np.float64)
        up = np.append(self.padded(sizes), 1).astype(np.float64)
        t = self.terms
        if len(t.coef):
            vals = t.coef * np.where(self.pad, np.prod(up[t.dims], axis=1), np.prod(raw[t.dims], axis=1))
            x = np.bincount(self.term_slot, weights=vals, minlength=len(self.nodes))
        else:
            x = np.zeros(0)
        return x, float(self.per_channel @ sizes) if len(sizes) else 0.0


# --------------------------------------------------------------------------- profiling


def cache_key(analysis: Analysis, dep: Deployment) -> dict:
    import onnxruntime as ort

    shapes = {k: list(v) for k, v in analysis.model.input_shapes.items()}
    return {"fingerprint": analysis.model.fingerprint, "inputs": shapes, "provider": PROVIDERS[dep.device][0],
            "threads": dep.threads, "batch": dep.batch, "cpu": cpu_name(), "onnxruntime": ort.__version__}


def cache_path(key: dict, cache_dir) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"{key['fingerprint'][:12]}-{digest}.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("ONNXPRUNE_CACHE", Path.home() / ".cache" / "onnxprune")) / "latency"


def feeds_for(proto: onnx.ModelProto, analysis: Analysis, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    from ..rewrite import random_inputs

    shapes = {}
    fixed = {i.name: i.type.tensor_type.shape.dim[0] for i in proto.graph.input if i.type.tensor_type.shape.dim}
    for name, shape in analysis.model.input_shapes.items():
        dim0 = fixed.get(name)
        if batch != shape[0] and dim0 is not None and dim0.HasField("dim_value") and dim0.dim_value != batch:
            raise OnnxPruneError(f"input '{name}' has a fixed batch of {dim0.dim_value}; --batch {batch} is not possible")
        shapes[name] = (batch, *shape[1:])
    return random_inputs(proto, shapes, seed)


def _name_map(analysis: Analysis) -> dict[str, int]:
    """Profiler node name -> index of the weighted node it runs (fused chains followed)."""
    graph = analysis.model.graph
    names: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        if node.op not in ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum"):
            continue
        names.setdefault(node.name, i)
        t = node.outputs[0]
        for _ in range(6):
            names[t.name] = i  # later convs overwrite: a residual Add fuses into the later one
            consumers = t.outputs
            if len(consumers) != 1 or consumers[0].op not in FUSED:
                break
            t = consumers[0].outputs[0]
    return names


def _event_node(name: str, names: dict[str, int]) -> int | None:
    base = name[: -len("_kernel_time")] if name.endswith("_kernel_time") else name
    for cand in (base, base.removesuffix("_nchwc"), base.removesuffix("_fused")):
        if cand in names:
            return names[cand]
    return None


def profile_variants(datas: list[bytes], feeds: dict, dep: Deployment, names: dict[str, int], budget_s: float = 0.6,
                     min_runs: int = 5, max_runs: int = 60, seed: int = 0) -> list[tuple[float, dict[int, float]]]:
    """Per variant: (latency ms, ms per run of each original weighted node), from
    onnxruntime's profiler. The variants run INTERLEAVED (each round runs every session once,
    shuffled), so a shared machine's load drifts over all of them alike."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        sessions = [session(d, dep, profile=os.path.join(tmp, f"p{i}_")) for i, d in enumerate(datas)]
        for sess in sessions:
            for _ in range(2):
                sess.run(None, feeds)
        start, runs = time.perf_counter(), 0
        while runs < max_runs and (runs < min_runs or time.perf_counter() - start < budget_s * len(datas)):
            for j in rng.permutation(len(sessions)):
                sessions[j].run(None, feeds)
            runs += 1
        out = [_parse_profile(json.loads(Path(sess.end_profiling()).read_text()), names, runs) for sess in sessions]
    return out


def _parse_profile(events: list, names: dict[str, int], runs: int) -> tuple[float, dict[int, float]]:
    """(latency ms, ms per run of each original weighted node) of one session's profile.

    Robust to a loaded machine: each kernel's time is a low percentile (``QUANTILE``) over the
    timed runs, and the latency is the sum of those plus the same percentile of the time between
    kernels (session overhead), not the median wall time of a run, which descheduling inflates."""
    timed = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                   key=lambda e: e["ts"])[-runs:]
    starts = np.array([e["ts"] for e in timed])
    per_node: dict[int, list[float]] = {}
    kernels: dict[str, list[float]] = {}
    run_sum = np.zeros(len(timed))
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < starts[0]:
            continue
        run_sum[int(np.searchsorted(starts, e["ts"], side="right")) - 1] += e["dur"] / 1000.0
        kernels.setdefault(e["name"], []).append(e["dur"] / 1000.0)
        i = _event_node(e["name"], names)
        if i is not None:
            per_node.setdefault(i, []).append(e["dur"] / 1000.0)
    overhead = np.array([e["dur"] / 1000.0 for e in timed]) - run_sum
    kernel_ms = sum(_low(v) * len(v) / runs for v in kernels.values())
    latency = kernel_ms + max(_low(overhead), 0.0)
    return latency, {i: _low(v) * len(v) / runs for i, v in per_node.items()}


def _low(values) -> float:
    """A low percentile: other processes only ever add time to a kernel, so on a shared machine
    the fast end of its times is the best estimate of what it costs alone."""
    return float(np.percentile(values, QUANTILE))


def variant_keep(analysis: Analysis, align: int, ratio: float | dict) -> np.ndarray:
    """A keep vector whose group counts are the aligned steps nearest to the ratio (a dict: per group)."""
    from ..allocate.blocks import group_block, kept_steps  # the block search's steps (no cycle: blocks does not import runtime)
    from ..settings import Limits

    kept = {}
    for g in analysis.prunable_groups:
        r = ratio.get(g.id, 0.0) if isinstance(ratio, dict) else ratio
        steps = kept_steps(g.size, group_block(analysis, g.id, align), Limits())
        k = min(steps, key=lambda s: abs(s - g.size * (1 - r)))
        kept[g.id] = np.arange(k)
    return analysis.keep_vector(kept)


def profile_model(analysis: Analysis, dep: Deployment = Deployment(), cache_dir=None, refresh: bool = False,
                  progress=None, seed: int = 0) -> LatencyModel:
    """Measure and fit the latency model (or read it from the cache); bound to ``analysis``."""
    from ..rewrite import rewrite

    key = cache_key(analysis, dep)
    path = cache_path(key, cache_dir or default_cache_dir())
    if path.is_file() and not refresh:
        try:
            cached = LatencyModel.from_json(path.read_text())
            if cached.key == key:
                return cached.bind(analysis)
        except (OnnxPruneError, ValueError, KeyError, TypeError):
            pass
    start = time.perf_counter()
    align = detect_alignment(dep.device)
    names = _name_map(analysis)
    proto = analysis.model.proto
    feeds = feeds_for(proto, analysis, dep.batch, seed)
    rng = np.random.default_rng(seed)
    plans = [("uniform", r) for r in FIT_RATIOS]
    plans += [("random", {g.id: float(rng.uniform(0.0, 0.75)) for g in analysis.prunable_groups}) for _ in range(HELDOUT)]
    features = _Features(analysis, CostModel(analysis), align)
    keeps, datas = [], []
    for i, (kind, ratio) in enumerate(plans):
        keeps.append(variant_keep(analysis, align, ratio))
        full = not isinstance(ratio, dict) and ratio == 0
        datas.append(proto.SerializeToString() if full else rewrite(analysis, keeps[-1]).SerializeToString())
        if progress:
            progress(i + 1, len(plans) + 1)
    rows = [(kind, keep, total, per_node, *features.of(keep))
            for (kind, _), keep, (total, per_node) in zip(plans, keeps, profile_variants(datas, feeds, dep, names))]
    if progress:
        progress(len(plans) + 1, len(plans) + 1)
    fit_rows = [r for r in rows if r[0] == "uniform"]
    nodes = {}
    for slot, node in enumerate(features.nodes):
        t = np.array([r[3].get(int(node), 0.0) for r in fit_rows])
        xs = np.array([r[4][slot] for r in fit_rows])
        nodes[int(node)] = fit_line(xs, t)
    node_pred = [sum(a + b * r[4][s] for s, (a, b) in enumerate(nodes[int(n)] for n in features.nodes)) for r in fit_rows]
    rest_t = np.array([r[2] - p for r, p in zip(fit_rows, node_pred)])
    rest = fit_line(np.array([r[5] for r in fit_rows]), rest_t)
    model = LatencyModel(key, align, nodes, rest, rows[0][2])
    model.bind(analysis)
    model.fitted = [{"ratio": r, "measured": row[2], "predicted": model.predict(row[1])}
                    for (_, r), row in zip(plans, rows) if row[0] == "uniform"]
    model.heldout = [{"measured": row[2], "predicted": model.predict(row[1])} for row in rows if row[0] == "random"]
    model.seconds = round(time.perf_counter() - start, 2)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(model.to_json())
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache only costs the next run a new profile
    return model


def fit_line(x: np.ndarray, y: np.ndarray) -> list[float]:
    """Non-negative ``a + b x`` by least squares (b = 0 when x does not vary)."""
    from scipy.optimize import nnls

    if len(x) == 0:
        return [0.0, 0.0]
    if np.ptp(x) <= 1e-9 * max(1.0, float(np.max(np.abs(x)))):
        return [float(max(np.mean(y), 0.0)), 0.0]
    scale = float(np.max(np.abs(x)))
    coef, _ = nnls(np.stack([np.ones_like(x), x / scale], axis=1), y)
    return [float(coef[0]), float(coef[1] / scale)]


def measure_speedup(original: bytes, pruned: bytes, feeds: dict, dep: Deployment, budget_s: float = 1.5,
                    seed: int = 0) -> dict:
    """Original and pruned timed INTERLEAVED at fixed threads, latency read from onnxruntime's
    profiler as in the fits (low percentile per kernel + session overhead: robust to a loaded machine)."""
    (a, _), (b, _) = profile_variants([original, pruned], feeds, dep, {}, budget_s=budget_s, min_runs=10,
                                      max_runs=400, seed=seed)
    return {"original_ms": round(a, 4), "pruned_ms": round(b, 4), "speedup": round(a / b, 4)}
