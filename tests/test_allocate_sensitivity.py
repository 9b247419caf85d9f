"""Allocation stage. Invariants: the masked evaluator computes what the masked model computes
(same oracle as the analysis tests), with a compensator what rewrite + local reconstruction
computes; sensitivity and global allocations meet the target within the per-group limits."""

import numpy as np
import pytest

from graphs import G, masked
from onnxprune import Limits, Target, TargetError, analyse, load_model
from onnxprune.cost import CostModel
from onnxprune.scoring.weights import score_groups
from onnxprune.errors import PlanError
from onnxprune.rewrite import rewrite
from onnxprune.runtime.session import run
from onnxprune.allocate.from_scores import allocate_global, allocate_sensitivity
from onnxprune.allocate.sensitivity import MaskedEvaluator, Sensitivity, measure_sensitivity, ratio_at
from onnxprune.report.plots import plot_sensitivity


def classifier(seed=0):
    g = G(seed)
    a = g.cbr("x", 3, 8)
    b = g.op("Relu", [g.op("Add", [g.bn(g.conv(g.cbr(a, 8, 8), 8, 8), 8), a])])
    c = g.cbr(b, 8, 16, stride=2)
    return g.model(g.head(g.cbr(c, 16, 12), 12, classes=6), in_shape=(1, 3, 12, 12))


@pytest.fixture(scope="module")
def setup():
    model = load_model(classifier())
    analysis = analyse(model)
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((16, 3, 12, 12)).astype(np.float32)} for _ in range(3)]
    return analysis, batches


def test_masked_evaluator_equals_pruned_model(setup):
    """The fast path (masking in one session) gives the pruned model's outputs exactly."""
    analysis, batches = setup
    ev = MaskedEvaluator(analysis, batches)
    rng = np.random.default_rng(3)
    kept = {g.id: np.sort(rng.choice(g.size, g.size // 2, replace=False)) for g in analysis.prunable_groups}
    keep = analysis.keep_vector(kept)
    pruned = rewrite(analysis, keep)
    got = ev.outputs(keep)
    for b, y in zip(batches, got):
        np.testing.assert_allclose(y, run(pruned, b)[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(y, run(masked(analysis, keep), b)[0], rtol=1e-5, atol=1e-6)
    assert ev.evaluate(analysis.full_keep())["kl"] == pytest.approx(0.0, abs=1e-9)


def test_curves_target_and_reuse(setup, tmp_path):
    analysis, batches = setup
    scores = score_groups(analysis, "l1")
    ev = MaskedEvaluator(analysis, batches)
    sens = measure_sensitivity(analysis, ev, scores, "l1")
    assert set(sens.curves) == set(scores) and ev.evaluations == len(scores) * len(sens.ratios)
    assert all(c[-1] >= 0 for c in sens.curves.values())
    cost = CostModel(analysis)
    for fraction in (0.3, 0.5):
        alloc = allocate_sensitivity(analysis, cost, scores, sens, Target("flops", fraction))
        assert alloc.achieved >= fraction
    # saved analysis is reused, and rejected for another model
    path = tmp_path / "sens.json"
    path.write_text(sens.to_json())
    again = Sensitivity.from_json(path.read_text())
    again.check(analysis)
    assert again.curves == sens.curves
    other = analyse(load_model(classifier(seed=1)))
    with pytest.raises(PlanError):
        again.check(other)
    plot_sensitivity(sens, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_labelled_metric_is_accuracy_drop(setup):
    analysis, batches = setup
    labels = np.random.default_rng(1).integers(0, 6, size=48)
    ev = MaskedEvaluator(analysis, batches, labels)
    assert ev.default_metric == "accuracy_drop"
    assert ev.damage(ev.evaluate(analysis.full_keep()), "accuracy_drop") == 0.0


def test_ratio_at_is_monotone_in_sensitivity():
    ratios = np.array([0.1, 0.2, 0.3, 0.4])
    sensitive = np.array([0.1, 0.3, 0.6, 1.0])
    robust = np.array([0.0, 0.05, 0.2, 0.4])
    noisy = np.array([0.2, 0.1, 0.5, 0.4])  # non-monotone: the envelope is used
    for t in np.linspace(0, 1.2, 25):
        assert ratio_at(sensitive, ratios, t) <= ratio_at(robust, ratios, t)
        assert ratio_at(noisy, ratios, t) <= ratio_at(noisy, ratios, t + 0.05)
    assert ratio_at(robust, ratios, 10) == 0.4 and ratio_at(sensitive, ratios, 0) == 0.0


def test_sensitivity_allocation_is_monotone_across_groups(setup):
    """At one threshold, a group with a higher curve never gets a higher ratio."""
    analysis, _ = setup
    scores = score_groups(analysis, "l1")
    gids = sorted(scores)
    curves = {gid: list(np.linspace(0, 1, 9) * (i + 1)) for i, gid in enumerate(gids)}  # later = more sensitive
    sens = Sensitivity(analysis.model.fingerprint, [0.1 * i for i in range(1, 10)], "kl", "l1", curves,
                       {gid: [] for gid in gids})
    alloc = allocate_sensitivity(analysis, CostModel(analysis), scores, sens, Target("flops", 0.3))
    r = [alloc.details["ratios"][gid] for gid in gids]
    assert all(a >= b for a, b in zip(r, r[1:]))


def test_global_ranking_meets_target_and_limits(setup):
    analysis, _ = setup
    scores = score_groups(analysis, "l1")
    cost = CostModel(analysis)
    alloc = allocate_global(analysis, cost, scores, Target("flops", 0.4), Limits(max_ratio=0.7))
    assert alloc.achieved >= 0.4
    for gid, kept in alloc.kept.items():
        assert len(kept) >= analysis.groups[gid].size - int(0.7 * analysis.groups[gid].size)
    with pytest.raises(TargetError):
        allocate_global(analysis, cost, scores, Target("flops", 0.95), Limits(max_ratio=0.5))


# --- curves measured after local reconstruction ---------------------------------------------------
@pytest.mark.parametrize("model", ["classifier", "flatten-gemm", "gemm-no-bias"])
def test_compensated_evaluator_equals_locally_reconstructed_model(model):
    """With a Compensator, the masked session computes exactly what rewrite + local
    reconstruction (on the same calibration batches) computes, including through Flatten into a
    Gemm and for a consumer that had no bias (the evaluator gives it a zero one)."""
    from onnxprune.reconstruct import Compensator, reconstruct

    if model == "classifier":
        proto, shape = classifier(), (8, 3, 12, 12)
    else:
        g = G(1)
        y = g.cbr("x", 3, 6)
        flat = g.op("Flatten", [y], axis=1)
        bias = [] if model == "gemm-no-bias" else [g.w(5)]
        proto, shape = g.model(g.op("Gemm", [flat, g.w(5, 6 * 8 * 8), *bias], transB=1), in_shape=(1, 3, 8, 8)), (8, 3, 8, 8)
    analysis = analyse(load_model(proto))
    rng = np.random.default_rng(4)
    calib = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(4)]
    evaluate = [{"x": rng.standard_normal(shape).astype(np.float32)}]
    comp = Compensator(analysis, calib, max_positions=10**6)
    ev = MaskedEvaluator(analysis, evaluate, compensator=comp)
    for trial in range(3):
        kept = {g.id: np.sort(rng.choice(g.size, g.size // 2, replace=False)) for g in analysis.prunable_groups}
        keep = analysis.keep_vector(kept)
        plain = rewrite(analysis, keep)
        local, report = reconstruct(analysis, keep, plain, calib, mode="local", max_positions=10**6)
        assert report.fitted, "the check needs at least one fitted consumer"
        want, got = run(local, evaluate[0])[0], ev.outputs(keep)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.abs(run(plain, evaluate[0])[0] - want).max() > 10 * np.abs(got - want).max()
    assert ev.evaluate(analysis.full_keep())["error"] == pytest.approx(0.0, abs=1e-12)


def test_compensated_curves_are_lower_and_recorded(setup, tmp_path):
    """Reconstruction repairs damage, so the compensated curves lie below the plain ones on
    average; the saved analysis says how its curves were measured."""
    from onnxprune.reconstruct import Compensator

    analysis, batches = setup
    scores = score_groups(analysis, "l1")
    plain = measure_sensitivity(analysis, MaskedEvaluator(analysis, batches), scores, "l1", metric="error")
    comp = Compensator(analysis, batches)
    fixed = measure_sensitivity(analysis, MaskedEvaluator(analysis, batches, compensator=comp), scores, "l1", metric="error")
    assert fixed.compensated and not plain.compensated
    a, b = np.array(list(fixed.curves.values())), np.array(list(plain.curves.values()))
    assert a.mean() < 0.8 * b.mean() and (a <= b + 1e-6).mean() > 0.8
    assert Sensitivity.from_json(fixed.to_json()).compensated


@pytest.mark.parametrize("compensated", [False, True])
def test_restricted_evaluation_equals_whole_model(setup, compensated):
    """Running only what a group changes (cached prefix activations) gives the same curves as
    running the whole model, and really runs fewer nodes for the groups after the first."""
    from onnxprune.reconstruct import Compensator

    analysis, batches = setup
    scores = score_groups(analysis, "l1")
    comp = Compensator(analysis, batches) if compensated else None
    full = measure_sensitivity(analysis, MaskedEvaluator(analysis, batches, compensator=comp), scores, "l1",
                               metric="error", restrict=False)
    ev = MaskedEvaluator(analysis, batches, compensator=comp)
    fast = measure_sensitivity(analysis, ev, scores, "l1", metric="error")
    for gid in scores:
        np.testing.assert_allclose(fast.curves[gid], full.curves[gid], rtol=1e-4, atol=1e-7)
    sizes = []
    for g in analysis.prunable_groups:
        keep = analysis.keep_vector({g.id: np.arange(g.size // 2)})
        if ev.focus_on([keep]):
            sizes.append(len(ev.focus.sess.get_inputs()))
            want = np.concatenate(MaskedEvaluator(analysis, batches, compensator=comp).outputs(keep))
            np.testing.assert_allclose(np.concatenate(ev.outputs(keep)), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        ev.unfocus()
    assert sizes, "no group got a restricted evaluation"
