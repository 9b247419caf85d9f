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

import contextlib
import ctypes
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import dpotrf

from ..reconstruct.moments import gram

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

RANK_METHODS = ("auto", "gram", "svd")

# OpenBLAS runs a GEMM on several threads above M*N*K = 4 * 65536. For a stack of 112 x 112 maps
# that turns thousands of tiny products into thread hand-offs, and on a busy machine (or next to
# onnxruntime's pool) the float64 Gram matrices of 512 maps took 2.3 s instead of 0.03 s. Products
# are therefore cut along the inner dimension below that size.
_GEMM_SINGLE_THREAD = 4 * 65536
# Float64 working memory per chunk of maps (map copies plus Gram matrices).
_CHUNK_BYTES = 64 << 20


# --------------------------------------------------------------------------- ranks


def matrix_ranks(maps: np.ndarray, method: str = "auto") -> np.ndarray:
    """Numerical rank of each ``H x W`` matrix in ``maps[..., H, W]`` (see the module docstring).

        matrix_ranks(np.zeros((2, 5, 5), np.float32))      # array([0, 0])
        matrix_ranks(np.eye(4, dtype=np.float32)[None])    # array([4])
    """
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank method {method!r}; choose one of {', '.join(RANK_METHODS)}")
    maps = np.asarray(maps)
    if maps.ndim < 2:
        raise ValueError(f"rank needs matrices [..., H, W], got shape {maps.shape}")
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, h, w)
    if not np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float64)
    if flat.dtype == np.float64 or method == "svd":
        ranks = _ranks_svd(flat)
    else:
        eps = float(np.finfo(flat.dtype).eps)
        kernel = _ranks_auto if method == "auto" else _ranks_gram
        chunk = max(1, _CHUNK_BYTES // (8 * (h * w + 2 * min(h, w) ** 2)))
        ranks = np.concatenate(
            [kernel(flat[i : i + chunk], eps) for i in range(0, len(flat), chunk)]
        ) if len(flat) else np.zeros(0, np.int64)
    return ranks.reshape(lead)


def _ranks_svd(maps: np.ndarray) -> np.ndarray:
    """Reference: singular values in the maps' own precision (float16 is lifted to float32)."""
    eps = float(np.finfo(maps.dtype).eps)
    if maps.dtype == np.float16:
        maps = maps.astype(np.float32)
    if maps.size == 0:
        return np.zeros(len(maps), np.int64)
    s = np.linalg.svd(maps, compute_uv=False)
    tol = s[:, :1] * max(maps.shape[1:]) * eps
    return (s > tol).sum(axis=1).astype(np.int64)


def _gram64(lines: np.ndarray) -> np.ndarray:
    """``F F^T`` in float64 for a stack of maps (rows are the Gram side)."""
    f = lines.astype(np.float64)
    rows, inner = f.shape[1:]
    step = max(1, _GEMM_SINGLE_THREAD // (rows * rows))
    if step >= inner:
        return f @ f.transpose(0, 2, 1)
    gram = np.zeros((len(f), rows, rows))
    for k in range(0, inner, step):
        part = f[:, :, k : k + step]
        gram += part @ part.transpose(0, 2, 1)
    return gram


def _count_above(gram: np.ndarray, rel_tol: float) -> np.ndarray:
    """Eigenvalues of each Gram matrix above ``rel_tol * largest eigenvalue``."""
    if len(gram) == 0:
        return np.zeros(0, np.int64)
    _check_finite(np.trace(gram, axis1=1, axis2=2))
    lam = np.linalg.eigvalsh(gram)
    return (lam > lam[:, -1:] * rel_tol).sum(axis=1).astype(np.int64)


def _check_finite(trace: np.ndarray) -> np.ndarray:
    """Every entry of a map enters its Gram diagonal, so a finite trace means a finite map."""
    if not np.isfinite(trace).all():
        raise ValueError("activation contains NaN or Inf")
    return trace


def _ranks_gram(maps: np.ndarray, eps: float) -> np.ndarray:
    """Eigenvalues of the float64 Gram matrix on the smaller side of every map."""
    if maps.shape[1] > maps.shape[2]:
        maps = maps.transpose(0, 2, 1)
    return _count_above(_gram64(maps), (max(maps.shape[1:]) * eps) ** 2)


def _ranks_auto(maps: np.ndarray, eps: float) -> np.ndarray:
    """Gram ranks of the maps' non-zero lines, with the Cholesky certificate (module docstring)."""
    _, h, w = maps.shape
    rel_tol = (max(h, w) * eps) ** 2
    nz_rows, nz_cols = maps.any(axis=2), maps.any(axis=1)
    bound = np.minimum(nz_rows.sum(axis=1), nz_cols.sum(axis=1))
    ranks = np.minimum(bound, 1).astype(np.int64)  # final where at most one line is non-zero
    todo = np.flatnonzero(bound > 1)
    if todo.size == 0:
        return ranks
    lines, nz_lines = _gram_side(maps[todo], nz_rows[todo], nz_cols[todo])
    counts = nz_lines.sum(axis=1)
    first_nonzero = np.argsort(~nz_lines, axis=1, kind="stable")
    for m in np.unique(counts):
        group = np.flatnonzero(counts == m)
        # Zero lines add only zero singular values: dropping them changes no rank and shrinks
        # the Gram matrix from n^2 to m^2 entries (and its factorisation from n^3 to m^3).
        compact = lines[group[:, None], first_nonzero[group, :m]]
        ranks[todo[group]] = _ranks_of_compact(_gram64(compact), rel_tol)
    return ranks


def _ranks_of_compact(gram: np.ndarray, rel_tol: float) -> np.ndarray:
    """Ranks from Gram matrices of non-zero lines: Cholesky proves full rank, else eigvalsh."""
    m = gram.shape[1]
    proven = _full_rank_certificate(gram, rel_tol)
    ranks = np.full(len(gram), m, np.int64)
    rest = np.flatnonzero(~proven)
    ranks[rest] = _count_above(gram[rest], rel_tol)
    return ranks


def _gram_side(maps, nz_rows, nz_cols):
    """Turn each map so that its rows are the side with the fewest non-zero lines.

    Rectangular maps keep their shorter side as rows (the Gram matrix stays small); square maps
    are transposed one by one, so that a map with 40 non-zero rows but 30 non-zero columns gives
    a 30 x 30 Gram matrix, which can be full rank, instead of a 40 x 40 one that cannot.
    """
    _, h, w = maps.shape
    if h != w:
        return (maps, nz_rows) if h < w else (maps.transpose(0, 2, 1), nz_cols)
    flip = nz_cols.sum(axis=1) < nz_rows.sum(axis=1)
    if not flip.any():
        return maps, nz_rows
    maps = maps.copy()
    maps[flip] = maps[flip].transpose(0, 2, 1)
    return maps, np.where(flip[:, None], nz_cols, nz_rows)


def _full_rank_certificate(gram: np.ndarray, rel_tol: float) -> np.ndarray:
    """True where Cholesky proves all eigenvalues of the Gram matrix above the tolerance.

    ``G - t I`` with ``t = trace * rel_tol`` is positive definite exactly when every eigenvalue
    exceeds ``t``; as ``trace >= lambda_max``, ``t`` is at least the true tolerance
    ``lambda_max * rel_tol``, so success proves full rank. Cholesky decides it in m^3/3 flops,
    a tenth of the work of ``eigvalsh``.
    """
    diag_index = np.arange(gram.shape[1])
    shifted = gram.copy()
    diag = shifted[:, diag_index, diag_index]
    trace = _check_finite(diag.sum(axis=1))
    shifted[:, diag_index, diag_index] = diag - (trace * rel_tol)[:, None]
    # One LAPACK call per map: NumPy's batched cholesky raises for the whole stack when one
    # map fails, and torch's batched cholesky_ex was slower per map (see the benchmark).
    return np.fromiter((dpotrf(a, lower=1, clean=0)[1] == 0 for a in shifted), bool, len(shifted))


@contextlib.contextmanager
def one_blas_thread():
    """Run the block with OpenBLAS (NumPy's and SciPy's copies) limited to one thread.

    The rank kernels make thousands of small LAPACK and GEMM calls; OpenBLAS gains nothing from
    threads there, and when another pool already occupies the cores (onnxruntime computing the
    next batch) its threads wait on each other: overlapping inference with ranks took 1.76 s
    instead of 1.17 s for one ResNet-50 batch until BLAS was held to one thread. The setting is
    process-wide while the block runs and restored afterwards; without OpenBLAS (or off Linux)
    this does nothing.
    """
    handles = _openblas_thread_controls()
    saved = [(set_n, get_n()) for set_n, get_n in handles]
    for set_n, _ in handles:
        set_n(1)
    try:
        yield
    finally:
        for set_n, n in saved:
            set_n(n)


def _openblas_thread_controls() -> list:
    """``(set_num_threads, get_num_threads)`` of every OpenBLAS loaded in this process."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line}
    except OSError:  # pragma: no cover - not Linux
        return []
    controls = []
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:  # pragma: no cover
            continue
        for prefix in ("", "scipy_"):
            for suffix in ("", "64_"):
                set_n = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}", None)
                get_n = getattr(lib, f"{prefix}openblas_get_num_threads{suffix}", None)
                if set_n is not None and get_n is not None:
                    set_n.argtypes, get_n.restype = [ctypes.c_int], ctypes.c_int
                    controls.append((set_n, get_n))
    return controls


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
    step = max(1, _CHUNK_BYTES // (8 * (budget_channels or x.shape[1])))
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
