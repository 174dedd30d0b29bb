"""NMF: the HALS sweep kernel against scikit-learn's Cython sweep, the estimator against
scikit-learn's NMF on its bundled digits (dense) and on a sparse matrix (same solver, init and
iterations: objective within 1%), scikit-learn's estimator checks, missing entries (planted
completion, a dense numpy transcription of the weighted updates), alternating updates with ReLU
decoding on planted factors, and the error paths."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_hpc as lr
from lowrank_hpc.recover import nmf as nmf_solvers

sklearn_nmf = pytest.importorskip("sklearn.decomposition")
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402


@pytest.fixture(scope="module")
def digits():
    return load_digits().data  # (1797, 64) float64, counts 0..16


def fit_both(X, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = lr.NMF(**params)
        W = ours.fit_transform(X)
        theirs = sklearn_nmf.NMF(**params)
        W_ref = theirs.fit_transform(X)
    return ours, W, theirs, W_ref


def sweep_problem(seed, dtype, k, l2):
    """One HALS sweep's operands on a 37 x 23 problem (n not a lane multiple, a fifth of W zero):
    W, the Gram and cross products of a random H, a random order, and scikit-learn's HHt (the
    Gram with l2 on its diagonal)."""
    rng = np.random.default_rng(seed)
    n, m = 37, 23
    X = rng.random((n, m)).astype(dtype)
    W = rng.random((n, k)).astype(dtype)
    W[rng.random((n, k)) < 0.2] = 0
    Ht = rng.random((m, k)).astype(dtype)
    gram, cross = Ht.T @ Ht, X @ Ht
    order = rng.permutation(k).astype(np.int64)
    hhT = gram.copy()
    hhT.flat[::k + 1] += dtype(l2)
    return W, gram, cross, order, hhT


# ---------------------------------------------------------------------------- the kernel
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, l1, l2", [(5, 0.0, 0.0), (7, 0.3, 0.2), (32, 0.0, 0.5)])
def test_hals_sweep_matches_sklearn_cython(dtype, k, l1, l2):
    """One sweep of the kernel equals scikit-learn's _update_cdnmf_fast (after its l1/l2 shifts of
    XHt and HHt), rows in SIMD lanes and the leftover rows alike (n = 37 is not a lane multiple)."""
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast

    W, gram, cross, order, hhT = sweep_problem(k, dtype, k, l2)
    n = W.shape[0]
    expected = W.copy()
    violation_ref = _update_cdnmf_fast(expected, hhT, cross - dtype(l1), order.astype(np.intp))
    got = W.copy()
    violations = np.empty(n)
    lr._backend.cpu_module().hals_sweep(got, gram, cross, order, l1, l2, 1, 0.0, violations)
    np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert violations.sum() == pytest.approx(float(violation_ref), rel=1e-4 if dtype == np.float32 else 1e-10)
    # Two sweeps are the sweep applied twice, the violation the first's.
    twice = W.copy()
    lr._backend.cpu_module().hals_sweep(twice, gram, cross, order, l1, l2, 2, 0.0, violations)
    _update_cdnmf_fast(expected, hhT, cross - dtype(l1), order.astype(np.intp))
    np.testing.assert_allclose(twice, expected, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    assert violations.sum() == pytest.approx(float(violation_ref), rel=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, l1, l2", [(7, 0.3, 0.2), (32, 0.0, 0.5)])
def test_accelerated_sweeps_match_sklearn_cython(dtype, k, l1, l2):
    """The sweeps="auto" path (inner_tol > 0, here 1e-300: never met, so no early stop): three
    sweeps equal three of scikit-learn's _update_cdnmf_fast, the violation the first's."""
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast

    W, gram, cross, order, hhT = sweep_problem(k + 1, dtype, k, l2)
    n = W.shape[0]
    expected = W.copy()
    violation_ref = _update_cdnmf_fast(expected, hhT, cross - dtype(l1), order.astype(np.intp))
    for _ in range(2):
        _update_cdnmf_fast(expected, hhT, cross - dtype(l1), order.astype(np.intp))
    got, violations = W.copy(), np.empty(n)
    lr._backend.cpu_module().hals_sweep(got, gram, cross, order, l1, l2, 3, 1e-300, violations)
    np.testing.assert_allclose(got, expected, rtol=1e-4 if dtype == np.float32 else 1e-10,
                               atol=1e-5 if dtype == np.float32 else 1e-12)
    assert violations.sum() == pytest.approx(float(violation_ref), rel=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hals_sweeps_to_the_rows_nnls_solution(dtype):
    """Many sweeps with an early stop solve each row's NNLS min ||x - w H||, w >= 0 (scipy's nnls)."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(1)
    n, m, k = 45, 30, 6
    X, Ht = rng.random((n, m)), rng.random((m, k))
    W = np.zeros((n, k), dtype=dtype)
    violations = np.empty(n)
    lr._backend.cpu_module().hals_sweep(W, (Ht.T @ Ht).astype(dtype), (X @ Ht).astype(dtype), np.arange(k), 0.0,
                                        0.0, 5000, 1e-7, violations)
    expected = np.array([nnls(Ht, x)[0] for x in X])
    np.testing.assert_allclose(W, expected, atol=2e-3 if dtype == np.float32 else 1e-6)


def test_hals_sweep_rejects_bad_arrays():
    module = lr._backend.cpu_module()
    W = np.zeros((4, 3))
    with pytest.raises(ValueError, match="gram"):
        module.hals_sweep(W, np.zeros((2, 2)), np.zeros((4, 3)), np.arange(3), 0.0, 0.0, 1, 0.0, np.empty(4))
    with pytest.raises(ValueError, match="sweeps"):
        module.hals_sweep(W, np.zeros((3, 3)), np.zeros((4, 3)), np.arange(3), 0.0, 0.0, 0, 0.0, np.empty(4))


# ---------------------------------------------------------------------------- against scikit-learn
@pytest.mark.parametrize("solver, beta_loss, init", [
    ("cd", "frobenius", None), ("cd", "frobenius", "random"), ("cd", "frobenius", "nndsvd"),
    ("mu", "frobenius", "nndsvda"), ("mu", "kullback-leibler", "nndsvdar"), ("mu", "kullback-leibler", "random"),
])
def test_dense_digits_matches_sklearn(digits, solver, beta_loss, init):
    ours, W, theirs, W_ref = fit_both(digits[:800], n_components=10, solver=solver, beta_loss=beta_loss, init=init,
                                      random_state=0, max_iter=40)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-2)
    # The same start and iteration: the factors agree far beyond the 1% the issue asks.
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=1e-6, atol=1e-6)
    assert W.shape == W_ref.shape and ours.n_components_ == 10 and ours.n_features_in_ == 64


def _init_loss(X, W, H):
    return float(np.linalg.norm(X - W @ H))


def test_fast_initialisation_against_sklearn(digits):
    """sweeps="auto"'s start (randomized_svd(fast=True)): on a planted matrix whose top k singular
    values stand clear of the rest, scikit-learn's _initialize_nmf output (float32 products,
    the stopping rule's 1e-3) after fewer passes over X; on digits (no such gap: all of
    scikit-learn's power iterations) the same start up to float32 rounding. nndsvd, nndsvda,
    nndsvdar and float32 X alike."""
    from sklearn.decomposition._nmf import _initialize_nmf

    from lowrank_hpc._arrays import for_backend

    rng = np.random.default_rng(5)
    planted = rng.random((600, 12)) @ rng.random((12, 300)) + 0.01 * rng.random((600, 300))
    counted = []

    class Counting(nmf_solvers._Float32Products):
        def times(self, F):
            counted.append(1)
            return super().times(F)

    original = nmf_solvers._Float32Products
    nmf_solvers._Float32Products = Counting
    try:
        for X, k, init, tol in [(planted, 12, "nndsvda", 1e-3), (planted.T.copy(), 12, "nndsvd", 1e-3),
                                (planted.astype(np.float32), 12, "nndsvdar", 1e-3), (digits, 10, "nndsvda", 1e-4)]:
            data = nmf_solvers.NmfData(for_backend("test", "cpu"), X)
            counted.clear()
            W, H = nmf_solvers.initialize(data, k, init, 0, fast=True)
            W_ref, H_ref = _initialize_nmf(X, k, init=init, random_state=0)
            assert W.dtype == H.dtype == X.dtype
            scale = max(np.abs(W_ref).max(), np.abs(H_ref).max())
            np.testing.assert_allclose(W, W_ref, atol=tol * scale)
            np.testing.assert_allclose(H, H_ref, atol=tol * scale)
            assert _init_loss(X, W, H) == pytest.approx(_init_loss(X, W_ref, H_ref), rel=1e-5)
            # scikit-learn passes 2 n_iter + 2 times over X (n_iter = 7 at k < 0.1 min(n, m), else 4)
            passes = 2 * len(counted)
            assert passes <= (6 if X is not digits else 2 * 4 + 2)
    finally:
        nmf_solvers._Float32Products = original
    # Without fast (sweeps=1 or an int): scikit-learn's start to float64 rounding.
    exact = nmf_solvers.initialize(nmf_solvers.NmfData(for_backend("test", "cpu"), planted), 12, None, 0)
    np.testing.assert_allclose(exact[1], _initialize_nmf(planted, 12, random_state=0)[1], rtol=1e-9, atol=1e-12)


def test_cd_with_penalties_shuffle_and_tolerance(digits):
    ours, W, theirs, _ = fit_both(digits, n_components=6, solver="cd", alpha_W=0.01, alpha_H=0.02, l1_ratio=0.4,
                                  shuffle=True, random_state=3, tol=1e-3, max_iter=300)
    assert ours.n_iter_ == theirs.n_iter_ < 300  # the same stopping rule fires at the same iteration
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-6)


def test_mu_stops_as_sklearn(digits):
    ours, _, theirs, _ = fit_both(digits[:400], n_components=5, solver="mu", init="nndsvda", tol=1e-3, max_iter=500,
                                  alpha_W=0.001, l1_ratio=0.5)
    assert ours.n_iter_ == theirs.n_iter_ < 500 and ours.n_iter_ % 10 == 0
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-6)


@pytest.mark.parametrize("solver, beta_loss", [("cd", "frobenius"), ("mu", "frobenius"), ("mu", "kullback-leibler")])
def test_sparse_matches_sklearn(solver, beta_loss):
    X = sp.random(300, 200, density=0.05, format="csr", random_state=np.random.RandomState(1)) * 5
    ours, W, theirs, _ = fit_both(X, n_components=8, solver=solver, beta_loss=beta_loss, init="nndsvdar",
                                  random_state=0, max_iter=50)
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-2)
    np.testing.assert_allclose(ours.components_, theirs.components_, rtol=1e-5, atol=1e-6)
    # transform of a sparse X: the same fold-in as scikit-learn's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_allclose(ours.transform(X[:20]), theirs.transform(X[:20]), rtol=1e-5, atol=1e-6)


def test_float32_preserved_and_transform(digits):
    X = digits.astype(np.float32)
    ours, W, theirs, W_ref = fit_both(X, n_components=5, random_state=0, max_iter=40)
    assert W.dtype == np.float32 and ours.components_.dtype == np.float32
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_allclose(ours.transform(X[:50]), theirs.transform(X[:50]), rtol=2e-3, atol=2e-3)
    back = ours.inverse_transform(W)
    assert back.shape == X.shape


def test_custom_init_and_auto_components(digits):
    rng = np.random.RandomState(0)
    W0, H0 = rng.random_sample((digits.shape[0], 4)), rng.random_sample((4, 64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = lr.NMF(init="custom", max_iter=20).fit(digits, W=W0, H=H0)
        theirs = sklearn_nmf.NMF(init="custom", max_iter=20).fit(digits, W=W0, H=H0)
    assert ours.n_components_ == 4
    assert ours.reconstruction_err_ == pytest.approx(theirs.reconstruction_err_, rel=1e-8)


def test_passes_sklearn_check_estimator():
    estimator_checks = pytest.importorskip("sklearn.utils.estimator_checks")
    # max_iter=500: the setting scikit-learn's own test suite checks its NMF with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="does not inherit from `sklearn.base.BaseEstimator`"):
            results = estimator_checks.check_estimator(lr.NMF(max_iter=500), on_skip=None)
    statuses = {result["check_name"]: result["status"] for result in results}
    assert "failed" not in statuses.values()


# ---------------------------------------------------------------------------- errors
def test_errors(digits):
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        lr.NMF(n_components=2).fit(-digits)
    with pytest.raises(ValueError, match="Negative values in data passed to NMF"):
        lr.NMF(n_components=2).fit(sp.csr_matrix(-digits))
    bad = digits.copy()
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="infinity"):
        lr.NMF(n_components=2).fit(bad)
    with pytest.raises(ValueError, match="solver 'cd' does not handle beta_loss"):
        lr.NMF(beta_loss="kullback-leibler").fit(digits)
    # Not finite, or finite but overflowing once scaled by the data's size: named, never NaN factors
    # (mu returned them with a warning; cd raised the kernel's "l1, l2: must be >= 0, got -nan").
    for solver, bad in (("cd", dict(alpha_W=np.inf)), ("mu", dict(alpha_W=0.1, alpha_H=np.inf)),
                        ("mu", dict(beta_loss=np.nan)), ("mu", dict(beta_loss=-np.inf))):
        with pytest.raises(ValueError, match=f"the '{next(iter(bad)) if len(bad) == 1 else 'alpha_H'}' parameter of NMF"):
            lr.NMF(n_components=3, solver=solver, max_iter=5, **bad).fit(digits)
    with pytest.raises(ValueError, match="NMF: alpha_W = 1e\\+308 times the data's 64 columns overflows float64"):
        lr.NMF(n_components=3, solver="mu", max_iter=5, alpha_W=1e308).fit(digits)
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        lr.NMF(max_iter=0).fit(digits)
    with pytest.raises(ValueError, match="When beta_loss <= 0 and X contains zeros"):
        lr.NMF(solver="mu", beta_loss="itakura-saito").fit(digits)
    with pytest.raises(ValueError, match="can only be used when n_components <= min"):
        lr.NMF(n_components=100, init="nndsvd").fit(digits)
    with pytest.raises(ValueError, match="features, but NMF is expecting 64"):
        lr.NMF(n_components=2, max_iter=5, tol=0).fit(digits).transform(digits[:, :10])
    with pytest.raises(lr.NotFittedError):
        lr.NMF().transform(digits)


# ---------------------------------------------------------------------------- missing entries
def planted(shape=(120, 90), rank=3, missing=0.4, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.random((shape[0], rank)) @ rng.random((rank, shape[1]))
    hidden = rng.random(shape) < missing
    return M, hidden, np.where(hidden, np.nan, M)


def test_planted_completion_cd():
    M, hidden, X = planted()
    model = lr.NMF(n_components=3, solver="cd", init="random", random_state=0, tol=0, max_iter=1500)
    W = model.fit_transform(X)
    completed = model.inverse_transform(W)
    error = np.linalg.norm((completed - M)[hidden]) / np.linalg.norm(M[hidden])
    assert error < 1e-3
    assert model.reconstruction_err_ < 1e-3 * np.linalg.norm(M[~hidden])
    # score on held-out entries: near 0 for the planted rank, worse for rank 1
    held = np.where(hidden, M, np.nan)
    assert model.score(held) > -1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small = lr.NMF(n_components=1, init="random", random_state=0, max_iter=200).fit(X)
    assert small.score(held) < model.score(held) - 1e-3


def dense_weighted_mu(X, mask, W, H, beta, iterations):
    """numpy transcription of weighted multiplicative updates: the beta-divergence over the
    observed entries (mask) only; WH clamped at float32 eps for beta < 2, as scikit-learn does."""
    eps = np.finfo(np.float32).eps
    Xz = np.where(mask, X, 0.0)
    for _ in range(iterations):
        WH = W @ H
        safe = np.maximum(WH, eps) if beta < 2 else WH
        num = (mask * Xz * safe ** (beta - 2)) @ H.T
        den = (mask * safe ** (beta - 1)) @ H.T
        W = W * num / np.where(den == 0, eps, den)
        WH = W @ H
        safe = np.maximum(WH, eps) if beta < 2 else WH
        num = W.T @ (mask * Xz * safe ** (beta - 2))
        den = W.T @ (mask * safe ** (beta - 1))
        H = H * num / np.where(den == 0, eps, den)
        if beta <= 1:
            H[H < np.finfo(np.float64).eps] = 0
    return W, H


@pytest.mark.parametrize("beta_loss, beta", [("frobenius", 2.0), ("kullback-leibler", 1.0)])
def test_masked_mu_matches_dense_transcription(beta_loss, beta):
    M, hidden, X = planted(shape=(40, 30), missing=0.3, seed=2)
    model = lr.NMF(n_components=3, solver="mu", beta_loss=beta_loss, init="random", random_state=1, tol=0,
                   max_iter=25)
    W = model.fit_transform(X)
    data = nmf_solvers.NmfData(_cpu_call(), observed=(*np.nonzero(~hidden), M[~hidden]), shape=M.shape)
    W0, H0 = nmf_solvers.initialize(data, 3, "random", 1)
    W_ref, H_ref = dense_weighted_mu(M, ~hidden, W0, H0, beta, 25)
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.components_, H_ref, rtol=1e-8, atol=1e-10)


def _cpu_call():
    from lowrank_hpc._arrays import for_backend

    return for_backend("test", "cpu")


def test_masked_cd_matches_dense_coordinate_descent():
    """Weighted coordinate descent, column by column, transcribed densely in numpy."""
    M, hidden, X = planted(shape=(30, 20), missing=0.3, seed=4)
    mask = ~hidden
    model = lr.NMF(n_components=3, solver="cd", init="random", random_state=2, tol=0, max_iter=5)
    W = model.fit_transform(X)
    data = nmf_solvers.NmfData(_cpu_call(), observed=(*np.nonzero(mask), M[mask]), shape=M.shape)
    W_ref, H = nmf_solvers.initialize(data, 3, "random", 2)
    Ht = H.T.copy()
    for _ in range(5):
        for F, G, Xo, Mo in ((W_ref, Ht, M, mask), (Ht, W_ref, M.T, mask.T)):
            for t in range(3):
                R = Mo * (Xo - F @ G.T)
                grad = -(R @ G[:, t])
                curvature = Mo @ (G[:, t] ** 2)
                F[:, t] = np.where(curvature != 0, np.maximum(F[:, t] - grad / np.where(curvature == 0, 1, curvature),
                                                              0), F[:, t])
    np.testing.assert_allclose(W, W_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.components_, Ht.T, rtol=1e-9, atol=1e-12)


def test_no_missing_is_the_unmasked_solver_and_full_mask_agrees(digits):
    X = digits[:300]
    plain = lr.NMF(n_components=4, random_state=0, max_iter=30, tol=0).fit(X)
    again = lr.NMF(n_components=4, random_state=0, max_iter=30, tol=0).fit(X.copy())
    assert np.array_equal(plain.components_, again.components_)
    masked = lr.NMF(n_components=4, random_state=0, max_iter=30, tol=0).fit(X, mask=np.ones(X.shape, dtype=bool))
    np.testing.assert_allclose(masked.components_, plain.components_, rtol=1e-7, atol=1e-9)


def test_sparse_with_mask_equals_dense_with_nan():
    M, hidden, X = planted(shape=(50, 40), seed=6)
    M[M < 0.4] = 0  # zeros that are observed, and implicit in the sparse matrix
    S = sp.csr_matrix(M)
    params = dict(n_components=3, init="random", random_state=0, tol=0, max_iter=40)
    for solver in ("cd", "mu"):
        dense = lr.NMF(solver=solver, **params).fit(np.where(hidden, np.nan, M))
        sparse = lr.NMF(solver=solver, **params).fit(S, mask=sp.csr_matrix(~hidden))
        np.testing.assert_allclose(sparse.components_, dense.components_, rtol=1e-9, atol=1e-12)
        assert sparse.reconstruction_err_ == pytest.approx(dense.reconstruction_err_, rel=1e-9)


def test_more_sweeps_lower_the_loss_per_iteration(digits):
    losses = []
    for sweeps in (1, 3, "auto"):
        model = lr.NMF(n_components=8, random_state=0, tol=0, max_iter=15, sweeps=sweeps).fit(digits[:500])
        losses.append(model.reconstruction_err_)
        if sweeps != "auto":  # HALS never increases the loss (the extrapolated pairs of "auto" may)
            assert np.all(np.diff(model.loss_curve_) <= 1e-9 * model.loss_curve_[0])
    assert losses[1] < losses[0] and losses[2] < losses[0]
    # accelerated MU: the same repetition for the multiplicative updates (Frobenius)
    mu = [lr.NMF(n_components=8, solver="mu", random_state=0, tol=0, max_iter=15, sweeps=s).fit(digits[:500])
          for s in (1, "auto")]
    assert mu[1].reconstruction_err_ < mu[0].reconstruction_err_


def extrapolated_hals_reference(X, W, H, iterations):
    """Ang & Gillis (2019)'s HALS with extrapolation and restarts, one sweep per half-step, on
    scikit-learn's own HALS sweep: W (n, k), H (k, m); returns the reported pair (W_y, H^T) and
    how many iterations restarted."""
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast

    order = np.arange(W.shape[1], dtype=np.intp)
    W_n, Ht, Ht_y = W.copy(), np.ascontiguousarray(H.T), np.ascontiguousarray(H.T)
    beta, ceiling, previous, restarts = 0.5, 1.0, np.inf, 0
    for _ in range(iterations):
        W_previous = W_n.copy()
        _update_cdnmf_fast(W_n, Ht_y.T @ Ht_y, X @ Ht_y, order)
        W_y = np.maximum(W_n + beta * (W_n - W_previous), 0)
        Ht_previous = Ht.copy()
        _update_cdnmf_fast(Ht, W_y.T @ W_y, X.T @ W_y, order)
        objective = 0.5 * np.linalg.norm(X - W_y @ Ht.T) ** 2
        if objective > previous:
            Ht_y, ceiling, beta, restarts = Ht.copy(), beta, beta / 1.5, restarts + 1
        else:
            Ht_y = np.maximum(Ht + beta * (Ht - Ht_previous), 0)
            beta, ceiling = min(ceiling, 1.05 * beta), min(1.0, 1.01 * ceiling)
        previous = objective
    return W_y, Ht, restarts


def test_auto_extrapolation_follows_the_papers_iteration(digits, monkeypatch):
    """sweeps="auto" extrapolates between HALS iterations with restarts; with its inner sweeps
    cut to one, the iterates equal a transcription of the paper's loop on scikit-learn's sweep,
    restarts included."""
    monkeypatch.setattr(nmf_solvers, "auto_sweeps", lambda *args: 1)
    monkeypatch.setattr(nmf_solvers, "AUTO_INNER_TOL", 0.0)
    X = digits[:400]
    rng = np.random.default_rng(3)
    W0, H0 = rng.random((400, 6)) * 2, rng.random((6, 64)) * 2
    expected_W, expected_Ht, restarts = extrapolated_hals_reference(X, W0, H0, 40)
    assert restarts >= 1  # the restart branch ran
    data = nmf_solvers.NmfData(lr._arrays.for_backend("test", "cpu"), X)
    W, Ht = W0.copy(), np.ascontiguousarray(H0.T)
    out = nmf_solvers.fit(data, W, Ht, solver="cd", beta=2.0, tol=0.0, max_iter=40, penalty=nmf_solvers.Penalty(),
                          sweeps="auto")
    np.testing.assert_allclose(out["W"], expected_W, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(out["Ht"], expected_Ht, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sparse", [False, True])
def test_auto_reports_the_loss_of_its_nonnegative_pair_and_beats_plain_hals(digits, sparse):
    X = sp.csr_matrix(digits) if sparse else digits
    plain = lr.NMF(n_components=10, random_state=0, tol=0, max_iter=40).fit(X)
    model = lr.NMF(n_components=10, random_state=0, tol=0, max_iter=40, sweeps="auto")
    W = model.fit_transform(X)
    assert W.min() >= 0 and model.components_.min() >= 0
    exact = np.linalg.norm(digits - W @ model.components_)
    assert model.reconstruction_err_ == pytest.approx(exact, rel=1e-10)
    assert model.loss_curve_[-1] == pytest.approx(exact ** 2 / 2, rel=1e-9)
    assert model.reconstruction_err_ < plain.reconstruction_err_


def test_transform_respects_missing():
    M, hidden, X = planted(seed=5)
    model = lr.NMF(n_components=3, init="random", random_state=0, tol=0, max_iter=1500).fit(X)
    rows = model.transform(X[:10])  # new rows with their own missing entries
    completed = model.inverse_transform(rows)
    error = np.linalg.norm((completed - M[:10])[hidden[:10]]) / np.linalg.norm(M[:10][hidden[:10]])
    assert error < 1e-3
    # mask= says the same as NaN
    masked = model.transform(np.where(hidden, 123.0, M)[:10], mask=~hidden[:10])
    np.testing.assert_allclose(masked, rows, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- alternating updates with ReLU decoding
def test_alternating_relu_recovers_planted_features():
    """Samples y = A x + noise, x >= 0 sparse, from a start A M with M = I + 0.3 U[0, 1) (a
    near-diagonal mixing): the features come back up to each column's scale (NMF's ambiguity),
    and the decoded weights with them."""
    rng = np.random.default_rng(0)
    n, m, k = 2000, 40, 4
    A = rng.random((m, k)) + np.eye(m, k) * 2  # linearly independent features
    x = rng.exponential(size=(n, k)) * (rng.random((n, k)) < 0.5)  # sparse non-negative weights
    Y = np.maximum(x @ A.T + 0.01 * rng.standard_normal((n, m)), 0)
    start_H = (A @ (np.eye(k) + 0.3 * rng.random((k, k)))).T

    def directions(B):
        return B / np.linalg.norm(B, axis=0)

    model = lr.NMF(n_components=k, solver="alternating_relu", init="custom", relu_threshold=0.01, relu_step=0.5,
                   tol=1e-9, max_iter=100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        W = model.fit_transform(Y, W=np.ones((n, k)), H=start_H)
    recovered = model.components_.T
    assert np.linalg.norm(directions(start_H.T) - directions(A)) > 0.3  # the start is far from A's directions
    assert np.linalg.norm(directions(recovered) - directions(A)) < 5e-3
    scale = np.linalg.norm(A, axis=0) / np.linalg.norm(recovered, axis=0)  # A = recovered diag(scale)
    assert np.linalg.norm(W / scale - x) / np.linalg.norm(x) < 0.02
    # transform decodes new samples the same way
    np.testing.assert_allclose(model.transform(Y[:50]), W[:50], rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- the nmf subcommand
def test_nmf_subcommand_writes_factors(tmp_path, capsys, digits):
    import json

    from lowrank_hpc.cli.main import main as cli_main

    X = digits[:200]
    rows, cols = np.nonzero(X)
    source = tmp_path / "counts.csv"
    source.write_text("doc,word,count\n" + "".join(f"d{r},{c},{X[r, c]:g}\n" for r, c in zip(rows, cols)))
    out = tmp_path / "factors.npz"
    assert cli_main(["nmf", str(source), "--components", "5", "--seed", "0", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with np.load(out) as saved:
        W, H, row_ids, col_ids = saved["W"], saved["H"], saved["row_ids"], saved["col_ids"]
    assert W.shape == (200, 5) and H.shape[0] == 5 and len(col_ids) == H.shape[1]
    # the same fit as the estimator's on the matrix the file holds (ids mapped, all-zero columns dropped)
    matrix = np.zeros((len(row_ids), len(col_ids)))
    matrix[np.searchsorted(row_ids, [f"d{r}" for r in rows]), np.searchsorted(col_ids, cols)] = X[rows, cols]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected = sklearn_nmf.NMF(n_components=5, random_state=0).fit(matrix)
    assert report["reconstruction_err"] == pytest.approx(expected.reconstruction_err_, rel=1e-6)
    assert np.linalg.norm(matrix - W @ H) == pytest.approx(report["reconstruction_err"], rel=1e-6)
    # --unlisted missing fits the listed entries only
    assert cli_main(["nmf", str(source), "-k", "3", "--unlisted", "missing", "--max-iter", "50", "-o",
                     str(tmp_path / "m.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unlisted"] == "missing"


def test_nmf_subcommand_errors_are_one_line(tmp_path, capsys):
    from lowrank_hpc.cli.main import main as cli_main

    source = tmp_path / "values.npz"
    np.savez(source, rows=np.array([0, 1, 2]), cols=np.array([1, 0, 2]), vals=np.array([1.0, -2.0, 3.0]))
    assert cli_main(["nmf", str(source), "-k", "2", "-o", str(tmp_path / "f.npz")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-negative" in err and "-2" in err
    assert cli_main(["nmf", str(source), "-k", "0"]) == 2
    assert cli_main(["nmf", str(source)]) == 2  # --components is required
    for options in (["--l1-ratio", "2"], ["--solver", "cd", "--beta-loss", "kullback-leibler"]):  # usage errors
        assert cli_main(["nmf", str(source), "-k", "2", *options]) == 2, options
    assert "--solver cd fits --beta-loss frobenius only" in capsys.readouterr().err
    assert cli_main(["nmf", str(tmp_path / "missing.csv"), "-k", "2"]) == 1


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("solver, beta_loss", [("cd", "frobenius"), ("mu", "kullback-leibler")])
def test_gpu_matches_cpu(digits, solver, beta_loss):
    cupy = pytest.importorskip("cupy")
    params = dict(n_components=6, solver=solver, beta_loss=beta_loss, random_state=0, max_iter=30, tol=0)
    cpu = lr.NMF(**params).fit(digits)
    gpu = lr.NMF(**params).fit(cupy.asarray(digits))
    assert isinstance(gpu.components_, cupy.ndarray)
    np.testing.assert_allclose(gpu.components_.get(), cpu.components_, rtol=1e-6, atol=1e-8)
    assert gpu.reconstruction_err_ == pytest.approx(cpu.reconstruction_err_, rel=1e-8)
    # missing entries and sparse input on the GPU
    M, hidden, X = planted(seed=3)
    cpu = lr.NMF(n_components=3, init="random", random_state=0, tol=0, max_iter=100).fit(X)
    gpu = lr.NMF(n_components=3, init="random", random_state=0, tol=0, max_iter=100).fit(cupy.asarray(X))
    np.testing.assert_allclose(gpu.components_.get(), cpu.components_, rtol=1e-6, atol=1e-8)
    S = sp.random(200, 100, density=0.1, format="csr", random_state=np.random.RandomState(0))
    cpu = lr.NMF(n_components=4, init="nndsvdar", random_state=0, tol=0, max_iter=30).fit(S)
    gpu = lr.NMF(n_components=4, init="nndsvdar", random_state=0, tol=0, max_iter=30, backend="cuda").fit(S)
    np.testing.assert_allclose(gpu.components_.get(), cpu.components_, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("random_state", [-1, 2**32, 2**40, 1.5, "0", np.random.default_rng(0)])
@pytest.mark.parametrize("init", ["random", "nndsvda", "custom"])
def test_random_state_out_of_range_is_named(random_state, init):
    """The values scikit-learn's NMF refuses: the error names NMF's method and random_state (an
    int outside [0, 2**32) gave numpy's bare "Seed must be between 0 and 2**32 - 1"), at whichever
    use of it comes first: the random start, the SVD's test matrix, the coordinate shuffle."""
    rng = np.random.default_rng(5)
    X, W, H = (np.abs(rng.standard_normal(shape)) for shape in ((30, 20), (30, 3), (3, 20)))
    message = (r"^NMF\.fit_transform: random_state must be None, an integer in \[0, 2\*\*32\) or a numpy "
               r"RandomState, got " + re.escape(repr(random_state)))
    for shuffle in (True, False):  # without a shuffle (and init "custom") nothing draws: still checked
        model = lr.NMF(n_components=3, init=init, shuffle=shuffle, max_iter=5, random_state=random_state)
        with pytest.raises(ValueError, match=message):
            model.fit_transform(X, W=W, H=H) if init == "custom" else model.fit_transform(X)


def test_random_state_range_ends_are_accepted():
    X = np.abs(np.random.default_rng(5).standard_normal((30, 20)))
    for random_state in (0, np.uint32(2**32 - 1), np.random.RandomState(3), None):
        lr.NMF(n_components=3, init="random", shuffle=True, max_iter=5, tol=0, random_state=random_state).fit(X)
