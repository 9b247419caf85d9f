"""Reconstruction stage. Invariants: the fold is exact algebra; moments do not depend on the
batching (float64, one Gram implementation); a fit that makes the output error worse falls
back to plain removal; the frontier cache changes no result (LDRF passes from stored
activations equal whole-prefix passes, on graphs where the cache is really used)."""

import numpy as np
import pytest

from graphs import G
from onnxprune import analyse, load_model
from onnxprune.reconstruct.moments import Moments
from onnxprune.reconstruct import channels_of, find_consumers, fit, fold, reconstruct, weight_blocks
from onnxprune.rewrite import random_inputs, rewrite
from onnxprune.runtime.session import run


def dependent_channels_model(flatten: bool):
    """conv1 makes 6 channels of which 4 and 5 are linear combinations of 0..3 (no bias, no
    nonlinearity before the consumer), so removing them loses nothing a fit cannot restore."""
    g = G(0)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    w[4] = w[0] + 2 * w[1]
    w[5] = 0.5 * w[2] - w[3]
    y = g.op("Conv", ["x", g.const(w)], kernel_shape=[3, 3], pads=[1] * 4)
    if flatten:
        flat = g.op("Flatten", [y], axis=1)  # 6 x 8 x 8 -> 384
        out = g.op("Gemm", [flat, g.w(5, 384), g.w(5)], transB=1)
    else:
        out = g.head(g.op("Relu", [g.conv(y, 6, 7)]), 7)
    return g.model(out)


def batches(n=4, seed=0, shape=(8, 3, 8, 8)):
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("flatten", [False, True], ids=["conv", "flatten-gemm"])
@pytest.mark.parametrize("mode", ["local", "ldrf"])
def test_exact_when_removed_channels_are_linear_combinations(flatten, mode):
    analysis = analyse(load_model(dependent_channels_model(flatten)))
    group = next(g for g in analysis.prunable_groups if g.size == 6)
    keep = analysis.keep_vector({group.id: np.arange(4)})
    plain = rewrite(analysis, keep)
    fixed, report = reconstruct(analysis, keep, plain, batches(), mode=mode, ridge=1e-9)
    assert report.fitted
    feeds = batches(1, seed=9)[0]
    want = run(analysis.model.proto, feeds)[0]
    got = run(fixed, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
    assert np.abs(run(plain, feeds)[0] - want).max() > 10 * np.abs(got - want).max()
    assert len(fixed.graph.node) == len(plain.graph.node)  # no layer added


def test_fold_equals_explicit_compensation():
    """W' x_K + delta == W (A [x_K; 1]) for a conv weight, tap by tap."""
    rng = np.random.default_rng(1)
    analysis = analyse(load_model(dependent_channels_model(False)))
    c = next(c for c in find_consumers(analysis) if c.in_dim.size == 6)
    w = rng.standard_normal((7, 6, 3, 3))
    kept = np.array([0, 2, 3, 5])
    a = rng.standard_normal((6, 5))
    new_w, delta = fold(w, c, a, kept)
    x_k = rng.standard_normal(4)
    explicit = np.einsum("ocij,c->oij", w, a[:, :4] @ x_k + a[:, 4])
    folded = np.einsum("okij,k->oij", new_w, x_k)
    np.testing.assert_allclose(folded.sum((1, 2)) + delta, explicit.sum((1, 2)), rtol=1e-10)
    np.testing.assert_allclose(folded, explicit - np.einsum("ocij,c->oij", w, a[:, 4]), rtol=1e-10)
    w3, _ = weight_blocks(w, c)
    assert w3.shape == (7, 3, 3, 6, 1)


def test_streamed_moments_equal_all_at_once():
    """Invariant: the moments do not depend on how the data is split into batches (float64
    accumulation, one Gram implementation), to float64 rounding scaled to the sums."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((12, 5, 4, 4))
    kept = np.array([0, 1, 3])
    streamed = Moments()
    for part in np.array_split(x, 4):
        t = channels_of(part, 1)
        streamed.update(t, t[kept])
    t = channels_of(x, 1)
    whole = Moments()
    whole.update(t, t[kept])
    exact = (t.astype(np.float64) @ t.T.astype(np.float64))
    # Float64 products and sums: batching changes only float64 rounding. The tolerance is scaled
    # to the magnitude of the sums compared (1e-12 of the largest), so it holds on any CPU/BLAS.
    def close(a, b):
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * scale)
    for key in ("t", "z", "tt", "tz", "zz"):
        close(getattr(streamed, key), getattr(whole, key))
    close(whole.tt, exact)
    assert streamed.n == whole.n == 12 * 16
    full = Moments()
    full.update(t, None)  # one Gram; any kept subset is a sub-block of it
    sub = full.restrict(kept)
    for key in ("t", "z", "tt", "tz", "zz"):
        close(getattr(sub, key), getattr(whole, key))
    a = fit(streamed, kept, ridge=0.0)
    np.testing.assert_allclose(a[kept, :3], np.eye(3))  # local mode: kept rows are the identity


def test_fallback_when_fit_makes_things_worse(monkeypatch):
    """A fit that increases the consumer's error on the calibration data is dropped: the
    consumer keeps plain removal (here a deliberately bad fit forces that path)."""
    import onnxprune.reconstruct.ldrf as rec

    g = G(3)
    y = g.op("Relu", [g.conv("x", 3, 6)])
    analysis = analyse(load_model(g.model(g.head(g.conv(y, 6, 5), 5))))
    group = next(g for g in analysis.prunable_groups if g.size == 6)
    keep = analysis.keep_vector({group.id: np.array([0, 1, 2])})
    plain = rewrite(analysis, keep)
    good, report = reconstruct(analysis, keep, plain, batches(), mode="local")
    assert report.fitted and all(v < 1.0 for v in report.gain.values())

    real_fit = rec.fit
    monkeypatch.setattr(rec, "fit", lambda m, kept, *a, **k: real_fit(m, kept, *a, **k) * 50.0)
    fixed, report = reconstruct(analysis, keep, plain, batches(), mode="local")
    assert report.fallback and not report.fitted
    feeds = random_inputs(analysis.model.proto, analysis.model.input_shapes)
    np.testing.assert_array_equal(run(fixed, feeds)[0], run(plain, feeds)[0])


# --- LDRF passes that start from the previous wave's frontier --------------------------------------
def _ldrf_both_ways(proto, keep_seed: int, data, monkeypatch, require_reuse: bool = True):
    """LDRF with the frontier cache and with whole-prefix passes: same fits, same weights. With
    ``require_reuse`` the comparison must be real: something is pruned and at least one pass
    started from activations an earlier pass stored (else both paths ran the same code)."""
    import onnxprune.reconstruct.ldrf as ldrf
    from graphs import random_keep
    from onnx import numpy_helper

    from onnxprune.runtime.frontier import Frontier

    analysis = analyse(load_model(proto))
    assert analysis.prunable_groups or not require_reuse, "nothing to prune: the comparison would be vacuous"
    if not analysis.prunable_groups:
        return None
    reused: list[bool] = []

    class Recording(Frontier):
        def begin(self, outputs, later=None):
            super().begin(outputs, later)
            reused.append(bool(self.stored_in))

    monkeypatch.setattr(ldrf, "Frontier", Recording)
    keep = random_keep(analysis, np.random.default_rng(keep_seed))
    plain = rewrite(analysis, keep)
    results = [reconstruct(analysis, keep, plain, data, mode="ldrf", frontier=f) for f in (True, False)]
    if require_reuse:
        assert any(reused), f"no pass started from stored activations ({len(reused)} passes): the cache was not used"
    (fast, rep_fast), (ref, rep_ref) = results
    assert rep_fast.passes == rep_ref.passes and rep_fast.fitted == rep_ref.fitted
    assert [i.name for i in fast.graph.initializer] == [i.name for i in ref.graph.initializer]
    for a, b in zip(fast.graph.initializer, ref.graph.initializer):
        x, y = numpy_helper.to_array(a), numpy_helper.to_array(b)
        # float32 activations from differently fused sessions, through ridge fits: not bit-equal
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-3 * max(float(np.abs(y).max()), 1e-6), err_msg=a.name)
    feeds = {k: v[:1] for k, v in data[0].items()}
    want = run(ref, feeds)[0]
    np.testing.assert_allclose(run(fast, feeds)[0], want, rtol=1e-3, atol=1e-3 * float(np.abs(want).max()))
    return rep_fast


@pytest.mark.parametrize("memory", [None, 0], ids=["in-memory", "spilled-to-disk"])
def test_frontier_passes_equal_whole_prefix_passes_on_resnet20(monkeypatch, memory):
    """The bundled ResNet-20 (residual stages, 19 waves): starting each pass from the stored
    frontier gives the weights that running the whole prefix per pass gives, whether the
    frontier stays in memory or goes to disk."""
    from pathlib import Path

    import onnxprune.runtime.frontier as frontier

    if memory is not None:
        monkeypatch.setattr(frontier, "FRONTIER_MEMORY", memory)
    root = Path(__file__).resolve().parents[1]
    x = np.load(root / "models" / "fmnist_sample.npz")
    x = x[x.files[0]][:48]
    data = [{"input": x[i : i + 16]} for i in range(0, 48, 16)]
    report = _ldrf_both_ways(load_model(root / "models" / "resnet20_fmnist.onnx").proto, 0, data, monkeypatch)
    assert report.passes >= 10


# Seeds whose random CNN has a prunable group and needs two or more waves (seed 6: one wave, so
# the cache is never read; seeds 10 and 16: nothing prunable), so the comparison is real.
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5, 7, 8, 9, 11, 12, 13])
def test_frontier_passes_equal_whole_prefix_passes_on_random_cnns(seed, monkeypatch):
    """Invariant: the frontier cache changes no result. Random topologies from the fuzzer
    (concat, split, SE, long skips, shared weights, ...); each case prunes something and at least
    one pass starts from stored activations."""
    from fuzz import random_cnn

    proto, blocks = random_cnn(seed)
    shape = [d.dim_value or 4 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    data = [{proto.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(3)]
    report = _ldrf_both_ways(proto, seed, data, monkeypatch)
    assert report.passes >= 2


def test_batches_that_change_between_passes_fall_back_to_whole_prefix_passes():
    """A source that yields other data on every pass cannot be paired with stored activations:
    the pass that notices runs the whole prefix, as do all later ones; the result still fits."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    x = np.load(root / "models" / "fmnist_sample.npz")
    x = x[x.files[0]]

    class Drifting:
        passes = 0

        def __iter__(self):
            Drifting.passes += 1
            start = 16 * (Drifting.passes % 4)
            return iter([{"input": x[start : start + 16]}, {"input": x[start + 64 : start + 80]}])

    analysis = analyse(load_model(root / "models" / "resnet20_fmnist.onnx"))
    from graphs import random_keep

    keep = random_keep(analysis, np.random.default_rng(1))
    plain = rewrite(analysis, keep)
    fixed, report = reconstruct(analysis, keep, plain, Drifting(), mode="ldrf")
    assert report.passes >= 10 and report.fitted
    assert Drifting.passes == report.passes + 1  # one pass noticed the change and was streamed again
    feeds = {"input": x[100:132]}
    want = run(analysis.model.proto, feeds)[0]
    assert np.abs(run(fixed, feeds)[0] - want).mean() < np.abs(run(plain, feeds)[0] - want).mean()


def test_frontier_forgets_activations_computed_with_a_weight_a_fold_changes(monkeypatch):
    """One weight read by two convs in a chain (x -> conv W -> relu -> conv W): folding it for
    the second conv also changes the first, whose output an earlier pass computed and stored.
    That output must be computed again, as the whole-prefix passes do."""
    g = G(3)
    x = g.cbr("x", 3, 6)
    w = g.w(6, 6, 3, 3)
    a = g.op("Relu", [g.op("Conv", [x, w], pads=[1] * 4, kernel_shape=[3, 3])])
    b = g.op("Relu", [g.op("Conv", [a, w], pads=[1] * 4, kernel_shape=[3, 3])])
    y = g.head(g.cbr(b, 6, 8), 8)
    proto = g.model(y)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(3)]
    found = False
    for seed in range(6):
        report = _ldrf_both_ways(proto, seed, data, monkeypatch, require_reuse=False)
        found |= report is not None and report.passes >= 2 and bool(report.fitted)
    assert found


def test_frontier_keeps_only_the_activations_later_passes_read():
    """x -> conv -> t -> relu -> a -> conv -> b, and an auxiliary head reading t: after the pass
    for a, t is on the frontier (its auxiliary reader never ran) but no later pass needs it, so
    only a is stored; the pass for b then starts from a and equals running the whole model."""
    from onnx import TensorProto, helper

    from onnxprune.runtime.frontier import Frontier, digest
    from onnxprune.runtime.submodel import exposing

    g = G(0)
    t = g.conv("x", 3, 6)
    a = g.op("Relu", [t])
    b = g.op("Relu", [g.conv(a, 6, 6)])
    aux = g.head(t, 6)
    proto = g.model(g.head(b, 6))
    proto.graph.output.append(helper.make_tensor_value_info(aux, TensorProto.FLOAT, None))
    data = batches(3, shape=(4, 3, 8, 8))
    for later, stored in ((None, {a, t}), ({b}, {a})):
        runner = Frontier(proto, data)
        try:
            runner.begin([a], later)
            for i, batch in enumerate(data):
                runner.step(i, batch, digest(batch))
            runner.finish()
            assert set(runner.store) == stored
            runner.begin([b], set())
            got = [runner.step(i, batch, digest(batch))[b] for i, batch in enumerate(data)]
            runner.finish()
        finally:
            runner.close()
        want = [run(exposing(proto, [b]), batch)[0] for batch in data]
        for x, y in zip(got, want):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
