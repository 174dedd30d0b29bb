"""The CPU core's thin SVD by one-sided Jacobi (soft-impute's half-steps on short matrices)
against LAPACK's (numpy.linalg.svd): singular values, orthonormal factors, reconstruction, zero
and negligible columns, float32, and the cases it hands back to LAPACK (-1)."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import _backend

module = _backend.cpu_module()


def thin_svd(M, max_sweeps=30):
    n, r = M.shape
    left, s, q = np.empty((n, r), M.dtype), np.empty(r, M.dtype), np.empty((r, r), M.dtype)
    return module.thin_svd(M, left, s, q, max_sweeps), left, s, q


def check_factorization(M, left, s, q, tol):
    r = M.shape[1]
    scale = np.linalg.norm(M, 2)
    np.testing.assert_allclose(s, np.linalg.svd(M.astype(np.float64), compute_uv=False), rtol=0, atol=tol * scale)
    assert np.all(np.diff(s) <= 0)
    np.testing.assert_allclose(left.T @ left, np.eye(r), atol=tol)
    np.testing.assert_allclose(q.T @ q, np.eye(r), atol=tol)
    np.testing.assert_allclose((left * s) @ q.T, M, atol=tol * scale)


@pytest.mark.parametrize("shape", [(1, 1), (20, 20), (30, 20), (100, 20), (192, 64), (1000, 3)])
def test_random_and_graded_matrices_match_lapack(shape):
    rng = np.random.default_rng(sum(shape))
    for M in (rng.standard_normal(shape), rng.standard_normal(shape) * np.logspace(0, -10, shape[1])):
        sweeps, left, s, q = thin_svd(M)
        assert 1 <= sweeps <= 30
        check_factorization(M, left, s, q, 1e-13)
    # Graded columns keep their small singular values to relative accuracy (Demmel-Veselic).
    graded = np.linalg.qr(rng.standard_normal(shape))[0] * np.logspace(0, -12, shape[1])
    _, _, s, _ = thin_svd(graded)
    np.testing.assert_allclose(s, np.logspace(0, -12, shape[1]), rtol=1e-12)


def test_nearly_orthogonal_columns_take_few_sweeps():
    """A converging soft-impute iterate: columns orthogonal up to 1e-4 need far fewer sweeps
    than a random matrix (the reason for a Jacobi method here)."""
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((100, 20)))[0]
    M = (Q * np.linspace(3, 0.1, 20)) @ (np.eye(20) + 1e-4 * rng.standard_normal((20, 20)))
    warm, left, s, q = thin_svd(M)
    cold = thin_svd(rng.standard_normal((100, 20)))[0]
    check_factorization(M, left, s, q, 1e-13)
    assert warm <= 4 < cold


def test_zero_and_negligible_columns_get_an_orthonormal_completion():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((40, 6)) * np.array([1.0, 0.0, 1e-17, 1e-55, 0.0, 1e-88])
    sweeps, left, s, q = thin_svd(M)
    assert sweeps >= 1
    check_factorization(M, left, s, q, 1e-13)
    zero = np.zeros((10, 4))
    _, left, s, q = thin_svd(zero)
    assert not np.any(s)
    np.testing.assert_allclose(left.T @ left, np.eye(4), atol=1e-15)


def test_tiny_columns_that_are_not_orthogonal_are_rotated():
    """Columns of scale 1e-60 to 1e-80 (what a converged soft-impute iterate holds past its
    rank), correlated with each other: their pair test must not underflow into "orthogonal"
    (a squared form, gamma^2 <= tol^2 alpha beta, did, leaving left 2e-8 from orthonormal)."""
    rng = np.random.default_rng(7)
    base = rng.standard_normal((30, 12))
    base[:, 9:] = base[:, [8]] + 0.3 * base[:, 9:]  # the tiny columns share a direction
    M = base * np.array([30.0, 20.0, 10.0, 9.0, 1.0, 0.5, 0.06, 4e-18, 1e-30, 1e-60, 1e-73, 1e-81])
    sweeps, left, s, q = thin_svd(M)
    assert sweeps >= 1
    np.testing.assert_allclose(left.T @ left, np.eye(12), atol=1e-13)
    np.testing.assert_allclose(q.T @ q, np.eye(12), atol=1e-13)
    np.testing.assert_allclose((left * s) @ q.T, M, atol=1e-13 * np.linalg.norm(M, 2))


def test_float32():
    rng = np.random.default_rng(7)
    M = rng.standard_normal((60, 10)).astype(np.float32)
    _, left, s, q = thin_svd(M)
    assert left.dtype == s.dtype == q.dtype == np.float32
    check_factorization(M, left.astype(np.float64), s.astype(np.float64), q.astype(np.float64), 2e-6)


def test_non_finite_or_unconverged_input_is_handed_back():
    rng = np.random.default_rng(9)
    M = rng.standard_normal((30, 8))
    for bad in (np.nan, np.inf):
        N = M.copy()
        N[4, 2] = bad
        assert thin_svd(N)[0] == -1
    assert thin_svd(M, max_sweeps=1)[0] == -1  # a random matrix needs several sweeps


def test_bad_arguments_raise():
    M = np.zeros((3, 5))
    with pytest.raises(ValueError, match="rows >= columns"):
        thin_svd(M)
    M = np.ones((5, 3))
    with pytest.raises(ValueError, match="max_sweeps"):
        thin_svd(M, max_sweeps=0)
    with pytest.raises(ValueError, match="left"):
        module.thin_svd(M, np.empty((5, 2)), np.empty(3), np.empty((3, 3)), 30)
    with pytest.raises(ValueError, match="float32 or float64"):
        module.thin_svd(M.astype(np.int64), np.empty((5, 3)), np.empty(3), np.empty((3, 3)), 30)
