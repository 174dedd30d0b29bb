"""Audit of the sensing operators and their solvers: mirror descent's primal map at the edges of
the float range (a step whose exp/sinh overflows, float32 with a small init scale), each against
an independent numpy iteration of the spec's update rule (solvers.md, "Mirror descent")."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

import lowrank_hpc as lr
from lowrank_hpc.sensing import GaussianSensing


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _psd_problem(n=12, r=2):
    Z = np.random.default_rng(0).standard_normal((n, r))
    M = Z @ Z.T / np.trace(Z @ Z.T)
    op = GaussianSensing(3 * n * r, (n, n), seed=4, symmetric=True)
    return M, op, op.forward(M)


def _rectangular_problem(scale=1.0, n1=8, n2=10, r=2):
    rng = np.random.default_rng(0)
    B = rng.standard_normal((n1, r)) @ rng.standard_normal((r, n2))
    B *= scale / np.linalg.norm(B, "nuc")
    op = GaussianSensing(60, (n1, n2), seed=5)
    return B, op, op.forward(B)


def _numpy_entropy_descent(A, y, alpha, step, iterations):
    """The spec's rule in numpy: W_0 = log(alpha) I, W <- W - step sym(A*(A(expm W) - y))."""
    n = A.shape[1]
    W = np.log(alpha) * np.eye(n)
    for _ in range(iterations):
        X = scipy.linalg.expm(W)
        G = np.einsum("i,ipq->pq", np.einsum("ipq,pq->i", A, X) - y, A)
        W = W - step * 0.5 * (G + G.T)
    return scipy.linalg.expm(W)


@pytest.mark.parametrize("mirror", ["entropy", "hypentropy"])
def test_mirror_descent_halves_a_step_whose_primal_overflows(mirror):
    """step=1e4 keeps W finite but exp(W) / sinh(W) overflow: that step must be halved like any
    step that raises the loss (it raised "GaussianSensing.forward: X contains NaN/inf")."""
    M, op, y = _psd_problem()
    first = lr.recover.mirror_descent(op, y, mirror=mirror, step=1e4, max_iter=1, tol=0, seed=0)
    assert first.step_halvings >= 10 and first.step == 1e4 / 2**first.step_halvings
    if mirror == "entropy":  # the accepted step is the spec's, computed with scipy's expm
        reference = _numpy_entropy_descent(op.to_dense().reshape(-1, 12, 12), y, 1e-3, first.step, 1)
        assert _relative(first.X, reference) < 1e-10
    run = lr.recover.mirror_descent(op, y, mirror=mirror, step=1e4, max_iter=300, tol=0, seed=0)
    assert run.stop_reason == "max_iter" and np.all(np.diff(run.history["loss"]) <= 1e-12)
    assert _relative(run.X, M) < 0.05  # as from a good step: 0.004 (entropy), 0.015 (hypentropy)


def test_hypentropy_in_float32_matches_float64_where_float32_sinh_overflows():
    """Data of scale 1e3 from alpha = 1e-36 needs sinh(W) ~ 1e39, beyond float32 (3.4e38), while
    X = alpha sinh(W) fits. It stopped "stationary" (converged=True) at error 0.67 after its step
    was halved 20 times; the spectral map now runs in float64 on the singular values."""
    B, op, y = _rectangular_problem(scale=1e3)
    runs = {dtype: lr.recover.mirror_descent(op, y.astype(dtype), mirror="hypentropy", init_scale=1e-36,
                                             max_iter=400, tol=1e-6, seed=0)
            for dtype in (np.float64, np.float32)}
    assert runs[np.float32].stop_reason == runs[np.float64].stop_reason == "max_iter"
    assert runs[np.float32].step_halvings == runs[np.float64].step_halvings
    assert _relative(runs[np.float32].X, runs[np.float64].X) < 1e-4
    assert _relative(runs[np.float64].X, B) < 0.2  # on its way to B (0.04 after 3000 iterations)


@pytest.mark.parametrize("mirror", ["entropy", "hypentropy"])
def test_init_scale_below_the_dtype_range_is_refused(mirror):
    """float32 X_0 = 1e-300 I is 0, and stays 0 while W moves: the run stopped "stationary"
    (converged=True) after one iteration at error 1. Such an init scale is now a ValueError;
    the smallest normal float32 init scale still agrees with float64."""
    M, op, y = _psd_problem()
    with pytest.raises(ValueError, match=r"init_scale = 1e-300 is below the smallest normal float32"):
        lr.recover.mirror_descent(op, y.astype(np.float32), mirror=mirror, init_scale=1e-300)
    with pytest.raises(ValueError, match="init_scale = 1e-310 is below the smallest normal float64"):
        lr.recover.mirror_descent(op, y, mirror=mirror, init_scale=1e-310)
    alpha = float(np.finfo(np.float32).tiny)
    runs = {dtype: lr.recover.mirror_descent(op, y.astype(dtype), mirror=mirror, init_scale=alpha, max_iter=1000,
                                             tol=0, seed=0)
            for dtype in (np.float64, np.float32)}
    assert runs[np.float32].stop_reason == "max_iter"
    assert _relative(runs[np.float32].X, runs[np.float64].X) < 1e-4
    assert _relative(runs[np.float64].X, M) < 0.05  # measured 0.022


@pytest.mark.parametrize("bad, error", [(None, TypeError), (1.0, TypeError), (-1, ValueError), (2**64, ValueError)])
def test_operator_seed_errors_say_what_is_wanted(bad, error):
    # An operator is its seed: None is refused, and every refusal says so (no "None or ..." here).
    with pytest.raises(error, match=r"GaussianSensing: seed must be an integer >= 0"):
        GaussianSensing(3, (3, 3), seed=bad)
