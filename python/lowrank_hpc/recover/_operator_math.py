"""What the gradient solvers need from a sensing operator, with dense fallbacks.

An operator offers ``shape``, ``num_measurements``, ``forward``, ``adjoint`` and
``forward_factored``; when it also offers ``adjoint_times(z, B)`` (= A*(z) @ B) and
``adjoint_transpose_times(z, B)`` (= A*(z)^T @ B), gradients never form the n1 x n2 matrix
A*(z): the completion operator uses sparse products there.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def adjoint_times(op: Any, z: Any, B: Any) -> Any:
    """A*(z) @ B, (n1, k)."""
    method = getattr(op, "adjoint_times", None)
    return method(z, B) if method is not None else op.adjoint(z) @ B


def adjoint_transpose_times(op: Any, z: Any, B: Any) -> Any:
    """A*(z)^T @ B, (n2, k)."""
    method = getattr(op, "adjoint_transpose_times", None)
    return method(z, B) if method is not None else op.adjoint(z).T @ B


def adjoint_products(op: Any, z: Any, V: Any, U: Any) -> tuple[Any, Any]:
    """(A*(z) @ V, A*(z)^T @ U): the two gradient products, forming A*(z) at most once."""
    if hasattr(op, "adjoint_times") and hasattr(op, "adjoint_transpose_times"):
        return op.adjoint_times(z, V), op.adjoint_transpose_times(z, U)
    G = op.adjoint(z)
    return G @ V, G.T @ U


def operator_scale(op: Any, dtype: Any, xp: Any, seed: int = 0, probes: int = 3) -> float:
    """E ||A(X)||^2 / ||X||_F^2 over random rank-one X: 1 for isotropic Gaussian sensing, the
    sampling rate for completion. Steps are set relative to it."""
    rng = np.random.default_rng(seed)
    n1, n2 = op.shape
    total = 0.0
    for _ in range(probes):
        u = rng.standard_normal((n1, 1))
        v = rng.standard_normal((n2, 1))
        u /= np.linalg.norm(u)
        v /= np.linalg.norm(v)
        measured = op.forward_factored(xp.asarray(u.astype(dtype)), xp.asarray(v.astype(dtype)))
        total += float(xp.sum(measured.astype(np.float64) ** 2))
    return total / probes


class CorrectedAdjoint:
    """(A*(z) - shift I) / gain through the adjoint products of a square ``op``: the matrix a
    spectral start decomposes when the operator reports a correction for its measurements
    (``op.spectral_correction(y)``, e.g. symmetric rank-one sensing's trace term)."""

    def __init__(self, op: Any, shift: float, gain: float):
        self.shape = op.shape
        self._op, self._shift, self._gain = op, float(shift), float(gain)

    def adjoint_times(self, z: Any, B: Any) -> Any:
        return (adjoint_times(self._op, z, B) - self._shift * B) / self._gain

    def adjoint_transpose_times(self, z: Any, B: Any) -> Any:
        return (adjoint_transpose_times(self._op, z, B) - self._shift * B) / self._gain


def spectral_source(op: Any, y: Any) -> tuple[Any, bool]:
    """(the operator whose adjoint products a spectral start of measurements y uses, whether its
    A*(y) already estimates M): ``op`` and False when it reports no correction (then A*(y) ~ s M
    and the start divides by the operator scale s), else its :class:`CorrectedAdjoint` and True."""
    hook = getattr(op, "spectral_correction", None)
    correction = hook(y) if hook is not None else None
    if correction is None:
        return op, False
    shift, gain = correction
    return CorrectedAdjoint(op, shift, gain), True


def top_singular_triplets(op: Any, y: Any, k: int, xp: Any, seed: int = 0, power_iterations: int = 6):
    """Top-k singular triplets of A*(y) by randomized subspace iteration (Halko et al. 2011)
    through adjoint products only: (left (n1, k), singular values (k,), right (n2, k))."""
    n1, n2 = op.shape
    oversample = min(n2, k + 10) - k
    rng = np.random.default_rng(seed)
    omega = xp.asarray(rng.standard_normal((n2, k + oversample)).astype(y.dtype))
    Q, _ = xp.linalg.qr(adjoint_times(op, y, omega))
    for _ in range(power_iterations):
        W, _ = xp.linalg.qr(adjoint_transpose_times(op, y, Q))
        Q, _ = xp.linalg.qr(adjoint_times(op, y, W))
    small = adjoint_transpose_times(op, y, Q).T  # Q^T A*(y), (k + p, n2)
    left, sigma, right_t = xp.linalg.svd(small, full_matrices=False)
    return Q @ left[:, :k], sigma[:k], right_t[:k].T


def spectral_norm(op: Any, y: Any, xp: Any, seed: int = 0) -> float:
    """||A*(y)||_2, from a few subspace iterations (accurate to a few per cent, which a step
    rule needs)."""
    _, sigma, _ = top_singular_triplets(op, y, 1, xp, seed=seed, power_iterations=8)
    return float(sigma[0])
