"""The real-model benchmark's smallest model end to end: PaddleOCR's text-direction classifier
from the rapidocr-onnxruntime wheel (fetched with pip into the benchmark cache), 32 rendered
text lines. The original must read them (or the benchmark's task is no test), and `onnxprune
compress --data` must prune it through the CLI into a valid model that still reads them."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

pytestmark = pytest.mark.slow


def test_ppocr_direction_classifier_prunes_and_keeps_reading(tmp_path):
    import realmodels

    name = "ppocr_cls"
    path = realmodels.ZOO[name].path()
    x, labels = realmodels.dataset(name, "eval", 32)
    calib, _ = realmodels.dataset(name, "calib", 32)
    assert x.shape == (32, 3, 48, 192) and sorted(set(labels)) == [0, 1]
    original = realmodels.predict(name, path, x)
    assert realmodels.score(name, original, labels)["accuracy"] >= 0.9

    data = tmp_path / "calib.npz"
    np.savez(data, **{realmodels.input_name(path): calib})
    out = tmp_path / "cls.pruned.onnx"
    proc = subprocess.run(
        [sys.executable, "-c", "from onnxprune.cli.main import main; main()", "compress", str(path),
         "--flops", "0.3", "--no-recover", "--data", str(data), *realmodels.ZOO[name].compress_args, "-o", str(out), "--json", "-q"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["flops_reduction"] >= 0.3
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    pruned = realmodels.predict(name, out, x)
    scores = realmodels.score(name, pruned, labels, original)
    assert scores["accuracy"] >= 0.8 and scores["agreement"] >= 0.8, scores
