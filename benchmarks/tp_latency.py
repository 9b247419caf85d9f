"""Measured vs MACs-predicted speed-up at the same MACs: onnxprune's default, `--round-to 8` and
Torch-Pruning (round_to 8 and 16), exported to ONNX (issue 16, benchmark item 5(b)).

    python benchmarks/tp_latency.py --quick   # resnet18 + mobilenet_v2, --flops 0.5, 15 rounds
    python benchmarks/tp_latency.py           # --flops 0.3 and 0.5, 30 rounds

Per model (torchvision, random init, 224x224, exported as tests/zoo.py does: dynamo=False,
opset 17) and MACs target F:

- **onnxprune default**: ``compress M --flops F`` (criterion l1, no data, ``--round-to auto`` =
  the probed onnxruntime NCHWc block, exact block search; the library's ``Settings`` defaults).
- **onnxprune r8**: the same with ``--round-to 8`` (no fall-back).
- **Torch-Pruning r8 / r16**: ``MagnitudePruner`` with ``GroupMagnitudeImportance``,
  ``global_pruning=False``, ``round_to`` 8 / 16, classifier ignored; ``pruning_ratio`` found by
  a bracketed search (bisection with a MACs-model first guess) so that the MACs removed (counted by onnxprune on the exported ONNX, like the other
  rows) match onnxprune default's within ``Config.tolerance``; then exported like the original.

Speed does not depend on the weights, so random weights and data-free pruning suffice. Latency:
onnxruntime CPU, 1 intra-op and 1 inter-op thread, the original and every pruned variant of a
model interleaved (each round runs all of them once in a shuffled order), median per model;
measured x = original median / variant median; predicted x = original MACs / variant MACs;
efficiency = measured / predicted. The machine is shared: the load average is recorded.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
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
    models: tuple = ("resnet18", "mobilenet_v2")
    fractions: tuple = (0.3, 0.5)
    rounds: int = 30  # interleaved latency rounds (every variant once per round)
    tolerance: float = 0.01  # Torch-Pruning's MACs removed within this of onnxprune default's
    bisection_steps: int = 10


QUICK = Config(fractions=(0.5,), rounds=15)


def export_torch(model, size: int = 224) -> bytes:
    """ONNX bytes of a torch model, exported as tests/zoo.py exports the originals."""
    import torch

    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, size, size), buf, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return buf.getvalue()


def macs_of(data: bytes) -> int:
    import onnx

    from onnxprune.pipeline import measured_cost

    return measured_cost(onnx.load_from_string(data), None).macs


def tp_prune(name: str, ratio: float, round_to: int):
    """Torch-Pruning's magnitude pruner (group L2 magnitude, one ratio per layer) on a fresh model."""
    import torch
    import torch_pruning as tp
    from zoo import import_torchvision

    tv = import_torchvision()
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    pruner = tp.pruner.MagnitudePruner(model, torch.randn(1, 3, 224, 224), importance=tp.importance.GroupMagnitudeImportance(),
                                       global_pruning=False, pruning_ratio=ratio, round_to=round_to,
                                       ignored_layers=head[-1:])
    pruner.step()
    return model.eval()


def tp_match(name: str, round_to: int, goal: float, base_macs: int, cfg: Config, log) -> dict:
    """Bisect Torch-Pruning's ``pruning_ratio`` until the exported model's MACs removed is within
    ``cfg.tolerance`` of ``goal`` (the closest tried otherwise: rounding makes it step-wise)."""
    lo, hi, best, tried, c = 0.0, 0.95, None, set(), 0.0
    for _ in range(cfg.bisection_steps):
        # per-layer ratio r removes about 1 - (1 - r)^2 of the MACs; c corrects that model from the last try
        ratio = round(1 - float(np.sqrt(max(1e-6, 1 - min(0.99, goal - c)))), 4)
        if not lo < ratio < hi or ratio in tried:
            ratio = round((lo + hi) / 2, 4)
        tried.add(ratio)
        data = export_torch(tp_prune(name, ratio, round_to))
        removed = 1 - macs_of(data) / base_macs
        if best is None or abs(removed - goal) < abs(best["achieved"] - goal):
            best = {"data": data, "ratio": ratio, "achieved": removed}
        log(f"  TP r{round_to} ratio {ratio:.4f}: removed {removed:.4f} (goal {goal:.4f})")
        if abs(removed - goal) <= cfg.tolerance / 2 or hi - lo < 0.002:
            break
        c = removed - (1 - (1 - ratio) ** 2)
        lo, hi = (ratio, hi) if removed < goal else (lo, ratio)
    return best


def interleaved(models: list[bytes], feeds: dict, rounds: int, warmup: int = 3, seed: int = 0) -> list[dict]:
    """Median latency (ms) of several models, each round running all of them once, shuffled."""
    from onnxprune.runtime.session import interleaved_timings

    return interleaved_timings(models, feeds, runs=rounds, warmup_runs=warmup, threads=1, shuffle_seed=seed)


def run(cfg: Config, log=print) -> dict:
    from onnxprune import Limits, Settings, Target, compress
    from onnxprune.runtime.latency import detect_alignment

    align = detect_alignment()
    results = {"machine": machine(), "alignment": align, "config": cfg.__dict__, "rows": [], "originals": []}
    start = time.perf_counter()
    for name in cfg.models:
        path = str(model_path(name))
        original = Path(path).read_bytes()
        base_macs = macs_of(original)
        variants = []  # (row, model bytes)
        for fraction in cfg.fractions:
            for method, settings in (
                ("onnxprune default", Settings(Target("flops", fraction), criterion="l1", reconstruct="none")),
                ("onnxprune r8", Settings(Target("flops", fraction), criterion="l1", reconstruct="none",
                                          limits=Limits(round_to=8), round_to_fallback=False)),
            ):
                res = compress(path, settings)
                data = res.model.SerializeToString()
                row = {"model": name, "fraction": fraction, "method": method, "round_to": res.summary.get("round_to")}
                variants.append((row, data))
                log(f"{name} F={fraction} {method}: removed {res.summary['flops_reduction']:.4f}")
            goal = 1 - macs_of(variants[-2][1]) / base_macs  # onnxprune default's achieved reduction
            for r in (8, 16):
                t0 = time.perf_counter()
                best = tp_match(name, r, goal, base_macs, cfg, log)
                row = {"model": name, "fraction": fraction, "method": f"Torch-Pruning r{r}", "round_to": r,
                       "tp_ratio": best["ratio"], "tp_seconds": round(time.perf_counter() - t0, 1)}
                variants.append((row, best["data"]))
        import onnx

        from onnxprune.runtime.latency import feeds_for
        from onnxprune.pipeline import prepare

        _, analysis, _ = prepare(path)
        feeds = feeds_for(onnx.load_from_string(original), analysis, 1)
        load = round(os.getloadavg()[0], 2)
        timing = interleaved([original] + [d for _, d in variants], feeds, cfg.rounds)
        base_ms = timing[0]["median_ms"]
        results["originals"].append({"model": name, "macs": base_macs, "median_ms": base_ms, "p10_ms": timing[0]["p10_ms"],
                                     "p90_ms": timing[0]["p90_ms"], "load": load})
        for (row, data), t in zip(variants, timing[1:]):
            macs = macs_of(data)
            predicted = base_macs / macs
            measured = base_ms / t["median_ms"]
            row.update({"macs": macs, "removed": round(1 - macs / base_macs, 5), "predicted": round(predicted, 4),
                        "median_ms": t["median_ms"], "p10_ms": t["p10_ms"], "p90_ms": t["p90_ms"],
                        "measured": round(measured, 4), "efficiency": round(measured / predicted, 4),
                        "slower": measured < 1.0, "load": load})
            results["rows"].append(row)
            log(f"{name} F={row['fraction']} {row['method']}: removed {row['removed']:.3f} predicted "
                f"{predicted:.2f} measured {measured:.2f} ({t['median_ms']:.2f} ms vs {base_ms:.2f})")
    results["seconds"] = round(time.perf_counter() - start, 1)
    return results


COLS = [
    Col("model", "model"), Col("F", "fraction"), Col("method", "method"),
    Col("MACs removed", "removed", ".1%"), Col("predicted x", "predicted", ".2f"),
    Col("measured x", "measured", ".2f"), Col("efficiency", "efficiency", ".2f"),
    Col("ms (p10-p90)", lambda r: f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})"),
    Col("slower than original", lambda r: "yes" if r["slower"] else "no"),
]
ORIGINAL_COLS = [
    Col("model", "model"), Col("GMACs", lambda r: r["macs"] / 1e9, ".3f"),
    Col("original ms (p10-p90)", lambda r: f"{r['median_ms']:.2f} ({r['p10_ms']:.2f}-{r['p90_ms']:.2f})"),
    Col("load", "load"),
]


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def markdown(results: dict, command: str) -> str:
    cfg = results["config"]
    page = Page("Measured vs MACs-predicted speed-up: onnxprune vs Torch-Pruning at the same MACs",
                command=command, machine=results["machine"])
    page.para(f"Run time {results['seconds'] / 60:.1f} min. Probed channel alignment (onnxruntime NCHWc block): "
              f"{results['alignment']}. torchvision models, random init, 224x224, exported to ONNX (dynamo=False, "
              "opset 17). **onnxprune default** = `onnxprune compress M --flops F` (criterion l1, no data, "
              "`--round-to auto`); **onnxprune r8** = the same with `--round-to 8`; **Torch-Pruning rN** = "
              "`MagnitudePruner` + `GroupMagnitudeImportance`, `global_pruning=False`, `round_to=N`, classifier "
              "ignored, `pruning_ratio` searched (bracketed bisection) until the MACs removed (counted by onnxprune on the exported ONNX) "
              f"is within {cfg['tolerance']:.0%} of onnxprune default's (the closest ratio tried otherwise).")
    page.para(f"Latency: onnxruntime CPU, 1 thread, the original and all variants of a model interleaved "
              f"({cfg['rounds']} rounds, shuffled order each round), median. predicted x = original MACs / pruned "
              "MACs; measured x = original median / pruned median; efficiency = measured / predicted. The machine "
              "is shared with other jobs (load = 1-minute load average before timing).")
    page.table(ORIGINAL_COLS, results["originals"])
    page.table(COLS, results["rows"])
    by_method: dict = {}
    for r in results["rows"]:
        by_method.setdefault(r["method"], []).append(r["efficiency"])
    page.para("Geometric-mean efficiency: " + ", ".join(f"{m} {_geomean(v):.2f}" for m, v in by_method.items())
              + f"; pruned models slower than the original: {sum(r['slower'] for r in results['rows'])} of "
              f"{len(results['rows'])}.")
    tp = [r for r in results["rows"] if "tp_ratio" in r]
    goal = {(r["model"], r["fraction"]): r["removed"] for r in results["rows"] if r["method"] == "onnxprune default"}
    off = [r for r in tp if abs(r["removed"] - goal[r["model"], r["fraction"]]) > cfg["tolerance"]]
    if tp:
        page.para("Torch-Pruning ratios found: " + ", ".join(
            f"{r['model']} F={r['fraction']} r{r['round_to']}: {r['tp_ratio']:.4f}" for r in tp) + ".")
    if off:
        page.para("Not matchable within the tolerance (one ratio for every layer, each layer's count rounded to "
                  "round_to: the MACs removed moves in steps as the ratio crosses a rounding boundary, so the "
                  "closest step is used): " + ", ".join(
                      f"{r['model']} F={r['fraction']} r{r['round_to']} {r['removed']:.1%} vs "
                      f"{goal[r['model'], r['fraction']]:.1%}" for r in off) + ".")
    return page.text()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="--flops 0.5 only, 15 rounds")
    ap.add_argument("--models", help="comma-separated subset of " + ",".join(Config().models))
    ap.add_argument("--fractions", help="comma-separated FLOPs targets (default: the configuration's)")
    ap.add_argument("--rounds", type=int, help="interleaved latency rounds (default: the configuration's)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "TP_LATENCY.md", help="Markdown output (JSON beside it)")
    ap.add_argument("--no-write", action="store_true", help="print the Markdown only")
    ap.add_argument("--from-json", type=Path, help="re-render the Markdown from a JSON this script wrote (no runs)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else Config()
    if args.models:
        cfg = Config(**{**cfg.__dict__, "models": tuple(args.models.split(","))})
    if args.fractions:
        cfg = Config(**{**cfg.__dict__, "fractions": tuple(float(x) for x in args.fractions.split(","))})
    if args.rounds:
        cfg = Config(**{**cfg.__dict__, "rounds": args.rounds})
    render_or_run(args, "tp_latency.py", lambda: run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True)), markdown)


if __name__ == "__main__":
    main()
