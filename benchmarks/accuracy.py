"""Accuracy of the bundled Fashion-MNIST models after pruning, before any fine-tuning.

Three tables, each on the full 10,000-image test split; calibration and sensitivity data are
1,024 images of the TRAIN split (seeded), so nothing is tuned on the test images:

* criteria        — random, l1, fpgm, bn_scale, apoz, hrank, recon at 30% and 50% FLOPs
                    (uniform allocation, no reconstruction): the scores alone.
* allocation      — uniform vs sensitivity vs global, with hrank and l1, at 30/50/70% FLOPs
                    (no reconstruction).
* reconstruction  — none vs local vs ldrf, with hrank, l1 and recon, at 30/50/70% FLOPs
                    (uniform allocation), with the time compress took.

    python benchmarks/accuracy.py                       # all tables -> docs/ACCURACY.md
    python benchmarks/accuracy.py --tables criteria --models resnet20
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODELS, ROOT, Stopwatch, calibration_set, fmnist, machine, table, top1  # noqa: E402

from onnxprune import Settings, Target, compress  # noqa: E402
from onnxprune.errors import TargetError  # noqa: E402
from onnxprune.pipeline import sensitivity_analysis  # noqa: E402

CRITERIA = ["random", "l1", "fpgm", "bn_scale", "apoz", "hrank", "recon"]


def run(model, settings, calib, **kw):
    with Stopwatch() as sw:
        try:
            result = compress(str(model), settings, data=calib, **kw)
        except TargetError as exc:
            return None, str(exc), sw
    return result, None, sw


def criteria_table(name, model, test, calib, log):
    rows = []
    for fraction in (0.3, 0.5):
        row = [name, f"{fraction:.0%}"]
        for crit in CRITERIA:
            result, err, sw = run(model, Settings(Target("flops", fraction), criterion=crit, reconstruct="none"), calib)
            acc = top1(result.model, test) if result else float("nan")
            log.append({"table": "criteria", "model": name, "flops": fraction, "criterion": crit, "top1": acc,
                        "seconds": sw.seconds, "error": err})
            row.append(acc)
        rows.append(row)
        print(rows[-1], flush=True)
    return rows


def allocation_table(name, model, test, calib, log):
    rows = []
    sens = {}
    for crit in ("hrank", "l1"):
        with Stopwatch() as sw:
            sens[crit], _ = sensitivity_analysis(str(model), calib, crit, eval_images=512)
        log.append({"table": "sensitivity", "model": name, "criterion": crit, "seconds": sw.seconds,
                    "evaluations": sens[crit].evaluations, "metric": sens[crit].metric})
    for fraction in (0.3, 0.5, 0.7):
        for crit in ("hrank", "l1"):
            row = [name, f"{fraction:.0%}", crit]
            for alloc in ("uniform", "sensitivity", "global"):
                settings = Settings(Target("flops", fraction), criterion=crit, allocation=alloc, reconstruct="none")
                result, err, sw = run(model, settings, calib, sensitivity=sens[crit] if alloc == "sensitivity" else None)
                acc = top1(result.model, test) if result else float("nan")
                log.append({"table": "allocation", "model": name, "flops": fraction, "criterion": crit,
                            "allocation": alloc, "top1": acc, "seconds": sw.seconds, "error": err})
                row.append(acc)
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def reconstruction_table(name, model, test, calib, log):
    rows = []
    for fraction in (0.3, 0.5, 0.7):
        for crit in ("hrank", "l1", "recon"):
            row = [name, f"{fraction:.0%}", crit]
            for mode in ("none", "local", "ldrf"):
                result, err, sw = run(model, Settings(Target("flops", fraction), criterion=crit, reconstruct=mode), calib)
                acc = top1(result.model, test) if result else float("nan")
                log.append({"table": "reconstruction", "model": name, "flops": fraction, "criterion": crit,
                            "reconstruct": mode, "top1": acc, "seconds": sw.seconds, "error": err})
                row += [acc, f"{sw.seconds:.1f}"]
            rows.append(row)
            print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="criteria,allocation,reconstruction")
    ap.add_argument("--models", default="resnet20,vgg11")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--out", default=str(ROOT / "docs" / "ACCURACY.md"))
    args = ap.parse_args()
    tables = args.tables.split(",")
    test = fmnist("test")
    calib_all = calibration_set(args.calib)
    calib = {"input": calib_all["input"], "labels": calib_all["labels"]}
    log, sections = [], []
    base_rows = []
    for name in args.models.split(","):
        base_rows.append([name, top1(MODELS[name], test)])
    sections.append("## Unpruned models\n\n" + table(["model", "top-1 (10k test)"], base_rows))
    results = {t: [] for t in tables}
    for name in args.models.split(","):
        model = MODELS[name]
        if "criteria" in tables:
            results["criteria"] += criteria_table(name, model, test, calib, log)
        if "allocation" in tables:
            results["allocation"] += allocation_table(name, model, test, calib, log)
        if "reconstruction" in tables:
            results["reconstruction"] += reconstruction_table(name, model, test, calib, log)
    if "criteria" in tables:
        sections.append("## Criteria (uniform allocation, no reconstruction, no fine-tuning)\n\n" +
                        table(["model", "FLOPs removed", *CRITERIA], results["criteria"]))
    if "allocation" in tables:
        sections.append("## Allocation (no reconstruction, no fine-tuning)\n\nSensitivity curves measured on 512 "
                        "train-split images with labels (metric: accuracy drop).\n\n" +
                        table(["model", "FLOPs removed", "criterion", "uniform", "sensitivity", "global"],
                              results["allocation"]))
    if "reconstruction" in tables:
        sections.append("## Reconstruction (uniform allocation, no fine-tuning)\n\nTime = the whole `compress` "
                        "call (calibration, allocation, rewrite, reconstruction, checks) in seconds.\n\n" +
                        table(["model", "FLOPs removed", "criterion", "none", "s", "local", "s", "ldrf", "s"],
                              results["reconstruction"]))
    text = ("# Accuracy before fine-tuning\n\nTop-1 on the full Fashion-MNIST test split (10,000 images). "
            f"Calibration: {args.calib} train-split images.\n\nCommand: `python benchmarks/accuracy.py "
            f"--tables {args.tables} --models {args.models}`\n\nMachine: {machine()}\n\n" + "\n\n".join(sections) + "\n")
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(log, indent=1))
    print(text)


if __name__ == "__main__":
    main()
