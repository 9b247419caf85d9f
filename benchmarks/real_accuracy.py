"""Accuracy of pruned real third-party models (and the bundled ones), one `onnxprune compress`
CLI run per model x method variant x target, no fine-tuning, unlabelled calibration data only.

Models: tests/realmodels.py (four trained ONNX models from PyPI wheels, with labelled data
rendered here) and the bundled Fashion-MNIST ResNet-20 and VGG-11. For each run the table gives
task accuracy (and the original's), agreement with the original's predictions, MACs removed,
measured speed-up (onnxruntime CPU, 1 thread, original and pruned runs interleaved, median),
compress wall time and its peak RSS (the compress subprocess's own rusage).

    python benchmarks/real_accuracy.py                          # all models, variants default+datafree, 30/50%
    python benchmarks/real_accuracy.py --resume                 # keep the rows the log has with the same settings
    python benchmarks/real_accuracy.py --variants default,l1-ldrf --targets flops50 --models ppocr_rec
    python benchmarks/real_accuracy.py --quick                  # smoke run (few samples) -> the cache dir
    python benchmarks/real_accuracy.py --render                 # rewrite the Markdown from the JSON log

A method variant is a list of extra `onnxprune compress` arguments (``{calib}`` is replaced by the
model's calibration .npz): add one to VARIANTS (or with ``--variant NAME='ARGS'`` on the command
line) and rerun with ``--resume``. A target is a list of arguments as well (TARGETS).
Rows are appended to the JSON log as soon as they are measured; a row is identified by model,
variant and target and carries its settings (arguments, sample counts, model digest, data version):
``--resume`` skips rows whose settings match and remeasures the others.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the model zoo and its data live with the tests (tests never import benchmarks)

import realmodels  # noqa: E402
from realmodels import ZOO, cache_dir  # noqa: E402

sys.path.insert(0, str(HERE))
from common import read_log, reusable, write_log  # noqa: E402
from render import Col, Page  # noqa: E402

ROOT = HERE.parent

# variant name -> extra `onnxprune compress` arguments; "{calib}" is the calibration .npz
VARIANTS: dict[str, list[str]] = {
    "default": ["--no-recover", "--data", "{calib}"],  # hrank + ldrf, the defaults with data before issue 18
    "datafree": [],  # l1, no reconstruction
    "l1-ldrf": ["--no-recover", "--criterion", "l1", "--data", "{calib}"],
    "recover": ["--data", "{calib}"],  # issue 18: hrank + ldrf + label-free recovery (the CLI default with torch)
}
# target name -> arguments
TARGETS: dict[str, list[str]] = {
    "flops30": ["--flops", "0.3"],
    "flops50": ["--flops", "0.5"],
    "speedup1.5": ["--speedup", "1.5", "--threads", "1"],
    "speedup2": ["--speedup", "2", "--threads", "1"],
}
DEFAULT_VARIANTS = ["default", "datafree"]
DEFAULT_TARGETS = ["flops30", "flops50"]
BUNDLED = {"resnet20": ROOT / "models" / "resnet20_fmnist.onnx", "vgg11": ROOT / "models" / "vgg11_fmnist.onnx"}
ALL_MODELS = list(ZOO) + list(BUNDLED)
COMPRESS_TIMEOUT = 3600
HARNESS = 2  # bump when what a row measures changes: --resume remeasures rows of other versions


# ----------------------------------------------------------------------------- models and data

class Bundled:
    """The bundled Fashion-MNIST models as a benchmark model: calibration images from the train
    split when Debian's dataset-fashion-mnist is installed (else the first part of a seeded
    permutation of models/fmnist_sample.npz), evaluation on the test split (else the rest of the
    sample): the calibration images are never evaluated."""

    kind = "classify"
    batch = 500
    compress_args: tuple = ()

    def __init__(self, name):
        self.name = name
        self.task = "Fashion-MNIST top-1 (bundled, trained here)"
        self.source = "models/fashion_mnist.py normalize"

    def path(self):
        return BUNDLED[self.name]

    def data(self, n_calib, n_eval):
        sys.path.insert(0, str(ROOT / "models"))
        try:
            from common import fmnist

            calib = fmnist("train", n_calib, seed=1)["input"]
            test = fmnist("test", n_eval, seed=0)
            return calib, test["input"], test["labels"].tolist(), "train split (calib), test split (eval)"
        except Exception:  # the Debian data set is not installed: split the bundled sample
            d = np.load(ROOT / "models" / "fmnist_sample.npz")
            perm = np.random.default_rng(0).permutation(len(d["labels"]))
            ci, ei = np.sort(perm[:n_calib]), np.sort(perm[n_calib:n_calib + n_eval])
            return (d["input"][ci], d["input"][ei], d["labels"][ei].tolist(),
                    "models/fmnist_sample.npz split (test images)")


def model_spec(name):
    return ZOO[name] if name in ZOO else Bundled(name)


def predict(name, path, x):
    if name in ZOO:
        return realmodels.predict(name, path, x)
    sess = realmodels.session(path)
    iname = sess.get_inputs()[0].name
    return [int(v) for i in range(0, len(x), 500) for v in sess.run(None, {iname: x[i:i + 500]})[0].argmax(1)]


def score(name, preds, labels, reference=None):
    if name in ZOO:
        return realmodels.score(name, preds, labels, reference)
    out = {"accuracy": float(np.mean(np.asarray(preds) == np.asarray(labels)))}
    if reference is not None:
        out["agreement"] = float(np.mean(np.asarray(preds) == np.asarray(reference)))
    return out


def prepare(name, n_calib, n_eval, work: Path):
    """(model path, calibration .npz path, eval inputs, eval labels, data description)."""
    spec = model_spec(name)
    path = spec.path()
    iname = realmodels.input_name(path)
    if name in ZOO:
        calib, _ = realmodels.dataset(name, "calib", n_calib)
        x, y = realmodels.dataset(name, "eval", n_eval)
        desc = f"rendered, generator v{realmodels.GENERATOR_VERSION}"
    else:
        calib, x, y, desc = spec.data(n_calib, n_eval)
    cpath = work / f"{name}-calib{n_calib}.npz"
    if not cpath.exists():
        part = cpath.with_suffix(f".{os.getpid()}.part.npz")
        np.savez(part, **{iname: calib.astype(np.float32)})
        part.replace(cpath)
    return path, cpath, x, y, desc


# ----------------------------------------------------------------------------- one run

# A small Python process starts the CLI and reports its peak RSS: Linux gives a forked child the
# parent's memory high-water mark, so the CLI started from this (large) process directly would
# report at least this process's RSS.
_RSS_WRAPPER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_compress(args: list[str], log: Path) -> dict:
    """`onnxprune compress ARGS --json` in a subprocess: its summary, wall time and peak RSS (its
    own, through wait4 in a small wrapper process)."""
    cli = [sys.executable, "-c", "from onnxprune.cli.main import main; main()", "compress", *args, "--json", "-q"]
    rss_file = log.with_suffix(".rss")
    rss_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-c", _RSS_WRAPPER, str(rss_file), *cli]
    with tempfile.TemporaryFile() as out, open(log, "wb") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            proc.wait(timeout=COMPRESS_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        seconds = time.perf_counter() - t
        out.seek(0)
        stdout = out.read().decode("utf-8", "replace")
    rss = int(rss_file.read_text()) / 1024 if rss_file.exists() else float("nan")
    rec = {"rc": proc.returncode, "compress_s": round(seconds, 1), "peak_rss_mb": round(rss, 1)}
    if proc.returncode == 0:
        rec["summary"] = json.loads(stdout[stdout.index("{"):])
    else:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
        rec["error"] = (lines[-1] if lines else f"exit {proc.returncode}")[:400]
    return rec


def speedup(original, pruned, x, reps: int) -> dict:
    """Median latency of the original and the pruned model on the same batch, 1 thread, runs
    interleaved (original, pruned, pruned, original, ...) so that load from others hits both."""
    s0, s1 = realmodels.session(original), realmodels.session(pruned)
    n0, n1 = s0.get_inputs()[0].name, s1.get_inputs()[0].name
    for _ in range(2):
        s0.run(None, {n0: x})
        s1.run(None, {n1: x})
    t0, t1 = [], []
    for r in range(reps):
        order = [(s0, n0, t0), (s1, n1, t1)] if r % 2 == 0 else [(s1, n1, t1), (s0, n0, t0)]
        for sess, name, ts in order:
            t = time.perf_counter()
            sess.run(None, {name: x})
            ts.append(time.perf_counter() - t)
    m0, m1 = float(np.median(t0)), float(np.median(t1))
    # the ratio of the fastest runs as well: on a shared machine the minimum is the run least
    # disturbed by others
    return {"ms_original": round(m0 * 1e3, 3), "ms_pruned": round(m1 * 1e3, 3), "speedup": round(m0 / m1, 3),
            "speedup_min": round(min(t0) / min(t1), 3)}


# ----------------------------------------------------------------------------- the log

def load_log(path: Path) -> dict:
    return read_log(path, {"originals": {}, "rows": []})


def save_log(log: dict, path: Path) -> None:
    write_log(path, log)


def pct(v):
    return "" if v is None else f"{100 * max(0.0, v):.1f}"


def _acc(m: dict) -> str:
    return pct(m["accuracy"]) + (f" (chars {pct(m['char_accuracy'])})" if "char_accuracy" in m else "")


def _ok(fn):
    """A column value that rows with an ``error`` leave empty."""
    return lambda r: None if r.get("error") else fn(r)


MODEL_COLS = [
    Col("model", "name"), Col("source", "source"), Col("task", "task"), Col("input", "input"),
    Col("calib / eval", lambda m: f"{m['n_calib']} / {m['n_eval']} ({m['data']})"), Col("original accuracy", _acc),
    Col("preprocessing from", "preprocessing"),
]


def row_cols(originals: dict) -> list[Col]:
    return [
        Col("model", "model"), Col("variant", "variant"), Col("MACs removed", _ok(lambda r: pct(r["macs_removed"]))),
        Col("accuracy", _ok(_acc)),
        Col("Δ points", _ok(lambda r: 100 * (r["accuracy"] - originals[r["model"]]["accuracy"])), "+.1f"),
        Col("agreement", _ok(lambda r: pct(r["agreement"]))),
        Col("speed-up (min)", _ok(lambda r: f"{r['speedup']:.2f} ({r.get('speedup_min', float('nan')):.2f})")),
        Col("compress s", lambda r: str(r["compress_s"])),  # as logged
        Col("peak RSS MB", lambda r: str(r["peak_rss_mb"]) if r.get("error") else f"{r['peak_rss_mb']:.0f}"),
        Col("args / error", lambda r: f"error: {r['error']}" if r.get("error") else f"`{' '.join(r['args'])}`"),
    ]


def markdown(log: dict) -> str:
    o = log["originals"]
    page = Page("Real-model accuracy after pruning (no fine-tuning, unlabelled calibration data)")
    page.para("Generated by `benchmarks/real_accuracy.py` from REAL_ACCURACY.json. "
              "Each row is one `onnxprune compress` CLI run (a subprocess: its wall time and peak RSS); "
              "accuracy on labelled data the benchmark generates (never the calibration samples); "
              "agreement = share of evaluation samples where the pruned model predicts what the original "
              "predicts (the decoded string for recognizers); speed-up = median latency original / pruned "
              "(in brackets: fastest run / fastest run), onnxruntime CPU, 1 thread, runs interleaved, on a batch "
              "of up to 8 evaluation inputs; `load` in the JSON rows is the load average when the row started "
              "(timings on a shared machine are noisy).")
    if log.get("command"):
        page.para(f"Command: `{log['command']}`  \nMachine: {log.get('machine', '')}  \n"
                  f"Run: {log.get('date', '')}, {log.get('run_s', 0) / 60:.0f} min for the rows measured in it")
    page.section("Models").table(MODEL_COLS, [dict(m, name=name) for name, m in o.items()])
    variants = sorted({r["variant"] for r in log["rows"]}, key=lambda v: (list(VARIANTS).index(v) if v in VARIANTS else 99, v))
    for target in sorted({r["target"] for r in log["rows"]}):
        rows = [r for name in o for v in variants for r in log["rows"] if (r["model"], r["variant"], r["target"]) == (name, v, target)]
        page.section(target).table(row_cols(o), rows)
    page.section("Reproduce",
                 "```\npython benchmarks/real_accuracy.py --resume                 # measure the rows the log lacks\n"
                 "python benchmarks/real_accuracy.py --variant obs='--criterion obs --data {calib}' --variants default,obs --resume\n```",
                 "Wheels are fetched with `pip download --no-deps` and data rendered into `$ONNXPRUNE_BENCH_CACHE` "
                 "(default `~/.cache/onnxprune-bench`); nothing of it is committed. The real models' `compress` "
                 "arguments include `--input-shape` (their symbolic dimensions; the data-free path needs it) and "
                 "`--batch-size` (the CLI fails on a -1 batch dimension and on a batch fixed at 1 without it).")
    return page.text()


def summary_lines(log) -> list[str]:
    """Headline bullets for the benchmark index (run_all.py): per variant and target, the range of
    accuracy points lost over the models."""
    if not isinstance(log, dict) or not log.get("rows"):
        return []
    o, out = log["originals"], []
    out.append("Originals: " + ", ".join(f"{n} {pct(m['accuracy'])}%" for n, m in o.items()) + ".")
    for target in sorted({r["target"] for r in log["rows"]}):
        for v in dict.fromkeys(r["variant"] for r in log["rows"]):
            rows = [r for r in log["rows"] if r["target"] == target and r["variant"] == v and r["model"] in o]
            if not rows:
                continue
            lost = {r["model"]: 100 * (o[r["model"]]["accuracy"] - r["accuracy"]) for r in rows if not r.get("error")}
            failed = [r["model"] for r in rows if r.get("error")]
            text = f"{target}, {v}: " + ", ".join(f"{m} -{d:.1f}" for m, d in lost.items()) + " points"
            out.append(text + (f"; failed: {', '.join(failed)}" if failed else "") + ".")
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(ALL_MODELS))
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                   help="define a variant on the command line, e.g. obs='--criterion obs --data {calib}'")
    p.add_argument("--calib", type=int, default=256, help="calibration samples per model")
    p.add_argument("--eval", type=int, default=500, help="evaluation samples per model")
    p.add_argument("--reps", type=int, default=20, help="interleaved latency runs per model")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 calibration, 64 evaluation samples, 3 reps")
    p.add_argument("--resume", action="store_true", help="skip rows the log has with the same settings")
    p.add_argument("--render", action="store_true", help="only rewrite the Markdown from the log")
    p.add_argument("--out", type=Path, default=None, help="Markdown page; the log is beside it (.json)")
    args = p.parse_args(argv)
    if args.quick:
        args.calib, args.eval, args.reps = 32, 64, 3
    out = args.out or (cache_dir() / "REAL_ACCURACY.quick.md" if args.quick else ROOT / "docs" / "REAL_ACCURACY.md")
    log_path = out.with_suffix(".json")
    log = load_log(log_path)
    if args.render:
        out.write_text(markdown(log))
        return 0
    for spec in args.variant:
        name, _, rest = spec.partition("=")
        VARIANTS[name] = shlex.split(rest)
    models, variants, targets = (s.split(",") for s in (args.models, args.variants, args.targets))
    for kind, names, known in (("model", models, ALL_MODELS), ("variant", variants, VARIANTS), ("target", targets, TARGETS)):
        bad = [n for n in names if n not in known]
        if bad:
            print(f"error: unknown {kind} {', '.join(bad)} (known: {', '.join(known)})", file=sys.stderr)
            return 2
    # pruned models per checkout: benchmarks of several worktrees may share the cache at once
    work = cache_dir() / "runs" / realmodels.hashlib.sha256(str(ROOT).encode()).hexdigest()[:10]
    work.mkdir(parents=True, exist_ok=True)
    import onnxruntime
    import platform

    log.update(command=" ".join(["python benchmarks/real_accuracy.py", *(sys.argv[1:] if argv is None else argv)]),
               machine=f"{os.cpu_count()} CPU cores ({platform.machine()}), onnxruntime {onnxruntime.__version__}, "
                       f"load {os.getloadavg()[0]:.1f} at start",
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    t_run = time.perf_counter()
    for name in models:
        spec = model_spec(name)
        path, cpath, x, y, desc = prepare(name, args.calib, args.eval, work)
        digest = realmodels.file_digest(path)
        ref = predict(name, path, x)
        shape = list(x.shape[1:])
        log["originals"][name] = {
            **score(name, ref, y), "source": f"{spec.package} {spec.version}: {spec.member.split('/')[-1]}" if name in ZOO
            else f"bundled: models/{path.name}", "task": spec.task, "preprocessing": spec.source,
            "input": "x".join(map(str, shape)), "n_calib": args.calib, "n_eval": len(y), "data": desc, "digest": digest}
        print(f"{name}: original {log['originals'][name]}", flush=True)
        save_log(log, log_path)
        bx = x[:min(spec.batch, 8)]
        for target in targets:
            for variant in variants:
                extra = [a.replace("{calib}", str(cpath)) for a in VARIANTS[variant]]
                cli = [*TARGETS[target], *spec.compress_args, *extra]
                settings = {"args": [a.replace(str(cpath), "{calib}") for a in cli], "n_calib": args.calib,
                            "n_eval": len(y), "digest": digest, "generator": realmodels.GENERATOR_VERSION, "harness": HARNESS}
                key = (name, variant, target)
                old = [r for r in log["rows"] if (r["model"], r["variant"], r["target"]) == key]
                if args.resume and old and reusable(old[0], settings):
                    continue
                pruned = work / f"{name}-{variant}-{target}.onnx"
                rec = run_compress([str(path), *cli, "-o", str(pruned), "--force"], pruned.with_suffix(".log"))
                row = {"model": name, "variant": variant, "target": target, "args": settings["args"],
                       "settings": settings, "compress_s": rec["compress_s"], "peak_rss_mb": rec["peak_rss_mb"],
                       "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "load": round(os.getloadavg()[0], 1)}
                if rec["rc"] == 0:
                    preds = predict(name, pruned, x)
                    row.update(score(name, preds, y, ref), macs_removed=rec["summary"]["flops_reduction"],
                               params_removed=rec["summary"]["params_reduction"],
                               criterion=rec["summary"].get("criterion"), reconstruct=rec["summary"].get("reconstruct"),
                               **speedup(path, pruned, bx, args.reps))
                else:
                    row["error"] = rec["error"]
                print(json.dumps({k: v for k, v in row.items() if k != "settings"}), flush=True)
                log["rows"] = [r for r in log["rows"] if (r["model"], r["variant"], r["target"]) != key] + [row]
                save_log(log, log_path)
    log["run_s"] = round(time.perf_counter() - t_run, 1)
    save_log(log, log_path)
    text = markdown(log)
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
