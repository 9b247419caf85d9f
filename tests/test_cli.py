"""The command line: outputs, plans, determinism, and one-line errors for bad input."""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxprune.cli.main import main
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


def test_round_to_auto_is_the_probed_alignment_and_steps_down(capsys, model, tmp_path):
    """The default --round-to auto keeps multiples of onnxruntime's NCHWc block (probed: 8 with
    AVX2, 16 with AVX-512) where the target allows it; where it cannot reach it (this small
    model at 50%), smaller multiples down to 4, then exact counts, said in the summary; an
    explicit N never falls back."""
    from onnxprune.allocate.blocks import narrow_alignment
    from onnxprune.runtime.latency import detect_alignment

    align = detect_alignment()
    root = Path(__file__).resolve().parents[1]
    code, out, err = run_cli(capsys, "compress", root / "models" / "resnet20_fmnist.onnx", "--flops", "0.3",
                             "-o", tmp_path / "r20.onnx", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["round_to"] == align and not any("--round-to" in n for n in s.get("notes", []))  # (the data-free note stays)
    plan = json.loads((tmp_path / "r20.plan.json").read_text())
    assert plan["groups"] and all(len(g["kept"]) % narrow_alignment(g["size"], align) == 0 for g in plan["groups"])
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.5", "-o", tmp_path / "a.onnx", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["round_to"] < align and f"--round-to {align} cannot reach the target" in s["notes"][0]
    plan = json.loads((tmp_path / "a.plan.json").read_text())
    assert all(len(g["kept"]) % s["round_to"] == 0 for g in plan["groups"] if len(g["kept"]) < 16)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--round-to", "8", "-o", tmp_path / "b.onnx")
    assert code == 1 and "cannot remove 50" in err
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--round-to", "eight", "-o", tmp_path / "c.onnx")
    assert code == 2 and "--round-to" in err


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
    # --flops 0, 1, -0.2: usage errors since issue 15.6 (tests/test_cli_robust.py)
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
    assert code == 2 and "exactly one of --flops, --params, --speedup or --latency-ms" in err
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


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    import os

    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_written_files_get_the_umask_mode_not_mkstemps_0600(capsys, model, tmp_path, umask, mask):
    import os
    import stat

    umask(mask)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--report", tmp_path / "r.json")
    assert code == 0, err
    for name in ("m.pruned.onnx", "m.pruned.plan.json", "r.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~mask, name
    with open(tmp_path / "plain.txt", "w"):  # what any other program writing a file would get
        pass
    assert stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o444])
def test_overwritten_file_keeps_its_mode(tmp_path, umask, mode):
    import os
    import stat

    from onnxprune.model.files import write_bytes_atomic

    umask(0o022)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    os.chmod(target, mode)
    write_bytes_atomic(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert stat.S_IMODE(os.stat(target).st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary file left


def unwritable_dir(tmp_path):
    """A directory in which no file can be created: mode 0555, or /proc for root (root ignores modes)."""
    import os

    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    return Path("/proc")


BAD_REPORT = [
    ("directory missing", lambda p, m: p / "no" / "dir" / "r.html", ("cannot write", "directory", "does not exist")),
    ("directory not writable", lambda p, m: unwritable_dir(p) / "r.html", ("cannot write", "cannot create a file in")),
    ("report is the input", lambda p, m: m, ("--report", "is the input model")),
    ("report is the output", lambda p, m: p / "out.onnx", ("--report", "is the pruned model's path")),
    ("report is the plan", lambda p, m: p / "out.plan.json", ("--report", "is the plan's path")),
    ("report is a directory", lambda p, m: p, ("cannot write", "it is a directory")),
    ("existing report", lambda p, m: (p.joinpath("old.json").write_text("{}"), p / "old.json")[1], ("exists", "--force")),
]


@pytest.mark.parametrize("case,report,words", BAD_REPORT, ids=[b[0] for b in BAD_REPORT])
def test_compress_checks_the_report_path_before_compressing(capsys, monkeypatch, tmp_path, model, case, report, words):
    import onnxprune

    def must_not_run(*args, **kwargs):
        raise AssertionError("compress ran although --report cannot be written")

    monkeypatch.setattr(onnxprune, "compress", must_not_run)
    before = digest(model)
    path = report(tmp_path, model)
    files = sorted(tmp_path.iterdir())
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "-o", tmp_path / "out.onnx", "--report", path)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and all(w in lines[0] for w in words), err
    assert digest(model) == before and sorted(tmp_path.iterdir()) == files  # nothing written, no probe left


def test_compress_report_with_unknown_extension_is_a_usage_error(capsys, tmp_path, model):
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--report", tmp_path / "r.pdf")
    assert code == 2 and "cannot tell the report format from 'r.pdf'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_plan_path_cannot_replace_the_input_model(capsys, tmp_path, model):
    before = digest(model)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--plan", model)
    assert code == 1 and err.strip() == f"error: --plan {model} is the input model; choose another path"
    assert digest(model) == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failing_report_leaves_no_model_behind(capsys, monkeypatch, tmp_path, model):
    """The report is built before the model is saved: if building it fails (here: the latency
    measurement raises), neither the pruned model nor its plan is written."""
    import onnxprune.report.build
    from onnxprune.errors import OnnxPruneError

    def latency_fails(*args, **kwargs):
        raise OnnxPruneError("onnxruntime could not time the pruned model")

    monkeypatch.setattr(onnxprune.report.build, "measure_latency", latency_fails)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--report", tmp_path / "r.html")
    assert code == 1 and err.strip() == "error: onnxruntime could not time the pruned model", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_html_report_without_matplotlib_fails_before_compressing(capsys, monkeypatch, tmp_path, model):
    import onnxprune
    import onnxprune.report.html
    from onnxprune.errors import DependencyError

    def no_matplotlib():
        raise DependencyError("matplotlib is not installed: pip install 'onnxprune[report]'")

    def must_not_run(*args, **kwargs):
        raise AssertionError("compress ran although the HTML report cannot be drawn")

    monkeypatch.setattr(onnxprune.report.html, "require_matplotlib", no_matplotlib)
    monkeypatch.setattr(onnxprune, "compress", must_not_run)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--report", tmp_path / "r.html")
    assert code == 1 and err.strip() == "error: matplotlib is not installed: pip install 'onnxprune[report]'", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_compress_writes_its_report(capsys, tmp_path, model):
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--report", tmp_path / "r.json", "--json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    summary = json.loads(out)
    assert summary["report"] == str(tmp_path / "r.json")
    assert report["plan"]["macs_after"] == summary["macs_after"] and report["plan"]["prediction_matches"] is True
    assert report["scores"]["criterion"] == "l1"  # the scores the run used
