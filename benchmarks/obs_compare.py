"""Channel selection by structured OBS against HRank, and group magnitude against L1, on the
bundled Fashion-MNIST models (issue 17), no fine-tuning.

Data: models/fmnist_sample.npz (2,000 labelled test images): the first 512 calibrate, the
other 1,488 evaluate (top-1), so no evaluated image is seen by the compression.

    python benchmarks/obs_compare.py                       # data-driven table, both models
    python benchmarks/obs_compare.py --data-free           # l1 / group_magnitude / group_l1
    python benchmarks/obs_compare.py --models resnet20 --flops 0.3,0.5 --variants obs+ldrf --json rows.json

The table goes to stdout at the end (progress, one record per run, to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onnxprune import Settings, Target, compress  # noqa: E402
from onnxprune.settings import Limits  # noqa: E402
from render import Col, table  # noqa: E402

MODELS = {"resnet20": ROOT / "models/resnet20_fmnist.onnx", "vgg11": ROOT / "models/vgg11_fmnist.onnx"}
VARIANTS = ("hrank+ldrf", "obs+ldrf", "obs+obs")
DATA_FREE = ("l1", "group_magnitude", "group_l1")
CALIB = 512


def split() -> tuple[dict, dict]:
    d = np.load(ROOT / "models/fmnist_sample.npz")
    return {"input": d["input"][:CALIB]}, {"input": d["input"][CALIB:], "labels": d["labels"][CALIB:]}


def top1(proto, data) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    pred = np.concatenate([sess.run(None, {"input": data["input"][i : i + 500]})[0].argmax(1)
                           for i in range(0, len(data["labels"]), 500)])
    return float((pred == data["labels"]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg11")
    ap.add_argument("--flops", default="0.3,0.5,0.7")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--data-free", action="store_true", help="compare the data-free criteria instead")
    ap.add_argument("--round-to", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the rows as JSON records")
    args = ap.parse_args()
    calib, test = split()
    limits = Limits(round_to=args.round_to)
    rows = []
    for name in args.models.split(","):
        from onnxprune.model.files import read_model

        rows.append({"model": name, "variant": "original", "flops": 0, "top1": top1(read_model(str(MODELS[name])), test)})
        print(rows[-1], file=sys.stderr, flush=True)
        for f in (float(x) for x in args.flops.split(",")):
            variants = DATA_FREE if args.data_free else args.variants.split(",")
            for v in variants:
                crit, _, recon = v.partition("+")
                settings = Settings(Target("flops", f), criterion=crit, reconstruct=recon or None, limits=limits)
                t = time.perf_counter()
                result = compress(str(MODELS[name]), settings, data=None if args.data_free else calib)
                seconds = time.perf_counter() - t
                rows.append({"model": name, "variant": v, "flops": f, "top1": top1(result.model, test), "seconds": seconds})
                print(rows[-1], file=sys.stderr, flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(COLS, rows))


COLS = [Col("model", "model"), Col("variant", "variant"), Col("FLOPs target", "flops", "g"),
        Col("top-1", "top1", ".2%"), Col("compress s", "seconds", ".1f")]


if __name__ == "__main__":
    main()
