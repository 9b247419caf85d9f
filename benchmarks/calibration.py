"""HRank calibration cost on ResNet-50: onnxprune's streaming pass against plain inference.

    python benchmarks/calibration.py                 # everything, prints two tables
    python benchmarks/calibration.py --images 64     # quicker

Model: torchvision ResNet-50, random init (seed 0), eval mode, exported at 224x224
(``dynamo=False``). Data: 256 random-normal images (seed 0). Every measurement runs in its own
subprocess, so each peak RSS (``ru_maxrss``) belongs to that measurement alone.

Rows of the main table:

* ``plain`` — onnxruntime inference of the model over the images (batches of 32, one
  onnxruntime thread per core).
* ``hrank`` — :func:`onnxprune.calibrate.calibrate` with a :class:`RankCollector` on every
  observed ReLU output, all images, ``method="auto"``.
* ``hrank-serial`` — the same without overlapping inference and collectors.
* ``hrank-early``, ``hrank-early-loose`` — the same with early stopping (``EARLY_STOP``): a
  layer whose mean ranks settled stops computing ranks; the pass ends when all have.
* ``hrank-svd`` — the same pass with the reference rank (float32 SVD, NumPy's
  ``matrix_rank`` convention). Its scores are the "exact full ranks" the others are compared to.
* ``reference-code`` — HRank's own approach: one network run per layer, then
  ``matrix_rank`` per image and channel in a Python loop; timed on a few images and
  **extrapolated** to all of them.

Agreement: for each layer, the channels kept at a 50% prune ratio (highest scores; ties broken
by channel index) by a row's scores and by ``hrank-svd``; the fraction in common.

The second table times each rank kernel on one batch of real ResNet-50 activations.
The machine is shared: each row records the load average seen while it ran, and CPU time
beside wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import run_child, usage  # noqa: E402

SEED = 0
SIZE = 224
PLAIN_BATCH = 32
# Early stop: a layer's collector stops once no channel's mean rank moved by ``tol`` over the
# last ``patience`` images. Tighter settings agree more with the full pass and save less.
EARLY_STOP = {"hrank-early": {"patience": 32, "tol": 0.05}, "hrank-early-loose": {"patience": 32, "tol": 0.2}}


# --------------------------------------------------------------------------- setup


def export_resnet50(path: Path) -> None:
    """torchvision ResNet-50, random init, eval mode, exported with the TorchScript exporter."""
    import torch

    # CPU-only torch builds lack torchvision's C++ ops; declaring their schema lets it import.
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import torchvision

    torch.manual_seed(SEED)
    model = torchvision.models.resnet50(weights=None).eval()
    torch.onnx.export(
        model, torch.randn(1, 3, SIZE, SIZE), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
    )


def prepare(cache: Path, images: int) -> tuple[Path, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    model = cache / "resnet50.onnx"
    if not model.exists():
        subprocess.run([sys.executable, __file__, "--export", str(model)], check=True)
    data = cache / f"images_{images}.npy"
    if not data.exists():
        rng = np.random.default_rng(SEED)
        np.save(data, rng.standard_normal((images, 3, SIZE, SIZE), dtype=np.float32))
    return model, data


def relu_after_conv_or_add(model) -> list[str]:
    """Every Relu output whose input comes from a Conv or an Add (the tensors HRank scores).

    The channel dependency analysis will replace this choice; it is an argument of the runs.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    return [
        node.output[0] for node in model.graph.node
        if node.op_type == "Relu" and node.input[0] in producer
        and producer[node.input[0]].op_type in ("Conv", "Add")
    ]


# --------------------------------------------------------------------------- measurements


def measure_plain(model_path, data_path, args, select) -> dict:
    from onnxprune.runtime.session import cpu_count, open_session

    x = np.load(data_path, mmap_mode="r")
    cpu0, t0 = usage()["cpu_s"], time.perf_counter()
    # Every core: onnxruntime's default (one thread per physical core) would use one of two here.
    session = open_session(str(model_path), threads=cpu_count()).session
    for i in range(0, len(x), PLAIN_BATCH):
        session.run(None, {"input": np.ascontiguousarray(x[i : i + PLAIN_BATCH])})
    return {"wall_s": time.perf_counter() - t0, "cpu_s": usage()["cpu_s"] - cpu0, "images": len(x)}


def measure_hrank(model_path, data_path, args, select, *, method="auto", early=None, overlap=True) -> dict:
    import onnx

    from onnxprune.scoring.calibrate import calibrate
    from onnxprune.scoring.collectors import RankCollector
    from onnxprune.data import input_specs, load_data

    model = onnx.load(str(model_path))
    tensors = select(model)
    data = load_data({"input": np.load(data_path, mmap_mode="r")}, input_specs(model))
    options = EARLY_STOP[early] if early else {}
    requests = {t: [RankCollector(method=method, **options)] for t in tensors}
    cpu0 = usage()["cpu_s"]
    result = calibrate(model, requests, data, stop_when_converged=bool(early), overlap=overlap)
    scores = {t: result.stats[t]["rank"] for t in tensors}
    np.savez(args.scores, **{f"t{i}": scores[t] for i, t in enumerate(tensors)})
    used = [requests[t][0].images for t in tensors]
    return {
        "wall_s": result.wall_time, "cpu_s": usage()["cpu_s"] - cpu0, "images": result.num_images,
        "rank_images": [min(used), max(used)], "batch_size": result.batch_size,
        "provider": result.provider, "layers": len(tensors),
    }


def measure_reference(model_path, data_path, args, select) -> dict:
    """HRank's code path: per layer, run the network and loop matrix_rank over images and channels."""
    import onnx

    from onnxprune.runtime.session import open_session
    from onnxprune.scoring.calibrate import observed_model

    model = onnx.load(str(model_path))
    tensors = select(model)
    x = np.ascontiguousarray(np.load(data_path, mmap_mode="r")[: args.reference_images])
    wall = cpu = 0.0
    for tensor in tensors:
        _, types = observed_model(model, [tensor])
        whole = onnx.ModelProto()
        whole.CopyFrom(model)  # the whole network runs once per layer, as in HRank's code
        whole.graph.output.append(types[tensor])
        session = open_session(whole).session  # built outside the timing
        cpu0, t0 = usage()["cpu_s"], time.perf_counter()
        feature = session.run([tensor], {"input": x})[0]
        ranks = np.zeros(feature.shape[:2])
        for i in range(feature.shape[0]):
            for j in range(feature.shape[1]):
                ranks[i, j] = np.linalg.matrix_rank(feature[i, j])
        wall += time.perf_counter() - t0
        cpu += usage()["cpu_s"] - cpu0
        del session
    scale = args.images / len(x)
    return {"wall_s": wall * scale, "cpu_s": cpu * scale, "images": args.images,
            "measured_images": len(x), "measured_wall_s": wall, "extrapolated": True}


def measure_kernels(model_path, data_path, args, select) -> dict:
    """Seconds per image of each rank implementation on one batch of real activations."""
    import onnx

    from onnxprune.runtime.session import open_session
    from onnxprune.scoring.calibrate import observed_model
    from onnxprune.scoring.ranks import matrix_ranks

    model = onnx.load(str(model_path))
    tensors = select(model)
    observed, _ = observed_model(model, tensors)
    x = np.ascontiguousarray(np.load(data_path, mmap_mode="r")[: args.kernel_images])
    acts = open_session(observed, spinning=False).session.run(tensors, {"input": x})
    by_size: dict[int, list[np.ndarray]] = {}
    for a in acts:
        by_size.setdefault(a.shape[-1], []).append(a.reshape(-1, *a.shape[-2:]))
    stacks = {n: np.concatenate(v) for n, v in sorted(by_size.items(), reverse=True)}
    kernels = {m: (lambda maps, m=m: matrix_ranks(maps, m)) for m in ("auto", "gram", "svd")}
    kernels.update(_torch_kernels())
    reference = {n: matrix_ranks(maps, "svd") for n, maps in stacks.items()}
    rows = {}
    for name, fn in kernels.items():
        seconds, mismatches = {}, 0
        for n, maps in stacks.items():
            t0 = time.perf_counter()
            ranks = fn(maps)
            seconds[n] = (time.perf_counter() - t0) / len(x)
            mismatches += int((ranks != reference[n]).sum())
        rows[name] = {"per_size": seconds, "mismatches": mismatches}
    return {"kernels": rows, "maps_per_image": {n: len(m) // len(x) for n, m in stacks.items()},
            "images": len(x)}


def _torch_kernels() -> dict:
    """torch.linalg equivalents (same tolerance), when torch is installed."""
    try:
        import torch
    except ImportError:
        return {}
    eps = float(np.finfo(np.float32).eps)

    def svdvals(maps):
        s = torch.linalg.svdvals(torch.from_numpy(maps)).numpy()
        return (s > s[:, :1] * max(maps.shape[1:]) * eps).sum(1)

    def gram_eigvalsh(maps):
        f = torch.from_numpy(maps).double()
        lam = torch.linalg.eigvalsh(f @ f.transpose(1, 2)).numpy()
        return (lam > lam[:, -1:] * (max(maps.shape[1:]) * eps) ** 2).sum(1)

    return {"torch-svdvals32": svdvals, "torch-gram-eigvalsh64": gram_eigvalsh}


MEASURES = {
    "plain": measure_plain,
    "hrank": measure_hrank,
    "hrank-serial": lambda *a: measure_hrank(*a, overlap=False),
    "hrank-early": lambda *a: measure_hrank(*a, early="hrank-early"),
    "hrank-early-loose": lambda *a: measure_hrank(*a, early="hrank-early-loose"),
    "hrank-svd": lambda *a: measure_hrank(*a, method="svd"),
    "reference-code": measure_reference,
    "kernels": measure_kernels,
}


def run_measure(name: str, args) -> None:
    """Child process: one measurement, one JSON line on stdout."""
    model_path, data_path = prepare(args.cache, args.images)
    load0 = os.getloadavg()[0]
    out = MEASURES[name](model_path, data_path, args, relu_after_conv_or_add)
    out.update(usage() | {"cpu_s": out.get("cpu_s")}, load=[load0, os.getloadavg()[0]])
    print(json.dumps(out))


# --------------------------------------------------------------------------- driver


def child(name: str, args, scores: Path | None = None) -> dict:
    cmd = [sys.executable, __file__, "--measure", name, "--cache", str(args.cache), "--images",
           str(args.images), "--reference-images", str(args.reference_images),
           "--kernel-images", str(args.kernel_images), "--scores", str(scores or os.devnull)]
    done = run_child(cmd[1:])
    if not done.ok:
        raise RuntimeError(f"measurement {name} failed: {done.error_tail()}")
    return done.record


def kept_at_half(scores: np.ndarray) -> set[int]:
    order = np.lexsort((np.arange(len(scores)), -scores))  # highest first, ties by index
    return set(order[: (len(scores) + 1) // 2].tolist())


def agreement(path: Path, reference: Path) -> tuple[float, float, float, float, float]:
    """Kept-channel overlap at 50% pruning against the reference scores, per layer.

    Returns (mean overlap, min overlap, fraction of layers >= 95%, worst score loss, overlap
    over the whole network: identical kept channels / kept channels, all layers). The score
    loss of a layer is how much lower, in exact mean-rank units, the kept channels score on
    average than the exactly chosen ones: it tells a swap of near-tied channels (loss ~0.01)
    from a wrong choice (loss of whole ranks).
    """
    a, b = np.load(path), np.load(reference)
    fractions, losses, same, kept = [], [], 0, 0
    for key in b.files:
        ka, kb = kept_at_half(a[key]), kept_at_half(b[key])
        fractions.append(len(ka & kb) / len(kb))
        same, kept = same + len(ka & kb), kept + len(kb)
        exact = b[key]
        losses.append((exact[sorted(kb)].sum() - exact[sorted(ka)].sum()) / len(kb))
    f = np.array(fractions)
    return float(f.mean()), float(f.min()), float((f >= 0.95).mean()), float(max(losses)), same / max(kept, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--reference-images", type=int, default=4)
    parser.add_argument("--kernel-images", type=int, default=8)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "onnxprune-bench")
    parser.add_argument("--only", nargs="*", default=list(MEASURES))
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--from-json", type=Path, nargs="*",
                        help="print the tables from earlier --json files (later files win)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.export:
        export_resnet50(Path(args.export))
        return
    if args.measure:
        run_measure(args.measure, args)
        return

    if args.from_json:
        results = {k: v for path in args.from_json for k, v in json.loads(path.read_text()).items()}
        report(results, {name: args.cache / f"scores_{name}.npz" for name in results})
        return
    prepare(args.cache, args.images)
    results, score_files = {}, {}
    for name in args.only:
        score_files[name] = args.cache / f"scores_{name}.npz"
        results[name] = child(name, args, score_files[name])
        print(f"# {name}: done", file=sys.stderr, flush=True)
    report(results, score_files)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def report(results: dict, score_files: dict) -> None:
    plain = results.get("plain", {}).get("wall_s")
    reference = score_files.get("hrank-svd") if "hrank-svd" in results else None
    print(f"{'run':16} {'images':>7} {'wall s':>8} {'cpu s':>8} {'peak GB':>8} {'x plain':>8} "
          f"{'agree mean/min/>=95%':>22} {'load':>9}  notes")
    for name, r in results.items():
        if name == "kernels":
            continue
        ratio = f"{r['wall_s'] / plain:8.2f}" if plain else f"{'':8}"
        agree, notes = "", []
        if reference and name.startswith("hrank") and name != "hrank-svd":
            m, lo, frac, loss, overall = agreement(score_files[name], reference)
            agree = f"{m:.3f}/{lo:.3f}/{frac:.2f}"
            notes.append(f"network-wide {overall:.1%} of kept channels identical")
            notes.append(f"worst score loss {loss:.4f} rank/kept channel")
        if r.get("extrapolated"):
            notes.append(f"EXTRAPOLATED from {r['measured_images']} images ({r['measured_wall_s']:.1f} s)")
        if "rank_images" in r:
            notes.append(f"ranks from {r['rank_images'][0]}-{r['rank_images'][1]} images, batch {r['batch_size']}")
        load = f"{r['load'][0]:.1f}-{r['load'][1]:.1f}"
        print(f"{name:16} {r['images']:7d} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['peak_rss_gb']:8.2f} "
              f"{ratio} {agree:>22} {load:>9}  {'; '.join(notes)}")
    if "kernels" in results:
        k = results["kernels"]
        sizes = list(k["maps_per_image"])
        print()
        print(f"rank kernels, ms per image on {k['images']} images of real activations "
              f"(maps per image: {', '.join(f'{n}x{n}: {c}' for n, c in k['maps_per_image'].items())})")
        print(f"{'kernel':24}" + "".join(f"{f'{n}x{n}':>9}" for n in sizes) + f"{'total':>9}{'mismatch':>10}")
        for name, row in k["kernels"].items():
            per = [row["per_size"][str(n)] if str(n) in row["per_size"] else row["per_size"][n] for n in sizes]
            print(f"{name:24}" + "".join(f"{1000 * v:9.1f}" for v in per) + f"{1000 * sum(per):9.1f}"
                  + f"{row['mismatches']:10d}")


if __name__ == "__main__":
    main()
