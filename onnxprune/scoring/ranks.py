"""Matrix ranks of feature maps (HRank's criterion), computed exactly and fast: a float64 Gram
matrix per map with a Cholesky full-rank certificate, SVD where that cannot decide; plus the
control that keeps BLAS on one thread while the collectors run beside onnxruntime."""

from __future__ import annotations

import contextlib
import ctypes

import numpy as np
from scipy.linalg.lapack import dpotrf

RANK_METHODS = ("auto", "gram", "svd")

# OpenBLAS runs a GEMM on several threads above M*N*K = 4 * 65536. For a stack of 112 x 112 maps
# that turns thousands of tiny products into thread hand-offs, and on a busy machine (or next to
# onnxruntime's pool) the float64 Gram matrices of 512 maps took 2.3 s instead of 0.03 s. Products
# are therefore cut along the inner dimension below that size.
GEMM_SINGLE_THREAD = 4 * 65536
# Float64 working memory per chunk of maps (map copies plus Gram matrices).
CHUNK_BYTES = 64 << 20


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
        chunk = max(1, CHUNK_BYTES // (8 * (h * w + 2 * min(h, w) ** 2)))
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
    step = max(1, GEMM_SINGLE_THREAD // (rows * rows))
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
    handles = openblas_thread_controls()
    saved = [(set_n, get_n()) for set_n, get_n in handles]
    for set_n, _ in handles:
        set_n(1)
    try:
        yield
    finally:
        for set_n, n in saved:
            set_n(n)


def openblas_thread_controls() -> list:
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
