"""Structured OBS (onnxprune/scoring/obs.py, obs_select.py, reconstruct/obs_fold.py) and group magnitude
(onnxprune/scoring/weights.py).

The OBS update is checked against a brute-force least-squares refit; the unfolding against
onnxruntime's own convolution; the profiles of a group with two consumers against refits of
both consumers from real activations; the profiles' use by an exact (brute-force) allocator
against the measured output error of the pruned models.
"""

import itertools
import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from graphs import G
from onnxprune import Settings, Target, analyse, apply_plan, compress, load_model
from onnxprune.cost import CostModel
from onnxprune.reconstruct.obs_fold import fold_obs
from onnxprune.rewrite import rewrite
from onnxprune.runtime.session import session
from onnxprune.runtime.submodel import exposing
from onnxprune.scoring.obs import ConsumerState, Gram, Layer, ObsSettings, greedy, layers_of, obs_profiles, unfold
from onnxprune.scoring.obs_select import obs_select
from onnxprune.scoring.weights import score_groups

RIDGE = 1e-2


def _damped(h: np.ndarray, ridge: float, intercept: bool = True) -> np.ndarray:
    body = h.shape[0] - 1 if intercept else h.shape[0]
    diag = np.diag(h)[:body]
    lam = ridge * diag[diag > 0].mean()
    return h + np.diag(np.r_[np.full(body, lam), np.zeros(h.shape[0] - body)])


def _objective(w, hdd, g, hl, v) -> float:
    """E||W x_d - V x_p||^2 + lambda ||V||^2 (body columns), from the statistics."""
    return float(np.trace(w @ hdd @ w.T) - 2 * np.trace(w @ g @ v.T) + np.trace(v @ hl @ v.T))


def _refit(w, g, hl, kept_cols):
    """Brute force: the least-squares V on the kept columns (zero elsewhere)."""
    v = np.zeros_like(w)
    v[:, kept_cols] = np.linalg.solve(hl[np.ix_(kept_cols, kept_cols)], (w @ g[:, kept_cols]).T).T
    return v


def _random_layer(rng, channels=5, kk=3, out=4, samples=400):
    """A consumer with ``channels`` input channels of ``kk`` columns, correlated inputs, and
    pruned-network inputs that differ from the dense ones."""
    n = channels * kk
    mix = rng.standard_normal((n, n)) * 0.4 + np.eye(n)
    xd = rng.standard_normal((samples, n)) @ mix + 0.3
    xp = xd + 0.2 * rng.standard_normal(xd.shape)
    w = np.concatenate([rng.standard_normal((out, n)), np.zeros((out, 1))], axis=1)
    ones = np.ones((samples, 1))
    xd, xp = np.hstack([xd, ones]), np.hstack([xp, ones])
    layer = Layer(consumer=None, w=w, input="x", op="Gemm", kk=kk)
    gram = Gram(samples, xp.T @ xp, xd.T @ xp)
    return layer, gram, xd, xp


@pytest.mark.parametrize("align", [1, 2])
def test_obs_update_equals_least_squares_refit(align):
    rng = np.random.default_rng(3)
    layer, gram, xd, xp = _random_layer(rng)
    n = gram.images
    h, g, hdd = gram.hpp / n, gram.hdp / n, xd.T @ xd / n
    hl = _damped(h, RIDGE)
    cols = layer.columns(np.arange(5))
    state = ConsumerState(layer, gram, np.arange(5), cols, RIDGE)
    w_star = _refit(layer.w, g, hl, np.arange(h.shape[0]))
    np.testing.assert_allclose(state.full_w, w_star, rtol=1e-9, atol=1e-9 * np.abs(w_star).max())
    base = _objective(layer.w, hdd, g, hl, w_star)

    # The greedy's first choice is the channel whose brute-force refit costs least.
    increase = []
    for c in range(5):
        kept = np.setdiff1d(np.arange(h.shape[0]), cols[c])
        increase.append(_objective(layer.w, hdd, g, hl, _refit(layer.w, g, hl, kept)) - base)
    single = state.costs(5, np.ones(5, bool)) / state.norm
    np.testing.assert_allclose(single, increase, rtol=1e-7)

    removed, cum = greedy(SimpleNamespace(size=5), {0: state}, 4, align)
    if align == 1:
        assert removed[0] == int(np.argmin(increase))
    kept = np.setdiff1d(np.arange(h.shape[0]), cols[removed].ravel())
    v = _refit(layer.w, g, hl, kept)
    # The updated weights are the exact refit on what is left; the predicted cost is the
    # measured increase of the objective.
    np.testing.assert_allclose(state.full_w, v, rtol=1e-7, atol=1e-8 * np.abs(v).max())
    measured = _objective(layer.w, hdd, g, hl, v) - base
    assert cum[-1] / state.norm == pytest.approx(measured, rel=1e-7)
    assert np.all(np.diff(cum) >= -1e-12 * cum[-1])


def test_predicted_cost_is_measured_error_increase_on_samples():
    """With a negligible damping the cost is the increase of the mean squared output error
    measured on the samples themselves."""
    rng = np.random.default_rng(5)
    layer, gram, xd, xp = _random_layer(rng, channels=4, kk=2, samples=300)
    ridge = 1e-10
    state = ConsumerState(layer, gram, np.arange(4), layer.columns(np.arange(4)), ridge)
    err = lambda v: float((((xd @ layer.w.T) - xp @ v.T) ** 2).sum(1).mean())  # noqa: E731
    before = err(state.full_w)
    _, cum = greedy(SimpleNamespace(size=4), {0: state}, 2)
    after = err(state.full_w)
    assert cum[-1] / state.norm == pytest.approx(after - before, rel=1e-5, abs=1e-9 * before)


def two_consumer_model():
    """conv1 -> relu feeds a 3x3 conv and a 1x1 conv (one group, two consumers)."""
    g = G(1)
    a = g.op("Relu", [g.conv("x", 3, 6)])
    b = g.conv(a, 6, 4, k=3)
    c = g.conv(a, 6, 4, k=1)
    s = g.op("Relu", [g.op("Add", [b, c])])
    return g.model(g.head(s, 4), in_shape=(1, 3, 6, 6))


def _batches(n=3, size=16, seed=0, shape=(3, 6, 6)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((size, *shape)).astype(np.float32)} for _ in range(n)]


def test_unfold_reproduces_onnxruntime_convolution():
    g = G(2)
    y = g.op("Conv", ["x", g.w(5, 3, 3, 3), g.w(5)], kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 1],
             dilations=[1, 2])
    model = g.model(g.head(y, 5), in_shape=(1, 3, 9, 8))
    analysis = analyse(load_model(model))
    layer = next(l for l in layers_of(analysis) if l.op == "Conv")
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
    out = session(exposing(model, [y])).run([y], {"x": x})[0]
    cols, scale = unfold(layer, x, np.random.default_rng(0), 10**6)
    assert scale == 1.0
    bias = np.asarray(analysis.model.tensors[layer.consumer.bias].values, np.float64)
    mine = cols.astype(np.float64) @ layer.w.T + bias  # rows: image, oy, ox
    ref = out.transpose(0, 2, 3, 1).reshape(-1, 5)
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_group_with_two_consumers_sums_their_refit_errors():
    model = two_consumer_model()
    analysis = analyse(load_model(model))
    group = next(g for g in analysis.prunable_groups if g.size == 6)
    settings = ObsSettings(max_positions=10**6)
    batches = _batches()
    order, loss = obs_profiles(analysis, batches, settings)
    assert sorted(order[group.id]) == list(range(6)) and len(loss[group.id]) == 7 and loss[group.id][0] == 0
    layers = [l for l in layers_of(analysis) if l.consumer.in_dim.id in group.atom_index]
    assert len(layers) == 2
    # Brute force from the real activations: each consumer refit on the kept columns.
    xs = {l.input: [] for l in layers}
    sess = session(exposing(model, sorted(xs)))
    for b in batches:
        for name, v in zip(sorted(xs), sess.run(sorted(xs), b)):
            xs[name].append(v)
    for removed_count in (1, 3, 5):
        gone = order[group.id][6 - removed_count:]
        total = 0.0
        for l in layers:
            x = np.concatenate(xs[l.input])
            u, _ = unfold(l, x, np.random.default_rng(0), 10**6)
            u = u.astype(np.float64)
            h = u.T @ u / len(x)
            hl = _damped(h, RIDGE)
            w_star = _refit(l.w, h, hl, np.arange(h.shape[0]))
            base = _objective(l.w, h, h, hl, w_star)
            atoms = group.atom_index[l.consumer.in_dim.id][np.isin(group.channel_atoms[l.consumer.in_dim.id], gone)]
            kept = np.setdiff1d(np.arange(h.shape[0]), l.columns(atoms).ravel())
            v = _refit(l.w, h, hl, kept)
            energy = float(np.einsum("ij,jk,ik->", w_star, hl, w_star))
            total += (_objective(l.w, h, h, hl, v) - base) / energy
        assert loss[group.id][removed_count] == pytest.approx(total, rel=1e-4)


def _output_error(model, pruned, batches) -> float:
    a, b = session(model), session(pruned)
    return float(np.mean([((a.run(None, x)[0] - b.run(None, x)[0]) ** 2).mean() for x in batches]))


def test_profiles_with_exact_allocator_predict_the_measured_error():
    """A minimal exact allocator (brute force over the blocks of every group) on the profiles:
    the allocation it finds best must measure a smaller output error than the one it finds worst."""
    model = two_consumer_model()
    analysis = analyse(load_model(model))
    cost = CostModel(analysis)
    base = cost.evaluate(analysis.full_keep())
    align = 2
    order, loss = obs_profiles(analysis, _batches(), ObsSettings(align=align, max_positions=10**6))
    groups = analysis.prunable_groups
    for g in groups:
        assert len(loss[g.id]) == g.size // align + 1
        assert np.all(np.diff(loss[g.id]) >= 0)
    feasible = []
    for blocks in itertools.product(*[range(g.size // align) for g in groups]):  # keep >= 1 block... of channels
        kept = {g.id: np.sort(order[g.id][: g.size - b * align]) for g, b in zip(groups, blocks)}
        c = cost.evaluate(analysis.keep_vector(kept))
        if c.reduction(base, "flops") >= 0.3:
            feasible.append((sum(loss[g.id][b] for g, b in zip(groups, blocks)), kept))
    assert len(feasible) > 2
    feasible.sort(key=lambda t: t[0])
    measured = []
    test = _batches(seed=9)
    for _, kept in (feasible[0], feasible[-1]):
        counts = {g.id: len(kept[g.id]) for g in groups}
        sel = obs_select(analysis, counts, _batches(), ObsSettings(max_positions=10**6))
        keep = analysis.keep_vector(sel.kept)
        pruned = fold_obs(analysis, keep, rewrite(analysis, keep), sel)
        onnx.checker.check_model(pruned)
        measured.append(_output_error(model, pruned, test))
    assert measured[0] < measured[1]


def test_obs_compress_is_deterministic_and_reproducible(tmp_path):
    model = two_consumer_model()
    rng = np.random.default_rng(4)
    data = tmp_path / "calib.npz"
    np.savez(data, x=rng.standard_normal((48, 3, 6, 6)).astype(np.float32))
    for mode, allocation in (("obs", "uniform"), ("ldrf", "global")):
        settings = Settings(Target("flops", 0.4), criterion="obs", reconstruct=mode, allocation=allocation)
        first = compress(model, settings, data=str(data))
        second = compress(model, settings, data=str(data))
        assert first.model.SerializeToString() == second.model.SerializeToString()
        onnx.checker.check_model(first.model, full_check=True)
        assert first.summary["flops_reduction"] >= 0.4
        again = apply_plan(model, first.plan, data=str(data))
        assert again.SerializeToString() == first.model.SerializeToString()


def test_obs_refit_beats_plain_removal():
    """Same kept channels: the folded OBS refit is closer to the original than plain removal."""
    model = two_consumer_model()
    analysis = analyse(load_model(model))
    group = next(g for g in analysis.prunable_groups if g.size == 6)
    sel = obs_select(analysis, {group.id: 3}, _batches(), ObsSettings(max_positions=10**6))
    keep = analysis.keep_vector(sel.kept)
    plain = rewrite(analysis, keep)
    refit = fold_obs(analysis, keep, plain, sel)
    test = _batches(seed=11)
    assert _output_error(model, refit, test) < 0.5 * _output_error(model, plain, test)


def test_group_magnitude_reads_every_member():
    g = G(7)
    w1 = g.rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = g.op("Conv", ["x", g.const(w1)], kernel_shape=[3, 3], pads=[1] * 4)
    gamma = np.array([0.5, 2.0, 1.0, 0.1], np.float32)
    bn = g.op("BatchNormalization", [y, g.const(gamma), g.const(np.zeros(4, np.float32)),
                                     g.const(np.zeros(4, np.float32)), g.const(np.ones(4, np.float32))])
    w2 = g.rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    w2[:, 3] *= 10  # channel 3: weak filter and BN scale, but read strongly by the next layer
    z = g.op("Conv", [g.op("Relu", [bn]), g.const(w2)], kernel_shape=[3, 3], pads=[1] * 4)
    analysis = analyse(load_model(g.model(g.head(g.op("Relu", [z]), 5))))
    group = next(gr for gr in analysis.prunable_groups if gr.size == 4)
    w1d, w2d, gd = w1.astype(np.float64), w2.astype(np.float64), gamma.astype(np.float64)
    for name, p in (("group_magnitude", 2), ("group_l1", 1)):
        members = [(np.abs(w1d) ** p).reshape(4, -1).sum(1), np.abs(gd) ** p,
                   (np.abs(w2d) ** p).transpose(1, 0, 2, 3).reshape(4, -1).sum(1)]
        expected = sum(members) / 3
        expected /= expected.mean()
        got = score_groups(analysis, name)[group.id]
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # l1 looks at the producer only and ranks channel 3 differently from the group score
    assert np.argsort(score_groups(analysis, "l1")[group.id]).tolist() != np.argsort(expected).tolist()


def test_cli_compress_with_obs(capsys, tmp_path):
    from test_cli import run_cli, small_cnn
    from test_cli_data import write_data

    model = small_cnn(tmp_path / "m.onnx")
    data = write_data(tmp_path / "calib.npz", n=32)
    out_path = tmp_path / "p.onnx"
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--no-recover", "--data", data, "--criterion", "obs",
                             "-o", out_path, "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["criterion"] == "obs" and summary["reconstruct"] == "obs" and summary["flops_reduction"] >= 0.4
    onnx.checker.check_model(onnx.load(out_path), full_check=True)
    code, out, err = run_cli(capsys, "compress", model, "--flops", "0.4", "--criterion", "obs", "-o", out_path, "--force")
    assert code != 0 and err.strip().startswith("error:") and "--data" in err and "Traceback" not in err


def test_profile_scores_reproduce_the_order_and_compare_across_groups():
    from onnxprune.allocate.search import ranked
    from onnxprune.scoring.obs import scores_from_profiles

    analysis = analyse(load_model(two_consumer_model()))
    for align in (1, 2):
        order, loss = obs_profiles(analysis, _batches(), ObsSettings(align=align, max_positions=10**6))
        scores = scores_from_profiles(order, loss, align)
        for gid in order:
            if align == 1:
                np.testing.assert_array_equal(ranked(scores)[gid], order[gid])
            # the least important channel scores the error of removing the first block
            assert scores[gid][order[gid][-1]] == pytest.approx(loss[gid][1], rel=1e-6)


def test_frontier_passes_select_what_whole_passes_select():
    """Passes that run only the layers not computed yet (runtime.frontier.Frontier, invalidated
    below every written weight) give the selection and weights of passes run from the inputs."""
    g = G(3)
    x = g.cbr("x", 3, 8)
    y = g.cbr(x, 8, 8)
    s = g.op("Add", [x, g.bn(g.conv(y, 8, 8), 8)])
    model = g.model(g.head(g.op("Relu", [g.cbr(s, 8, 6)]), 6), in_shape=(1, 3, 6, 6))
    analysis = analyse(load_model(model))
    counts = {gr.id: gr.size // 2 for gr in analysis.prunable_groups}
    runs = [obs_select(analysis, counts, _batches(), ObsSettings(frontier=f)) for f in (True, False)]
    assert runs[0].passes == runs[1].passes >= 3
    for gid in counts:
        np.testing.assert_array_equal(runs[0].kept[gid], runs[1].kept[gid])
    for i, w in runs[1].weights.items():
        np.testing.assert_allclose(runs[0].weights[i], w, rtol=1e-4, atol=1e-5 * np.abs(w).max())


def test_registry_settings_and_sensitivity_know_obs(tmp_path):
    """After the restructure (issue 14): obs and the group magnitudes are in the one criterion
    table, ``--reconstruct obs`` without ``--criterion obs`` fails when the settings are made,
    and ``sensitivity_analysis`` orders each group by the dense network's OBS profile."""
    from test_cli import small_cnn
    from test_cli_data import write_data

    from onnxprune import OnnxPruneError, sensitivity_analysis
    from onnxprune.scoring.registry import DATA_CRITERIA, WEIGHT_CRITERIA, inspect_criteria
    from onnxprune.scoring.weights import CRITERIA

    assert "obs" in DATA_CRITERIA and "obs" not in inspect_criteria()
    assert {"group_magnitude", "group_l1"} <= set(WEIGHT_CRITERIA) and set(WEIGHT_CRITERIA) == set(CRITERIA)
    with pytest.raises(OnnxPruneError, match="--criterion obs"):
        Settings(target=Target("flops", 0.3), reconstruct="obs")
    with pytest.raises(OnnxPruneError, match="--criterion obs"):
        Settings(target=Target("flops", 0.3), criterion="hrank", reconstruct="obs")
    model = small_cnn(tmp_path / "m.onnx")
    data = write_data(tmp_path / "calib.npz", n=16)
    sens, analysis = sensitivity_analysis(model, data, criterion="obs", eval_images=16)
    assert sens.criterion == "obs" and set(sens.curves) == {g.id for g in analysis.prunable_groups}
    assert all(np.isfinite(c).all() and len(c) == len(sens.ratios) for c in sens.curves.values())
