"""Issue 15, item 2: mirror descent for matrix sensing (Wu & Rebeschini 2021) against an
independent minimum-nuclear-norm solver (ADMM on the dense operator, numpy only)."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc.sensing import GaussianSensing


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def minimum_nuclear_norm(A, y, shape, psd, iterations=3000, rho=1.0):
    """argmin ||X||_* (over PSD X when ``psd``) subject to A vec(X) = y, by ADMM: X projected on
    the affine set, Z the singular-value (or clipped eigenvalue) soft threshold."""
    n1, n2 = shape
    pinv = A.T @ np.linalg.inv(A @ A.T)
    Z, W = np.zeros(n1 * n2), np.zeros(n1 * n2)
    for _ in range(iterations):
        X = Z - W
        X = X - pinv @ (A @ X - y)
        T = (X + W).reshape(n1, n2)
        if psd:
            values, vectors = np.linalg.eigh(0.5 * (T + T.T))
            Z = ((vectors * np.maximum(values - 1 / rho, 0)) @ vectors.T).ravel()
        else:
            left, values, right = np.linalg.svd(T, full_matrices=False)
            Z = ((left * np.maximum(values - 1 / rho, 0)) @ right).ravel()
        W += X - Z
    return Z.reshape(n1, n2)


def _psd_problem(m, n=20, r=2):
    Z = np.random.default_rng(0).standard_normal((n, r))
    M = Z @ Z.T / np.trace(Z @ Z.T)  # unit nuclear norm, as in the paper's experiment
    op = GaussianSensing(m, (n, n), seed=1, symmetric=True)
    return M, op, op.forward(M)


def test_spectral_entropy_from_small_init_reaches_the_minimum_nuclear_norm_error():
    """Underdetermined PSD sensing (m = 100 < n(n+1)/2 = 210): the minimum-trace PSD interpolant
    recovers M; mirror descent from alpha I approaches it as alpha shrinks."""
    M, op, y = _psd_problem(100)
    reference = minimum_nuclear_norm(op.to_dense(), y, M.shape, psd=True)
    assert _relative(reference, M) < 1e-3  # the independent solver recovers M here
    runs = {alpha: lr.recover.mirror_descent(op, y, init_scale=alpha, step=2.0, max_iter=2500, seed=0)
            for alpha in (1e-3, 1e-12)}
    errors = {alpha: _relative(run.X, M) for alpha, run in runs.items()}
    assert errors[1e-12] < 0.25 * errors[1e-3] and errors[1e-12] < 1.5e-2, errors
    X = runs[1e-12].X
    assert np.allclose(X, X.T) and np.linalg.eigvalsh(X).min() > -1e-12  # PSD iterates
    assert abs(runs[1e-12].info["nuclear_norm"] - np.trace(reference)) < 2e-2 * np.trace(reference)
    assert runs[1e-12].info["effective_rank"] < 2.5  # rank 2 (eff. rank of the truth: below 2)
    assert runs[1e-12].history["loss"][-1] < 1e-2 * runs[1e-12].history["loss"][0]


def test_spectral_entropy_tends_to_the_minimum_nuclear_norm_interpolant_at_the_rate_1_over_log_1_over_alpha():
    """m = 60 < 210: nuclear-norm minimization itself misses M (error 0.130, rank 6). Run to
    convergence, mirror descent's limit is the interpolant of least Bregman divergence from alpha I,
    i.e. argmin tr X + tr(X log X - X) / log(1/alpha): it tends to the minimum-trace interpolant,
    but only at the rate 1/log(1/alpha) (measured: distance 0.261 at alpha = 1e-3, 0.132 at 1e-6,
    0.101 at 1e-8, 0.069 at 1e-12; distance x log(1/alpha) = 1.80, 1.82, 1.86, 1.91). The limit is
    the ADMM reference, and the trace converges to its trace."""
    M, op, y = _psd_problem(60)
    reference = minimum_nuclear_norm(op.to_dense(), y, M.shape, psd=True)
    assert _relative(reference, M) > 0.1  # the minimum-nuclear-norm interpolant is not M
    runs = {alpha: lr.recover.mirror_descent(op, y, init_scale=alpha, step=2.0, max_iter=12000, tol=1e-8, seed=0)
            for alpha in (1e-3, 1e-6)}
    assert all(run.stop_reason == "converged" for run in runs.values())
    scaled = {alpha: _relative(run.X, reference) * np.log(1 / alpha) for alpha, run in runs.items()}
    assert 1.5 < scaled[1e-3] < 2.2 and 1.5 < scaled[1e-6] < 2.2, scaled  # distance = c / log(1/alpha)
    assert abs(scaled[1e-6] / scaled[1e-3] - 1) < 0.1, scaled
    excess = {alpha: np.trace(run.X) - np.trace(reference) for alpha, run in runs.items()}
    assert 0 < excess[1e-6] < 0.4 * excess[1e-3] and excess[1e-6] < 2e-2 * np.trace(reference), excess


def test_spectral_hypentropy_reaches_the_minimum_nuclear_norm_error_when_it_does_not_recover():
    """Rectangular 8 x 10 rank 2, m = 30 < 80: the minimum-nuclear-norm interpolant's error is
    0.486 (it is not M). From alpha = 1e-40 mirror descent ends within 1.7% of it (measured
    distance 0.017; alpha = 1e-10: 0.062, again c / log(1/alpha) with c ~ 0.65) and its error
    is the reference's to within 1% (0.4905 against 0.4860); its nuclear norm matches to 0.1%."""
    n1, n2, r = 8, 10, 2
    rng = np.random.default_rng(5)
    M = rng.standard_normal((n1, r)) @ rng.standard_normal((r, n2))
    M /= np.linalg.norm(M, "nuc")
    op = GaussianSensing(30, (n1, n2), seed=2)
    y = op.forward(M)
    reference = minimum_nuclear_norm(op.to_dense(), y, M.shape, psd=False, iterations=10000)
    reference_error = _relative(reference, M)
    assert reference_error > 0.4
    runs = {alpha: lr.recover.mirror_descent(op, y, mirror="hypentropy", init_scale=alpha, step=2.0, max_iter=6000,
                                           tol=1e-9, seed=0)
            for alpha in (1e-10, 1e-40)}
    distance = {alpha: _relative(run.X, reference) for alpha, run in runs.items()}
    assert distance[1e-40] < 0.025 and 2.5 < distance[1e-10] / distance[1e-40] < 5, distance
    assert abs(_relative(runs[1e-40].X, M) - reference_error) < 0.015 * reference_error
    assert abs(runs[1e-40].info["nuclear_norm"] / np.linalg.norm(reference, "nuc") - 1) < 1e-3
    assert np.linalg.norm(op.forward(runs[1e-40].X) - y) < 1e-3 * np.linalg.norm(y)


def test_spectral_hypentropy_recovers_a_rectangular_matrix():
    n1, n2, r = 12, 16, 2
    rng = np.random.default_rng(5)
    M = rng.standard_normal((n1, r)) @ rng.standard_normal((r, n2))
    M /= np.linalg.norm(M, "nuc")
    op = GaussianSensing(120, (n1, n2), seed=2)
    y = op.forward(M)
    reference = minimum_nuclear_norm(op.to_dense(), y, M.shape, psd=False)
    runs = {alpha: lr.recover.mirror_descent(op, y, mirror="hypentropy", init_scale=alpha, step=2.0,
                                           max_iter=2500, seed=0)
            for alpha in (1e-3, 1e-10)}
    errors = {alpha: _relative(run.X, M) for alpha, run in runs.items()}
    assert _relative(reference, M) < 1e-3
    assert errors[1e-10] < 0.5 * errors[1e-3] and errors[1e-10] < 2e-2, errors
    run = runs[1e-10]
    assert np.allclose(run.U @ run.V.T, run.X)


def test_mirror_descent_checks_resumes_and_reproduces(tmp_path):
    M, op, y = _psd_problem(60, n=8, r=1)
    a = lr.recover.mirror_descent(op, y, max_iter=40, seed=1)
    b = lr.recover.mirror_descent(op, y, max_iter=40, seed=1)
    assert np.array_equal(a.X, b.X) and a.info["seed"] == 1
    path = str(tmp_path / "md.npz")
    lr.recover.mirror_descent(op, y, max_iter=20, seed=1, checkpoint=path)
    resumed = lr.recover.mirror_descent(op, y, max_iter=40, seed=1, checkpoint=path)
    assert np.array_equal(resumed.X, a.X) and resumed.n_iter == 40
    with pytest.raises(ValueError, match="mirror must be one of"):
        lr.recover.mirror_descent(op, y, mirror="log")
    with pytest.raises(ValueError, match="init_scale must be"):
        lr.recover.mirror_descent(op, y, init_scale=0.0)
    with pytest.raises(ValueError, match="y has length"):
        lr.recover.mirror_descent(op, y[:-1])
    with pytest.raises(ValueError, match="needs a square operator"):
        lr.recover.mirror_descent(GaussianSensing(10, (4, 5), seed=0), np.ones(10))
    with pytest.raises(ValueError, match="all zeros"):
        lr.recover.mirror_descent(op, np.zeros_like(y))
    with pytest.raises(TypeError, match="sensing operator"):
        lr.recover.mirror_descent(np.eye(3), y)


@pytest.mark.gpu
@pytest.mark.parametrize("mirror", ["entropy", "hypentropy"])
def test_mirror_descent_gpu_matches_cpu(mirror):
    import cupy

    M, op, y = _psd_problem(60, n=10, r=1)
    cpu = lr.recover.mirror_descent(op, y, mirror=mirror, max_iter=200, seed=0, step=1.0)
    gpu = lr.recover.mirror_descent(op, cupy.asarray(y), mirror=mirror, max_iter=200, seed=0, step=1.0)
    assert gpu.backend == "cuda"
    assert _relative(cupy.asnumpy(gpu.X), cpu.X) < 1e-8


@pytest.mark.gpu
def test_prune_and_finetune_gpu_matches_cpu():
    import cupy

    Z = np.random.default_rng(0).standard_normal((12, 2))
    op = GaussianSensing(120, (12, 12), seed=1, symmetric=True)
    y = op.forward(Z @ Z.T)
    cpu = lr.recover.prune_and_finetune(op, y, 8, max_iter=300, finetune_iter=100, seed=0)
    gpu = lr.recover.prune_and_finetune(op, cupy.asarray(y), 8, max_iter=300, finetune_iter=100, seed=0)
    assert np.array_equal(cpu.info["kept_columns"], gpu.info["kept_columns"])
    assert _relative(cupy.asnumpy(gpu.X), cpu.X) < 1e-6
