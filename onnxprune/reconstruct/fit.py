"""The least-squares fit of removed channels from kept ones (ridge, optional principal
subspace), and the output errors that decide whether a fit is kept."""

from __future__ import annotations

import numpy as np

from .moments import Moments


def fit(m: Moments, kept: np.ndarray, ridge: float = 1e-3, energy: float | None = None,
        local: bool = True) -> np.ndarray:
    """A [C, K+1] with T ~ A [Z; 1]. ``ridge`` is relative: lambda = ridge * mean diagonal of
    the input second moment, so it scales with the activations. In ``local`` mode the kept rows
    are fixed to the identity (only removed channels are re-expressed)."""
    n = m.n
    k = len(kept)
    zz = np.zeros((k + 1, k + 1))
    zz[:k, :k], zz[:k, k], zz[k, :k], zz[k, k] = m.zz / n, m.z / n, m.z / n, 1.0
    tz = np.concatenate([m.tz / n, (m.t / n)[:, None]], axis=1)
    lam = ridge * max(np.trace(zz[:k, :k]) / max(k, 1), 1e-12)
    reg = np.eye(k + 1) * lam
    reg[k, k] = 0.0  # the intercept is not shrunk
    a = np.linalg.solve(zz + reg, tz.T).T
    if energy is not None:
        a = _embed(a, m, energy)
    if local:
        a[kept] = 0.0
        a[kept, np.arange(k)] = 1.0
    return a


def _embed(a: np.ndarray, m: Moments, energy: float) -> np.ndarray:
    """Keep the fitted prediction's component inside the principal subspace of T that holds
    ``energy`` of its variance; outside it, predict the mean (LDRF's embedding)."""
    mean = m.t / m.n
    cov = m.tt / m.n - np.outer(mean, mean)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    total = max(vals.clip(min=0).sum(), 1e-30)
    r = int(np.searchsorted(np.cumsum(vals.clip(min=0)) / total, energy) + 1)
    u = vecs[:, :r]
    p = u @ u.T
    out = p @ a
    out[:, -1] += (np.eye(len(mean)) - p) @ mean
    return out


def output_errors(w3: np.ndarray, fits: list[np.ndarray], m: Moments) -> list[float]:
    """E|| W (T - A [Z;1]) ||^2 summed over taps/positions, from the moments (cross-tap
    correlations ignored), for several fits A: the check that decides between compensation and
    plain removal. The term that does not depend on the fit is computed once.

    With R = the weight's rows [rows x P, C] and B = R A: trace(R E[(T-AZ)(T-AZ)'] R') =
    tr(R Stt R') - 2 tr(R Stz B') + tr(B Szz B'), all from products with R, never a C x C x K
    product (the weight usually has fewer rows than the Gram has channels).
    """
    n = m.n
    wm = w3.reshape(-1, w3.shape[-2], w3.shape[-1])  # [rows, C, P]
    rows = np.moveaxis(wm, 2, 1).reshape(-1, wm.shape[1])  # [rows x P, C]
    base = float(((rows @ (m.tt / n)) * rows).sum())
    k = fits[0].shape[1] - 1
    szz = np.zeros((k + 1, k + 1))
    szz[:k, :k], szz[:k, k], szz[k, :k], szz[k, k] = m.zz / n, m.z / n, m.z / n, 1.0
    stz = np.concatenate([m.tz / n, (m.t / n)[:, None]], axis=1)
    rs = rows @ stz  # [rows x P, K+1]
    out = []
    for a in fits:
        b = rows @ a
        out.append(base - 2.0 * float((rs * b).sum()) + float(((b @ szz) * b).sum()))
    return out


# --- the fold -----------------------------------------------------------------------------------
