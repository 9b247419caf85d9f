"""Analysis stage, coverage (invariants 1-4 via inspect --coverage): a representative corpus of real exported CNNs (the full corpus: benchmarks/coverage.py),
and the command that reports it (``onnxprune inspect --summary``).

Each model must either compress at --flops 0.3 with invariants 1-4 checked on the result, or fail
with the exact unreachable-target message; models whose structure allows it must have >= 90% of
their convolution MACs in prunable layers. Small input sizes keep this under a few minutes.
"""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnxprune.cli.main import main
from graphs import G
from onnxprune import analyse, load_model
from onnxprune.analysis.coverage import coverage_summary, format_coverage
from zoo import export, export_segmentation, export_timm, wheel_model

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "models" / "resnet20_fmnist.onnx"


# --- onnxprune inspect --summary -----------------------------------------------------------------
def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


# conv1 (3 -> 8) -> LRN (no rule) -> conv2 (8 -> 8) -> Relu -> conv3 (8 -> 8) -> head, at 8x8: conv1's
# input is the graph input and its output feeds an op without a rule, so it is the only layer that
# cannot shrink; conv2's output and conv3's output (into the Gemm) are prunable.
CONV1, CONV23, GEMM = 8 * 3 * 9 * 64, 2 * 8 * 8 * 9 * 64, 8 * 5


@pytest.fixture
def blocked_model(tmp_path):
    g = G(seed=1)
    a = g.op("LRN", [g.conv("x", 3, 8)], size=3)
    out = g.head(g.conv(g.op("Relu", [g.conv(a, 8, 8)]), 8, 8), 8)
    path = tmp_path / "lrn.onnx"
    onnx.save(g.model(out), path)
    return path


def test_inspect_summary_json_shape(capsys, blocked_model):
    code, out, err = run_cli(capsys, "inspect", BUNDLED, blocked_model, "--summary", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "onnxprune.coverage/1" and data["flops_target"] == 0.3
    assert [r["model"] for r in data["models"]] == [str(BUNDLED), str(blocked_model)]
    keys = {"model", "macs", "conv_macs", "prunable_conv_share", "prunable_macs_share", "groups", "blockers_by_op",
            "macs_blockers_by_op", "blockers", "compress", "seconds"}
    for row in data["models"]:
        assert set(row) == keys
        assert set(row["groups"]) == {"total", "prunable"} and row["groups"]["prunable"] <= row["groups"]["total"]
        assert all(set(b) == {"reason", "conv_macs_share"} for b in row["blockers"])
        c = row["compress"]
        assert c["ok"] or c["message"].startswith("cannot remove 30% of FLOPS"), c
        if c["ok"]:
            assert c["reduction"] >= 0.3 and c["invariants"] == ["checker+onnxruntime", "cost", "empty plan", "masking"]
    resnet, lrn = data["models"]
    assert resnet["prunable_conv_share"] == 1.0 and resnet["blockers_by_op"] == {} and resnet["compress"]["ok"]
    assert resnet["conv_macs"] <= resnet["macs"] and resnet["groups"]["prunable"] > 0
    # the blocked model: exactly conv1's MACs are blocked, by the LRN
    assert (lrn["macs"], lrn["conv_macs"]) == (CONV1 + CONV23 + GEMM, CONV1 + CONV23)
    assert lrn["blockers_by_op"] == {"LRN": round(CONV1 / (CONV1 + CONV23), 4)}
    assert lrn["macs_blockers_by_op"] == {"LRN": round(CONV1 / (CONV1 + CONV23 + GEMM), 4)}
    assert lrn["prunable_conv_share"] == round(CONV23 / (CONV1 + CONV23), 4)
    assert lrn["prunable_macs_share"] == round((CONV23 + GEMM) / (CONV1 + CONV23 + GEMM), 4)
    assert lrn["blockers"][0]["reason"].startswith("LRN ") and "has no pruning rule" in lrn["blockers"][0]["reason"]


def test_inspect_summary_text_table(capsys, blocked_model):
    code, out, err = run_cli(capsys, "inspect", BUNDLED, blocked_model, "--summary", "--no-compress")
    assert code == 0, err
    header, rule, *rows = out.rstrip("\n").splitlines()
    assert header.split()[:6] == ["model", "GMACs", "prunable", "conv", "GMACs", "conv"] and set(rule) == {"-"}
    assert len(rows) == 2 and rows[0].startswith(str(BUNDLED)) and rows[1].startswith(str(blocked_model))
    assert "100.0%" in rows[0] and rows[0].rstrip().endswith("-")
    share = f"{(CONV23 + GEMM) / (CONV1 + CONV23 + GEMM):.1%}"
    assert share in rows[1] and f"LRN {CONV1 / (CONV1 + CONV23 + GEMM):.0%}" in rows[1]


def test_inspect_summary_writes_file(capsys, blocked_model, tmp_path):
    target = tmp_path / "cov.json"
    code, out, err = run_cli(capsys, "inspect", blocked_model, "--summary", "--no-compress", "-o", target)
    assert code == 0 and out.strip() == f"wrote {target}", err
    assert json.loads(target.read_text())["models"][0]["model"] == str(blocked_model)
    code, _, err = run_cli(capsys, "inspect", blocked_model, "--summary", "-o", target)
    assert code == 1 and "--force" in err and len(err.strip().splitlines()) == 1


def test_inspect_summary_bad_models(capsys, blocked_model, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("hello")
    code, out, err = run_cli(capsys, "inspect", bad, "--summary")
    assert code == 1 and out == "" and err.strip().splitlines() == [err.strip()] and err.startswith(f"error: {bad}: not")
    code, out, err = run_cli(capsys, "inspect", blocked_model, tmp_path / "nope.onnx", "--summary", "--json", "--no-compress")
    rows = json.loads(out)["models"]
    assert code == 1 and "error" not in rows[0] and rows[1]["error"] == f"{tmp_path / 'nope.onnx'}: no such file"
    assert err.strip() == f"error: 1 of 2 models could not be analysed; first: {tmp_path / 'nope.onnx'}: no such file"


@pytest.mark.parametrize("args,message", [
    ([BUNDLED, BUNDLED], "several models need --summary"),
    ([BUNDLED, "--summary", "--criterion", "l1"], "--summary cannot be combined with --criterion"),
    ([BUNDLED, "--summary", "--format", "html"], "--summary writes text or json"),
    ([BUNDLED, "--flops", "0.5"], "--flops needs --summary"),
    ([BUNDLED, "--summary", "--flops", "1.5"], "--flops"),
])
def test_inspect_summary_usage_errors(capsys, args, message):
    code, _, err = run_cli(capsys, "inspect", *args)
    assert code == 2 and message in err


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("corpus")


def assert_covered(row, min_share=0.9):
    assert "error" not in row, row["error"]
    c = row["compress"]
    assert c["ok"] or c["message"].startswith("cannot remove 30% of FLOPS"), c
    if c["ok"]:
        assert c["reduction"] >= 0.3 and c["invariants"], c
    assert row["prunable_conv_share"] >= min_share, format_coverage([row]) + "\n" + str(row["blockers"][:3])


# torchvision, at small sizes: grouped convolutions (RegNet, ResNeXt), channel shuffle with a
# dynamic batch (ShuffleNetV2), SE blocks, depthwise convolutions, dense concatenations.
TORCHVISION = [("regnet_y_400mf", 64), ("resnext50_32x4d", 64), ("shufflenet_v2_x1_0", 64),
               ("mobilenet_v3_small", 64), ("densenet121", 64), ("efficientnet_b0", 64)]


@pytest.mark.slow
@pytest.mark.parametrize("name,size", TORCHVISION, ids=[t[0] for t in TORCHVISION])
def test_torchvision_corpus(name, size, corpus_dir):
    assert_covered(coverage_summary(export(name, corpus_dir, size=size)))


@pytest.mark.slow
def test_convnext_is_reported_precisely(corpus_dir):
    """ConvNeXt's LayerNorm over channels pins the residual stream: the depthwise convolutions
    cannot be pruned, and the blocker names LayerNormalization."""
    row = coverage_summary(export("convnext_tiny", corpus_dir, size=64))
    assert "LayerNormalization" in row["blockers_by_op"]
    c = row["compress"]
    assert c["ok"] or c["message"].startswith("cannot remove 30% of FLOPS"), c


@pytest.mark.slow
def test_swin_mlp_hidden_channels_are_prunable(corpus_dir):
    """Swin-T (channels last, [N, H, W, C]): the LayerNorms over the channels pin the residual
    stream and with it the patch embedding, its only convolution (0% of conv MACs, structural);
    the MLP hidden channels (fc1 -> GELU -> fc2) of each of its 12 blocks are prunable groups, and
    a FLOPs target within their reach compresses with the invariants checked. At 64x64 the
    windows are mostly padding (attention is a larger share than at 224), so the target is 20%."""
    path = export("swin_t", corpus_dir, size=64)
    analysis = analyse(load_model(str(path)))
    names = [g.name for g in analysis.prunable_groups]
    assert len(names) == 12 and all(n.endswith("/mlp/mlp.0/MatMul") for n in names), names
    row = coverage_summary(str(path), flops=0.2)
    assert row["prunable_conv_share"] == 0.0 and set(row["blockers_by_op"]) == {"LayerNormalization"}
    assert row["prunable_macs_share"] > 0.2, format_coverage([row], all_macs=True)
    c = row["compress"]
    assert c["ok"] and c["reduction"] >= 0.2 and c["invariants"], c


@pytest.mark.slow
def test_segmentation_head(corpus_dir):
    try:
        path = export_segmentation("lraspp_mobilenet_v3_large", corpus_dir, size=128)
    except Exception as exc:  # the exporter's limitation, not onnxprune's
        pytest.skip(f"torch cannot export lraspp here: {exc}")
    assert_covered(coverage_summary(str(path)), min_share=0.8)


@pytest.mark.slow
def test_timm_family(corpus_dir):
    """timm is a test dependency (`make setup` installs it without its torch pin)."""
    from zoo import import_torchvision

    import_torchvision()  # timm imports torchvision, whose CPU build needs its op schemas declared first
    import timm  # noqa: F401

    path = export_timm("ghostnet_100", corpus_dir, size=96)
    assert_covered(coverage_summary(str(path)))


def _registry_reachable() -> bool:
    probe = subprocess.run([sys.executable, "-m", "pip", "index", "versions", "rapidocr-onnxruntime"],
                           capture_output=True, text=True, timeout=120)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.parametrize("name,shape", [("ppocr_det_v4", (1, 3, 160, 160)), ("ppocr_rec_v4", (1, 3, 48, 160)),
                                        ("ppocr_cls_v2", (1, 3, 48, 192))])
def test_models_shipped_in_wheels(name, shape, corpus_dir):
    """PP-OCR det/rec/cls (Paddle models converted by paddle2onnx) from the rapidocr-onnxruntime wheel."""
    try:
        path, shapes = wheel_model(name, corpus_dir)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        if not _registry_reachable():
            pytest.skip(f"the package registry is unreachable, cannot pip download the wheel: {exc}")
        raise
    first = next(iter(shapes))
    assert_covered(coverage_summary(str(path), input_shapes={first: shape}))
