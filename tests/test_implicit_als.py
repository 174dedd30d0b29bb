"""Implicit-feedback ALS (Hu, Koren, Volinsky 2008) against a dense numpy transcription of the
paper: the objective over every pair, each row's exact weighted ridge solve, and CG's approach to it."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc.recover import implicit_als


def interactions(seed=0, m=40, n=30, density=0.2):
    rng = np.random.default_rng(seed)
    mask = rng.random((m, n)) < density
    mask[0, 0] = True
    counts = np.where(mask, rng.integers(1, 20, size=(m, n)).astype(np.float64), 0.0)
    rows, cols = np.nonzero(mask)
    return counts, rows, cols, counts[rows, cols]


def dense_loss(counts, X, Y, alpha, reg):
    preference = (counts > 0).astype(np.float64)
    confidence = 1.0 + alpha * counts
    return float(np.sum(confidence * (preference - X @ Y.T) ** 2) + reg * (np.sum(X * X) + np.sum(Y * Y)))


def dense_half_step(counts, Y, alpha, reg):
    """Each row's minimiser given Y: (Y^T C_u Y + reg I) x_u = Y^T C_u p_u over every column."""
    preference = (counts > 0).astype(np.float64)
    confidence = 1.0 + alpha * counts
    r = Y.shape[1]
    return np.stack([np.linalg.solve((Y.T * c) @ Y + reg * np.eye(r), (Y.T * c) @ p)
                     for c, p in zip(confidence, preference)])


@pytest.mark.parametrize("alpha,reg", [(1.0, 0.01), (10.0, 0.5), (0.0, 0.1)])
def test_exact_solver_is_the_papers_alternating_minimisation(alpha, reg):
    counts, rows, cols, vals = interactions()
    result = implicit_als(rows, cols, vals, counts.shape, 5, reg=reg, alpha=alpha, solver="exact", max_iter=4,
                          seed=3)
    # The same start (X = 0, Y from the seed) replayed with dense solves.
    start = implicit_als(rows, cols, vals, counts.shape, 5, reg=reg, alpha=alpha, solver="exact", max_iter=0, seed=3)
    Y = np.asarray(start.V)
    losses = []
    for _ in range(4):
        X = dense_half_step(counts, Y, alpha, reg)
        Y = dense_half_step(counts.T, X, alpha, reg)
        losses.append(dense_loss(counts, X, Y, alpha, reg))
    np.testing.assert_allclose(result.U, X, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.V, Y, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(result.history["loss"], losses, rtol=1e-10)
    assert np.all(np.diff(result.history["loss"]) <= 1e-9 * losses[0])  # exact alternating steps never rise


def test_cg_approaches_the_exact_half_steps_and_its_loss():
    counts, rows, cols, vals = interactions(seed=1, m=60, n=45)
    exact = implicit_als(rows, cols, vals, counts.shape, 6, alpha=5.0, solver="exact", max_iter=10, seed=0)
    many = implicit_als(rows, cols, vals, counts.shape, 6, alpha=5.0, cg_steps=30, max_iter=10, seed=0)
    default = implicit_als(rows, cols, vals, counts.shape, 6, alpha=5.0, max_iter=10, seed=0)
    # CG run to convergence (30 steps >= rank 6) is the exact solve.
    np.testing.assert_allclose(many.U @ many.V.T, exact.U @ exact.V.T, rtol=1e-7, atol=1e-8)
    # Three warm-started steps: the loss within 1% of the exact solver's after 10 iterations.
    assert default.history["loss"][-1] <= 1.01 * exact.history["loss"][-1]
    assert default.history["loss"][-1] < 0.5 * default.history["loss"][0]
    # The reported loss is the dense objective of the returned factors.
    assert default.history["loss"][-1] == pytest.approx(dense_loss(counts, default.U, default.V, 5.0, 0.01), rel=1e-10)


def dense_cg_half_step(counts, X, Y, alpha, reg, steps):
    """``steps`` CG steps on each row's system from its row of X (Takacs, Pilaszy and Tikk 2011):
    a transcription over dense rows, for the fused kernel's iterates. A row without interactions
    takes its exact solution, zero (its right-hand side is zero), as the kernel does."""
    preference = (counts > 0).astype(np.float64)
    weights = alpha * counts
    out = X.copy()
    gram = Y.T @ Y + reg * np.eye(Y.shape[1])
    for u in range(counts.shape[0]):
        if not counts[u].any():
            out[u] = 0
            continue
        system = gram + (Y.T * weights[u]) @ Y
        x = out[u]
        residual = (Y.T * (1.0 + weights[u])) @ preference[u] - system @ x
        direction, squared = residual.copy(), residual @ residual
        for _ in range(steps):
            if squared == 0:
                break
            product = system @ direction
            step = squared / (direction @ product)
            x = x + step * direction
            residual = residual - step * product
            new_squared = residual @ residual
            direction, squared = residual + new_squared / squared * direction, new_squared
        out[u] = x
    return out


@pytest.mark.parametrize("rank", [1, 3, 4, 8, 16, 20, 32, 40, 64, 70])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cg_steps_are_the_papers_iterates_at_every_rank(rank, dtype):
    """One iteration of 2 CG steps per half-step, at compiled ranks (1, 4, 8, 16, 32) and run-time
    ones (the host's register tiles are 32 doubles or 64 floats wide: 40, 64 and 70 take whole
    tiles and a rest), with an empty row and an empty column (their factors are zero, the exact
    solution)."""
    counts, rows, cols, vals = interactions(seed=7, m=90, n=80, density=0.3)
    keep = (rows != 5) & (cols != 7)
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    counts[5, :] = counts[:, 7] = 0
    vals = vals.astype(dtype)
    start = implicit_als(rows, cols, vals, counts.shape, rank, alpha=2.0, reg=0.1, max_iter=0, seed=4)
    result = implicit_als(rows, cols, vals, counts.shape, rank, alpha=2.0, reg=0.1, cg_steps=2, max_iter=1, seed=4)
    X = dense_cg_half_step(counts, np.asarray(start.U, np.float64), np.asarray(start.V, np.float64), 2.0, 0.1, 2)
    Y = dense_cg_half_step(counts.T, np.asarray(start.V, np.float64), X, 2.0, 0.1, 2)
    tolerance = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-5)
    np.testing.assert_allclose(result.U, X, **tolerance)
    np.testing.assert_allclose(result.V, Y, **tolerance)
    assert not result.U[5].any() and not result.V[7].any()


@pytest.mark.parametrize("rank", [16, 40, 128])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cg_rows_stepping_together_each_take_their_own_steps(rank, dtype):
    """With a shared term the CPU kernel steps up to 8 rows of a problem together (one pass over S
    a step for them all): each row must come out bit for bit as when solved alone, across
    problems, with empty rows, a heavy row, and a row whose residual is zero from the start (it
    takes no step while the rows beside it do)."""
    from lowrank_hpc import _backend

    module = _backend.cpu_module()
    rng = np.random.default_rng(rank)
    batch, n_key, n_other = 2, 29, 150
    degrees = rng.integers(1, 40, batch * n_key)
    degrees[[2, 9, 40]] = 0
    degrees[12] = n_other
    others = np.concatenate([rng.choice(n_other, d, replace=False) for d in degrees]).astype(np.int32)
    indptr = np.concatenate([[0], np.cumsum(degrees)]).astype(np.int64)
    vals = rng.uniform(1.0, 4.0, others.size).astype(dtype)
    weights = rng.uniform(0.5, 3.0, others.size).astype(dtype)
    F = rng.standard_normal((batch, n_other, rank)).astype(dtype)
    shared = np.einsum("bkr,bks->brs", F, F).astype(dtype)
    start = rng.standard_normal((batch, n_key, rank)).astype(dtype)
    quiet = 5  # zero values from a zero start: a zero residual, no step
    vals[indptr[quiet]:indptr[quiet + 1]] = 0
    start[0, quiet] = 0
    together = start.copy()
    singular = np.zeros(1, dtype=np.int64)
    module.als_update_rows(indptr, others, vals, F, n_key, 0.1, False, None, 3, together, singular,
                           weights=weights, shared=shared)
    assert not singular.any()
    assert not together[0, quiet].any()
    for b in range(batch):
        for i in range(n_key):
            row = b * n_key + i
            entries = slice(indptr[row], indptr[row + 1])
            alone = start[b, i][None, None].copy()
            module.als_update_rows(np.array([0, degrees[row]], dtype=np.int64), others[entries], vals[entries],
                                   F[b][None], 1, 0.1, False, None, 3, alone, np.zeros(1, dtype=np.int64),
                                   weights=weights[entries], shared=shared[b][None])
            np.testing.assert_array_equal(together[b, i], alone[0, 0], err_msg=f"problem {b} row {i}")
    assert not np.array_equal(together, start)


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_listed_zero_strengths_are_unobserved_pairs(solver):
    """A pair listed with strength 0 has preference 0 at confidence 1: the same as leaving it out."""
    counts, rows, cols, vals = interactions(seed=8)
    zeros = np.argwhere(counts == 0)[::7]
    listed = implicit_als(np.concatenate([rows, zeros[:, 0]]), np.concatenate([cols, zeros[:, 1]]),
                          np.concatenate([vals, np.zeros(len(zeros))]), counts.shape, 4, alpha=3.0, solver=solver,
                          seed=2, max_iter=3)
    left_out = implicit_als(rows, cols, vals, counts.shape, 4, alpha=3.0, solver=solver, seed=2, max_iter=3)
    np.testing.assert_allclose(listed.U, left_out.U, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(listed.history["loss"], left_out.history["loss"], rtol=1e-12)
    assert listed.history["loss"][-1] == pytest.approx(dense_loss(counts, listed.U, listed.V, 3.0, 0.01), rel=1e-10)


def test_observed_pairs_rank_above_unobserved_ones():
    """Planted user and item groups: each user interacts with its group's items; the scores rank
    a held-out pair of the user's group above the other groups' items."""
    rng = np.random.default_rng(5)
    users, items = np.arange(90) % 3, np.arange(60) % 3
    likes = (users[:, None] == items[None, :]) & (rng.random((90, 60)) < 0.6)
    rows, cols = np.nonzero(likes)
    result = implicit_als(rows, cols, rng.integers(1, 5, rows.shape[0]).astype(np.float64), (90, 60), 3,
                          alpha=10.0, reg=0.1, seed=1)
    scores = result.U @ result.V.T
    same = users[:, None] == items[None, :]
    held = same & ~likes
    assert scores[held].mean() > 0.5 and np.abs(scores[~same]).mean() < 0.1


def test_float32_and_reproducible_seed():
    counts, rows, cols, vals = interactions(seed=2)
    a = implicit_als(rows, cols, vals.astype(np.float32), counts.shape, 4, seed=9, max_iter=5)
    b = implicit_als(rows.astype(np.int32), cols, vals.astype(np.float32), counts.shape, 4, seed=9, max_iter=5)
    assert a.U.dtype == np.float32
    np.testing.assert_array_equal(a.U, b.U)
    reference = implicit_als(rows, cols, vals, counts.shape, 4, seed=9, max_iter=5)
    np.testing.assert_allclose(a.U @ a.V.T, reference.U @ reference.V.T, atol=1e-4)


def test_repeated_pairs_add_up():
    """An interaction log lists a pair once per event: the same as one entry holding the sum."""
    counts, rows, cols, vals = interactions(seed=4)
    halves = np.concatenate([vals * 0.25, vals * 0.75])
    order = np.random.default_rng(0).permutation(2 * rows.shape[0])
    logged = implicit_als(np.concatenate([rows, rows])[order], np.concatenate([cols, cols])[order], halves[order],
                          counts.shape, 4, alpha=3.0, seed=2, max_iter=4)
    once = implicit_als(rows, cols, vals, counts.shape, 4, alpha=3.0, seed=2, max_iter=4)
    np.testing.assert_allclose(logged.U, once.U, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(logged.history["loss"], once.history["loss"], rtol=1e-12)


@pytest.mark.parametrize("change,error,match", [
    (dict(vals=-1.0), ValueError, "vals must be >= 0"),
    (dict(alpha=-1.0), ValueError, "alpha"),
    (dict(reg=float("nan")), ValueError, "reg"),
    (dict(solver="lu"), ValueError, "solver"),
    (dict(cg_steps=0), ValueError, "cg_steps"),
    (dict(rank=0), ValueError, "rank"),
    (dict(row=99), IndexError, "rows"),
    (dict(vals=np.nan), ValueError, "vals"),
])
def test_bad_input_is_named(change, error, match):
    counts, rows, cols, vals = interactions()
    rows, cols, vals = rows.copy(), cols.copy(), vals.copy()
    settings = dict(reg=0.01, alpha=1.0, solver="cg", cg_steps=3, max_iter=2, seed=0)
    rank = change.pop("rank", 3)
    if "vals" in change:
        vals[4] = change.pop("vals")
    if "row" in change:
        rows[2] = change.pop("row")
    settings.update(change)
    with pytest.raises(error, match=match):
        implicit_als(rows, cols, vals, counts.shape, rank, **settings)


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_gpu_matches_cpu(solver):
    cupy = pytest.importorskip("cupy")
    counts, rows, cols, vals = interactions(seed=6)
    cpu = implicit_als(rows, cols, vals, counts.shape, 4, alpha=2.0, solver=solver, seed=1, max_iter=5)
    gpu = implicit_als(cupy.asarray(rows), cupy.asarray(cols), cupy.asarray(vals), counts.shape, 4, alpha=2.0,
                       solver=solver, seed=1, max_iter=5)
    assert gpu.backend == "cuda"
    np.testing.assert_allclose(gpu.U.get() @ gpu.V.get().T, cpu.U @ cpu.V.T, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gpu.history["loss"], cpu.history["loss"], rtol=1e-10)


@pytest.mark.parametrize("solver,implicit_solver", [("auto", "cg"), ("cg", "cg"), ("cholesky", "exact")])
def test_als_with_implicit_feedback_is_implicit_als(solver, implicit_solver):
    from lowrank_hpc.recover import als
    counts, rows, cols, vals = interactions(seed=9)
    through_als = als(rows, cols, vals, counts.shape, 4, reg=0.05, feedback="implicit", alpha=4.0, solver=solver,
                      max_iter=3, tol=0.0, seed=5)
    direct = implicit_als(rows, cols, vals, counts.shape, 4, reg=0.05, alpha=4.0, solver=implicit_solver,
                          max_iter=3, seed=5)
    np.testing.assert_array_equal(through_als.U, direct.U)
    np.testing.assert_array_equal(through_als.history["loss"], direct.history["loss"])
    assert through_als.info["solver"] == implicit_solver and through_als.info["alpha"] == 4.0
    assert through_als.history["loss"][-1] == pytest.approx(
        dense_loss(counts, through_als.U, through_als.V, 4.0, 0.05), rel=1e-10)


@pytest.mark.parametrize("change,match", [(dict(feedback="positive"), "feedback"), (dict(alpha=-2.0), "alpha"),
                                          (dict(reg_scaling="count"), "reg_scaling"),
                                          (dict(init=np.zeros((30, 3))), "init")])
def test_als_feedback_settings_are_checked(change, match):
    from lowrank_hpc.recover import als
    counts, rows, cols, vals = interactions()
    settings = dict(feedback="implicit", max_iter=1, seed=0)
    settings.update(change)
    with pytest.raises(ValueError, match=match):
        als(rows, cols, vals, counts.shape, 3, **settings)


def test_matrix_completion_with_implicit_feedback():
    """MatrixCompletion(feedback="implicit") is implicit_als on the entries; transform folds each
    row in by the paper's exact row solve; predict and score use the scores and preferences."""
    from lowrank_hpc import MatrixCompletion
    counts, rows, cols, vals = interactions(seed=10, m=50, n=40)
    model = MatrixCompletion(rank=4, method="als", feedback="implicit", alpha=3.0, reg=0.05, max_iter=6, tol=0.0,
                             random_state=1).fit(rows, cols, vals, shape=counts.shape)
    direct = implicit_als(rows, cols, vals, counts.shape, 4, reg=0.05, alpha=3.0, max_iter=6,
                          seed=model.result_.info["seed"])
    np.testing.assert_array_equal(model.U_, direct.U)
    np.testing.assert_array_equal(model.V_, direct.V)
    assert model.intercept_ == 0.0 and not model.row_bias_.any() and not model.col_bias_.any()
    assert model.reg_ == 0.05 and model.n_iter_ == 6 and model.path_ == []
    # Fold-in of the training rows: each row's exact solve against V_ (NaN counts as no interaction).
    with_nan = np.where(counts > 0, counts, np.nan)
    expected = dense_half_step(counts, np.asarray(model.V_), 3.0, 0.05)
    np.testing.assert_allclose(model.transform(with_nan), expected, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model.transform(counts), expected, rtol=1e-8, atol=1e-12)
    scores = model.predict(rows, cols)
    np.testing.assert_allclose(scores, np.sum(direct.U[rows] * direct.V[cols], axis=1), rtol=1e-12)
    assert model.score(rows, cols, vals) == pytest.approx(-np.sqrt(np.mean((scores - 1.0) ** 2)), rel=1e-12)
    assert model.train_rmse_ == pytest.approx(np.sqrt(np.mean((scores - 1.0) ** 2)), rel=1e-12)
    # A dense count matrix: its zeros are no interaction, the same fit as the listed entries.
    dense = MatrixCompletion(rank=4, method="als", feedback="implicit", alpha=3.0, reg=0.05, max_iter=6, tol=0.0,
                             random_state=1).fit(counts)
    np.testing.assert_array_equal(dense.U_, model.U_)
    # reg="auto" is implicit's 0.01 (there is no held-out RMSE to choose it by).
    auto = MatrixCompletion(rank=4, method="als", feedback="implicit", max_iter=2, random_state=1).fit(
        rows, cols, vals, shape=counts.shape)
    assert auto.reg_ == 0.01 and auto.get_params()["feedback"] == "implicit"


@pytest.mark.parametrize("params,match", [(dict(feedback="binary"), "feedback"),
                                          (dict(feedback="implicit", method="soft_impute"), "method 'auto' or 'als'"),
                                          (dict(feedback="implicit", reg_scaling="count"), "reg_scaling"),
                                          (dict(feedback="implicit", alpha=-1.0), "alpha")])
def test_matrix_completion_feedback_settings_are_checked(params, match):
    from lowrank_hpc import MatrixCompletion
    counts, rows, cols, vals = interactions()
    settings = dict(rank=3, method="als", max_iter=1)
    settings.update(params)
    with pytest.raises(ValueError, match=match):
        MatrixCompletion(**settings).fit(rows, cols, vals, shape=counts.shape)


def test_matrix_completion_implicit_rejects_negative_new_rows():
    from lowrank_hpc import MatrixCompletion
    counts, rows, cols, vals = interactions()
    model = MatrixCompletion(rank=3, method="als", feedback="implicit", max_iter=1, random_state=0).fit(
        rows, cols, vals, shape=counts.shape)
    bad = counts[:2].copy()
    bad[1, 3] = -2.0
    with pytest.raises(ValueError, match=">= 0"):
        model.transform(bad)


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_resumed_run_equals_an_uninterrupted_one(solver, tmp_path):
    """The Grams carried between iterations are not in the checkpoint: a resumed run recomputes
    them and must end with the same factors, losses and relative changes as one run."""
    counts, rows, cols, vals = interactions(seed=11)
    path = str(tmp_path / "state.npz")
    implicit_als(rows, cols, vals, counts.shape, 4, solver=solver, max_iter=3, seed=6, checkpoint=path,
                 checkpoint_every=1)
    resumed = implicit_als(rows, cols, vals, counts.shape, 4, solver=solver, max_iter=6, seed=6, checkpoint=path,
                           checkpoint_every=1)
    whole = implicit_als(rows, cols, vals, counts.shape, 4, solver=solver, max_iter=6, seed=6)
    assert resumed.n_iter == whole.n_iter == 6
    np.testing.assert_array_equal(resumed.U, whole.U)
    np.testing.assert_array_equal(resumed.history["loss"], whole.history["loss"])
    np.testing.assert_array_equal(resumed.history["relative_change"], whole.history["relative_change"])
