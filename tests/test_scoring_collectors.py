"""Scoring stage. Invariant: collectors streamed over batches equal numpy references computed
on all activations at once (ranks exactly; sums and Gram matrices to float64 rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune.scoring import collectors as col
from onnxprune.scoring import ranks
from onnxprune.scoring.collectors import (
    RANK_METHODS,
    ApozCollector,
    CrossGramCollector,
    GramCollector,
    MeanActivationCollector,
    RankCollector,
    matrix_ranks,
    one_blas_thread,
)


def oracle_ranks(maps: np.ndarray) -> np.ndarray:
    """HRank's way: one np.linalg.matrix_rank per map, in a Python loop."""
    flat = maps.reshape(-1, *maps.shape[-2:])
    return np.array([np.linalg.matrix_rank(m) for m in flat]).reshape(maps.shape[:-2])


def integer_low_rank(rng, h, w, r, count):
    """Maps that are sums of ``r`` outer products of small integer vectors: exact in float32."""
    u = rng.integers(-3, 4, size=(count, h, r))
    v = rng.integers(-3, 4, size=(count, r, w))
    return (u @ v).astype(np.float32)


def relu_maps(rng, count, h, w, rank=None):
    """ReLU'd feature-map-like data: many exact zeros, zero rows and columns, varied ranks."""
    if rank is None:
        x = rng.standard_normal((count, h, w))
    else:
        x = rng.standard_normal((count, h, rank)) @ rng.standard_normal((count, rank, w))
    x += rng.normal(0, 1, size=(count, 1, 1)) + rng.normal(0, 1, size=(count, h, 1))
    return np.maximum(x, 0).astype(np.float32)


# --------------------------------------------------------------------------- ranks


@pytest.mark.parametrize("method", RANK_METHODS)
@pytest.mark.parametrize("h,w", [(7, 7), (14, 14), (28, 28), (56, 56), (112, 112), (5, 9), (12, 4)])
def test_rank_of_sum_of_r_outer_products_is_r(method, h, w):
    rng = np.random.default_rng(h * 1000 + w)
    for r in range(0, min(h, w) + 1, max(1, min(h, w) // 6)):
        maps = integer_low_rank(rng, h, w, r, count=6 if h < 100 else 2)
        expected = oracle_ranks(maps)
        assert (expected == r).all()  # the construction really has rank r
        np.testing.assert_array_equal(matrix_ranks(maps, method), expected)


@pytest.mark.parametrize("method", RANK_METHODS)
def test_float_low_rank_maps_match_matrix_rank(method):
    rng = np.random.default_rng(1)
    for h, w in [(7, 7), (14, 14), (28, 28), (56, 56), (16, 24)]:
        for r in (1, 2, h // 2, h - 1):
            maps = (rng.standard_normal((8, h, r)) @ rng.standard_normal((8, r, w))).astype(np.float32)
            np.testing.assert_array_equal(matrix_ranks(maps, method), oracle_ranks(maps))
            assert (matrix_ranks(maps, method) == min(r, w)).all()


@pytest.mark.parametrize("method", RANK_METHODS)
def test_relu_maps_with_zero_rows_and_columns_match_oracle(method):
    rng = np.random.default_rng(2)
    for h, w, rank in [(7, 7, None), (14, 14, 5), (28, 28, None), (56, 56, 30), (20, 9, None)]:
        maps = relu_maps(rng, 64, h, w, rank)
        maps[::5, 2, :] = 0
        maps[::7, :, 3] = 0
        maps[::11] = 0
        maps[1::13, 1:, :] = 0  # a single non-zero row
        np.testing.assert_array_equal(matrix_ranks(maps, method), oracle_ranks(maps))


def test_zero_and_identity_and_leading_dims():
    assert matrix_ranks(np.zeros((2, 5, 5), np.float32)).tolist() == [0, 0]
    assert matrix_ranks(np.eye(4, dtype=np.float32)[None]).tolist() == [4]
    maps = integer_low_rank(np.random.default_rng(3), 6, 6, 3, count=12).reshape(3, 4, 6, 6)
    assert matrix_ranks(maps).shape == (3, 4)
    assert matrix_ranks(np.zeros((0, 5, 5), np.float32)).shape == (0,)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_use_their_own_epsilon(dtype):
    maps = integer_low_rank(np.random.default_rng(4), 10, 10, 4, count=5).astype(dtype)
    for method in RANK_METHODS:
        assert (matrix_ranks(maps, method) == 4).all()


def test_chunked_gram_and_chunking_of_maps_change_nothing(monkeypatch):
    rng = np.random.default_rng(5)
    maps = relu_maps(rng, 40, 30, 30, rank=12)
    expected = oracle_ranks(maps)
    monkeypatch.setattr(ranks, "GEMM_SINGLE_THREAD", 30 * 30 * 7)  # inner dim in pieces of 7
    monkeypatch.setattr(ranks, "CHUNK_BYTES", 8 * 30 * 30 * 9)  # a few maps per chunk
    for method in ("auto", "gram"):
        np.testing.assert_array_equal(matrix_ranks(maps, method), expected)


def test_certificate_never_claims_full_rank_for_deficient_maps():
    # Rank 5 of 6 non-zero lines: the Cholesky certificate must fail and eigvalsh decide.
    rng = np.random.default_rng(6)
    maps = integer_low_rank(rng, 20, 20, 5, count=10)
    maps[:, 6:, :] = 0
    maps[:, 5, :] = maps[:, 0, :] + maps[:, 1, :]
    assert (matrix_ranks(maps, "auto") == oracle_ranks(maps)).all()


def test_nan_activation_is_an_error():
    maps = np.ones((2, 9, 9), np.float32)
    maps[1, 3, 3] = np.nan
    for method in ("auto", "gram"):
        with pytest.raises(ValueError, match="NaN"):
            matrix_ranks(maps, method)


def test_unknown_method():
    with pytest.raises(ValueError, match="auto, gram, svd"):
        matrix_ranks(np.zeros((1, 3, 3), np.float32), "qr")


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 20), w=st.integers(1, 20), r=st.integers(0, 8),
    zero_rows=st.integers(0, 5), seed=st.integers(0, 2**32 - 1),
)
def test_all_methods_agree_with_the_oracle(h, w, r, zero_rows, seed):
    rng = np.random.default_rng(seed)
    maps = integer_low_rank(rng, h, w, r, count=4)
    maps[:, : min(zero_rows, h), :] = 0
    maps = np.maximum(maps, 0) if seed % 2 else maps
    expected = oracle_ranks(maps)
    for method in RANK_METHODS:
        np.testing.assert_array_equal(matrix_ranks(maps, method), expected)


# --------------------------------------------------------------------------- rank collector


def activations(seed=0, n=24, c=5, h=9, w=9):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[:, :, ::3] *= 0.0
    x[:, 1] = np.maximum(x[:, 1], 0)
    x[::4, 2] = 0
    return x


def stream(collector, x, batch):
    for i in range(0, len(x), batch):
        collector.update(x[i : i + batch])
    return collector.result()


@pytest.mark.parametrize("batch", [1, 5, 24])
def test_rank_collector_streams_the_mean_rank(batch):
    x = activations()
    expected = oracle_ranks(x).mean(axis=0)
    got = stream(RankCollector(), x, batch)
    np.testing.assert_array_equal(got, expected)


def test_rank_collector_channel_axis():
    x = activations()
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    # NHWC: channels last; the maps are still the H x W planes.
    np.testing.assert_array_equal(stream(RankCollector(axis=3), nhwc, 7), oracle_ranks(x).mean(axis=0))


def test_rank_collector_rejects_wrong_layouts():
    with pytest.raises(ValueError, match="N, C, H, W"):
        RankCollector().update(np.zeros((2, 3), np.float32))
    rc = RankCollector()
    rc.update(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="4 channels"):
        rc.update(np.zeros((1, 4, 4, 4), np.float32))
    with pytest.raises(ValueError, match="no batch"):
        RankCollector().result()


def test_rank_collector_converges_and_stops_counting():
    x = np.repeat(activations(n=1), 100, axis=0)  # every image has the same ranks
    rc = RankCollector(patience=16, tol=0.01)
    for i in range(0, 100, 4):
        rc.update(x[i : i + 4])
    assert rc.converged
    assert rc.images == 16 + 4  # first compare possible once 16 images lie behind a snapshot
    np.testing.assert_array_equal(rc.result(), oracle_ranks(x[:1])[0])


def test_rank_collector_without_patience_never_converges():
    rc = RankCollector()
    x = np.repeat(activations(n=1), 50, axis=0)
    stream(rc, x, 5)
    assert not rc.converged and rc.images == 50


def test_rank_collector_keeps_going_while_means_move():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 2, 8, 8), np.float32)
    ranks = rng.integers(0, 9, size=(64, 2))
    for i in range(64):  # identity blocks of varied rank: the running mean keeps moving
        for c in range(2):
            x[i, c, : ranks[i, c], : ranks[i, c]] = np.eye(ranks[i, c])
    rc = RankCollector(patience=8, tol=1e-6)
    stream(rc, x, 4)
    assert not rc.converged and rc.images == 64
    np.testing.assert_allclose(rc.result(), ranks.mean(axis=0))


# --------------------------------------------------------------------------- channel means


@pytest.mark.parametrize("batch", [1, 3, 24])
def test_apoz_and_mean_activation_stream(batch):
    x = activations()
    np.testing.assert_allclose(stream(ApozCollector(), x, batch), (x == 0).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(
        stream(MeanActivationCollector(), x, batch), np.abs(x.astype(np.float64)).mean(axis=(0, 2, 3))
    )


def test_channel_means_on_2d_and_other_axis():
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((30, 6)), 0).astype(np.float32)
    np.testing.assert_allclose(stream(ApozCollector(), x, 7), (x == 0).mean(axis=0))
    x4 = activations().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(
        stream(MeanActivationCollector(axis=-1), x4, 5), np.abs(x4.astype(np.float64)).mean(axis=(0, 1, 2))
    )


# --------------------------------------------------------------------------- Gram matrices


def samples_of(x: np.ndarray, axis: int = 1) -> np.ndarray:
    return np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)


@pytest.mark.parametrize("batch", [1, 4, 24])
def test_gram_collector_streams_mean_and_second_moment(batch):
    x = activations()
    s = samples_of(x)
    got = stream(GramCollector(), x, batch)
    assert got.count == len(s)
    np.testing.assert_allclose(got.mean, s.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.second_moment, s.T @ s / len(s), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.covariance, np.cov(s.T, bias=True), rtol=1e-10, atol=1e-12)


def test_gram_collector_2d_rows_are_samples_and_chunks_change_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 7)).astype(np.float32)
    monkeypatch.setattr(col, "CHUNK_BYTES", 8 * 7 * 3)  # three samples per float64 block
    got = stream(GramCollector(), x, 9)
    s = x.astype(np.float64)
    assert got.count == 50
    np.testing.assert_allclose(got.second_moment, s.T @ s / 50, rtol=1e-12)


def test_gram_collector_channel_axis_last():
    x = activations().transpose(0, 2, 3, 1)
    s = samples_of(x, axis=3)
    got = stream(GramCollector(axis=3), x, 5)
    np.testing.assert_allclose(got.second_moment, s.T @ s / len(s), rtol=1e-12)


@pytest.mark.parametrize("batch", [2, 24])
def test_cross_gram_collector(batch, monkeypatch):
    monkeypatch.setattr(col, "CHUNK_BYTES", 8 * 12 * 10)  # blocks of 10 samples, x and y aligned
    x = activations(seed=1)
    y = activations(seed=2, c=7)
    cg = CrossGramCollector()
    for i in range(0, len(x), batch):
        cg.update(x[i : i + batch], y[i : i + batch])
    got = cg.result()
    sx, sy = samples_of(x), samples_of(y)
    np.testing.assert_allclose(got.cross, sx.T @ sy / len(sx), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.mean_x, sx.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got.mean_y, sy.mean(axis=0), rtol=1e-12)


def test_cross_gram_rejects_misaligned_samples():
    with pytest.raises(ValueError, match="sample layouts"):
        CrossGramCollector().update(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 2, 2)))


def test_one_blas_thread_limits_and_restores():
    controls = ranks.openblas_thread_controls()
    if not controls:
        pytest.skip("no OpenBLAS loaded")
    before = [get() for _, get in controls]
    with one_blas_thread():
        assert [get() for _, get in controls] == [1] * len(controls)
    assert [get() for _, get in controls] == before
