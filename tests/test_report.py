"""The inspection report: one data structure in three renderings, the inspect command's
conventions and bad inputs, headless-browser rendering, and interrupts that leave no file behind."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import onnx
import pytest

from graphs import G
from onnxprune import Limits, Settings, Target, compress
from onnxprune.errors import OnnxPruneError, PlanError
from onnxprune.report import SCHEMA, ReportSettings, build_report, render_json, render_text, write_report
from onnxprune.report.html import render_html
from test_cli import digest, run_cli, small_cnn

ROOT = Path(__file__).resolve().parent.parent
NO_LATENCY = ReportSettings(latency_runs=0)


@pytest.fixture
def model(tmp_path):
    return small_cnn(tmp_path / "m.onnx")


@pytest.fixture
def result(model):
    # exact counts: small_cnn's 8-channel groups stay whole under the default round_to auto (16 with AVX-512)
    return compress(str(model), Settings(target=Target("flops", 0.4), limits=Limits(round_to=1), round_to_fallback=False))


@pytest.fixture
def plan_file(result, tmp_path):
    path = tmp_path / "m.plan.json"
    path.write_text(result.plan.to_json())
    return path


def dead_filter_cnn(path, dead=3):
    """A CNN whose second conv has ``dead`` all-zero filters: their l1 score is 0."""
    g = G(1)
    a = g.cbr("x", 3, 8)
    b = g.conv(a, 8, 8)
    w = next(t for t in g.inits if t.name == g.nodes[-1].input[1])
    array = onnx.numpy_helper.to_array(w).copy()
    array[:dead] = 0
    w.CopyFrom(onnx.numpy_helper.from_array(array, w.name))
    onnx.save(g.model(g.head(g.op("Relu", [b]), 8), in_shape=(1, 3, 8, 8)), path)
    return path


# --- the data structure and its JSON schema ----------------------------------------------------
def test_plan_section_matches_measured_and_predicted_cost(result, model):
    report = build_report(str(model), plan=result.plan, settings=NO_LATENCY)
    p = report.plan
    assert p["macs_after"] == result.allocation.cost.macs and p["params_after"] == result.allocation.cost.params
    assert p["prediction_matches"] is True
    assert sum(l["after"]["macs"] for l in report.layers) == p["macs_after"]
    assert sum(l["after"]["params"] for l in report.layers) == p["params_after"]
    assert p["groups_pruned"] == len(result.plan.groups)
    assert p["channels_removed"] == sum(g.size - len(g.kept) for g in result.plan.groups)
    conv = next(l for l in report.layers if l["op"] == "Conv" and l["prunable"])
    assert conv["after"]["output_shape"][1] < conv["output_shape"][1]  # channels really went
    assert report.latency is None


def test_report_without_plan_has_every_key_null(model):
    data = json.loads(render_json(build_report(str(model), settings=NO_LATENCY)))
    assert data["schema"] == SCHEMA
    assert all(data[k] is None for k in ("plan", "latency", "scores", "sensitivity"))
    assert all(l["after"] is None for l in data["layers"]) and all(g["kept"] is None for g in data["groups"])


def test_group_output_is_where_the_channels_leave_bn_and_activation():
    """``groups[].output`` names the activation the data criteria observe: the BatchNormalization
    output when no activation follows, the Relu output after BN -> Relu, the map before the
    global pooling of the head, nothing for the logits."""
    g = G(2)
    conv1 = g.conv("x", 3, 8)
    bn1 = g.bn(conv1, 8)  # no activation: the channels leave through the BN
    conv2 = g.conv(bn1, 8, 8)
    relu2 = g.op("Relu", [g.bn(conv2, 8)])
    conv3 = g.conv(relu2, 8, 6)
    relu3 = g.op("Relu", [conv3])
    proto = g.model(g.head(relu3, 6), in_shape=(1, 3, 8, 8))
    groups = build_report(proto, settings=NO_LATENCY).groups
    by_producer = {g["name"]: g for g in groups}
    convs = [n.name for n in proto.graph.node if n.op_type == "Conv"]
    assert by_producer[convs[0]]["output"] == [f"{bn1}[axis 1]"]
    assert by_producer[convs[1]]["output"] == [f"{relu2}[axis 1]"]
    assert by_producer[convs[2]]["output"] == [f"{relu3}[axis 1]"]
    gemm = next(n.name for n in proto.graph.node if n.op_type == "Gemm")
    assert by_producer[gemm]["output"] == [] and not by_producer[gemm]["prunable"]
    # The same tensors calibration observes for HRank.
    from onnxprune import analyse, load_model
    from onnxprune.scoring.activations import observations

    observed = {f"{o.tensor}[axis {o.axis}]" for o in observations(analyse(load_model(proto))).values()}
    assert observed == {t for g in groups for t in g["output"]}


def test_batchnorm_layers_belong_to_their_group(model):
    """A BatchNormalization has parameters but no MACs: its group is its conv's, so it is prunable."""
    layers = build_report(str(model), settings=NO_LATENCY).layers
    for i, layer in enumerate(layers):
        if layer["op"] == "BatchNormalization":
            conv = layers[i - 1]
            assert conv["op"] == "Conv" and layer["out_groups"] == conv["out_groups"] and layer["prunable"], layer
            assert layer["macs"] == 0 and layer["params"] > 0


def test_reconstruction_biases_are_counted_apart_from_the_prediction(tmp_path):
    """LDRF gives a compensated conv without bias a new bias: the measured parameters exceed the
    plan's prediction by exactly those biases, and the prediction still matches."""
    g = G(4)
    a = g.op("Relu", [g.bn(g.conv("x", 3, 8, bias=False), 8)])
    b = g.op("Relu", [g.bn(g.conv(a, 8, 8, bias=False), 8)])
    proto = g.model(g.head(g.op("Relu", [g.conv(b, 8, 8, bias=False)]), 8), in_shape=(1, 3, 8, 8))
    data = {"x": np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)}
    result = compress(proto, Settings(target=Target("flops", 0.4)), data=data)
    assert result.summary["reconstruct"] == "ldrf"
    report = build_report(proto, result=result, settings=NO_LATENCY)
    original = {t.name for t in proto.graph.initializer}
    new = [t for t in result.model.graph.initializer if t.name not in original]
    assert new and report.plan["params_added"] == sum(int(np.prod(t.dims)) for t in new)
    assert report.plan["params_after"] == result.plan.predicted["params_after"] + report.plan["params_added"]
    assert report.plan["prediction_matches"] is True
    assert f"{report.plan['params_added']:,} of them added by reconstruction" in render_text(report)


def test_chart_labels_are_short_module_paths():
    from onnxprune.report.html import axis_label

    assert axis_label("/stages/stages.1/stages.1.0/conv1/Conv", "Conv") == "stages.1.0/conv1"
    assert axis_label("/stem/stem.1/BatchNormalization", "BatchNormalization") == "stem.1"
    assert axis_label("Conv_12", "Conv") == "Conv_12" and axis_label("", "Gemm") == "Gemm"


def lrn_cnn():
    """conv1 (input pinned by the graph input, output pinned by an LRN without a rule) -> LRN ->
    conv2 (input pinned by the LRN, output prunable) -> head (Gemm: output pinned, input prunable)."""
    g = G(3)
    a = g.op("Relu", [g.conv("x", 3, 8)])
    b = g.op("LRN", [a], size=3)
    return g.model(g.head(g.op("Relu", [g.conv(b, 8, 8)]), 8))


def test_blockers_credit_only_macs_no_group_can_reduce():
    from onnxprune import CostModel, analyse, load_model
    from onnxprune.allocate.search import main_blockers

    analysis = analyse(load_model(lrn_cnn()))
    cost = CostModel(analysis)
    per_node, total = cost.per_node(analysis.full_keep()), cost.evaluate(analysis.full_keep()).macs
    share = {analysis.model.graph.nodes[i].op + str(i): c.macs / total for i, c in per_node.items()}
    conv1, conv2 = (share[k] for k in sorted(k for k in share if k.startswith("Conv")))
    blockers = dict(main_blockers(analysis, cost))
    lrn = next(r for r in blockers if r.startswith("LRN"))
    # conv1 is pinned on both sides; conv2 only on its input side: its output channels are
    # prunable, so its MACs are reducible and nobody is credited with them.
    assert blockers[lrn] == pytest.approx(conv1) and conv2 > conv1
    assert blockers["'x' is a graph input"] == pytest.approx(conv1)
    assert blockers[next(r for r in blockers if r.startswith("reaches graph output"))] == 0.0  # the Gemm's input is prunable


def test_blockers_of_a_model_whose_every_layer_can_shrink(model):
    report = build_report(str(model), settings=NO_LATENCY)
    assert {b["reason"] for b in report.blockers} >= {"'x' is a graph input"}
    assert all(b["macs_share"] == 0.0 for b in report.blockers)  # the first conv's outputs are prunable
    with pytest.raises(OnnxPruneError, match="no blocked channel pins MACs"):
        compress(str(model), Settings(target=Target("flops", 0.97)))


# Subtrees whose keys are not the report's: the plan's own settings/prediction (the plan format)
# and input names.
FOREIGN = {("plan", "settings"), ("plan", "predicted"), ("model", "inputs")}


def _keys(value, path=()):
    found = set()
    if isinstance(value, dict):
        for k, v in value.items():
            found.add(k)
            if path[-1:] + (k,) not in FOREIGN:
                found |= _keys(v, path + (k,))
    elif isinstance(value, list):
        for v in value:
            found |= _keys(v, path)
    return found


def test_every_json_field_is_documented(result, model):
    """docs/REPORTS.md names every key a full report can contain (plan, latency, scores, sensitivity)."""
    sens = {"fingerprint": result.plan.fingerprint, "ratios": [0.25, 0.5], "metric": "kl", "criterion": "l1",
            "curves": {"1": [0.001, 0.2]}, "names": {"1": "g"}}
    report = build_report(str(model), plan=result.plan, criterion="l1", sensitivity=sens,
                          settings=ReportSettings(latency_runs=2, warmup_runs=1))
    keys = _keys(json.loads(render_json(report)))
    doc = (ROOT / "docs" / "REPORTS.md").read_text()
    missing = sorted(k for k in keys if f"`{k}`" not in doc)
    assert not missing, f"undocumented report fields: {missing}"


def test_json_is_deterministic_without_latency(result, model):
    a = render_json(build_report(str(model), plan=result.plan, criterion="l1", settings=NO_LATENCY))
    b = render_json(build_report(str(model), plan=result.plan, criterion="l1", settings=NO_LATENCY))
    assert a == b


# --- optional sections -------------------------------------------------------------------------
def test_latency_section(result, model):
    report = build_report(str(model), pruned=result.model, plan=result.plan,
                          settings=ReportSettings(latency_runs=5, warmup_runs=1, threads=1))
    lat = report.latency
    assert lat["runs"] == 5 and lat["threads"] == 1 and lat["batch"] == 1 and lat["provider"] == "CPUExecutionProvider"
    assert 0 < lat["before"]["p10_ms"] <= lat["before"]["median_ms"] <= lat["before"]["p90_ms"]
    assert lat["speedup"] == pytest.approx(lat["before"]["median_ms"] / lat["after"]["median_ms"], rel=1e-3)
    assert lat["predicted_speedup"] == pytest.approx(report.macs / report.plan["macs_after"], rel=1e-3)
    assert "speed-up" in render_text(report)


def test_scores_section_finds_dead_channels(tmp_path):
    """Three zero filters of eight score 0 under l1: 3/8 of that group is low and recommended."""
    report = build_report(str(dead_filter_cnn(tmp_path / "d.onnx")), criterion="l1", settings=NO_LATENCY)
    s = report.scores
    dead = [g for g in s["groups"] if g["min"] == 0]
    assert len(dead) == 1 and dead[0]["low_share"] == pytest.approx(3 / 8)
    assert dead[0]["recommended_ratio"] == pytest.approx(3 / 8)
    assert sum(dead[0]["histogram"]["counts"]) == 8 and dead[0]["histogram"]["counts"][0] >= 3
    assert s["uniform_safe_ratio"] == 0.0  # the other groups have no low channel
    assert s["criterion"] == "l1" and "scores (l1)" in render_text(report)


def test_scores_from_calibration_data_find_dead_feature_maps(tmp_path):
    """With data, HRank ranks the feature maps: the three zero filters give constant maps (rank
    <= 1 against ~8 for the others), exactly those three are low; the pass is recorded."""
    data = {"x": np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32)}
    report = build_report(str(dead_filter_cnn(tmp_path / "d.onnx")), data=data,
                          settings=ReportSettings(latency_runs=0, calibration_images=32))
    s = report.scores
    assert s["criterion"] == "hrank" and s["calibration"] == {"images": 32, "provider": "CPUExecutionProvider"}
    dead = next(g for g in s["groups"] if g["id"] == 2)
    low = [i for i, v in enumerate(dead["normalised"]) if v < s["low_score"]]
    assert low == [0, 1, 2] and dead["recommended_ratio"] == pytest.approx(3 / 8)
    with pytest.raises(OnnxPruneError, match="give calibration data"):
        build_report(str(tmp_path / "d.onnx"), criterion="apoz", settings=NO_LATENCY)


def test_scores_must_match_the_groups(model):
    with pytest.raises(ValueError, match="do not match"):
        build_report(str(model), scores={1: np.ones(3)}, settings=NO_LATENCY)


def test_sensitivity_section_and_foreign_fingerprint(model, tmp_path):
    report = build_report(str(model), settings=NO_LATENCY)
    curves = {"1": [0.0, 0.004, 0.02, 0.5], "2": [0.02, 0.03, 0.05, 0.1]}
    sens = {"fingerprint": report.model["fingerprint"], "ratios": [0.2, 0.4, 0.6, 0.8], "metric": "kl",
            "criterion": "l1", "curves": curves}
    s = build_report(str(model), sensitivity=sens, settings=NO_LATENCY).sensitivity
    safe = {g["id"]: g["safe_ratio"] for g in s["groups"]}
    assert safe[1] == pytest.approx(0.4 + 0.2 * (0.01 - 0.004) / (0.02 - 0.004), abs=1e-4)  # interpolated
    assert safe[2] == pytest.approx(0.2 * 0.01 / 0.02)  # between no pruning (damage 0) and the first ratio
    with pytest.raises(PlanError, match="another model"):
        build_report(str(model), sensitivity={**sens, "fingerprint": "sha256:other"}, settings=NO_LATENCY)


# --- renderings ------------------------------------------------------------------------------------
class _Checker(HTMLParser):
    """Collects tags, checks nesting of the elements the page uses, finds external references."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.external = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key) and not (attrs[key].startswith("data:") or attrs[key].startswith("#")):
                self.external.append(attrs[key])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}> at {self.getpos()}")


def test_html_is_self_contained_and_well_formed(result, model):
    report = build_report(str(model), plan=result.plan, criterion="l1",
                          settings=ReportSettings(latency_runs=2, warmup_runs=0))
    page = render_html(report)
    checker = _Checker()
    checker.feed(page)
    assert not checker.errors and not checker.stack, checker.errors or checker.stack
    assert not checker.external, checker.external
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert len(checker.images) == 3  # MACs, params, scores
    for src in checker.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for text in ("Summary", "Plan: before and after", "Latency", "Layers", "Channel groups", "Blockers",
                 "Channel scores", "measured = predicted", "reaches graph output"):
        assert text in page, text


def test_html_escapes_names(tmp_path):
    g = G()
    y = g.conv(g.cbr("x", 3, 4), 4, 4)
    g.nodes[0].name = "<b>evil</b>&"
    path = tmp_path / "e.onnx"
    onnx.save(g.model(g.head(y, 4)), path)
    page = render_html(build_report(str(path), settings=NO_LATENCY))
    assert "<b>evil</b>" not in page
    assert "&lt;b&gt;evil&lt;/b&gt;&amp;" in page.replace("<wbr>", "")  # names may wrap after '/' (<wbr>)


def test_html_is_deterministic_without_latency(result, model):
    report = build_report(str(model), plan=result.plan, settings=NO_LATENCY)
    assert render_html(report) == render_html(report)


def test_text_report_sections(result, model):
    text = render_text(build_report(str(model), plan=result.plan, settings=NO_LATENCY))
    for part in ("model ", "MACs after", "blockers by share of MACs", "plan\n", "measured = predicted"):
        assert part in text, part
    assert "latency" not in text


# --- write_report (the library entry compress calls) -------------------------------------------------
@pytest.mark.parametrize("name,check", [
    ("r.html", lambda t: t.startswith("<!DOCTYPE html>")),
    ("r.json", lambda t: json.loads(t)["schema"] == SCHEMA),
    ("r.txt", lambda t: t.startswith("model ")),
])
def test_write_report_picks_format_from_extension(result, model, tmp_path, name, check):
    report = write_report(tmp_path / name, str(model), result=result, settings=NO_LATENCY)
    assert check((tmp_path / name).read_text())
    assert report.plan["prediction_matches"] is True
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_write_report_refuses_unknown_extension_and_missing_directory(model, tmp_path):
    with pytest.raises(OnnxPruneError, match="cannot tell the report format"):
        write_report(tmp_path / "r.pdf", str(model))
    with pytest.raises(OnnxPruneError, match="does not exist"):
        write_report(tmp_path / "no" / "r.html", str(model))


# --- the inspect command ------------------------------------------------------------------------------
def test_inspect_html_default_path_says_where(capsys, model, tmp_path):
    code, out, err = run_cli(capsys, "inspect", model, "--format", "html")
    assert code == 0, err
    assert out.strip() == f"wrote {tmp_path / 'm.report.html'}"
    assert (tmp_path / "m.report.html").read_text().startswith("<!DOCTYPE html>")


def test_inspect_format_from_output_extension_and_plan(capsys, model, plan_file, tmp_path):
    code, out, err = run_cli(capsys, "inspect", model, "--plan", plan_file, "--runs", "2", "-o", tmp_path / "r.json")
    assert code == 0, err
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["plan"]["prediction_matches"] is True and data["latency"]["runs"] == 2


def test_inspect_json_flag_and_text_to_stdout(capsys, model):
    code, out, _ = run_cli(capsys, "inspect", model, "--json", "--criterion", "l2")
    assert code == 0 and json.loads(out)["scores"]["criterion"] == "l2"
    code, out, _ = run_cli(capsys, "inspect", model)
    assert code == 0 and out.startswith("model ") and "blockers by share" in out


def test_inspect_force_overwrites(capsys, model, tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    assert run_cli(capsys, "inspect", model, "-o", target, "--force")[0] == 0
    assert target.read_text().startswith("model ")


def test_inspect_usage_errors_exit_2(capsys, model, tmp_path):
    code, _, err = run_cli(capsys, "inspect", model, "--json", "--format", "html")
    assert code == 2 and "--json conflicts with --format html" in err
    code, _, err = run_cli(capsys, "inspect", model, "-o", tmp_path / "r.pdf")
    assert code == 2 and "cannot tell the report format" in err
    code, _, err = run_cli(capsys, "inspect", model, "--runs", "-1")
    assert code == 2


def foreign_plan(p, m):
    other = small_cnn(p / "other.onnx", seed=5)
    path = p / "other.plan.json"
    path.write_text(compress(str(other), Settings(target=Target("flops", 0.3))).plan.to_json())
    return path


def foreign_sensitivity(p, m):
    path = p / "s.json"
    path.write_text(json.dumps({"format": "onnxprune.sensitivity/1", "fingerprint": "sha256:0", "ratios": [0.5],
                                "metric": "kl", "criterion": "l1", "curves": {}, "keys": {}}))
    return path


BAD_INSPECT = [
    ("missing file", lambda p, m: ["inspect", p / "nope.onnx"], "no such file"),
    ("directory", lambda p, m: ["inspect", p], "is a directory"),
    ("not onnx", lambda p, m: (p.joinpath("t.onnx").write_text("hello"), ["inspect", p / "t.onnx"])[1], "not"),
    ("truncated", lambda p, m: (p.joinpath("tr.onnx").write_bytes(m.read_bytes()[:700]), ["inspect", p / "tr.onnx"])[1], "ONNX"),
    ("plan for another model", lambda p, m: ["inspect", m, "--plan", foreign_plan(p, m)], "another model"),
    ("plan not json", lambda p, m: (p.joinpath("bad.json").write_text("{"), ["inspect", m, "--plan", p / "bad.json"])[1],
     "not a valid onnxprune plan"),
    ("plan missing", lambda p, m: ["inspect", m, "--plan", p / "none.json"], "cannot read plan"),
    ("sensitivity for another model", lambda p, m: ["inspect", m, "--sensitivity", foreign_sensitivity(p, m)], "another model"),
    ("output directory missing", lambda p, m: ["inspect", m, "-o", p / "no" / "dir" / "r.html"], "does not exist"),
    ("output under a file", lambda p, m: ["inspect", m, "-o", m / "r.json"], "is not a directory"),
    ("output is a directory", lambda p, m: (p.joinpath("d.html").mkdir(), ["inspect", m, "-o", p / "d.html", "--force"])[1],
     "is a directory"),
    ("existing html without --force", lambda p, m: (p.joinpath("m.report.html").write_text("x"), ["inspect", m, "--format", "html"])[1],
     "--force"),
    ("output is the input", lambda p, m: ["inspect", m, "-o", m, "--format", "text"], "is the input model"),
]


@pytest.mark.parametrize("case,args,message", BAD_INSPECT, ids=[b[0] for b in BAD_INSPECT])
def test_inspect_bad_input_gives_one_line_error(capsys, tmp_path, model, case, args, message):
    before = digest(model)
    argv = args(tmp_path, model)
    files = sorted(tmp_path.iterdir())
    code, out, err = run_cli(capsys, *argv)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert digest(model) == before
    assert sorted(tmp_path.iterdir()) == files  # nothing written, no temporary file left


def test_interrupt_while_writing_leaves_no_file(capsys, monkeypatch, model, tmp_path):
    """Ctrl-C during the write: exit 130, one line, neither the report nor its temporary file."""
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    code, _, err = run_cli(capsys, "inspect", model, "-o", tmp_path / "r.html")
    assert code == 130 and err.strip() == "error: interrupted; no output was written"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --- headless browser ------------------------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        # Never skipped: .ci/run installs chromium where it is missing, so CI always renders the page.
        pytest.fail("chromium is not installed (apt-get install chromium; .ci/run does it): the HTML must be rendered in a browser")
    return path


def _browser(chromium: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_html_renders_in_headless_chromium(result, model, tmp_path):
    chromium = _chromium()
    page = tmp_path / "m.report.html"
    write_report(page, str(model), result=result, criterion="l1", settings=ReportSettings(latency_runs=3, warmup_runs=1))
    shot = tmp_path / "shot.png"
    run = _browser(chromium, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    assert shot.exists(), run.stderr[-2000:]
    console = [l for l in run.stderr.splitlines() if "CONSOLE" in l or "Uncaught" in l]
    assert not console, console

    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 20, "the screenshot is blank"
    bars = np.all(np.abs(pixels - np.array([0x2F, 0x6F, 0xBF])) < 12, axis=2).sum()  # the plots' "prunable" blue
    assert bars > 2000, f"only {bars} pixels of plot bars: the embedded PNGs did not render"

    dom = _browser(chromium, "--dump-dom", page.as_uri()).stdout
    assert "onnxprune report: m.onnx" in dom and dom.count("data:image/png;base64,") == 3
    assert 'id="layers"' in dom and 'id="blockers"' in dom and "measured = predicted" in dom


# --- SIGINT in a real process ---------------------------------------------------------------------------
def _start(args, cwd, marker: bool):
    """Run the installed CLI (as the console script does) in a subprocess; with ``marker`` it
    prints 'ready' once its imports are done, so the interrupt lands in the work, not the imports."""
    code = ("import sys\nfrom onnxprune.cli.main import main\n" +
            ("sys.stderr.write('ready\\n'); sys.stderr.flush()\n" if marker else "") + "main(sys.argv[1:])")
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    import onnxprune.cli.main  # noqa: F401
    from zoo import export

    return export("resnet50", tmp_path_factory.mktemp("zoo"))


@pytest.mark.slow
def test_sigint_mid_compress_leaves_no_partial_file(resnet50, tmp_path):
    model = tmp_path / "r50.onnx"
    shutil.copy(resnet50, model)
    proc = _start(["compress", model, "--flops", "0.3"], tmp_path, marker=True)
    assert proc.stderr.readline().strip() == "ready"
    time.sleep(1.0)
    assert proc.poll() is None, "compress finished before the interrupt: use a larger model"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert err.strip().splitlines() == ["error: interrupted; no output was written"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r50.onnx"]


@pytest.mark.slow
def test_sigint_during_startup_is_one_line(tmp_path):
    import onnxprune.cli.main  # noqa: F401
    model = small_cnn(tmp_path / "m.onnx")
    proc = _start(["compress", model, "--flops", "0.3"], tmp_path, marker=False)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().splitlines() == ["error: interrupted; no output was written"], err



def test_report_api_is_exported_lazily():
    """``from onnxprune import build_report`` works, and ``import onnxprune`` alone loads no report code."""
    import onnxprune
    import onnxprune.report.build as module

    for name in ("Report", "ReportSettings", "build_report", "write_report"):
        assert name in onnxprune.__all__ and getattr(onnxprune, name) is getattr(module, name)
    code = ("import sys, onnxprune; print(sorted(m for m in sys.modules if m.startswith('onnxprune.') or m in ('onnx', 'numpy')));"
            "from onnxprune import build_report; print('onnxprune.report' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["[]", "True"]


def test_inspect_with_data_scores_channels_on_feature_maps(capsys, tmp_path):
    """`inspect --data` runs a calibration pass: HRank score distributions per group (on the
    tensor named in the group's ``output``), with the images and provider used; a data criterion
    without data is a usage error."""
    root = Path(__file__).resolve().parents[1]
    sample = np.load(root / "models" / "fmnist_sample.npz")
    np.savez(tmp_path / "calib.npz", input=sample["input"][:64])
    code, out, err = run_cli(capsys, "inspect", root / "models" / "resnet20_fmnist.onnx", "--data", tmp_path / "calib.npz",
                             "--json")
    assert code == 0, err
    scores = json.loads(out)["scores"]
    assert scores["criterion"] == "hrank" and scores["calibration"]["images"] == 64
    assert len(scores["groups"]) >= 10
    code, _, err = run_cli(capsys, "inspect", root / "models" / "resnet20_fmnist.onnx", "--criterion", "apoz")
    assert code == 2 and "give --data" in err
