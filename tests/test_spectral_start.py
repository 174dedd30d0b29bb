"""The spectral start of factored_gd for rank-one sensing (spec: solvers.md, "Measurement
operators"): symmetric rank-one measurements give E[A*(A(X))] = 2 X + tr(X) I, so the start
removes the trace term, taking the top pairs of (A*(y) - tr I) / 2 with tr = sum(y) / sqrt(m);
asymmetric rank-one measurements (independent a_i, b_i) have no such term."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from conftest import rel_error
from lowrank_hpc.sensing import EntrySampling, GaussianSensing, RankOneSensing
from reference import truncated_svd

N, R = 40, 3


def _planted(n: int, r: int, seed: int) -> np.ndarray:
    """A PSD rank-r matrix of spectral norm 1."""
    Z = np.random.default_rng(seed).standard_normal((n, r))
    M = Z @ Z.T
    return M / np.linalg.norm(M, 2)


def _problem(seed: int, per_rank: int = 5):
    M = _planted(N, R, seed)
    op = RankOneSensing(per_rank * N * R, (N, N), seed=seed + 10, symmetric=True)
    return M, op, op.forward(M)


def _start(op, y, rank, **kwargs):
    return lr.recover.factored_gd(op, y, rank, init="spectral", max_iter=0, seed=0, **kwargs)


def _spec_start(op, y, r):
    """The spec's start by numpy alone: A*(y) from the dense operator, tr = sqrt(m) mean(y),
    D = (A*(y) - tr I) / 2, top-r eigenpairs of D by |lambda|, negative lambda set to 0."""
    m, n = op.num_measurements, op.shape[0]
    adjoint = (op.to_dense().T @ np.asarray(y, dtype=np.float64)).reshape(n, n)
    trace = np.sqrt(m) * np.mean(np.asarray(y, dtype=np.float64))
    eigenvalues, vectors = np.linalg.eigh((adjoint - trace * np.eye(n)) / 2)
    top = np.argsort(np.abs(eigenvalues))[::-1][:r]
    kept = np.maximum(eigenvalues[top], 0)
    return (vectors[:, top] * kept) @ vectors[:, top].T, np.sort(kept)[::-1]


# ------------------------------------------------------------------ the bias the spec names [check]
def test_symmetric_rank_one_adjoint_has_mean_two_x_plus_trace_identity():
    """E[A*(A(X))] = X + X^T + tr(X) I (Isserlis' theorem), E[y_i] = tr(X) / sqrt(m): checked by
    averaging over many measurements (the spec marks the identity [check])."""
    n, m = 5, 200_000
    X = np.random.default_rng(1).standard_normal((n, n))
    op = RankOneSensing(m, (n, n), seed=7, symmetric=True)
    y = op.forward(X)
    np.testing.assert_allclose(op.adjoint(y), X + X.T + np.trace(X) * np.eye(n), atol=0.1)
    assert np.sqrt(m) * y.mean() == pytest.approx(np.trace(X), abs=0.05)


def test_asymmetric_rank_one_adjoint_is_unbiased():
    """Independent a_i, b_i: E[A*(A(X))] = X, no identity term, so no correction."""
    X = np.random.default_rng(2).standard_normal((5, 4))
    op = RankOneSensing(200_000, X.shape, seed=8)
    np.testing.assert_allclose(op.adjoint(op.forward(X)), X, atol=0.1)
    assert op.spectral_correction(op.forward(X)) is None


# ------------------------------------------------------------------ the hook
def test_spectral_correction_of_symmetric_rank_one_is_the_trace_estimate_over_two(backend, dtype):
    M, op, y = _problem(seed=0)
    shift, gain = op.spectral_correction(backend.put(y.astype(dtype)))
    assert gain == 2.0
    assert shift == pytest.approx(y.sum() / np.sqrt(op.num_measurements), rel=1e-5)
    assert shift == pytest.approx(np.trace(M), rel=0.15)


def test_other_operators_report_no_correction():
    rows, cols = np.divmod(np.arange(12, dtype=np.int64), 4)
    for op in (GaussianSensing(30, (4, 4), seed=1, symmetric=True), GaussianSensing(30, (4, 3), seed=1),
               RankOneSensing(30, (4, 3), seed=1), EntrySampling(rows, cols, (3, 4))):
        assert op.spectral_correction(np.ones(op.num_measurements)) is None


def test_spectral_correction_checks_y():
    op = RankOneSensing(30, (4, 4), seed=1, symmetric=True)
    with pytest.raises(ValueError, match=r"y has shape \(29,\), expected \(30,\)"):
        op.spectral_correction(np.ones(29))
    with pytest.raises(TypeError):
        op.spectral_correction(None)


# ------------------------------------------------------------------ the start
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symmetric_start_is_the_spec_formula(backend, dtype, seed):
    """U0 U0^T equals the numpy start of the spec's formula (up to the randomized eigensolver's
    accuracy), with eigenvalues lambda of D itself (U0 = V sqrt(lambda), not divided by the
    operator scale), and so has the same error against M: about 1.1-1.2 here against 4.7-5.1
    without the correction (m = 5 n r is few measurements for this n)."""
    M, op, y = _problem(seed)
    expected, eigenvalues = _spec_start(op, y, R)
    start = _start(op, backend.put(y.astype(dtype)), R, symmetric=True)
    U = backend.get(start.U).astype(np.float64)
    assert rel_error(U @ U.T, expected) < 1e-3
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(U.T @ U))[::-1], eigenvalues, rtol=1e-5)
    assert rel_error(U @ U.T, M) == pytest.approx(rel_error(expected, M), rel=1e-3)
    assert rel_error(U @ U.T, M) < 1.4


def test_start_without_the_correction_is_far_off():
    """What the start was before (top eigenpairs of A*(y) / scale): the trace term makes it
    4.7x off; the corrected start is within 1.25x (a test that fails without the correction)."""
    M, op, y = _problem(seed=0)
    corrected = _start(op, y, R, symmetric=True)
    adjoint = (op.to_dense().T @ y).reshape(N, N)
    eigenvalues, vectors = np.linalg.eigh(adjoint / corrected.info["operator_scale"])
    uncorrected = (vectors[:, -R:] * eigenvalues[-R:]) @ vectors[:, -R:].T
    assert rel_error(uncorrected, M) > 4
    assert rel_error(corrected.U @ corrected.U.T, M) < 1.25


def test_symmetric_operator_with_asymmetric_factors_uses_the_correction():
    """The trace term belongs to the operator: U0 V0^T is the best rank-r approximation of
    (A*(y) - tr I) / 2 also when the factors are asymmetric."""
    M, op, y = _problem(seed=1)
    trace = np.sqrt(op.num_measurements) * y.mean()
    corrected = ((op.to_dense().T @ y).reshape(N, N) - trace * np.eye(N)) / 2
    start = _start(op, y, R)
    assert rel_error(start.U @ start.V.T, truncated_svd(corrected, R)) < 1e-3


def test_asymmetric_rank_one_start_is_unchanged():
    """No correction: U0 V0^T is the best rank-r approximation of A*(y) / scale, as before."""
    rng = np.random.default_rng(4)
    M = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 12))
    op = RankOneSensing(600, M.shape, seed=5)
    y = op.forward(M)
    start = _start(op, y, 2)
    adjoint = (op.to_dense().T @ y).reshape(M.shape)
    # rank 2 + 10 oversampling columns span all 12 columns: the randomized SVD is exact here.
    np.testing.assert_allclose(start.U @ start.V.T, truncated_svd(adjoint / start.info["operator_scale"], 2),
                               rtol=1e-9, atol=1e-11)


def test_matrix_sensing_estimator_starts_from_the_corrected_start():
    """MatrixSensing fits through factored_gd: the same start (a step far below the rounding of
    the factors leaves them unchanged bit for bit, so one iteration returns the start)."""
    M, op, y = _problem(seed=2)
    estimator = lr.MatrixSensing(rank=R, method="scaled", symmetric=True, init="spectral", step=1e-300,
                                 max_iter=1, tol=0.0, random_state=0).fit(op, y)
    np.testing.assert_array_equal(estimator.U_, _start(op, y, R, symmetric=True, method="scaled").U)
    expected, _ = _spec_start(op, y, R)
    assert rel_error(estimator.recovered_matrix(), expected) < 1e-3


# ------------------------------------------------------------------ convergence
def _iterations(op, y, method, seed):
    result = lr.recover.factored_gd(op, y, R, symmetric=True, init="spectral", method=method, max_iter=5000,
                                    tol=1e-6, seed=seed)
    assert result.converged, result
    return result.n_iter


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("method, per_rank", [("gd", 5), ("gd", 10), ("scaled", 10)])
def test_corrected_start_converges_in_no_more_iterations(monkeypatch, seed, method, per_rank):
    """Iterations to a relative residual of 1e-6 from the corrected start against the start
    without the correction (the operator's hook switched off). Measured (seeds 0, 1): gd at
    m = 5 n r 1327 -> 289, 544 -> 259; gd at m = 10 n r 426 -> 176, 378 -> 157; scaled at
    m = 10 n r 228 -> 103, 249 -> 115."""
    M, op, y = _problem(seed, per_rank)
    corrected = _iterations(op, y, method, seed)
    monkeypatch.setattr(RankOneSensing, "_spectral_correction", lambda self, call, y: None)
    uncorrected = _iterations(op, y, method, seed)
    assert corrected <= uncorrected


@pytest.mark.parametrize("seed", [0, 1])
def test_gd_default_step_reads_the_corrected_norm(seed):
    """The default gd step 0.5 / sigma takes sigma from the corrected (A*(y) - tr I) / 2, an
    estimate of ||M||_2 = 1, not from A*(y), whose tr(M) I term made the step 2-4x too small:
    sigma against numpy's norm of the dense corrected matrix, and fewer iterations to the same
    tolerance than with the step the uncorrected norm gives."""
    M, op, y = _problem(seed, per_rank=10)
    m, n = op.num_measurements, N
    adjoint = (op.to_dense().T @ y).reshape(n, n)
    corrected = (adjoint - np.sqrt(m) * y.mean() * np.eye(n)) / 2
    run = lr.recover.factored_gd(op, y, R, symmetric=True, method="gd", init="spectral", max_iter=3000, tol=1e-6,
                                 seed=1)
    assert run.info["spectral_norm_adjoint_y"] == pytest.approx(np.linalg.norm(corrected, 2), rel=0.03)
    uncorrected = lr.recover.factored_gd(op, y, R, symmetric=True, method="gd", init="spectral", max_iter=3000,
                                         tol=1e-6, seed=1, step=0.5 / np.linalg.norm(adjoint, 2))
    assert run.converged and uncorrected.converged
    assert run.n_iter < 0.75 * uncorrected.n_iter
    assert rel_error(run.U @ run.U.T, M) < 1e-5
