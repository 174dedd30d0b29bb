"""Audit of Boolean MF (Elbmf, the Boolean product, BooleanMF) and mixture completion against
direct numpy references (shared/specs/elbmf.md, Pimentel-Alarcon 2018)."""
import numpy as np
import pytest
import scipy.sparse

from lowrank_hpc.estimators import BooleanMF
from lowrank_hpc.recover import boolean_mf, boolean_product
from lowrank_hpc.recover.mixture_completion import mixture_completion


def _prox(x, kappa, lam):
    """The spec's non-negative elastic-binary prox."""
    y = np.where(x <= 0.5, (x - kappa * np.sign(x)) / (1 + lam), (x - kappa * np.sign(x - 1) + lam) / (1 + lam))
    return np.maximum(y, 0.0)


def _elbmf_reference(A, U, V, iterations, update_v=True, l1=0.01, l2=0.02, growth=1.02):
    """PALM half-steps of the spec: U then V (V fixed for a fold-in); returns U, V, losses."""
    losses = []
    for t in range(iterations):
        lam = l2 * growth ** t
        gram = V @ V.T
        step = 1.0 / (1.1 * max(np.linalg.norm(gram), 1e-4))
        U = _prox(U - step * (U @ gram - A @ V.T), l1 * step, lam * step)
        if update_v:
            gram = U.T @ U
            step = 1.0 / (1.1 * max(np.linalg.norm(gram), 1e-4))
            V = _prox(V - step * (gram @ V - U.T @ A), l1 * step, lam * step)
        losses.append(np.linalg.norm(A - U @ V) ** 2)
    return U, V, np.array(losses)


@pytest.mark.parametrize("layout", ["bool", "int8_fortran", "strided", "csr"])
def test_elbmf_iterations_match_the_spec(layout):
    rng = np.random.default_rng(0)
    A = rng.random((13, 11)) < 0.4
    inputs = {"bool": A, "int8_fortran": np.asfortranarray(A.astype(np.int8)),
              "strided": np.repeat(A.astype(float), 2, axis=1)[:, ::2], "csr": scipy.sparse.csr_matrix(A)}
    result = boolean_mf(inputs[layout], 3, seed=5, max_iter=7, tol=0.0)
    draw = np.random.default_rng(5)
    U0, V0 = draw.random((13, 3)), draw.random((3, 11))
    U, V, losses = _elbmf_reference(A.astype(float), U0, V0, 7)
    np.testing.assert_allclose(result.U, U, atol=1e-12)
    np.testing.assert_allclose(result.V, V.T, atol=1e-12)
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-10)


def _fitted_model():
    rng = np.random.default_rng(1)
    W, H = rng.random((30, 2)) < 0.4, rng.random((2, 12)) < 0.4
    X = (W.astype(int) @ H.astype(int) > 0).astype(float)
    return BooleanMF(n_components=2, random_state=3, max_iter=200).fit(X), X


def test_transform_keeps_the_fitted_k_after_set_params():
    # Was: ValueError "gram: axis 1 has length 2, expected 3" from the binding (U0 drawn with the new k).
    model, X = _fitted_model()
    before = model.transform(X[:5])
    model.set_params(n_components=3)
    after = model.transform(X[:5])
    assert after.shape == (5, 2)
    np.testing.assert_array_equal(after, before)


def test_transform_of_sparse_rows_without_ones_matches_dense():
    # Was: ValueError "X has no nonzero entry" for new (cold-start) rows given as scipy.sparse,
    # while the same rows dense were folded in.
    model, _ = _fitted_model()
    rows = np.zeros((4, 12))
    # The fold-in reference: U half-steps against the fitted relaxed V, from the seeded start.
    U0 = np.random.default_rng(model._fold_in_seed).random((4, 2))
    U, _, losses = _elbmf_reference(rows, U0, np.asarray(model.result_.V).T, 200, update_v=False)
    dense = model.transform(rows)
    np.testing.assert_array_equal(model.transform(scipy.sparse.csr_matrix(rows)), dense)
    assert dense.shape == (4, 2) and not dense.any()
    np.testing.assert_array_equal(dense, U >= 0.5)
    with pytest.raises(ValueError, match="BooleanMF.fit: X has no nonzero entry"):
        BooleanMF(n_components=2).fit(scipy.sparse.csr_matrix((3, 4)))


def test_boolean_product_matches_numpy_and_takes_array_likes():
    rng = np.random.default_rng(2)
    W, H = rng.random((7, 3)) < 0.4, rng.random((3, 9)) < 0.4
    expected = W.astype(int) @ H.astype(int) > 0
    np.testing.assert_array_equal(boolean_product(W, H), expected)
    np.testing.assert_array_equal(boolean_product(np.asfortranarray(W.astype(np.int8)), H.astype(np.uint8)), expected)
    # Was: BackendUnavailableError (a list was taken for a CUDA array).
    np.testing.assert_array_equal(boolean_product(W.astype(int).tolist(), H.astype(int).tolist()), expected)


def test_boolean_product_refuses_relaxed_factors_and_bad_shapes():
    # Was: True, the OR of two fractions (0.3 + 0.3 > 0.5), where the rounded factors give False.
    with pytest.raises(ValueError, match=r"W must hold only 0 and 1.*W >= 0.5"):
        boolean_product(np.array([[0.3, 0.3]]), np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"W of shape \(2, 3\) and H of shape \(2, 3\) do not chain"):
        boolean_product(np.ones((2, 3), dtype=bool), np.ones((2, 3), dtype=bool))
    with pytest.raises(TypeError, match="H must be a bool or 0/1 numeric array"):
        boolean_product(np.ones((2, 3), dtype=bool), np.full((3, 2), "a"))


def test_mixture_hard_rounds_match_a_direct_reference():
    rng = np.random.default_rng(0)
    n1, n2, r, K, reg = 9, 8, 2, 2, 0.1
    rows, cols = np.nonzero(rng.random((n1, n2)) < 0.7)
    vals = rng.standard_normal(rows.size)
    result = mixture_completion(rows, cols, vals, (n1, n2), K, r, reg=reg, seed=4, restarts=1, anneal_iter=0,
                                max_iter=2, repair_trials=0)
    draw = np.random.default_rng(4)
    scale = np.sqrt(np.sqrt(np.mean(vals ** 2)) / np.sqrt(r))
    U, V = scale * draw.standard_normal((K, n1, r)), scale * draw.standard_normal((K, n2, r))

    def residuals():
        return np.stack([(np.sum(U[k][rows] * V[k][cols], axis=1) - vals) ** 2 for k in range(K)])

    def solve(index, count, other, targets):
        out = np.zeros((count, r))
        for i in range(count):
            A = other[index == i]
            out[i] = np.linalg.solve(A.T @ A + reg * np.eye(r), A.T @ targets[index == i])
        return out

    labels, objectives = residuals().argmin(axis=0), [0.5 * residuals().min(axis=0).sum()]
    for _ in range(2):
        for k in range(K):
            mine = labels == k
            for _ in range(2):  # inner_iter ALS sweeps, U first from the current V
                U[k] = solve(rows[mine], n1, V[k][cols[mine]], vals[mine])
                V[k] = solve(cols[mine], n2, U[k][rows[mine]], vals[mine])
        labels = residuals().argmin(axis=0)
        objectives.append(0.5 * residuals().min(axis=0).sum())
    np.testing.assert_allclose(result.U, U, atol=1e-10)
    np.testing.assert_allclose(result.V, V, atol=1e-10)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(result.history["objective"], objectives, rtol=1e-10)
