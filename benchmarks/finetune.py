"""Pruning + fine-tuning on the bundled Fashion-MNIST models: onnxprune vs Torch-Pruning.

Every pruned model, whichever tool pruned it, is fine-tuned by the SAME loop
(``onnxprune.tune.finetune_model``: AdamW, lr 1e-3 cosine-annealed per step to 0, batch 128,
seed 0, no augmentation, frozen BatchNorm statistics, teacher = the unpruned model, KL at T=4;
with labels ``0.5 * distill + 0.5 * cross-entropy``), so only the pruning differs. Top-1 is
measured on the full 10,000-image test split before fine-tuning and after every epoch of one
cosine run ("after 1 epoch" = evaluation after epoch 1 of the 3-epoch schedule).

Methods (rows):

* ``onnxprune``       onnxprune's defaults with data: hrank scores, uniform allocation, ldrf
                      reconstruction; calibration on 1,024 train-split images.
* ``onnxprune-sens``  hrank + sensitivity allocation + ldrf (sensitivity curves on the same
                      1,024 labelled train images).
* ``onnxprune-norecon`` hrank + uniform allocation, no reconstruction (separates the channel choice
                      from the reconstructed weights).
* ``random``          control: onnxprune with random scores, uniform allocation, no reconstruction.
* ``tp-magnitude``    Torch-Pruning (``tp.pruner.BasePruner``, ``GroupMagnitudeImportance(p=2)``,
                      ``global_pruning=False``: one ratio for every layer), pruned in PyTorch in
                      iterative steps of 0.25% of the channels until its MACs reduction is
                      the closest it can get to onnxprune's (uniform ratios move in jumps:
                      the step reaching it or the one before), then exported to ONNX
                      (TorchScript exporter, opset 17, dynamic batch, BatchNorm unfused like
                      the bundled models).
* ``tp-<other>``      Torch-Pruning with its other importances (taylor, bnscale, fpgm, lamp);
                      ``tp-best`` is the one with the best top-1 before fine-tuning on 2,000
                      train-split images (never the test split).

The trained PyTorch model for Torch-Pruning is rebuilt from the bundled ONNX file: its
initializer names are the ``state_dict`` names of ``models/architectures.py``; the script
checks that the rebuilt module's logits match onnxruntime's.

MACs are counted the onnxprune way (Conv and Gemm multiply-accumulates at batch 1, by
``onnxprune.pipeline.measured_cost`` on the ONNX file) for every row; the Torch-Pruning rows
also give ``tp.utils.count_ops_and_params``'s count.

    python benchmarks/finetune.py           # every method fine-tuned at 30/50/70% (about 3 h on 2 cores)
    python benchmarks/finetune.py --resume  # the same, measuring only the rows the previous run lacks
    python benchmarks/finetune.py --models vgg11 --fractions 0.5 --finetune-fractions 0.5 --train-images 6000 --out /tmp/f.md

Resuming: every row is saved to the JSON beside ``--out`` as soon as it is measured. With
``--resume`` a rerun reuses the rows of that JSON whose model, target, method and fine-tuning mode
are planned again and whose settings (epochs, train images, BatchNorm mode, calibration images,
seed) are the same, and measures only the rest, so an interrupted run continues where it stopped;
the page says how many rows were measured in this run and on which dates the reused ones were.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: busy-waiting OpenMP starves shared cores
os.environ.setdefault("OMP_NUM_THREADS", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import hashlib  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import MODELS, ROOT, Stopwatch, calibration_set, fmnist, machine, read_log, reusable, top1, write_log  # noqa: E402
from render import Col, Page  # noqa: E402

import architectures  # noqa: E402  (models/ is on sys.path via common)

from onnxprune import Settings, Target, compress  # noqa: E402
from onnxprune.model.files import read_model  # noqa: E402
from onnxprune.pipeline import measured_cost, sensitivity_analysis  # noqa: E402
from onnxprune.runtime.session import session  # noqa: E402
from onnxprune.settings import TuneSettings  # noqa: E402
from onnxprune.tune import finetune_model  # noqa: E402

THREADS = 2
TAYLOR_IMAGES = 512  # train images whose loss gradients score channels for GroupTaylorImportance
TP_OTHERS = ("taylor", "bnscale", "fpgm", "lamp")
DEFAULT_FINETUNE = ("onnxprune:labels,onnxprune:distill@0.5/0.7,onnxprune-sens:labels,random:labels,"
                    "tp-magnitude:labels,tp-best:labels")
RESUME_KEYS = ("epochs", "train_images", "train_bn", "calib", "seed")  # settings a reused row must share
LABEL_NAMES = {"labels": "labels + distillation", "distill": "distillation only"}
INPUT_SHAPE = (1, architectures.IN_CHANNELS, architectures.INPUT_SIZE, architectures.INPUT_SIZE)


# --------------------------------------------------------------------------------------------
# The trained PyTorch models, rebuilt from the bundled ONNX files


def torch_from_onnx(arch: str, path: Path, check: dict[str, np.ndarray]) -> torch.nn.Module:
    """``architectures.build(arch)`` with the ONNX initializers loaded as its state_dict."""
    proto = onnx.load(str(path))
    inits = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    model = architectures.build(arch)
    state = model.state_dict()
    missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"{path.name}: no initializer for {missing[:5]}")
    model.load_state_dict({k: inits.get(k, v) for k, v in state.items()})
    model.eval()
    with torch.no_grad():
        ours = model(torch.from_numpy(check["input"])).numpy()
    theirs = session(proto).run(None, {"input": check["input"]})[0]
    err = float(np.abs(ours - theirs).max())
    if err > 1e-4 or not np.array_equal(ours.argmax(1), theirs.argmax(1)):
        raise RuntimeError(f"{path.name}: rebuilt torch model differs from onnxruntime (max abs {err:.2e})")
    return model


def conv_linear_macs(model: torch.nn.Module) -> int:
    """MACs of Conv2d and Linear at batch 1, counted as onnxprune counts Conv and Gemm."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, torch.nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
        else:
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(INPUT_SHAPE))
    finally:
        for h in handles:
            h.remove()
    return total


def export_onnx(model: torch.nn.Module, path: Path) -> onnx.ModelProto:
    """Export as the bundled models were exported (models/train.py): BatchNorm unfused."""
    import train  # models/train.py

    return train.export_onnx(model, path, {"pruned_by": "torch-pruning"})


# --------------------------------------------------------------------------------------------
# Torch-Pruning


def tp_importance(name: str):
    import torch_pruning as tp

    return {
        "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=2),
        "taylor": lambda: tp.importance.GroupTaylorImportance(),
        "bnscale": lambda: tp.importance.BNScaleImportance(),
        "fpgm": lambda: tp.importance.FPGMImportance(p=2),
        "lamp": lambda: tp.importance.LAMPImportance(p=2),
    }[name]()


def tp_prune(base: torch.nn.Module, importance: str, target: float, grad_data: dict[str, np.ndarray],
             steps: int = 380, max_ratio: float = 0.95) -> tuple[torch.nn.Module, dict]:
    """Prune a copy of ``base`` with Torch-Pruning, one small uniform step at a time, until
    its Conv/Linear MACs reduction reaches ``target``; returns the state (the one reaching it or
    the one just before) whose reduction is closer to ``target``."""
    import copy

    import torch_pruning as tp

    model = copy.deepcopy(base).eval()
    example = torch.zeros(INPUT_SHAPE)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == architectures.NUM_CLASSES]
    imp = tp_importance(importance)
    pruner = tp.pruner.BasePruner(model, example, importance=imp, global_pruning=False, pruning_ratio=max_ratio,
                                  iterative_steps=steps, ignored_layers=ignored)
    base_macs = conv_linear_macs(model)
    tp_ops0, tp_params0 = tp.utils.count_ops_and_params(model, example)
    x = torch.from_numpy(grad_data["input"][:TAYLOR_IMAGES])
    y = torch.from_numpy(grad_data["labels"][:TAYLOR_IMAGES])
    macs, grads_for, previous = base_macs, None, (copy.deepcopy(model), 0)
    for step in range(1, steps + 1):
        if importance == "taylor" and grads_for != macs:  # loss gradients of the current (pruned) model
            model.zero_grad()
            for i in range(0, len(x), 256):
                torch.nn.functional.cross_entropy(model(x[i:i + 256]), y[i:i + 256]).backward()
            grads_for = macs
        pruner.step()
        new_macs = conv_linear_macs(model)
        if 1 - new_macs / base_macs >= target:
            break
        if new_macs != macs:
            previous = (copy.deepcopy(model), step)
        macs = new_macs
    else:
        raise RuntimeError(f"torch-pruning {importance} did not reach {target:.3f} MACs reduction")
    # uniform ratios move in jumps: keep whichever side of the target is closer to it
    if target - (1 - macs / base_macs) < (1 - new_macs / base_macs) - target:
        model, step = previous
    model.zero_grad(set_to_none=True)
    tp_ops, tp_params = tp.utils.count_ops_and_params(model, example)
    info = {"tp_steps": step, "tp_channel_ratio": max_ratio * step / steps,
            "tp_ops_reduction": 1 - tp_ops / tp_ops0, "tp_params_reduction": 1 - tp_params / tp_params0}
    return model.eval(), info


# --------------------------------------------------------------------------------------------
# Pruning methods


class Pruners:
    """Produces every method's pruned ONNX model for one bundled model and caches it."""

    def __init__(self, name: str, calib, select, check, workdir: Path, log):
        self.name, self.path = name, MODELS[name]
        self.calib, self.select, self.test, self.workdir, self.log = calib, select, check, workdir, log
        self.torch_model = torch_from_onnx(name, self.path, check)
        self.shapes = {"input": INPUT_SHAPE}
        self.base = measured_cost(read_model(self.path), self.shapes)
        self.cache: dict[tuple[str, float], dict] = {}
        self.sensitivity = None
        self.tp_best: dict[float, str] = {}

    def reductions(self, proto: onnx.ModelProto) -> dict:
        cost = measured_cost(proto, self.shapes)
        return {"flops_reduction": cost.reduction(self.base, "flops"), "params_reduction": cost.reduction(self.base, "params")}

    def get(self, method: str, fraction: float) -> dict:
        key = (method, fraction)
        if key not in self.cache:
            with Stopwatch() as sw:
                entry = self._make(method, fraction)
            entry["prune_seconds"] = sw.seconds
            entry.update(self.reductions(entry["model"]))
            onnx.checker.check_model(entry["model"])
            self.cache[key] = entry
        return self.cache[key]

    def _make(self, method: str, fraction: float) -> dict:
        target = Target("flops", fraction)
        if method == "onnxprune":
            return {"model": compress(str(self.path), Settings(target), data=self.calib).model}
        if method == "onnxprune-norecon":
            return {"model": compress(str(self.path), Settings(target, criterion="hrank", reconstruct="none"),
                                      data=self.calib).model}
        if method == "random":
            return {"model": compress(str(self.path), Settings(target, criterion="random", reconstruct="none"),
                                      data=self.calib).model}
        if method == "onnxprune-sens":
            if self.sensitivity is None:
                with Stopwatch() as sw:
                    self.sensitivity, _ = sensitivity_analysis(str(self.path), self.calib, "hrank", eval_images=512)
                self.log.append({"event": "sensitivity", "model": self.name, "seconds": sw.seconds})
            settings = Settings(target, criterion="hrank", allocation="sensitivity", reconstruct="ldrf")
            return {"model": compress(str(self.path), settings, data=self.calib, sensitivity=self.sensitivity).model}
        if method.startswith("tp-"):
            imp = method[3:]
            if imp == "best":
                return dict(self.get(f"tp-{self.best_tp(fraction)}", fraction), tp_importance=self.tp_best[fraction])
            # as close as possible to what onnxprune's uniform allocation removed at this target
            goal = self.get("onnxprune", fraction)["flops_reduction"]
            pruned, info = tp_prune(self.torch_model, imp, goal, self.select)
            path = self.workdir / f"{self.name}_{method}_{fraction}.onnx"
            proto = export_onnx(pruned, path)
            macs_torch = conv_linear_macs(pruned)
            macs_onnx = measured_cost(proto, self.shapes).macs
            if macs_torch != macs_onnx:
                raise RuntimeError(f"MACs counted in torch ({macs_torch}) and on the ONNX file ({macs_onnx}) differ")
            return {"model": proto, "tp_importance": imp, **info}
        raise ValueError(f"unknown method {method!r}")

    def best_tp(self, fraction: float) -> str:
        """The Torch-Pruning importance (other than magnitude) with the best selection-set top-1."""
        if fraction not in self.tp_best:
            scores = {imp: top1(self.get(f"tp-{imp}", fraction)["model"], self.select) for imp in ("magnitude", *TP_OTHERS)}
            self.tp_best[fraction] = max(TP_OTHERS, key=scores.get)
            self.log.append({"event": "tp-best", "model": self.name, "flops": fraction, "selection_top1": scores,
                             "best": self.tp_best[fraction]})
        return self.tp_best[fraction]


# --------------------------------------------------------------------------------------------
# Fine-tuning


def run_finetune(student, teacher, train, test, use_labels: bool, epochs: int, seed: int, train_bn: bool) -> dict:
    settings = TuneSettings(epochs=epochs, seed=seed, use_labels=use_labels, device="cpu", train_bn=train_bn)
    steps = []
    with Stopwatch() as sw:
        result = finetune_model(student, train, teacher=teacher, eval_data=test, settings=settings,
                                progress=lambda e: steps.append(time.perf_counter()) if e["event"] == "epoch" else None)
    hist = result.history
    # the returned model holds the best epoch's weights: check write-back against onnxruntime
    ort_acc = top1(result.model, test)
    torch_acc = hist[result.best_epoch]["eval_acc"]
    warn = []
    if abs(ort_acc - torch_acc) > 2e-4:  # more than 2 of 10,000 predictions differ: a bridge/write-back problem
        warn.append(f"fine-tuned model: onnxruntime top-1 {ort_acc} vs torch {torch_acc}")
    epoch_seconds = [b - a for a, b in zip(steps, steps[1:])]
    return {"top1_by_epoch": [h["eval_acc"] for h in hist], "train_loss": [h["loss"] for h in hist],
            "best_epoch": result.best_epoch, "seconds": sw.seconds, "epoch_seconds": epoch_seconds,
            "ort_top1_best": ort_acc, "warnings": warn}


# --------------------------------------------------------------------------------------------


TODAY = datetime.date.today().isoformat()


def table_row(rec: dict, epochs: int) -> list[str]:
    """The table row of a ``row`` log record."""
    accs = rec.get("top1_by_epoch")
    after = ["–", "–"] if not accs else [f"{accs[1]:.2%}", f"{accs[epochs]:.2%}" if epochs > 1 else "–"]
    tp_ops = f"{rec['tp_ops_reduction']:.1%}" if "tp_ops_reduction" in rec else ""
    method = rec["method"] + (f" (same model as {rec['same_model_as']})" if rec.get("same_model_as") else "")
    return [rec["model"], f"{rec['flops_target']:.0%}", method, LABEL_NAMES.get(rec["finetune"], "none"),
            f"{rec['flops_reduction']:.1%}", tp_ops, f"{rec['params_reduction']:.1%}", f"{rec['top1_before']:.2%}",
            *after]


def tp_row(rec: dict) -> list[str]:
    sel = rec.get("selection_top1")
    return [rec["model"], f"{rec['flops_target']:.0%}", rec["importance"], f"{rec['flops_reduction']:.1%}",
            f"{rec['tp_ops_reduction']:.1%}", "" if sel is None else f"{sel:.2%}", f"{rec['top1_before']:.2%}"]


def previous_rows(ap: argparse.ArgumentParser, args) -> dict[tuple, dict]:
    """The records of the previous run (the JSON beside ``--out``) that this run may reuse, by key:
    ("row", model, target, method, mode), ("tp-best", model, target), ("tp-importance", model,
    target, importance). Nothing when that run used other settings (see RESUME_KEYS)."""
    path = Path(args.out).with_suffix(".json")
    old = read_log(path, None)
    if not isinstance(old, dict):
        return {}
    settings = old.get("settings")
    if settings is None:  # written before settings were recorded: read them from its command line
        try:
            settings = vars(ap.parse_args(shlex.split(old["command"])[2:]))
        except (KeyError, SystemExit):
            return {}
    if not reusable({"settings": {k: settings.get(k) for k in RESUME_KEYS}}, {k: getattr(args, k) for k in RESUME_KEYS}):
        print(f"not resuming from {path}: it was run with other settings", file=sys.stderr)
        return {}
    undated = datetime.date.fromtimestamp(path.stat().st_mtime).isoformat()
    out = {}
    for e in old.get("log", []):
        e = dict(e, date=e.get("date", undated))
        if e.get("event") == "row":
            out["row", e["model"], e["flops_target"], e["method"].split(" (")[0], e["finetune"]] = e
        elif e.get("event") == "tp-best":
            out["tp-best", e["model"], e["flops"]] = e
        elif e.get("event") == "tp-importance":
            out["tp-importance", e["model"], e["flops_target"], e["importance"]] = e
    return out


def parse_finetune(spec: str) -> list[tuple[str, str, set[float] | None]]:
    """``METHOD:MODE[@F/F...]`` items: the method fine-tuned in that mode, at the given FLOPs
    targets only (default: every ``--finetune-fractions`` target)."""
    out = []
    for item in filter(None, spec.split(",")):
        method, _, rest = item.partition(":")
        mode, _, at = rest.partition("@")
        if mode not in LABEL_NAMES:
            raise SystemExit(f"error: --finetune item {item!r}: use METHOD:labels or METHOD:distill[@0.5/0.7]")
        try:
            fractions = {float(f) for f in at.split("/")} if at else None
        except ValueError:
            raise SystemExit(f"error: --finetune item {item!r}: targets after @ are fractions like 0.5/0.7") from None
        out.append((method, mode, fractions))
    return out


METHOD_ORDER = ("onnxprune", "onnxprune-sens", "onnxprune-norecon", "random", "tp-magnitude", "tp-best",
                *(f"tp-{imp}" for imp in TP_OTHERS))


def plan_rows(models, fractions, ft_fractions, methods, ft_items):
    """(model, fraction, method, mode) in table order; mode None = a before-fine-tuning-only row
    (only for methods not fine-tuned at that fraction)."""
    known = set(METHOD_ORDER)
    for m in [*methods, *(m for m, _, _ in ft_items)]:
        if m not in known:
            raise SystemExit(f"error: unknown method {m!r}; known: {', '.join(METHOD_ORDER)}")
    out = []
    for name in models:
        for fraction in sorted(set(fractions) | set(ft_fractions)):
            for method in METHOD_ORDER:
                modes = [mode for m, mode, at in ft_items if m == method and (at is None or fraction in at)] \
                    if fraction in ft_fractions else []
                if modes:
                    out += [(name, fraction, method, mode) for mode in modes]
                elif method in methods and fraction in fractions:
                    out.append((name, fraction, method, None))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vgg11,resnet20")
    ap.add_argument("--fractions", default="0.3,0.5,0.7", help="FLOPs targets of the before-fine-tuning rows")
    ap.add_argument("--methods", default="onnxprune,onnxprune-sens,random,tp-magnitude,tp-best",
                    help=f"methods with a before-fine-tuning row ({', '.join(METHOD_ORDER)})")
    ap.add_argument("--finetune", default=DEFAULT_FINETUNE,
                    help="METHOD:labels|distill[@F/F] items to fine-tune (@: only at these FLOPs targets)")
    ap.add_argument("--finetune-fractions", default="0.3,0.5,0.7")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=None, help="train on N seeded train images (default: all 60k)")
    ap.add_argument("--train-bn", action="store_true", help="fine-tune with BatchNorm batch statistics")
    ap.add_argument("--calib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "docs" / "FINETUNE.md"))
    ap.add_argument("--resume", action="store_true", help="reuse the previous run's rows (same settings), measure the rest")
    ap.add_argument("--render", action="store_true", help="rewrite the page from the JSON beside --out, run nothing")
    args = ap.parse_args()
    if args.render:
        return render(args)
    previous = previous_rows(ap, args) if args.resume else {}
    torch.set_num_threads(THREADS)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in MODELS:
            raise SystemExit(f"error: unknown model {m!r}; bundled: {', '.join(MODELS)}")
    fractions = [float(f) for f in args.fractions.split(",") if f]
    ft_fractions = [float(f) for f in args.finetune_fractions.split(",") if f]
    methods = [m for m in args.methods.split(",") if m]
    ft_items = parse_finetune(args.finetune)
    planned = plan_rows(models, fractions, ft_fractions, methods, ft_items)
    if any(method.startswith("tp-") for _, _, method, _ in planned):
        import importlib.util

        if importlib.util.find_spec("torch_pruning") is None:
            raise SystemExit("error: the Torch-Pruning rows need torch-pruning: pip install --no-deps 'torch-pruning>=1.5' "
                             "(or pip install 'onnxprune[bench]'), or leave the tp-* methods out")

    test = fmnist("test")
    calib = calibration_set(args.calib)
    select = fmnist("train", 2000, seed=2)  # importance selection (tp-best) and Taylor gradients
    train = fmnist("train", args.train_images, seed=3)
    report = Report(args, len(planned), previous)
    workdir = Path(tempfile.mkdtemp(prefix="onnxprune_finetune_"))

    pruners = None
    tuned: dict[tuple[str, str], tuple[str, dict]] = {}  # (model digest, mode) -> (first method, fine-tuning)
    for name, fraction, method, mode in planned:
        if pruners is None or pruners.name != name:
            if pruners is not None and "tp-best" in methods:
                report.tp_table(pruners, fractions, previous)
            pruners = Pruners(name, calib, select, test, workdir, report.log)
            for fraction_ in fractions + ft_fractions:  # the previous run's choice of tp-best, if any
                best = report.carry.pop(("tp-best", name, fraction_), None)
                if best is not None:
                    pruners.tp_best[fraction_] = best["best"]
                    report.log.append(dict(best, reused=True))
            teacher = read_model(MODELS[name])
            base_acc = top1(teacher, test)
            report.log.append({"event": "base", "model": name, "top1": base_acc, "macs": pruners.base.macs,
                               "params": pruners.base.params})
        old = report.carry.pop(("row", name, fraction, method, mode), None)
        if old is not None:
            report.add(dict(old, reused=True), table_row(old, args.epochs), time.perf_counter() - t_start)
            continue
        entry = pruners.get(method, fraction)
        before = entry.get("top1")
        if before is None:
            before = entry["top1"] = top1(entry["model"], test)
        label = method if method != "tp-best" else f"tp-best ({entry['tp_importance']})"
        rec = {"event": "row", "model": name, "flops_target": fraction, "method": label,
               "finetune": mode, "date": TODAY, "flops_reduction": entry["flops_reduction"],
               "params_reduction": entry["params_reduction"], "top1_before": before,
               "prune_seconds": entry["prune_seconds"],
               **{k: v for k, v in entry.items() if k.startswith("tp_")}}
        if mode is not None:
            # two methods can prune identically (Torch-Pruning's lamp and magnitude with one ratio for every
            # layer): the same model fine-tuned by the same seeded loop gives the same run, so run it once
            same = (hashlib.sha256(entry["model"].SerializeToString(deterministic=True)).hexdigest(), mode)
            if same not in tuned:
                tuned[same] = (label, run_finetune(entry["model"], teacher, train, test, mode == "labels",
                                                   args.epochs, args.seed, args.train_bn))
            first, ft = tuned[same]
            rec.update(ft, warnings=list(ft["warnings"]))
            if first != label:
                rec["same_model_as"] = first
            accs = ft["top1_by_epoch"]
            if abs(accs[0] - before) > 2e-4:
                rec["warnings"].append(f"torch bridge top-1 {accs[0]} vs onnxruntime {before} before fine-tuning")
            for w in rec["warnings"]:
                print("warning:", w, flush=True)
        report.add(rec, table_row(rec, args.epochs), time.perf_counter() - t_start)
    if pruners is not None and "tp-best" in methods:
        report.tp_table(pruners, fractions, previous)
    report.write(time.perf_counter() - t_start, final=True)


class Report:
    """The Markdown and JSON outputs, rewritten after every row (a long run can be read while it runs)."""

    def __init__(self, args, planned: int, previous: dict | None = None):
        self.args, self.planned = args, planned
        # the previous run's records not reused yet: written with the log, so that a run stopped
        # before reaching them loses none of them (the next --resume finds them again)
        self.carry = dict(previous or {})
        self.command = " ".join(["python benchmarks/finetune.py", *(shlex.quote(a) for a in sys.argv[1:])])
        self.log = []  # the records; every table of the page is rendered from them
        self.machine = f"{machine()}, torch {torch.__version__} ({THREADS} threads), torch-pruning {_tp_version()}"

    def add(self, rec: dict, row: list, seconds: float) -> None:
        self.log.append(rec)
        print(" | ".join(str(v) for v in row), f"({seconds:.0f} s)", flush=True)
        self.write(seconds)

    def tp_table(self, pruners: Pruners, fractions, previous: dict) -> None:
        for fraction in fractions:
            olds = [previous.get(("tp-importance", pruners.name, fraction, imp)) for imp in ("magnitude", *TP_OTHERS)]
            for imp in ("magnitude", *TP_OTHERS):
                self.carry.pop(("tp-importance", pruners.name, fraction, imp), None)
            if all(olds):
                for e in olds:
                    self.log.append(dict(e, reused=True))
                continue
            pruners.best_tp(fraction)
            sel = next(r["selection_top1"] for r in self.log if r["event"] == "tp-best"
                       and r["model"] == pruners.name and r["flops"] == fraction)
            for imp in ("magnitude", *TP_OTHERS):
                e = pruners.get(f"tp-{imp}", fraction)
                if e.get("top1") is None:
                    e["top1"] = top1(e["model"], pruners.test)
                rec = {"event": "tp-importance", "model": pruners.name, "flops_target": fraction,
                       "importance": imp, "flops_reduction": e["flops_reduction"],
                       "tp_ops_reduction": e["tp_ops_reduction"], "selection_top1": sel.get(imp),
                       "top1_before": e["top1"], "date": TODAY}
                self.log.append(rec)

    def markdown(self, seconds: float, final: bool = False) -> str:
        args = self.args
        events = lambda kind: [e for e in self.log if e.get("event") == kind]  # noqa: E731
        table_rows = [table_row(r, args.epochs) for r in events("row")]
        tp_rows = [tp_row(e) for e in events("tp-importance")]
        train_desc = "all 60,000" if args.train_images is None else f"{args.train_images:,} (seeded)"
        bn = "BatchNorm batch statistics (`--train-bn`)" if args.train_bn else "BatchNorm statistics frozen (library default)"
        caption = (
            f"Top-1 on the full Fashion-MNIST test split (10,000 images). *Before* = the model as pruned; "
            f"*after 1* and *after {args.epochs}* = evaluation after epoch 1 and after epoch {args.epochs} of ONE "
            f"{args.epochs}-epoch run (cosine schedule over {args.epochs} epochs, not a separate 1-epoch schedule); "
            f"– = not fine-tuned. Every fine-tuned row goes through the same onnxprune loop "
            f"(`onnxprune.tune.finetune_model`): AdamW, lr 1e-3 cosine-annealed per step to 0, batch 128, "
            f"seed {args.seed}, no augmentation, {bn}, {train_desc} train-split images per epoch, "
            f"teacher = the unpruned model (KL at T=4); *labels + distillation* = 0.5 KL + 0.5 cross-entropy, "
            f"*distillation only* = KL alone, labels unused. *FLOPs removed* = Conv+Gemm MACs removed, counted by "
            f"onnxprune on the ONNX file, for every row; *TP ops removed* = `tp.utils.count_ops_and_params` on the "
            f"PyTorch model (Torch-Pruning rows). Torch-Pruning prunes uniformly (`global_pruning=False`) in steps "
            f"of 0.25% of the channels and stops at the step whose MACs reduction is closest to onnxprune's at the "
            f"same target (uniform ratios move in jumps of 1-5% of the MACs on these narrow models), then is "
            f"exported to ONNX (opset 17, BatchNorm unfused). Calibration for hrank, ldrf and sensitivity: "
            f"{args.calib} train-split images; no method sees the test split before evaluation.")
        status = "" if final else f" (in progress: {len(table_rows)} of {self.planned} rows)"
        rows = [r for r in self.log if r.get("event") == "row"]
        reused = [r for r in rows if r.get("reused")]
        if reused:
            dates = ", ".join(sorted({r["date"] for r in reused}))
            status += (f"; {len(rows) - len(reused)} rows measured in this run, {len(reused)} reused from the "
                       f"previous run's log (measured {dates}; `--resume`)")
        work = sum(r.get("prune_seconds", 0) + r.get("seconds", 0) for r in rows)
        status += f"; measuring every row from scratch takes about {work / 60:.0f} min of pruning and fine-tuning"
        page = Page("Fine-tuning after pruning: onnxprune vs Torch-Pruning", command=self.command)
        page.para(f"Machine: {self.machine}",
                  f"Run time: {seconds / 60:.1f} min{status}")
        page.section("Unpruned models").table(BASE_COLS, events("base"))
        page.section("Pruned, then fine-tuned", caption).grid(
            ["model", "FLOPs target", "method", "fine-tuning", "FLOPs removed", "TP ops removed",
             "params removed", "before", "after 1 epoch", f"after {args.epochs} epochs"], table_rows)
        if tp_rows:
            page.section("Torch-Pruning importances (before fine-tuning)",
                         "*Selection top-1*: 2,000 train-split images; the best importance other than magnitude on it "
                         f"is the `tp-best` row above (Taylor: loss gradients on {TAYLOR_IMAGES} train images, "
                         "recomputed after every pruning step). *Test top-1*: 10k test split.")
            page.grid(["model", "FLOPs target", "importance", "FLOPs removed", "TP ops removed",
                       "selection top-1", "test top-1"], tp_rows)
        return page.text()

    def write(self, seconds: float, final: bool = False) -> None:
        text = self.markdown(seconds, final)
        out = Path(self.args.out)
        out.write_text(text)
        write_log(out.with_suffix(".json"),
                  {"command": self.command, "machine": self.machine,
                   "settings": {k: getattr(self.args, k) for k in RESUME_KEYS},
                   "seconds": seconds, "complete": final,
                   "log": self.log + [dict(e, carried=True) for e in self.carry.values()]})
        if final:
            print(text)


BASE_COLS = [Col("model", "model"), Col("top-1", "top1", ".2%"), Col("MACs", "macs"), Col("params", "params")]


def render(args) -> None:
    """Rewrite the page from the JSON beside ``--out`` (its settings, command and records), run nothing."""
    path = Path(args.out).with_suffix(".json")
    res = read_log(path, None)
    if not isinstance(res, dict):
        raise SystemExit(f"error: no readable log at {path}")
    for k, v in res.get("settings", {}).items():
        setattr(args, k, v)
    report = Report.__new__(Report)  # no measuring run: nothing about this machine is asked
    report.args, report.planned, report.carry = args, 0, {}
    report.command, report.machine = res["command"], res.get("machine", "not recorded")
    report.log = [e for e in res["log"] if not e.get("carried")]
    Path(args.out).write_text(report.markdown(res["seconds"], final=res.get("complete", True)))


def _tp_version() -> str:
    from importlib.metadata import version

    return version("torch-pruning")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning)
        main()
