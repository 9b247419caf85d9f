"""The command line: outputs, plans, determinism, and one-line errors for bad input."""

import hashlib
import json

import numpy as np
import onnx
import pytest

from cli.main import main
from graphs import G


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def small_cnn(path, seed=0):
    g = G(seed)
    a = g.cbr("x", 3, 8)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 8, 8), 8, 8), 8), a])])
    c = g.cbr(b, 8, 16, stride=2)
    onnx.save(g.model(g.head(g.cbr(c, 16, 16), 16), in_shape=(1, 3, 16, 16)), path)
    return path


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(tmp_path):
    return small_cnn(tmp_path / "m.onnx")


def test_compress_writes_model_plan_and_summary(capsys, model, tmp_path):
    before = digest(model)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3")
    assert code == 0, err
    assert "MACs" in out and "achieved" in out
    pruned, plan = tmp_path / "m.pruned.onnx", tmp_path / "m.pruned.plan.json"
    onnx.checker.check_model(onnx.load(pruned), full_check=True)
    assert json.loads(plan.read_text())["format"] == "onnxprune.plan/1"
    assert digest(model) == before  # the input is never touched


def test_compress_json_meets_target(capsys, model, tmp_path):
    code, out, _ = run_cli(capsys, "compress", model, "--params", "0.4", "-o", tmp_path / "p.onnx", "--json")
    s = json.loads(out)
    assert code == 0 and s["params_reduction"] >= 0.4 and s["achieved"] == pytest.approx(s["params_reduction"])
    assert s["groups"]["pruned"] >= 1 and s["output"].endswith("p.onnx")


def test_apply_is_byte_identical_and_compress_deterministic(capsys, model, tmp_path):
    assert run_cli(capsys, "compress", model, "--flops", "0.5", "-o", tmp_path / "a.onnx", "--criterion", "random", "--seed", "3")[0] == 0
    assert run_cli(capsys, "compress", model, "--flops", "0.5", "-o", tmp_path / "b.onnx", "--criterion", "random", "--seed", "3")[0] == 0
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "b.onnx")
    assert run_cli(capsys, "apply", model, tmp_path / "a.plan.json", "-o", tmp_path / "c.onnx")[0] == 0
    assert digest(tmp_path / "a.onnx") == digest(tmp_path / "c.onnx")


def test_round_to_keeps_multiples(capsys, model, tmp_path):
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--round-to", "4", "-o", tmp_path / "r.onnx")
    assert code == 0, err
    plan = json.loads((tmp_path / "r.plan.json").read_text())
    assert plan["groups"] and all(len(g["kept"]) % 4 == 0 for g in plan["groups"])


def test_inspect_text_and_json(capsys, model):
    code, out, _ = run_cli(capsys, "inspect", model)
    assert code == 0 and "prunable" in out and "Conv" in out
    code, out, _ = run_cli(capsys, "inspect", model, "--format", "json")
    report = json.loads(out)
    assert report["macs"] > 0 and report["groups"] and report["layers"]
    assert any("graph input" in b["reason"] for b in report["blockers"])


def test_version_and_help(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and "onnxprune" in out
    code, out, _ = run_cli(capsys, "compress", "--help")
    assert code == 0 and "--flops" in out and "Examples" in out


def no_prunable(path):
    g = G()
    onnx.save(g.model(g.conv("x", 3, 4)), path)  # one conv from input to output: nothing to prune
    return path


def dynamic_spatial(path):
    g = G()
    m = g.model(g.head(g.conv(g.conv("x", 3, 4), 4, 4), 4))
    for d in m.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "h"
    del m.graph.value_info[:]
    onnx.save(m, path)
    return path


BAD = [
    ("missing file", lambda p, m: ["compress", p / "nope.onnx", "--flops", "0.3"], "no such file"),
    ("directory", lambda p, m: ["compress", p, "--flops", "0.3"], "is a directory"),
    ("not onnx", lambda p, m: (p.joinpath("t.onnx").write_text("hello"), ["compress", p / "t.onnx", "--flops", "0.3"])[1], "not"),
    ("truncated", lambda p, m: (p.joinpath("tr.onnx").write_bytes(m.read_bytes()[:700]), ["compress", p / "tr.onnx", "--flops", "0.3"])[1], "ONNX"),
    ("no prunable layer", lambda p, m: ["compress", no_prunable(p / "n.onnx"), "--flops", "0.3"], "no prunable channel group"),
    ("flops 0", lambda p, m: ["compress", m, "--flops", "0"], "strictly between 0 and 1"),
    ("flops 1", lambda p, m: ["compress", m, "--flops", "1"], "strictly between 0 and 1"),
    ("flops negative", lambda p, m: ["compress", m, "--flops", "-0.2"], "strictly between 0 and 1"),
    ("unreachable", lambda p, m: ["compress", m, "--flops", "0.97"], "cannot remove 97%"),
    ("output is input", lambda p, m: ["compress", m, "--flops", "0.3", "-o", m], "is the input model"),
    ("existing output", lambda p, m: (p.joinpath("e.onnx").write_bytes(b"x"), ["compress", m, "--flops", "0.3", "-o", p / "e.onnx"])[1], "--force"),
    ("unwritable dir", lambda p, m: ["compress", m, "--flops", "0.3", "-o", p / "no" / "dir" / "o.onnx"], "does not exist"),
    ("dynamic spatial", lambda p, m: ["compress", dynamic_spatial(p / "d.onnx"), "--flops", "0.3"], "--input-shape"),
    ("unknown input name", lambda p, m: ["compress", m, "--flops", "0.3", "--input-shape", "y:1,3,16,16"], "unknown input"),
    ("plan for another model", lambda p, m: ["apply", small_cnn(p / "other.onnx", seed=5), m.with_name("m.pruned.plan.json"), "-o", p / "o.onnx"], "another model"),
    ("plan not json", lambda p, m: (p.joinpath("bad.json").write_text("{"), ["apply", m, p / "bad.json", "-o", p / "o2.onnx"])[1], "not a valid onnxprune plan"),
]


@pytest.mark.parametrize("case,args,message", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_one_line_error(capsys, tmp_path, model, case, args, message):
    if case == "plan for another model":
        assert run_cli(capsys, "compress", model, "--flops", "0.3")[0] == 0
    before = digest(model)
    code, out, err = run_cli(capsys, *args(tmp_path, model))
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert digest(model) == before


def test_usage_errors_exit_2(capsys, model):
    code, _, err = run_cli(capsys, "compress", model)
    assert code == 2 and "exactly one of --flops or --params" in err
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--input-shape", "bad")
    assert code == 2


def test_dynamic_spatial_works_with_input_shape(capsys, tmp_path):
    path = dynamic_spatial(tmp_path / "d.onnx")
    code, out, err = run_cli(capsys, "compress", path, "--flops", "0.2", "--input-shape", "x:1,3,12,12", "--json")
    assert code == 0, err
    pruned = onnx.load(tmp_path / "d.pruned.onnx")
    dims = [d.dim_param or d.dim_value for d in pruned.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "h", "h"]  # symbolic dims survive


def test_external_data_model(capsys, model, tmp_path):
    ext = tmp_path / "ext.onnx"
    onnx.save(onnx.load(model), ext, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    code, _, err = run_cli(capsys, "compress", ext, "--flops", "0.3", "-o", tmp_path / "ext.pruned.onnx")
    assert code == 0, err
    onnx.checker.check_model(str(tmp_path / "ext.pruned.onnx"), full_check=True)
