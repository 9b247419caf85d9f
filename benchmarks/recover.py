"""Label-free recovery on the bundled Fashion-MNIST models (issue 18).

Calibration: the first 512 images of models/fmnist_sample.npz (no labels used); evaluation: top-1
of the original, the pruned (default compress: HRank + LDRF) and the recovered model on the other
1,488 labelled images of the sample, with onnxruntime on 1 thread. One JSON line per run.

    python benchmarks/recover.py --models resnet20,vgg11 --flops 0.5,0.7 --modes global,blockwise --time 90
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def top1(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    hits = sum(int((sess.run(None, {name: x[i : i + 500]})[0].argmax(1) == y[i : i + 500]).sum())
               for i in range(0, len(y), 500))
    return hits / len(y)


def main() -> None:
    import torch

    from onnxprune import Settings, Target, compress, recover
    from onnxprune.recovery import kept_channels

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg11")
    ap.add_argument("--flops", default="0.5,0.7")
    ap.add_argument("--modes", default="global")
    ap.add_argument("--time", type=float, help="recovery time budget [default: the library's]")
    ap.add_argument("--epochs", type=int, help="recovery epochs [default: the library's]")
    ap.add_argument("--lr", type=float, help="recovery learning rate [default: the library's]")
    ap.add_argument("--calib", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="-")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sample = np.load(ROOT / "models" / "fmnist_sample.npz")
    x, y = sample["input"], sample["labels"]
    calib, test_x, test_y = {"input": x[: args.calib]}, x[args.calib :], y[args.calib :]
    out = sys.stdout if args.out == "-" else open(args.out, "a")
    for name in args.models.split(","):
        path = ROOT / "models" / f"{name}_fmnist.onnx"
        original = onnx.load(path)
        base = top1(original, test_x, test_y)
        for fraction in (float(f) for f in args.flops.split(",")):
            t = time.perf_counter()
            result = compress(str(path), Settings(target=Target("flops", fraction)), data=calib)
            compress_s = time.perf_counter() - t
            pruned_acc = top1(result.model, test_x, test_y)
            channels = kept_channels(result.analysis, result.allocation.keep)
            for mode in args.modes.split(","):
                t = time.perf_counter()
                overrides = {k: v for k, v in (("time", args.time), ("lr", args.lr), ("epochs", args.epochs)) if v}
                rec = recover(result.model, original, calib, channels=channels, mode=mode, **overrides)
                seconds = time.perf_counter() - t
                r = rec.report
                entry = {"model": name, "flops": fraction, "achieved": result.summary["flops_reduction"], "mode": mode,
                         "original": base, "pruned": pruned_acc, "recovered": top1(rec.model, test_x, test_y),
                         "compress_s": round(compress_s, 1), "recover_s": round(seconds, 1), "steps": r["steps"],
                         "planned_steps": r.get("planned_steps"), "batch_size": r.get("batch_size"),
                         "stopped": r["stopped"], "kept": r["kept"], "heldout_before": r["heldout_before"],
                         "heldout_after": r["heldout_after"], "time_budget": args.time, "lr": rec.report["settings"]["lr"], "threads": args.threads,
                         "test_images": len(test_y)}
                out.write(json.dumps(entry) + "\n")
                out.flush()


if __name__ == "__main__":
    main()
