"""Write the bundled calibration/evaluation sample and measure the bundled models on it.

Usage (from the repository root)::

    python models/make_sample.py                 # writes models/fmnist_sample.npz, prints accuracies
    python models/make_sample.py --no-evaluate   # only write the sample

The sample is 2,000 images of the Fashion-MNIST *test* split, 200 per class,
drawn without replacement with ``numpy.random.default_rng(seed)`` (seed 0) and
kept in test-set order.  ``models/fmnist_sample.npz`` holds two arrays:

* ``input``  -- float32 [2000, 1, 28, 28], ``fashion_mnist.normalize`` of the images
  (exactly the preprocessing used in training);
* ``labels`` -- int64 [2000], class ids 0..9.

With ``--evaluate`` (the default) every bundled ``models/*_fmnist.onnx`` is run with
ONNX Runtime on the sample and on the full 10,000-image test set and a Markdown
table of top-1 accuracies is printed (it is the table in ``models/README.md``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import fashion_mnist  # noqa: E402

PER_CLASS = 200
BATCH = 1000


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of every class, drawn without replacement, sorted."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in range(fashion_mnist.NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has only {len(members)} examples (< {per_class})")
        picks.append(rng.choice(members, size=per_class, replace=False))
    return np.sort(np.concatenate(picks))


def make_sample(per_class: int = PER_CLASS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The normalised, class-stratified test-split sample: (input, labels)."""
    images, labels = fashion_mnist.load("test")
    idx = stratified_indices(labels, per_class, seed)
    return fashion_mnist.normalize(images[idx]), labels[idx]


def top1(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """ONNX Runtime (CPU) top-1 accuracy of a model on normalised inputs."""
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    preds = np.concatenate([sess.run(None, {name: x[i:i + BATCH]})[0].argmax(1)
                            for i in range(0, len(x), BATCH)])
    return float((preds == y).mean())


def accuracy_table(models: list[Path], sample: tuple[np.ndarray, np.ndarray]) -> str:
    """Markdown table: top-1 of each model on the full test set and on the sample."""
    test_x, test_y = fashion_mnist.load("test")
    test_in = fashion_mnist.normalize(test_x)
    rows = ["| model | top-1, 10k test set | top-1, 2k sample |", "|---|---|---|"]
    for path in models:
        full = top1(path, test_in, test_y)
        part = top1(path, *sample)
        rows.append(f"| `{path.name}` | {full:.2%} | {part:.2%} |")
    return "\n".join(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "fmnist_sample.npz")
    p.add_argument("--per-class", type=int, default=PER_CLASS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-evaluate", dest="evaluate", action="store_false",
                   help="skip measuring the bundled models")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    x, y = make_sample(args.per_class, args.seed)
    np.savez_compressed(args.out, input=x, labels=y)
    print(f"wrote {args.out}: input {x.dtype} {list(x.shape)}, labels {y.dtype} {list(y.shape)}, "
          f"per class {np.bincount(y).tolist()}")
    if args.evaluate:
        models = sorted(HERE.glob("*_fmnist.onnx"))
        if not models:
            print("no models/*_fmnist.onnx to evaluate")
            return
        print(accuracy_table(models, (x, y)))


if __name__ == "__main__":
    main()
