"""Pruning to a measured speed-up: ``--speedup`` asked vs measured, and what the aligned block
search buys at FLOPs targets (issue 16).

    python benchmarks/speedup.py --quick   # ~10 min on 2 cores: bundled + resnet18/mobilenet_v2, 1.25x/1.5x/2x, 1-2 threads
    python benchmarks/speedup.py           # + 3x, resnet50/efficientnet_b0, FLOPs 0.3/0.5/0.7

(a) ``compress --speedup X`` (criterion l1, no data, uniform scores, blocks of the probed
alignment) at 1 and 2 intra-op threads: the speed-up compress measured itself (onnxruntime
profiler, low percentile per kernel, original and pruned interleaved) and an independent
wall-clock measurement (median of interleaved runs), against the target.
(b) ``--flops F`` with the new default (``--round-to auto`` = probed NCHWc block, exact block
search) vs ``--round-to 8``: achieved reduction, MACs-predicted speed-up, measured (wall-clock,
interleaved, 1 thread) speed-up and their ratio.
(c) the latency model: profiling time and held-out error per model and thread count.

Models: the bundled Fashion-MNIST ResNet-20/VGG-11 (1x28x28) and torchvision models (random
init, 224x224, exported by tests/zoo.py, cached in ~/.cache/onnxprune/bench). The machine is
shared: load averages are recorded with each table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import ROOT, machine, render_or_run  # noqa: E402
from render import Col, Page  # noqa: E402
from latency import model_path  # noqa: E402


@dataclass(frozen=True)
class Config:
    models: tuple = ("resnet20", "vgg11", "resnet18", "mobilenet_v2", "resnet50", "efficientnet_b0")
    speedups: tuple = (1.25, 1.5, 2.0, 3.0)
    threads: tuple = (1, 2)
    fractions: tuple = (0.3, 0.5, 0.7)
    wall_s: float = 4.0  # independent wall-clock timing per (original, pruned) pair


QUICK = Config(models=("resnet20", "vgg11", "resnet18", "mobilenet_v2"), speedups=(1.25, 1.5, 2.0), fractions=(0.5,),
               wall_s=2.0)


def wall_speedup(original: bytes, pruned: bytes, feeds: dict, threads: int, budget_s: float, seed: int = 0) -> dict:
    """Median wall time of interleaved runs (each round runs both, shuffled) and their ratio."""
    from onnxprune.runtime.latency import Deployment, session

    dep = Deployment(threads=threads)
    sessions = [session(original, dep), session(pruned, dep)]
    for s in sessions:
        for _ in range(3):
            s.run(None, feeds)
    rng = np.random.default_rng(seed)
    times = [[], []]
    start = time.perf_counter()
    while len(times[0]) < 8 or (time.perf_counter() - start < budget_s and len(times[0]) < 3000):
        for j in rng.permutation(2):
            t = time.perf_counter()
            sessions[j].run(None, feeds)
            times[j].append(time.perf_counter() - t)
    a, b = (float(np.median(t)) * 1000 for t in times)
    ratios = np.array(times[0]) / np.array(times[1])
    return {"original_ms": round(a, 3), "pruned_ms": round(b, 3), "speedup": round(a / b, 4),
            "iqr": [round(float(np.percentile(ratios, 25)), 3), round(float(np.percentile(ratios, 75)), 3)],
            "rounds": len(times[0])}


def run(cfg: Config, log=print) -> dict:
    from onnxprune import Limits, Settings, Target, compress
    from onnxprune.allocate.speed import SpeedTarget, latency_allocator, placeholder_target
    from onnxprune.errors import TargetError
    from onnxprune.pipeline import prepare
    from onnxprune.runtime.latency import Deployment, detect_alignment, feeds_for, profile_model

    align = detect_alignment()
    cache = Path(tempfile.mkdtemp(prefix="speedup-bench-"))
    results = {"machine": machine(), "alignment": align, "speedup": [], "flops": [], "profiles": [],
               "config": cfg.__dict__}
    start = time.perf_counter()
    for name in cfg.models:
        path = str(model_path(name))
        original = Path(path).read_bytes()
        for threads in cfg.threads:
            _, analysis, _ = prepare(path)
            lm = profile_model(analysis, Deployment(threads=threads), cache_dir=cache)  # compress reuses it
            results["profiles"].append({"model": name, "threads": threads, "seconds": lm.seconds,
                                        "heldout_error": lm.error, "base_ms": lm.base_ms})
            for x in cfg.speedups:
                load = os.getloadavg()[0]
                speed = SpeedTarget(speedup=x, deployment=Deployment(threads=threads), cache_dir=str(cache))
                t0 = time.perf_counter()
                row = {"model": name, "threads": threads, "asked": x, "load": round(load, 2)}
                try:
                    res = compress(path, Settings(placeholder_target(speed), criterion="l1", reconstruct="none",
                                                  limits=Limits(round_to=align)), allocator=latency_allocator(speed))
                except TargetError as exc:
                    row["error"] = str(exc)
                    results["speedup"].append(row)
                    log(f"{name} {threads}t {x}x: {exc}")
                    continue
                sp = res.summary["speed"]
                feeds = feeds_for(res.analysis.model.proto, res.analysis, 1)
                wall = wall_speedup(original, res.model.SerializeToString(), feeds, threads, cfg.wall_s)
                row.update({"predicted": sp["predicted"], "measured": sp["measured"], "rounds": len(sp["rounds"]),
                            "wall": wall["speedup"], "wall_iqr": wall["iqr"], "original_ms": wall["original_ms"],
                            "pruned_ms": wall["pruned_ms"], "flops_reduction": res.summary["flops_reduction"],
                            "seconds": round(time.perf_counter() - t0, 1)})
                results["speedup"].append(row)
                log(f"{name} {threads}t {x}x: predicted {sp['predicted']:.2f} measured {sp['measured']:.2f} "
                    f"wall {wall['speedup']:.2f} ({row['seconds']} s)")
        for fraction in cfg.fractions:
            for r in (align, 8):
                row = {"model": name, "fraction": fraction, "round_to": r, "load": round(os.getloadavg()[0], 2)}
                try:
                    res = compress(path, Settings(Target("flops", fraction), criterion="l1", reconstruct="none",
                                                  limits=Limits(round_to=r), round_to_fallback=True))
                except TargetError as exc:
                    row["error"] = str(exc)
                    results["flops"].append(row)
                    continue
                s = res.summary
                feeds = feeds_for(res.analysis.model.proto, res.analysis, 1)
                wall = wall_speedup(original, res.model.SerializeToString(), feeds, 1, cfg.wall_s)
                predicted = s["macs_before"] / s["macs_after"]
                row.update({"achieved": s["flops_reduction"], "used_round_to": s["round_to"],
                            "predicted": round(predicted, 4), "wall": wall["speedup"], "wall_iqr": wall["iqr"],
                            "efficiency": round(wall["speedup"] / predicted, 4)})
                results["flops"].append(row)
                log(f"{name} flops {fraction} r{r}: achieved {s['flops_reduction']:.4f} predicted {predicted:.2f} "
                    f"wall {wall['speedup']:.2f}")
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


def _ok(value):
    """A column value that rows with an ``error`` leave empty (shown as its ``missing``)."""
    return lambda r: None if "error" in r else (r[value] if isinstance(value, str) else value(r))


def _within(r: dict) -> bool:
    return abs(r["measured"] / r["asked"] - 1) <= 0.05


SPEEDUP_COLS = [
    Col("model", "model"), Col("threads", "threads"), Col("asked x", "asked", ".2f"),
    Col("predicted x", _ok("predicted"), ".2f", "-"), Col("measured x", _ok("measured"), ".2f", "-"),
    Col("wall x (IQR)", _ok(lambda r: f"{r['wall']:.2f} ({r['wall_iqr'][0]:.2f}-{r['wall_iqr'][1]:.2f})"), missing="-"),
    Col("rounds", _ok("rounds"), missing="-"), Col("MACs removed", _ok("flops_reduction"), ".1%", "-"),
    Col("load", "load"), Col("within 5%", lambda r: r["error"] if "error" in r else "yes" if _within(r) else "no"),
]
FLOPS_COLS = [
    Col("model", "model"), Col("F", "fraction"), Col("round_to asked", "round_to"),
    Col("used", _ok("used_round_to"), missing="-"), Col("achieved", _ok("achieved"), ".4f", "-"),
    Col("predicted x", _ok("predicted"), ".2f", "-"), Col("measured x", _ok("wall"), ".2f", "-"),
    Col("efficiency", _ok("efficiency"), ".2f", "-"), Col("load", "load"),
]
PROFILE_COLS = [
    Col("model", "model"), Col("threads", "threads"), Col("profile s", "seconds"), Col("original ms", "base_ms", ".3f"),
    Col("held-out error", "heldout_error", ".1%", "-"),
]


def markdown(results: dict, command: str) -> str:
    reached = [r for r in results["speedup"] if "error" not in r]
    page = Page("Pruning to a measured speed-up (`--speedup`) and exact FLOPs targets over aligned blocks")
    page.para(f"Generated by `{command}` in {results['seconds'] / 60:.1f} min on {results['machine']}; probed channel "
              f"alignment (onnxruntime NCHWc block) {results['alignment']}. The machine is shared with other jobs: "
              "`load` is the 1-minute load average when the row started.")
    page.section("(a) `--speedup X`: asked vs measured",
                 "compress: criterion l1, no data; **measured** = compress's own measurement (onnxruntime profiler, low "
                 "percentile per kernel, original and pruned interleaved, fixed threads); **wall** = an independent "
                 "median of interleaved wall-clock runs (its IQR: of the per-round ratios). Within 5% counts "
                 "measured/asked in [0.95, 1.05].")
    page.table(SPEEDUP_COLS, results["speedup"])
    page.para(f"{sum(map(_within, reached))} of {len(reached)} reachable targets measured within 5% "
              f"({len(results['speedup']) - len(reached)} unreachable: one-line error with the reachable speed-up).")
    page.section("(b) `--flops F`: new default vs `--round-to 8`",
                 "Uniform allocation rounded by the block search; measured = wall-clock interleaved median ratio, 1 "
                 "thread; efficiency = measured / MACs-predicted speed-up.")
    page.table(FLOPS_COLS, results["flops"])
    page.section("(c) Latency model: profiling cost and held-out error",
                 "5 uniformly pruned variants fitted, 2 random-ratio variants held out (predicted vs measured latency).")
    page.table(PROFILE_COLS, results["profiles"])
    return page.text()


def summary_lines(results: dict) -> list[str]:
    """Bullet lines for docs/BENCHMARKS.md (run_all.py)."""
    reached = [r for r in results.get("speedup", []) if "error" not in r]
    within = sum(abs(r["measured"] / r["asked"] - 1) <= 0.05 for r in reached)
    lines = [f"`--speedup`: {within} of {len(reached)} reachable targets measured within 5% "
             f"({len(results.get('speedup', [])) - len(reached)} unreachable, reported with the reachable speed-up)."]
    eff = {}
    for r in results.get("flops", []):
        if "error" not in r:
            eff.setdefault(r["round_to"], []).append(r["efficiency"])
    if eff:
        lines.append("`--flops`: measured / MACs-predicted speed-up " + ", ".join(
            f"{float(np.exp(np.mean(np.log(v)))):.2f} with blocks of {k}" for k, v in sorted(eff.items(), reverse=True)) + ".")
    prof = results.get("profiles", [])
    errors = [p["heldout_error"] for p in prof if p["heldout_error"] is not None]
    if prof:
        lines.append(f"Latency model: profiled in at most {max(p['seconds'] for p in prof):.0f} s, held-out error at "
                     f"most {max(errors):.1%}." if errors else "")
    return [line for line in lines if line]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bundled + resnet18/mobilenet_v2, 1.5x/2x, FLOPs 0.5")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(Config().models))
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "SPEEDUP.md", help="Markdown output (JSON beside it)")
    ap.add_argument("--no-write", action="store_true", help="print the Markdown only")
    ap.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON this script wrote (no runs)")
    ap.add_argument("--speedups", help="comma-separated speed-up targets (default: the configuration's)")
    ap.add_argument("--fractions", help="comma-separated FLOPs targets (default: the configuration's)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else Config()
    if args.models:
        cfg = Config(**{**cfg.__dict__, "models": tuple(args.models.split(","))})
    if args.speedups:
        cfg = Config(**{**cfg.__dict__, "speedups": tuple(float(x) for x in args.speedups.split(","))})
    if args.fractions:
        cfg = Config(**{**cfg.__dict__, "fractions": tuple(float(x) for x in args.fractions.split(","))})
    render_or_run(args, "speedup.py", lambda: run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True)), markdown)


if __name__ == "__main__":
    main()
