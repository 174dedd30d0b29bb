"""The research toolkit (issue 15, items 3-6): Guess & Check, lifted sensing, EBMF / cEBMF and the
closed-form quartic word2vec dynamics, each against an independent reference."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
from scipy import integrate

import lowrank_hpc as lr
from lowrank_hpc import research
from lowrank_hpc.recover import lifted_sensing, perturbed_completion


# ---------------------------------------------------------------------- quartic word2vec
def _spectrum_target(rng, V, eigenvalues):
    Q, _ = np.linalg.qr(rng.standard_normal((V, V)))
    lam = np.concatenate([eigenvalues, rng.uniform(-0.3, 0.1, V - len(eigenvalues))])
    return (Q * lam) @ Q.T


def test_word2vec_closed_form_matches_the_integrated_gradient_flow(rng):
    V, d = 12, 3
    M = _spectrum_target(rng, V, [3.0, 2.0, 1.2, 0.6])
    result = research.quartic_word2vec_dynamics(M, d, statistics="target", init_scale=1e-3, seed=3)
    W0 = result.init

    def flow(_, w):
        W = w.reshape(V, d)
        return ((M - W @ W.T) @ W).ravel()

    solved = integrate.solve_ivp(flow, (0, result.times[-1]), W0.ravel(), t_eval=result.times, method="DOP853",
                                 rtol=1e-10, atol=1e-14)
    assert solved.success
    for i in range(0, result.times.size, 7):
        W = solved.y[:, i].reshape(V, d)
        X = W @ W.T
        assert np.linalg.norm(result.gram(i) - X) <= 1e-7 * max(np.linalg.norm(X), 1e-6)
        assert result.loss[i] == pytest.approx(0.25 * np.linalg.norm(X - M) ** 2, rel=1e-6, abs=1e-10)
    # Stepwise: the top directions are learned one at a time, in the order of their eigenvalues,
    # and each saturates at its eigenvalue.
    times = result.learning_times
    assert np.all(np.diff(times) > 0.5)
    assert np.allclose(result.overlaps[-1], [3.0, 2.0, 1.2], rtol=1e-3)
    assert np.allclose(result.singular_values[-1] ** 2, [3.0, 2.0, 1.2], rtol=1e-3)
    # At each learning time the flow has half-learned that direction (checked on the integration).
    for k, t in enumerate(times):
        at = integrate.solve_ivp(flow, (0, t), W0.ravel(), method="DOP853", rtol=1e-10, atol=1e-14).y[:, -1]
        q = result.eigenvectors[:, k]
        W = at.reshape(V, d)
        assert float(q @ W @ W.T @ q) == pytest.approx(result.eigenvalues[k] / 2, rel=1e-5)
    assert np.allclose(result.predicted_learning_times, times, rtol=0.15)


def test_word2vec_learning_times_from_the_compressed_rows_match_the_integrated_flow(rng):
    """V = 40 >> 3 d: the learning-time search reads the top rows from a (3d, d) compression of the
    V x d factor (_Flow.top_overlaps); at each time found the integrated flow is half-learned, and
    keep_embeddings=False gives the same curves without the embeddings."""
    V, d = 40, 4
    M = _spectrum_target(rng, V, [3.0, 2.2, 1.5, 1.1, 0.4])
    result = research.quartic_word2vec_dynamics(M, d, statistics="target", init_scale=1e-4, seed=1)
    light = research.quartic_word2vec_dynamics(M, d, statistics="target", init_scale=1e-4, seed=1,
                                               keep_embeddings=False)
    assert light.embeddings is None and np.array_equal(light.learning_times, result.learning_times)
    assert np.allclose(light.singular_values, result.singular_values, rtol=1e-12)
    assert np.allclose(light.loss, result.loss, rtol=1e-12)
    with pytest.raises(ValueError, match="keep_embeddings"):
        light.gram(0)
    assert np.allclose(research.quartic_word2vec_dynamics(M, d, statistics="target", init_scale=1e-4, seed=1,
                                                          times=7).times, np.linspace(0, result.times[-1], 7))
    with pytest.raises(TypeError, match="keep_embeddings must be True or False"):
        research.quartic_word2vec_dynamics(M, d, statistics="target", keep_embeddings="no")

    def flow(_, w):
        W = w.reshape(V, d)
        return ((M - W @ W.T) @ W).ravel()

    ends = integrate.solve_ivp(flow, (0, result.learning_times[-1]), result.init.ravel(), method="DOP853",
                               t_eval=result.learning_times, rtol=1e-11, atol=1e-15)
    for k in range(d):
        W = ends.y[:, k].reshape(V, d)
        q = result.eigenvectors[:, k]
        assert float(q @ W @ W.T @ q) == pytest.approx(result.eigenvalues[k] / 2, rel=1e-6)


def test_word2vec_aligned_start_follows_the_logistic_curves_exactly(rng):
    V, d = 10, 2
    M = _spectrum_target(rng, V, [2.0, 0.5])
    result = research.quartic_word2vec_dynamics(M, d, statistics="target", init="aligned", init_scale=1e-2,
                                                 times=np.linspace(0, 12, 25))
    s0 = 1e-4
    for k, lam in enumerate([2.0, 0.5]):
        e = np.exp(2 * lam * result.times)
        expected = lam * s0 * e / (lam + s0 * (e - 1))
        assert np.allclose(result.overlaps[:, k], expected, rtol=1e-9, atol=1e-15)
        assert result.learning_times[k] == pytest.approx(np.log((lam - s0) / s0) / (2 * lam), rel=1e-9)


def test_word2vec_target_from_cooccurrence_counts(rng):
    C = rng.integers(1, 50, (6, 6))
    C = C + C.T
    P = C / C.sum()
    p = P.sum(1)
    expected = 2 * (P - np.outer(p, p)) / (P + np.outer(p, p))
    assert np.allclose(research.word2vec_target(C), expected, rtol=1e-14)
    result = research.quartic_word2vec_dynamics(C, 2, seed=0, times=[0.0, 1.0])
    assert np.allclose(result.target, expected)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"M": np.ones((3, 4))}, ValueError, "M must be a square"),
    ({"M": np.triu(np.ones((4, 4)))}, ValueError, "cooccurrence must be symmetric"),
    ({"d": 0}, ValueError, "d must be >= 1"),
    ({"d": 2.0}, TypeError, "d must be an int"),
    ({"d": 9}, ValueError, "d = 9 exceeds the vocabulary size V = 4"),
    ({"times": [-1.0]}, ValueError, "times must be finite and >= 0"),
    ({"init": np.ones((4, 3))}, ValueError, r"init has shape \(4, 3\), expected"),
    ({"statistics": "counts"}, ValueError, "statistics must be one of"),
    ({"M": -np.ones((4, 4))}, ValueError, "cooccurrence must be non-negative"),
])
def test_word2vec_errors_name_the_argument(kwargs, error, match):
    arguments = {"M": np.ones((4, 4)) + np.eye(4), "d": 2, "seed": 0}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        research.quartic_word2vec_dynamics(arguments.pop("M"), arguments.pop("d"), **arguments)


# ---------------------------------------------------------------------- EBMF / cEBMF
def test_point_normal_posterior_matches_numerical_integration():
    x, s2, pi, variance = np.array([0.3, -2.5]), np.array([0.5, 0.2]), np.array([0.3, 0.7]), 1.7
    marginal, mean, second, prob = research.point_normal_posterior(x, s2, pi, variance)
    for i in range(2):
        def normal(t, v):
            return np.exp(-0.5 * t * t / v) / np.sqrt(2 * np.pi * v)

        def likelihood(theta):
            return normal(x[i] - theta, s2[i])

        slab = [integrate.quad(lambda t: pi[i] * normal(t, variance) * likelihood(t) * t ** power, -30, 30,
                               epsabs=1e-13)[0] for power in (0, 1, 2)]
        total = (1 - pi[i]) * likelihood(0.0) + slab[0]
        assert np.exp(marginal[i]) == pytest.approx(total, rel=1e-9)
        assert mean[i] == pytest.approx(slab[1] / total, rel=1e-8)
        assert second[i] == pytest.approx(slab[2] / total, rel=1e-8)
        assert prob[i] == pytest.approx(slab[0] / total, rel=1e-9)


def _planted(rng, n, p, K, density, noise):
    L = rng.standard_normal((n, K)) * 2 * (rng.random((n, K)) < density)
    F = rng.standard_normal((p, K)) * 2 * (rng.random((p, K)) < density)
    signal = L @ F.T
    return L, F, signal, signal + noise * rng.standard_normal((n, p))


def test_ebmf_recovers_a_planted_sparse_factor_model_and_the_elbo_never_decreases(rng):
    L, F, signal, Y = _planted(rng, 60, 40, 2, 0.3, 0.5)
    model = lr.EBMF(max_factors=5, tol=1e-7, random_state=0).fit(Y)
    history = model.elbo_history_
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[1:]))
    assert model.n_factors_ == 2
    assert model.noise_variance_ == pytest.approx(0.25, rel=0.2)
    # Each planted loading vector is matched by one fitted factor (|correlation| > 0.95).
    correlation = np.abs(np.corrcoef(model.L_.T, L.T)[:2, 2:])
    assert np.all(correlation.max(axis=0) > 0.95)
    # Better than the truncated SVD of the same rank, which does not know the factors are sparse.
    u, s, vt = np.linalg.svd(Y, full_matrices=False)
    svd_error = np.linalg.norm((u[:, :2] * s[:2]) @ vt[:2] - signal)
    assert np.linalg.norm(model.reconstruct() - signal) < 0.9 * svd_error
    # Sparsity: the zero loadings get a small posterior probability of being non-zero.
    matched = np.argmax(correlation, axis=0)
    zero = L == 0
    assert np.mean(model.L_prob_[:, matched][zero] < 0.5) > 0.9
    assert np.all(model.L_var_ >= 0) and model.L_var_.shape == L.shape
    # Reproducible.
    again = lr.EBMF(max_factors=5, tol=1e-7, random_state=0).fit(Y)
    assert np.array_equal(again.L_, model.L_) and np.array_equal(again.elbo_history_, history)


def _point_normal_kl(mean, second, prob, pi, variance):
    """KL(q || g) for q = (1 - w) delta_0 + w N(mu, v) and g = (1 - pi) delta_0 + pi N(0, variance),
    from q's moments, in closed form (entries with w = 0 contribute their weight term only)."""
    total = 0.0
    for m, s2, w in zip(mean, second, prob):
        total += (1 - w) * np.log((1 - w) / (1 - pi)) if w < 1 else 0.0
        if w > 0:
            mu = m / w
            v = s2 / w - mu * mu
            total += w * np.log(w / pi) + w * 0.5 * (np.log(variance / v) + (v + mu * mu) / variance - 1)
    return total


def test_ebmf_elbo_equals_the_closed_form_objective(rng):
    _, _, _, Y = _planted(rng, 30, 20, 1, 0.5, 0.5)
    result = research.ebmf(Y, 3, seed=0)
    n, p = Y.shape
    L, F = result.L, result.F
    L2, F2 = result.L_var + L * L, result.F_var + F * F
    residual2 = np.sum((Y - L @ F.T) ** 2) + sum(L2[:, k].sum() * F2[:, k].sum() - (L[:, k] @ L[:, k]) *
                                                 (F[:, k] @ F[:, k]) for k in range(result.n_factors))
    loglik = -0.5 * n * p * np.log(2 * np.pi / result.tau) - 0.5 * result.tau * residual2
    kl = 0.0
    for k in range(result.n_factors):
        for mean, second, prob, prior in ((L[:, k], L2[:, k], result.L_prob[:, k], result.priors_L[k]),
                                          (F[:, k], F2[:, k], result.F_prob[:, k], result.priors_F[k])):
            pi = float(1 / (1 + np.exp(-prior.coef[0])))
            kl += _point_normal_kl(mean, second, prob, pi, prior.variance)
    assert result.n_factors >= 1
    assert result.elbo == pytest.approx(loglik - kl, rel=1e-9)
    assert result.tau == pytest.approx(n * p / residual2, rel=1e-9)


def test_cebmf_learns_the_covariate_effect_on_the_prior_weights(rng):
    n, p = 80, 40
    z = rng.standard_normal(n)
    active = rng.random(n) < 1 / (1 + np.exp(-(3 * z - 1)))  # rows with large z are loaded
    L = (rng.standard_normal(n) * 2 * active)[:, None]
    F = rng.standard_normal((p, 1))
    signal = L @ F.T
    Y = signal + rng.standard_normal((n, p))
    plain = lr.EBMF(max_factors=3, random_state=0).fit(Y)
    moderated = lr.EBMF(max_factors=3, random_state=0).fit(Y, row_covariates=z)
    assert np.all(np.diff(moderated.elbo_history_) >= -1e-9 * np.abs(moderated.elbo_history_[1:]))
    assert moderated.n_factors_ == 1
    coef = moderated.priors_L_[0].coef
    assert coef.shape == (2,) and coef[1] > 1.0  # the slope on the covariate is found, positive
    assert moderated.elbo_ > plain.elbo_
    weights = moderated.priors_L_[0].weights(np.column_stack([np.ones(n), (z - z.mean()) / z.std()]))
    assert weights[z > 1].mean() > 0.8 > 0.2 > weights[z < -1].mean()


@pytest.mark.parametrize("fit, error, match", [
    (lambda m: m.fit(np.ones((3, 3)) * np.nan), ValueError, "Y contains NaN/inf"),
    (lambda m: m.fit(np.ones(5)), ValueError, r"Y must be an \(n, p\) matrix"),
    (lambda m: m.fit(np.zeros((4, 4))), ValueError, "Y is all zeros"),
    (lambda m: m.fit(scipy.sparse.eye(4, format="csr")), TypeError,
     r"Y is a sparse matrix; EBMF fits a dense, fully observed one \(pass Y.toarray\(\)\)"),  # was "got dtype object"
    (lambda m: m.fit(np.eye(4), row_covariates=np.ones((3, 1))), ValueError,
     r"row_covariates must have shape \(4, c\)"),
    (lambda m: m.set_params(max_factors=0).fit(np.eye(4)), ValueError, "max_factors must be an integer >= 1"),
    (lambda m: m.reconstruct(), lr.NotFittedError, "not fitted yet"),
])
def test_ebmf_errors_name_the_argument(fit, error, match):
    with pytest.raises(error, match=match):
        fit(lr.EBMF(random_state=0))


# ---------------------------------------------------------------------- lifted sensing
def _plain_gd(A, y, x, step, iterations):
    """Factored GD on 1/4 sum_i (<A_i, x x^T> - y_i)^2, a dense numpy transcription."""
    for _ in range(iterations):
        residual = np.einsum("ipq,p,q->i", A, x, x) - y
        x = x - step * np.einsum("i,ipq,q->p", residual, A, x)
    return x


def _lifted_hessian(A, y, x, level):
    """The Hessian of 1/4 sum_I (<A_I, w w^T> - y_I)^2 at w = x^{(x) l}, a dense Kronecker transcription."""
    w, lifted, targets = x, list(A), list(y)
    for _ in range(level - 1):
        w = np.kron(w, x)
        lifted = [np.kron(B, C) for B in lifted for C in A]
        targets = [t * s for t in targets for s in y]
    H = np.zeros((w.size, w.size))
    for B, t in zip(lifted, targets):
        Bw = B @ w
        H += 2 * np.outer(Bw, Bw) + (w @ Bw - t) * B
    return H


# eps, the level that turns the spurious minimum into a strict saddle there (level 2 for eps above
# 0.168, level 3 above 0.112: measured, see lifted_sensing's docstring). Below eps = 1/3 plain GD has
# the spurious minimum.
@pytest.mark.parametrize("eps, level", [(0.15, 3), (0.2, 2), (0.25, 2), (0.3, 2)])
def test_lifting_recovers_where_plain_gd_from_a_bad_start_is_stuck(rng, eps, level):
    n = 4
    A, y = perturbed_completion(n, eps)
    truth = np.ones((n, n))
    bad = np.r_[np.ones(n // 2), -np.ones(n // 2)] + 0.05 * rng.standard_normal(n)
    stuck = _plain_gd(A, y, bad, 0.1, 3000)
    stuck_error = np.linalg.norm(np.outer(stuck, stuck) - truth) / n
    gradient = np.einsum("i,ipq,q->p", np.einsum("ipq,p,q->i", A, stuck, stuck) - y, A, stuck)
    assert stuck_error > 1.0 and np.linalg.norm(gradient) < 1e-8  # a spurious stationary point
    assert np.all(np.linalg.eigvalsh(_hessian(A, y, stuck)) > 0.05)  # ... and a local minimum
    level1 = lifted_sensing(A, y, level=1, init=bad, max_iter=3000, tol=0)  # the same, through lifted_sensing
    assert np.linalg.norm(level1.X - truth) / n > 1.0
    # Lifted, the spurious point is a strict saddle (an independent Kronecker Hessian) ...
    assert np.linalg.eigvalsh(_lifted_hessian(A, y, stuck, level))[0] < -0.3
    for seed in range(3):  # ... GD from a small start finds M* ...
        lifted = lifted_sensing(A, y, level=level, init_scale=1e-3, max_iter=3000, tol=1e-7, seed=seed)
        assert lifted.converged and np.linalg.norm(lifted.X - truth) / n < 1e-5
        assert lifted.info["rank1_residual"] < 1e-4  # GD kept W close to a symmetric rank-1 tensor
    # ... and GD started next to the spurious point leaves it.
    escaped = lifted_sensing(A, y, level=level, init=bad, max_iter=3000, tol=1e-7)
    assert np.linalg.norm(escaped.X - truth) / n < 1e-4


def test_lifting_below_its_range_leaves_the_spurious_minimum_a_minimum():
    """eps = 0.1: level 2 is not enough (the lifted Hessian at the spurious tensor is positive
    definite, min eigenvalue 1.62) and GD started there stays. Level 3 (threshold 0.112) is not
    enough either; level 4 is (min eigenvalue -4.38 at 0.1; +1.50 at 0.07): the working range is
    a property of the level, as the papers say, not of the code."""
    n = 4
    A, y = perturbed_completion(n, 0.1)
    spurious = _plain_gd(A, y, np.r_[1.0, 1.0, -1.0, -1.0], 0.1, 3000)
    assert np.linalg.eigvalsh(_lifted_hessian(A, y, spurious, 2))[0] == pytest.approx(1.62, abs=0.01)
    held = lifted_sensing(A, y, level=2, init=spurious + 1e-3, max_iter=2000, tol=0)
    assert np.linalg.norm(held.X - np.ones((n, n))) / n > 1.0


def _hessian(A, y, x):
    residual = np.einsum("ipq,p,q->i", A, x, x) - y
    Ax = np.einsum("ipq,q->ip", A, x)
    return 2 * Ax.T @ Ax + np.einsum("i,ipq->pq", residual, A)


@pytest.mark.gpu
def test_lifted_sensing_on_the_gpu_matches_the_cpu(rng):
    n = 4
    A, y = perturbed_completion(n, 0.2)
    for level in (2, 3):  # from the same small start: the same iterates
        cpu = lifted_sensing(A, y, level=level, max_iter=3000, tol=1e-7, seed=4)
        gpu = lifted_sensing(A, y, level=level, max_iter=3000, tol=1e-7, seed=4, backend="cuda")
        assert gpu.backend == "cuda" and isinstance(gpu.X, np.ndarray) and gpu.n_iter == cpu.n_iter
        assert np.allclose(gpu.info["tensor"], cpu.info["tensor"], rtol=1e-9, atol=1e-12)
        assert np.linalg.norm(gpu.X - np.ones((n, n))) / n < 1e-5
    # From next to the spurious point (a saddle escape amplifies rounding: compare outcomes only).
    bad = np.r_[1.0, 1.0, -1.0, -1.0] + 0.05 * rng.standard_normal(n)
    escaped = lifted_sensing(A, y, level=2, init=bad, max_iter=3000, tol=1e-7, backend="cuda")
    assert np.linalg.norm(escaped.X - np.ones((n, n))) / n < 1e-4


def test_lifted_measurements_match_the_kronecker_products(rng):
    n, m = 3, 4
    A = rng.standard_normal((m, n, n))
    A = (A + A.transpose(0, 2, 1)) / 2
    y = rng.standard_normal(m)
    from lowrank_hpc.recover.lifted_sensing import _Lifted
    W = rng.standard_normal((n * n, 2))
    residual, _ = _Lifted(A, y, 2).residual(W)
    expected = [np.trace(np.kron(A[i], A[j]) @ W @ W.T) - y[i] * y[j] for i in range(m) for j in range(m)]
    assert np.allclose(residual, expected, rtol=1e-12)


def test_lifted_sensing_takes_a_sensing_operator_and_checks_its_arguments():
    op = lr.sensing.GaussianSensing(30, (4, 4), seed=1, symmetric=True)
    x = np.array([1.0, -0.5, 0.3, 0.8])
    y = op.forward(np.outer(x, x))
    result = lifted_sensing(op, y, level=1, max_iter=3000, tol=1e-8, seed=0)
    assert np.linalg.norm(result.X - np.outer(x, x)) < 1e-5
    with pytest.raises(ValueError, match="y has shape"):
        lifted_sensing(op, y[:-1])
    with pytest.raises(ValueError, match="backend must be one of"):
        lifted_sensing(op, y, backend="gpu")
    with pytest.raises(ValueError, match="level must be >= 1"):
        lifted_sensing(op, y, level=0)
    with pytest.raises(ValueError, match="needs .* numbers per iteration"):
        lifted_sensing(op, y, level=6)
    with pytest.raises(ValueError, match="op as an array must have shape"):
        lifted_sensing(np.ones((3, 2, 4)), np.ones(3))


# ---------------------------------------------------------------------- Guess & Check
def _completion_problem(rng, n=4, observed=10):
    W = np.outer(rng.standard_normal(n), rng.standard_normal(n))
    W /= np.sqrt(np.mean(W ** 2) * n)  # entries of the prior's scale, variance 1 / n
    flat = rng.permutation(n * n)
    train, test = flat[:observed], flat[observed:]
    return W, (train // n, train % n, W.flat[train]), (test // n, test % n, W.flat[test])


def test_guess_and_check_keeps_exactly_the_draws_that_fit(rng):
    W, train, test = _completion_problem(rng)
    kwargs = dict(width=3, depth=3, n_samples=3000, batch_size=1000, tol=0.5, test=test, keep=10 ** 6,
                  compare_gd=False, seed=7)
    result = research.guess_and_check(train, (4, 4), **kwargs)
    # The same draws, made here with the same generator calls, checked densely in numpy.
    generator = np.random.default_rng(7)
    kept = []
    for _ in range(3):
        V = generator.standard_normal((1000, 4, 3)) / np.sqrt(4)
        U = generator.standard_normal((1000, 4, 3)) / np.sqrt(3)
        U = U @ (generator.standard_normal((1000, 3, 3)) / np.sqrt(3))
        products = U @ V.transpose(0, 2, 1)
        loss = ((products[:, train[0], train[1]] - train[2]) ** 2).mean(axis=1)
        kept.append(products[loss < 0.5])
    kept = np.concatenate(kept)
    assert result.n_samples == 3000 and result.n_accepted == kept.shape[0] > 0
    assert np.allclose(result.products, kept, rtol=1e-12)
    assert np.allclose(result.train_loss, ((kept[:, train[0], train[1]] - train[2]) ** 2).mean(axis=1))
    assert np.allclose(result.test_loss, ((kept[:, test[0], test[1]] - test[2]) ** 2).mean(axis=1))
    assert result.test_loss_mean == pytest.approx(result.test_loss.mean())
    again = research.guess_and_check(train, (4, 4), **kwargs)
    assert np.array_equal(again.products, result.products)


def test_guess_and_check_generalizes_better_deeper_and_worse_wider():
    """The paper's two effects on the example's problem (rank-1 3 x 3, 6 of 9 entries observed):
    with tol = 0.1 (about 2,000 accepted draws of 2^17, standard error of the mean test MSE
    about 0.014) the depth-6 draws' test MSE is below the depth-2 draws' (measured 0.80 against
    0.87-0.90 over seeds 0-3), and width 8 is above width 2. At tol = 0.01 only 10-20 of 2^18 draws
    are accepted and the effect drowns in their noise."""
    rng = np.random.default_rng(0)
    n = 3
    W = np.outer(rng.standard_normal(n), rng.standard_normal(n))
    W /= np.sqrt(np.mean(W ** 2) * n)
    flat = rng.permutation(n * n)
    train = (flat[:6] // n, flat[:6] % n, W.flat[flat[:6]])
    test = (flat[6:] // n, flat[6:] % n, W.flat[flat[6:]])
    runs = {(width, depth): research.guess_and_check(train, (n, n), width=width, depth=depth, n_samples=2 ** 17,
                                                     tol=0.1, test=test, batch_size=2 ** 15, seed=1, compare_gd=False)
            for width, depth in ((2, 2), (2, 6), (8, 2))}
    mean = {key: run.test_loss_mean for key, run in runs.items()}
    error = {key: run.test_loss.std() / np.sqrt(run.n_accepted) for key, run in runs.items()}
    assert all(run.n_accepted > 1000 for run in runs.values())
    assert mean[2, 6] < mean[2, 2] - 2 * np.hypot(error[2, 6], error[2, 2]), (mean, error)
    assert mean[8, 2] > mean[2, 2] + 2 * np.hypot(error[8, 2], error[2, 2]), (mean, error)


def test_guess_and_check_reports_gradient_descent_next_to_it(rng):
    W, train, test = _completion_problem(rng)
    result = research.guess_and_check(train, (4, 4), width=4, n_samples=4096, batch_size=4096, tol=0.05, test=test,
                                      seed=1, gd_max_iter=3000)
    assert result.gd_train_loss < 1e-6
    # GD from a small start completes the rank-1 matrix: far below the zero guess and G&C.
    assert result.gd_test_loss < 0.1 * result.baseline_test_loss
    assert result.n_accepted == 0 or result.test_loss_mean > result.gd_test_loss


@pytest.mark.parametrize("kwargs, error, match", [
    ({"depth": 1}, ValueError, "depth must be >= 2"),
    ({"width": 0}, ValueError, "width must be >= 1"),
    ({"tol": 0.0}, ValueError, "tol must be a finite number > 0"),
    ({"train": ([0, 9], [0, 1], [1.0, 2.0])}, IndexError, r"train rows\[1\] = 9 is out of range"),
    ({"train": ([0.5], [0], [1.0])}, TypeError, "train rows must hold integers"),
    ({"test": ([0], [0])}, TypeError, "test must be a triple"),
    ({"backend": "gpu"}, ValueError, "backend must be one of"),
])
def test_guess_and_check_errors_name_the_argument(kwargs, error, match):
    arguments = {"train": ([0, 1], [0, 1], [1.0, 2.0]), "shape": (3, 3), "width": 2, "n_samples": 10,
                 "compare_gd": False}
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        research.guess_and_check(arguments.pop("train"), arguments.pop("shape"), **arguments)


@pytest.mark.gpu
def test_guess_and_check_on_the_gpu_accepts_what_it_should(rng):
    W, train, test = _completion_problem(rng)
    result = research.guess_and_check(train, (4, 4), width=3, depth=2, n_samples=20000, batch_size=5000, tol=0.5,
                                      test=test, compare_gd=False, backend="cuda", seed=3, keep=10 ** 6)
    assert result.n_accepted > 0
    kept = result.products
    assert np.allclose(result.train_loss, ((kept[:, train[0], train[1]] - train[2]) ** 2).mean(axis=1), rtol=1e-10)
    assert np.allclose(result.test_loss, ((kept[:, test[0], test[1]] - test[2]) ** 2).mean(axis=1), rtol=1e-10)


def test_lifted_sensing_that_cannot_step_reports_no_progress():
    """A step so large that 50 halvings cannot lower the loss leaves W where it was: that is
    "no_progress" (converged False), as factored_gd says it, not "stationary"."""
    from lowrank_hpc.recover import lifted_sensing
    from lowrank_hpc.recover.lifted_sensing import perturbed_completion

    A, y = perturbed_completion(4, 0.05)
    result = lifted_sensing(A, y, level=2, seed=0, step=1e20, max_iter=100)
    assert result.stop_reason == "no_progress" and not result.converged
    assert result.n_iter == 1 and result.step_halvings == 50


def test_ebmf_keeps_the_factor_of_exactly_low_rank_data():
    """Y = u v^T exactly: the expected residual, summed as the means' residual plus variances
    (not as ||Y||^2 - 2 <Y, L F^T> + ..., which cancelled to noise), keeps the one factor
    (two seeds of four had returned zero factors) and fits Y to rounding."""
    from lowrank_hpc.research import ebmf

    for s in range(4):
        rng = np.random.default_rng(s)
        Y = np.outer(rng.standard_normal(10), rng.standard_normal(8))
        result = ebmf(Y, seed=0)
        assert result.n_factors == 1, s
        assert np.linalg.norm(result.fitted() - Y) / np.linalg.norm(Y) < 1e-12


@pytest.mark.parametrize("args, match", [
    (([1.0], [-1.0], 0.5, 1.0), "s2 must be finite and > 0"),
    (([1.0], [1.0], 1.5, 1.0), r"pi must lie in \[0, 1\]"),
    (([1.0], [1.0], 0.5, -1.0), "variance must be a finite number > 0"),
    (([np.nan], [1.0], 0.5, 1.0), "x contains NaN/inf"),
    (([1.0, 2.0], [1.0, 1.0, 1.0], 0.5, 1.0), r"s2 must be a scalar or of x's shape \(2,\)"),
])
def test_point_normal_posterior_names_a_bad_argument(args, match):
    # They returned NaN arrays (s2 < 0, pi outside [0, 1], variance < 0) or numpy's broadcast error.
    with pytest.raises(ValueError, match=match):
        research.point_normal_posterior(*args)
