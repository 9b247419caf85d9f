"""Shared pieces of the benchmark scripts: the bundled models, Fashion-MNIST splits, top-1
evaluation with onnxruntime, the machine and the command of a run, and the one
helper that runs a measurement in a child process (``run_child``)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "models"))

MODELS = {"resnet20": ROOT / "models" / "resnet20_fmnist.onnx", "vgg11": ROOT / "models" / "vgg11_fmnist.onnx"}


def fmnist(split: str, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """``{"input": float32 [N,1,28,28], "labels": int64 [N]}``; ``n`` images picked with a seed."""
    import fashion_mnist

    images, labels = fashion_mnist.load(split)
    if n is not None and n < len(images):
        idx = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
        images, labels = images[idx], labels[idx]
    return {"input": fashion_mnist.normalize(images), "labels": labels.astype(np.int64)}


def calibration_set(n: int = 1024) -> dict[str, np.ndarray]:
    """Calibration images come from the TRAIN split (seeded): the test split stays unseen."""
    return fmnist("train", n, seed=1)


def top1(model, data: dict[str, np.ndarray], batch_size: int = 500) -> float:
    from onnxprune.model.files import read_model
    from onnxprune.runtime.session import session

    sess = session(read_model(model) if isinstance(model, (str, Path)) else model)
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(data["labels"]), batch_size):
        logits = sess.run(None, {name: data["input"][i : i + batch_size]})[0]
        correct += int((logits.argmax(1) == data["labels"][i : i + batch_size]).sum())
    return correct / len(data["labels"])


def machine() -> str:
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    return (f"{os.cpu_count()} CPU cores ({cpu}), Python {platform.python_version()}, "
            f"onnxruntime {onnxruntime.__version__}, {datetime.date.today().isoformat()}")


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table of rows given as lists of cells (see render.py, the one renderer)."""
    from render import grid

    return grid(headers, rows)


class Stopwatch:
    def __enter__(self):
        self.t = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t
        return False


def render_or_run(args, script: str, run, markdown) -> None:
    """The shared tail of the benchmarks with ``--from-json``/``--no-write``/``--out``: run (or
    reload the results of an earlier run), print the Markdown, write it and the raw JSON."""
    import json

    if args.from_json:
        results = json.loads(args.from_json.read_text())
        command = results.get("command", f"python benchmarks/{script}")
    else:
        results = run()
        command = f"python benchmarks/{script}" + "".join(f" {a}" for a in sys.argv[1:])
        results["command"] = command
    text = markdown(results, command)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        if not args.from_json:
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))


# --------------------------------------------------------------------------- resumable logs
# The one resume rule of the benchmarks with ``--resume`` (accuracy, finetune, real_accuracy):
# their JSON log is rewritten atomically after every row, and a logged row is reused only when it
# was measured with the settings the current run would use (``reusable``).


def read_log(path: Path, default):
    """The JSON log at ``path``; ``default`` when there is none or it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def write_log(path: Path, log) -> None:
    """Write the log through a temporary file, so an interrupted run never leaves half a log."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    tmp.write_text(json.dumps(log, indent=1, ensure_ascii=False, default=float))
    tmp.replace(path)


def reusable(entry: dict | None, settings: dict) -> bool:
    """Whether a logged row (its ``settings`` dict) was measured the way this run would measure it."""
    return entry is not None and entry.get("settings") == settings


# --------------------------------------------------------------------------- child processes


@dataclass
class Child:
    """A finished child process: exit code (``"timeout"`` when it ran past its limit), output,
    wall time, and its record: the last stdout line that is a JSON object (None if none)."""

    returncode: int | str
    stdout: str
    stderr: str
    seconds: float

    @property
    def record(self) -> dict | None:
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else None

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def error_tail(self) -> str:
        return (self.stderr.strip().splitlines() or ["no output"])[-1]


def run_child(argv: list[str], *, timeout: float | None = None, env: dict | None = None, cwd: Path | None = None) -> Child:
    """Run ``python argv...`` (a benchmark script in a child mode) in a fresh process, so each
    measurement starts with clean memory and its peak RSS and crashes stay its own."""
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=cwd)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", _text(exc.stdout), _text(exc.stderr)
    return Child(rc, out, err, time.perf_counter() - t0)


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def usage() -> dict:
    """CPU seconds and peak RSS (GB) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_gb": ru.ru_maxrss / 2**20}
