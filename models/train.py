"""Train a reference model on Fashion-MNIST and export it to ONNX (BatchNorm kept unfused).

Usage (from the repository root)::

    python models/train.py --arch resnet20 --epochs 8  --out models/resnet20_fmnist.onnx
    python models/train.py --arch vgg11    --epochs 12 --out models/vgg11_fmnist.onnx
    python models/train.py --arch resnet20 --epochs 1 --limit 2000 --out /tmp/smoke.onnx   # smoke

Recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4), cosine learning-rate
decay per iteration, batch 128, augmentation = random 28x28 crop of the image
zero-padded by 2 px + random horizontal flip.  Everything is seeded (weights,
data order, augmentation), so a rerun with the same arguments, thread count and
PyTorch build reproduces the model.

After training the script exports ONNX (opset 17, dynamic batch, input
``input`` [N,1,28,28] normalised as in ``fashion_mnist.normalize``, output
``logits`` [N,10]) with ``training=TrainingMode.PRESERVE`` and
``do_constant_folding=False`` on the eval-mode model: that skips the exporter's
Conv+BN fusion (done only in ``TrainingMode.EVAL``), so every BatchNorm2d
becomes an inference-mode ``BatchNormalization`` node (``training_mode=0``).
It then checks the file with ``onnx.checker``, compares ONNX Runtime and
PyTorch logits and top-1 on the test set, and writes ``<out>.json`` with the
measured numbers.
"""

from __future__ import annotations

import os

# Busy-waiting OpenMP workers collapse (10-20x slower) when the 2 cores are shared
# with other processes; passive waiting costs almost nothing when they are not.
# Must be set before torch (libgomp) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from onnx import numpy_helper  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import architectures  # noqa: E402
import fashion_mnist  # noqa: E402

PAD = 2          # random-crop padding (pixels)
EVAL_BATCH = 1000
# ONNX Runtime and PyTorch may legitimately disagree on the arg-max only when the
# two best logits are (almost) tied; anything else is an export bug.
TIE_MARGIN = 1e-3


# ----------------------------------------------------------------------------- data

def _subset(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int):
    """A seeded, class-stratified subset of ``limit`` examples (all of them if None)."""
    if limit is None or limit >= len(labels):
        return images, labels
    rng = np.random.default_rng(seed)
    per_class = np.array_split(np.arange(limit), fashion_mnist.NUM_CLASSES)
    picks = [rng.permutation(np.flatnonzero(labels == c))[: len(n)]
             for c, n in enumerate(per_class)]
    idx = np.sort(np.concatenate(picks))
    return images[idx], labels[idx]


def _to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,28,28] tensor -> normalised float32 [B,1,28,28] (same maths as
    ``fashion_mnist.normalize``)."""
    x = images_u8.to(torch.float32).div_(255.0)
    return x.sub_(fashion_mnist.MEAN).div_(fashion_mnist.STD).unsqueeze_(1)


def augment(images_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of PAD px) + random horizontal flip of a uint8 batch."""
    b, h, w = images_u8.shape
    padded = F.pad(images_u8, (PAD, PAD, PAD, PAD))
    oy = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    crops = padded[torch.arange(b)[:, None, None], rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None], crops.flip(-1), crops)


def batches(n: int, batch_size: int, gen: torch.Generator):
    """Seeded shuffled index batches covering ``range(n)`` (last batch may be short)."""
    order = torch.randperm(n, generator=gen)
    return order.split(batch_size)


# ----------------------------------------------------------------------------- training

def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, total_steps: int):
    """SGD + Nesterov momentum, weight decay on all parameters, per-step cosine decay."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return opt, sched


def train_epoch(model, opt, sched, images_u8, labels, batch_size, gen):
    """One pass over the training set; returns (mean loss, accuracy)."""
    model.train()
    loss_sum, correct = 0.0, 0
    for idx in batches(len(labels), batch_size, gen):
        x = _to_input(augment(images_u8[idx], gen)).contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.item() * len(idx)
        correct += (logits.argmax(1) == y).sum().item()
    return loss_sum / len(labels), correct / len(labels)


@torch.no_grad()
def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Eval-mode PyTorch logits of normalised inputs, in batches."""
    model.eval()
    out = [model(torch.from_numpy(x[i:i + EVAL_BATCH])).numpy()
           for i in range(0, len(x), EVAL_BATCH)]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- ONNX

def export_onnx(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> onnx.ModelProto:
    """Export with BatchNorm preserved, undo initializer sharing, add metadata, save."""
    model = model.eval().to(memory_format=torch.contiguous_format)
    size = architectures.INPUT_SIZE
    dummy = torch.zeros(1, architectures.IN_CHANNELS, size, size)
    with warnings.catch_warnings():
        # torch >= 2.9 warns that the TorchScript exporter (dynamo=False) is legacy.
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            model, dummy, str(path), dynamo=False, opset_version=17,
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load(str(path))
    unshare_initializers(proto)
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def unshare_initializers(proto: onnx.ModelProto) -> int:
    """Replace ``Identity(initializer)`` nodes with a private copy of the initializer.

    The TorchScript exporter de-duplicates parameters with identical values (e.g.
    untrained BN gammas) and re-creates them through Identity nodes; a pruner must
    be able to slice each layer's tensors independently, so give every layer its own.
    Returns the number of nodes removed.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    kept, removed = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]),
                                           name=node.output[0])
            graph.initializer.append(copy)
            removed += 1
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return removed


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime (CPU) logits of normalised inputs, in batches."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = [sess.run(["logits"], {"input": x[i:i + EVAL_BATCH]})[0]
           for i in range(0, len(x), EVAL_BATCH)]
    return np.concatenate(out)


def verify_onnx(path: Path, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    """Compare ONNX Runtime with PyTorch on (x, y): logits, predictions and top-1."""
    onnx.checker.check_model(str(path), full_check=True)
    ref = torch_logits(model, x)
    got = ort_logits(path, x)
    max_diff = float(np.abs(ref - got).max())
    ref_pred, got_pred = ref.argmax(1), got.argmax(1)
    mismatch = np.flatnonzero(ref_pred != got_pred)
    top2 = np.sort(ref[mismatch], axis=1)[:, -2:]
    if len(mismatch) and np.any(top2[:, 1] - top2[:, 0] > TIE_MARGIN):
        raise RuntimeError(f"ONNX and PyTorch predictions differ on {len(mismatch)} "
                           f"images that are not ties (max |logit diff| {max_diff:.3g})")
    acc_torch = float((ref_pred == y).mean())
    acc_onnx = float((got_pred == y).mean())
    return {"max_abs_logit_diff": max_diff, "prediction_mismatches": int(len(mismatch)),
            "acc_torch": acc_torch, "acc_onnx": acc_onnx}


def onnx_summary(proto: onnx.ModelProto) -> dict:
    """Op-type histogram and BatchNormalization status of an exported model."""
    ops = Counter(n.op_type for n in proto.graph.node)
    return {"op_types": dict(sorted(ops.items())),
            "batchnorm_unfused": ops.get("BatchNormalization", 0) > 0}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--arch", required=True,
                   help="resnet20, resnet56, resnet<6n+2> or vgg11")
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", type=Path, required=True, help="output .onnx path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--limit", type=int, default=None,
                   help="smoke mode: use a stratified subset of this many train AND test images")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    train_x, train_y = _subset(*fashion_mnist.load("train"), args.limit, args.seed)
    test_x, test_y = _subset(*fashion_mnist.load("test"), args.limit, args.seed)
    test_in = fashion_mnist.normalize(test_x)
    images_u8, labels = torch.from_numpy(train_x.copy()), torch.from_numpy(train_y)

    model = architectures.build(args.arch).to(memory_format=torch.channels_last)
    steps = args.epochs * math.ceil(len(labels) / args.batch_size)
    opt, sched = make_optimizer(model, args.lr, args.weight_decay, steps)
    gen = torch.Generator().manual_seed(args.seed)
    print(f"{args.arch}: {architectures.count_parameters(model):,} parameters, "
          f"{len(labels)} train / {len(test_y)} test images, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads", flush=True)

    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss, acc = train_epoch(model, opt, sched, images_u8, labels, args.batch_size, gen)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {loss:.4f}  train-acc {acc:.4f}  "
              f"lr {sched.get_last_lr()[0]:.4f}  {time.perf_counter() - start:7.1f}s", flush=True)
    train_time = time.perf_counter() - start

    meta = {"arch": args.arch, "dataset": "Fashion-MNIST",
            "input": "float32 [N,1,28,28], (pixel/255 - mean) / std",
            "normalization_mean": str(fashion_mnist.MEAN),
            "normalization_std": str(fashion_mnist.STD),
            "classes": ",".join(fashion_mnist.CLASS_NAMES)}
    proto = export_onnx(model, args.out, meta)
    check = verify_onnx(args.out, model, test_in, test_y)
    print(f"ONNX check: max |logit diff| {check['max_abs_logit_diff']:.3g}, "
          f"{check['prediction_mismatches']} prediction mismatches", flush=True)
    print(f"test top-1 ({len(test_y)} images): PyTorch {check['acc_torch']:.4f}, "
          f"ONNX Runtime {check['acc_onnx']:.4f}", flush=True)
    if check["acc_torch"] != check["acc_onnx"]:
        print("WARNING: ONNX and PyTorch top-1 differ (tied logits)", flush=True)

    report = {
        "arch": args.arch, "epochs": args.epochs, "seed": args.seed,
        "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
        "threads": args.threads, "limit": args.limit,
        "train_images": int(len(labels)), "test_images": int(len(test_y)),
        "test_accuracy": check["acc_onnx"], "test_accuracy_torch": check["acc_torch"],
        "max_abs_logit_diff": check["max_abs_logit_diff"],
        "parameters": architectures.count_parameters(model),
        "onnx_bytes": args.out.stat().st_size, "opset": 17, **onnx_summary(proto),
        "normalization": {"mean": fashion_mnist.MEAN, "std": fashion_mnist.STD},
        "train_time_s": round(train_time, 1),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "command": shlex.join(["python", "models/train.py", *(argv or sys.argv[1:])]),
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['onnx_bytes']:,} bytes) and {json_path}", flush=True)
    return report


if __name__ == "__main__":
    main()
