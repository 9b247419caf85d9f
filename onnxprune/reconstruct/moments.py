"""Streamed first and second moments of channel activations: the one Gram implementation.

Both the reconstruction (:class:`Moments`: targets T and inputs Z of a consumer) and the
``recon`` criterion's :class:`~onnxprune.scoring.collectors.GramCollector` accumulate
``sum x`` and ``sum x y'`` through :func:`gram`. Products are formed in float64, in column
chunks of bounded size, and summed in float64: the result does not depend on how the data was
split into batches beyond float64 rounding (~1e-16 relative), on any CPU. (Products in float32,
as an earlier version did, differ by ~1e-6 between BLAS builds: the streamed-vs-whole test
failed on an AVX-512 machine.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK_BYTES = 32 << 20  # float64 copy of one column chunk of the inputs


def gram(a: np.ndarray, b: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(sum_s a[:, s], sum_s a[:, s] b[:, s]')`` in float64 for ``a`` [C, S] and ``b`` [K, S]
    (``b`` None: ``b = a``, one symmetric product)."""
    c, s = a.shape
    k = c if b is None else b.shape[0]
    total, outer = np.zeros(c), np.zeros((c, k))
    step = max(1, _CHUNK_BYTES // (8 * max(1, c + (0 if b is None else k))))
    for i in range(0, s, step):
        x = np.asarray(a[:, i : i + step], dtype=np.float64)
        y = x if b is None else np.asarray(b[:, i : i + step], dtype=np.float64)
        total += x.sum(axis=1)
        outer += x @ y.T
    return total, outer


@dataclass
class Moments:
    """Streamed sums for the fit: targets T (C channels) and inputs Z (K kept channels)."""

    n: int = 0
    t: np.ndarray | None = None  # sum T
    z: np.ndarray | None = None  # sum Z
    tt: np.ndarray | None = None  # sum T T'
    tz: np.ndarray | None = None  # sum T Z'
    zz: np.ndarray | None = None  # sum Z Z'

    def update(self, target: np.ndarray, inputs: np.ndarray | None) -> None:
        """``target`` [C, samples], ``inputs`` [K, samples]; ``inputs`` None means the inputs
        are the targets (one Gram instead of three). Float64 products and sums (:func:`gram`)."""
        if inputs is None:
            s, tt = gram(target)
            parts = dict(t=s, z=s, tt=tt, tz=tt, zz=tt)
        else:
            st, tt = gram(target)
            sz, zz = gram(inputs)
            _, tz = gram(target, inputs)
            parts = dict(t=st, z=sz, tt=tt, tz=tz, zz=zz)
        for key, value in parts.items():
            current = getattr(self, key)
            setattr(self, key, value if current is None else current + value)
        self.n += target.shape[1]

    def restrict(self, kept: np.ndarray) -> "Moments":
        """The moments of (all channels, kept channels) from the moments of (all, all)."""
        return Moments(self.n, self.t, self.t[kept], self.tt, self.tt[:, kept], self.tt[np.ix_(kept, kept)])
