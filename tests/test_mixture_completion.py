"""Mixture matrix completion: planted K = 2 mixtures recovered (labels and components, up to
permutation) against the planted truth, one annealing step and one hard round against numpy
transcriptions (tests/reference.py's ALS), K = 1 equal to plain ALS bit for bit, and the errors."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc._arrays import resolve
from lowrank_hpc.recover import als, mixture_completion
from lowrank_hpc.recover.mixture_completion import _Mixture

from reference import als_half_steps


def planted(seed, n1=300, n2=300, rank=3, K=2, fraction=0.4):
    """K Gaussian rank-``rank`` matrices; a ``fraction`` of the cells observed, each from a
    uniformly drawn component."""
    rng = np.random.default_rng(seed)
    truths = [rng.standard_normal((n1, rank)) @ rng.standard_normal((rank, n2)) for _ in range(K)]
    nnz = int(fraction * n1 * n2)
    cells = rng.choice(n1 * n2, nnz, replace=False)
    rows, cols = cells // n2, cells % n2
    labels = rng.integers(0, K, nnz)
    vals = np.stack(truths)[labels, rows, cols]
    return rows, cols, vals, labels, truths


def matched(model_labels, true_labels, components, truths):
    """(assignment accuracy, worst relative error of a component) under the best permutation."""
    best = (0.0, np.inf)
    for perm in itertools.permutations(range(len(truths))):
        accuracy = float(np.mean(np.asarray(perm)[true_labels] == model_labels))
        error = max(np.linalg.norm(components[perm[k]] - truths[k]) / np.linalg.norm(truths[k])
                    for k in range(len(truths)))
        if accuracy > best[0]:
            best = (accuracy, error)
    return best


@pytest.mark.parametrize("seed", [0, 1])
def test_two_planted_components_are_recovered(seed):
    rows, cols, vals, labels, truths = planted(seed)
    # The solver's seed differs from the problem's: the same stream would start it at the planted factors.
    model = lr.MixtureCompletion(n_components=2, rank=3, random_state=seed + 100).fit(rows, cols, vals,
                                                                                    shape=(300, 300))
    components = [U @ V.T for U, V in model.factors_]
    accuracy, error = matched(model.labels_, labels, components, truths)
    assert accuracy >= 0.95
    assert error < 1e-2
    assert model.converged_
    history = model.objective_history_
    assert history.shape == (model.n_iter_,) and history[-1] < 1e-6 * history[0]
    # The labels are each entry's nearest component, and score sees an exact fit.
    assert np.array_equal(model.assign(rows, cols, vals), model.labels_)
    assert model.score(rows, cols, vals) > -1e-3


def test_dense_input_with_nan_is_the_entries_in_row_major_order():
    rows, cols, vals, labels, truths = planted(3, n1=60, n2=50, rank=2, fraction=0.6)
    X = np.full((60, 50), np.nan)
    X[rows, cols] = vals
    dense = lr.MixtureCompletion(rank=2, random_state=5, restarts=2).fit(X)
    order = np.lexsort((cols, rows))
    entries = lr.MixtureCompletion(rank=2, random_state=5, restarts=2).fit(rows[order], cols[order], vals[order],
                                                                          shape=(60, 50))
    assert np.array_equal(dense.rows_, rows[order]) and np.array_equal(dense.cols_, cols[order])
    assert np.array_equal(dense.labels_, entries.labels_)
    assert np.array_equal(dense.U_, entries.U_)


def test_one_component_is_plain_als(rng):
    rows, cols, vals, _, _ = planted(4, n1=80, n2=70, rank=3, K=1, fraction=0.3)
    vals = vals + 0.01 * rng.standard_normal(vals.shape)
    model = lr.MixtureCompletion(n_components=1, rank=3, reg=0.1, max_iter=30, tol=1e-5,
                                 random_state=11).fit(rows, cols, vals, shape=(80, 70))
    plain = als(rows, cols, vals, (80, 70), 3, 0.1, max_iter=30, tol=1e-5, seed=11)
    assert np.array_equal(model.U_[0], plain.U) and np.array_equal(model.V_[0], plain.V)
    assert np.array_equal(model.labels_, np.zeros(rows.shape[0]))
    assert np.array_equal(model.objective_history_, plain.history["loss"])


def test_an_annealing_step_and_a_hard_round_match_numpy_transcriptions(rng):
    """One soft step: weights softmax(-res^2 / 2 s^2), targets w x + (1 - w) x_hat, one ALS sweep
    per component on all entries; one hard round: each component's ALS on its own entries."""
    shape, rank, K, reg = (20, 15), 2, 2, 0.05
    rows, cols, vals, _, _ = planted(6, n1=20, n2=15, rank=rank, K=K, fraction=0.7)
    solver = _Mixture(resolve("test", rows=rows, cols=cols, vals=vals),
                      rows.astype(np.int64), cols.astype(np.int64), vals, shape, K, rank, reg, 1)
    U = rng.standard_normal((K, shape[0], rank))
    V = rng.standard_normal((K, shape[1], rank))
    U1, V1, _ = solver.anneal(U.copy(), V.copy(), 1, 1, 0.5)
    prediction = np.einsum("kir,kir->ki", U[:, rows], V[:, cols])
    residual = (prediction - vals) ** 2
    scale = residual.mean()
    weights = np.exp(-residual / (2 * scale))
    weights /= weights.sum(axis=0)
    for k in range(K):
        targets = weights[k] * vals + (1 - weights[k]) * prediction[k]
        U_ref, V_ref = als_half_steps(rows, cols, targets, shape, V[k], reg, False)
        np.testing.assert_allclose(U1[k], U_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(V1[k], V_ref, rtol=1e-9, atol=1e-9)
    labels = rng.integers(0, K, rows.shape[0])
    U2, V2 = solver.refit(labels[None], V.copy(), 1, sweeps=1)
    for k in range(K):
        mine = labels == k
        U_ref, V_ref = als_half_steps(rows[mine], cols[mine], vals[mine], shape, V[k], reg, False)
        np.testing.assert_allclose(U2[k], U_ref, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(V2[k], V_ref, rtol=1e-9, atol=1e-9)


def test_same_seed_same_result_and_seed_reported():
    rows, cols, vals, _, _ = planted(7, n1=40, n2=30, rank=2, fraction=0.6)
    first = mixture_completion(rows, cols, vals, (40, 30), 2, 2, restarts=2, seed=3)
    second = mixture_completion(rows, cols, vals, (40, 30), 2, 2, restarts=2, seed=3)
    assert np.array_equal(first.U, second.U) and np.array_equal(first.labels, second.labels)
    assert first.info["seed"] == 3 and first.info["restart_objectives"].shape == (2,)
    drawn = mixture_completion(rows, cols, vals, (40, 30), 2, 2, restarts=1, anneal_iter=2, max_iter=2, seed=None)
    assert isinstance(drawn.info["seed"], int)


@pytest.mark.gpu
def test_gpu_recovers_the_planted_mixture():
    import cupy

    rows, cols, vals, labels, truths = planted(0)
    model = lr.MixtureCompletion(n_components=2, rank=3, random_state=100, backend="cuda").fit(
        rows, cols, vals, shape=(300, 300))
    assert isinstance(model.U_, cupy.ndarray) and model.result_.backend == "cuda"
    components = [cupy.asnumpy(U @ V.T) for U, V in model.factors_]
    accuracy, error = matched(cupy.asnumpy(model.labels_), labels, components, truths)
    assert accuracy >= 0.95 and error < 1e-2


@pytest.mark.parametrize("params, match", [
    (dict(n_components=0), "n_components"),
    (dict(n_components=1.5), "n_components"),
    (dict(rank=0), "rank"),
    (dict(rank=40), "rank"),
    (dict(reg=-1.0), "reg"),
    (dict(restarts=0), "restarts"),
    (dict(anneal_iter=-1), "anneal_iter"),
    (dict(backend="tpu"), "backend"),
])
def test_bad_hyper_parameters_are_named(params, match):
    X = np.ones((10, 12))
    with pytest.raises(ValueError, match=match):
        lr.MixtureCompletion(**params).fit(X)


def test_bad_data_is_named():
    rows, cols, vals = np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([1.0, 2.0, 3.0])
    model = lr.MixtureCompletion(rank=1)
    with pytest.raises(ValueError, match="vals"):
        model.fit(rows, cols, np.array([1.0, np.nan, 3.0]), shape=(3, 3))
    with pytest.raises(ValueError, match="shape"):
        model.fit(rows, cols, vals[:2], shape=(3, 3))
    with pytest.raises(ValueError, match="inf"):
        model.fit(np.array([[1.0, np.inf], [np.nan, 2.0]]))
    with pytest.raises(IndexError, match="rows"):
        model.fit(rows, cols, vals, shape=(2, 3))
    with pytest.raises(ValueError, match="shape"):
        model.fit(rows, cols, vals)
    with pytest.raises(lr.NotFittedError):
        model.predict(rows, cols)
    with pytest.raises(ValueError, match="n_components"):
        mixture_completion(rows, cols, vals, (3, 3), 0, 1)
    with pytest.raises(ValueError, match="rank"):
        mixture_completion(rows, cols, vals, (3, 3), 2, 4)
    with pytest.raises(ValueError, match="anneal_decay"):
        mixture_completion(rows, cols, vals, (3, 3), 2, 1, anneal_decay=1.0)
    fitted = lr.MixtureCompletion(rank=1, random_state=0, restarts=1).fit(rows, cols, vals, shape=(3, 3))
    with pytest.raises(ValueError, match="component"):
        fitted.predict(rows, cols, component=2)
    assert fitted.predict(rows, cols).shape == (2, 3)
    assert np.array_equal(fitted.predict(rows, cols, component=1), fitted.predict(rows, cols)[1])
