"""Wall time and peak memory of each onnxprune stage, and how they grow with model and data size.

    python benchmarks/tool_cost.py           # default (~20-25 min on 2 busy cores) -> docs/TOOL_COST.md + .json
    python benchmarks/tool_cost.py --quick   # ResNet-50, 64 images, no scaling tables (~3 min)

Models: torchvision ResNet-18/50/101, random init (seed 0), exported at 224x224 by tests/zoo.py
(cached in ~/.cache/onnxprune/bench). Data: random-normal images (seed 0), 256 by default.

Every (model, images, stage) runs in a **fresh subprocess**: it redoes the stages the measured one
needs (e.g. load + analysis + l1 scores + allocation + rewrite before a reconstruction), then
times the stage alone. Memory:

* ``peak RSS`` — the largest resident set size of the process *during the stage*: the kernel's
  high-water mark VmHWM, reset at the start of the stage by writing 5 to /proc/self/clear_refs
  (exact, no sampling; where that is not allowed, a thread samples /proc/self/statm every 20 ms).
  No tracemalloc: it would miss onnxruntime's and torch's native allocations;
* ``RSS before`` — the resident set size when the stage starts (what its prerequisites hold), so
  ``peak - before`` is what the stage itself adds.

Stages (the functions ``onnxprune.pipeline.compress`` calls):

* load — ``load_inputs``: read the ONNX model (graph-surgeon import, shape inference) and the images;
* analysis — ``prepare``: channel dependency analysis and cost model;
* calibration — ``collect(.., ["hrank"])`` + ``data_scores``: one streamed onnxruntime pass with
  HRank rank collectors on every prunable tensor;
* sensitivity — the evaluator compress builds (``pipeline.masked_evaluator``: one masked session over at
  most 512 images; with calibration data, candidates compensated by local reconstruction where the
  library does that) and ``measure_sensitivity`` at ratio 0.5 for E groups spread over the network,
  **extrapolated** to groups x 9 ratios (setup + evaluations x mean seconds per evaluation; every
  evaluation runs the whole network, plus, when compensated, a ridge solve per consumer of the group);
* allocation — ``allocate_uniform`` to 50% FLOPs (l1 scores);
* rewrite, verify — ``rewrite`` and ``verify`` (onnx.checker full check + an onnxruntime run);
* reconstruction (local / ldrf) — ``reconstruct`` on the 50%-FLOPs model, in the batches compress
  uses (``recon_batch_size``: a 1 GiB activation budget, 14 images for ResNet-50);
* fine-tune epoch — ``onnxprune.tune.finetune_model``, one epoch over the images, distillation from
  the original (the images have no labels), AdamW, batch 32, CPU.

Sensitivity and ldrf reconstruction are too slow to run at 256 images on 2 shared cores (ldrf makes
one pass of the original and one of the pruned model over the data per wave, 49 waves on
ResNet-50): they run in full at two small image counts and are **extrapolated** to 256 with
seconds = a + b x images (least squares), labelled as such.

onnxruntime and torch use both cores (the library's defaults; OMP_NUM_THREADS=2 is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from common import ROOT, machine, render_or_run, run_child, usage  # noqa: E402
from render import Col, Page  # noqa: E402

CACHE = Path.home() / ".cache" / "onnxprune" / "bench"
SEED = 0
SIZE = 224
FLOPS = 0.5
FINETUNE_BATCH = 32

STAGES = ["load", "analysis", "calibration", "sensitivity", "allocation", "rewrite", "verify",
          "reconstruction-local", "reconstruction-ldrf", "finetune-epoch"]
HEAVY = ("sensitivity", "reconstruction-ldrf")


@dataclass(frozen=True)
class Config:
    model: str = "resnet50"
    images: int = 256
    stages: tuple = ("load", "analysis", "calibration", "allocation", "rewrite", "verify", "reconstruction-local",
                     "finetune-epoch")
    # stages too slow to run at `images` on 2 shared cores: run in full at these image counts and
    # extrapolated to `images` with seconds = a + b * images
    heavy: tuple = HEAVY
    heavy_images: tuple = (8, 32)
    sens_evals: int = 3  # sensitivity evaluations measured, extrapolated to groups x ratios
    # growth with model size, at `size_images` images
    size_models: tuple = ("resnet18", "resnet50", "resnet101")
    size_images: int = 16
    size_stages: tuple = ("load", "analysis", "calibration", "reconstruction-local")
    # growth with the number of calibration images (on `model`); the heavy stages' growth is their fit
    data_sizes: tuple = (64, 128, 256)
    data_stages: tuple = ("load", "calibration", "reconstruction-local")


QUICK = Config(images=64, stages=("load", "analysis", "calibration", "allocation", "rewrite", "verify",
                                  "reconstruction-local"),
               heavy=("sensitivity",), heavy_images=(4, 16), sens_evals=2, size_models=(), data_sizes=())


# --------------------------------------------------------------------------- inputs


def model_file(name: str) -> Path:
    from zoo import export

    CACHE.mkdir(parents=True, exist_ok=True)
    return export(name, CACHE, SIZE)


def images_file(n: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"normal_{n}x3x{SIZE}x{SIZE}_seed{SEED}.npy"
    if not path.exists():
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, np.random.default_rng(SEED).standard_normal((n, 3, SIZE, SIZE), dtype=np.float32))
        tmp.replace(path)
    return path


# --------------------------------------------------------------------------- child: one stage


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vm_hwm() -> int:
    """The kernel's resident-set high-water mark of this process (bytes)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise OSError("no VmHWM in /proc/self/status")


class StagePeak:
    """Peak resident set size while the ``with`` block runs.

    Exact where Linux lets a process reset its high-water mark (``5`` written to
    /proc/self/clear_refs, Linux >= 4.0): VmHWM then is the stage's own peak. Elsewhere a thread
    samples /proc/self/statm every 20 ms, which can miss short spikes.
    """

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self.method = interval, 0, "VmHWM"
        self._stop = threading.Event()
        self._thread = None

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss())
            self._stop.wait(self.interval)

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            vm_hwm()
        except OSError:
            self.method = "sampled every 20 ms"
            self.peak = current_rss()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._thread is None:
            self.peak = vm_hwm()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss())
        return False


class Context:
    """What the stages hand each other inside one child process."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.path, self.data_path = model_file(spec["model"]), images_file(spec["images"])
        self.extra: dict = {}


def st_load(c: Context):
    from onnxprune.pipeline import load_inputs

    c.model, c.dataset, _ = load_inputs(str(c.path), data={"input": np.load(c.data_path)})
    c.extra["images"] = c.dataset.num_samples


def st_analysis(c: Context):
    from onnxprune.pipeline import prepare

    _, c.analysis, c.cost = prepare(c.model)
    c.extra["prunable_groups"] = len(c.analysis.prunable_groups)


def st_l1(c: Context):
    from onnxprune.scoring.weights import score_groups

    c.scores = score_groups(c.analysis, "l1")


def st_calibration(c: Context):
    from onnxprune.scoring.activations import collect, data_scores

    result = collect(c.analysis, c.dataset, ["hrank"])
    c.scores = data_scores(c.analysis, "hrank", result)
    c.extra.update(images=result.num_images, batch_size=result.batch_size, provider=result.provider)


def st_sensitivity(c: Context):
    """As compress builds it (pipeline.masked_evaluator; with calibration data, candidates are evaluated
    after local compensation where the library supports it); E groups spread over the network."""
    import inspect

    from onnxprune import Settings, Target
    from onnxprune.pipeline import masked_evaluator
    from onnxprune.allocate.sensitivity import RATIOS, measure_sensitivity

    settings = Settings(Target("flops", FLOPS))
    t0 = time.perf_counter()
    if "calibration" in inspect.signature(masked_evaluator).parameters:
        evaluator, compensated = masked_evaluator(c.analysis, c.dataset, settings, c.dataset), True
    else:
        evaluator, compensated = masked_evaluator(c.analysis, c.dataset, settings), False
    setup = time.perf_counter() - t0
    gids = list(c.scores)
    picked = list(dict.fromkeys(gids[i * len(gids) // c.spec["sens_evals"]] for i in range(c.spec["sens_evals"])))
    t1 = time.perf_counter()
    for gid in picked:
        measure_sensitivity(c.analysis, evaluator, {gid: c.scores[gid]}, "l1", ratios=(0.5,))
    evals = len(picked)
    per_eval = (time.perf_counter() - t1) / evals
    groups = len(c.scores)
    c.extra.update(setup_s=setup, per_eval_s=per_eval, measured_evals=evals, groups=groups, ratios=len(RATIOS),
                   compensated=compensated, eval_images=min(settings.eval_images, c.dataset.num_samples),
                   extrapolated_s=setup + per_eval * groups * len(RATIOS))


def st_allocation(c: Context):
    from onnxprune import Target
    from onnxprune.allocate.uniform import allocate_uniform

    c.allocation = allocate_uniform(c.analysis, c.cost, c.scores, Target("flops", FLOPS))


def st_rewrite(c: Context):
    from onnxprune.rewrite import rewrite

    c.pruned = rewrite(c.analysis, c.allocation.keep)


def st_verify(c: Context):
    from onnxprune.rewrite import verify

    verify(c.model.proto, c.pruned, c.model.input_shapes)


def _reconstruction(mode):
    def stage(c: Context):
        from onnxprune.pipeline import Batches, recon_batch_size
        from onnxprune.reconstruct import reconstruct

        size = recon_batch_size(c.analysis)
        _, report = reconstruct(c.analysis, c.allocation.keep, c.pruned, Batches(c.dataset, size), mode=mode)
        c.extra.update(passes=report.passes, fitted=len(report.fitted), batch_size=size)

    return stage


def st_finetune(c: Context):
    from onnxprune.settings import TuneSettings
    from onnxprune.tune import finetune_model

    steps = []
    finetune_model(c.pruned, {"input": np.load(c.data_path)}, teacher=c.model.proto,
                   settings=TuneSettings(epochs=1, batch_size=FINETUNE_BATCH, device="cpu"),
                   progress=lambda e: steps.append(e) if e.get("event") == "step" else None)
    c.extra.update(steps=len(steps), batch_size=FINETUNE_BATCH)


RUN = {"load": st_load, "analysis": st_analysis, "l1": st_l1, "calibration": st_calibration,
       "sensitivity": st_sensitivity, "allocation": st_allocation, "rewrite": st_rewrite, "verify": st_verify,
       "reconstruction-local": _reconstruction("local"), "reconstruction-ldrf": _reconstruction("ldrf"),
       "finetune-epoch": st_finetune}
_PRUNED = ["load", "analysis", "l1", "allocation", "rewrite"]
NEEDS = {"load": [], "analysis": ["load"], "calibration": ["load", "analysis"],
         "sensitivity": ["load", "analysis", "l1"], "allocation": ["load", "analysis", "l1"],
         "rewrite": ["load", "analysis", "l1", "allocation"], "verify": _PRUNED,
         "reconstruction-local": _PRUNED, "reconstruction-ldrf": _PRUNED, "finetune-epoch": _PRUNED}


def child_main(spec: dict) -> dict:
    c = Context(spec)
    stage = spec["stage"]
    t_pre = time.perf_counter()
    for step in NEEDS[stage]:
        RUN[step](c)
    pre = time.perf_counter() - t_pre
    load0 = os.getloadavg()[0]
    before = current_rss()
    cpu0 = usage()["cpu_s"]
    with StagePeak() as rss:
        t0 = time.perf_counter()
        RUN[stage](c)
        wall = time.perf_counter() - t0
    return {**spec, "wall_s": wall, "cpu_s": usage()["cpu_s"] - cpu0, "rss_before_gb": before / 2**30,
            "peak_rss_gb": rss.peak / 2**30, "prerequisites_s": pre, "peak_method": rss.method,
            "load": [load0, os.getloadavg()[0]], **c.extra}


# --------------------------------------------------------------------------- driver


def measure(spec: dict, log) -> dict:
    model_file(spec["model"])  # export / write once, outside the children
    images_file(spec["images"])
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    done = run_child([__file__, "--child", json.dumps(spec)], env=env)
    if not done.ok:
        tail = done.error_tail()
        log(f"#   {spec}: FAILED ({tail})")
        return {**spec, "error": tail}
    row = done.record
    row["child_s"] = time.perf_counter() - t0
    log(f"#   {row['model']:9s} {row['images']:4d} {row['stage']:20s} {row['wall_s']:7.1f} s  peak "
        f"{row['peak_rss_gb']:.2f} GB  load {row['load'][0]:.1f}")
    return row


def run(cfg: Config, log) -> dict:
    t0 = time.perf_counter()
    done: dict[tuple, dict] = {}

    def get(model, images, stage):
        spec = {"model": model, "images": images, "stage": stage, "sens_evals": cfg.sens_evals}
        key = (model, images, stage)
        if key not in done:
            done[key] = measure(spec, log)
        return done[key]

    main = [get(cfg.model, cfg.images, s) for s in cfg.stages]
    heavy = [get(cfg.model, n, s) for s in cfg.heavy for n in cfg.heavy_images]
    by_model = [get(m, cfg.size_images, s) for m in cfg.size_models for s in cfg.size_stages]
    by_data = [get(cfg.model, n, s) for n in cfg.data_sizes for s in cfg.data_stages]
    return {"config": cfg.__dict__, "machine": machine(), "wall_s": time.perf_counter() - t0,
            "main": main, "heavy": heavy, "by_model": by_model, "by_data": by_data}


# --------------------------------------------------------------------------- report


def stage_seconds(r: dict) -> float:
    """The stage's seconds: measured, or for sensitivity the extrapolated full analysis."""
    return r["extrapolated_s"] if r["stage"] == "sensitivity" else r["wall_s"]


def seconds(r: dict) -> str:
    if "error" in r:
        return "failed"
    if r["stage"] == "sensitivity":
        return f"{r['extrapolated_s']:.0f} (extrapolated)"
    return f"{r['wall_s']:.1f}"


def note(r: dict) -> str:
    if "error" in r:
        return r["error"]
    s = r["stage"]
    if s == "sensitivity":
        how = "after local compensation (as compress with --data)" if r["compensated"] else "plain masking"
        return (f"{r['groups']} groups x {r['ratios']} ratios on {r['eval_images']} images, {how}: setup "
                f"{r['setup_s']:.1f} s + {r['per_eval_s']:.1f} s per evaluation, measured on "
                f"{r['measured_evals']} evaluations")
    if s == "calibration":
        return f"hrank, {r['images']} images, batch {r['batch_size']}, {r['provider']}"
    if s == "finetune-epoch":
        return f"{r['steps']} steps of batch {r['batch_size']}, distillation from the original"
    if s == "analysis":
        return f"{r['prunable_groups']} prunable groups"
    if s.startswith("reconstruction") and "batch_size" in r:
        return f"{r['passes']} pass(es), batches of {r['batch_size']} images"
    return ""


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(a, b) of y = a + b x, least squares (exact through two points)."""
    x, y = np.array(points, dtype=float).T
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0, float(y.mean() / x.mean())
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def heavy_estimates(rows: list[dict], images: int) -> list[dict]:
    """Per heavy stage: its seconds at ``images`` from a + b * images fitted on the measured sizes."""
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        ok = [r for r in rows if r["stage"] == stage and "error" not in r]
        if len(ok) < 2:
            continue
        a, b = fit_line([(r["images"], stage_seconds(r)) for r in ok])
        out.append({"stage": stage, "seconds": a + b * images, "a": a, "b": b, "rows": ok,
                    "row": max(ok, key=lambda r: r["images"])})
    return out


def heavy_note(e: dict) -> str:
    r = e["row"]
    points = ", ".join(f"{stage_seconds(x):.1f} s at {x['images']} images" for x in e["rows"])
    fit = f"fit {e['a']:.1f} s + {e['b']:.2f} s x images"
    if r["stage"] == "sensitivity":
        how = "after local compensation (as compress with --data)" if r["compensated"] else "plain masking"
        per = "; ".join(f"{x['images']} images: setup {x['setup_s']:.1f} s + {x['per_eval_s']:.2f} s per evaluation"
                        for x in e["rows"])
        return (f"{r['groups']} groups x {r['ratios']} ratios, {how}. Measured ({r['measured_evals']} evaluations "
                f"per size) {per}; full analysis = setup + {r['groups'] * r['ratios']} evaluations: {points}; {fit}")
    return f"{r.get('passes', '?')} pass(es) over the data; run in full: {points}; {fit}"


def _est(fn):
    """A main-table column value: ``fn(row)`` for a measured stage, "" for an extrapolated one."""
    return lambda r: "" if "estimate" in r else fn(r)


MAIN_COLS = [
    Col("stage", "stage"),
    Col("wall s", lambda r: f"{r['estimate']['seconds']:.0f} (extrapolated)" if "estimate" in r else seconds(r)),
    Col("cpu s", _est(lambda r: f"{r.get('cpu_s', float('nan')):.1f}")),
    Col("RSS before GB", lambda r: f"{r.get('rss_before_gb', 0):.2f}"),
    Col("peak RSS GB", lambda r: f"{r.get('peak_rss_gb', 0):.2f}" + (f" at {r['images']} images" if "estimate" in r else "")),
    Col("load", lambda r: f"{r['load'][0]:.1f}" if "load" in r else ""),
    Col("notes", lambda r: heavy_note(r["estimate"]) if "estimate" in r else note(r)),
]


def markdown(res: dict, command: str) -> str:
    cfg = res["config"]
    n = cfg["images"]
    page = Page("Tool cost: time and memory per stage")
    page.para(f"Generated by `{command}` in {res['wall_s'] / 60:.1f} min on {res['machine']}. The machine is shared "
              "with other jobs (2 cores): every row gives the 1-minute load average when its stage started, and CPU "
              "seconds beside wall seconds.",
              "Each row is one fresh subprocess that first redoes the stages the measured one needs, then times that "
              f"stage alone. **peak RSS**: the resident-set high-water mark *during the stage* ({peak_method(res)}); "
              "**RSS before**: the resident size when it starts (peak - before is what the stage adds). Pruning "
              f"target {FLOPS:.0%} FLOPs (l1 scores for the stages after calibration); random-normal 224x224 images "
              "(seed 0); onnxruntime and torch with 2 threads. Rows marked **extrapolated** were not run in full: "
              "the notes say what was measured and how it was scaled.")
    main = res["main"]
    est = heavy_estimates(res["heavy"], n)
    if main or est:
        page.section(f"{cfg['model']} at 224x224, {n} calibration images")
        page.table(MAIN_COLS, main + [dict(e["row"], stage=e["stage"], estimate=e) for e in est])
        page.para(*[x for x in summary_lines(main, est) if x])
    for key, title, col in (("by_model", f"Growth with model size ({cfg['size_images']} images)", "model"),
                            ("by_data", f"Growth with the number of calibration images ({cfg['model']})", "images")):
        rs = res[key]
        if not rs:
            continue
        cols = list(dict.fromkeys(r[col] for r in rs))

        def label(r):
            same = key == "by_data" or r["images"] == cfg["size_images"]
            return r["stage"] if same else f"{r['stage']} ({r['images']} images)"

        stages = list(dict.fromkeys(label(r) for r in rs))
        cell = {(r[col], label(r)): r for r in rs}
        page.section(title, "Wall seconds / peak RSS GB during the stage (load average at its start).")
        trows = []
        for s in stages:
            row = [s]
            for c in cols:
                r = cell.get((c, s))
                row.append("" if r is None else "failed" if "error" in r else
                           f"{seconds(r)} / {r['peak_rss_gb']:.2f} ({r['load'][0]:.1f})")
            trows.append(row)
        if key == "by_model":
            macs = model_macs(cols)
            trows.append(["GMACs / prunable groups"] + [
                f"{macs[c] / 1e9:.2f} / {cell.get((c, 'analysis'), {}).get('prunable_groups', '?')}" for c in cols])
        page.grid([col] + [str(c) for c in cols], trows)  # a pivot: one column per model / image count
        page.para(*[x for x in growth_lines(rs, col, label) if x])
    return page.text()


def peak_method(res: dict) -> str:
    methods = {r.get("peak_method") for k in ("main", "heavy", "by_model", "by_data") for r in res[k]
               if "error" not in r}
    if methods == {"VmHWM"}:
        return "Linux VmHWM, reset at the stage start by writing 5 to /proc/self/clear_refs: exact, not sampled"
    return "VmHWM reset through /proc/self/clear_refs where allowed, else sampled every 20 ms: " + ", ".join(
        sorted(map(str, methods)))


def model_macs(names) -> dict:
    from onnxprune.pipeline import prepare

    out = {}
    for name in names:
        _, analysis, cost = prepare(str(model_file(name)))
        out[name] = cost.evaluate(analysis.full_keep()).macs
    return out


def summary_lines(main: list[dict], est: list[dict]) -> list[str]:
    t = {r["stage"]: stage_seconds(r) for r in main if "error" not in r}
    t.update({e["stage"]: e["seconds"] for e in est})
    if not t:
        return []
    biggest = sorted(t, key=t.get, reverse=True)
    ok = [r for r in main if "error" not in r] + [e["row"] for e in est]
    peak = max(ok, key=lambda r: r["peak_rss_gb"])
    text = ("Slowest stages: " + ", ".join(f"{s} {t[s]:.0f} s" for s in biggest[:3]) +
            f"; the largest memory peak is {peak['stage']} ({peak['peak_rss_gb']:.2f} GB, "
            f"+{peak['peak_rss_gb'] - peak['rss_before_gb']:.2f} GB over what it starts with).")
    default = ("load", "analysis", "calibration", "allocation", "rewrite", "reconstruction-ldrf", "verify")
    if all(s in t for s in default):
        text += (f" A default `onnxprune compress --data` run (hrank, uniform allocation, ldrf) adds up to about "
                 f"{sum(t[s] for s in default) / 60:.0f} min of these stages, "
                 f"{t['reconstruction-ldrf'] / sum(t[s] for s in default):.0%} of it in reconstruction")
        if "sensitivity" in t:
            text += f"; sensitivity allocation adds about {t['sensitivity'] / 60:.0f} min"
        text += "."
    return [text, ""]


def growth_lines(rs: list[dict], col: str, label) -> list[str]:
    """Exponent of a power-law fit time ~ size^k per stage (size = MACs or images)."""
    ok = [r for r in rs if "error" not in r]
    cols = list(dict.fromkeys(r[col] for r in ok))
    if len(cols) < 2:
        return []
    size = model_macs(cols) if col == "model" else {c: c for c in cols}
    parts = []
    for s in dict.fromkeys(label(r) for r in ok):
        pts = [(size[r[col]], stage_seconds(r)) for r in ok if label(r) == s]
        if len(pts) >= 2 and all(y > 0 for _, y in pts):
            k = np.polyfit(np.log([x for x, _ in pts]), np.log([y for _, y in pts]), 1)[0]
            parts.append(f"{s} {k:.2f}")
    what = "MACs" if col == "model" else "images"
    return [f"Growth exponent k of wall time ~ ({what})^k, least squares on logs: " + ", ".join(parts) + ".", ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="ResNet-50, 64 images, main stages only (~3 min)")
    ap.add_argument("--images", type=int, help="calibration images of the main table (default 256; quick 64)")
    ap.add_argument("--stages", help="comma-separated subset of the main table's stages: " + ",".join(STAGES))
    ap.add_argument("--no-scaling", action="store_true", help="skip the model-size and data-size tables")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "TOOL_COST.md", help="Markdown output (JSON beside it)")
    ap.add_argument("--no-write", action="store_true", help="print the Markdown only")
    ap.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON this script wrote (no runs)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child_main(json.loads(args.child)), default=float))
        return
    cfg = QUICK if args.quick else Config()
    over = {}
    if args.images:
        if args.images < 1:
            ap.error("--images must be at least 1")
        over["images"] = args.images
    if args.stages:
        stages = tuple(args.stages.split(","))
        unknown = set(stages) - set(STAGES)
        if unknown:
            ap.error(f"unknown stage(s) {', '.join(sorted(unknown))}; available: {', '.join(STAGES)}")
        over["stages"] = stages
    if args.no_scaling:
        over.update(size_models=(), data_sizes=())
    cfg = Config(**{**cfg.__dict__, **over})
    render_or_run(args, "tool_cost.py", lambda: run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True)), markdown)


if __name__ == "__main__":
    main()
