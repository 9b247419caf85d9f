"""Extra cost of reconstruction and of one sensitivity evaluation on ResNet-50 (224x224).

Random-init torchvision ResNet-50 (timing only), random-normal images (seeded).

* compress at 50% FLOPs, l1, reconstruction none vs local (wall time of the whole call);
* one sensitivity evaluation on N images: masked weights fed to one shared session
  (onnxprune's way) vs rewriting the model and building a new session per evaluation.

    python benchmarks/resnet50_cost.py --images 64
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from zoo import export  # noqa: E402

from onnxprune import Settings, Target, analyse, compress, load_model  # noqa: E402
from onnxprune.criteria import score_groups  # noqa: E402
from onnxprune.rewrite import rewrite, session  # noqa: E402
from onnxprune.sensitivity import MaskedEvaluator  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--evals", type=int, default=3)
    args = ap.parse_args()
    path = export("resnet50", Path(tempfile.mkdtemp()))
    rng = np.random.default_rng(0)
    data = {"input": rng.standard_normal((args.images, 3, 224, 224)).astype(np.float32)}
    rows = []
    for mode in ("none", "local"):
        t = time.perf_counter()
        r = compress(str(path), Settings(Target("flops", 0.5), criterion="l1", reconstruct=mode), data=data)
        rows.append((f"compress 50% l1, reconstruct={mode}", time.perf_counter() - t, r.summary["seconds"]))
    analysis = analyse(load_model(str(path)))
    scores = score_groups(analysis, "l1")
    batches = [{"input": data["input"][i : i + 32]} for i in range(0, args.images, 32)]
    ev = MaskedEvaluator(analysis, batches)
    gids = list(scores)[: args.evals]
    keeps = [analysis.keep_vector({g: np.argsort(-scores[g])[: len(scores[g]) // 2]}) for g in gids]
    t = time.perf_counter()
    for k in keeps:
        ev.evaluate(k)
    masked = (time.perf_counter() - t) / len(keeps)
    t = time.perf_counter()
    for k in keeps:
        sess = session(rewrite(analysis, k))
        for b in batches:
            sess.run(None, b)
    rebuilt = (time.perf_counter() - t) / len(keeps)
    groups = len(analysis.prunable_groups)
    print(f"| step | seconds |\n|---|---|")
    for name, sec, stages in rows:
        print(f"| {name} | {sec:.1f} ({', '.join(f'{k} {v:.1f}' for k, v in stages.items())}) |")
    print(f"| one sensitivity evaluation, masked, {args.images} images | {masked:.2f} |")
    print(f"| one sensitivity evaluation, rewrite + new session | {rebuilt:.2f} (x{rebuilt / masked:.2f}) |")
    print(f"| full sensitivity analysis: {groups} groups x 9 ratios (extrapolated) | {groups * 9 * masked:.0f} |")


if __name__ == "__main__":
    main()
