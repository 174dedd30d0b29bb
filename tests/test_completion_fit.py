"""MatrixCompletion's fit on real-data-like matrices (lowrank_hpc.recover.completion_fit and
offsets): the offsets against a dense least-squares solve, the offsets' gain in accuracy, the
penalty chosen on held-out entries against a grid of fixed penalties and against lambda_max
computed by numpy, rank="auto", the fallback without a validation split, checkpoints,
callbacks and float32."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import datasets
from lowrank_hpc.recover.offsets import START_OFFSET_SWEEPS as OFFSET_SWEEPS
from lowrank_hpc.recover.offsets import Offsets, fit_offsets, zero_offsets


def planted(shape=(60, 50), rank=3, fraction=0.5, noise=0.05, seed=0, mu=3.5):
    """X = mu + a_i + b_j + L (rank ``rank``) + noise: the noiseless M, the mask of observed
    entries and the observed (rows, cols, vals) of the noisy matrix."""
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
    L = rng.standard_normal((shape[0], rank)) @ rng.standard_normal((shape[1], rank)).T
    M = mu + a[:, None] + b[None, :] + L
    mask = rng.random(shape) < fraction
    noisy = M + noise * rng.standard_normal(shape)
    rows, cols = (np.ascontiguousarray(i, dtype=np.int64) for i in np.nonzero(mask))
    return M, mask, (rows, cols, noisy[rows, cols])


def held_out_rmse(estimator, M, mask):
    rows, cols = np.nonzero(~mask)
    return -estimator.score(rows, cols, M[rows, cols])


def dense_observed(rows, cols, vals, shape):
    """The (n1, n2) matrix holding vals at (rows, cols) and zeros elsewhere."""
    D = np.zeros(shape)
    D[rows, cols] = vals
    return D


# ---------------------------------------------------------------------- fit_offsets
def exact_offsets(rows, cols, r, shape, bias_reg):
    """argmin sum_k (r_k - mu - a_rows[k] - b_cols[k])^2 + bias_reg (|a|^2 + |b|^2) by numpy's
    lstsq on the dense design [1, one-hot rows, one-hot cols] with ridge rows for a and b only."""
    n1, n2 = shape
    nnz = rows.shape[0]
    design = np.zeros((nnz, 1 + n1 + n2))
    design[:, 0] = 1.0
    design[np.arange(nnz), 1 + rows] = 1.0
    design[np.arange(nnz), 1 + n1 + cols] = 1.0
    ridge = np.hstack([np.zeros((n1 + n2, 1)), np.sqrt(bias_reg) * np.eye(n1 + n2)])
    solution = np.linalg.lstsq(np.vstack([design, ridge]), np.concatenate([r, np.zeros(n1 + n2)]), rcond=None)[0]
    return solution[0], solution[1:1 + n1], solution[1 + n1:]


def offsets_problem(seed=0):
    """Observed entries of a 15 x 12 matrix with row 4 and column 7 never observed."""
    rng = np.random.default_rng(seed)
    shape = (15, 12)
    mask = rng.random(shape) < 0.6
    mask[4, :] = False
    mask[:, 7] = False
    rows, cols = (np.ascontiguousarray(i, dtype=np.int64) for i in np.nonzero(mask))
    a, b = rng.standard_normal(shape[0]), rng.standard_normal(shape[1])
    r = 2.0 + a[rows] + b[cols] + 0.3 * rng.standard_normal(rows.shape[0])
    return rows, cols, r, shape


@pytest.mark.parametrize("bias_reg", [0.5, 2.0, 10.0])
def test_fit_offsets_both_converges_to_the_exact_ridge_minimiser(bias_reg):
    rows, cols, r, shape = offsets_problem()
    offsets = fit_offsets(rows, cols, r, shape, "both", bias_reg, zero_offsets(np, shape, r.dtype), sweeps=400)
    mu, a, b = exact_offsets(rows, cols, r, shape, bias_reg)
    assert isinstance(offsets.intercept, float)
    assert offsets.row.shape == (15,) and offsets.col.shape == (12,) and offsets.row.dtype == np.float64
    assert offsets.intercept == pytest.approx(mu, rel=1e-10)
    np.testing.assert_allclose(offsets.row, a, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(offsets.col, b, rtol=1e-9, atol=1e-11)
    # Unobserved row 4 and column 7 get 0 (the exact minimiser says so too).
    assert offsets.row[4] == 0.0 and offsets.col[7] == 0.0 and abs(a[4]) < 1e-12 and abs(b[7]) < 1e-12
    np.testing.assert_allclose(offsets.at(rows, cols), mu + a[rows] + b[cols], rtol=1e-9)
    # Few sweeps are not the minimiser yet: the comparison above can fail.
    one = fit_offsets(rows, cols, r, shape, "both", bias_reg, zero_offsets(np, shape, r.dtype), sweeps=1)
    assert np.abs(one.row - a).max() > 1e-6


def test_fit_offsets_starts_from_the_given_offsets():
    """Gauss-Seidel from the exact minimiser stays there (it is a fixed point of a sweep)."""
    rows, cols, r, shape = offsets_problem(seed=1)
    mu, a, b = exact_offsets(rows, cols, r, shape, 3.0)
    again = fit_offsets(rows, cols, r, shape, "both", 3.0, Offsets(mu, a.copy(), b.copy()), sweeps=1)
    assert again.intercept == pytest.approx(mu, rel=1e-12)
    np.testing.assert_allclose(again.row, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(again.col, b, rtol=1e-10, atol=1e-12)


def test_fit_offsets_global_is_the_mean_and_none_is_zero():
    rows, cols, r, shape = offsets_problem(seed=2)
    start = Offsets(5.0, np.ones(shape[0]), np.ones(shape[1]))  # ignored by "global" and "none"
    glob = fit_offsets(rows, cols, r, shape, "global", 2.0, start, sweeps=3)
    assert glob.intercept == pytest.approx(float(np.mean(r)), rel=1e-13)
    assert not glob.row.any() and not glob.col.any()
    assert glob.row.shape == (15,) and glob.col.shape == (12,)
    none = fit_offsets(rows, cols, r, shape, "none", 2.0, start, sweeps=3)
    assert none.intercept == 0.0 and not none.row.any() and not none.col.any()
    assert none.row.dtype == none.col.dtype == np.float64


def test_fit_offsets_without_ridge_leaves_unobserved_rows_at_zero():
    rows, cols, r, shape = offsets_problem(seed=3)
    offsets = fit_offsets(rows, cols, r, shape, "both", 0.0, zero_offsets(np, shape, r.dtype), sweeps=200)
    assert offsets.row[4] == 0.0 and offsets.col[7] == 0.0
    # Unpenalized, the fit of the observed entries is the least-squares fit of the additive model
    # (its offsets are not unique, its fitted values are).
    mu, a, b = exact_offsets(rows, cols, r, shape, 1e-12)
    np.testing.assert_allclose(offsets.at(rows, cols), mu + a[rows] + b[cols], rtol=1e-6, atol=1e-8)


def test_a_fit_sorts_shuffled_entries_once_for_all_its_gradient_solves(monkeypatch):
    """MatrixCompletion with a gradient method alternates whole solves with the offsets' fit: the
    solves share one operator, so shuffled entries are sorted once, not once per solve; the model
    is the one fitted to the entries given in order."""
    import importlib

    M, mask, (rows, cols, vals) = planted((60, 50), rank=3, fraction=0.5, noise=0.05)
    order = np.random.default_rng(3).permutation(rows.shape[0])
    sorts = []
    entry_sampling = importlib.import_module("lowrank_hpc.sensing.entry_sampling")
    original = entry_sampling.row_column_order
    monkeypatch.setattr(entry_sampling, "row_column_order",
                        lambda call, r, c, shape: sorts.append(r) or original(call, r, c, shape))
    settings = dict(rank=3, method="gd", center="both", max_iter=300, random_state=0)
    shuffled = lr.MatrixCompletion(**settings).fit(rows[order], cols[order], vals[order], shape=M.shape)
    assert len(sorts) == 1 and sorts[0].shape[0] == rows.shape[0]
    in_order = lr.MatrixCompletion(**settings).fit(rows, cols, vals, shape=M.shape)  # np.nonzero's: no sort
    assert len(sorts) == 1
    r, c = np.nonzero(~mask)  # the same model up to the offsets' sums in another order
    np.testing.assert_allclose(shuffled.predict(r, c), in_order.predict(r, c), rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------------- the offsets in the estimator
@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_centering_recovers_an_offset_matrix_better_and_predict_adds_the_offsets(method):
    M, mask, (rows, cols, vals) = planted((60, 50), rank=3, fraction=0.4, noise=0.05)
    settings = dict(rank=3, method=method, reg=0.5, bias_reg=1.0, random_state=0)
    both = lr.MatrixCompletion(center="both", **settings).fit(rows, cols, vals, shape=M.shape)
    none = lr.MatrixCompletion(center="none", **settings).fit(rows, cols, vals, shape=M.shape)
    # Rank 3 holds the low-rank part; without offsets it must also hold mu + a_i + b_j (rank 2).
    assert held_out_rmse(both, M, mask) < 0.2
    assert held_out_rmse(none, M, mask) > 0.5
    assert held_out_rmse(none, M, mask) > 3 * held_out_rmse(both, M, mask)
    assert abs(both.intercept_ - 3.5) < 0.5  # the planted mu (the offsets' means shift it a little)
    assert none.intercept_ == 0.0 and not none.row_bias_.any() and not none.col_bias_.any()
    pick = np.random.default_rng(1)
    r, c = pick.integers(0, 60, 40), pick.integers(0, 50, 40)
    expected = (both.intercept_ + both.row_bias_[r] + both.col_bias_[c]
                + np.einsum("kr,kr->k", both.U_[r], both.V_[c]))
    np.testing.assert_allclose(both.predict(r, c), expected, rtol=1e-12, atol=1e-12)
    assert both.train_rmse_ == pytest.approx(np.sqrt(np.mean((both.predict(rows, cols) - vals) ** 2)), rel=1e-10)


# ---------------------------------------------------------------------- reg="auto"
def _centered(rows, cols, vals, shape, center, bias_reg):
    """vals minus the offsets fit_completion starts from: none, the mean, or OFFSET_SWEEPS
    Gauss-Seidel sweeps of fit_offsets from zero (checked above against the dense solve)."""
    if center == "none":
        return vals
    if center == "global":
        return vals - vals.mean()
    start = fit_offsets(rows, cols, vals, shape, "both", bias_reg, zero_offsets(np, shape, vals.dtype),
                        sweeps=OFFSET_SWEEPS)
    return vals - start.at(rows, cols)


@pytest.mark.parametrize("method, center, reg_scaling", [
    ("als", "none", "none"), ("als", "global", "none"), ("als", "both", "none"), ("als", "global", "count"),
    ("soft_impute", "both", "none"), ("soft_impute", "global", "none"),
])
def test_auto_reg_is_the_best_path_fraction_of_lambda_max(method, center, reg_scaling):
    M, mask, (rows, cols, vals) = planted((50, 40), rank=3, fraction=0.5, noise=0.3, seed=2)
    shape = M.shape
    estimator = lr.MatrixCompletion(rank=5, method=method, center=center, reg_scaling=reg_scaling, bias_reg=10.0,
                                    random_state=5).fit(rows, cols, vals, shape=shape)
    path = estimator.path_
    assert len(path) >= 3
    # k = 0 (lambda_max: the offsets alone, no solve) then the walk from lambda_max / 2 down.
    assert [point.fraction for point in path] == [0.5 ** k for k in range(len(path))]
    assert path[0].n_iter == 0 and path[0].effective_rank == 0
    chosen = min(path, key=lambda point: point.validation_rmse)
    # The chosen point is a real minimum of the walk: not its first points (lambda_max, lambda_max / 2).
    assert chosen.fraction < 0.5 and chosen.validation_rmse < min(path[0].validation_rmse, path[1].validation_rmse)
    lambda_max = np.linalg.norm(dense_observed(rows, cols, _centered(rows, cols, vals, shape, center, 10.0), shape), 2)
    scale = (shape[0] + shape[1]) / (2 * rows.shape[0]) if reg_scaling == "count" else 1.0
    assert estimator.reg_ == pytest.approx(chosen.fraction * lambda_max * scale, rel=1e-9)
    # The path's regs are fractions of lambda_max of the training part: 90% of the entries,
    # held out by a permutation seeded with random_state.
    held = int(round(0.1 * rows.shape[0]))
    train = np.sort(np.random.default_rng(5).permutation(rows.shape[0])[held:])
    train_vals = _centered(rows[train], cols[train], vals[train], shape, center, 10.0)
    train_lambda_max = np.linalg.norm(dense_observed(rows[train], cols[train], train_vals, shape), 2)
    train_scale = (shape[0] + shape[1]) / (2 * train.shape[0]) if reg_scaling == "count" else 1.0
    np.testing.assert_allclose([point.reg for point in path],
                               [point.fraction * train_lambda_max * train_scale for point in path], rtol=1e-9)
    assert estimator.rank_ <= 5 and all(point.rank == 5 for point in path)


def test_auto_reg_split_is_seeded_by_random_state():
    M, mask, (rows, cols, vals) = planted((50, 40), rank=3, fraction=0.5, noise=0.3, seed=3)
    settings = dict(rank=5, method="als", center="global")
    first = lr.MatrixCompletion(random_state=7, **settings).fit(rows, cols, vals, shape=M.shape)
    second = lr.MatrixCompletion(random_state=7, **settings).fit(rows, cols, vals, shape=M.shape)
    assert first.path_ == second.path_ and first.reg_ == second.reg_
    np.testing.assert_array_equal(first.U_, second.U_)
    np.testing.assert_array_equal(first.V_, second.V_)
    # path_[0].reg is lambda_max(training entries), which depends on the split only (with
    # center="global"): another random_state holds out other entries.
    other = lr.MatrixCompletion(random_state=8, **settings).fit(rows, cols, vals, shape=M.shape)
    assert abs(other.path_[0].reg / first.path_[0].reg - 1) > 1e-6
    # On all entries lambda_max is the same: reg_ differs only by the chosen fraction.
    lambda_max = np.linalg.norm(dense_observed(rows, cols, vals - vals.mean(), M.shape), 2)
    for estimator in (first, other):
        assert estimator.reg_ / lambda_max == pytest.approx(
            min(estimator.path_, key=lambda p: p.validation_rmse).fraction, rel=1e-9)


def test_auto_reg_is_close_to_the_best_fixed_reg_of_a_grid():
    """A noisy rank-3 matrix with offsets, fitted at rank 8: reg="auto" predicts the unseen
    entries about as well as the best of 13 fixed penalties (chosen with the truth), far better
    than no penalty (overfit) or a huge one (only the offsets)."""
    M, mask, (rows, cols, vals) = planted((150, 120), rank=3, fraction=0.3, noise=0.3, seed=1)
    settings = dict(rank=8, method="als", center="both", bias_reg=1.0, random_state=0)
    auto = lr.MatrixCompletion(**settings).fit(rows, cols, vals, shape=M.shape)
    assert auto.path_ and auto.reg_ > 0
    lambda_max = np.linalg.norm(dense_observed(rows, cols, vals - vals.mean(), M.shape), 2)
    grid = lambda_max * np.geomspace(1 / 1024, 1, 13)
    errors = [held_out_rmse(lr.MatrixCompletion(reg=reg, **settings).fit(rows, cols, vals, shape=M.shape), M, mask)
              for reg in grid]
    best = min(errors)
    auto_error = held_out_rmse(auto, M, mask)
    assert auto_error <= 1.05 * best
    unpenalized = lr.MatrixCompletion(reg=0.0, **settings).fit(rows, cols, vals, shape=M.shape)
    huge = held_out_rmse(lr.MatrixCompletion(reg=10 * lambda_max, **settings).fit(rows, cols, vals, shape=M.shape),
                         M, mask)
    # No penalty overfits: it fits the training entries closer and predicts the others worse.
    assert unpenalized.train_rmse_ < auto.train_rmse_
    assert held_out_rmse(unpenalized, M, mask) > 1.5 * auto_error
    assert huge > 4 * auto_error
    assert max(errors) > 2 * best  # the grid spans penalties that matter


def pure_noise_ratings(seed):
    """Ratings 1-5 drawn at random plus a row effect (no low-rank part) at 6,000 of 300 x 200
    entries: (rows, cols, vals) of 5,000 training and 1,000 held-out entries, and the shape."""
    rng = np.random.default_rng(seed)
    shape, nnz = (300, 200), 6000
    flat = rng.choice(shape[0] * shape[1], nnz, replace=False)
    rows, cols = flat // shape[1], flat % shape[1]
    vals = rng.integers(1, 6, nnz).astype(float) + 0.5 * rng.standard_normal(shape[0])[rows]
    order = rng.permutation(nnz)
    test, train = order[:1000], order[1000:]
    return (rows[train], cols[train], vals[train]), (rows[test], cols[test], vals[test]), shape


@pytest.mark.parametrize("method, seed", [("soft_impute", 0), ("soft_impute", 1), ("soft_impute", 2), ("als", 0)])
def test_auto_reg_on_pure_noise_is_the_offsets_only_model(method, seed):
    """With nothing low-rank to find, the path's k = 0 point (lambda_max: the offsets alone) wins,
    and the fit predicts held-out entries as well as the offsets-only ridge solved by numpy."""
    (rows, cols, vals), (test_rows, test_cols, test_vals), shape = pure_noise_ratings(seed)
    estimator = lr.MatrixCompletion(method=method, random_state=0).fit(rows, cols, vals, shape=shape)
    mu, a, b = exact_offsets(rows, cols, vals, shape, 10.0)  # bias_reg's default: the offsets' ridge
    offsets_only = np.sqrt(np.mean((mu + a[test_rows] + b[test_cols] - test_vals) ** 2))
    held_out = -estimator.score(test_rows, test_cols, test_vals)
    assert held_out <= offsets_only + 1e-8
    mean_only = np.sqrt(np.mean((vals.mean() - test_vals) ** 2))
    assert offsets_only < mean_only - 0.01  # the row effects are there to find: the comparison has teeth
    assert min(estimator.path_, key=lambda point: point.validation_rmse) is estimator.path_[0]
    assert estimator.path_[0].fraction == 1.0 and estimator.rank_ == 0 and estimator.n_iter_ == 0
    assert not np.any(estimator.U_) and not np.any(estimator.V_) and estimator.converged_
    assert estimator.intercept_ == pytest.approx(mu, abs=1e-6)
    np.testing.assert_allclose(estimator.row_bias_, a, atol=1e-6)
    np.testing.assert_allclose(estimator.col_bias_, b, atol=1e-6)
    # reg_ is lambda_max of all entries minus the offsets (the point where U V^T becomes zero).
    lambda_max = np.linalg.norm(dense_observed(rows, cols, vals - (mu + a[rows] + b[cols]), shape), 2)
    assert estimator.reg_ == pytest.approx(lambda_max, rel=1e-3)


def test_auto_reg_on_planted_low_rank_still_recovers_the_rank():
    """mu + a centered rank-3 matrix + noise 0.1, half observed: the path picks a small penalty
    (not the offsets-only point), U_ V_^T has 3 directions above the noise and the unseen
    entries are predicted to below the noise level."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        U, V = rng.standard_normal((100, 3)), rng.standard_normal((80, 3))
        M = 3.5 + (U - U.mean(0)) @ (V - V.mean(0)).T
        mask = rng.random(M.shape) < 0.5
        rows, cols = np.nonzero(mask)
        vals = M[rows, cols] + 0.1 * rng.standard_normal(rows.size)
        estimator = lr.MatrixCompletion(random_state=0).fit(rows, cols, vals, shape=M.shape)
        chosen = min(estimator.path_, key=lambda point: point.validation_rmse)
        assert chosen.fraction < 0.05 and chosen.validation_rmse < 0.2 * estimator.path_[0].validation_rmse
        singular_values = np.linalg.svd(estimator.U_ @ estimator.V_.T, compute_uv=False)
        assert np.sum(singular_values > 0.05 * singular_values[0]) == 3
        assert held_out_rmse(estimator, M, mask) < 0.09  # measured 0.074-0.086, before and after k = 0 joined the path


def test_auto_reg_on_small_noisy_data_beats_the_mean_and_offsets_only_predictors():
    """The audit's small case (150 training entries of a 30 x 25 rank-2 matrix, noise 0.7: too
    few for a path): averaged over 5 seeds, the default predicts 40 held-out entries better than
    the training mean and than the offsets-only ridge (numpy); lambda_max / 50 overfit them."""
    errors = {"default": [], "mean": [], "offsets": []}
    for seed in range(5):
        rng = np.random.default_rng(seed)
        U, V = rng.standard_normal((30, 2)), rng.standard_normal((25, 2))
        flat = rng.choice(30 * 25, 190, replace=False)
        rows, cols = flat // 25, flat % 25
        vals = 3 + 0.5 * (U @ V.T)[rows, cols] + 0.7 * rng.standard_normal(190)
        order = rng.permutation(190)
        test, train = order[:40], order[40:]
        estimator = lr.MatrixCompletion(random_state=0).fit(rows[train], cols[train], vals[train], shape=(30, 25))
        assert estimator.path_ == []
        mu, a, b = exact_offsets(rows[train], cols[train], vals[train], (30, 25), 10.0)
        predictions = {"default": estimator.predict(rows[test], cols[test]),
                       "mean": np.full(40, vals[train].mean()), "offsets": mu + a[rows[test]] + b[cols[test]]}
        for name, predicted in predictions.items():
            errors[name].append(np.sqrt(np.mean((predicted - vals[test]) ** 2)))
    default = np.mean(errors["default"])  # measured 0.993 (lambda_max / 50: 1.044); mean 1.000, offsets 1.009
    assert default < np.mean(errors["mean"]) and default < np.mean(errors["offsets"])


def rounded_ratings(seed, shape, nnz, power_law):
    """datasets.synthetic_ratings as (rows, cols, vals) of the training 90% and the held-out 10%."""
    train, test = datasets.synthetic_ratings(seed, shape, nnz, power_law=power_law)
    return (train.rows, train.cols, train.vals), (test.rows, test.cols, test.vals)


def offsets_only_rmse(train, test, shape, bias_reg=10.0):
    """Held-out RMSE of mu + a_i + b_j fitted alone (the ridge of bias_reg's default), solved by
    scipy's LSQR on the sparse design."""
    from scipy.sparse import csr_matrix, vstack
    from scipy.sparse.linalg import lsqr
    (rows, cols, vals), (test_rows, test_cols, test_vals) = train, test
    n1, n2 = shape
    nnz = rows.shape[0]
    entries = np.arange(nnz)
    design = csr_matrix((np.ones(3 * nnz), (np.tile(entries, 3), np.concatenate([np.zeros(nnz, int), 1 + rows, 1 + n1 + cols]))),
                        shape=(nnz, 1 + n1 + n2))
    ridge = csr_matrix((np.full(n1 + n2, np.sqrt(bias_reg)), (np.arange(n1 + n2), 1 + np.arange(n1 + n2))),
                       shape=(n1 + n2, 1 + n1 + n2))
    solution = lsqr(vstack([design, ridge]), np.concatenate([vals, np.zeros(n1 + n2)]), atol=1e-12, btol=1e-12,
                    iter_lim=10_000)[0]
    predicted = solution[0] + solution[1 + test_rows] + solution[1 + n1 + test_cols]
    return float(np.sqrt(np.mean((predicted - test_vals) ** 2)))


@pytest.mark.parametrize("seed", [4, 8, 10])
def test_default_on_sparse_ratings_is_no_worse_than_the_offsets_alone(seed):
    """2,000 ratings of 800 x 600 (2.5 a row): the low-rank part cannot be told from noise. The
    default fell to 1.03-1.09x the offsets' held-out RMSE on 10 of seeds 0-23 (these three among
    them) when the path fitted the residual of fixed offsets while the final fit let the factors
    absorb them; now it is the offsets model on all 24."""
    train, test = rounded_ratings(seed, (800, 600), 2000, power_law=False)
    estimator = lr.MatrixCompletion(random_state=0).fit(*train, shape=(800, 600))
    assert -estimator.score(*test) <= offsets_only_rmse(train, test, (800, 600)) + 1e-6


@pytest.mark.parametrize("seed", [0, 2])
def test_default_on_power_law_ratings_beats_the_offsets_and_stays_on_the_scale(seed):
    """Power-law ratings of 1,000 x 800 (61,146 and 48,002 training ones): the default predicts
    held-out ratings better than the offsets alone and near the 1-5 scale. With 5 sweeps a path
    point it chose a penalty that fitted the noise once converged: 1.008x and 0.987x the offsets'
    RMSE, predictions from -1.3 to 8.8. Measured now: 0.950x (seed 0, the path's refit of 5
    directions: predictions 1.0 to 6.2; 0.960x and 1.5 to 5.4 without it) and 0.966x."""
    train, test = rounded_ratings(seed, (1000, 800), 100_000, power_law=True)
    estimator = lr.MatrixCompletion(random_state=0).fit(*train, shape=(1000, 800))
    assert -estimator.score(*test) < 0.98 * offsets_only_rmse(train, test, (1000, 800))
    predicted = estimator.predict(test[0], test[1])
    assert predicted.min() > 0 and predicted.max() < 6.5


def test_too_few_entries_for_a_validation_split_fall_back_to_half_lambda_max():
    rng = np.random.default_rng(0)
    X = np.full((10, 8), np.nan)
    X.flat[rng.choice(80, 30, replace=False)] = 2.0 + rng.standard_normal(30)
    rows, cols = np.nonzero(~np.isnan(X))
    vals = X[rows, cols]
    for method in ("als", "soft_impute"):
        estimator = lr.MatrixCompletion(rank=2, method=method, center="global", random_state=0).fit(X)
        assert estimator.path_ == []
        lambda_max = np.linalg.norm(dense_observed(rows, cols, vals - vals.mean(), X.shape), 2)
        assert estimator.reg_ == pytest.approx(lambda_max / 2, rel=1e-9)
        assert estimator.intercept_ == pytest.approx(vals.mean(), abs=0.5)
        # Pure noise: the penalty leaves most of it in the residual (0.67 std; lambda_max / 50 left 0.2-0.24).
        assert np.all(np.isfinite(estimator.U_)) and 0.5 * np.std(vals) < estimator.train_rmse_ < np.std(vals)


# ---------------------------------------------------------------------- rank="auto"
def test_auto_rank_with_soft_impute_grows_the_bound_and_is_rejected_for_als():
    """Rank 14 plus offsets: the first bound, 10, is too narrow, so it is doubled."""
    M, mask, (rows, cols, vals) = planted((80, 60), rank=14, fraction=0.7, noise=0.01, seed=0)
    estimator = lr.MatrixCompletion(rank="auto", method="soft_impute", random_state=0).fit(rows, cols, vals,
                                                                                           shape=M.shape)
    bound = estimator.U_.shape[1]
    assert bound in (20, 40) and estimator.V_.shape == (60, bound)  # doubled from 10 at least once
    assert {point.rank for point in estimator.path_} >= {10, 20}
    assert 14 <= estimator.rank_ <= bound
    singular_values = np.linalg.svd(estimator.U_ @ estimator.V_.T, compute_uv=False)
    assert estimator.rank_ == int(np.sum(singular_values > 1e-8 * singular_values[0]))
    error = held_out_rmse(estimator, M, mask)
    assert error < 0.5  # entries of M have standard deviation 4
    # The fixed bound 10 cannot hold rank 14: rank="auto" is several times more accurate.
    narrow = lr.MatrixCompletion(rank=10, method="soft_impute", random_state=0).fit(rows, cols, vals, shape=M.shape)
    assert narrow.rank_ <= 10 and held_out_rmse(narrow, M, mask) > 3 * error
    with pytest.raises(ValueError, match="rank='auto' needs method 'auto' or 'soft_impute'"):
        lr.MatrixCompletion(rank="auto", method="als").fit(rows, cols, vals, shape=M.shape)
    with pytest.raises(ValueError, match="rank"):
        lr.MatrixCompletion(rank="big", method="soft_impute").fit(rows, cols, vals, shape=M.shape)


# ---------------------------------------------------------------------- checkpoint, callback, dtype
@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_checkpoint_rerun_is_identical_and_callback_sees_the_offsets(method, tmp_path):
    M, mask, (rows, cols, vals) = planted((60, 50), rank=3, fraction=0.5, noise=0.05)
    path = tmp_path / "fit.npz"
    calls = []
    settings = dict(rank=5, method=method, center="global", random_state=0)
    first = lr.MatrixCompletion(checkpoint=str(path), callback=lambda i, info: calls.append((i, info)),
                                **settings).fit(rows, cols, vals, shape=M.shape)
    assert path.exists() and path.stat().st_size > 0
    assert calls and [i for i, _ in calls] == list(range(1, len(calls) + 1))
    offsets = calls[0][1]["offsets"]
    assert isinstance(offsets, Offsets)
    if method == "als":  # the first round's offsets (center="global"): the mean of the observed values
        assert offsets.intercept == pytest.approx(float(vals.mean()), rel=1e-12)
    else:  # soft-impute refits them after every sweep: the mean of vals minus that sweep's U V^T
        for _, info in calls[:3]:
            lowrank = np.einsum("kr,kr->k", info["U"][rows], info["V"][cols])
            assert info["offsets"].intercept == pytest.approx(float(np.mean(vals - lowrank)), rel=1e-10)
    assert {"U", "V", "loss", "relative_change"} <= set(calls[0][1])
    again = lr.MatrixCompletion(checkpoint=str(path), **settings).fit(rows, cols, vals, shape=M.shape)
    np.testing.assert_array_equal(again.U_, first.U_)
    np.testing.assert_array_equal(again.V_, first.V_)
    plain = lr.MatrixCompletion(**settings).fit(rows, cols, vals, shape=M.shape)
    np.testing.assert_array_equal(plain.U_, first.U_)
    assert held_out_rmse(first, M, mask) < 0.1  # rank 5 holds the rank-3 part and a_i + b_j


def test_callback_offsets_with_center_both_have_the_row_and_column_shapes():
    M, mask, (rows, cols, vals) = planted((40, 30), rank=2, fraction=0.6)
    seen = []
    lr.MatrixCompletion(rank=2, method="als", reg=0.5, max_iter=5, random_state=0,
                        callback=lambda i, info: seen.append(info["offsets"])).fit(rows, cols, vals, shape=M.shape)
    assert seen and seen[0].row.shape == (40,) and seen[0].col.shape == (30,)
    start = fit_offsets(rows, cols, vals, M.shape, "both", 10.0, zero_offsets(np, M.shape, vals.dtype),
                        sweeps=OFFSET_SWEEPS)
    assert seen[0].intercept == pytest.approx(start.intercept, rel=1e-12)
    np.testing.assert_allclose(seen[0].row, start.row, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_float32_input_gives_a_float32_model(method):
    M, mask, (rows, cols, vals) = planted((50, 40), rank=3, fraction=0.5, noise=0.05)
    settings = dict(rank=3, method=method, reg=0.5, bias_reg=1.0, random_state=0)
    single = lr.MatrixCompletion(**settings).fit(rows, cols, vals.astype(np.float32), shape=M.shape)
    double = lr.MatrixCompletion(**settings).fit(rows, cols, vals, shape=M.shape)
    assert single.U_.dtype == single.V_.dtype == np.float32
    assert single.row_bias_.dtype == single.col_bias_.dtype == np.float32
    assert isinstance(single.intercept_, float)
    held_rows, held_cols = np.nonzero(~mask)
    predicted = single.predict(held_rows, held_cols)
    assert predicted.dtype == np.float32
    np.testing.assert_allclose(predicted, double.predict(held_rows, held_cols), rtol=0, atol=1e-4)
    assert held_out_rmse(single, M, mask) < 0.2


# ---------------------------------------------------------------- the refit of the leading directions
def test_refitted_directions_are_the_least_squares_solution_of_numpy():
    """_refitted keeps the leading k singular directions of U V^T (numpy's SVD) and refits their
    weights by least squares at the entries: against numpy's lstsq on the explicit design matrix."""
    from lowrank_hpc.recover._result import RecoveryResult
    from lowrank_hpc.recover.completion_fit import _refitted

    rng = np.random.default_rng(4)
    shape, rank, k = (70, 50), 6, 4
    U, V = rng.standard_normal((shape[0], rank)), rng.standard_normal((shape[1], rank))
    flat = rng.choice(shape[0] * shape[1], 1500, replace=False)
    rows, cols = flat // shape[1], flat % shape[1]
    target = rng.standard_normal(1500) + (U @ V.T)[rows, cols]
    result = RecoveryResult(U=U, V=V, history={}, n_iter=1, converged=True, stop_reason="converged", seconds=0.0,
                            backend="cpu", info={"singular_values": np.zeros(rank)})
    refit = _refitted(result, rows, cols, target, k)
    # The penalized fit's rows map onto the refitted ones: U_pen @ refit_map = U (how rows fold in).
    assert refit.info["penalized_V"] is V
    np.testing.assert_allclose(U @ refit.info["refit_map"], refit.U, rtol=1e-9, atol=1e-9)
    A, _, Bt = np.linalg.svd(U @ V.T)
    design = A[rows, :k] * Bt[:k].T[cols]
    weights = np.linalg.lstsq(design, target, rcond=None)[0]
    expected = (A[:, :k] * weights) @ Bt[:k]
    np.testing.assert_allclose(refit.U @ refit.V.T, expected, rtol=1e-9, atol=1e-9)
    assert refit.U.shape == (shape[0], rank) and not refit.U[:, k:].any()  # zero columns up to the bound
    np.testing.assert_allclose(refit.info["singular_values"][:k], np.sort(np.abs(weights))[::-1], rtol=1e-9)
    assert refit.info["effective_rank"] == k and refit.info["refit_rank"] == k


def test_default_refit_finds_the_rank_and_predicts_better_on_ratings():
    """Ratings of rank 5 plus offsets and noise, 135,000 entries (13,500 held out): the penalty
    that silences the noise shrinks the signal too. The refit the path offers finds the 5
    directions and predicts unseen ratings better than the penalized fit (0.6063 against 0.6192
    when written); debias=False is that penalized fit, with no refit on its path."""
    train, test = datasets.synthetic_ratings(0, (2000, 1000), 150_000, power_law=False)
    fits = {debias: lr.MatrixCompletion(random_state=0, debias=debias).fit(train.rows, train.cols, train.vals,
                                                                            shape=(2000, 1000))
            for debias in ("auto", False)}
    errors = {debias: float(np.sqrt(np.mean((fit.predict(test.rows, test.cols) - test.vals) ** 2)))
              for debias, fit in fits.items()}
    chosen = min(fits["auto"].path_, key=lambda point: point.validation_rmse)
    assert chosen.refit_rank == 5 and fits["auto"].rank_ == 5
    assert fits["auto"].result_.info["refit_rank"] == 5
    assert errors["auto"] < 0.985 * errors[False]
    assert all(point.refit_rank is None for point in fits[False].path_) and "refit_rank" not in fits[False].result_.info


def test_refit_needs_1000_held_out_entries_unless_asked_for():
    """On fewer held-out entries the refits' rank choices fit the validation noise: "auto" offers
    none there (the fit is debias=False's, bit for bit); True offers them anyway."""
    M, mask, (rows, cols, vals) = planted((80, 60), rank=3, fraction=0.5, noise=0.3, seed=2)  # 2,400 entries
    settings = dict(rank=6, random_state=1)
    auto = lr.MatrixCompletion(**settings).fit(rows, cols, vals, shape=M.shape)
    plain = lr.MatrixCompletion(debias=False, **settings).fit(rows, cols, vals, shape=M.shape)
    assert all(point.refit_rank is None for point in auto.path_)
    np.testing.assert_array_equal(auto.U_, plain.U_)
    forced = lr.MatrixCompletion(debias=np.True_, **settings).fit(rows, cols, vals, shape=M.shape)  # numpy's bool too
    assert all(point.refit_rank is not None for point in forced.path_[1:])  # path_[0]: the offsets alone
    chosen = min(forced.path_, key=lambda point: point.validation_rmse)
    assert forced.result_.info["refit_rank"] == chosen.refit_rank == forced.rank_


@pytest.mark.parametrize("method", ["als", "soft_impute"])
def test_debias_true_with_a_fixed_reg_refits_every_direction(method):
    M, mask, (rows, cols, vals) = planted((60, 50), rank=3, fraction=0.6, noise=0.1, seed=5)
    settings = dict(rank=4, method=method, reg=2.0, random_state=0)
    plain = lr.MatrixCompletion(debias=False, **settings).fit(rows, cols, vals, shape=M.shape)
    refit = lr.MatrixCompletion(debias=True, **settings).fit(rows, cols, vals, shape=M.shape)
    assert refit.result_.info["refit_rank"] == plain.rank_ and refit.path_ == []
    assert refit.train_rmse_ < plain.train_rmse_  # the penalty's shrinkage undone on the same directions
    # The refit's directions are the penalized fit's: the column spaces agree.
    Qp, Qr = np.linalg.qr(plain.U_[:, :plain.rank_])[0], np.linalg.qr(refit.U_[:, :refit.rank_])[0]
    np.testing.assert_allclose(np.linalg.svd(Qp.T @ Qr, compute_uv=False), 1.0, atol=1e-6)


@pytest.mark.parametrize("settings, message", [
    (dict(debias="yes"), "debias must be 'auto', True or False"),
    (dict(debias=1), "debias must be 'auto', True or False"),
    (dict(debias=True, method="gd"), "debias=True refits"),
    (dict(debias=True, method="als", feedback="implicit"), "debias=True refits"),
])
def test_debias_settings_are_checked(settings, message):
    M, mask, (rows, cols, vals) = planted((30, 20), rank=2, fraction=0.6, seed=1)
    with pytest.raises(ValueError, match=message):
        lr.MatrixCompletion(rank=2, **settings).fit(rows, cols, np.abs(vals), shape=M.shape)


@pytest.mark.parametrize("method", ["soft_impute", "als"])
def test_rows_folded_in_after_a_refit_are_the_refitted_rows(method):
    """transform/predict(X) fold a row in against the penalized V with the fit's penalty and map
    it onto the refitted directions: the training rows come back as U_ (to the solver's own
    tolerance) and predict(X) agrees with predict(rows, cols); folded in against the refitted V_
    with the penalty they were 6.6% off U_ and predicted the hidden entries 24% worse."""
    rng = np.random.default_rng(0)
    L = rng.standard_normal((200, 3)) @ rng.standard_normal((3, 150))
    mask = rng.random(L.shape) < 0.5
    X = np.where(mask, L + 0.5 * rng.standard_normal(L.shape), np.nan)
    estimator = lr.MatrixCompletion(method=method, debias=True, random_state=0).fit(X)
    assert estimator.result_.info["refit_rank"] >= 3
    assert np.linalg.norm(estimator.transform(X) - estimator.U_) <= 0.03 * np.linalg.norm(estimator.U_)
    hidden_rows, hidden_cols = np.nonzero(~mask)
    np.testing.assert_allclose(estimator.predict(X)[hidden_rows, hidden_cols],
                               estimator.predict(hidden_rows, hidden_cols), atol=0.05 * np.abs(L).max())


def test_refit_stops_before_a_direction_the_entries_do_not_see():
    """A direction of U V^T whose rows hold no entry has a zero row in the Gram: the leading refits
    stop before it (it is neither scored nor applied), and refit_rank says how many were refitted."""
    from lowrank_hpc.recover._result import RecoveryResult
    from lowrank_hpc.recover.completion_fit import _refitted

    rng = np.random.default_rng(1)
    U, V = np.zeros((40, 2)), np.linalg.qr(rng.standard_normal((30, 2)))[0]  # orthonormal V: U's columns are the directions
    U[:20, 0], U[20:, 1] = rng.standard_normal(20), 0.1 * rng.standard_normal(20)  # direction 2: rows 20-39 only
    rows, cols = rng.integers(0, 20, 300), rng.integers(0, 30, 300)  # no entry in rows 20-39
    target = (U @ V.T)[rows, cols] * 1.5
    result = RecoveryResult(U=U, V=V, history={}, n_iter=1, converged=True, stop_reason="converged", seconds=0.0,
                            backend="cpu", info={})
    refit = _refitted(result, rows, cols, target, 2)
    assert refit.info["refit_rank"] == 1 and refit.info["effective_rank"] == 1
    # The one direction seen, its weight refitted: 1.5 times the first column's product.
    np.testing.assert_allclose((refit.U @ refit.V.T)[:20], 1.5 * np.outer(U[:20, 0], V[:, 0]), rtol=1e-9, atol=1e-9)
    assert np.abs(refit.U[20:]).max() < 1e-12  # the unseen rows: rounding of the QR only
