"""TensorFlow exports in the slow corpus (issue 15): Keras applications with random weights,
converted by tf2onnx as users convert them (``tf2onnx.convert.from_keras``; NHWC input ``[unk__N, H, W, 3]``, a Transpose to
NCHW, BatchNormalization folded or not, Keras' own names), each compressed with ``--data`` and
checked with onnx.checker, onnxruntime and the declared input and output.

TensorFlow is large and pins its own numpy and protobuf, so it never enters the project's
environment: the test creates a separate virtual environment (``ONNXPRUNE_TF_VENV``, default
``~/.cache/onnxprune-tests/tf-venv``) with tensorflow-cpu and tf2onnx from PyPI once, converts
there, and caches the ONNX files beside it. A failing install (no network) fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from test_cli import run_cli

TF_PACKAGES = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")
CACHE = Path(os.environ.get("ONNXPRUNE_TF_VENV", Path.home() / ".cache" / "onnxprune-tests" / "tf-venv"))
# (Keras application, input size): small inputs keep calibration and reconstruction quick on 2 cores.
APPS = [("MobileNetV2", 96), ("ResNet50", 64), ("EfficientNetB0", 64)]

CONVERT = r"""
import sys
import tensorflow as tf
import tf2onnx

name, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tf.keras.utils.set_random_seed(0)
model = getattr(tf.keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
spec = (tf.TensorSpec((None, size, size, 3), tf.float32, name="input_1"),)
tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=out)
"""


def _python() -> Path:
    """The TensorFlow environment's python, created on first use."""
    python = CACHE / "bin" / "python"
    stamp = CACHE / "installed.json"
    if stamp.exists() and json.loads(stamp.read_text()) == list(TF_PACKAGES) and python.exists():
        return python
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(CACHE)], check=True, capture_output=True, timeout=600)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *TF_PACKAGES],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"installing {' '.join(TF_PACKAGES)} failed (no network?):\n{done.stderr[-3000:]}"
    stamp.write_text(json.dumps(list(TF_PACKAGES)))
    return python


@pytest.fixture(scope="module")
def tf_python():
    return _python()


def _convert(python: Path, name: str, size: int) -> Path:
    out = CACHE.parent / f"{name}-{size}-from_keras-{'-'.join(p.split('==')[1] for p in TF_PACKAGES)}.onnx"
    if not out.exists():
        tmp = out.with_suffix(".tmp.onnx")
        done = subprocess.run([str(python), "-c", CONVERT, name, str(size), str(tmp)], capture_output=True, text=True,
                              timeout=1200, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
        assert done.returncode == 0, f"tf2onnx conversion of {name} failed:\n{done.stderr[-3000:]}"
        tmp.rename(out)
    return out


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.slow
@pytest.mark.parametrize("name,size", APPS, ids=[a[0] for a in APPS])
def test_keras_application_via_tf2onnx(capsys, tmp_path, tf_python, name, size):
    src = _convert(tf_python, name, size)
    original = onnx.load(src)
    (inp,) = [i for i in original.graph.input if i.name not in {t.name for t in original.graph.initializer}]
    dims = _dims(inp)
    assert dims[1:] == [size, size, 3] and (isinstance(dims[0], str) or dims[0] <= 0), dims  # NHWC, symbolic batch
    rng = np.random.default_rng(0)
    data = {inp.name: rng.uniform(-1, 1, (20, size, size, 3)).astype(np.float32)}
    np.savez(tmp_path / "d.npz", **data)
    code, out, err = run_cli(capsys, "compress", src, "--flops", "0.3", "--no-recover", "--data", tmp_path / "d.npz", "-o",
                             tmp_path / "p.onnx", "--json", "--latency-runs", "0")
    assert code == 0, err
    s = json.loads(out)
    assert s["flops_reduction"] >= 0.3 and s["evaluation"]["samples"] == 4
    pruned = onnx.load(tmp_path / "p.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    assert [_dims(i) for i in pruned.graph.input] == [_dims(i) for i in original.graph.input]
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    feed = {inp.name: data[inp.name][:2]}
    before, after = _session(original).run(None, feed), _session(pruned).run(None, feed)
    assert [a.shape for a in after] == [b.shape for b in before] == [(2, 10)]
    assert all(np.isfinite(a).all() for a in after)
