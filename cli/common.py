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
    src = Path(model)
    out = Path(output) if output else src.with_name(src.stem + suffix)
    if src.exists() and out.exists() and os.path.samefile(src, out):
        raise OnnxPruneError(f"output {out} is the input model; choose another path with -o")
    if out.exists() and not force:
        raise OnnxPruneError(f"{out} exists; pass --force to overwrite it")
    return out


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:D0,D1,...",
    help="Concrete shape for an input with symbolic dimensions (repeatable). A symbolic batch defaults to 1.",
)
