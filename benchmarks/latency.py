"""Real onnxruntime CPU latency of pruned models against the speed-up their FLOPs predict.

    python benchmarks/latency.py            # default configuration (~10 min) -> docs/LATENCY.md + .json
    python benchmarks/latency.py --quick    # 2-3 min subset (50% FLOPs, round_to 1/16, shorter timing)

Models: torchvision ResNet-50 and MobileNetV2 (random init, seed 0, exported at 224x224 by
tests/zoo.py, cached in ~/.cache/onnxprune/bench) and the bundled Fashion-MNIST ResNet-20 and
VGG-11 (1x28x28). Each is pruned by onnxprune at 30/50/70% of its MACs with ``round_to`` 1, 8
and 16 (criterion l1, no data, no reconstruction: weights do not change the timing).

Timing: onnxruntime CPUExecutionProvider, ``intra_op_num_threads`` fixed (1 for every model;
also 2 for ResNet-50), one inter-op thread, spinning off, graph optimisations ORT_ENABLE_ALL,
random-normal input (seed 0) at batch 1 and 16. The machine is shared and noisy, so for each
model, thread count and batch the original and all its pruned variants are timed INTERLEAVED:
every round runs each session once, in a freshly shuffled order, until a time budget is spent.
Speed-up = median(original) / median(pruned); its spread is the interquartile range of the
per-round ratios original/pruned. Efficiency = measured speed-up / predicted speed-up, where
predicted = original MACs / pruned MACs (onnxprune.cost, the numbers in the compress summary).

Diagnosis: per variant, how many convolutions onnxruntime runs in its blocked NCHWc layout and
how many reorder nodes it inserts (read from the optimised graph it saves), and for a few
variants an onnxruntime profile (``enable_profiling``) summed per kernel category.

Pruning to a measured speed-up (``--speedup``), the probed alignment and the block search are
benchmarked by benchmarks/speedup.py (docs/SPEEDUP.md).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import MODELS, ROOT, machine, render_or_run  # noqa: E402
from render import Col, Page  # noqa: E402

CACHE = Path.home() / ".cache" / "onnxprune" / "bench"
SEED = 0


@dataclass(frozen=True)
class Config:
    models: tuple = ("resnet50", "mobilenet_v2", "resnet20", "vgg11")
    fractions: tuple = (0.3, 0.5, 0.7)
    round_to: tuple = (1, 8, 16)
    batches: tuple = (1, 16)
    two_threads: tuple = ("resnet50",)  # models also timed with 2 intra-op threads
    budget_s: dict = field(default_factory=lambda: {1: 20.0, 16: 45.0})  # per (model, threads, batch)
    min_rounds: int = 8
    max_rounds: int = 3000
    warmup: int = 3
    profile_models: tuple = ("resnet50", "mobilenet_v2")
    profile_fraction: float = 0.5
    profile_runs: dict = field(default_factory=lambda: {1: 10, 16: 3})


QUICK = Config(fractions=(0.5,), round_to=(1, 16), two_threads=(), budget_s={1: 6.0, 16: 12.0}, min_rounds=5,
               profile_models=("mobilenet_v2",), profile_runs={1: 5, 16: 2})


# --------------------------------------------------------------------------- models


def model_path(name: str) -> Path:
    if name in MODELS:
        return MODELS[name]
    from zoo import export

    CACHE.mkdir(parents=True, exist_ok=True)
    return export(name, CACHE)


@dataclass
class Variant:
    label: str  # "original" or "50% r16"
    fraction: float | None
    round_to: int | None
    data: bytes | None  # serialized model; None when the target is unreachable
    macs: int
    predicted: float  # original MACs / these MACs
    achieved: float | None = None  # FLOPs reduction actually reached
    error: str | None = None
    layout: dict = field(default_factory=dict)
    padded: float | None = None  # predicted speed-up with channel counts padded to the NCHWc block


def variants(name: str, cfg: Config) -> list[Variant]:
    import onnx

    from onnxprune import Limits, Settings, Target, compress
    from onnxprune.errors import TargetError

    path = model_path(name)
    out: list[Variant] = []
    base = None
    for fraction in cfg.fractions:
        for r in cfg.round_to:
            label = f"{fraction:.0%} r{r}"
            try:
                res = compress(str(path), Settings(Target("flops", fraction), criterion="l1", reconstruct="none",
                                                   limits=Limits(round_to=r)))
            except TargetError as exc:
                out.append(Variant(label, fraction, r, None, 0, float("nan"), error=str(exc)))
                continue
            s = res.summary
            base = s["macs_before"]
            out.append(Variant(label, fraction, r, res.model.SerializeToString(), s["macs_after"],
                               s["macs_before"] / s["macs_after"], s["flops_reduction"]))
    if base is None:
        from onnxprune import measured_cost

        proto = onnx.load(str(path))
        base = measured_cost(proto, None).macs
    original = Variant("original", None, None, Path(path).read_bytes(), base, 1.0, 0.0)
    return [original, *out]


def input_shape(data: bytes, batch: int) -> tuple[str, tuple]:
    import onnx

    proto = onnx.load_from_string(data)
    inp = proto.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    return inp.name, (batch, *dims[1:])


# --------------------------------------------------------------------------- onnxruntime


def session(data: bytes, threads: int, optimized: str | None = None, profile: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if optimized:
        so.optimized_model_filepath = optimized
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = profile
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def nchwc_block() -> int | None:
    """MLAS's NCHWc block size: 16 with AVX-512F, 8 with AVX2 (from the CPU flags; x86 Linux)."""
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        return None
    return 16 if "avx512f" in flags else 8 if "avx2" in flags else None


def kernel_kind(node, dims: dict) -> str:
    """Category of one node of onnxruntime's optimised graph (layout x convolution shape)."""
    op = node.op_type
    if op in ("Conv", "FusedConv"):
        layout = "NCHWc" if node.domain == "com.microsoft.nchwc" else "NCHW"
        w = dims.get(node.input[1], [])
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kind = "depthwise" if group > 1 and len(w) > 1 and w[1] == 1 else "1x1" if w[2:] == [1, 1] else "kxk"
        return f"conv {layout} {kind}"
    if op in ("ReorderInput", "ReorderOutput"):
        return "layout reorder"
    if op in ("Add", "Sum", "Relu", "Clip", "Mul", "BatchNormalization"):
        return "elementwise"
    if "Pool" in op:
        return "pool"
    if op in ("Gemm", "MatMul", "FusedGemm"):
        return "gemm"
    return "other"


def optimised_graph(data: bytes, tmp: Path, threads: int = 1, profile: str | None = None):
    """(session, optimised ModelProto) — the graph onnxruntime actually runs."""
    import onnx

    path = tmp / f"opt_{time.perf_counter_ns()}.onnx"
    sess = session(data, threads, optimized=str(path), profile=profile)
    proto = onnx.load(str(path))
    path.unlink()
    return sess, proto


def layout_stats(data: bytes, tmp: Path) -> dict:
    _, proto = optimised_graph(data, tmp)
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    kinds = [kernel_kind(n, dims) for n in proto.graph.node]
    convs = [k for k in kinds if k.startswith("conv")]
    return {"convs": len(convs), "nchwc": sum(k.startswith("conv NCHWc") for k in convs),
            "reorders": kinds.count("layout reorder"), "elementwise": kinds.count("elementwise")}


def weighted_macs(data: bytes, block: int | None) -> tuple[int, int]:
    """(MACs, block-padded MACs) of the Conv/Gemm/MatMul layers at batch 1, from the ONNX file.

    Padded: every channel count a blocked NCHWc kernel works on rounded up to the block (output
    channels; input channels of a dense convolution when at least one block wide; depthwise
    channels) -- the arithmetic onnxruntime actually does when it runs the layer in NCHWc.
    """
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(data))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]}
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}

    def up(c: int, always: bool = True) -> int:
        if not block or (not always and c < block):
            return c
        return -(-c // block) * block

    macs = padded = 0
    for node in proto.graph.node:
        w = dims.get(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            continue
        if node.op_type == "Conv":
            spatial = int(np.prod(shapes[node.output[0]][2:]))
            cout, cin, k = w[0], w[1], int(np.prod(w[2:]))
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            macs += spatial * cout * cin * k
            if group == 1:
                padded += spatial * up(cout) * up(cin, always=False) * k
            elif cin == 1 and group == cout:
                padded += spatial * up(cout) * k
            else:
                padded += spatial * up(cout) * cin * k
        elif node.op_type in ("Gemm", "MatMul") and len(w) == 2:
            macs += w[0] * w[1]
            padded += w[0] * w[1]
    return macs, padded


def interleaved(sessions: list, feeds: dict, budget_s: float, cfg: Config, seed: int) -> np.ndarray:
    """Seconds per run, shape [rounds, sessions]; each round runs every session once, shuffled."""
    for s in sessions:
        for _ in range(cfg.warmup):
            s.run(None, feeds)
    rng = np.random.default_rng(seed)
    rounds, start = [], time.perf_counter()
    while len(rounds) < cfg.max_rounds and (len(rounds) < cfg.min_rounds or time.perf_counter() - start < budget_s):
        row = np.empty(len(sessions))
        for i in rng.permutation(len(sessions)):
            t0 = time.perf_counter()
            sessions[i].run(None, feeds)
            row[i] = time.perf_counter() - t0
        rounds.append(row)
    return np.array(rounds)


def profile_kinds(data: bytes, feeds: dict, runs: int, threads: int, tmp: Path) -> dict[str, float]:
    """Milliseconds per run per kernel category: per node the median over ``runs`` profiled runs."""
    sess, proto = optimised_graph(data, tmp, threads, profile=str(tmp / "prof"))
    for _ in range(runs):
        sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    dims = {i.name: list(i.dims) for i in proto.graph.initializer}
    kind_of = {n.name: kernel_kind(n, dims) for n in proto.graph.node}
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_node.setdefault(e["name"][: -len("_kernel_time")], []).append(e["dur"] / 1000.0)
    out: dict[str, float] = {}
    for node, durs in per_node.items():
        kind = kind_of.get(node, "other")
        out[kind] = out.get(kind, 0.0) + float(np.median(durs))
    return out


# --------------------------------------------------------------------------- runs


def measure(name: str, vs: list[Variant], threads: int, batch: int, cfg: Config) -> dict:
    live = [v for v in vs if v.data is not None]
    iname, shape = input_shape(live[0].data, batch)
    feeds = {iname: np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)}
    sessions = [session(v.data, threads) for v in live]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    times = interleaved(sessions, feeds, cfg.budget_s[batch], cfg, seed=SEED + batch + 100 * threads)
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()
    del sessions
    orig = times[:, 0]
    rows = []
    for j, v in enumerate(live):
        t = times[:, j]
        ratio = orig / t
        q25, q50, q75 = np.percentile(t, [25, 50, 75])
        r25, r75 = np.percentile(ratio, [25, 75])
        measured = float(np.median(orig) / q50)
        rows.append({"variant": v.label, "fraction": v.fraction, "round_to": v.round_to, "macs": v.macs,
                     "predicted": v.predicted, "padded": v.padded, "measured": measured,
                     "efficiency": measured / v.predicted,
                     "median_ms": 1000 * q50, "iqr_ms": [1000 * q25, 1000 * q75], "ratio_iqr": [r25, r75],
                     "layout": v.layout})
    for v in vs:
        if v.data is None:
            rows.append({"variant": v.label, "fraction": v.fraction, "round_to": v.round_to, "error": v.error})
    return {"model": name, "threads": threads, "batch": batch, "rounds": len(times), "wall_s": wall,
            "load": [load0[0], load1[0]], "rows": rows}


def run(cfg: Config, log=print) -> dict:
    block = nchwc_block()
    results = {"config": {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.__dict__.items()},
               "machine": machine(), "nchwc_block": block, "groups": [], "profiles": [], "models": {}}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name in cfg.models:
            t = time.perf_counter()
            vs = variants(name, cfg)
            for v in vs:
                if v.data is not None:
                    v.layout = layout_stats(v.data, tmp)
                    v.layout["macs"], v.layout["padded_macs"] = weighted_macs(v.data, block)
            for v in vs:
                if v.data is not None:
                    v.padded = vs[0].layout["padded_macs"] / v.layout["padded_macs"]
            results["models"][name] = {"macs": vs[0].macs, "prune_s": time.perf_counter() - t}
            log(f"# {name}: {len(vs) - 1} variants pruned in {time.perf_counter() - t:.0f} s")
            for threads in (1, 2) if name in cfg.two_threads else (1,):
                for batch in cfg.batches:
                    g = measure(name, vs, threads, batch, cfg)
                    results["groups"].append(g)
                    log(f"#   threads {threads} batch {batch}: {g['rounds']} rounds, {g['wall_s']:.0f} s, "
                        f"load {g['load'][0]:.1f}-{g['load'][1]:.1f}")
            if name in cfg.profile_models:
                picked = [v for v in vs if v.data is not None and (v.fraction is None or v.fraction == cfg.profile_fraction)]
                for batch in cfg.batches:
                    iname, shape = input_shape(picked[0].data, batch)
                    feeds = {iname: np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)}
                    load0 = os.getloadavg()[0]
                    prof = {v.label: profile_kinds(v.data, feeds, cfg.profile_runs[batch], 1, tmp) for v in picked}
                    results["profiles"].append({"model": name, "batch": batch, "threads": 1, "runs": cfg.profile_runs[batch],
                                                "load": [load0, os.getloadavg()[0]], "ms": prof})
                log(f"#   profiled {len(picked)} variants")
    results["wall_s"] = time.perf_counter() - t_start
    return results


# --------------------------------------------------------------------------- report


def geomean(xs) -> float:
    xs = [x for x in xs if x and np.isfinite(x) and x > 0]
    return float(np.exp(np.mean(np.log(xs)))) if xs else float("nan")


def efficiency_summary(results: dict) -> dict:
    """Geometric-mean efficiency per (threads, batch, round_to) over models and fractions; and
    how many pruned variants were slower than their original."""
    out = {}
    for g in results["groups"]:
        for r in g["rows"]:
            if r.get("round_to") is None or "efficiency" not in r:
                continue
            out.setdefault((g["threads"], g["batch"], r["round_to"]), []).append(r)
    return {k: {"efficiency": geomean(x["efficiency"] for x in v), "slower": sum(x["measured"] < 1 for x in v),
                "n": len(v), "nchwc": sum(x["layout"]["nchwc"] for x in v), "convs": sum(x["layout"]["convs"] for x in v),
                "reorders": sum(x["layout"]["reorders"] for x in v),
                "predicted": geomean(x["predicted"] for x in v), "padded": geomean(x.get("padded") for x in v),
                "vs_padded": geomean(x["measured"] / x["padded"] for x in v if x.get("padded"))}
            for k, v in sorted(out.items())}


def fmt_range(a, b, digits=2):
    return f"{a:.{digits}f}-{b:.{digits}f}"


def markdown(results: dict, command: str) -> str:
    block = results["nchwc_block"]
    cfg = results["config"]
    lines = [  # the page's introduction
        f"Generated by `{command}` in {results['wall_s'] / 60:.1f} min on {results['machine']}; "
        f"MLAS NCHWc block size {block} (from the CPU flags). The machine is shared with other jobs: each table "
        "gives the 1-minute load average at the start and end of its timing.",
        "",
        "onnxruntime CPUExecutionProvider, intra_op_num_threads fixed (1 for every model; "
        f"{', '.join(cfg['two_threads']) or 'no model'} also with 2), graph optimisations ORT_ENABLE_ALL, one "
        "inter-op thread, spinning off, "
        "random-normal input. Original and pruned models are timed **interleaved** (each round runs every "
        "session once in a shuffled order). Pruning: onnxprune `compress`, criterion l1, uniform allocation, "
        "no reconstruction; `rN` = `round_to N`.",
        "",
        "* **predicted** = original MACs / pruned MACs (onnxprune.cost); **measured** = median original latency / "
        "median pruned latency; **efficiency** = measured / predicted (1 = the FLOPs promise is kept).",
        "* **padded** = the same ratio with every convolution's channel counts rounded up to the NCHWc block "
        "(output channels, input channels of dense convolutions at least one block wide, depthwise channels): "
        "the arithmetic the blocked kernels do when a layer runs in NCHWc.",
        "* **ratio IQR**: interquartile range of the per-round ratios original/pruned (the spread of the speed-up).",
        "* **NCHWc convs**: convolutions onnxruntime runs in its blocked layout (MLAS NCHWc kernels) / all "
        "convolutions of the optimised graph; **reorders**: layout-conversion nodes it had to insert.",
        "",
    ]
    page = Page("Real latency speed-up vs FLOPs-predicted speed-up")
    page.lines += lines
    page.section("Summary: geometric-mean efficiency",
                 "Over all models and FLOPs targets of each row (threads, batch, round_to), geometric means; "
                 "'slower' counts pruned models slower than their original; 'measured / padded' compares with the "
                 "speed-up predicted from block-padded MACs.")
    page.table(SUMMARY_COLS, [dict(v, threads=t, batch=b, round_to=r) for (t, b, r), v in efficiency_summary(results).items()])
    for g in results["groups"]:
        m = results["models"][g["model"]]
        page.section(f"{g['model']}, batch {g['batch']}, {g['threads']} thread{'s' if g['threads'] > 1 else ''}",
                     f"{m['macs'] / 1e9:.3f} GMACs per image at batch 1. {g['rounds']} interleaved rounds in "
                     f"{g['wall_s']:.0f} s after {cfg['warmup']} warm-up runs per session; load average "
                     f"{g['load'][0]:.2f} -> {g['load'][1]:.2f}.")
        page.table(ROW_COLS, g["rows"])
    if results["profiles"]:
        page.section("Where the time goes: onnxruntime profiles",
                     "Per kernel category, milliseconds per run (sum over nodes of each node's median kernel time "
                     "over the profiled runs; 1 thread). Categories come from the optimised graph onnxruntime "
                     "saves: layout (NCHWc blocked kernels vs plain NCHW im2col/GEMM convolution) x shape "
                     "(depthwise, 1x1, kxk); 'layout reorder' = ReorderInput/ReorderOutput; 'elementwise' = "
                     "Add/Sum/Relu/Clip/Mul not fused into a convolution.")
        for p in results["profiles"]:
            labels = list(p["ms"])
            kinds = sorted({k for v in p["ms"].values() for k in v}, key=lambda k: -max(v.get(k, 0) for v in p["ms"].values()))
            totals = {lab: sum(p["ms"][lab].values()) for lab in labels}
            page.para(f"**{p['model']}, batch {p['batch']}** ({p['runs']} profiled runs; load "
                      f"{p['load'][0]:.2f} -> {p['load'][1]:.2f})")
            cols = [Col("kernel category", "kind")] + [Col(lab, lab) for lab in labels]
            rows = [{"kind": k, **{lab: f"{p['ms'][lab].get(k, 0.0):.2f}" for lab in labels}} for k in kinds]
            rows.append({"kind": "**total**", **{lab: f"**{totals[lab]:.2f}**" for lab in labels}})
            page.table(cols, rows)
    page.lines += findings(results)
    return page.text()


def _ok(fn):
    """A column value that unreachable rows (``error``) leave empty."""
    return lambda r: None if "error" in r else fn(r)


SUMMARY_COLS = [
    Col("threads", "threads"), Col("batch", "batch"), Col("round_to", "round_to"), Col("variants", "n"),
    Col("predicted x", "predicted", ".2f"), Col("padded x", "padded", ".2f"), Col("efficiency", "efficiency", ".2f"),
    Col("measured / padded", "vs_padded", ".2f"), Col("slower than original", "slower"),
    Col("NCHWc convs", lambda v: f"{v['nchwc']}/{v['convs']}"), Col("reorders", "reorders"),
]
ROW_COLS = [
    Col("variant", "variant"), Col("MMACs", _ok(lambda r: f"{r['macs'] / 1e6:.1f}"), missing="-"),
    Col("median ms", lambda r: "unreachable" if "error" in r else f"{r['median_ms']:.2f}"),
    Col("IQR ms", _ok(lambda r: fmt_range(*r["iqr_ms"]))), Col("predicted x", _ok(lambda r: r["predicted"]), ".2f"),
    Col("padded x", _ok(lambda r: r.get("padded") or None), ".2f"), Col("measured x", _ok(lambda r: r["measured"]), ".2f"),
    Col("ratio IQR", _ok(lambda r: fmt_range(*r["ratio_iqr"]))), Col("efficiency", _ok(lambda r: r["efficiency"]), ".2f"),
    Col("NCHWc convs, reorders", _ok(lambda r: f"{r['layout']['nchwc']}/{r['layout']['convs']}, {r['layout']['reorders']}")),
]


def findings(results: dict) -> list[str]:
    """The findings paragraph and the recommendation; every number comes from this run."""
    block = results["nchwc_block"]
    summ = efficiency_summary(results)
    one = {k[1:]: v for k, v in summ.items() if k[0] == 1}
    if not one:
        return ["## Findings", "", "No timing rows."]
    rts = sorted({r for _, r in one})
    batches = sorted({b for b, _ in one})
    eff = {k: v["efficiency"] for k, v in one.items()}
    mean_eff = {r: geomean(eff[(b, r)] for b in batches if (b, r) in eff) for r in rts}
    best, worst = max(rts, key=mean_eff.get), min(rts, key=mean_eff.get)
    text = ["With 1 thread, pruned models keep on geometric mean "
            + ", ".join(f"{eff[(b, r)]:.0%} (batch {b}, round_to {r})" for b in batches for r in rts if (b, r) in eff)
            + " of the speed-up their FLOPs predict."]
    slower = {r: (sum(one[(b, r)]["slower"] for b in batches if (b, r) in one),
                  sum(one[(b, r)]["n"] for b in batches if (b, r) in one)) for r in rts}
    if any(s for s, _ in slower.values()):
        text.append("Pruned models *slower* than their original: "
                    + ", ".join(f"{s} of {n} with round_to {r}" for r, (s, n) in slower.items()) + ".")
    cover = {r: (one[(batches[0], r)]["nchwc"], one[(batches[0], r)]["convs"]) for r in rts}
    text.append("The cause is the layout onnxruntime picks, not the arithmetic: its NCHWc transformer runs a "
                f"convolution with the blocked MLAS kernels ({block or '?'}-channel blocks on this CPU) only when its "
                "channel counts suit the block (nchwc_transformer.cc: input channels a multiple of the block or "
                "smaller than one block, depthwise channels a multiple of the block; the onnxruntime used here also "
                "pads some wide unaligned inputs, the exact conditions vary between versions, so the counts below "
                "are read from the optimised graph it saves). Any other convolution falls back to NCHW im2col + "
                "SGEMM (depthwise: the much slower grouped NCHW path), with ReorderInput/ReorderOutput nodes around "
                "it and Add/Relu kernels that the NCHWc convolution would have fused. Convolutions kept in NCHWc "
                "over all models: " + ", ".join(f"{c}/{t} with round_to {r}" for r, (c, t) in cover.items()) + ".")
    first = {r: one[(batches[0], r)] for r in rts}
    if any(abs(v["padded"] - v["predicted"]) > 0.02 for v in first.values()):
        text.append(f"Counted with channel counts padded to the {block}-channel block (the arithmetic the blocked "
                    "kernels do), the geometric-mean predicted speed-up is "
                    + ", ".join(f"{v['padded']:.2f}x instead of {v['predicted']:.2f}x with round_to {r}"
                                for r, v in first.items())
                    + "; measured / padded-predicted: "
                    + ", ".join(f"{one[(b, r)]['vs_padded']:.0%} (batch {b}, round_to {r})"
                                for b in batches for r in rts if (b, r) in one) + ".")
    text += profile_findings(results, rts)
    text += residual_findings(results, best)
    text += noise_findings(results)
    two = {k[1:]: v for k, v in summ.items() if k[0] == 2}
    if two:
        text.append("With 2 threads (ResNet-50): " + ", ".join(
            f"{v['efficiency']:.0%} (batch {b}, round_to {r})" for (b, r), v in sorted(two.items())) + ".")
    out = ["## Findings", "", " ".join(text), ""]
    rec = [f"**Recommendation.** For onnxruntime on CPU, prune with `--round-to {block or best}`, the MLAS NCHWc "
           "block size of the target CPU (16 with AVX-512, 8 with AVX2): the FLOPs target is still met (the "
           "allocator searches the ratio with the rounded counts), and the pruned model stays in the fast layout."
           f" In this run round_to {best} had the best mean efficiency ({mean_eff[best]:.0%}) and round_to {worst} "
           f"the worst ({mean_eff[worst]:.0%})."]
    if block and block in rts:
        for r in rts:
            if 1 < r < block:
                v, w = first[r], first[block]
                rec.append(f"round_to {r} is not enough on this CPU: a count that is an odd multiple of {r} is padded "
                           f"to the next multiple of {block} (padded speed-up {v['padded']:.2f}x against "
                           f"{v['predicted']:.2f}x predicted, vs {w['padded']:.2f}x / {w['predicted']:.2f}x with "
                           f"round_to {block}) and needs more layout reorders ({v['reorders']} in its {v['n']} models against "
                           f"{w['reorders']} in {w['n']}), for a mean efficiency of {mean_eff[r]:.0%}.")
    rec.append("onnxprune's default is round_to 1; a latency-aware default (round_to = block size when the "
               "target runtime is onnxruntime CPU) would avoid the slow-downs above.")
    out.append(" ".join(rec))
    return out


def noise_findings(results: dict, spread: float = 0.5) -> list[str]:
    """Rows whose per-round ratio IQR is wider than ``spread`` x their speed-up, by group."""
    noisy, total = {}, 0
    for g in results["groups"]:
        for r in g["rows"]:
            if r.get("round_to") is None or "ratio_iqr" not in r:
                continue
            total += 1
            lo, hi = r["ratio_iqr"]
            if hi - lo > spread * r["measured"]:
                key = f"{g['model']} batch {g['batch']}, {g['threads']} thread{'s' if g['threads'] > 1 else ''}"
                noisy[key] = noisy.get(key, 0) + 1
    if not noisy:
        return []
    return [f"{sum(noisy.values())} of {total} pruned rows have a per-round ratio IQR wider than {spread:.0%} of "
            f"their speed-up (" + ", ".join(f"{k}: {n}" for k, n in noisy.items()) + "): the load of other jobs "
            "made those timings bimodal, so their efficiencies (including any above 100%) are uncertain."]


def profile_findings(results: dict, rts: list) -> list[str]:
    parts = []
    for p in results["profiles"]:
        labs = list(p["ms"])
        lo = next((lab for lab in labs if lab.endswith(f" r{rts[0]}")), None)
        hi = next((lab for lab in labs if lab.endswith(f" r{rts[-1]}")), None)
        if not lo or not hi:
            continue

        def share(lab):
            ms = p["ms"][lab]
            total = sum(ms.values()) or 1.0
            slow = sum(v for k, v in ms.items() if k.startswith("conv NCHW ") or k in ("layout reorder", "elementwise"))
            return slow / total, total

        (s_lo, t_lo), (s_hi, t_hi) = share(lo), share(hi)
        part = (f"{p['model']} batch {p['batch']}: {s_lo:.0%} of the kernel time of {lo} ({t_lo:.1f} ms) is in NCHW "
                f"convolutions, reorders and unfused elementwise ops, against {s_hi:.0%} for {hi} ({t_hi:.1f} ms)")
        dw_lo = p["ms"][lo].get("conv NCHW depthwise", 0.0)
        dw_orig = p["ms"].get("original", {}).get("conv NCHWc depthwise", 0.0)
        if dw_lo and dw_orig and dw_lo > dw_orig:
            part += (f"; its depthwise convolutions alone take {dw_lo:.1f} ms in the NCHW fallback against "
                     f"{dw_orig:.1f} ms for the original's (wider) NCHWc depthwise convolutions")
        parts.append(part)
    return [("Profiles: " + "; ".join(parts) + ".")] if parts else []


def residual_findings(results: dict, best: int) -> list[str]:
    """Where even the best-aligned variants fall short of the prediction."""
    per = []
    for g in results["groups"]:
        if g["threads"] != 1:
            continue
        for r in g["rows"]:
            if r.get("round_to") == best and "efficiency" in r:
                per.append((r["efficiency"], g["model"], g["batch"], r["variant"]))
    if not per:
        return []
    per.sort()
    by_model = {}
    for e, m, b, _ in per:
        by_model.setdefault(m, []).append(e)
    gm = {m: geomean(v) for m, v in by_model.items()}
    ordered = sorted(gm, key=gm.get)
    text = (f"With round_to {best} the efficiency ranges from {per[0][0]:.0%} ({per[0][1]} {per[0][3]}, batch "
            f"{per[0][2]}) to {per[-1][0]:.0%} ({per[-1][1]} {per[-1][3]}, batch {per[-1][2]}); by model (geomean): "
            + ", ".join(f"{m} {gm[m]:.0%}" for m in ordered) + ".")
    macs = {m: results["models"][m]["macs"] for m in gm}
    if len(macs) >= 3 and ordered[0] in sorted(macs, key=macs.get)[:2]:
        text += (f" The shortfall is largest on the smallest networks ({ordered[0]}: "
                 f"{macs[ordered[0]] / 1e6:.0f} MMACs per image), where per-node dispatch and per-call costs, which "
                 "MACs do not count, are a larger share of the run time.")
    return [text]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2-3 minute subset: 50%% FLOPs, round_to 1 and 16, short timing")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(Config().models))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "LATENCY.md", help="Markdown output (JSON beside it)")
    ap.add_argument("--no-write", action="store_true", help="print the Markdown only")
    ap.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON this script wrote (no runs)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = QUICK if args.quick else Config()
    if args.models:
        unknown = set(args.models.split(",")) - set(Config().models)
        if unknown:
            ap.error(f"unknown model(s) {', '.join(sorted(unknown))}; available: {', '.join(Config().models)}")
        cfg = Config(**{**cfg.__dict__, "models": tuple(args.models.split(","))})
    render_or_run(args, "latency.py", lambda: run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True)), markdown)


if __name__ == "__main__":
    main()
