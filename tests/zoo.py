"""torchvision classification models exported to ONNX, cached per test session.

torchvision 0.28 is a CUDA build; with the CPU torch used here it imports only after its
custom op schemas are defined, which ``import_torchvision`` does once.
"""

from __future__ import annotations

import functools
from pathlib import Path


@functools.cache
def import_torchvision():
    import torch

    try:
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        import_torchvision.lib = lib  # keep the schema registration alive
    except RuntimeError:  # already defined by another module in this process
        pass
    import torchvision

    return torchvision


def export(name: str, directory: Path, size: int = 224, dynamo: bool = False) -> Path:
    """Export torchvision model ``name`` (random init, eval mode) with a symbolic batch."""
    import torch

    path = directory / f"{name}{'_dynamo' if dynamo else ''}_{size}.onnx"
    if path.exists():
        return path
    tv = import_torchvision()
    torch.manual_seed(0)
    model = getattr(tv.models, name)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["logits"])
    else:
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path
