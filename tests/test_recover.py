"""Label-free recovery (issue 18): distil the pruned model from the original on unlabelled samples.

A small residual CNN built in code is pruned by half its MACs with LDRF reconstruction on random
inputs, then recovered. The checks: the held-out fidelity never gets worse (also where nothing
can improve, or where training diverges), the pruned channels stay removed, the written-back
weights run in onnxruntime exactly as in torch, the time budget holds, and a seeded CPU run (and
its replay by ``apply``) is bit-for-bit reproducible.
"""

from __future__ import annotations

import json
import time

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from onnxprune import RecoverSettings, Settings, Target, compress, recover  # noqa: E402
from onnxprune.recovery import kept_channels  # noqa: E402
from onnxprune.torch.module import to_torch  # noqa: E402
from onnxprune.torch.recover_loss import output_kind, run  # noqa: E402
from onnxprune.torch.recover_blocks import blocks, cut_points  # noqa: E402
from test_cli import run_cli, small_cnn  # noqa: E402

N = 96  # 12 held out (1/8) is below the minimum: 16 are


def calib(n=N, seed=0):
    return {"x": np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)}


def classifier(path):
    """small_cnn with its Gemm rescaled and centred on the calibration inputs: random weights
    give logits in the hundreds with one class always winning (softmax saturated, KL zero)."""
    model = onnx.load(small_cnn(path))
    with torch.no_grad():
        logits = run(to_torch(model).eval(), {"x": torch.from_numpy(calib()["x"])})[0][0].double().numpy()
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    inits = {t.name: t for t in model.graph.initializer}
    w, b = (onnx.numpy_helper.to_array(inits[n]) for n in gemm.input[1:3])
    scale = 0.05
    inits[gemm.input[1]].CopyFrom(onnx.numpy_helper.from_array((w * scale).astype(np.float32), gemm.input[1]))
    centred = (b - logits.mean(0)) * scale
    inits[gemm.input[2]].CopyFrom(onnx.numpy_helper.from_array(centred.astype(np.float32), gemm.input[2]))
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = classifier(tmp_path_factory.mktemp("m") / "m.onnx")
    original = onnx.load(path)
    # plain channel removal (no reconstruction) leaves an error distillation surely reduces
    result = compress(str(path), Settings(target=Target("flops", 0.5), reconstruct="none"), data=calib())
    channels = kept_channels(result.analysis, result.allocation.keep)
    return original, result.model, channels, path


def session(model):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def shapes(model):
    return {t.name: tuple(t.dims) for t in model.graph.initializer}


def structure(model):
    return [(n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node]


def test_recovery_improves_keeps_the_mask_and_runs_in_onnxruntime(models):
    original, pruned, channels, _ = models
    result = recover(pruned, original, calib(), channels=channels, steps=40, time=120, patience=100)
    r = result.report
    assert r["heldout_samples"] == 16 and r["train_samples"] == N - 16 and r["steps"] == 40
    assert r["heldout_after"]["loss"] < r["heldout_before"]["loss"]  
    assert r["kept"].startswith("step ") and r["features"] >= 1
    # The mask is fixed: same graph, same initializer shapes (removed channels stay removed).
    model = result.model
    onnx.checker.check_model(model, full_check=True)
    assert structure(model) == structure(pruned) and shapes(model) == shapes(pruned)
    assert any(not np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
               for a, b in zip(model.graph.initializer, pruned.graph.initializer))
    # The written-back weights compute in onnxruntime what the torch module computes.
    x = calib(32, seed=5)["x"]
    module = to_torch(model).eval()
    with torch.no_grad():
        expected = run(module, {"x": torch.from_numpy(x)})[0][0].double().numpy()
    got = session(model).run(None, {"x": x})[0].astype(np.float64)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-5 * scale + 1e-6


def test_never_worse_when_nothing_can_improve(models):
    original, _, _, _ = models
    # The original distilled from itself: the held-out loss is already 0 and nothing can beat it.
    result = recover(original, original, calib(), steps=8)
    assert result.report["kept"] == "unchanged" and result.report["heldout_before"]["loss"] == pytest.approx(0, abs=1e-9)
    assert result.model.SerializeToString() == original.SerializeToString()


def test_never_worse_when_training_diverges(models):
    original, pruned, channels, _ = models
    result = recover(pruned, original, calib(), channels=channels, steps=12, lr=50.0)
    r = result.report
    assert r["heldout_after"]["loss"] <= r["heldout_before"]["loss"]
    if r["kept"] == "unchanged":
        assert result.model.SerializeToString() == pruned.SerializeToString()


def test_time_budget_is_honoured(models):
    original, pruned, channels, _ = models
    stamps = []
    t0 = time.perf_counter()
    result = recover(pruned, original, calib(), channels=channels, time=2.0, epochs=10**6,
                     patience=10**6, progress=lambda e: stamps.append(time.perf_counter()))
    elapsed = time.perf_counter() - t0
    gaps = np.diff([t0] + stamps)
    assert result.report["stopped"] == "time" and result.report["steps"] >= 1
    assert elapsed < 2.0 + gaps.max() + 0.5  # one step (or evaluation) past the budget, plus loading the data


def test_seeded_runs_and_replays_are_identical(models):
    original, pruned, channels, _ = models
    a = recover(pruned, original, calib(), channels=channels, steps=10, seed=3)
    b = recover(pruned, original, calib(), channels=channels, steps=10, seed=3)
    assert a.model.SerializeToString() == b.model.SerializeToString()
    c = recover(pruned, original, calib(), channels=channels, steps=10, seed=3, replay=a.report["replay"])
    assert c.model.SerializeToString() == a.model.SerializeToString()
    d = recover(pruned, original, calib(), channels=channels, steps=10, seed=4)
    assert d.model.SerializeToString() != a.model.SerializeToString()


def test_blockwise_cuts_at_block_outputs_and_never_worsens(models):
    original, pruned, channels, _ = models
    module = to_torch(pruned)
    cuts = [t for _, t in cut_points(module)]
    assert cuts  # the residual block's output is a cut; nothing inside the block is
    plan = blocks(module, set(cuts))
    assert len(plan) >= 2 and plan[-1][2] is None and plan[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(plan, plan[1:]))
    result = recover(pruned, original, calib(), channels=channels, mode="blockwise", steps=10)
    r = result.report
    assert r["blocks"] == len(plan) and r["heldout_after"]["loss"] <= r["heldout_before"]["loss"]
    assert shapes(result.model) == shapes(pruned)
    onnx.checker.check_model(result.model, full_check=True)
    again = recover(pruned, original, calib(), channels=channels, mode="blockwise", steps=10, replay=r["replay"])
    assert again.model.SerializeToString() == result.model.SerializeToString()


def test_recovery_alone_records_the_data_and_apply_replays_it(models, tmp_path):
    """With --reconstruct none the plan still records the calibration data when recovery changed
    the weights: apply replays it byte for byte on the same data and refuses other data."""
    from onnxprune import apply_plan
    from onnxprune.errors import PlanError

    _, _, _, path = models
    settings = Settings(target=Target("flops", 0.5), reconstruct="none", recover=RecoverSettings(steps=12, seed=1))
    result = compress(str(path), settings, data=calib())
    assert result.summary["recovery"]["kept"] != "unchanged" and result.plan.settings["data_fingerprint"]
    again = apply_plan(str(path), result.plan, data=calib())
    assert again.SerializeToString() == result.model.SerializeToString()
    with pytest.raises(PlanError, match="differs"):
        apply_plan(str(path), result.plan, data=calib(seed=1))
    with pytest.raises(PlanError, match="recovery"):
        apply_plan(str(path), result.plan)


def test_settings_are_checked_when_built():
    from onnxprune.errors import OnnxPruneError

    for bad in ({"mode": "layerwise"}, {"time": -1.0}, {"steps": 0}, {"holdout": 0.0}, {"augment": "flip"}):
        with pytest.raises(OnnxPruneError):
            RecoverSettings(**bad)
    with pytest.raises(OnnxPruneError, match="RecoverSettings"):
        Settings(target=Target("flops", 0.3), recover={"time": 5})


def test_output_kinds():
    assert output_kind(torch.randn(4, 10), "Gemm") == "class"
    assert output_kind(torch.randn(4, 7, 30).softmax(-1), "MatMul") == "seq"
    assert output_kind(torch.randn(7, 4, 30).log_softmax(-1), "Add") == "seq"
    assert output_kind(torch.randn(7, 4, 30), "LogSoftmax") == "seq"
    assert output_kind(torch.randn(7, 4, 30), "Add") == "mse"
    assert output_kind(torch.randn(2, 3, 8, 8), "Conv") == "mse"


def test_bad_settings_are_one_line_errors(models):
    from onnxprune.errors import OnnxPruneError

    original, pruned, _, _ = models
    for bad in ({"mode": "layerwise"}, {"time": 0}, {"steps": 0}, {"holdout": 1.5}):
        with pytest.raises(OnnxPruneError):
            recover(pruned, original, calib(), **bad)


def test_cli_recovers_by_default_and_apply_replays_it(capsys, tmp_path):
    model = classifier(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **calib(64))
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--data", tmp_path / "calib.npz", "--json",
                             "--latency-runs", "0")
    assert code == 0, err
    s = json.loads(out)
    rec = s["recovery"]
    assert rec["heldout_after"]["loss"] <= rec["heldout_before"]["loss"] and rec["mode"] == "global"
    assert "recovery" in s["seconds"]
    # Recovery trains and selects on the calibration part only: the --holdout share stays unseen,
    # and the before/after evaluation measures the recovered model on it.
    assert s["holdout"]["held_out"] > 0 and "evaluation" in s
    assert rec["train_samples"] + rec["heldout_samples"] == s["holdout"]["calibration_samples"] == 64 - s["holdout"]["held_out"]
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "m.pruned.plan.json", "--data", tmp_path / "calib.npz",
                           "-o", tmp_path / "again.onnx")
    assert code == 0, err
    assert (tmp_path / "again.onnx").read_bytes() == (tmp_path / "m.pruned.onnx").read_bytes()
    np.savez(tmp_path / "other.npz", **calib(64, seed=1))
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "m.pruned.plan.json", "--data", tmp_path / "other.npz",
                           "-o", tmp_path / "other.onnx")
    assert code == 1 and "differs from the plan's calibration data" in err, err
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--data", tmp_path / "calib.npz", "--json",
                             "--dry-run")
    assert code == 0 and json.loads(out)["dry_run"] and "recovery" not in json.loads(out), err
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--data", tmp_path / "calib.npz", "--json",
                             "--no-recover", "-o", tmp_path / "n.onnx")
    assert code == 0 and "recovery" not in json.loads(out)


def test_cli_without_torch_notes_what_was_skipped(capsys, tmp_path, monkeypatch):
    import onnxprune.recovery

    monkeypatch.setattr(onnxprune.recovery, "torch_available", lambda: False)
    model = small_cnn(tmp_path / "m.onnx")
    np.savez(tmp_path / "calib.npz", **calib(48))
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--data", tmp_path / "calib.npz", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert "recovery" not in s and any("pip install 'onnxprune[torch]'" in n for n in s["notes"])
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--recover", "-o", tmp_path / "x.onnx")
    assert code == 2 and "--data" in err
