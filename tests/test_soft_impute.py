"""soft-impute-ALS against independent dense references: the same iteration on the dense filled
matrix, nuclear-norm regularized completion by dense soft-impute (SVT) and its optimality
conditions, the observed spectral norm, warm-started paths, layouts, errors, checkpoints."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from conftest import rel_error
from lowrank_hpc.recover import CheckpointMismatchError, RecoveryResult, observed_spectral_norm, soft_impute

# The module (lowrank_hpc.recover.soft_impute is the function of that name).
soft_impute_module = importlib.import_module("lowrank_hpc.recover.soft_impute")
tall_svd_module = importlib.import_module("lowrank_hpc.recover._thin_svd")


def planted(rng, m, n, rank, fraction, noise=0.0):
    """An exact rank-``rank`` matrix X, observed on a random fraction of entries plus noise."""
    X = rng.standard_normal((m, rank)) @ rng.standard_normal((n, rank)).T
    mask = rng.random((m, n)) < fraction
    rows, cols = np.nonzero(mask)
    vals = X[rows, cols] + noise * rng.standard_normal(rows.shape[0])
    return X, mask, rows, cols, vals


def dense_observed(mask, rows, cols, vals):
    """P_Omega(X) as a dense matrix (zeros elsewhere)."""
    D = np.zeros(mask.shape)
    D[rows, cols] = vals
    return D


def orthonormal(rng, n, k):
    return np.linalg.qr(rng.standard_normal((n, k)))[0]


# ------------------------------------------------------------------ dense references
def dense_soft_impute_als(observed, mask, U, d, V, lam, sweeps, accelerated=False):
    """Hastie et al. (2015) Algorithm 3.1 on the dense filled matrix X* = P_Omega(X) + P_Omega^perp(Z),
    written independently of the solver: for each sweep, the left then the right half-step
    (M = X* V diag(d / (d + lam)) = U~ diag(s) Q^T, U <- U~, d <- s, V <- V Q, and the mirror image);
    returns the estimates and losses after each sweep and the finished (U_s, d_lambda, V_s).

    ``accelerated``: soft_impute's default. Each filled matrix is over-relaxed, X* = Y + w P_Omega(X - Y)
    with w = 1.5 and weights d / (d + w lam), and the left half-step's Y is Nesterov's
    extrapolation Z_t + beta (Z_t - Z_{t-1}), beta = (t - 1) / (t + 2); a sweep whose loss rises
    sets t = 1 (restart), or, if it had beta = 0, turns w to 1 and the momentum off for good.
    Either way the finish is the plain step M = X* V = U_s diag(s) R^T (w = 1), d = max(s - lam, 0)."""
    estimates, losses = [], []
    step, w = (1, 1.5) if accelerated else (0, 1.0)
    previous = (U, d, V)

    def product(U, d, V):
        return (U * d) @ V.T

    def filled(Y):
        return Y + w * np.where(mask, observed - Y, 0.0)

    def weights(d):
        return d / (d + w * lam) if lam > 0 else np.ones_like(d)

    for _ in range(sweeps):
        beta = (step - 1) / (step + 2) if step >= 1 else 0.0
        Z = product(U, d, V)
        Y = Z + beta * (Z - product(*previous))
        previous = (U, d, V)
        left, s, q_t = np.linalg.svd(filled(Y) @ V * weights(d), full_matrices=False)
        U, d, V = left, s, V @ q_t.T
        right, s, q_t = np.linalg.svd(filled(product(U, d, V)).T @ U * weights(d), full_matrices=False)
        V, d, U = right, s, U @ q_t.T
        estimates.append(product(U, d, V))
        losses.append(0.5 * np.sum((observed - estimates[-1])[mask] ** 2) + lam * d.sum())
        if len(losses) > 1 and losses[-1] > losses[-2]:
            step, w = (1, w) if beta > 0 else (0, 1.0)
        elif step >= 1:
            step += 1
    Z = product(U, d, V)
    left, s, q_t = np.linalg.svd(np.where(mask, observed, Z) @ V, full_matrices=False)
    return estimates, losses, (left, np.maximum(s - lam, 0), V @ q_t.T)


def dense_svt_soft_impute(observed, mask, lam, iterations=20000, tol=1e-14):
    """Mazumder, Hastie, Tibshirani (2010): Z <- SVT_lam(P_Omega(X) + P_Omega^perp(Z)) to convergence:
    the minimiser of 1/2 ||P_Omega(X - Z)||_F^2 + lam ||Z||_*."""
    Z = np.zeros(observed.shape)
    for _ in range(iterations):
        left, s, right_t = np.linalg.svd(np.where(mask, observed, Z), full_matrices=False)
        Z_new = (left * np.maximum(s - lam, 0)) @ right_t
        change = np.linalg.norm(Z_new - Z) / max(np.linalg.norm(Z), 1e-300)
        Z = Z_new
        if change < tol:
            break
    return Z


def estimate(result):
    return np.asarray(result.U) @ np.asarray(result.V).T


@pytest.fixture(params=["jacobi", "lapack", "tsqr"])
def svd_path(request, monkeypatch):
    """On the CPU the half-steps' SVDs of short matrices are the core's one-sided Jacobi, of
    taller ones LAPACK's, of tall ones (thousands of rows) a TSQR: the tests that take it run on
    all three (the TSQR's blocks made small enough for these matrices)."""
    if request.param != "jacobi":
        monkeypatch.setattr(soft_impute_module, "_JACOBI_MAX_ROWS", 0)
    if request.param == "tsqr":
        monkeypatch.setattr(tall_svd_module, "TSQR_BLOCK_ROWS", 20)  # ranks up to 5: a block of 20 rows and a rest
        monkeypatch.setattr(tall_svd_module, "TSQR_MIN_ROWS", 20)
    return request.param


# ------------------------------------------------------------------ 1. the same iteration as the dense reference
@pytest.mark.parametrize("accelerate", [False, True])
@pytest.mark.parametrize("lam", [0.0, 0.7, 4.0])
def test_iterates_equal_the_dense_reference(backend, rng, lam, accelerate, svd_path):
    m, n, r, sweeps = 30, 25, 5, 25
    X, mask, rows, cols, vals = planted(rng, m, n, 3, 0.4, noise=0.1)
    observed = dense_observed(mask, rows, cols, vals)
    U0, d0, V0 = orthonormal(rng, m, r), np.array([9.0, 7.0, 4.0, 2.0, 1.0]), orthonormal(rng, n, r)
    seen = []
    result = soft_impute(*map(backend.put, (rows, cols, vals)), (m, n), r, lam, max_iter=sweeps, tol=0.0,
                         init=tuple(map(backend.put, (U0, d0, V0))), accelerate=accelerate,
                         callback=lambda i, s: seen.append(backend.get((s["U"] * s["d"]) @ s["V"].T)))
    estimates, losses, (U_s, d_s, V_s) = dense_soft_impute_als(observed, mask, U0, d0, V0, lam, sweeps,
                                                               accelerated=accelerate)
    assert result.n_iter == sweeps and result.stop_reason == "max_iter" and len(seen) == sweeps
    for ours, theirs in zip(seen, estimates):
        assert rel_error(ours, theirs) < 1e-9
    assert rel_error(backend.get(result.U) @ backend.get(result.V).T, (U_s * d_s) @ V_s.T) < 1e-9
    np.testing.assert_allclose(result.info["singular_values"], d_s, rtol=1e-9, atol=1e-9 * d_s[0])
    # The loss is the objective of the iterate after each sweep: 1/2 ||P_Omega(X - Z)||^2 + lam sum(d).
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-10)
    last = estimates[-1]
    d_last = np.linalg.svd(last, compute_uv=False)[:r]
    objective = 0.5 * np.sum((observed - last)[mask] ** 2) + lam * d_last.sum()
    assert result.history["loss"][-1] == pytest.approx(objective, rel=1e-10)
    assert result.history["relative_change"][-1] == pytest.approx(
        np.linalg.norm(estimates[-1] - estimates[-2]) / np.linalg.norm(estimates[-2]), rel=1e-6)
    if not accelerate:  # the plain iteration's loss never rises
        assert np.all(np.diff(losses) <= 1e-12 * losses[0])


def test_accelerated_restarts_equal_the_dense_reference():
    """A noisy problem on which the momentum overshoots: the loss rises at sweep 23 and the
    momentum restarts (the reference and soft_impute follow the same rule)."""
    rng = np.random.default_rng(13)
    m, n, r, lam, sweeps = 30, 25, 10, 1.0, 30
    _, mask, rows, cols, vals = planted(rng, m, n, 3, 0.5, noise=2.0)
    observed = dense_observed(mask, rows, cols, vals)
    U0, d0, V0 = orthonormal(rng, m, r), np.linspace(9.0, 1.0, r), orthonormal(rng, n, r)
    estimates, losses, _ = dense_soft_impute_als(observed, mask, U0, d0, V0, lam, sweeps, accelerated=True)
    assert list(np.nonzero(np.diff(losses) > 0)[0]) == [21]
    seen = []
    result = soft_impute(rows, cols, vals, (m, n), r, lam, max_iter=sweeps, tol=0.0, init=(U0, d0, V0),
                         callback=lambda i, s: seen.append((s["U"] * s["d"]) @ s["V"].T))
    for ours, theirs in zip(seen, estimates):
        assert rel_error(ours, theirs) < 1e-9
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-10)


def test_acceleration_reaches_the_same_solution_in_fewer_sweeps(rng):
    _, _, rows, cols, vals = planted(rng, 150, 120, 5, 0.25, noise=0.3)
    runs = {accelerate: soft_impute(rows, cols, vals, (150, 120), 12, 3.0, max_iter=2000, tol=1e-7, seed=0,
                                    accelerate=accelerate) for accelerate in (False, True)}
    assert runs[False].converged and runs[True].converged  # 494 and 305 sweeps when written
    assert rel_error(estimate(runs[True]), estimate(runs[False])) < 2e-5
    assert runs[True].n_iter < 0.7 * runs[False].n_iter


def test_objective_never_increases_and_history_shapes(rng):
    _, _, rows, cols, vals = planted(rng, 60, 50, 4, 0.3, noise=0.5)
    result = soft_impute(rows, cols, vals, (60, 50), 8, 2.0, max_iter=40, tol=0.0, seed=3, accelerate=False)
    loss, change = result.history["loss"], result.history["relative_change"]
    assert loss.shape == change.shape == (40,) and loss.dtype == change.dtype == np.float64
    assert change[0] == np.inf  # the cold start is A B^T = 0
    assert np.all(np.diff(loss) <= 1e-12 * loss[0])
    assert result.U.shape == (60, 8) and result.V.shape == (50, 8)


# ------------------------------------------------------------------ 2. the convex problem
def test_converged_estimate_is_the_nuclear_norm_solution_and_satisfies_kkt(rng):
    m, n = 30, 25
    X, mask, rows, cols, vals = planted(rng, m, n, 4, 0.5, noise=0.3)
    observed = dense_observed(mask, rows, cols, vals)
    lam = 0.2 * np.linalg.norm(observed, 2)
    Z_ref = dense_svt_soft_impute(observed, mask, lam)
    solution_rank = np.linalg.matrix_rank(Z_ref, tol=1e-8 * np.linalg.norm(Z_ref, 2))
    assert 2 <= solution_rank <= 8
    result = soft_impute(rows, cols, vals, (m, n), 12, lam, max_iter=5000, tol=1e-10, seed=2)
    Z = estimate(result)
    assert rel_error(Z, Z_ref) < 1e-6
    assert result.info["effective_rank"] == solution_rank
    assert np.all(result.info["singular_values"][solution_rank:] == 0)
    # Optimality: G = P_Omega(X - Z) lies in lam times the subdifferential of ||.||_* at Z:
    # G V = lam U and G^T U = lam V on the support, and ||G||_2 <= lam.
    U_s, d, V_s = (np.asarray(f) for f in result.info["factors"])
    support = d > 0
    G = np.where(mask, observed - Z, 0.0)
    assert np.linalg.norm(G @ V_s[:, support] - lam * U_s[:, support]) < 1e-6 * lam
    assert np.linalg.norm(G.T @ U_s[:, support] - lam * V_s[:, support]) < 1e-6 * lam
    assert np.linalg.norm(G, 2) <= lam * (1 + 1e-6)
    np.testing.assert_allclose(U_s.T @ U_s, np.eye(12), atol=1e-12)
    np.testing.assert_allclose(V_s.T @ V_s, np.eye(12), atol=1e-12)


# ------------------------------------------------------------------ 3. observed spectral norm and default reg
@pytest.fixture(params=["dense", "lanczos"])
def norm_path(request, monkeypatch):
    """Small matrices take one dense SVD, larger ones Lanczos: each test runs on both paths."""
    if request.param == "lanczos":
        monkeypatch.setattr(soft_impute_module, "_DENSE_NORM_MAX_WORK", 0)
    return request.param


def test_observed_spectral_norm_and_default_reg(backend, rng, norm_path):
    m, n = 70, 55
    _, mask, rows, cols, vals = planted(rng, m, n, 3, 0.3, noise=1.0)
    expected = np.linalg.norm(dense_observed(mask, rows, cols, vals), 2)
    args = tuple(map(backend.put, (rows, cols, vals)))
    assert observed_spectral_norm(*args, (m, n)) == pytest.approx(expected, rel=1e-10)
    assert observed_spectral_norm(*args, (m, n), seed=99) == pytest.approx(expected, rel=1e-10)
    result = soft_impute(*args, (m, n), 5, max_iter=3, seed=0)
    assert result.info["reg"] == pytest.approx(expected / 50, rel=1e-10)  # fancyimpute's default


def test_observed_spectral_norm_of_noise_and_of_a_rank_one_matrix(rng, norm_path):
    """A flat spectrum (pure noise, slow for power iteration), and an exact rank one P_Omega(X)."""
    rows, cols = np.nonzero(rng.random((120, 90)) < 0.5)
    vals = rng.standard_normal(rows.shape[0])
    dense = np.zeros((120, 90))
    dense[rows, cols] = vals
    assert observed_spectral_norm(rows, cols, vals, (120, 90)) == pytest.approx(np.linalg.norm(dense, 2), rel=1e-10)
    rows, cols = np.nonzero(np.ones((6, 4)))
    vals = np.outer(np.arange(1.0, 7.0), np.arange(1.0, 5.0))[rows, cols]
    assert observed_spectral_norm(rows, cols, vals, (6, 4)) == pytest.approx(
        np.linalg.norm(np.arange(1.0, 7.0)) * np.linalg.norm(np.arange(1.0, 5.0)), rel=1e-12)
    # Repeated coordinates add up on both paths, as in scipy's COO format.
    doubled = np.concatenate([rows, rows]), np.concatenate([cols, cols]), np.concatenate([vals, vals])
    assert observed_spectral_norm(*doubled, (6, 4)) == pytest.approx(
        2 * np.linalg.norm(np.arange(1.0, 7.0)) * np.linalg.norm(np.arange(1.0, 5.0)), rel=1e-12)


# ------------------------------------------------------------------ 4. lambda_max gives zero
def test_reg_at_or_above_the_observed_spectral_norm_gives_zero(rng, svd_path):
    """Also the case of factor columns whose scales span 1e-88 to 1: every direction the
    half-steps' SVDs return stays orthonormal (a non-orthonormal one inflated the finish)."""
    m, n = 40, 30
    _, mask, rows, cols, vals = planted(rng, m, n, 3, 0.4, noise=0.1)
    lam_max = observed_spectral_norm(rows, cols, vals, (m, n))
    above = soft_impute(rows, cols, vals, (m, n), 6, 1.05 * lam_max, max_iter=300, seed=1)
    assert above.info["effective_rank"] == 0 and np.all(above.info["singular_values"] == 0)
    assert not np.any(above.U) and not np.any(above.V)
    at = soft_impute(rows, cols, vals, (m, n), 6, lam_max, max_iter=300, seed=1)
    # At lambda_max itself the iterate decays to zero like 1/k: the estimate is zero to that rate.
    assert np.linalg.norm(estimate(at)) < 1e-2 * lam_max
    just_below = soft_impute(rows, cols, vals, (m, n), 6, 0.9 * lam_max, max_iter=500, tol=1e-9, seed=1)
    assert just_below.info["effective_rank"] == 1


# ------------------------------------------------------------------ 5. warm-started path
def test_warm_started_path_reaches_the_cold_start_solution(rng):
    m, n = 60, 50
    _, _, rows, cols, vals = planted(rng, m, n, 4, 0.4, noise=0.2)
    lam_max = observed_spectral_norm(rows, cols, vals, (m, n))
    path = lam_max * 0.6 ** np.arange(1, 6)
    settings = dict(max_iter=3000, tol=1e-9, seed=4)
    previous, ranks = None, []
    for lam in path:
        previous = soft_impute(rows, cols, vals, (m, n), 15, lam, init=previous, **settings)
        assert previous.converged
        ranks.append(previous.info["effective_rank"])
    assert ranks == sorted(ranks) and ranks[0] >= 1 and ranks[-1] > ranks[0]  # the rank grows as lambda falls
    cold = soft_impute(rows, cols, vals, (m, n), 15, path[-1], **settings)
    assert rel_error(estimate(previous), estimate(cold)) < 1e-6
    np.testing.assert_allclose(previous.info["singular_values"], cold.info["singular_values"], rtol=1e-6,
                               atol=1e-7 * cold.info["singular_values"][0])
    # The tuple form is the same warm start as the result (re-factored: equal to rounding), and
    # warm starts save sweeps.
    again = soft_impute(rows, cols, vals, (m, n), 15, path[-1] * 0.99, init=previous, **settings)
    as_tuple = soft_impute(rows, cols, vals, (m, n), 15, path[-1] * 0.99, init=previous.info["factors"], **settings)
    assert rel_error(estimate(again), estimate(as_tuple)) < 1e-8
    assert again.n_iter < cold.n_iter


def test_warm_start_of_another_width_is_padded(rng):
    m, n = 40, 35
    _, _, rows, cols, vals = planted(rng, m, n, 3, 0.5, noise=0.1)
    lam = 0.05 * observed_spectral_norm(rows, cols, vals, (m, n))
    narrow = soft_impute(rows, cols, vals, (m, n), 2, lam, max_iter=200, tol=1e-9, seed=1)
    wide = soft_impute(rows, cols, vals, (m, n), 10, lam, init=narrow, max_iter=3000, tol=1e-10, seed=1)
    cold = soft_impute(rows, cols, vals, (m, n), 10, lam, max_iter=3000, tol=1e-10, seed=1)
    assert wide.info["effective_rank"] > 2
    assert rel_error(estimate(wide), estimate(cold)) < 1e-6
    # Wider than the rank bound: the top directions are kept.
    back = soft_impute(rows, cols, vals, (m, n), 2, lam, init=wide, max_iter=0)
    assert back.U.shape == (m, 2)


# ------------------------------------------------------------------ 6. dtypes, layouts, seeds, errors, checkpoints
def test_float32_follows_float64(rng):
    _, _, rows, cols, vals = planted(rng, 80, 60, 3, 0.4, noise=0.05)
    double = soft_impute(rows, cols, vals, (80, 60), 6, 1.0, max_iter=200, tol=1e-6, seed=5)
    single = soft_impute(rows.astype(np.int32), cols.astype(np.int32), vals.astype(np.float32), (80, 60), 6, 1.0,
                         max_iter=200, tol=1e-6, seed=5)
    assert single.U.dtype == single.V.dtype == np.float32 and single.info["factors"][1].dtype == np.float32
    assert single.info["singular_values"].dtype == np.float64
    assert rel_error(estimate(single), estimate(double)) < 1e-3


def test_index_layouts_give_identical_results(rng):
    _, _, rows, cols, vals = planted(rng, 50, 40, 3, 0.4, noise=0.05)
    settings = dict(max_iter=15, tol=0.0, seed=8)
    base = soft_impute(rows, cols, vals, (50, 40), 4, 0.5, **settings)
    wide_rows = np.repeat(rows.astype(np.int16), 2)[::2]  # int16, strided
    wide_cols = np.stack([cols, cols], axis=1).astype(np.uint16)[:, 1]  # uint16, strided
    wide_vals = np.repeat(vals, 3)[::3]
    wide_vals.flags.writeable = False
    assert not (wide_rows.flags.c_contiguous or wide_cols.flags.c_contiguous or wide_vals.flags.c_contiguous)
    other = soft_impute(wide_rows, wide_cols, wide_vals, (50, 40), np.int64(4), 0.5, **settings)
    np.testing.assert_array_equal(other.U, base.U)
    np.testing.assert_array_equal(other.V, base.V)
    listed = soft_impute(rows.tolist(), cols.tolist(), vals.tolist(), [50, 40], 4, 0.5, **settings)
    np.testing.assert_array_equal(listed.U, base.U)


def test_seed_reproducibility(rng):
    _, _, rows, cols, vals = planted(rng, 50, 40, 3, 0.4, noise=0.05)
    settings = dict(max_iter=10, tol=0.0)
    a = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, seed=11, **settings)
    b = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, seed=11, **settings)
    c = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, seed=12, **settings)
    np.testing.assert_array_equal(a.U, b.U)
    np.testing.assert_array_equal(a.history["loss"], b.history["loss"])
    assert not np.array_equal(a.U, c.U)
    drawn = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, seed=None, **settings)
    again = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, seed=drawn.info["seed"], **settings)
    np.testing.assert_array_equal(drawn.U, again.U)
    assert a.info["seed"] == 11


def _with_entry(args, name, k, value):
    array = np.array(args[name])
    array[k] = value
    return {name: array}


def _repeated(args):
    return {name: np.concatenate([args[name], args[name][:1]]) for name in ("rows", "cols", "vals")}


@pytest.mark.parametrize("change, error, match", [
    (lambda a: dict(rank=0), ValueError, "rank"),
    (lambda a: dict(rank=11), ValueError, "rank"),
    (lambda a: dict(rank=2.0), TypeError, "rank"),
    (lambda a: dict(reg=-1.0), ValueError, "reg"),
    (lambda a: dict(reg=float("nan")), ValueError, "reg"),
    (lambda a: dict(reg=float("inf")), ValueError, "reg"),
    (lambda a: dict(shape=(12,)), ValueError, "shape"),
    (lambda a: dict(shape=(0, 10)), ValueError, "shape"),
    (lambda a: dict(vals=a["vals"][:-1]), ValueError, "vals has length"),
    (lambda a: _with_entry(a, "vals", 3, np.nan), ValueError, "vals contains"),
    (lambda a: _with_entry(a, "vals", 3, np.inf), ValueError, "vals contains"),
    (lambda a: _with_entry(a, "rows", 2, 12), IndexError, "rows"),
    (lambda a: _with_entry(a, "cols", 2, -1), IndexError, "cols"),
    (lambda a: dict(rows=a["rows"].astype(float)), TypeError, "rows"),
    (_repeated, ValueError, "repeat"),
    (lambda a: dict(init=(np.ones((12, 2)), np.ones(2), np.ones((9, 2)))), ValueError, "init"),
    (lambda a: dict(init=(np.ones((12, 2)), np.array([1.0, np.nan]), np.ones((10, 2)))), ValueError, "init d"),
    (lambda a: dict(init=np.ones(3)), TypeError, "init"),
    (lambda a: dict(max_iter=-1), ValueError, "max_iter"),
    (lambda a: dict(tol=-1.0), ValueError, "tol"),
    (lambda a: dict(seed=-1), ValueError, "seed"),
])
def test_bad_inputs_raise_clear_errors(rng, change, error, match):
    _, _, rows, cols, vals = planted(rng, 12, 10, 2, 0.6)
    args = dict(rows=rows, cols=cols, vals=vals, shape=(12, 10), rank=3)
    args.update(change(args))
    positional = [args.pop(k) for k in ("rows", "cols", "vals", "shape", "rank")]
    with pytest.raises(error, match=match):
        soft_impute(*positional, **args)


def test_observed_spectral_norm_checks_its_arguments(rng):
    _, _, rows, cols, vals = planted(rng, 12, 10, 2, 0.6)
    with pytest.raises(IndexError, match="rows"):
        observed_spectral_norm(rows, cols, vals, (5, 10))
    with pytest.raises(TypeError, match="seed"):
        observed_spectral_norm(rows, cols, vals, (12, 10), seed=None)
    with pytest.raises(ValueError, match="vals contains"):
        observed_spectral_norm(rows, cols, np.full(vals.shape, np.nan), (12, 10))


def test_reg_zero_is_the_rank_constrained_fit(rng):
    """reg = 0: no division by zero (warnings are errors here), and an exact rank-3 matrix is completed."""
    X, _, rows, cols, vals = planted(rng, 60, 50, 3, 0.5)
    result = soft_impute(rows, cols, vals, (60, 50), 3, 0.0, max_iter=500, tol=1e-10, seed=1)
    assert result.info["reg"] == 0.0 and result.converged
    assert rel_error(estimate(result), X) < 1e-6


def test_max_iter_zero_finishes_the_start(rng):
    _, mask, rows, cols, vals = planted(rng, 20, 15, 2, 0.5)
    result = soft_impute(rows, cols, vals, (20, 15), 3, 0.0, max_iter=0, seed=1)
    assert result.n_iter == 0 and result.history["loss"].shape == (0,) and result.stop_reason == "max_iter"
    # The cold start has A B^T = 0: X* = P_Omega(X), and the finish is its projection on span(V0).
    observed = dense_observed(mask, rows, cols, vals)
    V0 = np.asarray(result.info["factors"][2])
    assert rel_error(estimate(result), observed @ V0 @ V0.T) < 1e-12


class Interrupted(Exception):
    """Raised by a callback to cut a run short, as a crash would."""


def crash_at(stop: int):
    """A callback that raises Interrupted after sweep ``stop``."""
    def callback(iteration, state):
        if iteration == stop:
            raise Interrupted

    return callback


def test_checkpoint_resume_matches_uninterrupted_run(tmp_path, rng):
    _, _, rows, cols, vals = planted(rng, 70, 60, 3, 0.3, noise=0.1)
    settings = dict(max_iter=25, tol=0.0, seed=7)
    reference = soft_impute(rows, cols, vals, (70, 60), 6, 0.8, **settings)
    path = str(tmp_path / "run.npz")
    with pytest.raises(Interrupted):
        soft_impute(rows, cols, vals, (70, 60), 6, 0.8, checkpoint=path, checkpoint_every=3, callback=crash_at(8),
                    **settings)
    with np.load(path) as saved:
        assert int(saved["iteration"]) == 6
    resumed = soft_impute(rows, cols, vals, (70, 60), 6, 0.8, checkpoint=path, checkpoint_every=3, **settings)
    np.testing.assert_array_equal(resumed.U, reference.U)
    np.testing.assert_array_equal(resumed.V, reference.V)
    np.testing.assert_array_equal(resumed.history["loss"], reference.history["loss"])
    np.testing.assert_array_equal(resumed.history["relative_change"], reference.history["relative_change"])
    assert resumed.n_iter == 25 and resumed.stop_reason == "max_iter"
    with pytest.raises(CheckpointMismatchError, match="different problem"):
        soft_impute(rows, cols, vals, (70, 60), 6, 0.9, checkpoint=path, **settings)
    # A warm start too, with a drawn seed.
    warm_path = str(tmp_path / "warm.npz")
    first = soft_impute(rows, cols, vals, (70, 60), 6, 0.8, init=reference, max_iter=4, tol=0.0,
                        checkpoint=warm_path)
    continued = soft_impute(rows, cols, vals, (70, 60), 6, 0.8, init=reference, max_iter=10, tol=0.0,
                            checkpoint=warm_path)
    whole = soft_impute(rows, cols, vals, (70, 60), 6, 0.8, init=reference, max_iter=10, tol=0.0,
                        seed=first.info["seed"])
    assert continued.n_iter == 10
    np.testing.assert_array_equal(continued.U, whole.U)


def test_time_limit_progress_and_callback(rng, capsys):
    _, _, rows, cols, vals = planted(rng, 40, 30, 2, 0.5)
    assert soft_impute(rows, cols, vals, (40, 30), 3, 0.1, time_limit=0.0, seed=1).n_iter == 0
    seen = []
    result = soft_impute(rows, cols, vals, (40, 30), 3, 0.1, max_iter=5, tol=0.0, seed=1, progress=True,
                         callback=lambda i, s: seen.append((i, s["U"].shape, s["d"].shape, s["V"].shape)))
    assert seen == [(i, (40, 3), (3,), (30, 3)) for i in range(1, 6)] and result.n_iter == 5
    assert "soft_impute" in capsys.readouterr().err


def test_returns_a_recovery_result_with_the_documented_info(rng):
    _, _, rows, cols, vals = planted(rng, 40, 30, 2, 0.5, noise=0.1)
    result = soft_impute(rows, cols, vals, (40, 30), 6, 1.0, seed=1)
    assert isinstance(result, RecoveryResult) and result.backend == "cpu"
    U_s, d, V_s = result.info["factors"]
    np.testing.assert_array_equal(d, result.info["singular_values"])
    assert np.all(np.diff(d) <= 0) and result.info["effective_rank"] == int((d > 0).sum())
    np.testing.assert_allclose(result.U, U_s * np.sqrt(d), rtol=0, atol=0)
    assert set(result.info) >= {"reg", "singular_values", "effective_rank", "seed", "factors"}


# ------------------------------------------------------------------ 7. a planted problem
def test_planted_low_rank_matrix_is_recovered(rng):
    X, _, rows, cols, vals = planted(rng, 200, 150, 5, 0.3, noise=0.01)
    lam = observed_spectral_norm(rows, cols, vals, (200, 150)) / 200
    result = soft_impute(rows, cols, vals, (200, 150), 10, lam, max_iter=1000, tol=1e-7, seed=3)
    assert result.converged and result.info["effective_rank"] == 5  # the rank bound 10 adapts to the planted 5
    # What is left is the shrinkage bias of the nuclear norm (about lam / sigma_5), not the 70% unseen.
    assert rel_error(estimate(result), X) < 0.02


# ------------------------------------------------------------------ GPU against CPU
@pytest.mark.gpu
def test_gpu_soft_impute_equals_cpu(dtype, rng):
    from lowrank_hpc import _backend

    cupy = _backend.cupy_module()
    _, _, rows, cols, vals = planted(rng, 90, 70, 4, 0.3, noise=0.05)
    vals = vals.astype(dtype)
    lam = observed_spectral_norm(rows, cols, vals, (90, 70)) / 20
    settings = dict(max_iter=30, tol=0.0, seed=11)
    cpu = soft_impute(rows, cols, vals, (90, 70), 8, lam, **settings)
    gpu = soft_impute(*map(cupy.asarray, (rows, cols, vals)), (90, 70), 8, lam, **settings)
    assert gpu.backend == "cuda" and isinstance(gpu.U, cupy.ndarray) and gpu.U.dtype == dtype
    tolerance = 1e-8 if dtype == np.float64 else 1e-3
    assert rel_error(gpu.U.get() @ gpu.V.get().T, estimate(cpu)) < tolerance
    np.testing.assert_allclose(gpu.info["singular_values"], cpu.info["singular_values"], rtol=tolerance,
                               atol=tolerance * cpu.info["singular_values"][0])
    np.testing.assert_allclose(gpu.history["loss"], cpu.history["loss"], rtol=10 * tolerance)
    assert observed_spectral_norm(*map(cupy.asarray, (rows, cols, vals)), (90, 70)) == pytest.approx(
        observed_spectral_norm(rows, cols, vals, (90, 70)), rel=1e-10)
    warm = soft_impute(*map(cupy.asarray, (rows, cols, vals)), (90, 70), 8, lam / 2, init=gpu, **settings)
    warm_cpu = soft_impute(rows, cols, vals, (90, 70), 8, lam / 2, init=cpu, **settings)
    assert rel_error(warm.U.get() @ warm.V.get().T, estimate(warm_cpu)) < 10 * tolerance
    # Shuffled entries: the solver moves them into row order on the device too (a cupy.repeat
    # of array repeats, which CuPy refuses, once did it).
    order = rng.permutation(rows.shape[0])
    shuffled = soft_impute(*(cupy.asarray(x[order]) for x in (rows, cols, vals)), (90, 70), 8, lam, **settings)
    assert rel_error(shuffled.U.get() @ shuffled.V.get().T, estimate(cpu)) < tolerance


# ------------------------------------------------------------------ offsets fitted jointly with the factors
def test_centered_solve_is_the_joint_minimiser(rng):
    """center="both": at convergence each block is optimal given the other: the offsets are the
    exact ridge minimiser (dense lstsq) for vals - Z, and Z is the nuclear-norm solution (dense
    SVT soft-impute) for vals minus the offsets."""
    from test_completion_fit import exact_offsets

    m, n = 30, 25
    _, mask, rows, cols, vals = planted(rng, m, n, 3, 0.6, noise=0.1)
    vals = vals + 2.0 + rng.standard_normal(m)[rows] + rng.standard_normal(n)[cols]
    lam, bias_reg = 1.0, 2.0
    result = soft_impute(rows, cols, vals, (m, n), 12, lam, max_iter=20000, tol=1e-12, seed=1, center="both",
                         bias_reg=bias_reg)
    assert result.converged
    offsets, Z = result.info["offsets"], estimate(result)
    mu, a, b = exact_offsets(rows, cols, vals - Z[rows, cols], (m, n), bias_reg)
    assert offsets.intercept == pytest.approx(mu, abs=1e-7)
    np.testing.assert_allclose(offsets.row, a, atol=1e-7)
    np.testing.assert_allclose(offsets.col, b, atol=1e-7)
    assert np.abs(a).max() > 0.3  # the offsets are far from zero: the test is not trivially met
    Z_ref = dense_svt_soft_impute(dense_observed(mask, rows, cols, vals - offsets.at(rows, cols)), mask, lam)
    assert rel_error(Z, Z_ref) < 1e-6
    # The loss is the joint objective.
    joint = (0.5 * np.sum((vals - offsets.at(rows, cols) - Z[rows, cols]) ** 2)
             + lam * np.linalg.svd(Z, compute_uv=False).sum() + 0.5 * bias_reg * (a @ a + b @ b))
    assert result.history["loss"][-1] == pytest.approx(joint, rel=1e-8)


def test_centered_checkpoint_resume_is_bit_identical(tmp_path, rng):
    _, _, rows, cols, vals = planted(rng, 40, 30, 2, 0.5, noise=0.1)
    vals = vals + 3.0
    settings = dict(max_iter=12, tol=0.0, seed=3, center="both", bias_reg=5.0)
    reference = soft_impute(rows, cols, vals, (40, 30), 4, 0.5, **settings)
    path = str(tmp_path / "centered.npz")
    with pytest.raises(Interrupted):
        soft_impute(rows, cols, vals, (40, 30), 4, 0.5, checkpoint=path, checkpoint_every=3, callback=crash_at(7),
                    **settings)
    resumed = soft_impute(rows, cols, vals, (40, 30), 4, 0.5, checkpoint=path, **settings)
    np.testing.assert_array_equal(resumed.U, reference.U)
    np.testing.assert_array_equal(resumed.info["offsets"].row, reference.info["offsets"].row)
    np.testing.assert_array_equal(resumed.history["loss"], reference.history["loss"])


# ------------------------------------------------------------------ the tall SVD and the entries' order
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("n", [4096, 10_000, 2048 * 5 + 7])  # whole blocks only, and a rest block
def test_tall_svd_is_numpys_svd(n, dtype, tol):
    """The TSQR route against numpy's SVD of the same matrix (in float64): singular values,
    orthonormal left vectors, the product, on columns of scales from 1 to 1e-5."""
    rng = np.random.default_rng(n)
    M = (rng.standard_normal((n, 20)) * np.logspace(0, -5, 20)).astype(dtype)
    left, s, q_t = tall_svd_module.tall_svd(M)
    s_ref = np.linalg.svd(M.astype(np.float64), compute_uv=False)
    assert left.dtype == dtype and left.flags.c_contiguous and left.shape == (n, 20)
    np.testing.assert_allclose(s, s_ref, rtol=tol * 10, atol=0)
    np.testing.assert_allclose(left.T @ left, np.eye(20), atol=tol * 10)
    np.testing.assert_allclose(q_t @ q_t.T, np.eye(20), atol=tol * 10)
    assert np.abs((left * s) @ q_t - M).max() <= tol * np.abs(M).max() * 10


def test_tall_svd_raises_on_nan_as_numpy_does():
    M = np.ones((5000, 4))
    M[4321, 2] = np.nan
    with pytest.raises(np.linalg.LinAlgError):
        tall_svd_module.tall_svd(M)


def test_entries_in_any_order_give_the_same_fit(rng):
    """The solver holds the entries in row order: a shuffled input gives the row-major input's
    fit (to the rounding of sums taken in another order), offsets included."""
    X, mask, rows, cols, vals = planted(rng, 50, 40, 3, 0.5, noise=0.1)
    vals = vals + 3.0 + rng.standard_normal(50)[rows]  # offsets to fit
    order = rng.permutation(rows.shape[0])
    settings = dict(max_iter=30, tol=0, seed=2, center="both", bias_reg=1.0)
    ordered = soft_impute(rows, cols, vals, (50, 40), 5, 0.5, **settings)
    shuffled = soft_impute(rows[order], cols[order], vals[order], (50, 40), 5, 0.5, **settings)
    np.testing.assert_allclose(estimate(shuffled), estimate(ordered), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(shuffled.history["loss"], ordered.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(shuffled.info["offsets"].row, ordered.info["offsets"].row, rtol=1e-10, atol=1e-12)
