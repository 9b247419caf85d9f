"""Issue 15: CLI conventions a new user relies on (one test per item; see docs/ROBUSTNESS.md)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from test_cli import digest, run_cli, small_cnn


@pytest.fixture
def model(tmp_path):
    return small_cnn(tmp_path / "m.onnx")


def test_existing_plan_needs_force(capsys, model, tmp_path):
    """Item 4: --plan PATH is an output like -o: an existing file is replaced only with --force."""
    plan = tmp_path / "keep.json"
    plan.write_text("mine")
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "-o", tmp_path / "a.onnx", "--plan", plan)
    assert code == 1 and err.strip() == f"error: {plan} exists; pass --force to overwrite it"
    assert plan.read_text() == "mine" and not (tmp_path / "a.onnx").exists()
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "-o", tmp_path / "a.onnx", "--plan", plan, "--force")
    assert code == 0, err
    assert json.loads(plan.read_text())["format"] == "onnxprune.plan/1"


def test_default_plan_beside_a_new_output_needs_force_too(capsys, model, tmp_path):
    (tmp_path / "b.plan.json").write_text("mine")
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "-o", tmp_path / "b.onnx")
    assert code == 1 and "b.plan.json exists; pass --force" in err
    assert (tmp_path / "b.plan.json").read_text() == "mine"


@pytest.mark.parametrize("command", [["compress", "--flops", "0.3"], ["sensitivity", "--data", "d.npz"],
                                     ["finetune", "--data", "d.npz"]])
def test_dash_output_is_a_usage_error_not_a_file(capsys, model, tmp_path, monkeypatch, command):
    """Item 5: `-o -` is refused for models (exit 2) and writes no file named '-'."""
    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 3, 16, 16), np.float32))
    code, _, err = run_cli(capsys, command[0], model, *command[1:], "-o", "-")
    assert code == 2 and "'-' (standard output) is not supported" in err, err
    assert not (tmp_path / "-").exists()


def test_inspect_dash_output_is_stdout(capsys, model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "inspect", model, "-o", "-", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["macs"] > 0 and not (tmp_path / "-").exists()


OUT_OF_RANGE = [
    (["--flops", "1.5"], "--flops"), (["--flops", "0"], "--flops"), (["--flops", "1"], "--flops"),
    (["--flops", "-0.2"], "--flops"), (["--params", "2"], "--params"), (["--flops", "0.3", "--max-ratio", "1.2"], "--max-ratio"),
    (["--flops", "0.3", "--min-channels", "0"], "--min-channels"), (["--flops", "0.3", "--round-to", "0"], "--round-to"),
    (["--flops", "0.3", "--batch-size", "0"], "--batch-size"), (["--flops", "0.3", "--calib-batches", "-1"], "--calib-batches"),
]


@pytest.mark.parametrize("args, option", OUT_OF_RANGE, ids=[" ".join(a) for a, _ in OUT_OF_RANGE])
def test_out_of_range_values_are_usage_errors(capsys, model, tmp_path, args, option):
    """Item 6: exit 2 with click's usage lines, nothing written, the model untouched."""
    before = digest(model)
    code, _, err = run_cli(capsys, "compress", model, *args)
    assert code == 2 and f"Invalid value for {option}" in err.replace("'", ""), err
    assert "Traceback" not in err and not (tmp_path / "m.pruned.onnx").exists() and digest(model) == before


def test_sensitivity_file_without_sensitivity_allocation_is_refused(capsys, model, tmp_path):
    """Item 7: --sensitivity FILE is never ignored silently."""
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32))
    sens = tmp_path / "s.json"
    assert run_cli(capsys, "sensitivity", model, "--data", tmp_path / "d.npz", "-o", sens, "--eval-images", "8")[0] == 0
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--sensitivity", sens)
    assert code == 2 and "add --allocation sensitivity" in err, err
    assert not (tmp_path / "m.pruned.onnx").exists()
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--sensitivity", sens,
                             "--allocation", "sensitivity", "--json")
    assert code == 0, err
    assert json.loads(out)["sensitivity"]["evaluations"] > 0


def test_npz_array_not_named_after_the_input_is_reported(capsys, model, tmp_path):
    """Item 7: a lone array under another name is used and the summary says which; extra arrays
    are named as unused; several arrays none named after the input are refused."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "one.npz", images=images)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", tmp_path / "one.npz",
                             "-o", tmp_path / "a.onnx", "--json", "--holdout", "0")
    assert code == 0, err
    assert any("input 'x' reads array 'images'" in n for n in json.loads(out)["notes"])
    np.savez(tmp_path / "extra.npz", x=images, mask=images)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", tmp_path / "extra.npz",
                             "-o", tmp_path / "b.onnx")
    assert code == 0 and "'mask'" in out and "not model inputs" in out, out
    np.savez(tmp_path / "two.npz", a=images, b=images)
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", tmp_path / "two.npz", "-o", tmp_path / "c.onnx")
    assert code == 1 and err.startswith("error: input 'x' is missing from") and "(given: a, b)" in err


def test_apply_refuses_other_calibration_data(capsys, model, tmp_path):
    """Item 8: the plan records the calibration data's fingerprint; apply with other data is
    refused, and with --force warns and writes a model that differs."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "e.npz", x=rng.standard_normal((20, 3, 16, 16)).astype(np.float32))
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--no-recover", "--data", tmp_path / "d.npz", "-o", tmp_path / "a.onnx")
    assert code == 0, err
    plan = json.loads((tmp_path / "a.plan.json").read_text())
    assert plan["settings"]["data_fingerprint"].startswith("sha256:") and plan["settings"]["holdout"] == 4
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "a.plan.json", "--data", tmp_path / "d.npz", "-o", tmp_path / "b.onnx")
    assert code == 0, err
    assert digest(tmp_path / "b.onnx") == digest(tmp_path / "a.onnx")  # same data, held-out split repeated
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "a.plan.json", "--data", tmp_path / "e.npz", "-o", tmp_path / "c.onnx")
    assert code == 1 and "the data differs from the plan's calibration data" in err and "--force" in err, err
    assert not (tmp_path / "c.onnx").exists()
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "a.plan.json", "--data", tmp_path / "e.npz", "-o",
                           tmp_path / "c.onnx", "--force")
    assert code == 0 and err.startswith("warning: the data differs"), err
    assert digest(tmp_path / "c.onnx") != digest(tmp_path / "a.onnx")
    onnx.checker.check_model(onnx.load(tmp_path / "c.onnx"), full_check=True)


def _ort(path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_compress_evaluates_on_held_out_samples(capsys, model, tmp_path):
    """Item 13: with --data alone, a fifth of it (spread evenly) is held out of calibration, and
    the summary gives top-1 before/after, agreement and output error on it, plus the speed-up
    measured here; the figures are recomputed here from the two models."""
    from onnxprune.evaluation import holdout_indices

    rng = np.random.default_rng(1)
    x, labels = rng.standard_normal((40, 3, 16, 16)).astype(np.float32), rng.integers(0, 5, 40)
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--no-recover", "--data", tmp_path / "d.npz", "-o",
                             tmp_path / "p.onnx", "--json", "--latency-runs", "5")
    assert code == 0, err
    s = json.loads(out)
    ev = s["evaluation"]
    assert ev["samples"] == 8 and s["calibration"]["images"] == 32 and s["holdout"]["held_out"] == 8
    held = holdout_indices(40, 8)
    assert len(held) == 8 and len(set(held.tolist())) == 8
    y0 = _ort(model).run(None, {"x": x[held]})[0].astype(np.float64)
    y1 = _ort(tmp_path / "p.onnx").run(None, {"x": x[held]})[0].astype(np.float64)
    assert ev["before"]["top1"] == pytest.approx((y0.argmax(1) == labels[held]).mean())
    assert ev["after"]["top1"] == pytest.approx((y1.argmax(1) == labels[held]).mean())
    assert ev["after"]["agreement"] == pytest.approx((y0.argmax(1) == y1.argmax(1)).mean())
    err_ref = np.linalg.norm(y1 - y0) / np.linalg.norm(y0)
    assert ev["after"]["output_error"] == pytest.approx(err_ref, rel=1e-3, abs=1e-6) and err_ref > 0
    sp = s["speedup"]
    assert sp["measured"] > 0 and sp["runs"] == 5 and sp["predicted"] == pytest.approx(s["macs_before"] / s["macs_after"], rel=1e-3)
    code, text, err = run_cli(capsys, "compress", model, "--flops", "0.5", "--no-recover", "--data", tmp_path / "d.npz", "-o",
                              tmp_path / "p.onnx", "--force", "--latency-runs", "3")
    assert code == 0 and "eval     8 samples held out of --data" in text and "top-1 " in text and "speed    " in text


def test_compress_evaluates_on_eval_data_and_holdout_zero(capsys, model, tmp_path):
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3, 16, 16)).astype(np.float32))
    np.savez(tmp_path / "v.npz", x=rng.standard_normal((6, 3, 16, 16)).astype(np.float32))
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--no-recover", "--data", tmp_path / "d.npz", "--eval-data",
                             tmp_path / "v.npz", "-o", tmp_path / "p.onnx", "--json", "--latency-runs", "0")
    s = json.loads(out)
    assert code == 0 and s["calibration"]["images"] == 20 and s["evaluation"]["samples"] == 6, err
    assert "top1" not in s["evaluation"]["after"] and 0 <= s["evaluation"]["after"]["agreement"] <= 1
    assert "speedup" not in s
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--no-recover", "--data", tmp_path / "d.npz", "--holdout", "0",
                             "-o", tmp_path / "q.onnx", "--json", "--latency-runs", "0")
    s = json.loads(out)
    assert code == 0 and s["calibration"]["images"] == 20 and "evaluation" not in s and s["holdout"]["held_out"] == 0


def test_api_and_cli_defaults_give_the_same_model(capsys, tmp_path):
    """Item 9: the README's API example and CLI example give the same model, data-free and with
    data (round_to auto, the same held-out split)."""
    from onnxprune import Settings, Target, compress, save_model
    from onnxprune.settings import auto_round_to

    from graphs import G

    g = G(7)  # groups of 16 and 32 channels: round_to 8 reaches 30%
    a = g.cbr("x", 3, 16)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 16, 16), 16, 16), 16), a])])
    model = tmp_path / "r.onnx"
    onnx.save(g.model(g.head(g.cbr(g.cbr(b, 16, 32, stride=2), 32, 32), 32), in_shape=(1, 3, 16, 16)), model)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((20, 3, 16, 16)).astype(np.float32))
    for extra, name in (([], "free"), (["--data", tmp_path / "d.npz"], "data")):
        code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", *extra, "-o", tmp_path / f"cli-{name}.onnx",
                                 "--json", "--latency-runs", "0")
        assert code == 0, err
        result = compress(str(model), Settings(target=Target("flops", 0.3)),
                          data=str(tmp_path / "d.npz") if extra else None)
        save_model(result.model, tmp_path / f"api-{name}.onnx")
        assert digest(tmp_path / f"api-{name}.onnx") == digest(tmp_path / f"cli-{name}.onnx")
        s = json.loads(out)
        # auto: the probed alignment (16 with AVX-512, 8 with AVX2), stepped down to 8 where 16 cannot reach 30%
        assert result.summary["round_to"] == s["round_to"] and s["round_to"] >= 8, s.get("notes")
        assert auto_round_to() % s["round_to"] == 0


def test_finetune_that_hurts_says_so_and_keeps_the_input(capsys, model, tmp_path):
    """Item 10: without --eval-data a tenth of the training data is held out to choose the best
    epoch; a run that makes the model worse (SGD at lr 50) keeps the input weights and says so."""
    pytest.importorskip("torch")  # the [torch] extra; installed in the dev environment
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "t.npz", x=rng.standard_normal((40, 3, 16, 16)).astype(np.float32), labels=rng.integers(0, 5, 40))
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.4", "-o", tmp_path / "p.onnx", "--latency-runs", "0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "finetune", tmp_path / "p.onnx", "--data", tmp_path / "t.npz", "--teacher", model,
                             "--epochs", "2", "--lr", "50", "--optimizer", "sgd", "--json", "-o", tmp_path / "bad.onnx")
    assert code == 0, err
    r = json.loads(out)
    assert r["eval_source"] == "4 samples held out of the training data" and r["history"][0]["epoch"] == 0
    assert r["best_epoch"] == 0 and r["outcome"].startswith("no epoch improved on the input model"), r["outcome"]
    pruned, tuned = onnx.load(tmp_path / "p.onnx"), onnx.load(tmp_path / "bad.onnx")
    assert [np.array_equal(onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b))
            for a, b in zip(pruned.graph.initializer, tuned.graph.initializer)] == [True] * len(pruned.graph.initializer)
    code, out, err = run_cli(capsys, "finetune", tmp_path / "p.onnx", "--data", tmp_path / "t.npz", "--teacher", model,
                             "--epochs", "2", "--lr", "50", "--optimizer", "sgd", "-o", tmp_path / "bad2.onnx")
    assert code == 0 and out.startswith("no epoch improved on the input model") and "written back unchanged" in out
    code, out, err = run_cli(capsys, "finetune", tmp_path / "p.onnx", "--data", tmp_path / "t.npz", "--teacher", model,
                             "--epochs", "1", "--tune-holdout", "0", "-o", tmp_path / "blind.onnx")
    assert code == 0 and out.startswith("kept the last epoch (1) unchecked: no evaluation data"), out


def test_data_free_summary_warns_and_points_to_data(capsys, model, tmp_path):
    """Item 11: the data-free summary says what it did, what to expect and how to do better."""
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--latency-runs", "0")
    assert code == 0, err
    note = next(line for line in out.splitlines() if line.startswith("note     data-free"))
    assert "large accuracy loss" in note and "--data" in note and "l1" in note
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((12, 3, 16, 16)).astype(np.float32))
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", tmp_path / "d.npz", "-o",
                             tmp_path / "d.onnx", "--latency-runs", "0")
    assert code == 0 and "data-free" not in out and "eval     " in out, out
    readme = (__import__("pathlib").Path(__file__).parents[1] / "README.md").read_text()
    assert "```\nonnxprune compress model.onnx --flops 0.3 --data calib.npz\n```" in readme  # the first example


def _image_folder(root, classes=2, per_class=6, size=(20, 24)):
    from PIL import Image

    rng = np.random.default_rng(3)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / f"c{c}" / f"{i}.png")
    return root


PRE = ["--input-size", "16", "--mean", "imagenet", "--std", "0.25", "--channel-order", "BGR", "--crop-fraction", "1"]


def test_image_preprocessing_options_on_every_command(capsys, tmp_path):
    """Item 12: every command that reads data takes the image preprocessing options; a model with
    a symbolic height and width needs --input-size; on an array file they are refused, not ignored."""
    from test_cli_inputs import nchw

    model = tmp_path / "s.onnx"
    onnx.save(nchw("N", h="H", w="W"), model)
    images = _image_folder(tmp_path / "img")
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 3, 16, 16), np.float32))
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", images, "-o", tmp_path / "x.onnx")
    assert code == 1 and "give input_size (--input-size H,W)" in err, err
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--no-recover", "--data", images, *PRE, "-o", tmp_path / "p.onnx",
                             "--json", "--latency-runs", "0")
    assert code == 0, err
    s = json.loads(out)
    assert s["calibration"]["images"] == 10 and s["evaluation"]["samples"] == 2 and "top1" in s["evaluation"]["after"]
    runs = {
        "apply": ["apply", model, tmp_path / "p.plan.json", "--data", images, *PRE, "-o", tmp_path / "q.onnx"],
        "evaluate": ["evaluate", tmp_path / "p.onnx", "--data", images, *PRE, "--reference", model],
        "sensitivity": ["sensitivity", model, "--data", images, *PRE, "-o", tmp_path / "s.json", "--eval-images", "4"],
        "inspect": ["inspect", model, "--data", images, *PRE, "--input-shape", "x:1,3,16,16", "--format", "json"],
        "finetune": ["finetune", tmp_path / "p.onnx", "--data", images, *PRE, "--teacher", model, "--epochs", "1",
                     "-o", tmp_path / "t.onnx"],
    }
    for name, args in runs.items():
        code, _, err = run_cli(capsys, *args)
        assert code == 0, (name, err)
        i = args.index("--data") + 1
        bad = [*args[:i], tmp_path / "a.npz", *args[i + 1:]]
        code, _, err = run_cli(capsys, *bad, *([] if name == "evaluate" else ["--force"]))
        assert code == 1 and "apply to image directories only" in err, (name, err)
    assert digest(tmp_path / "q.onnx") == digest(tmp_path / "p.onnx")  # apply read the images as compress did


def test_image_preprocessing_values(tmp_path):
    """The options reach load_data: BGR order, centre crop, (x/255 - mean) / std per channel."""
    from PIL import Image

    from onnxprune.data import ImageSource, input_specs, load_data
    from test_cli_inputs import nchw

    images = _image_folder(tmp_path / "img", classes=1, per_class=1, size=(16, 20))
    src = ImageSource(str(images), 16, (0.485, 0.456, 0.406), (0.25,), "BGR", 1.0)
    x = next(load_data(src, input_specs(nchw("N", h="H", w="W"))).batches())["x"][0]
    pixels = np.asarray(Image.open(images / "c0" / "0.png"))[:, 2:18, ::-1].transpose(2, 0, 1) / 255.0
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    np.testing.assert_allclose(x, (pixels - mean) / 0.25, atol=1e-5)


def _weights(path):
    return {t.name: tuple(t.dims) for t in onnx.load(path).graph.initializer}


def test_exclude_keeps_the_layers_output_channels(capsys, model, tmp_path):
    """Item 14: --exclude (node or weight name glob, repeatable) keeps those layers' output
    channels; the rest meets the target; apply reproduces the model from the plan."""
    original = _weights(model)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--exclude", "Conv4*", "--exclude", "w51",
                             "-o", tmp_path / "p.onnx", "--json", "--latency-runs", "0")
    assert code == 0, err
    s = json.loads(out)
    assert s["excluded"] == {"Conv4*": ["Conv4+Conv28", "Conv42"], "w51": ["Conv54"]} and s["flops_reduction"] >= 0.3
    pruned = _weights(tmp_path / "p.onnx")
    for w in ("w1", "w39", "w51"):  # Conv4, Conv42 and Conv54 keep every output channel
        assert pruned[w][0] == original[w][0]
    assert pruned["w13"][0] < original["w13"][0]  # Conv16, not excluded, carries the cut
    assert json.loads((tmp_path / "p.plan.json").read_text())["settings"]["exclude"] == ["Conv4*", "w51"]
    code, _, err = run_cli(capsys, "apply", model, tmp_path / "p.plan.json", "-o", tmp_path / "q.onnx")
    assert code == 0 and digest(tmp_path / "q.onnx") == digest(tmp_path / "p.onnx"), err
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--exclude", "conv4*", "-o", tmp_path / "x.onnx")
    assert code == 1 and err.startswith("error: --exclude 'conv4*' matches no node or weight name"), err
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.3", "--exclude", "*", "-o", tmp_path / "x.onnx")
    assert code == 1 and "no prunable channel group" in err and "excluded by --exclude '*'" in err, err


def test_dry_run_prints_the_allocation_and_writes_nothing(capsys, model, tmp_path):
    (tmp_path / "m.pruned.onnx").write_bytes(b"old")  # no --force needed: nothing is written
    before = sorted(p.name for p in tmp_path.iterdir())
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--dry-run", "--json")
    assert code == 0, err
    s = json.loads(out)
    assert s["dry_run"] and sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "m.pruned.onnx").read_bytes() == b"old"
    code, text, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--dry-run")
    assert code == 0 and text.startswith("dry run: nothing written") and "MACs" in text and "wrote" not in text
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "-o", tmp_path / "real.onnx", "--json",
                             "--latency-runs", "0")
    real = json.loads(out)
    assert (real["macs_after"], real["params_after"]) == (s["macs_after"], s["params_after"])  # the prediction holds
    kept = {r["name"]: r["kept"] for r in s["allocation_groups"]}
    plan = json.loads((tmp_path / "real.plan.json").read_text())
    assert sum(kept.values()) == sum(r["channels"] for r in s["allocation_groups"]) - real["channels"]["removed"]
    assert plan["predicted"]["macs_after"] == s["macs_after"]
    code, _, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--dry-run", "--report", tmp_path / "r.json")
    assert code == 2 and "--dry-run writes nothing" in err


# --------------------------------------------------------------------------- item 15: readability

MOBILENET_NAMES = {i: f"/features/features.{i}/conv/conv.0/conv.0.0/Conv+/features/features.{i}/conv/conv.1/conv.1.0/Conv"
                   for i in range(1, 18)}


def test_labels_are_distinct_and_cut_at_separators():
    from onnxprune.report.labels import damage_text, distinct_labels, line_styles, simplify

    labels = distinct_labels(MOBILENET_NAMES, 28)
    assert len(set(labels.values())) == 17 and all(len(v) <= 28 for v in labels.values())
    assert labels[3] == "features.3/conv.0.0/Conv +1"
    long = {1: "/model/backbone/stage1/block3/conv_expand/Conv", 2: "/model/backbone/stage1/block3/conv_project/Conv"}
    short = distinct_labels(long, 20)
    assert short == {1: "conv_expand/Conv", 2: "conv_project/Conv"}  # shared path dropped, whole segments
    cut = distinct_labels({1: "a/b/very_long_segment_name/conv_expand/Conv", 2: "a/c/x/conv_project/Conv"}, 20)
    assert cut == {1: "b/\u2026conv_expand/Conv", 2: "c/\u2026conv_project/Conv"}, cut  # never cut mid-word
    for label in short.values():
        assert label.lstrip("\u2026") in simplify(long[1]) or label.lstrip("\u2026") in simplify(long[2])
    assert len(set(line_styles(60))) == 60
    assert damage_text(1.5e-08, "kl") == "0.0000" and damage_text(0.0123, "accuracy_drop") == "1.2%"


def _named_model(path, groups=18):
    """A chain of convs named like a PyTorch export of MobileNetV2 (shared prefixes)."""
    from graphs import G

    g = G(5)
    x, c = "x", 3
    for i in range(groups):
        x = g.op("Relu", [g.conv(x, c, 8)])
        c = 8
    m = g.model(g.head(x, 8), in_shape=(1, 3, 8, 8))
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    for i, n in enumerate(convs):
        n.name = f"/features/features.{i}/conv/conv.0/conv.0.0/Conv"
    onnx.save(m, path)
    return path


def test_sensitivity_table_and_plot_are_readable(capsys, tmp_path):
    model = _named_model(tmp_path / "mb.onnx")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    code, out, err = run_cli(capsys, "sensitivity", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "s.json",
                             "--plot", tmp_path / "s.png", "--eval-images", "8", "--metric", "kl")
    assert code == 0, err
    rows = [line for line in out.splitlines()[2:] if line[:5].strip().isdigit()]
    names = [line[7:47].strip() for line in rows]
    assert len(rows) >= 17 and len(set(names)) == len(names), out
    assert all(n.startswith("features.") and n.endswith("conv.0.0/Conv") for n in names), names
    assert "e-0" not in out and "e+0" not in out
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_sensitivity_plot_legend_distinct(tmp_path, monkeypatch):
    """The plot's legend: one distinct label and one distinct (colour, style) per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from onnxprune.allocate.sensitivity import Sensitivity
    from onnxprune.report.plots import plot_sensitivity

    figures = []
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    sens = Sensitivity(fingerprint="f", criterion="l1", metric="kl", ratios=[0.1, 0.5, 0.9],
                       curves={i: [0.0, 0.1 * i, 0.2 * i] for i in MOBILENET_NAMES}, names=MOBILENET_NAMES,
                       keys={i: [] for i in MOBILENET_NAMES},
                       evaluations=51, seconds=1.0)
    plot_sensitivity(sens, tmp_path / "p.png")
    lines = figures[0].axes[0].get_lines()
    assert len({line.get_label() for line in lines}) == 17
    assert len({(tuple(matplotlib.colors.to_rgba(line.get_color())), line.get_linestyle()) for line in lines}) == 17
    assert all(len(line.get_label()) <= 34 and "features." in line.get_label() for line in lines)


def test_help_has_no_literal_percent_and_figures_match_docs(capsys):
    import re
    from pathlib import Path

    docs = Path(__file__).parents[1] / "docs"
    texts = {}
    for command in ("compress", "apply", "inspect", "sensitivity", "evaluate", "finetune"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0 and "%%" not in out, command
        texts[command] = " ".join(out.split())
    assert "Examples:" in texts["apply"] and "onnxprune apply model.onnx" in texts["apply"]
    effs = {}
    for row in (docs / "LATENCY.md").read_text().split("## Summary")[1].split("\n## ")[0].splitlines():
        cells = [c.strip() for c in row.strip("|").split("|")]
        if len(cells) > 6 and cells[2].isdigit() and cells[0].isdigit():
            effs.setdefault(int(cells[2]), []).append(float(cells[6]))
    for r in (1, 8, 16):
        assert f"{min(effs[r]):.2f}-{max(effs[r]):.2f}x" in texts["compress"], (r, effs[r])
    calib = (docs / "CALIBRATION.md").read_text()
    exact, early = re.search(r"exact HRank [\d.]+ s \(\*\*([\d.]+)x", calib), re.search(r"tol 0.2 [\d.]+ s \(\*\*([\d.]+)x", calib)
    assert f"0.2: {float(early[1]):.1f}x plain inference instead of {float(exact[1]):.1f}x" in texts["compress"]
    assert "98.1% of kept channels identical" in texts["compress"] and "98.1%" in calib


def test_report_scores_show_the_plan_beside_the_suggestion(tmp_path):
    from onnxprune import Settings, Target, compress
    from onnxprune.report import build_report, render

    model = _named_model(tmp_path / "mb.onnx", groups=4)
    data = {"x": np.random.default_rng(0).standard_normal((16, 3, 8, 8)).astype(np.float32)}
    result = compress(str(model), Settings(target=Target("flops", 0.5)), data=data)
    html = render(build_report(str(model), result=result), "html")
    assert "plan removes" in html and "recommended ratio" not in html and ">0.00<" not in html


def test_long_model_layer_chart_names_layers(tmp_path):
    """MobileNetV2 has more than 48 layers: the chart names every k-th layer instead of numbering."""
    import matplotlib

    matplotlib.use("Agg")
    from onnxprune.report import build_report
    from onnxprune.report.html import per_layer_figure

    model = _named_model(tmp_path / "deep.onnx", groups=60)
    report = build_report(str(model))
    fig = per_layer_figure(report, "macs", "MACs")
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert 30 <= len(ticks) <= 48 and all("features." in t or "Gemm" in t for t in ticks), ticks[:5]


def test_output_error_keeps_small_values(tmp_path):
    """A softmax head of a random-weight model differs by ~1e-7 relative after pruning: the error
    is kept to 6 significant digits, not rounded to 0 (and agreement can still be low: near ties)."""
    from onnxprune.data import input_specs, load_data
    from onnxprune.evaluation import evaluate_pair

    original = onnx.load(small_cnn(tmp_path / "m.onnx"))
    pruned = onnx.ModelProto()
    pruned.CopyFrom(original)
    w = next(t for t in pruned.graph.initializer if t.name == "w67")
    a = onnx.numpy_helper.to_array(w).astype(np.float32)
    w.CopyFrom(onnx.numpy_helper.from_array(a * (np.float32(1) + np.float32(2.4e-7)), "w67"))  # 2 ulp
    data = load_data({"x": np.random.default_rng(0).standard_normal((6, 3, 16, 16)).astype(np.float32)},
                     input_specs(original))
    ev = evaluate_pair(original, pruned, data)
    assert 0 < ev["after"]["output_error"] < 1e-6 and ev["samples"] == 6  # round(x, 6) gave 0
