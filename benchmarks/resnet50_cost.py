"""Cost of reconstruction and of the sensitivity analysis on ResNet-50 (224x224) -> docs/RESNET50_COST.md.

Random-init torchvision ResNet-50 (timing only), random-normal images (seeded), onnxruntime CPU.

* compress at 50% FLOPs, l1, reconstruction none / local / ldrf on ``--recon-images`` images:
  wall time of the whole call and of each stage;
* the sensitivity analysis on ``--images`` evaluation images (the issue asks for 128): how many
  evaluations, and per evaluation the time of the three ways to run one, measured side by side
  on ``--groups`` groups spread over the depth of the network:
    - rewrite the pruned model and build a new onnxruntime session (the naive way);
    - masked weights fed to one shared session over the whole graph;
    - masked weights fed to a session over only the part of the graph the group changes,
      fed by cached activations (onnxprune's default, ``MaskedEvaluator.focus_on``);
  then the whole analysis extrapolated from the per-group MACs after each group's first
  changed layer (labelled as such), and with local-reconstruction compensation on.

    python benchmarks/resnet50_cost.py                  # ~15 min on 2 cores
    python benchmarks/resnet50_cost.py --quick          # 32 images, 2 groups
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine  # noqa: E402
from render import Page  # noqa: E402
from zoo import export  # noqa: E402

from onnxprune import Settings, Target, analyse, compress, load_model  # noqa: E402
from onnxprune.cost import CostModel  # noqa: E402
from onnxprune.scoring.weights import score_groups  # noqa: E402
from onnxprune.reconstruct import Compensator  # noqa: E402
from onnxprune.rewrite import rewrite  # noqa: E402
from onnxprune.runtime.session import session  # noqa: E402
from onnxprune.allocate.sensitivity import RATIOS, MaskedEvaluator  # noqa: E402
from onnxprune.runtime.submodel import changed_nodes  # noqa: E402

CACHE = Path(os.environ.get("ONNXPRUNE_BENCH_CACHE", Path.home() / ".cache" / "onnxprune" / "bench"))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


WHOLE_PREFIX = "ldrf, every pass from the inputs"  # LDRF without the stored frontier (before it existed)


def compress_rows(path: Path, images: np.ndarray, modes=("none", "local", "ldrf", WHOLE_PREFIX)) -> list[list]:
    import functools
    from unittest import mock

    import onnxprune.pipeline as pipeline

    rows = []
    for mode in modes:
        whole = mode == WHOLE_PREFIX
        with mock.patch.object(pipeline, "reconstruct", functools.partial(pipeline.reconstruct, frontier=not whole)):
            settings = Settings(Target("flops", 0.5), criterion="l1", reconstruct="ldrf" if whole else mode)
            seconds, r = timed(lambda: compress(str(path), settings, data={"input": images}))
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r.summary["seconds"].items())
        rows.append([f"compress 50% l1, reconstruct {mode}, {len(images)} images", f"{seconds:.1f}", stages])
        print(rows[-1], flush=True)
    return rows


def suffix_share(analysis, cost: CostModel, ev: MaskedEvaluator, keep: np.ndarray) -> float:
    """Share of the model's MACs in the nodes a candidate's fed weights can change."""
    changed = changed_nodes(ev.proto.graph, set(ev.masked_weights(keep, compensate=False)))
    per_node = cost.per_node(analysis.full_keep())
    total = sum(c.macs for c in per_node.values())
    return sum(c.macs for i, c in per_node.items() if i in changed) / total


def sensitivity_rows(path: Path, images: np.ndarray, n_groups: int, calib: np.ndarray) -> list[list]:
    analysis = analyse(load_model(str(path)))
    cost = CostModel(analysis)
    scores = score_groups(analysis, "l1")
    batches = [{"input": images[i : i + 32]} for i in range(0, len(images), 32)]
    setup, ev = timed(lambda: MaskedEvaluator(analysis, batches))
    gids = list(scores)
    evaluations = len(gids) * len(RATIOS)
    half = {g: analysis.keep_vector({g: np.sort(np.argsort(-scores[g])[: len(scores[g]) // 2])}) for g in gids}
    shares = {g: suffix_share(analysis, cost, ev, half[g]) for g in gids}
    sample = [gids[int(i)] for i in np.linspace(0, len(gids) - 1, n_groups).round()]
    rows, measured = [], []
    for g in sample:
        keep = half[g]
        t_whole, _ = timed(lambda: ev.evaluate(keep))
        t_focus, ok = timed(lambda: ev.focus_on([keep]))
        t_suffix, _ = timed(lambda: ev.evaluate(keep))
        ev.unfocus()

        def rebuild():
            sess = session(rewrite(analysis, keep))
            for b in batches:
                sess.run(None, b)

        t_rebuild, _ = timed(rebuild)
        measured.append((g, t_whole, t_focus, t_suffix, t_rebuild))
        rows.append([f"group {g} ({analysis.groups[g].name[:40]}), changes {shares[g]:.0%} of MACs",
                     f"{t_rebuild:.2f}", f"{t_whole:.2f}", f"{t_suffix:.2f} (+{t_focus:.2f} once)" if ok else "n/a"])
        print(rows[-1], flush=True)
    # Extrapolation: an evaluation costs ~ whole-graph time x the MAC share it runs; the prefix
    # (the rest) runs once per group.
    t_whole = float(np.median([m[1] for m in measured]))
    t_rebuild = float(np.median([m[4] for m in measured]))
    # per group once: the prefix run ((1 - share) of a whole evaluation) plus building the two
    # sessions (measured: focus time minus its prefix share)
    overhead = float(np.median([max(m[2] - (1 - shares[m[0]]) * m[1], 0.0) for m in measured]))
    restricted = sum(overhead + (1 - shares[g]) * t_whole + len(RATIOS) * shares[g] * t_whole for g in gids)
    check = [(m[2] + len(RATIOS) * m[3]) / (overhead + (1 - shares[m[0]]) * t_whole + len(RATIOS) * shares[m[0]] * t_whole)
             for m in measured]
    t_comp, comp = timed(lambda: Compensator(analysis, [{"input": calib[i : i + 32]} for i in range(0, len(calib), 32)]))
    t_fit, _ = timed(lambda: comp.weights(half[sample[len(sample) // 2]]))
    summary = [
        ["evaluator set-up (one session, reference outputs)", f"{setup:.1f}", "", ""],
        [f"whole analysis, EXTRAPOLATED: {len(gids)} groups x {len(RATIOS)} ratios = {evaluations} evaluations",
         f"{evaluations * t_rebuild:.0f}", f"{evaluations * t_whole:.0f}", f"{restricted:.0f}"],
        ["speed-up over rebuilding per evaluation", "1.00", f"{t_rebuild / t_whole:.2f}",
         f"{evaluations * t_rebuild / restricted:.2f}"],
        [f"(per group once: {overhead:.1f} s of session building; extrapolation check on the measured groups: "
         f"measured / predicted restricted time {min(check):.2f}-{max(check):.2f})", "", "", ""],
        [f"compensation (--reconstruct local curves): moments on {len(calib)} images once", f"{t_comp:.1f}", "", ""],
        ["compensation: fits of one candidate (added to each evaluation)", f"{t_fit:.2f}", "", ""],
    ]
    return rows + summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=128, help="sensitivity evaluation images")
    ap.add_argument("--recon-images", type=int, default=64, help="calibration images of the compress rows")
    ap.add_argument("--groups", type=int, default=4, help="groups measured side by side")
    ap.add_argument("--quick", action="store_true", help="32 images, 2 groups, no ldrf row")
    ap.add_argument("--out", default=str(ROOT / "docs" / "RESNET50_COST.md"))
    ap.add_argument("--render", action="store_true", help="rewrite the page from the JSON beside --out, run nothing")
    args = ap.parse_args()
    if args.render:
        Path(args.out).write_text(markdown(json.loads(Path(args.out).with_suffix(".json").read_text())))
        return
    if args.quick:
        args.images, args.recon_images, args.groups = 32, 16, 2
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "resnet50_224.onnx"
    if not path.exists():
        export("resnet50", CACHE)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((max(args.images, args.recon_images), 3, 224, 224)).astype(np.float32)
    start, load0 = time.perf_counter(), os.getloadavg()[0]
    recon = compress_rows(path, images[: args.recon_images], ("none", "local") if args.quick else
                          ("none", "local", "ldrf", WHOLE_PREFIX))
    sens = sensitivity_rows(path, images[: args.images], args.groups, images[: args.recon_images])
    load1 = os.getloadavg()[0]
    rec = {"command": f"python benchmarks/resnet50_cost.py{' --quick' if args.quick else ''}", "machine": machine(),
           "seconds": round(time.perf_counter() - start), "load": [load0, load1], "images": args.images,
           "reconstruction": {"headers": ["run", "seconds", "stages"], "rows": recon},
           "sensitivity": {"headers": ["", "rewrite + new session", "masked, whole graph", "masked, changed part only"],
                           "rows": sens}}
    text = markdown(rec)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps(rec, indent=1, default=float))  # run_all reads it
    print(text)


def markdown(rec: dict) -> str:
    page = Page("ResNet-50 (224x224): cost of reconstruction and of the sensitivity analysis")
    page.para(f"Command: `{rec['command']}` ({rec['seconds']:.0f} s). Random-init torchvision ResNet-50, "
              "random-normal images.",
              f"Machine: {rec['machine']}; load average {rec['load'][0]:.1f} at the start, {rec['load'][1]:.1f} at "
              "the end (other jobs were running: absolute times are inflated, ratios measured side by side hold).")
    page.section("Reconstruction").grid(rec["reconstruction"]["headers"], rec["reconstruction"]["rows"])
    page.section(f"Sensitivity analysis, {rec['images']} evaluation images",
                 "Seconds per evaluation (one candidate: one group at 50%), three ways side by side.")
    page.grid(rec["sensitivity"]["headers"], rec["sensitivity"]["rows"])
    return page.text()

if __name__ == "__main__":
    main()
