"""Data sources (onnxprune.data): formats, batching, image folders, and one-line errors naming what is wrong."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxprune.data import InputSpec, input_specs, load_data
from onnxprune.errors import DataError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

SPEC = InputSpec("x", ("N", 3, 8, 8), np.dtype(np.float32))


def images(n=10, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)


def concat(batches, name="x"):
    return np.concatenate([b[name] for b in batches])


# --------------------------------------------------------------------------- specs


def test_input_specs_skip_initializers_and_keep_symbolic_dims():
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, None, 5]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("w", TensorProto.FLOAT, [5], np.zeros(5))],
    )
    (spec,) = input_specs(helper.make_model(graph))
    assert spec == InputSpec("x", ("batch", 3, None, 5), np.dtype(np.float32))
    assert spec.shape_text() == "[batch,3,?,5]"


# --------------------------------------------------------------------------- arrays


def test_npz_named_arrays_with_labels_and_batching(tmp_path):
    x, labels = images(10), np.arange(10)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    data = load_data(tmp_path / "d.npz", [SPEC], batch_size=4)
    assert data.num_samples == 10
    np.testing.assert_array_equal(data.labels, labels)
    sizes = [len(b["x"]) for b in data.batches()]
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(concat(data.batches(3)), x)
    np.testing.assert_array_equal(concat(data.batches(3)), x)  # restartable
    assert load_data(tmp_path / "d.npz", [SPEC], labels=False).labels is None


def test_single_array_npz_and_npy_feed_a_single_input(tmp_path):
    x = images(5)
    np.savez(tmp_path / "one.npz", whatever=x)
    np.save(tmp_path / "one.npy", x)
    for name in ("one.npz", "one.npy"):
        np.testing.assert_array_equal(concat(load_data(tmp_path / name, [SPEC]).batches()), x)


def test_limit_take_and_float64_cast(tmp_path):
    x = images(10).astype(np.float64)
    data = load_data({"x": x, "labels": np.arange(10)}, [SPEC], limit=6)
    assert data.num_samples == 6 and len(data.labels) == 6
    got = concat(data.batches(4))
    assert got.dtype == np.float32 and len(got) == 6
    assert data.take(2).num_samples == 2 and data.num_samples == 6


def test_multi_input_npz(tmp_path):
    specs = [SPEC, InputSpec("mask", ("N", 4), np.dtype(np.int64))]
    np.savez(tmp_path / "m.npz", x=images(3), mask=np.ones((3, 4), np.int32))
    batch = next(load_data(tmp_path / "m.npz", specs).batches())
    assert batch["mask"].dtype == np.int64 and set(batch) == {"x", "mask"}


# --------------------------------------------------------------------------- iterables


def test_iterable_of_dicts_is_rebatched_and_rereadable():
    x = images(11)
    chunks = [{"x": x[:3]}, {"x": x[3:4]}, {"x": x[4]}, {"x": x[5:]}]  # x[4]: one sample, no batch axis
    data = load_data(chunks, [SPEC])
    assert data.num_samples == 11
    assert [len(b["x"]) for b in data.batches(4)] == [4, 4, 3]
    np.testing.assert_array_equal(concat(data.batches(4)), x)
    np.testing.assert_array_equal(concat(data.batches()), x)  # as given
    assert data.take(5).num_samples == 5
    np.testing.assert_array_equal(concat(data.take(5).batches(2)), x[:5])


def test_one_shot_generator_can_be_read_once():
    data = load_data(({"x": b} for b in images(4)), [SPEC])
    assert data.num_samples is None
    assert len(concat(data.batches(3))) == 4
    with pytest.raises(DataError, match="one-shot"):
        list(data.batches())


def test_iterable_batches_are_checked():
    data = load_data([{"x": images(2)}, {"x": images(2)[:, :2]}], [SPEC])
    with pytest.raises(DataError, match=r"input 'x' \(batch 1\): expected shape \[N,3,8,8\], given \(2, 2, 8, 8\)"):
        list(data.batches())


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "x, pattern",
    [
        (images(2)[:, 0], r"input 'x': expected rank 4 \[N,3,8,8\], given shape \(2, 8, 8\)"),
        (np.zeros((2, 3, 8, 9), np.float32), r"input 'x': expected shape \[N,3,8,8\], given \(2, 3, 8, 9\) \(dim 3 is 9, expected 8\)"),
        (np.zeros((2, 3, 8, 8), np.uint8), r"input 'x': expected dtype float32, given uint8 \(scale the data"),
        (np.zeros((2, 3, 8, 8), np.int64), r"input 'x': expected dtype float32, given int64"),
        (np.zeros((2, 3, 8, 8), np.complex64), r"input 'x': expected dtype float32, given complex64"),
        (np.zeros((0, 3, 8, 8), np.float32), r"no samples in the data"),
    ],
)
def test_array_errors_name_input_expected_and_given(x, pattern):
    with pytest.raises(DataError, match=pattern):
        load_data({"x": x}, [SPEC])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    x = images(4)
    x[2, 1, 0, 0] = bad
    with pytest.raises(DataError, match=r"input 'x': data contains NaN or Inf \(1 values, first in sample 2\)"):
        load_data({"x": x}, [SPEC])


def test_missing_input_and_labels_mismatch(tmp_path):
    np.savez(tmp_path / "d.npz", a=images(2), b=images(2))
    with pytest.raises(DataError, match=r"input 'x' is missing from '.*d.npz' \(given: a, b\)"):
        load_data(tmp_path / "d.npz", [SPEC])
    with pytest.raises(DataError, match=r"labels in the data: expected 4 values \(one per sample\), given 3"):
        load_data({"x": images(4), "labels": np.arange(3)}, [SPEC])
    with pytest.raises(DataError, match="integer class indices"):
        load_data({"x": images(2), "labels": np.array([0.5, 1.0])}, [SPEC])


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    (tmp_path / "text.npz").write_text("hello")
    for name in ("junk.npz", "text.npz"):
        with pytest.raises(DataError, match=rf"cannot read data file '.*{name}': not an .npy or .npz file"):
            load_data(tmp_path / name, [SPEC])
    with pytest.raises(DataError, match="no such file"):
        load_data(tmp_path / "absent.npz", [SPEC])
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(DataError, match="no samples"):
        load_data(tmp_path / "empty.npz", [SPEC])


def test_one_array_for_two_inputs(tmp_path):
    np.save(tmp_path / "a.npy", images(2))
    specs = [SPEC, InputSpec("y", ("N", 3, 8, 8), np.dtype(np.float32))]
    with pytest.raises(DataError, match="one array but the model has 2 inputs"):
        load_data(tmp_path / "a.npy", specs)


def test_integer_inputs_must_fit():
    spec = InputSpec("ids", ("N", 4), np.dtype(np.int32))
    data = load_data({"ids": np.full((2, 4), 2**40, np.int64)}, [spec])
    with pytest.raises(DataError, match="values that do not fit"):
        list(data.batches())


# --------------------------------------------------------------------------- images


def write_png(path, color, size=(12, 10), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_image_folder_sorted_scaled_normalised(tmp_path):
    write_png(tmp_path / "b.png", (0, 255, 0))
    write_png(tmp_path / "a.png", (255, 0, 0), size=(30, 20))
    write_png(tmp_path / "c.jpg", (0, 0, 255))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_data(tmp_path, [SPEC])
    assert data.num_samples == 3 and data.labels is None
    x = concat(data.batches(2))
    assert x.shape == (3, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0].mean(axis=(1, 2)), [1, 0, 0], atol=1e-6)  # a.png first
    np.testing.assert_allclose(x[1].mean(axis=(1, 2)), [0, 1, 0], atol=1e-6)
    np.testing.assert_allclose(x[2].mean(axis=(1, 2)), [0, 0, 1], atol=0.02)  # jpeg is lossy

    norm = concat(load_data(tmp_path, [SPEC], mean=(0.5, 0.5, 0.5), std=0.25).batches())
    np.testing.assert_allclose(norm, (x - 0.5) / 0.25, atol=1e-5)
    bgr = concat(load_data(tmp_path, [SPEC], channel_order="BGR").batches())
    np.testing.assert_allclose(bgr, x[:, ::-1], atol=1e-6)


def test_image_center_crop_after_resize(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 6, 20))  # white left strip: cropped away
    img.save(tmp_path / "wide.png")
    x = concat(load_data(tmp_path, [SPEC], crop_fraction=1.0).batches())
    # shorter side 20 -> 8, width 40 -> 16, centre 8 columns = columns 4..12 of 16: all black
    assert x.shape == (1, 3, 8, 8) and x.max() == 0


def test_image_folder_class_directories_give_labels(tmp_path):
    write_png(tmp_path / "cat" / "1.png", (9, 9, 9))
    write_png(tmp_path / "cat" / "2.png", (9, 9, 9))
    write_png(tmp_path / "ant" / "z.png", (9, 9, 9))
    data = load_data(tmp_path, [SPEC])
    np.testing.assert_array_equal(data.labels, [0, 1, 1])  # sorted classes: ant, cat
    assert data.take(1).labels.tolist() == [0]


def test_grayscale_model_and_input_size(tmp_path):
    write_png(tmp_path / "g.png", (255, 255, 255))
    spec = InputSpec("x", ("N", 1, "H", "W"), np.dtype(np.float32))
    x = concat(load_data(tmp_path, [spec], input_size=(6, 4)).batches())
    assert x.shape == (1, 1, 6, 4)
    np.testing.assert_allclose(x, 1.0)
    with pytest.raises(DataError, match=r"input 'x' has a symbolic height or width \[N,1,H,W\]; give input_size"):
        load_data(tmp_path, [spec])
    with pytest.raises(DataError, match="input size 9x9 does not match"):
        load_data(tmp_path, [SPEC], input_size=9)


def test_image_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    data = load_data(tmp_path, [SPEC])
    with pytest.raises(DataError, match=r"cannot read image '.*broken.png'"):
        list(data.batches())
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no samples in '.*empty': no image files"):
        load_data(empty, [SPEC])
    flat = InputSpec("x", ("N", 64), np.dtype(np.float32))
    with pytest.raises(DataError, match=r"NCHW or NHWC input with 1 or 3 channels, the model expects \[N,64\]"):
        load_data(tmp_path, [flat])
    with pytest.raises(DataError, match="mean: expected 1 or 3 values"):
        load_data(tmp_path, [SPEC], mean=(0.1, 0.2))


def test_model_specs_roundtrip_with_onnx_file(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    specs = input_specs(onnx.load(tmp_path / "m.onnx"))
    assert load_data({"x": images(3)}, specs).num_samples == 3
