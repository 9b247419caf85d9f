"""The demo behind `make demo`: compress the bundled models with the real CLI and show the
accuracy before and after pruning, without fine-tuning.

The bundled sample (2,000 labelled Fashion-MNIST test images) is split in two: the first 1,000
images calibrate (HRank scores, LDRF reconstruction), the other 1,000 measure top-1, so no
image is both fitted on and scored on.

    python models/demo.py --out out/
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def onnxprune(*args: str) -> str:
    cmd = [sys.executable, "-m", "onnxprune.cli.main", *map(str, args)]
    print("$ onnxprune " + " ".join(shlex.quote(str(a)) for a in args), flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"demo failed: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="out", help="Folder for the pruned models, plans and data splits.")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    sample = np.load(HERE / "fmnist_sample.npz")
    calib, evaluation = out / "calib.npz", out / "eval.npz"
    np.savez(calib, input=sample["input"][:1000], labels=sample["labels"][:1000])
    np.savez(evaluation, input=sample["input"][1000:], labels=sample["labels"][1000:])

    rows = []
    for name in ("resnet20", "vgg11"):
        model = HERE / f"{name}_fmnist.onnx"
        base = json.loads(onnxprune("evaluate", model, "--data", evaluation, "--json"))["top1"]
        rows.append((name, "original", "-", base, None))
        for flops in (0.3, 0.5):
            for label, extra in (("l1, no data", []), ("data (default)", ["--data", calib])):
                pruned = out / f"{name}_{int(flops * 100)}_{'data' if extra else 'l1'}.onnx"
                summary = json.loads(onnxprune("compress", model, "--flops", flops, "-o", pruned, "--force", "--json",
                                               *extra))
                acc = json.loads(onnxprune("evaluate", pruned, "--data", evaluation, "--json"))["top1"]
                rows.append((name, f"-{summary['flops_reduction']:.1%} MACs", label, acc,
                             sum(summary["seconds"].values())))

    print()
    print(f"{'model':<9} {'pruned':<14} {'method':<14} {'top-1':>7} {'time':>7}")
    for name, pruned, method, acc, seconds in rows:
        print(f"{name:<9} {pruned:<14} {method:<14} {acc:>7.2%} {'' if seconds is None else f'{seconds:6.1f}s':>7}")
    print(f"\ntop-1 on 1,000 held-out sample images, no fine-tuning; pruned models and plans in {out}/")


if __name__ == "__main__":
    main()
