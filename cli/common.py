"""Options and helpers shared by the commands."""

from __future__ import annotations

import os
from pathlib import Path

import click

from onnxprune.errors import OnnxPruneError


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]] | None:
    """``NAME:1,3,224,224`` (repeatable) -> ``{"NAME": (1, 3, 224, 224)}``."""
    shapes = {}
    for v in values:
        name, sep, dims = v.rpartition(":")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = tuple(int(d) for d in dims.split(","))
            if any(d <= 0 for d in shapes[name]):
                raise ValueError
        except ValueError:
            raise click.BadParameter(f"{v!r}: expected NAME:D0,D1,... with positive integers", param_hint="--input-shape")
    return shapes or None


def output_path(model: str, output: str | None, suffix: str, force: bool) -> Path:
    """Default beside the input (``model.pruned.onnx``); never the input; existing needs --force."""
    if output == "-":  # issue 15.5: not a file named "-"
        raise click.BadParameter("'-' (standard output) is not supported for a model; give a file path",
                                 param_hint="-o/--output")
    src = Path(model)
    out = Path(output) if output else src.with_name(src.stem + suffix)
    if src.exists() and out.exists() and os.path.samefile(src, out):
        raise OnnxPruneError(f"output {out} is the input model; choose another path with -o")
    if out.exists() and not force:
        raise OnnxPruneError(f"{out} exists; pass --force to overwrite it")
    return out


def same_path(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name the same file (an existing one by identity, links included)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def side_output(path: str, option: str, others: list[tuple[str, Path]], force: bool) -> Path:
    """An extra output of a command (``--plan``, ``--report``), checked before any work: it is
    none of the run's other files (``others``: (what it is, path)), an existing file is replaced
    only with ``--force``, and its directory exists and is writable."""
    from onnxprune.model.files import check_writable

    out = Path(path)
    for what, other in others:
        if same_path(out, Path(other)):
            raise OnnxPruneError(f"{option} {out} is {what}; choose another path")
    if out.is_file() and not force:
        raise OnnxPruneError(f"{out} exists; pass --force to overwrite it")
    check_writable(out)
    return out


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
    help="Concrete shape for an input with symbolic dimensions (repeatable). A symbolic batch defaults to 1.",
)


def read_plan(path: str):
    """The plan at ``path``, or a one-line error naming the file."""
    from onnxprune import Plan

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OnnxPruneError(f"{path}: cannot read plan ({getattr(exc, 'strerror', None) or exc})") from exc
    return Plan.from_json(text)


def data_options(fn):
    """Options of the commands that read calibration/evaluation data."""
    options = [
        click.option("--data", type=click.Path(), help="Calibration data: .npz (arrays named after the inputs, "
                     "optional 'labels'), .npy, or a folder of images."),
        click.option("--eval-data", type=click.Path(), help="Evaluation data for --allocation sensitivity "
                     "(labels give accuracy drop; else fidelity to the original) [default: --data]."),
        click.option("--calib-batches", type=click.IntRange(min=1), help="Use at most N batches of --data for calibration."),
        click.option("--batch-size", type=click.IntRange(min=1),
                     help="Batch size [default: chosen from a 1 GiB activation budget]."),
        click.option("--eval-images", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Images of the evaluation data used per sensitivity evaluation."),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                     help="onnxruntime execution provider (cuda falls back to cpu with a message)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


class Progress:
    """``progress(stage, done, total)`` drawn as tqdm bars on stderr, only on a terminal."""

    def __init__(self, quiet: bool = False):
        import sys

        self.enabled = not quiet and sys.stderr.isatty()
        self.bars = {}

    def __enter__(self):
        return self if self.enabled else None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            bar = self.bars[stage] = tqdm(total=total or None, desc=stage, unit="it", leave=False, dynamic_ncols=True)
        bar.total = total or bar.total
        bar.update(done - bar.n)

    def __exit__(self, *exc):
        for bar in self.bars.values():
            bar.close()
        return False


# --------------------------------------------------------------------------- image preprocessing (issue 15.12)

MEAN_STD_PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}  # torchvision's, [0, 1] units


def _floats(ctx, param, value):
    """``0.5``, ``0.485,0.456,0.406`` or ``imagenet`` -> a tuple of floats (None stays None)."""
    if value is None:
        return None
    if value.lower() in MEAN_STD_PRESETS:
        return MEAN_STD_PRESETS[value.lower()][0 if param.name == "mean" else 1]
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected one value, one per channel (R,G,B) or "
                                 f"{'/'.join(MEAN_STD_PRESETS)}") from None


def _size(ctx, param, value):
    """``224`` or ``48,192`` (height, width)."""
    if value is None:
        return None
    try:
        dims = tuple(int(v) for v in value.split(","))
        if len(dims) not in (1, 2) or min(dims) < 1:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected S or H,W with positive integers") from None
    return dims[0] if len(dims) == 1 else dims


def image_options(fn):
    """``--input-size``, ``--mean``, ``--std``, ``--channel-order``, ``--crop-fraction`` for every
    command that reads data. The command receives ``with_images(path)``: the path wrapped with its
    preprocessing (``onnxprune.data.ImageSource``), or None for None."""
    import functools

    options = [
        click.option("--input-size", callback=_size, metavar="S|H,W",
                     help="Image folders: the size images are cropped to [default: the model's static height and "
                          "width; needed where they are symbolic]."),
        click.option("--mean", callback=_floats, metavar="M|R,G,B|imagenet",
                     help="Image folders: subtracted after pixels are scaled to [0, 1]; imagenet = 0.485,0.456,0.406 "
                          "[default: 0]."),
        click.option("--std", callback=_floats, metavar="S|R,G,B|imagenet",
                     help="Image folders: divides after --mean; imagenet = 0.229,0.224,0.225 [default: 1]."),
        click.option("--channel-order", type=click.Choice(["RGB", "BGR"]), default="RGB", show_default=True,
                     help="Image folders: the channel order the model was trained on (OpenCV/Caffe models: BGR)."),
        click.option("--crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.875, show_default=True,
                     help="Image folders: resize the shorter side to the size / F, then crop the centre "
                          "(ImageNet evaluation: 0.875; 1: no margin)."),
    ]

    @functools.wraps(fn)
    def wrapper(*args, input_size, mean, std, channel_order, crop_fraction, **kwargs):
        def with_images(path):
            if path is None:
                return None
            from onnxprune.data import ImageSource

            return ImageSource(str(path), input_size, mean, std, channel_order, crop_fraction)

        return fn(*args, with_images=with_images, **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper
