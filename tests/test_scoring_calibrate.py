"""Scoring stage. Invariant: ``calibrate()`` streams exactly the activations onnxruntime
computes for the tensor (checked on small graphs built in code), whatever the batching, the
providers or the model size (models over 2 GiB go through a temporary file)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.scoring.calibrate import (
    activation_bytes_per_image,
    calibrate,
    evaluate_top1,
    observed_model,
    run_model,
)
from onnxprune.runtime.session import open_session, resolve_providers
from onnxprune.scoring.collectors import (
    ApozCollector,
    CrossGramCollector,
    GramCollector,
    MeanActivationCollector,
    RankCollector,
    matrix_ranks,
)
from onnxprune.data import input_specs, load_data
from onnxprune.errors import DataError, ModelError, OnnxPruneError


def small_cnn(batch="N", seed=0) -> onnx.ModelProto:
    """x[N,3,16,16] -> Conv 3x3 -> Relu (r1) -> Conv 3x3/2 -> Relu (r2) -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.5, name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 5])],
        [init("w1", 4, 3, 3, 3), init("b1", 4), init("w2", 6, 4, 3, 3), init("b2", 6),
         init("w3", 5, 6), init("b3", 5)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def inputs(n=13, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def direct(model: onnx.ModelProto, tensor: str, x: np.ndarray) -> np.ndarray:
    """The reference: onnxruntime with ``tensor`` made a graph output by hand."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([tensor], {"x": x})[0]


def test_collector_results_equal_reference_on_direct_outputs():
    model, x = small_cnn(), inputs()
    before = model.SerializeToString()
    requests = {
        "r1": [RankCollector(), ApozCollector(), MeanActivationCollector(), GramCollector()],
        "r2": [RankCollector(), GramCollector()],
    }
    result = calibrate(model, requests, load_data({"x": x}, input_specs(model)), batch_size=4)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert result.num_images == 13 and result.provider == "CPUExecutionProvider"
    assert result.batch_size == 4 and result.wall_time > 0 and result.warnings == ()
    for tensor in ("r1", "r2"):
        a = direct(model, tensor, x)
        np.testing.assert_array_equal(result.stats[tensor]["rank"], matrix_ranks(a, "svd").mean(axis=0))
        s = np.moveaxis(a, 1, -1).reshape(-1, a.shape[1]).astype(np.float64)
        np.testing.assert_allclose(result.stats[tensor]["gram"].second_moment, s.T @ s / len(s), rtol=1e-10)
    a = direct(model, "r1", x)
    np.testing.assert_allclose(result.stats["r1"]["apoz"], (a == 0).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(result.stats["r1"]["mean_activation"], np.abs(a).mean(axis=(0, 2, 3)), rtol=1e-6)


def test_results_do_not_depend_on_batch_size():
    model, x = small_cnn(), inputs(17)
    runs = [
        calibrate(model, {"r1": [RankCollector(), GramCollector()]}, [{"x": x}], batch_size=b)
        for b in (1, 5, 17)
    ]
    for r in runs[1:]:
        np.testing.assert_array_equal(r.stats["r1"]["rank"], runs[0].stats["r1"]["rank"])
        np.testing.assert_allclose(r.stats["r1"]["gram"].second_moment, runs[0].stats["r1"]["gram"].second_moment,
                                   rtol=1e-12)


def test_observed_model_outputs_exactly_the_requested_tensors():
    model = small_cnn()
    observed, types = observed_model(model, ["r1"])
    assert [o.name for o in observed.graph.output] == ["r1"]
    assert [n.op_type for n in observed.graph.node] == ["Conv", "Relu"]  # the rest is not needed
    assert {t.name for t in observed.graph.initializer} == {"w1", "b1"}
    assert activation_bytes_per_image(types["r1"]) == 4 * 16 * 16 * 4
    assert len(model.graph.node) == 7


def test_memory_budget_picks_the_batch_size():
    model, x = small_cnn(), inputs(10)
    per_image = 4 * 16 * 16 * 4 + 6 * 8 * 8 * 4
    requests = lambda: {"r1": [ApozCollector()], "r2": [ApozCollector()]}  # noqa: E731
    assert calibrate(model, requests(), [{"x": x}], memory_budget=3 * per_image, overlap=False).batch_size == 3
    # Overlapping keeps three batches alive (collectors, queue, onnxruntime): a third each.
    assert calibrate(model, requests(), [{"x": x}], memory_budget=9 * per_image).batch_size == 3
    assert calibrate(model, requests(), [{"x": x}], memory_budget=1).batch_size == 1
    assert calibrate(model, requests(), [{"x": x}]).batch_size == 10  # all of it fits in the default budget


def test_static_batch_model_is_fed_one_image_at_a_time():
    model = small_cnn(batch=1)
    result = calibrate(model, {"r2": [RankCollector()]}, [{"x": inputs(4)}])
    assert result.batch_size == 1 and result.num_images == 4


def test_cuda_request_on_cpu_machine_falls_back_with_a_warning():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    providers, warnings = resolve_providers(["CUDAExecutionProvider"])
    assert providers == ["CPUExecutionProvider"]
    result = calibrate(small_cnn(), {"r1": [ApozCollector()]}, [{"x": inputs(3)}],
                       providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert result.provider == "CPUExecutionProvider"
    assert len(result.warnings) == 1 and "CUDAExecutionProvider is not available" in result.warnings[0]
    assert resolve_providers(None) == (["CPUExecutionProvider"], [])


def test_progress_max_batches_and_early_stop():
    model = small_cnn()
    x = np.repeat(inputs(1), 40, axis=0)  # identical images: ranks converge at once
    calls = []
    result = calibrate(model, {"r1": [RankCollector()]}, [{"x": x}], batch_size=4, max_batches=3,
                       progress=lambda done, total: calls.append((done, total)))
    assert result.num_images == 12 and calls == [(4, 12), (8, 12), (12, 12)]

    rank = RankCollector(patience=8, tol=0.01)
    result = calibrate(model, {"r1": [rank]}, [{"x": x}], batch_size=4, stop_when_converged=True)
    assert result.converged and result.num_images == 12 and rank.images == 12
    # A collector without a notion of convergence keeps the pass going to the end.
    result = calibrate(model, {"r1": [RankCollector(patience=8, tol=0.01), GramCollector()]}, [{"x": x}],
                       batch_size=4, stop_when_converged=True)
    assert not result.converged and result.num_images == 40


def test_graph_input_and_tensor_pairs():
    model, x = small_cnn(), inputs(6)
    result = calibrate(model, {"x": [MeanActivationCollector()], ("r1", "x"): [CrossGramCollector()]},
                       [{"x": x}], batch_size=4)
    np.testing.assert_allclose(result.stats["x"]["mean_activation"], np.abs(x).mean(axis=(0, 2, 3)), rtol=1e-6)
    a = direct(model, "r1", x)
    sa = np.moveaxis(a, 1, -1).reshape(-1, 4).astype(np.float64)
    sx = np.moveaxis(x, 1, -1).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(result.stats[("r1", "x")]["cross_gram"].cross, sa.T @ sx / len(sa), rtol=1e-10)


def test_untyped_tensor_is_declared_float():
    # com.microsoft ops are unknown to onnx shape inference, so "g" has no inferred type.
    model = small_cnn()
    model.graph.node.insert(2, helper.make_node("Gelu", ["r1"], ["g"], domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    observed, types = observed_model(model, ["g"])
    assert types["g"].type.tensor_type.elem_type == TensorProto.FLOAT
    result = calibrate(model, {"g": [ApozCollector()]}, [{"x": inputs(3)}])
    assert result.stats["g"]["apoz"].shape == (4,)
    assert calibrate(model, {"g": [ApozCollector()]}, [{"x": inputs(3)}]).batch_size == 3


def test_bad_requests_are_one_line_errors():
    model = small_cnn()
    with pytest.raises(ModelError, match="tensor 'nope' is not produced by any node"):
        calibrate(model, {"nope": [ApozCollector()]}, [{"x": inputs(2)}])
    with pytest.raises(ModelError, match="tensor 'w1' is a constant"):
        calibrate(model, {"w1": [ApozCollector()]}, [{"x": inputs(2)}])
    with pytest.raises(OnnxPruneError, match=r"tensor 'logits' \(rank\): rank needs \[N, C, H, W\]"):
        calibrate(model, {"logits": [RankCollector()]}, [{"x": inputs(2)}])
    with pytest.raises(OnnxPruneError, match="nothing to calibrate"):
        calibrate(model, {}, [{"x": inputs(2)}])
    with pytest.raises(OnnxPruneError, match="share a name"):
        calibrate(model, {"r1": [ApozCollector(), ApozCollector()]}, [{"x": inputs(2)}])
    with pytest.raises(DataError, match=r"input 'x' \(batch 0\): expected shape \[N,3,16,16\]"):
        calibrate(model, {"r1": [ApozCollector()]}, [{"x": inputs(2)[:, :, :8]}])


def test_external_data_models(tmp_path):
    model = small_cnn()
    path = tmp_path / "m.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model(save_as_external_data=True) rewrites the proto it is given
    onnx.save_model(copy, str(path), save_as_external_data=True, location="m.data", size_threshold=0)
    x = inputs(5)
    expected = calibrate(model, {"r2": [RankCollector()]}, [{"x": x}]).stats["r2"]["rank"]
    for source in (onnx.load(str(path)), path):
        got = calibrate(source, {"r2": [RankCollector()]}, [{"x": x}]).stats["r2"]["rank"]
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ModelError, match="external file that was not loaded"):
        calibrate(onnx.load(str(path), load_external_data=False), {"r2": [RankCollector()]}, [{"x": x}])


def test_run_model_and_top1():
    model, x = small_cnn(), inputs(20)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    data = load_data({"x": x, "labels": reference.argmax(axis=1)}, input_specs(model), batch_size=6)
    np.testing.assert_allclose(run_model(model, data)["logits"], reference, rtol=1e-5, atol=1e-6)
    session = open_session(model).session
    np.testing.assert_allclose(run_model(session, [{"x": x[:7]}, {"x": x[7:]}])["logits"], reference, rtol=1e-5, atol=1e-6)
    assert evaluate_top1(model, data) == 1.0
    wrong = load_data({"x": x, "labels": (reference.argmax(axis=1) + 1) % 5}, input_specs(model))
    assert evaluate_top1(model, wrong, batch_size=7) == 0.0
    with pytest.raises(DataError, match="needs labels"):
        evaluate_top1(model, load_data({"x": x}, input_specs(model)))


def test_models_over_the_protobuf_limit_go_through_a_temporary_file(monkeypatch):
    import onnxprune.runtime.session as runtime_session

    model, x = small_cnn(), inputs(5)
    expected = calibrate(model, {"r2": [RankCollector()]}, [{"x": x}]).stats["r2"]["rank"]
    monkeypatch.setattr(runtime_session, "PROTO_LIMIT", 100)  # every model counts as "too large"
    runner = open_session(model)
    assert runner._tmp is not None
    runner.close()
    got = calibrate(model, {"r2": [RankCollector()]}, [{"x": x}]).stats["r2"]["rank"]
    np.testing.assert_array_equal(got, expected)


def test_overlap_and_workers_change_no_result_and_pass_errors_on():
    model, x = small_cnn(), inputs(11)
    requests = lambda: {"r1": [RankCollector()], "r2": [RankCollector(), GramCollector()]}  # noqa: E731
    runs = [calibrate(model, requests(), [{"x": x}], batch_size=3, overlap=o, workers=w)
            for o, w in ((False, 1), (True, None), (True, 3))]
    for r in runs[1:]:
        for t in ("r1", "r2"):
            np.testing.assert_array_equal(r.stats[t]["rank"], runs[0].stats[t]["rank"])
        np.testing.assert_array_equal(r.stats["r2"]["gram"].second_moment, runs[0].stats["r2"]["gram"].second_moment)
    bad = [{"x": x[:4]}, {"x": x[4:8, :, :5]}]
    with pytest.raises(DataError, match=r"input 'x' \(batch 1\)"):
        calibrate(model, {"r2": [RankCollector()]}, bad, batch_size=2)


def test_group_scores_share_one_scale_however_many_tensors_observe_them():
    """A residual stream is observed on several tensors (and weighed by several convs): its
    per-part scores are averaged, not summed, so every group's scores lie in [0, 1] like a
    one-tensor group's (reports and score histograms compare groups on one scale)."""
    from pathlib import Path

    from onnxprune import analyse, load_model
    from onnxprune.scoring.weights import score_groups
    from onnxprune.scoring.activations import collect, data_scores, observations

    root = Path(__file__).resolve().parents[1]
    analysis = analyse(load_model(root / "models" / "resnet20_fmnist.onnx"))
    sample = np.load(root / "models" / "fmnist_sample.npz")
    data = {"input": sample[sample.files[0]][:16]}
    obs = observations(analysis)
    seen = {g.id: sum(o.dim in g.atom_index for o in obs.values()) for g in analysis.prunable_groups}
    assert max(seen.values()) >= 3 and min(seen.values()) == 1  # the residual stages and plain convs
    hrank = data_scores(analysis, "hrank", collect(analysis, data, ["hrank"]))
    l1 = score_groups(analysis, "l1")
    for scores in (hrank, l1):
        peaks = {gid: float(np.max(s)) for gid, s in scores.items()}
        assert all(0.0 < p <= 1.0 + 1e-9 for p in peaks.values()), peaks
