"""The latency model (onnxprune/runtime/latency.py), the speed-up target (onnxprune/allocate/speed.py) and their
command line. No assertion here depends on how fast this machine is (speed goals live in
benchmarks/latency.py): the checks are on mapping, fitting, padding, caching and messages."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
from graphs import G
from onnxprune import analyse, load_model
from onnxprune.allocate.blocks import group_block, narrow_alignment
from onnxprune.runtime.latency import (Deployment, cache_key, cache_path, detect_alignment, fit_line, profile_model,
                                       variant_keep)


def toy(path=None):
    """Stem, a residual block and a 1x1 expansion at 32x32: every conv prunable, 32-64 channels."""
    g = G(7)
    a = g.cbr("x", 3, 32)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 32, 48), 48, 32), 32), a])])
    c = g.cbr(b, 32, 64, k=1)
    proto = g.model(g.head(g.cbr(c, 64, 64), 64), in_shape=(1, 3, 32, 32))
    if path is not None:
        onnx.save(proto, path)
        return path
    return proto


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_alignment_probe_reads_the_nchwc_block():
    """The probe reads onnxruntime's padded weight; on x86 it is the block the CPU flags imply."""
    align = detect_alignment()
    assert align in (4, 8, 16, 32)
    try:
        flags = set(re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split())
    except (OSError, AttributeError):
        flags = set()
    if "avx512f" in flags:
        assert align == 16
    elif "avx2" in flags:
        assert align == 8
    assert detect_alignment("cuda") == 8


def test_fit_line_recovers_a_line_and_stays_non_negative():
    x = np.array([1e6, 2e6, 4e6, 8e6])
    np.testing.assert_allclose(fit_line(x, 0.1 + 2e-7 * x), [0.1, 2e-7], rtol=1e-9, atol=1e-12)
    assert fit_line(np.full(3, 5.0), np.array([1.0, 2.0, 3.0])) == [2.0, 0.0]  # x constant: mean
    a, b = fit_line(x, 1.0 - 1e-8 * x)  # decreasing data: b clipped at 0
    assert b == 0.0 and a > 0


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    analysis = analyse(load_model(toy()))
    cache = tmp_path_factory.mktemp("latcache")
    return analysis, cache, profile_model(analysis, Deployment(threads=1), cache_dir=cache)


def test_latency_model_fit_on_toy_graph(fitted):
    analysis, cache, model = fitted
    weighted = {i for i, n in enumerate(analysis.model.graph.nodes) if n.op in ("Conv", "Gemm")}
    assert set(model.nodes) == weighted
    # every conv's kernels were found in the profile (fused NCHWc names mapped back to the conv)
    convs = [i for i in weighted if analysis.model.graph.nodes[i].op == "Conv"]
    assert all(model.nodes[i][0] + model.nodes[i][1] > 0 for i in convs)
    assert all(a >= 0 and b >= 0 for a, b in model.nodes.values()) and min(model.rest) >= 0
    assert len(model.fitted) == 5 and len(model.heldout) == 2 and model.error is not None
    assert model.base_ms > 0 and all(f["measured"] > 0 for f in model.fitted + model.heldout)
    # predictions fall as channels go (non-negative terms of padded MACs)
    preds = [model.predict(variant_keep(analysis, model.alignment, r)) for r in (0.0, 0.3, 0.6)]
    assert preds[0] >= preds[1] >= preds[2] > 0


def test_prediction_pads_channel_counts_to_the_block(fitted):
    """52 of 64 channels cost what 64 cost in the blocked layout: the model predicts the same."""
    analysis, _, model = fitted
    align = model.alignment
    g = next(gr for gr in analysis.prunable_groups if gr.size == 64)
    full = analysis.full_keep()
    padded_up = analysis.keep_vector({g.id: np.arange(64 - align + 4)})  # 4 short of the full count
    one_block_less = analysis.keep_vector({g.id: np.arange(64 - align)})
    # the weighted nodes' padded MACs are those of the full count (only the activation term moves)
    np.testing.assert_array_equal(model.padded_macs(padded_up), model.padded_macs(full))
    assert model.predict(padded_up) <= model.predict(full)
    assert model.padded_macs(one_block_less).sum() < model.padded_macs(full).sum()
    assert model.predict(one_block_less) < model.predict(padded_up)
    assert group_block(analysis, g.id, align) == align


def test_cache_is_reused_only_for_the_same_deployment(fitted, monkeypatch):
    analysis, cache, model = fitted
    files = sorted(Path(cache).glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["key"]["threads"] == 1

    class Profiled(Exception):
        pass

    def refuse(*args, **kwargs):
        raise Profiled

    monkeypatch.setattr("onnxprune.runtime.latency.profile_variants", refuse)
    again = profile_model(analysis, Deployment(threads=1), cache_dir=cache)
    assert again.nodes == model.nodes and again.seconds == model.seconds
    for dep in (Deployment(threads=2), Deployment(batch=2), Deployment(device="cuda")):
        assert cache_path(cache_key(analysis, dep), cache) != files[0]
        with pytest.raises(Profiled):
            profile_model(analysis, dep, cache_dir=cache)


def test_speedup_with_flops_is_a_usage_error(capsys, tmp_path):
    path = toy(tmp_path / "t.onnx")
    code, _, err = run_cli(capsys, "compress", path, "--speedup", "1.5", "--flops", "0.3")
    assert code == 2 and "--flops and --speedup" in err
    code, _, err = run_cli(capsys, "compress", path, "--speedup", "0.8")
    assert code == 2 and "--speedup must be greater than 1" in err


def test_unreachable_speedup_is_one_line_with_the_reachable_speedup(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    path = toy(tmp_path / "t.onnx")
    code, out, err = run_cli(capsys, "compress", path, "--speedup", "50", "-o", tmp_path / "p.onnx")
    assert code == 1 and out == ""
    assert re.fullmatch(r"error: cannot reach a 50\.00x speed-up: at most \d+\.\d\dx is reachable \(predicted, "
                        r"blocks of \d+ channels, --max-ratio 0\.8\)\n", err), err
    assert not (tmp_path / "p.onnx").exists()


def test_compress_to_a_speedup_reports_target_predicted_and_measured(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    path = toy(tmp_path / "t.onnx")
    code, out, err = run_cli(capsys, "compress", path, "--speedup", "1.3", "-o", tmp_path / "p.onnx", "--json")
    assert code == 0, err
    s = json.loads(out)
    sp = s["speed"]
    assert sp["target"] == 1.3 and sp["threads"] == 1 and sp["batch"] == 1 and sp["device"] == "cpu"
    assert 1 <= len(sp["rounds"]) <= 3 and sp["measured"] == sp["rounds"][sp["chosen_round"] - 1]["speedup"]
    assert sp["predicted"] >= 1.0 and sp["measured"] > 0
    # the first round asks the target; the allocation meets the prediction for what it asked
    assert sp["rounds"][0]["asked"] == 1.3 and sp["rounds"][0]["predicted"] >= 1.3 - 1e-9
    plan = json.loads((tmp_path / "p.plan.json").read_text())
    align = sp["align"]
    assert all(len(g["kept"]) % narrow_alignment(g["size"], align) == 0 for g in plan["groups"] if len(g["kept"]) < 64)
    onnx.checker.check_model(onnx.load(tmp_path / "p.onnx"), full_check=True)


def test_profile_command_json(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    path = toy(tmp_path / "t.onnx")
    code, out, err = run_cli(capsys, "profile", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["key"]["threads"] == 1 and data["key"]["batch"] == 1 and data["alignment"] == detect_alignment()
    assert Path(data["cache"]).is_file() and data["heldout_error"] is not None
    code, out, err = run_cli(capsys, "profile", path, "--threads", "0")
    assert code == 2 and "--threads" in err


def test_latency_ms_above_the_original_is_a_clean_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONNXPRUNE_CACHE", str(tmp_path / "cache"))
    path = toy(tmp_path / "t.onnx")
    code, out, err = run_cli(capsys, "compress", path, "--latency-ms", "100000", "-o", tmp_path / "p.onnx")
    assert code == 1 and re.fullmatch(r"error: the original already runs in [\d.]+ ms \(<= 100000 ms\): nothing to "
                                      r"prune for this latency\n", err), err
