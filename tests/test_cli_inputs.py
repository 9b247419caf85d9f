"""A corpus of input declarations as real exporters write them (issue 15), each compressed with
``--data`` through the CLI and checked: onnx.checker, an onnxruntime run on the data, the same
input and output names, the same declared input shapes and the same output shapes at run time.

The forms come from models met in the wild: PaddleOCR's ``x: [-1, 3, ?, ?]`` (rapidocr 1.4.4),
ddddocr's ``input1: [1, 1, 64, W]`` (a fixed batch of 1 with a symbolic width), PyTorch's named
symbolic dims, a batch declared 0, several inputs, a uint8 image input, and tf2onnx's NHWC input
(``unk__N`` batch, then a Transpose to NCHW).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from graphs import G
from test_cli import run_cli


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def _value_info(name, elem, dims):
    vi = helper.make_tensor_value_info(name, elem, None)
    shape = vi.type.tensor_type.shape
    for d in dims:  # make_tensor_value_info refuses nothing, but build dims by hand to keep -1 and 0 as given
        dim = shape.dim.add()
        if isinstance(d, int):
            dim.dim_value = d
        else:
            dim.dim_param = d
    return vi


def _finish(g: G, inputs, out) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, "corpus", inputs,
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], g.inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    m.ir_version = 8
    m.graph.output[0].CopyFrom(onnx.shape_inference.infer_shapes(m).graph.output[0])
    onnx.checker.check_model(m, full_check=True)
    return m


def _body(g: G, x, cin):
    a = g.cbr(x, cin, 8)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 8, 8), 8, 8), 8), a])])
    return g.head(g.cbr(b, 8, 16, stride=2), 16)


def nchw(batch, c=3, h=16, w=16):
    g = G(1)
    return _finish(g, [_value_info("x", TensorProto.FLOAT, [batch, c, h, w])], _body(g, "x", c))


def several_inputs():
    g = G(2)
    a, b = g.cbr("x", 3, 8), g.cbr("y", 3, 8)
    s = g.op("Relu", [g.op("Add", [a, b])])
    out = g.head(g.cbr(s, 8, 16, stride=2), 16)
    return _finish(g, [_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16]),
                       _value_info("y", TensorProto.FLOAT, ["batch", 3, 16, 16])], out)


def uint8_image():
    g = G(3)
    x = g.op("Div", [g.op("Cast", ["x"], to=TensorProto.FLOAT), g.const(np.float32(255.0))])
    return _finish(g, [_value_info("x", TensorProto.UINT8, ["batch", 3, 16, 16])], _body(g, x, 3))


def tf2onnx_nhwc():
    """What tf2onnx writes for a Keras model: ``input_1: [unk__12, 16, 16, 3]`` then Transpose."""
    g = G(4)
    x = g.op("Transpose", ["input_1"], perm=[0, 3, 1, 2])
    return _finish(g, [_value_info("input_1", TensorProto.FLOAT, ["unk__12", 16, 16, 3])], _body(g, x, 3))


def paddle_biases():
    """What paddle2onnx writes (PP-OCR): convs without bias, then Add of a Reshape'd [1, C, 1, 1]
    constant; a residual Add joins two such branches."""
    g = G(6)

    def conv_bias(x, cin, cout, stride=1):
        y = g.conv(x, cin, cout, bias=False, stride=stride)
        b = g.op("Reshape", [g.const(g.rng.standard_normal(cout).astype(np.float32)), g.const(np.array([1, cout, 1, 1]))])
        return g.op("Add", [y, b])

    a = g.op("Relu", [conv_bias("x", 3, 8)])
    r = g.op("Relu", [g.op("Add", [conv_bias(g.op("Relu", [conv_bias(a, 8, 8)]), 8, 8), a])])
    out = g.head(g.op("Relu", [conv_bias(r, 8, 16, stride=2)]), 16)
    return _finish(g, [_value_info("x", TensorProto.FLOAT, [-1, 3, "?", "?"])], out)


# (id, model builder, {input: data shape}, dtype)
CORPUS = [
    ("symbolic names", lambda: nchw("N", h="H", w="W"), {"x": (12, 3, 16, 16)}, np.float32),
    ("batch -1 and ? dims (PP-OCR cls)", lambda: nchw(-1, h="?", w="?"), {"x": (12, 3, 16, 24)}, np.float32),
    ("batch -1 static spatial", lambda: nchw(-1), {"x": (12, 3, 16, 16)}, np.float32),
    ("batch 0", lambda: nchw(0), {"x": (12, 3, 16, 16)}, np.float32),
    ("fixed batch 1, symbolic width (ddddocr)", lambda: nchw(1, c=1, w="image_width"), {"x": (6, 1, 16, 24)},
     np.float32),
    ("several inputs", several_inputs, {"x": (12, 3, 16, 16), "y": (12, 3, 16, 16)}, np.float32),
    ("uint8 image", uint8_image, {"x": (12, 3, 16, 16)}, np.uint8),
    ("NHWC from tf2onnx", tf2onnx_nhwc, {"input_1": (12, 16, 16, 3)}, np.float32),
    ("paddle2onnx Reshape'd biases", paddle_biases, {"x": (12, 3, 16, 24)}, np.float32),
]


def test_sensitivity_on_reshaped_constant_biases(capsys, tmp_path, monkeypatch):
    """The sensitivity evaluator caches the tensors entering the changed part of the graph; a
    Reshape'd constant bias among them keeps its [1, C, 1, 1] shape (declared [N, C, 1, 1] it let
    onnxruntime fuse Conv + Add as same-shape and fail on PP-OCR's text-direction classifier)."""
    from onnxprune.runtime.frontier import SuffixCache

    built, build = [], SuffixCache.build.__func__

    def spy(cls, *args):
        focus = build(cls, *args)
        built.append(focus)
        return focus

    monkeypatch.setattr(SuffixCache, "build", classmethod(spy))
    src = tmp_path / "p.onnx"
    onnx.save(paddle_biases(), src)
    np.savez(tmp_path / "d.npz", **_data({"x": (12, 3, 16, 24)}, np.float32))
    code, out, err = run_cli(capsys, "compress", src, "--flops", "0.3", "--no-recover", "--data", tmp_path / "d.npz", "--allocation",
                             "sensitivity", "-o", tmp_path / "q.onnx", "--latency-runs", "0", "--json")
    assert code == 0, err
    assert __import__("json").loads(out)["sensitivity"]["evaluations"] > 0
    declared = {i.name: i.shape for focus in built if focus is not None for i in focus.sess.get_inputs()}
    biases = {k: v for k, v in declared.items() if k.startswith("reshape_")}
    assert biases and all(v[0] == 1 and v[2:] == [1, 1] for v in biases.values()), declared
    assert any(v[0] == "N" for k, v in declared.items() if k.startswith("relu_")), declared


def _data(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return {k: rng.integers(0, 256, s, dtype=np.uint8) for k, s in shapes.items()}
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}


def _session(model):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("build, shapes, dtype", [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_declared_input_forms_compress_with_data(capsys, tmp_path, build, shapes, dtype):
    original = build()
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(original, src)
    data = _data(shapes, dtype)
    np.savez(tmp_path / "d.npz", **data)
    code, stdout, err = run_cli(capsys, "compress", src, "--flops", "0.3", "--no-recover", "--data", tmp_path / "d.npz", "-o", out)
    assert code == 0, err
    pruned = onnx.load(out)
    onnx.checker.check_model(pruned, full_check=True)
    assert [i.name for i in pruned.graph.input] == [i.name for i in original.graph.input]
    declared = [["batch" if (a, d) == (0, 0) else d for a, d in enumerate(_dims(i))] for i in original.graph.input]
    assert [_dims(i) for i in pruned.graph.input] == declared  # a batch declared 0 becomes a named one
    assert [o.name for o in pruned.graph.output] == [o.name for o in original.graph.output]
    batch = 1 if _dims(original.graph.input[0])[0] == 1 else 4
    feed = {k: v[:batch] for k, v in data.items()}
    runnable = onnx.ModelProto()
    runnable.CopyFrom(original)
    for vi in runnable.graph.input:  # onnxruntime runs a batch declared 0 only with 0 samples
        if _dims(vi)[0] == 0:
            vi.type.tensor_type.shape.dim[0].dim_param = "batch"
    before, after = _session(runnable).run(None, feed), _session(pruned).run(None, feed)
    assert [a.shape for a in after] == [b.shape for b in before]
    assert all(np.isfinite(a).all() for a in after)
    assert "MACs" in stdout and "-0.0%" not in stdout.splitlines()[0]


def test_shape_hint_keeps_static_dims_and_works(capsys, tmp_path):
    """Issue 15.3: the hint for ``[1, 1, 16, W]`` is ``x:1,1,16,224``, and following it works."""
    src = tmp_path / "m.onnx"
    onnx.save(nchw(1, c=1, w="image_width"), src)
    code, _, err = run_cli(capsys, "compress", src, "--flops", "0.3")
    assert code == 1 and "pass --input-shape x:1,1,16,224 " in err, err
    hint = err.split("--input-shape ")[1].split()[0]
    code, _, err = run_cli(capsys, "compress", src, "--flops", "0.3", "--input-shape", hint)
    assert code == 0, err


def test_fixed_batch_one_reconstructs_with_the_declared_batch(tmp_path):
    """Issue 15.2: every onnxruntime run over a model declaring batch 1 uses batch 1."""
    from onnxprune import analyse, load_model
    from onnxprune.data import declared_batch, input_specs
    from onnxprune.pipeline import recon_batch_size

    proto = nchw(1, c=1, w="image_width")
    assert declared_batch(input_specs(proto)) == 1
    analysis = analyse(load_model(proto, {"x": (1, 1, 16, 24)}))
    assert recon_batch_size(analysis) == 1 and recon_batch_size(analysis, 32) == 1
    assert declared_batch(input_specs(nchw(-1))) is None and input_specs(nchw(-1))[0].static_dim(0) is None


# --------------------------------------------------------------------------- the real models (slow)

OCR_WHEELS = {  # the wheels issue 15 reproduced items 1-3 with; downloaded, never committed
    "rapidocr-onnxruntime==1.4.4": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx", {"x": (12, 3, 48, 192)}),
    "ddddocr==1.6.1": ("ddddocr/common.onnx", {"input1": (6, 1, 64, 128)}),
}


@pytest.fixture(scope="module")
def ocr_models(tmp_path_factory):
    """The two models from PyPI (pip download --no-deps). No network is a failure, not a skip:
    this test exists to run the real files."""
    import subprocess
    import sys
    import zipfile

    root = tmp_path_factory.mktemp("ocr")
    out = {}
    for spec, (member, shapes) in OCR_WHEELS.items():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", spec, "-d", str(root)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"pip download {spec} failed (no network?):\n{done.stderr[-2000:]}"
        wheel = next(root.glob(spec.split("==")[0].replace("-", "_") + "-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            target = root / Path(member).name
            target.write_bytes(z.read(member))
        out[spec] = (target, shapes)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(OCR_WHEELS))
def test_real_ocr_models(capsys, tmp_path, ocr_models, spec):
    """Items 1-3 on the real files: compress --data (default HRank + LDRF) succeeds and keeps the
    declarations; the hint for the model without data keeps its static dims; the PP-OCR classifier
    also runs the sensitivity allocation (local reconstruction)."""
    src, shapes = ocr_models[spec]
    original = onnx.load(src)
    data = _data(shapes, np.float32)
    np.savez(tmp_path / "d.npz", **data)
    extra = ["--allocation", "sensitivity", "--eval-images", "8"] if "rapidocr" in spec else []
    code, out, err = run_cli(capsys, "compress", src, "--flops", "0.3", "--no-recover", "--data", tmp_path / "d.npz", "-o",
                             tmp_path / "p.onnx", "--latency-runs", "0", *extra)
    assert code == 0, err
    pruned = onnx.load(tmp_path / "p.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    assert [_dims(i) for i in pruned.graph.input] == [_dims(i) for i in original.graph.input]
    feed = {k: v[:1] for k, v in data.items()}
    assert [a.shape for a in _session(pruned).run(None, feed)] == [b.shape for b in _session(original).run(None, feed)]
    if "ddddocr" in spec:
        code, _, err = run_cli(capsys, "compress", src, "--flops", "0.3", "-o", tmp_path / "q.onnx")
        assert code == 1 and "pass --input-shape input1:1,1,64,224 " in err, err


def test_image_folder_feeds_an_nhwc_input(capsys, tmp_path):
    """A Keras model converted by tf2onnx takes [N, H, W, 3]: an image folder feeds it the same
    pixels as an NCHW model, transposed, and compress runs on it with the image options."""
    from PIL import Image

    from onnxprune.data import ImageSource, input_specs, load_data

    rng = np.random.default_rng(0)
    folder = tmp_path / "img"
    for c in range(2):
        (folder / f"c{c}").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / f"c{c}" / f"{i}.png")
    src = ImageSource(str(folder), None, (0.5,), (0.5,), "RGB", 0.875)
    nhwc = next(load_data(src, input_specs(tf2onnx_nhwc())).batches())["input_1"]
    nchw_ = next(load_data(src, input_specs(nchw("N"))).batches())["x"]
    assert nhwc.shape == (12, 16, 16, 3) and nhwc.flags.c_contiguous
    np.testing.assert_array_equal(nhwc, nchw_.transpose(0, 2, 3, 1))
    onnx.save(tf2onnx_nhwc(), tmp_path / "k.onnx")
    code, out, err = run_cli(capsys, "compress", tmp_path / "k.onnx", "--flops", "0.3", "--no-recover", "--data", folder, "--mean", "0.5",
                             "--std", "0.5", "-o", tmp_path / "p.onnx", "--latency-runs", "0", "--json")
    assert code == 0, err
    assert __import__("json").loads(out)["evaluation"]["after"]["top1"] >= 0
