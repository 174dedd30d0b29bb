"""MatrixCompletion(method="auto"): which solver runs (recover.completion_fit.auto_method), that it
is exactly that solver's fit, and the creep of soft-impute on sparse matrices that the rule avoids."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc.recover import completion_fit
from lowrank_hpc.recover.completion_fit import AUTO_METHOD_ALS_BELOW, AUTO_METHOD_ALS_MIN_ENTRIES, auto_method


@pytest.mark.parametrize("nnz, shape, rank, expected", [
    (AUTO_METHOD_ALS_MIN_ENTRIES, (138_000, 27_000), 20, "als"),          # 0.03% observed
    (AUTO_METHOD_ALS_MIN_ENTRIES - 1, (138_000, 27_000), 20, "soft_impute"),  # too few entries to creep for long
    (4_500_000, (138_000, 27_000), "auto", "soft_impute"),                # only soft-impute's penalty sets a rank
    (1_000_000, (10_000, 10_000), 20, "soft_impute"),                     # exactly 1%
    (999_999 + 1, (10_000, 10_001), 20, "als"),                           # just under 1%
    (20_000_000, (200_000, 5_000), 20, "soft_impute"),                    # 2%
    (10**12 // 200, (np.int32(10**6), np.int32(10**6)), 20, "als"),       # numpy ints, n1 n2 past int32
])
def test_the_rule(nnz, shape, rank, expected):
    assert auto_method(nnz, shape, rank) == expected
    assert AUTO_METHOD_ALS_BELOW == 0.01


def sparse_ratings(shape=(3000, 1000), fraction=0.005, seed=0):
    """Distinct entries of mu + a_i + b_j + a rank-3 part + unit noise at ``fraction`` of the matrix."""
    rng = np.random.default_rng(seed)
    m, n = shape
    flat = rng.choice(m * n, int(fraction * m * n), replace=False)
    rows, cols = flat // n, flat % n
    U, V = rng.standard_normal((m, 3)), rng.standard_normal((n, 3))
    a, b = 0.5 * rng.standard_normal(m), 0.5 * rng.standard_normal(n)
    vals = 3.5 + a[rows] + b[cols] + np.einsum("ij,ij->i", U[rows], V[cols]) + rng.standard_normal(rows.size)
    return rows, cols, vals


def assert_same_fit(auto, explicit, rows, cols):
    np.testing.assert_array_equal(auto.U_, explicit.U_)
    np.testing.assert_array_equal(auto.V_, explicit.V_)
    np.testing.assert_array_equal(auto.predict(rows, cols), explicit.predict(rows, cols))
    assert auto.reg_ == explicit.reg_ and auto.rank_ == explicit.rank_ and auto.path_ == explicit.path_


@pytest.mark.parametrize("fraction, expected", [(0.005, "als"), (0.02, "soft_impute")])
def test_auto_is_exactly_the_solver_it_picks(monkeypatch, fraction, expected):
    """With the entry threshold lowered to this test's size, 0.5% observed runs ALS and 2% soft-impute,
    bit for bit the fit of that method, which method_ and the CLI's report name."""
    monkeypatch.setattr(completion_fit, "AUTO_METHOD_ALS_MIN_ENTRIES", 1000)
    rows, cols, vals = sparse_ratings(fraction=fraction)
    auto = lr.MatrixCompletion(rank=5, random_state=0, max_iter=30).fit(rows, cols, vals, shape=(3000, 1000))
    explicit = lr.MatrixCompletion(rank=5, method=expected, random_state=0, max_iter=30).fit(rows, cols, vals,
                                                                                            shape=(3000, 1000))
    assert auto.method == "auto" and auto.method_ == expected and explicit.method_ == expected
    assert_same_fit(auto, explicit, rows, cols)
    # Folding rows in uses the solver's ridge: the same rows, the same factors.
    X = np.full((2, 1000), np.nan)
    X[0, :40], X[1, 500:530] = 3.0, 4.5
    np.testing.assert_array_equal(auto.transform(X), explicit.transform(X))


def test_without_the_lowered_threshold_small_sparse_data_stays_with_soft_impute():
    rows, cols, vals = sparse_ratings(fraction=0.005)
    model = lr.MatrixCompletion(rank=5, random_state=0, max_iter=5).fit(rows, cols, vals, shape=(3000, 1000))
    assert model.method_ == "soft_impute"


def test_rank_auto_and_implicit_feedback_resolve(monkeypatch):
    monkeypatch.setattr(completion_fit, "AUTO_METHOD_ALS_MIN_ENTRIES", 1000)
    rows, cols, vals = sparse_ratings(fraction=0.005)
    model = lr.MatrixCompletion(rank="auto", random_state=0, max_iter=5).fit(rows, cols, vals, shape=(3000, 1000))
    assert model.method_ == "soft_impute"
    counts = np.abs(np.round(vals))
    implicit = lr.MatrixCompletion(rank=4, feedback="implicit", random_state=0, max_iter=3).fit(
        rows, cols, counts, shape=(3000, 1000))
    reference = lr.MatrixCompletion(rank=4, method="als", feedback="implicit", random_state=0, max_iter=3).fit(
        rows, cols, counts, shape=(3000, 1000))
    assert implicit.method_ == "als"
    np.testing.assert_array_equal(implicit.U_, reference.U_)


def test_auto_refuses_what_its_solvers_would_not_take_alike(monkeypatch):
    """A repeated pair is refused whichever solver the density picks (ALS alone would count it
    twice), and an init is refused: which solver it would start depends on the data."""
    monkeypatch.setattr(completion_fit, "AUTO_METHOD_ALS_MIN_ENTRIES", 1000)
    rows, cols, vals = sparse_ratings(fraction=0.005)
    rows, cols, vals = np.append(rows, rows[7]), np.append(cols, cols[7]), np.append(vals, 1.0)
    with pytest.raises(ValueError, match="repeated"):
        lr.MatrixCompletion(rank=5, random_state=0).fit(rows, cols, vals, shape=(3000, 1000))
    lr.MatrixCompletion(rank=5, method="als", random_state=0, max_iter=2).fit(rows, cols, vals, shape=(3000, 1000))
    with pytest.raises(ValueError, match="method 'auto' takes init=None"):
        lr.MatrixCompletion(rank=5, init=np.ones((1000, 5))).fit(rows[:-1], cols[:-1], vals[:-1], shape=(3000, 1000))


def objective(rows, cols, vals, result, reg):
    """1/2 ||P_Omega(X - U V^T)||^2 + reg/2 (||U||^2 + ||V||^2), float64."""
    residual = vals - lr.ops.sampled_product(result.U, result.V, rows, cols)
    return 0.5 * residual @ residual + 0.5 * reg * (np.sum(result.U ** 2) + np.sum(result.V ** 2))


@pytest.mark.parametrize("fraction, soft_impute_above", [(0.005, 1.02), (0.05, None)])
def test_soft_impute_creeps_where_little_is_observed(fraction, soft_impute_above):
    """Why the rule exists: both minimise the same objective, but at 0.5% observed soft-impute's
    100 sweeps end more than 2% above ALS's 100 iterations (1.026x when measured; 2% observed:
    1.003x), at 5% within 1e-5 of them."""
    rows, cols, vals = sparse_ratings(fraction=fraction)
    vals = vals - vals.mean()
    reg = lr.recover.observed_spectral_norm(rows, cols, vals, (3000, 1000), seed=0) / 4
    soft = lr.recover.soft_impute(rows, cols, vals, (3000, 1000), 10, reg, max_iter=100, tol=0, seed=0)
    als = lr.recover.als(rows, cols, vals, (3000, 1000), 10, reg, max_iter=100, tol=0, seed=0)
    ratio = objective(rows, cols, vals, soft, reg) / objective(rows, cols, vals, als, reg)
    if soft_impute_above is not None:
        assert ratio > soft_impute_above
    else:
        assert abs(ratio - 1) < 1e-5


def test_reg_scaling_count_is_als_s_penalty():
    """ALS-WR's penalty runs ALS under "auto" at any density (soft-impute would ignore it, as the
    documented "ALS only" says), and rank="auto", which only soft-impute sets, refuses it."""
    rows, cols, vals = sparse_ratings(fraction=0.05)
    model = lr.MatrixCompletion(rank=4, reg=0.5, reg_scaling="count", random_state=0, max_iter=5).fit(
        rows, cols, vals, shape=(3000, 1000))
    reference = lr.MatrixCompletion(rank=4, reg=0.5, reg_scaling="count", method="als", random_state=0,
                                    max_iter=5).fit(rows, cols, vals, shape=(3000, 1000))
    assert model.method_ == "als"
    np.testing.assert_array_equal(model.U_, reference.U_)
    with pytest.raises(ValueError, match="rank='auto' is set by soft-impute's penalty"):
        lr.MatrixCompletion(rank="auto", reg_scaling="count").fit(rows, cols, vals, shape=(3000, 1000))


@pytest.mark.parametrize("fraction, expected", [(0.005, "als"), (0.02, "soft_impute")])
def test_the_callback_sees_the_same_factors_from_either_solver(monkeypatch, fraction, expected):
    """A callback cannot know which solver "auto" picks: "U" (n1, rank) and "V" (n2, rank) with
    U V^T the iterate's low-rank part from both (ALS passed batches of one, soft-impute left out
    its d). Without offsets (whose later rounds ALS's callback does not see) the last iterate's
    predictions are the fit's, to within soft-impute's final plain step."""
    monkeypatch.setattr(completion_fit, "AUTO_METHOD_ALS_MIN_ENTRIES", 1000)
    rows, cols, vals = sparse_ratings(fraction=fraction)
    seen = []
    model = lr.MatrixCompletion(rank=5, random_state=0, debias=False, tol=1e-6, center="none",
                                callback=lambda it, info: seen.append(info)).fit(rows, cols, vals, shape=(3000, 1000))
    assert model.method_ == expected and seen
    last = seen[-1]
    assert last["U"].shape == (3000, 5) and last["V"].shape == (1000, 5) and "d" not in last
    offsets = last["offsets"]
    predicted = (np.einsum("ij,ij->i", last["U"][rows], last["V"][cols]) + offsets.intercept
                 + offsets.row[rows] + offsets.col[cols])
    fitted = model.predict(rows, cols)
    assert np.linalg.norm(predicted - fitted) < 1e-3 * np.linalg.norm(fitted)


def test_rank_auto_with_count_scaling_only_refused_where_it_would_run_als():
    rows, cols, vals = sparse_ratings(fraction=0.02)
    model = lr.MatrixCompletion(method="soft_impute", rank="auto", reg_scaling="count", random_state=0,
                                max_iter=3).fit(rows, cols, vals, shape=(3000, 1000))
    assert model.method_ == "soft_impute"  # "ALS only": ignored, as before
