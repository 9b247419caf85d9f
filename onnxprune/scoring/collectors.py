"""Streaming per-channel statistics of activations, fed one batch at a time.

A collector reduces each batch of an activation to running sums and drops the batch, so its
memory is O(C) (or O(C^2) for Gram matrices) however many images stream through it. Every
collector has ``update(batch)`` and ``result()``; the channel axis is ``axis`` (1 for NCHW and
for ``[N, C]``).

    rank = RankCollector()
    for batch in activations:            # each [N, C, H, W]
        rank.update(batch)
    scores = rank.result()               # mean rank of each channel's H x W map

* :class:`RankCollector` — HRank: mean over images of ``rank(F_c)``.
* :class:`ApozCollector` — average percentage of zeros (network trimming).
* :class:`MeanActivationCollector` — mean ``|a|``.
* :class:`GramCollector` / :class:`CrossGramCollector` — channel means and second moments,
  the statistics of the least-squares reconstruction (LDRF).

Rank convention
---------------
``rank(F)`` counts singular values ``s > s.max() * max(H, W) * eps``, where ``eps`` is the
machine epsilon of the activation's dtype (float32 for almost every model). That is NumPy's
``matrix_rank`` default and what HRank's code computes with ``torch.matrix_rank`` on float32
maps. :func:`matrix_ranks` computes it three ways that agree (tests check it):

* ``"svd"`` — ``np.linalg.svd`` of the maps in their own precision: the reference.
* ``"gram"`` — eigenvalues of the float64 Gram matrix ``F F^T``. Eigenvalues are squared singular
  values, so the tolerance is squared too. A float32 x float32 product is exact in float64, so
  the Gram matrix is accurate to ~1e-16 relative while the squared tolerance is at least
  ``(7 * 1.2e-7)^2 = 7e-13`` relative (maps of 7 x 7 and larger): three orders of margin.
  A float32 Gram matrix would not do: its rounding (~1e-7 of ``s.max()^2``) is far above
  ``(max(H, W) * eps)^2``.
* ``"auto"`` (default) — the Gram path with shortcuts that change no result: zero rows and
  columns (ReLU makes many) add only zero singular values, so they are dropped: maps with at most
  one non-zero line need no algebra, the others shrink to their non-zero lines (grouped by
  count, square maps turned so that the Gram side has the fewer); and a Cholesky factorisation
  of ``G - t I`` (``t = trace(G) (max(H, W) eps)^2``, an upper bound of the tolerance) succeeds
  exactly when every line is independent, which *proves* the rank in a tenth of the work of
  ``eigvalsh``. Only maps whose factorisation fails (about one in six on ResNet-50) pay for the
  eigenvalues.

Float64 activations use ``"svd"`` whatever the method: their squared tolerance (~1e-28) is below
what a float64 Gram matrix can resolve.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from ..reconstruct.moments import gram
from .ranks import CHUNK_BYTES, RANK_METHODS, matrix_ranks, one_blas_thread  # noqa: F401  (in __all__)

__all__ = [
    "RANK_METHODS",
    "ApozCollector",
    "CrossGramCollector",
    "CrossGramStats",
    "GramCollector",
    "GramStats",
    "MeanActivationCollector",
    "RankCollector",
    "matrix_ranks",
    "one_blas_thread",
]

# --------------------------------------------------------------------------- helpers


def _channels_first(batch: np.ndarray, axis: int) -> np.ndarray:
    """The batch as ``[N, C, ...]`` (a view when possible)."""
    batch = np.asarray(batch)
    if batch.ndim < 2:
        raise ValueError(f"expected an activation [N, C, ...], got shape {batch.shape}")
    return np.moveaxis(batch, axis, 1) if axis % batch.ndim != 1 else batch


def _sample_blocks(batch: np.ndarray, axis: int, what: str, budget_channels: int | None = None):
    """Float64 ``[C, samples]`` blocks of a batch; every image and position is a sample.

    ``[N, C, H, W]`` is walked image by image as ``[C, H*W]`` views (no transposed copy of the
    batch), ``[N, C]`` as ``[C, N]``; each block is lifted to float64 in pieces of bounded size.
    """
    x = _channels_first(batch, axis)
    x = x.reshape(x.shape[0], x.shape[1], -1)
    if x.shape[0] == 0:
        raise ValueError(f"{what}: empty batch, shape {np.shape(batch)}")
    views = [x[:, :, 0].T] if x.shape[2] == 1 else list(x)
    step = max(1, CHUNK_BYTES // (8 * (budget_channels or x.shape[1])))
    for v in views:
        for i in range(0, v.shape[1], step):
            yield v[:, i : i + step].astype(np.float64)


def _check_channels(expected: int | None, given: int, what: str) -> int:
    if expected is not None and expected != given:
        raise ValueError(f"{what}: a batch has {given} channels, earlier batches had {expected}")
    return given


# --------------------------------------------------------------------------- collectors


class RankCollector:
    """HRank score: mean numerical rank of each channel's ``H x W`` map over the images.

    Optional early stop: with ``patience=k`` the collector watches its running means and declares
    itself :attr:`converged` once they moved by less than ``tol`` (rank units, every channel)
    over the last ``k`` images, after at least ``min_images``; later batches are then skipped, so
    their cost is saved and :attr:`images` reports how many were really used.

        rank = RankCollector(patience=64, tol=0.05)
        for a in activations: rank.update(a)
        rank.result(), rank.images, rank.converged
    """

    name = "rank"

    def __init__(
        self,
        *,
        axis: int = 1,
        method: str = "auto",
        patience: int | None = None,
        tol: float = 0.05,
        min_images: int | None = None,
    ):
        if method not in RANK_METHODS:
            raise ValueError(f"unknown rank method {method!r}; choose one of {', '.join(RANK_METHODS)}")
        self.axis, self.method = axis, method
        self.patience, self.tol = patience, tol
        self.min_images = patience if min_images is None else min_images
        self._sum: np.ndarray | None = None
        self._n = 0
        self._history: deque[tuple[int, np.ndarray]] = deque()
        self._converged = False

    def update(self, batch: np.ndarray) -> None:
        """Add the ranks of every map of the batch (no-op once converged)."""
        if self._converged:
            return
        x = _channels_first(batch, self.axis)
        if x.ndim != 4:
            raise ValueError(f"rank needs [N, C, H, W] activations, got shape {np.shape(batch)}")
        n, c = x.shape[:2]
        _check_channels(None if self._sum is None else len(self._sum), c, "rank")
        ranks = matrix_ranks(x.reshape(n * c, *x.shape[2:]), self.method).reshape(n, c)
        self._sum = ranks.sum(axis=0, dtype=np.float64) + (0 if self._sum is None else self._sum)
        self._n += n
        if self.patience is not None:
            self._watch()

    def _watch(self) -> None:
        """Compare the running mean with the one ``patience`` images ago."""
        mean = self._sum / self._n
        self._history.append((self._n, mean))
        while len(self._history) > 1 and self._history[1][0] <= self._n - self.patience:
            self._history.popleft()
        old_n, old_mean = self._history[0]
        if old_n <= self._n - self.patience and self._n >= self.min_images:
            self._converged = bool(np.abs(mean - old_mean).max() < self.tol)

    @property
    def converged(self) -> bool:
        return self._converged

    @property
    def images(self) -> int:
        """Images whose ranks went into the result."""
        return self._n

    def result(self) -> np.ndarray:
        """Mean rank per channel, float64 ``[C]``."""
        if self._sum is None:
            raise ValueError("rank: no batch was collected")
        return self._sum / self._n


class _ChannelMean:
    """Running mean per channel of ``f(activation)`` over images and positions."""

    name = ""

    def __init__(self, *, axis: int = 1):
        self.axis = axis
        self._sum: np.ndarray | None = None
        self._count = 0

    def _reduce(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update(self, batch: np.ndarray) -> None:
        x = _channels_first(batch, self.axis)
        _check_channels(None if self._sum is None else len(self._sum), x.shape[1], self.name)
        part = self._reduce(x.reshape(x.shape[0], x.shape[1], -1))
        self._sum = part if self._sum is None else self._sum + part
        self._count += x.shape[0] * (x[0, 0].size)

    def result(self) -> np.ndarray:
        if self._sum is None:
            raise ValueError(f"{self.name}: no batch was collected")
        return self._sum / self._count


class ApozCollector(_ChannelMean):
    """Average percentage of zeros per channel (Hu et al., "Network trimming"), in [0, 1]."""

    name = "apoz"

    def _reduce(self, x):
        return np.count_nonzero(x == 0, axis=(0, 2)).astype(np.float64)


class MeanActivationCollector(_ChannelMean):
    """Mean absolute activation per channel."""

    name = "mean_activation"

    def _reduce(self, x):
        return np.abs(x).sum(axis=(0, 2), dtype=np.float64)


@dataclass(frozen=True)
class GramStats:
    """Channel statistics over ``count`` samples: ``mean[C]`` and ``second_moment = E[x x^T]``."""

    count: int
    mean: np.ndarray
    second_moment: np.ndarray

    @property
    def covariance(self) -> np.ndarray:
        return self.second_moment - np.outer(self.mean, self.mean)


@dataclass(frozen=True)
class CrossGramStats:
    """``E[x]``, ``E[y]`` and ``cross = E[x y^T]`` over ``count`` paired samples."""

    count: int
    mean_x: np.ndarray
    mean_y: np.ndarray
    cross: np.ndarray


class GramCollector:
    """Mean and second-moment matrix of the channels, accumulated in float64.

    Every image and every spatial position is one sample: ``[N, C, H, W]`` gives ``N*H*W`` samples
    of ``C`` values, ``[N, C]`` gives ``N``. The least-squares reconstruction of a channel from the
    others needs only these sums.

        g = GramCollector(); g.update(a); s = g.result(); s.second_moment.shape  # (C, C)
    """

    name = "gram"

    def __init__(self, *, axis: int = 1):
        self.axis = axis
        self._sum: np.ndarray | None = None
        self._outer: np.ndarray | None = None
        self._count = 0

    def update(self, batch: np.ndarray) -> None:
        c = _check_channels(
            None if self._sum is None else len(self._sum),
            _channels_first(batch, self.axis).shape[1], self.name,
        )
        if self._sum is None:
            self._sum, self._outer = np.zeros(c), np.zeros((c, c))
        for block in _sample_blocks(batch, self.axis, self.name):
            total, outer = gram(block)
            self._sum += total
            self._outer += outer
            self._count += block.shape[1]

    def result(self) -> GramStats:
        if self._sum is None or self._count == 0:
            raise ValueError("gram: no batch was collected")
        return GramStats(self._count, self._sum / self._count, self._outer / self._count)


class CrossGramCollector:
    """``E[x y^T]`` between two tensors whose samples line up (same N and spatial positions).

        cg = CrossGramCollector(); cg.update(x, y); cg.result().cross.shape   # (Cx, Cy)
    """

    name = "cross_gram"

    def __init__(self, *, axis: int = 1):
        self.axis = axis
        self._sx = self._sy = self._cross = None
        self._count = 0

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        cx, cy = _channels_first(x, self.axis), _channels_first(y, self.axis)
        if cx.shape[0] != cy.shape[0] or cx[0, 0].size != cy[0, 0].size:
            raise ValueError(
                f"cross_gram: x {np.shape(x)} and y {np.shape(y)} have different sample layouts"
            )
        if self._sx is None:
            self._sx, self._sy = np.zeros(cx.shape[1]), np.zeros(cy.shape[1])
            self._cross = np.zeros((cx.shape[1], cy.shape[1]))
        _check_channels(len(self._sx), cx.shape[1], "cross_gram x")
        _check_channels(len(self._sy), cy.shape[1], "cross_gram y")
        width = cx.shape[1] + cy.shape[1]  # same block width for both, so samples pair up
        pairs = zip(
            _sample_blocks(x, self.axis, self.name, width), _sample_blocks(y, self.axis, self.name, width)
        )
        for bx, by in pairs:
            self._sx += bx.sum(axis=1)
            self._sy += by.sum(axis=1)
            self._cross += bx @ by.T
            self._count += bx.shape[1]

    def result(self) -> CrossGramStats:
        if self._sx is None or self._count == 0:
            raise ValueError("cross_gram: no batch was collected")
        n = self._count
        return CrossGramStats(n, self._sx / n, self._sy / n, self._cross / n)
