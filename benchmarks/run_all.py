"""Run the benchmark scripts and write docs/BENCHMARKS.md: an index of their headline numbers.

    python benchmarks/run_all.py                          # the benchmark suite (make bench) -> docs/
    python benchmarks/run_all.py --fresh                  # the same, remeasuring the logged accuracy rows
    python benchmarks/run_all.py --only latency,tool_cost # just these; the other sections are kept
    python benchmarks/run_all.py --only coverage          # the architecture corpus (not in the default suite)
    python benchmarks/run_all.py --quick                  # reduced configurations -> /tmp/onnxprune-bench-quick/
    python benchmarks/run_all.py --render                 # rewrite the index from the last records, run nothing
    python benchmarks/run_all.py --list                   # the scripts and their commands

Timing scripts (latency, tool cost, calibration, ResNet-50 cost) always measure anew. The two
accuracy scripts keep every measured row in a JSON log beside their page and are run with
``--resume``: they measure only the rows their log lacks (an interrupted ``make bench`` goes on
where it stopped) and their pages and this index say how many rows were measured in the run and
when the others were; ``--fresh`` remeasures them all (about 3 hours on 2 cores for the two).

Each script runs in its own subprocess, one after the other (they time things: never two at once).
Per script the index gives a short summary read from the script's JSON record (never from its
Markdown), the exact command, its run time, the machine, the date and the load average
before/after, and links to the detailed doc. The run records are kept in
BENCHMARKS.json beside the index, so ``--only`` re-runs some sections and keeps the others.

``--quick`` passes ``--quick`` to the scripts that have it and gives the others a reduced
configuration; so that a smoke test never overwrites the real tables, it writes everything under
``--docs`` (default /tmp/onnxprune-bench-quick) instead of docs/ (coverage.py has no output option:
in quick mode it runs with ``--no-write``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import ROOT, machine, run_child  # noqa: E402
from render import Col, Page  # noqa: E402

QUICK_DOCS = Path(tempfile.gettempdir()) / "onnxprune-bench-quick"


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    what: str
    doc: str | None  # the detailed doc the script writes (file name in the docs dir)
    summary: Callable[[dict, Path, Path], list[str]]  # (record, docs dir, scratch dir) -> bullet lines
    # (docs dir, scratch dir) -> arguments; None: ``--out DOC`` (full), ``--quick --out DOC`` (quick)
    full: Callable[[Path, Path], list[str]] | None = None
    quick: Callable[[Path, Path], list[str]] | None = None
    hand_doc: str | None = None  # a hand-written doc in docs/ about the same measurements
    default: bool = True  # part of the default suite (make bench)
    resumable: bool = False  # takes --resume (measures only the rows its log lacks)

    @property
    def script(self) -> Path:
        return HERE / f"{self.name}.py"

    def argv(self, quick: bool, fresh: bool, docs: Path, scratch: Path) -> list[str]:
        """The script's arguments, paths relative to the repository (scripts run from ROOT)."""
        make = self.quick if quick else self.full
        args = make(docs, scratch) if make else [*(["--quick"] if quick else []), "--out", str(docs / self.doc)]
        args = [_rel(a) for a in args]
        return ["--resume", *args] if self.resumable and not quick and not fresh else args


# --------------------------------------------------------------------------- summaries


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sum_accuracy(rec: dict, docs: Path, scratch: Path) -> list[str]:
    log = _read_json(docs / "ACCURACY.json")
    if not isinstance(log, list):
        return []
    out = []
    done = re.search(r"^(\d+ entries measured.*)$", rec.get("stdout", ""), re.M)
    if done:
        dates = sorted({e["date"] for e in log if e.get("date")})
        out.append(f"This run: {done.group(1)} (entries measured on {', '.join(dates)}).")
    base = [e for e in log if e.get("table") == "unpruned"]
    if base:
        out.append("Unpruned top-1: " + ", ".join(f"{e['model']} {e['top1']:.4f}" for e in base) + ".")
    rec_rows = [r for r in log if r.get("table") == "reconstruction" and r.get("top1") is not None]
    for model in dict.fromkeys(r["model"] for r in rec_rows):
        parts = []
        for f in sorted({r["flops"] for r in rec_rows if r["model"] == model}):
            def best(mode):
                xs = [r for r in rec_rows if r["model"] == model and r["flops"] == f
                      and r.get("variant", r.get("reconstruct")) == mode]
                return max(xs, key=lambda r: r["top1"]) if xs else None
            ldrf, none = best("ldrf"), best("none")
            if ldrf and none:
                parts.append(f"{f:.0%} FLOPs: {ldrf['top1']:.3f} with ldrf ({ldrf['criterion']}) vs "
                             f"{none['top1']:.3f} without reconstruction")
        if parts:
            out.append(f"{model}, best criterion, no fine-tuning: " + "; ".join(parts) + ".")
    return out


LABEL_NAMES = {"labels": "labels + distillation", "distill": "distillation only"}  # as finetune.py names them


def sum_finetune(rec: dict, docs: Path, scratch: Path) -> list[str]:
    res = _read_json(docs / "FINETUNE.json")
    if not isinstance(res, dict):
        return []
    epochs = res.get("settings", {}).get("epochs", 3)
    rows = [r for r in res.get("log", []) if r.get("event") == "row" and not r.get("carried")]
    reused = [r for r in rows if r.get("reused")]
    run = f"{res['seconds'] / 60:.1f} min" + ("" if res.get("complete") else " (not complete)")
    if reused:
        run += (f"; {len(rows) - len(reused)} rows measured in this run, {len(reused)} reused from the previous "
                f"run's log (measured {', '.join(sorted({r['date'] for r in reused}))}; `--resume`)")
    work = sum(r.get("prune_seconds", 0) + r.get("seconds", 0) for r in rows)
    out = [f"This run: {run}; measuring every row from scratch takes about {work / 60:.0f} min of pruning and "
           "fine-tuning."]
    method = lambda r: r["method"] + (f" (same model as {r['same_model_as']})" if r.get("same_model_as") else "")  # noqa: E731
    for model, target in dict.fromkeys((r["model"], r["flops_target"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["flops_target"]) == (model, target)]
        best = max(rs, key=lambda r: r["top1_before"])
        parts = [f"before fine-tuning best {method(best)} {best['top1_before']:.2%}"]
        tuned = [r for r in rs if epochs > 1 and r.get("top1_by_epoch")]
        if tuned:
            parts.append(f"after {epochs} epochs: " + ", ".join(
                f"{method(r)} ({LABEL_NAMES.get(r['finetune'], 'none')}) {r['top1_by_epoch'][epochs]:.2%}"
                for r in tuned))
        out.append(f"{model} at {target:.0%} FLOPs: " + "; ".join(parts) + ".")
    return out


def sum_calibration(rec: dict, docs: Path, scratch: Path) -> list[str]:
    res = _read_json(docs / "CALIBRATION.json") if not rec.get("quick") else _read_json(scratch / "calibration.json")
    if not isinstance(res, dict) or "hrank" not in res:
        return []
    h = res["hrank"]
    text = f"HRank calibration pass over {h['images']} ResNet-50 images: {h['wall_s']:.1f} s, peak {h['peak_rss_gb']:.2f} GB"
    if "plain" in res:
        p = res["plain"]
        text += f"; plain onnxruntime inference {p['wall_s']:.1f} s (x{h['wall_s'] / p['wall_s']:.1f})"
    for name in ("hrank-early", "reference-code"):
        if name in res:
            text += f"; {name} {res[name]['wall_s']:.1f} s" + (" (extrapolated)" if res[name].get("extrapolated") else "")
    return [text + "."]


def sum_resnet50_cost(rec: dict, docs: Path, scratch: Path) -> list[str]:
    res = _read_json(docs / "RESNET50_COST.json")
    if not isinstance(res, dict):
        return []
    out = []
    recon = res["reconstruction"]["rows"]
    if recon:
        out.append("compress: " + "; ".join(f"{r[0]} {r[1]} s" for r in recon) + ".")
    sens = res["sensitivity"]
    whole = next((r for r in sens["rows"] if str(r[0]).startswith("whole analysis")), None)
    if whole:
        out.append(f"{whole[0]}: " + ", ".join(f"{h} {v} s" for h, v in zip(sens["headers"][1:], whole[1:])
                                              if v not in ("", None)) + ".")
    return out


def sum_coverage(rec: dict, docs: Path, scratch: Path) -> list[str]:
    rows = _read_json(scratch / "coverage.json") if rec.get("quick") else _read_json(ROOT / "docs" / "COVERAGE.json")
    if not isinstance(rows, list):
        return []
    if not rec.get("quick"):
        import coverage

        return [coverage.counts(rows)]
    names = ", ".join(str(r.get("name")) for r in rows)
    return [f"Quick run (not written to docs/COVERAGE.md): {len(rows)} model(s) analysed ({names}); "
            f"crashes: {sum('crash' in r for r in rows)}."]


def sum_speedup(rec: dict, docs: Path, scratch: Path) -> list[str]:  # --- issue 16
    res = _read_json(docs / "SPEEDUP.json")
    if not isinstance(res, dict):
        return []
    import speedup

    return speedup.summary_lines(res)


def sum_latency(rec: dict, docs: Path, scratch: Path) -> list[str]:
    res = _read_json(docs / "LATENCY.json")
    if not isinstance(res, dict):
        return []
    import latency

    summ = latency.efficiency_summary(res)
    out = []
    for (threads, batch) in dict.fromkeys((t, b) for t, b, _ in summ):
        cells = [(r, v) for (t, b, r), v in summ.items() if (t, b) == (threads, batch)]
        out.append(f"{threads} thread(s), batch {batch}: measured / FLOPs-predicted speed-up (geomean) "
                   + ", ".join(f"{v['efficiency']:.0%} with round_to {r}" for r, v in cells)
                   + "; slower than the original: " + ", ".join(f"{v['slower']}/{v['n']} (r{r})" for r, v in cells) + ".")
    findings = latency.findings(res)
    rec_line = next((x for x in findings if x.startswith("**Recommendation")), None)
    if rec_line:
        out.append(rec_line.split(". ")[0] + ".")
    return out


def sum_tool_cost(rec: dict, docs: Path, scratch: Path) -> list[str]:
    res = _read_json(docs / "TOOL_COST.json")
    if not isinstance(res, dict):
        return []
    import tool_cost

    est = tool_cost.heavy_estimates(res.get("heavy", []), res["config"]["images"])
    lines = [x for x in tool_cost.summary_lines(res.get("main", []), est) if x]
    return [f"ResNet-50 at 224, {res['config']['images']} images: " + lines[0]] if lines else []


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def shortfalls(docs: Path) -> list[str]:
    """Where onnxprune falls short of the peers and of the FLOPs-predicted limit, with the numbers
    read from the pages' logs (so the paragraph follows the data when the benchmarks are rerun)."""
    out = []
    ft = _read_json(docs / "FINETUNE.json")
    rows = [r for r in (ft or {}).get("log", []) if r.get("event") == "row"]
    cases, ahead_before = [], []
    for key in dict.fromkeys((r["model"], r["flops_target"]) for r in rows):
        rs = [r for r in rows if (r["model"], r["flops_target"]) == key]
        ours = [r for r in rs if r["method"].startswith("onnxprune") and r.get("finetune") == "labels"
                and r.get("top1_by_epoch")]
        theirs = [r for r in rs if r["method"].startswith("tp-") and r.get("finetune") == "labels" and r.get("top1_by_epoch")]
        if ours and theirs:
            o = max(ours, key=lambda r: r["top1_by_epoch"][-1])
            t = max(theirs, key=lambda r: r["top1_by_epoch"][-1])
            cases.append((key, o, t))
        ob = [r["top1_before"] for r in rs if r["method"] == "onnxprune"]
        tb = [r["top1_before"] for r in rs if r["method"].startswith("tp-")]
        if ob and tb:
            ahead_before.append(max(ob) - max(tb))
    if cases:
        gaps = [o["top1_by_epoch"][-1] - t["top1_by_epoch"][-1] for _, o, t in cases]
        behind = [g for g in gaps if g < 0]
        first = [o["top1_by_epoch"][1] - t["top1_by_epoch"][1] for _, o, t in cases]
        text = (f"**Against Torch-Pruning after fine-tuning.** Best onnxprune row vs best Torch-Pruning row, same "
                f"target, same fine-tuning loop (labels + distillation, 3 epochs), {len(cases)} model/target cases: "
                f"onnxprune is behind in {len(behind)}")
        if behind:
            text += f" (by {_pct(-max(behind))}-{_pct(-min(behind))} points)"
        text += (f" and ahead or level in {len(cases) - len(behind)}; after 1 epoch the difference is "
                 f"{_pct(min(first))} to {_pct(max(first))} points.")
        if ahead_before:
            text += (f" Before fine-tuning onnxprune leads by {_pct(min(ahead_before))}-{_pct(max(ahead_before))} "
                     "points.")
        vs_random = []
        for (model, target), o, _ in cases:
            rnd = next((r for r in rows if r["method"] == "random" and r.get("finetune") == "labels"
                        and (r["model"], r["flops_target"]) == (model, target) and r.get("top1_by_epoch")), None)
            if rnd:
                vs_random.append(o["top1_by_epoch"][-1] - rnd["top1_by_epoch"][-1])
        if vs_random:
            text += (f" The random-pruning control, fine-tuned the same way, ends {_pct(min(vs_random))} to "
                     f"{_pct(max(vs_random))} points from the best onnxprune row ({len(vs_random)} cases; positive = "
                     "onnxprune higher): with 3 full epochs on 60,000 labelled images, which channels are kept "
                     "matters little at these targets, as found for fine-tuned pruning in general (Liu et al., "
                     "\"Rethinking the value of network pruning\").")
        text += (" Why it does not keep that lead: reconstruction fits the kept channels to reproduce the original "
                 "feature maps without labels, a head start that one epoch of training also reaches; the channels "
                 "onnxprune keeps are chosen for accuracy without training, not for how well they train.")
        for r in rows:
            if r["method"] == "onnxprune-norecon" and r.get("finetune") == "labels" and r.get("top1_by_epoch"):
                ldrf = next((x for x in rows if x["method"] == "onnxprune" and x.get("finetune") == "labels"
                             and (x["model"], x["flops_target"]) == (r["model"], r["flops_target"])
                             and x.get("top1_by_epoch")), None)
                if ldrf:
                    text += (f" {r['model']} at {r['flops_target']:.0%}: the same channels without reconstruction "
                             f"end at {_pct(r['top1_by_epoch'][-1])}% against {_pct(ldrf['top1_by_epoch'][-1])}% "
                             "with ldrf, so the fitted weights are not necessarily the better start for training.")
        text += (" Where onnxprune leads is every model that cannot be fine-tuned (no labels, no training "
                 "pipeline), the case it is built for.")
        out.append(text)
    lat = _read_json(docs / "LATENCY.json")
    if isinstance(lat, dict):
        import latency

        summ = latency.efficiency_summary(lat)
        one = {r: v for (t, b, r), v in summ.items() if t == 1}
        if one:
            parts, eff = [], {}
            for r in sorted({r for r in one}):
                vs = [v for (t, b, rr), v in summ.items() if t == 1 and rr == r]
                lo, hi = min(v["efficiency"] for v in vs), max(v["efficiency"] for v in vs)
                eff[r] = f"{lo:.0%}" if f"{lo:.0%}" == f"{hi:.0%}" else f"{lo:.0%}-{hi:.0%}"
                slower = sum(v["slower"] for v in vs)
                n = sum(v["n"] for v in vs)
                parts.append(f"{eff[r]} with round_to {r} ({slower} of {n} slower than the original)")
            out.append("**Against the FLOPs-predicted speed-up** (onnxruntime CPU, 1 thread, batch 1 and 16, geometric "
                       "mean of measured / predicted): " + "; ".join(parts) + ". The shortfall comes from the kernels, "
                       "not the arithmetic: onnxruntime runs a convolution on its blocked NCHWc kernels only when the "
                       "channel counts suit the block (16 on this AVX-512 CPU); other counts fall back to im2col + GEMM "
                       "with layout reorders around them. The default `--round-to auto` (multiples of 8) gets "
                       f"{eff.get(8, '?')} of the predicted speed-up, multiples of 16 {eff.get(16, '?')} on this CPU; "
                       "the best multiple depends on the CPU's vector width, so 16 stays an option rather than the "
                       "default, and no allocation against measured latency (`--latency`) exists yet. The rest of the "
                       "gap is per-node work that MACs do not count (dispatch, elementwise ops, pooling), largest on "
                       "the smallest model (VGG-11, 9 MMACs per image).")
    tc = _read_json(docs / "TOOL_COST.json")
    if isinstance(tc, dict):
        import tool_cost

        est = {e["stage"]: e["seconds"] for e in tool_cost.heavy_estimates(tc.get("heavy", []), tc["config"]["images"])}
        calib = next((r["wall_s"] for r in tc.get("main", []) if r["stage"] == "calibration"), None)
        if est and calib:
            out.append("**Tool cost.** On ResNet-50 with " + str(tc["config"]["images"]) + " images on 2 cores, "
                       + ", ".join(f"{stage} takes about {sec / 60:.0f} min ({sec / calib:.0f}x the calibration pass)"
                                   for stage, sec in est.items())
                       + ": LDRF refits layer by layer (one pass over the data per wave of layers, each running "
                       "the layers since the previous wave from stored activations) and the sensitivity analysis "
                       "evaluates every group at every ratio. Torch-Pruning's importances need "
                       "no data pass at all; onnxprune's default with data (hrank calibration + ldrf) takes about "
                       f"{(calib + est.get('reconstruction-ldrf', 0)) / 60:.0f} min on ResNet-50 here, and the "
                       "sensitivity allocation is the one stage that does not fit an interactive run.")
    return out


BENCHES = [
    Bench("accuracy", "Accuracy before fine-tuning",
          "Top-1 of the bundled Fashion-MNIST models pruned at 30/50/70% FLOPs by criterion, allocation and "
          "reconstruction, full 10k test split, no fine-tuning.",
          "ACCURACY.md",
          quick=lambda d, s: ["--tables", "reconstruction", "--models", "resnet20", "--calib", "256",
                              "--out", str(d / "ACCURACY.md")],
          summary=sum_accuracy, resumable=True),
    Bench("finetune", "Fine-tuning: onnxprune vs Torch-Pruning",
          "Pruned then fine-tuned with the same loop: onnxprune, Torch-Pruning importances and a random control, "
          "before and after 1 and 3 epochs.",
          "FINETUNE.md",
          quick=lambda d, s: ["--models", "vgg11", "--fractions", "0.5", "--methods", "onnxprune,random",
                              "--finetune", "onnxprune:labels", "--finetune-fractions", "0.5", "--epochs", "1",
                              "--train-images", "2000", "--calib", "256", "--out", str(d / "FINETUNE.md")],
          summary=sum_finetune, resumable=True),
    Bench("latency", "Real latency speed-up vs FLOPs-predicted",
          "onnxruntime CPU latency of ResNet-50, MobileNetV2 and the bundled models pruned at 30/50/70% FLOPs "
          "with round_to 1/8/16, original and pruned timed interleaved; why the speed-up falls short.",
          "LATENCY.md",
          summary=sum_latency),
    Bench("speedup", "Pruning to a measured speed-up (--speedup)",  # --- issue 16
          "compress --speedup asked vs measured at 1 and 2 threads; --flops with the probed alignment vs "
          "multiples of 8; latency model cost and held-out error.",
          "SPEEDUP.md",
          summary=sum_speedup),
    Bench("tool_cost", "Tool cost per stage",
          "Wall time and peak memory of every stage on ResNet-50 at 224 with 256 images, and growth with model "
          "size (ResNet-18/50/101) and with the number of calibration images.",
          "TOOL_COST.md",
          summary=sum_tool_cost),
    Bench("calibration", "HRank calibration cost",
          "The streamed HRank calibration pass on ResNet-50 against plain inference and HRank's reference code; "
          "rank-kernel timings.",
          None,
          full=lambda d, s: ["--json", str(d / "CALIBRATION.json")],
          quick=lambda d, s: ["--images", "32", "--only", "plain", "hrank", "--json", str(s / "calibration.json")],
          summary=sum_calibration, hand_doc="CALIBRATION.md"),
    Bench("resnet50_cost", "Reconstruction and sensitivity-analysis cost (ResNet-50)",
          "compress with no / local / ldrf reconstruction; one sensitivity evaluation three ways (rewrite + new "
          "session, masked whole graph, masked changed part only).",
          "RESNET50_COST.md",
          summary=sum_resnet50_cost),
    # real-model accuracy (issue 17): third-party models from PyPI wheels, rendered data; resumable log
    Bench("real_accuracy", "Accuracy on real third-party models",
          "OCR and document models shipped in PyPI wheels (nobody here trained them) and the bundled models, "
          "pruned at 30/50% MACs by each method variant through the compress CLI, on labelled data the script "
          "renders; no fine-tuning, unlabelled calibration samples.",
          "REAL_ACCURACY.md",
          summary=lambda rec, d, s: __import__("real_accuracy").summary_lines(_read_json(d / "REAL_ACCURACY.json")),
          resumable=True),
    Bench("coverage", "Architecture coverage",
          "Dependency analysis and compress at 30% FLOPs over a corpus of exported CNNs (torchvision, "
          "segmentation, timm, wheels).",
          "COVERAGE.md",
          full=lambda d, s: ["--json", str(s / "coverage.json")],
          quick=lambda d, s: ["--only", "resnet18", "--no-write", "--json", str(s / "coverage.json")],
          summary=sum_coverage, default=False),
]
BY_NAME = {b.name: b for b in BENCHES}


# --------------------------------------------------------------------------- running


def run_one(bench: Bench, quick: bool, docs: Path, scratch: Path, timeout: float | None, log,
            fresh: bool = False) -> dict:
    args = bench.argv(quick, fresh, docs, scratch)
    argv = [sys.executable, str(bench.script), *args]
    shown = " ".join(["python", str(bench.script.relative_to(ROOT)), *args])
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load0 = os.getloadavg()
    log(f"## {bench.name}: {shown}")
    done = run_child(argv[1:], cwd=ROOT, timeout=timeout)
    rc, stdout, stderr, seconds = done.returncode, done.stdout, done.stderr, done.seconds
    if rc == "timeout" and bench.resumable:  # a resumable script keeps its rows: the next run goes on
        rc = "stopped"
    log(f"## {bench.name}: exit {rc} after {seconds / 60:.1f} min")
    rec = {"name": bench.name, "command": shown, "quick": quick, "returncode": rc, "seconds": seconds,
           "started": started, "machine": machine(), "load": [load0[0], os.getloadavg()[0]],
           "stdout": stdout[-20000:], "stderr_tail": "\n".join(stderr.strip().splitlines()[-5:])}
    try:
        rec["summary"] = bench.summary(rec, docs, scratch) if rc in (0, "stopped") else []
    except Exception as exc:  # a summary that cannot read the output must not lose the run record
        rec["summary"] = [f"(summary not available: {type(exc).__name__}: {exc})"]
    return rec


def _rel(arg: str) -> str:
    try:
        return str(Path(arg).resolve().relative_to(ROOT))
    except ValueError:
        return arg


# --------------------------------------------------------------------------- index


def _status(r: dict) -> str:
    status = {0: "ok", "stopped": "partial: stopped at the time limit, rerun to resume"}.get(
        r["returncode"], f"FAILED ({r['returncode']})")
    return status + (" (quick)" if r["quick"] else "")


INDEX_COLS = [
    Col("section", lambda x: x["bench"].name if x["rec"] is None else f"[{x['bench'].title}](#{_anchor(x['bench'].title)})"),
    Col("status", lambda x: "not run" if x["rec"] is None else _status(x["rec"])),
    Col("run time", lambda x: x["rec"] and f"{x['rec']['seconds'] / 60:.1f} min"),
    Col("date", lambda x: x["rec"] and x["rec"]["started"][:10]),
]


def markdown(records: dict, docs: Path, command: str) -> str:
    page = Page("Benchmarks")
    page.para(f"Regenerated by `{command}` (`make bench` runs `python benchmarks/run_all.py`). Every section gives "
              "the headline numbers read from its script's output, the exact command, its run time, the machine and "
              "date, the load average before -> after (2 cores; other jobs on the machine raise it), and "
              "the detailed tables.")
    page.table(INDEX_COLS, [{"bench": b, "rec": records.get(b.name)} for b in BENCHES])
    total = sum(r["seconds"] for r in records.values())
    page.para(f"Total run time of the sections listed: {total / 60:.0f} min. The accuracy sections resume "
              "from their logs (see each section for what was measured in this run); measuring them from scratch "
              "(`--fresh`) adds about 3 hours on 2 cores.")
    falls = shortfalls(docs)
    if falls:
        page.section("Where onnxprune falls short", *falls)
    for b in BENCHES:
        r = records.get(b.name)
        page.section(b.title, b.what)
        if r is None:
            if not b.default:
                text = f"Not part of the default suite: `python benchmarks/run_all.py --only {b.name}`."
                if b.doc and (docs / b.doc).exists():
                    text += f"\nLast results: [{b.doc}]({b.doc}) (with the command that produced them)."
                page.para(text)
                continue
            page.para(f"Not run yet: `python benchmarks/{b.name}.py`." if b.script.exists()
                      else f"`benchmarks/{b.name}.py` is not present.")
            continue
        if r["returncode"] == "stopped":
            page.para("**Stopped at the time limit** (`--until`/`--timeout`): the rows below are those measured "
                      "so far; the same command measures the rest.")
        elif r["returncode"] != 0:
            last = r["stderr_tail"].splitlines()[-1] if r["stderr_tail"] else ""
            page.para(f"**The last run failed** (exit {r['returncode']}): `{last}`")
        if r.get("summary"):
            page.para("\n".join(s if s.startswith("|") or not s else f"* {s}" if not s.endswith(":") else s
                                 for s in r["summary"]))
        facts = [f"Command: `{r['command']}`  ",
                 f"Run time: {r['seconds'] / 60:.1f} min; started {r['started']}; load average "
                 f"{r['load'][0]:.1f} -> {r['load'][1]:.1f}  ",
                 f"Machine: {r['machine']}  "]
        links = []
        if b.doc and (docs / b.doc).exists():
            links.append(f"[{b.doc}]({b.doc})")
        if b.name == "coverage" and r["quick"]:
            target = _link(ROOT / "docs" / "COVERAGE.md", docs)
            links = [f"[COVERAGE.md]({target}) (full corpus; not regenerated by --quick)"]
        if b.hand_doc and (ROOT / "docs" / b.hand_doc).exists():
            target = _link(ROOT / "docs" / b.hand_doc, docs)
            links.append(f"[{b.hand_doc}]({target}) (written by hand from an earlier run)")
        if links:
            facts.append("Details: " + ", ".join(links))
        page.para("\n".join(facts))
    return page.text()


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def _link(target: Path, docs: Path) -> str:
    return os.path.relpath(target, docs.resolve())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="reduced configurations, written under --docs")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(BY_NAME))
    ap.add_argument("--docs", type=Path, help=f"where the docs go (default docs/, or {QUICK_DOCS} with --quick)")
    ap.add_argument("--timeout", type=float, help="seconds per script (default: none)")
    ap.add_argument("--until", help="HH:MM (local time): stop the script running then, run no further one; "
                                    "resumable scripts keep their rows")
    ap.add_argument("--list", action="store_true", help="print the scripts and their commands, run nothing")
    ap.add_argument("--fresh", action="store_true", help="remeasure the accuracy scripts' logged rows instead of resuming")
    ap.add_argument("--render", action="store_true", help="rewrite the index from BENCHMARKS.json, run nothing")
    args = ap.parse_args()
    names = [b.name for b in sorted(BENCHES, key=lambda b: b.resumable) if b.default]  # timing first
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(BY_NAME)}")
    docs = (args.docs or (QUICK_DOCS if args.quick else ROOT / "docs")).resolve()
    if args.list:
        for n in names:
            b = BY_NAME[n]
            argv = b.argv(args.quick, args.fresh, docs, Path("SCRATCH"))
            print(f"{n:14s} python benchmarks/{n}.py {' '.join(argv)}"
                  + ("" if b.script.exists() else "   (script not present)"))
        return
    docs.mkdir(parents=True, exist_ok=True)
    state_path = docs / "BENCHMARKS.json"
    state = _read_json(state_path) or {}
    records = state["records"] if "records" in state else state  # older files: the records alone
    command = state.get("command", "python benchmarks/run_all.py")
    if args.render:  # summaries read again from the pages (kept where their scratch output is gone)
        for n, rec in records.items():
            if n in BY_NAME and rec["returncode"] in (0, "stopped"):
                try:
                    rec["summary"] = BY_NAME[n].summary(rec, docs, Path(tempfile.mkdtemp())) or rec.get("summary", [])
                except Exception:  # noqa: BLE001  the stored summary stays
                    pass
        state_path.write_text(json.dumps({"command": command, "records": records}, indent=1, default=str))
        (docs / "BENCHMARKS.md").write_text(markdown(records, docs, command) + "\n")
        print(f"wrote {docs / 'BENCHMARKS.md'}")
        return
    command = "python benchmarks/run_all.py" + "".join(f" {a}" for a in sys.argv[1:])
    deadline = None
    if args.until:
        try:
            hour, minute = (int(x) for x in args.until.split(":"))
            now = datetime.datetime.now()
            deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        except ValueError:
            ap.error(f"--until {args.until!r}: give a local time as HH:MM")
        if deadline <= now:
            deadline += datetime.timedelta(days=1)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for n in names:
            b = BY_NAME[n]
            if not b.script.exists():
                log(f"## {n}: benchmarks/{n}.py not present, skipped")
                continue
            timeout = args.timeout
            if deadline is not None:
                left = (deadline - datetime.datetime.now()).total_seconds()
                if left <= 60:
                    log(f"## {n}: not started, the --until time has come")
                    continue
                timeout = left if timeout is None else min(timeout, left)
            records[n] = run_one(b, args.quick, docs, scratch, timeout, log, fresh=args.fresh)
            state_path.write_text(json.dumps({"command": command, "records": records}, indent=1, default=str))
            (docs / "BENCHMARKS.md").write_text(markdown(records, docs, command) + "\n")
    log(f"wrote {docs / 'BENCHMARKS.md'}")
    failed = [n for n in names if n in records and records[n]["returncode"] != 0]
    if failed:
        log(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
