"""Recovery from column sketches (decentralized sketching): exact recovery of planted low-rank X
by factored GD and by the nuclear-norm method, per-column and shared sketches; the nuclear-norm
proximal method against a dense numpy proximal gradient built on op.to_dense(); the
per-column least-squares start against numpy's lstsq; the operator's exact adjoint; the errors."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc._arrays import for_backend
from lowrank_hpc.recover import from_column_sketches
from lowrank_hpc.recover.column_sketches import column_least_squares
from lowrank_hpc.sensing import ColumnSketch, GaussianSensing


def planted(seed, n1, n2, rank):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n1, rank)) @ rng.standard_normal((rank, n2))


def relative(U, V, X):
    return np.linalg.norm(U @ V.T - X) / np.linalg.norm(X)


@pytest.mark.parametrize("method", ["factored_gd", "nuclear"])
@pytest.mark.parametrize("seed", [0, 1])
def test_per_column_sketches_recover_x_exactly(method, seed):
    # L = 10 r sketches per column of a 30 x 25 rank-2 matrix (the measurements are 2.8x its
    # r (n1 + n2 - r) degrees of freedom), far below n1 = 30: no column is recoverable alone.
    X = planted(seed, 30, 25, 2)
    op = ColumnSketch(20, (30, 25), seed=seed + 10)
    result = from_column_sketches(op, op.forward(X), 2, method=method, seed=seed)
    assert result.converged
    assert relative(result.U, result.V, X) < 1e-6


@pytest.mark.parametrize("method", ["factored_gd", "nuclear"])
def test_shared_sketch_recovers_x_once_it_is_injective(method):
    X = planted(2, 20, 30, 2)
    op = ColumnSketch(40, (20, 30), seed=5, shared=True)
    result = from_column_sketches(op, op.forward(X), 2, method=method, seed=0)
    assert relative(result.U, result.V, X) < 1e-6


def test_shared_sketch_shorter_than_a_column_warns():
    X = planted(3, 20, 30, 2)
    op = ColumnSketch(8, (20, 30), seed=5, shared=True)
    with pytest.warns(UserWarning, match="does not identify X"):
        result = from_column_sketches(op, op.forward(X), 2, max_iter=50, seed=0)
    assert result.U.shape == (20, 2)


def test_factored_gd_beats_nuclear_norm_at_few_sketches():
    """At L = 6 r the factored method recovers X; the nuclear-norm relaxation needs more (the
    comparison bench/bench_sketch_phase_transition.py draws)."""
    X = planted(1, 30, 25, 2)
    op = ColumnSketch(12, (30, 25), seed=4)
    y = op.forward(X)
    factored = from_column_sketches(op, y, 2, seed=0)
    assert relative(factored.U, factored.V, X) < 1e-6
    nuclear = from_column_sketches(op, y, 2, method="nuclear", max_iter=1500)
    assert relative(nuclear.U, nuclear.V, X) > 1e-3


def _svt(X, threshold):
    left, sigma, right_t = np.linalg.svd(X, full_matrices=False)
    return (left * np.maximum(sigma - threshold, 0)) @ right_t


@pytest.mark.parametrize("shared", [False, True], ids=["per_column", "shared"])
def test_nuclear_method_matches_a_dense_proximal_gradient(shared):
    """min 1/2 ||M vec(X) - y||^2 + reg ||X||_* by plain ISTA on the dense matrix M of the
    operator (to_dense: no forward/adjoint code), run to a fixed point, against the solver."""
    n1, n2 = 8, 6
    rng = np.random.default_rng(0)
    op = ColumnSketch(5, (n1, n2), seed=3, shared=shared)
    y = op.forward(planted(4, n1, n2, 2)) + 0.05 * rng.standard_normal(op.num_measurements)
    M = op.to_dense()
    reg = 0.2
    step = 1 / np.linalg.norm(M, 2) ** 2
    X = np.zeros((n1, n2))
    for _ in range(20000):
        X = _svt(X - step * (M.T @ (M @ X.ravel() - y)).reshape(n1, n2), step * reg)
    # A shared sketch of 5 < n1 rows does not identify X (it warns), but the penalized problem is solved all the same.
    with pytest.warns(UserWarning, match="does not identify X") if shared else contextlib.nullcontext():
        result = from_column_sketches(op, y, min(n1, n2, 5), method="nuclear", reg=reg, tol=1e-13, max_iter=20000)
    assert result.converged
    np.testing.assert_allclose(result.info["X"], X, atol=1e-8 * np.linalg.norm(X))
    assert result.info["effective_rank"] == np.linalg.matrix_rank(X, 1e-6 * np.linalg.norm(X, 2))


@pytest.mark.parametrize("shared", [False, True], ids=["per_column", "shared"])
def test_column_least_squares_and_adjoint_are_exact(shared, rng):
    n1, n2, L, r = 9, 7, 4, 3
    op = ColumnSketch(L, (n1, n2), seed=8, shared=shared)
    M = op.to_dense()
    X = rng.standard_normal((n1, n2))
    y = rng.standard_normal(op.num_measurements)
    np.testing.assert_allclose(op.forward(X), M @ X.ravel(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(op.adjoint(y).ravel(), M.T @ y, rtol=1e-12, atol=1e-12)
    assert abs(op.forward(X) @ y - np.vdot(X, op.adjoint(y))) < 1e-12 * np.linalg.norm(X) * np.linalg.norm(y) * 10
    U = rng.standard_normal((n1, r))
    V = column_least_squares(for_backend("test", "cpu"), op, y.reshape(n2, L), U)
    blocks = M.reshape(n2, L, n1, n2)
    for j in range(n2):
        expected = np.linalg.lstsq(blocks[j, :, :, j] @ U, y[j * L:(j + 1) * L], rcond=None)[0]
        np.testing.assert_allclose(V[j], expected, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
def test_gpu_recovers_x_from_device_sketches():
    import cupy

    X = planted(0, 30, 25, 2)
    op = ColumnSketch(20, (30, 25), seed=10)
    y = cupy.asarray(op.forward(X))
    for method in ("factored_gd", "nuclear"):
        result = from_column_sketches(op, y, 2, method=method, seed=0)
        assert result.backend == "cuda" and isinstance(result.U, cupy.ndarray)
        assert relative(cupy.asnumpy(result.U), cupy.asnumpy(result.V), X) < 1e-6


def test_errors_name_the_argument():
    op = ColumnSketch(4, (10, 8), seed=1)
    y = op.forward(planted(0, 10, 8, 1))
    with pytest.raises(TypeError, match="ColumnSketch"):
        from_column_sketches(GaussianSensing(30, (10, 8), seed=1), np.ones(30), 1)
    with pytest.raises(ValueError, match="length"):
        from_column_sketches(op, y[:-1], 1)
    with pytest.raises(ValueError, match="m_per_column"):
        from_column_sketches(op, y, 5)
    with pytest.raises(ValueError, match="all zeros"):
        from_column_sketches(op, np.zeros_like(y), 1)
    with pytest.raises(ValueError, match="method"):
        from_column_sketches(op, y, 1, method="admm")
    with pytest.raises(ValueError, match="reg"):
        from_column_sketches(op, y, 1, method="nuclear", reg=-1.0)
    with pytest.raises(TypeError, match="y"):
        from_column_sketches(op, None, 1)
    assert lr.recover.SKETCH_METHODS == ("factored_gd", "nuclear")
