"""ALS's exact row solve against a numpy transcription of its arithmetic, bit for bit.

Every row's normal equations (ops/normal_equations.hpp) are summed entry by entry in CSR order,
factored by the square-root-free Cholesky G = L D L^T and solved forward then backward. The
host forms them per entry at small ranks and in register tiles at most ranks from 16 on
(ops/register_tiles.hpp); both, and the device, must give these numbers exactly, so that the
CPU tests check the math the GPU runs. numpy's float32 and float64 ufuncs round each multiply
and each add, as the kernels do (no fused multiply-add)."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import _backend


def transcribed_solve(F_rows, vals, weights, shared, shift):
    """The row's solution x (r,) and whether its system was numerically positive definite."""
    dtype = F_rows.dtype.type
    r = F_rows.shape[1]
    G = shared.copy() if shared is not None else np.zeros((r, r), dtype=F_rows.dtype)
    g = np.zeros(r, dtype=F_rows.dtype)
    for f, v, w in zip(F_rows, vals, weights):
        g = g + v * f
        G = G + np.outer(w * f, f)  # G[a, c] += (w f[a]) f[c]
    G[np.diag_indices(r)] += shift
    scale, noise = np.diag(G).copy(), dtype(r) * np.finfo(dtype).eps
    L, inverse, definite = np.zeros_like(G), np.zeros(r, dtype=G.dtype), True
    for k in range(r):
        pivot = G[k, k]
        definite = definite and np.isfinite(pivot) and pivot > noise * scale[k] and pivot > 0
        inverse[k] = dtype(1) / pivot
        L[k + 1:, k] = G[k + 1:, k] * inverse[k]
        G[k + 1:, k + 1:] -= np.outer(G[k + 1:, k], L[k + 1:, k])  # (i, c) minus (L D)[i, k] L[c, k]
    for k in range(r):  # L y = g: each y[i] subtracts k = 0, 1, ... in order
        g[k + 1:] -= L[k + 1:, k] * g[k]
    x = g * inverse
    for k in range(r - 1, 0, -1):  # L^T x = D^-1 y: each x[i] subtracts k = r - 1, r - 2, ... in order
        x[:k] -= L[k, :k] * x[k]
    return x, definite


def row_problem(rank, dtype, seed):
    """Rows of every kind: few entries, one heavier than a packed chunk, none, some."""
    rng = np.random.default_rng(seed)
    n_other, degrees = 900, [3, 700, 0, 57]
    others = np.concatenate([rng.choice(n_other, d, replace=False) for d in degrees]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    vals = rng.standard_normal(others.size).astype(dtype)
    F = rng.standard_normal((n_other, rank)).astype(dtype)
    return indptr, others, vals, F


# Per-entry form: compiled ranks below 16 (1, 8) and run-time ranks that tiles would pad too much
# (5, and 20 with AVX-512 floats); register tiles from 16 on (16 and 32 compiled), with a
# remainder vector (40, 70, 100) and the padded row stride (64).
@pytest.mark.parametrize("rank", [1, 5, 8, 16, 20, 32, 40, 64, 70, 100])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("implicit", [False, True], ids=["explicit", "weights+shared"])
def test_exact_row_solve_is_the_transcribed_arithmetic(rank, dtype, implicit):
    indptr, others, vals, F = row_problem(rank, dtype, seed=rank)
    rng = np.random.default_rng(1)
    weights = rng.uniform(0.5, 3.0, others.size).astype(dtype) if implicit else None
    shared = None
    if implicit:
        half = rng.standard_normal((2 * rank, rank)).astype(dtype)
        shared = (half.T @ half).astype(dtype)
        shared = np.triu(shared) + np.triu(shared, 1).T  # exactly symmetric, as F^T F is
    reg = 0.1
    n_key = indptr.size - 1
    out = np.full((1, n_key, rank), np.nan, dtype=dtype)
    singular = np.zeros(1, dtype=np.int64)
    residuals = np.full(n_key, np.nan)
    _backend.cpu_module().als_update_rows(indptr, others, vals, F[None], n_key, reg, False, None, 0, out, singular,
                                          0, weights=weights, shared=None if shared is None else shared[None],
                                          residuals=residuals)
    assert singular[0] == 0
    # Each row's sum of squared residuals at its solution (explicit ALS's fit term), in float64
    # from the returned rows; float32 dots round differently from numpy's.
    fits = F.astype(np.float64)[others] * out[0].astype(np.float64)[np.repeat(np.arange(n_key), np.diff(indptr))]
    expected_fit = np.bincount(np.repeat(np.arange(n_key), np.diff(indptr)),
                               weights=(fits.sum(axis=1) - vals) ** 2, minlength=n_key)
    # Near an exact fit (the row of 3 entries) a residual is a difference of nearly equal numbers:
    # the bound is relative to the row's squared values too.
    scale = np.bincount(np.repeat(np.arange(n_key), np.diff(indptr)), weights=vals.astype(np.float64) ** 2,
                        minlength=n_key)
    tolerance = 1e-12 if dtype == np.float64 else 2e-5
    assert np.all(np.abs(residuals - expected_fit) <= tolerance * (expected_fit + scale)), (residuals, expected_fit)
    for row in range(n_key):
        entries = slice(indptr[row], indptr[row + 1])
        if indptr[row] == indptr[row + 1]:
            np.testing.assert_array_equal(out[0, row], 0)  # an empty row's solution is zero
            continue
        row_weights = weights[entries] if implicit else np.ones(entries.stop - entries.start, dtype=dtype)
        expected, definite = transcribed_solve(F[others[entries]], vals[entries], row_weights, shared, dtype(reg))
        assert definite
        np.testing.assert_array_equal(out[0, row], expected, err_msg=f"row {row}")
