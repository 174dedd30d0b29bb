"""factored_gd and batched_factored_gd held to the papers' canonical experiments (small sizes)."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

import lowrank_hpc as lr
import reference
from conftest import run_until_checkpoint_then_kill
from lowrank_hpc.sensing import EntrySampling, GaussianSensing


def _relative(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _psd_target(n: int, r: int, seed: int) -> np.ndarray:
    Z = np.random.default_rng(seed).standard_normal((n, r))
    return Z @ Z.T


def _full_observation(shape):
    """The identity as a completion operator: factorization of a fully observed matrix."""
    rows, cols = np.divmod(np.arange(shape[0] * shape[1], dtype=np.int64), shape[1])
    return EntrySampling(rows, cols, shape)


@pytest.mark.parametrize("rank", [2, 10])
def test_symmetric_gaussian_sensing_from_small_init(rank):
    """Stoger & Soltanolkotabi: n = 50, true rank 2, m = 10 n r, exact and over-parameterized."""
    n, r = 50, 2
    M = _psd_target(n, r, seed=1)
    op = GaussianSensing(10 * n * r, (n, n), seed=3, symmetric=True)
    # Over-parameterized symmetric GD converges sublinearly (Xiong, Ding & Du): a modest tol.
    result = lr.recover.factored_gd(op, op.forward(M), rank, symmetric=True, init="small", init_scale=1e-3,
                                    max_iter=3000, tol=1e-5, seed=0)
    assert result.converged
    assert _relative(result.X, M) < 1e-3
    np.testing.assert_array_equal(result.U, result.V)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_asymmetric_factorization_converges_globally_from_random_init(seed):
    """Ye & Du: min 1/2 ||U V^T - S||^2 with exact width from small random init, any seed."""
    rng = np.random.default_rng(100 + seed)
    S = rng.standard_normal((30, 3)) @ rng.standard_normal((3, 20))
    op = _full_observation(S.shape)
    result = lr.recover.factored_gd(op, op.forward(S), 3, init="small", init_scale=1e-3, max_iter=5000,
                                    tol=1e-9, seed=seed)
    assert result.converged, result
    assert _relative(result.U @ result.V.T, S) < 1e-8


def _conditioned(n: int, r: int, kappa: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, r)))
    right, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (left * np.linspace(1, 1 / kappa, r)) @ right.T


def _iterations_to(method: str, kappa: float, max_iter: int = 1500) -> int:
    """Iterations to a relative residual of 1e-6 (max_iter when not reached)."""
    n, r = 40, 3
    M = _conditioned(n, r, kappa, seed=5)
    op = GaussianSensing(5 * n * r, (n, n), seed=9)
    result = lr.recover.factored_gd(op, op.forward(M), r, method=method, init="spectral", max_iter=max_iter,
                                    tol=1e-6, seed=0)
    if result.stop_reason == "converged":
        assert _relative(result.U @ result.V.T, M) < 1e-4
    return result.n_iter


def test_scaled_gd_iterations_do_not_grow_with_condition_number():
    """Tong, Ma & Chi: ScaledGD's linear rate is independent of kappa; GD's degrades with it."""
    scaled = {kappa: _iterations_to("scaled", kappa) for kappa in (1, 50)}
    plain = {kappa: _iterations_to("gd", kappa) for kappa in (1, 50)}
    assert max(scaled.values()) < 300
    assert scaled[50] <= 2 * scaled[1]
    assert plain[50] >= 10 * plain[1]
    assert plain[50] >= 10 * scaled[50]


def _overparameterized_run(method: str, alpha: float, max_iter: int):
    """Xiong, Ding & Du's setting on factorization: n = 50, r = 3, width k = 5, step 0.1."""
    S = _conditioned(50, 3, 1.0, seed=11) * np.sqrt(3)
    op = _full_observation(S.shape)
    return lr.recover.factored_gd(op, op.forward(S), 5, method=method, init="small", init_scale=alpha,
                                  step=0.1, max_iter=max_iter, tol=1e-7, seed=0), S


def test_overparameterized_gd_slows_with_small_init_and_rebalancing_fixes_it():
    runs = {(method, alpha): _overparameterized_run(method, alpha, 3000)
            for method in ("gd", "gd_rebalanced") for alpha in (1.0, 0.3)}
    for (method, alpha), (result, S) in runs.items():
        assert result.converged and _relative(result.U @ result.V.T, S) < 1e-6, (method, alpha, result)
    # Plain GD converges linearly, ten times slower when the init is about three times smaller.
    assert runs["gd", 0.3][0].n_iter >= 5 * runs["gd", 1.0][0].n_iter
    # The rebalanced run takes about as many iterations whatever the init scale, and far fewer.
    rebalanced = [runs["gd_rebalanced", alpha][0] for alpha in (1.0, 0.3)]
    assert max(r.n_iter for r in rebalanced) <= 1.5 * min(r.n_iter for r in rebalanced)
    assert all(r.info["rebalanced_at_iteration"] is not None for r in rebalanced)
    assert rebalanced[1].n_iter * 5 <= runs["gd", 0.3][0].n_iter
    # At alpha = 1e-2 plain GD stalls (the spurious directions shrink at rate alpha^2).
    stalled, S = _overparameterized_run("gd", 1e-2, 1000)
    fixed, _ = _overparameterized_run("gd_rebalanced", 1e-2, 1000)
    assert not stalled.converged and stalled.history["loss"][-1] > 0.5 * stalled.history["loss"][-500]
    assert fixed.converged and _relative(fixed.U @ fixed.V.T, S) < 1e-6


def _completion_problem(n=500, r=5, fraction=0.1, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)
    observed = rng.random((n, n)) < fraction
    rows, cols = (np.ascontiguousarray(a, dtype=np.int64) for a in np.nonzero(observed))
    test_rows, test_cols = (np.ascontiguousarray(a[:5000], dtype=np.int64) for a in np.nonzero(~observed))
    vals = M[rows, cols] + noise * rng.standard_normal(rows.shape[0])
    return M, rows, cols, vals, test_rows, test_cols


def test_completion_by_scaled_gd_reaches_test_rmse_1e_4():
    M, rows, cols, vals, test_rows, test_cols = _completion_problem()
    op = EntrySampling(rows, cols, M.shape)
    result = lr.recover.factored_gd(op, vals, 5, method="scaled", init="spectral", max_iter=500, tol=1e-9, seed=0)
    X = result.U @ result.V.T
    assert np.sqrt(np.mean((X[test_rows, test_cols] - M[test_rows, test_cols]) ** 2)) < 1e-4


def test_noisy_completion_rmse_is_near_the_noise_level():
    sigma = 1e-2
    M, rows, cols, vals, test_rows, test_cols = _completion_problem(noise=sigma)
    op = EntrySampling(rows, cols, M.shape)
    result = lr.recover.factored_gd(op, vals, 5, method="scaled", init="spectral", max_iter=300, tol=1e-9, seed=0)
    X = result.U @ result.V.T
    rmse = np.sqrt(np.mean((X[test_rows, test_cols] - M[test_rows, test_cols]) ** 2))
    assert rmse < 1.5 * sigma


@pytest.mark.parametrize("method", ["gd", "alternating", "scaled", "scaled_damped", "gd_rebalanced"])
def test_every_method_recovers_gaussian_sensing(method, dtype):
    rng = np.random.default_rng(7)
    M = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 15))
    op = GaussianSensing(400, (20, 15), seed=1)
    y = op.forward(M.astype(dtype))
    width = 4 if method in ("gd_rebalanced", "scaled_damped") else 2
    seen = []
    result = lr.recover.factored_gd(op, y, width, method=method, init="spectral", max_iter=3000,
                                    tol=1e-6 if dtype == np.float64 else 1e-4, seed=0,
                                    callback=lambda it, state: seen.append((state["U"].copy(), state["V"].copy())))
    assert result.U.dtype == dtype and result.converged
    assert _relative(result.U @ result.V.T, M) < (1e-5 if dtype == np.float64 else 1e-3)
    # The reported history is the objective 1/2 ||A(U V^T) - y||^2 of the iterates (the solver
    # enforces a non-increasing loss, so monotonicity would prove nothing) and the relative change
    # of U V^T, both recomputed here in float64 from the dense operator and the dense products.
    assert result.history["loss"].shape == result.history["relative_change"].shape == (result.n_iter,)
    assert len(seen) == result.n_iter
    A = op.to_dense(np.float64)
    y64 = y.astype(np.float64)
    residual_norms = np.array([np.linalg.norm(A @ (U.astype(np.float64) @ V.T.astype(np.float64)).ravel() - y64)
                               for U, V in seen])
    atol = (1e-12 if dtype == np.float64 else 1e-5) * np.linalg.norm(y64)
    np.testing.assert_allclose(np.sqrt(2 * result.history["loss"]), residual_norms, rtol=1e-6, atol=atol)
    changes = [reference.relative_change(*seen[i - 1], *seen[i]) for i in range(1, len(seen))]
    # Both in float64 from the same factors (float32 products are exact in float64).
    np.testing.assert_allclose(result.history["relative_change"][1:], changes, rtol=1e-7, atol=1e-14)


def _start_of(op, y, rank, **kwargs):
    """The factors factored_gd starts from: a step far below the rounding of the factors leaves
    them unchanged bit for bit (U - 1e-300 * grad == U), so one iteration returns the start."""
    return lr.recover.factored_gd(op, y, rank, step=1e-300, max_iter=1, tol=0.0, seed=0, **kwargs)


def _observed_twice(shape):
    """Every entry observed twice: A*(A(X)) = 2 X and ||A(X)||^2 = 2 ||X||_F^2 for every X, so
    the operator's scale E||A(X)||^2 / ||X||_F^2 is exactly 2, whatever the random probes."""
    rows, cols = np.divmod(np.arange(shape[0] * shape[1], dtype=np.int64), shape[1])
    return EntrySampling(np.tile(rows, 2), np.tile(cols, 2), shape)


def test_spectral_init_is_the_truncated_svd_of_the_adjoint_over_the_scale():
    """init="spectral": U0 V0^T = the best rank-r approximation of A*(y) / scale, split evenly
    (U0 = L S^1/2, V0 = R S^1/2, so U0^T U0 = V0^T V0 = S). With every entry observed twice,
    A*(y) / scale is M itself."""
    M = np.random.default_rng(21).standard_normal((12, 10))  # full rank: the truncation matters
    op = _observed_twice(M.shape)
    start = _start_of(op, op.forward(M), 3, init="spectral")
    assert start.info["operator_scale"] == pytest.approx(2.0, rel=1e-12)
    np.testing.assert_allclose(start.U @ start.V.T, reference.truncated_svd(M, 3), rtol=1e-9, atol=1e-11)
    sigma = np.linalg.svd(M, compute_uv=False)[:3]
    np.testing.assert_allclose(start.U.T @ start.U, np.diag(sigma), atol=1e-9)
    np.testing.assert_allclose(start.V.T @ start.V, np.diag(sigma), atol=1e-9)


def test_spectral_init_of_gaussian_sensing_divides_by_the_operator_scale():
    rng = np.random.default_rng(5)
    M = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 10))
    op = GaussianSensing(300, (20, 10), seed=4)
    y = op.forward(M)
    start = _start_of(op, y, 2, init="spectral")
    scale = start.info["operator_scale"]
    adjoint = (op.to_dense().T @ y).reshape(20, 10)  # A*(y) from the dense operator
    # rank 2 + 10 oversampling columns span all 10 columns: the randomized SVD is exact here.
    np.testing.assert_allclose(start.U @ start.V.T, reference.truncated_svd(adjoint / scale, 2), rtol=1e-9,
                               atol=1e-11)
    assert 0.5 < scale < 2.0  # E||A(X)||^2 = ||X||_F^2 for this isotropic operator, estimated by 3 probes


def test_symmetric_spectral_init_keeps_the_positive_eigenvalues():
    """Symmetric: U0 U0^T = sum of lambda_i q_i q_i^T over the top-r eigenpairs of A*(y) / scale
    by |lambda| whose lambda > 0 (a PSD model cannot hold the negative ones)."""
    rng = np.random.default_rng(3)
    Q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    eigenvalues = np.array([5.0, 4.0, -3.5, 3.0, 1.0, 0.5, -0.4, 0.3, 0.2, 0.1])
    M = (Q * eigenvalues) @ Q.T
    op = _observed_twice(M.shape)
    start = _start_of(op, op.forward(M), 3, init="spectral", symmetric=True)
    expected = 5.0 * np.outer(Q[:, 0], Q[:, 0]) + 4.0 * np.outer(Q[:, 1], Q[:, 1])  # -3.5 is dropped
    np.testing.assert_allclose(start.U @ start.U.T, expected, atol=1e-9)


def test_small_init_has_the_documented_scales():
    """init="small": U0 = init_scale * G / sqrt(n1), V0 = init_scale / 3 * G' / sqrt(n2), from
    numpy's default_rng(seed) (U's draws first)."""
    op = _full_observation((30, 20))
    y = op.forward(np.random.default_rng(1).standard_normal((30, 20)))
    start = _start_of(op, y, 4, init="small", init_scale=0.01)
    draws = np.random.default_rng(0)
    np.testing.assert_array_equal(start.U, 0.01 * draws.standard_normal((30, 4)) / np.sqrt(30))
    np.testing.assert_array_equal(start.V, (0.01 / 3.0) * draws.standard_normal((20, 4)) / np.sqrt(20))


def test_tolerance_stops_at_the_relative_residual():
    """converged once ||A(U V^T) - y|| / ||y|| < tol, at the first such iteration."""
    S = np.random.default_rng(2).standard_normal((15, 2)) @ np.random.default_rng(3).standard_normal((2, 12))
    op = _full_observation(S.shape)
    y = op.forward(S)
    free = lr.recover.factored_gd(op, y, 2, max_iter=400, tol=0.0, seed=0)
    residuals = np.sqrt(2 * free.history["loss"]) / np.linalg.norm(y)
    tol = float(np.sqrt(residuals[120] * residuals[121]))
    assert residuals[121] < tol < residuals[120]
    stopped = lr.recover.factored_gd(op, y, 2, max_iter=400, tol=tol, seed=0)
    assert stopped.stop_reason == "converged" and stopped.converged
    assert stopped.n_iter == int(np.flatnonzero(residuals < tol)[0]) + 1


def test_stationary_when_the_change_falls_below_a_thousandth_of_tol():
    """A residual that cannot reach tol (rank 2 fit of a full-rank matrix) ends "stationary" at the
    first iteration whose relative change of X is below 1e-3 * tol."""
    S = np.random.default_rng(9).standard_normal((15, 12))
    op = _full_observation(S.shape)
    y = op.forward(S)
    free = lr.recover.factored_gd(op, y, 2, max_iter=3000, tol=0.0, seed=0, step=0.05)
    changes = free.history["relative_change"]
    assert np.sqrt(2 * free.history["loss"].min()) / np.linalg.norm(y) > 0.1  # far above any tol below
    tol = 1e-3
    first = int(np.flatnonzero(changes < 1e-3 * tol)[0]) + 1
    assert 10 < first < 3000
    stopped = lr.recover.factored_gd(op, y, 2, max_iter=3000, tol=tol, seed=0, step=0.05)
    assert stopped.stop_reason == "stationary" and stopped.n_iter == first


def test_divergent_step_is_halved_and_reported_never_nan():
    M = _psd_target(20, 2, seed=4)
    op = GaussianSensing(400, (20, 20), seed=2, symmetric=True)
    result = lr.recover.factored_gd(op, op.forward(M), 2, symmetric=True, step=1e3, max_iter=2000, tol=1e-6, seed=0)
    assert result.step_halvings > 5 and result.step < 1e3
    assert np.all(np.isfinite(result.U)) and _relative(result.X, M) < 1e-4


def test_callback_progress_and_time_limit(capsys):
    M = _psd_target(20, 2, seed=4)
    op = GaussianSensing(400, (20, 20), seed=2, symmetric=True)
    seen = []
    lr.recover.factored_gd(op, op.forward(M), 2, symmetric=True, max_iter=5, tol=0, seed=0, progress=True,
                           callback=lambda it, info: seen.append((it, info["loss"])))
    assert [it for it, _ in seen] == [1, 2, 3, 4, 5]
    assert "factored_gd" in capsys.readouterr().err  # the tqdm bar
    result = lr.recover.factored_gd(op, op.forward(M), 2, symmetric=True, max_iter=10**6, tol=0, seed=0,
                                    time_limit=0.2)
    assert result.stop_reason == "time_limit" and not result.converged


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    M = _psd_target(20, 2, seed=4)
    op = GaussianSensing(400, (20, 20), seed=2, symmetric=True)
    y = op.forward(M)
    full = lr.recover.factored_gd(op, y, 3, symmetric=True, max_iter=60, tol=0, seed=0)
    path = str(tmp_path / "run.npz")
    lr.recover.factored_gd(op, y, 3, symmetric=True, max_iter=60, tol=0, seed=0, checkpoint=path,
                           checkpoint_every=7, time_limit=1e-9)  # stops after one iteration
    resumed = lr.recover.factored_gd(op, y, 3, symmetric=True, max_iter=60, tol=0, seed=0, checkpoint=path,
                                     checkpoint_every=7)
    np.testing.assert_array_equal(resumed.U, full.U)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])
    with pytest.raises(lr.recover.CheckpointMismatchError, match="different problem"):
        lr.recover.factored_gd(op, y, 2, symmetric=True, max_iter=60, tol=0, seed=0, checkpoint=path)


KILLED_RUN = textwrap.dedent("""
    import sys, time
    import numpy as np
    import lowrank_hpc as lr
    from lowrank_hpc.sensing import GaussianSensing
    M = np.load(sys.argv[1])["M"]
    op = GaussianSensing(400, (20, 20), seed=2, symmetric=True)
    # Slow iterations so the parent can kill the run half-way.
    lr.recover.factored_gd(op, op.forward(M), 3, symmetric=True, max_iter=60, tol=0, seed=0, checkpoint=sys.argv[2],
                           checkpoint_every=4, callback=lambda i, state: time.sleep(0.05))
""")


def test_checkpoint_resume_after_a_killed_run_equals_uninterrupted(tmp_path):
    M = _psd_target(20, 2, seed=4)
    op = GaussianSensing(400, (20, 20), seed=2, symmetric=True)
    full = lr.recover.factored_gd(op, op.forward(M), 3, symmetric=True, max_iter=60, tol=0, seed=0)
    data, checkpoint, script = tmp_path / "M.npz", tmp_path / "run.npz", tmp_path / "run.py"
    np.savez(data, M=M)
    script.write_text(KILLED_RUN)
    run_until_checkpoint_then_kill(script, [str(data), str(checkpoint)], checkpoint)
    with np.load(checkpoint) as saved:
        assert 0 < int(saved["iteration"]) < 60
    resumed = lr.recover.factored_gd(op, op.forward(M), 3, symmetric=True, max_iter=60, tol=0, seed=0,
                                     checkpoint=str(checkpoint), checkpoint_every=4)
    np.testing.assert_array_equal(resumed.U, full.U)
    np.testing.assert_array_equal(resumed.history["loss"], full.history["loss"])


def test_factored_gd_bad_inputs(backend):
    op = GaussianSensing(100, (8, 6), seed=0)
    y = backend.put(np.ones(100))
    with pytest.raises(ValueError, match="y has length 99 but the operator makes 100"):
        lr.recover.factored_gd(op, y[:99], 2)
    with pytest.raises(ValueError, match="rank must be"):
        lr.recover.factored_gd(op, y, 0)
    bad = np.ones(100)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="y contains 1 NaN/inf"):
        lr.recover.factored_gd(op, backend.put(bad), 2)
    bad[3] = np.inf
    with pytest.raises(ValueError, match="y contains 1 NaN/inf"):
        lr.recover.factored_gd(op, backend.put(bad), 2)
    with pytest.raises(ValueError, match="unknown method 'newton'"):
        lr.recover.factored_gd(op, y, 2, method="newton")
    with pytest.raises(ValueError, match="symmetric recovery needs a square operator"):
        lr.recover.factored_gd(op, y, 2, symmetric=True)
    square = GaussianSensing(100, (6, 6), seed=0)
    with pytest.raises(ValueError, match="'alternating' is for asymmetric problems"):
        lr.recover.factored_gd(square, y, 2, symmetric=True, method="alternating")
    with pytest.raises(TypeError, match="op must be a sensing operator"):
        lr.recover.factored_gd(np.eye(3), y, 2)
    with pytest.raises(ValueError, match="max_iter must be"):
        lr.recover.factored_gd(op, y, 2, max_iter=-1)
    with pytest.raises(ValueError, match="init U has shape"):
        lr.recover.factored_gd(op, y, 2, init=(backend.put(np.ones((8, 3))), backend.put(np.ones((6, 2)))))
    with pytest.raises(ValueError, match="init V has shape"):
        lr.recover.factored_gd(op, y, 2, init=(backend.put(np.ones((8, 2))), backend.put(np.ones((7, 2)))))
    with pytest.raises(ValueError, match="y is all zeros"):
        lr.recover.factored_gd(op, backend.put(np.zeros(100)), 2)


def _batched_problems(batch=12, m=10, n=9, r=2, fraction=0.7, seed=0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((batch, m, r))
    V = rng.standard_normal((batch, n, r))
    mask = rng.random((batch, m, n)) < fraction
    problem, rows, cols = (np.ascontiguousarray(a, dtype=np.int64) for a in np.nonzero(mask))
    offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=(1, 2)))]).astype(np.int64)
    vals = np.einsum("kr,kr->k", U[problem, rows], V[problem, cols])
    return U @ V.transpose(0, 2, 1), rows, cols, vals, offsets


@pytest.mark.parametrize("method", ["gd", "alternating", "scaled_damped"])
def test_batched_equals_per_problem(method):
    M, rows, cols, vals, offsets = _batched_problems()
    batch = M.shape[0]
    batched = lr.recover.batched_factored_gd(rows, cols, vals, offsets, M.shape[1:], 2, method=method,
                                             step=0.05, damping=0.1, max_iter=300, tol=1e-8, seed=3)
    for b in range(batch):
        s = slice(offsets[b], offsets[b + 1])
        single = lr.recover.factored_gd(EntrySampling(rows[s], cols[s], M.shape[1:]), vals[s], 2, method=method,
                                        step=0.05, damping=0.1, max_iter=300, tol=1e-8, seed=3 + b)
        # Equal up to the summation order of the losses (which may shift a stop by an iteration).
        np.testing.assert_allclose(batched.U[b], single.U, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(batched.V[b], single.V, rtol=1e-6, atol=1e-9)
        assert batched.converged[b] == single.converged and batched.stop_reason[b] == single.stop_reason


def _sequential_loss(U, V, rows, cols, vals):
    """1/2 sum (U_i . V_j - v)^2 as the fused step sums it: each dot over c in order in the
    dtype, the residual rounded in the dtype, its squares in float64 over the entries in order."""
    dot = np.zeros(rows.shape[0], U.dtype)
    for c in range(U.shape[1]):
        dot = dot + U[rows, c] * V[cols, c]
    z = (dot - vals).astype(np.float64)
    return 0.5 * np.cumsum(z * z)[-1], dot - vals


def _sequential_change(U0, V0, U1, V1):
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F from the Gram products' (a, c) entries, each summed
    over the rows in order in float64 (solvers/completion_step.hpp's LeftGram, RightGram), then
    combined in (a, c) order (ChangeSums)."""
    U0, V0, U1, V1 = (X.astype(np.float64) for X in (U0, V0, U1, V1))
    k = U0.shape[1]
    du_du, du_u0, u0_u0 = (np.zeros((k, k)) for _ in range(3))
    for u0, u1 in zip(U0, U1):
        du = u1 - u0
        du_du, du_u0, u0_u0 = du_du + np.multiply.outer(du, du), du_u0 + np.multiply.outer(du, u0), \
            u0_u0 + np.multiply.outer(u0, u0)
    v1_v1, v1_dv, dv_dv, v0_v0 = (np.zeros((k, k)) for _ in range(4))
    for v0, v1 in zip(V0, V1):
        dv = v1 - v0
        v1_v1, v1_dv = v1_v1 + np.multiply.outer(v1, v1), v1_dv + np.multiply.outer(v1, dv)
        dv_dv, v0_v0 = dv_dv + np.multiply.outer(dv, dv), v0_v0 + np.multiply.outer(v0, v0)
    squared = before = 0.0
    for a in range(k):
        for c in range(k):
            squared += du_du[a, c] * v1_v1[a, c] + 2.0 * du_u0[a, c] * v1_dv[a, c] + u0_u0[a, c] * dv_dv[a, c]
            before += u0_u0[a, c] * v0_v0[a, c]
    return np.sqrt(squared / before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [4, 8, 13, 32])
def test_fused_gradient_step_is_its_sequential_transcription(dtype, k):
    """One gd step of the fused per-problem kernel on the CPU, bit for bit: both gradients (in
    the entries' order), the new factors, the loss after and the relative change (the
    entry-at-a-time Gram sums below k = 8, a row at a time from 8: the same order); a third
    problem whose step cannot descend (halved 50 times from 1e30) keeps its factors and reports
    the loss before, the fused pass's."""
    from lowrank_hpc import _backend

    rng = np.random.default_rng(k)
    m, n, sizes = 9, 7, [30, 41, 25]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows = rng.integers(0, m, sum(sizes)).astype(np.int32)
    cols = rng.integers(0, n, sum(sizes)).astype(np.int32)
    vals = rng.standard_normal(sum(sizes)).astype(dtype)
    U = rng.standard_normal((3, m, k)).astype(dtype)
    V = rng.standard_normal((3, n, k)).astype(dtype)
    U1, V1 = np.empty_like(U), np.empty_like(V)
    steps = np.array([1e-3, 1e-3, 1e30])
    loss, change = np.zeros(3), np.zeros(3)
    halvings, stuck = np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.uint8)
    scratch = np.empty(3 * ((m + n) * k + 2 * k * k), dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        _backend.cpu_module().completion_steps(rows, cols, vals, offsets, 0, np.ones(3, np.uint8), U, V, U1, V1,
                                               steps, np.zeros(3), scratch, loss, change, halvings, stuck, 0)
    for b in range(3):
        part = slice(offsets[b], offsets[b + 1])
        r, c, y = rows[part], cols[part], vals[part]
        before, z = _sequential_loss(U[b], V[b], r, c, y)
        if b == 2:
            assert stuck[b] and halvings[b] == 50 and loss[b] == before and change[b] == 0.0
            np.testing.assert_array_equal(U1[b], U[b])
            np.testing.assert_array_equal(V1[b], V[b])
            continue
        grad_u, grad_v = np.zeros((m, k), dtype), np.zeros((n, k), dtype)
        np.add.at(grad_u, r, z[:, None] * V[b][c])  # unbuffered: in the entries' order
        np.add.at(grad_v, c, z[:, None] * U[b][r])
        step = dtype(1e-3)
        np.testing.assert_array_equal(U1[b], U[b] - step * grad_u)
        np.testing.assert_array_equal(V1[b], V[b] - step * grad_v)
        after, _ = _sequential_loss(U1[b], V1[b], r, c, y)
        assert after < before and halvings[b] == 0 and not stuck[b]
        assert loss[b] == after
        assert change[b] == _sequential_change(U[b], V[b], U1[b], V1[b])


def test_batched_flags_are_per_problem():
    M, rows, cols, vals, offsets = _batched_problems(batch=6)
    vals = vals.copy()
    vals[offsets[4]:offsets[5]] *= 1e3  # a much larger problem keeps its own step
    result = lr.recover.batched_factored_gd(rows, cols, vals, offsets, M.shape[1:], 2, init="spectral",
                                            method="scaled", max_iter=2000, tol=1e-8, seed=0)
    assert result.converged.shape == (6,) and len(result.stop_reason) == 6
    assert result.history["loss"].shape == (result.n_iter, 6)
    finished = result.converged
    assert finished.sum() >= 5
    X = result.U @ result.V.transpose(0, 2, 1)
    for b in np.flatnonzero(finished):
        scale = 1e3 if b == 4 else 1.0
        s = slice(offsets[b], offsets[b + 1])
        np.testing.assert_allclose(X[b][rows[s], cols[s]], vals[s], rtol=1e-6, atol=1e-6 * scale)


def test_batched_factored_gd_bad_inputs():
    M, rows, cols, vals, offsets = _batched_problems(batch=3)
    shape = M.shape[1:]
    with pytest.raises(ValueError, match="offsets .* is required"):
        lr.recover.batched_factored_gd(rows, cols, vals, None, shape, 2)
    with pytest.raises(ValueError, match="vals has length"):
        lr.recover.batched_factored_gd(rows, cols, vals[:-1], offsets, shape, 2)
    with pytest.raises(ValueError, match="unknown method 'gd_rebalanced'"):
        lr.recover.batched_factored_gd(rows, cols, vals, offsets, shape, 2, method="gd_rebalanced")
    with pytest.raises(ValueError, match="rank must be an integer"):
        lr.recover.batched_factored_gd(rows, cols, vals, offsets, shape, 0)
    with pytest.raises(ValueError, match=r"step must be a number or a \(3,\) array"):
        lr.recover.batched_factored_gd(rows, cols, vals, offsets, shape, 2, step=np.ones(2))
    with pytest.raises(ValueError, match="step must be positive"):
        lr.recover.batched_factored_gd(rows, cols, vals, offsets, shape, 2, step=-1.0)
    with pytest.raises(ValueError, match="init must be 'small', 'spectral' or a pair"):
        lr.recover.batched_factored_gd(rows, cols, vals, offsets, shape, 2, init="random")
    with pytest.raises(IndexError, match=r"rows\[\d+\] = 99 is out of range"):
        bad = rows.copy()
        bad[3] = 99
        lr.recover.batched_factored_gd(bad, cols, vals, offsets, shape, 2)


@pytest.mark.parametrize("dtype_", [np.float64, np.float32])
def test_batched_scaled_from_given_factors_equals_per_problem(dtype_):
    M, rows, cols, vals, offsets = _batched_problems(batch=5, seed=2)
    rng = np.random.default_rng(8)
    # A start near the truth (ScaledGD's local regime): its factors, perturbed.
    left, sigma, right_t = np.linalg.svd(M, full_matrices=False)
    root = np.sqrt(sigma[:, :2])[:, None, :]
    U0 = (left[:, :, :2] * root + 0.1 * rng.standard_normal((5, M.shape[1], 2))).astype(dtype_)
    V0 = (right_t[:, :2, :].transpose(0, 2, 1) * root + 0.1 * rng.standard_normal((5, M.shape[2], 2))).astype(dtype_)
    settings = dict(method="scaled", step=0.5, max_iter=300, tol=1e-6 if dtype_ == np.float64 else 1e-4)
    batched = lr.recover.batched_factored_gd(rows, cols, vals.astype(dtype_), offsets, M.shape[1:], 2,
                                             init=(U0, V0), **settings)
    assert batched.U.dtype == dtype_
    tolerance = 1e-6 if dtype_ == np.float64 else 2e-3
    for b in range(5):
        s = slice(offsets[b], offsets[b + 1])
        single = lr.recover.factored_gd(EntrySampling(rows[s], cols[s], M.shape[1:]), vals[s].astype(dtype_), 2,
                                        init=(U0[b], V0[b]), **settings)
        np.testing.assert_allclose(batched.U[b] @ batched.V[b].T, single.U @ single.V.T, rtol=tolerance,
                                   atol=tolerance)
        assert batched.stop_reason[b] == single.stop_reason
        assert single.history["loss"][-1] < 1e-3 * single.history["loss"][0]


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["gd", "alternating", "scaled_damped"])
def test_batched_gpu_equals_cpu(method):
    """The fused per-problem kernel runs the same math on both backends."""
    import cupy

    M, rows, cols, vals, offsets = _batched_problems(batch=40, seed=5)
    settings = dict(method=method, step=0.05, damping=0.1, max_iter=150, tol=1e-8, seed=1)
    cpu = lr.recover.batched_factored_gd(rows, cols, vals, offsets, M.shape[1:], 2, **settings)
    gpu = lr.recover.batched_factored_gd(*map(cupy.asarray, (rows, cols, vals, offsets)), M.shape[1:], 2, **settings)
    assert isinstance(gpu.U, cupy.ndarray) and gpu.backend == "cuda"
    np.testing.assert_allclose(gpu.U.get(), cpu.U, rtol=1e-6, atol=1e-9)
    assert list(gpu.stop_reason) == list(cpu.stop_reason)


class _PublicOnly:
    """An operator seen only through its public methods: factored_gd's generic path."""

    def __init__(self, op):
        self._op = op
        self.shape, self.num_measurements = op.shape, op.num_measurements
        for name in ("forward", "adjoint", "forward_factored", "adjoint_times", "adjoint_transpose_times"):
            setattr(self, name, getattr(op, name))


@pytest.mark.parametrize("kind", ["entries row-sorted", "entries shuffled", "gaussian"])
@pytest.mark.parametrize("method", ["gd", "alternating", "scaled"])
def test_library_operators_fused_solver_path_gives_the_generic_iterates(kind, method):
    """The library's operators give factored_gd their residual and loss in one pass (entry
    sampling: one kernel) and skip the public methods' checks: the same iterates and losses as
    the same operator seen through its public methods (shuffled entries: up to the order of the
    sums, the solver iterating on them sorted by (row, col))."""
    rng = np.random.default_rng(5)
    n1, n2, r = 40, 30, 3
    M = rng.standard_normal((n1, r)) @ rng.standard_normal((r, n2))
    if kind == "gaussian":
        op = GaussianSensing(900, (n1, n2), seed=2)
    else:
        flat = rng.choice(n1 * n2, 700, replace=False)
        flat = np.sort(flat) if kind.endswith("sorted") else flat
        op = EntrySampling(flat // n2, flat % n2, (n1, n2))
    y = op.forward(M)
    init = "spectral" if method == "scaled" else "small"  # ScaledGD's start (from small: slow, as the theory says)
    fused = lr.recover.factored_gd(op, y, r, method=method, init=init, max_iter=40, tol=0, seed=1)
    generic = lr.recover.factored_gd(_PublicOnly(op), y, r, method=method, init=init, max_iter=40, tol=0, seed=1)
    assert fused.n_iter == generic.n_iter == 40
    assert fused.step == generic.step if kind != "entries shuffled" else fused.step == pytest.approx(generic.step,
                                                                                                      rel=1e-14)
    np.testing.assert_allclose(fused.history["loss"], generic.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(fused.U, generic.U, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(fused.V, generic.V, rtol=1e-10, atol=1e-13)
    assert fused.history["loss"][-1] < 1e-1 * fused.history["loss"][0]  # the iterates moved


@pytest.mark.parametrize("method, init", [("gd", "small"), ("alternating", "small"), ("scaled", "spectral")])
def test_shuffled_entries_iterate_in_row_and_column_order_bit_for_bit(method, init):
    """factored_gd on entry sampling in any order iterates on the entries sorted by (row, col)
    (the row-ordered kernels need no permutation): the iterates, losses and step of the same
    entries given in that order, bit for bit; the caller's operator and y are left as they were."""
    rng = np.random.default_rng(11)
    n1, n2, r = 60, 45, 3
    M = rng.standard_normal((n1, r)) @ rng.standard_normal((r, n2)) + 2.0
    flat = rng.choice(n1 * n2, 1500, replace=False)
    flat = rng.permutation(np.concatenate([flat, flat[:100]]))  # 100 positions observed twice
    rows, cols = flat // n2, flat % n2
    y = M[rows, cols] + 0.01 * rng.standard_normal(rows.shape[0])
    order = np.lexsort((cols, rows))  # stable: a repeated position's two values in the given order
    from lowrank_hpc._arrays import for_backend
    from lowrank_hpc.ops._csr_order import row_column_order

    np.testing.assert_array_equal(row_column_order(for_backend("test", "cpu"), rows, cols, (n1, n2)), order)
    shuffled_op, y_given = EntrySampling(rows, cols, (n1, n2)), y.copy()
    shuffled = lr.recover.factored_gd(shuffled_op, y, r, method=method, init=init, max_iter=30, tol=0, seed=2)
    in_order = lr.recover.factored_gd(EntrySampling(rows[order], cols[order], (n1, n2)), y[order], r, method=method,
                                      init=init, max_iter=30, tol=0, seed=2)
    assert shuffled.step == in_order.step and shuffled.n_iter == in_order.n_iter == 30
    np.testing.assert_array_equal(shuffled.history["loss"], in_order.history["loss"])
    np.testing.assert_array_equal(shuffled.U, in_order.U)
    np.testing.assert_array_equal(shuffled.V, in_order.V)
    assert shuffled.history["loss"][-1] < 0.8 * shuffled.history["loss"][0]  # the iterates moved
    np.testing.assert_array_equal(y, y_given)
    np.testing.assert_array_equal(shuffled_op.forward(M), M[rows, cols])  # still the caller's order


def _shuffled_completion(seed=11, n1=60, n2=45, nnz=1500):
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((n1, 3)) @ rng.standard_normal((3, n2)) + 2.0
    flat = rng.choice(n1 * n2, nnz, replace=False)
    return M, flat // n2, flat % n2


def test_the_sorted_copy_is_left_out_of_pickles_and_subclasses_iterate_on_themselves():
    """The sorted copy a fit builds is not pickled (an old pickle without it works too), and an
    EntrySampling subclass, whatever it overrides, iterates on itself in the given order."""
    import pickle

    M, rows, cols = _shuffled_completion()
    op = EntrySampling(rows, cols, M.shape)
    y = op.forward(M)
    first = lr.recover.factored_gd(op, y, 3, max_iter=20, tol=0, seed=2)
    assert op._sorted_copy is not None
    copy = pickle.loads(pickle.dumps(op))
    assert "_sorted_copy" not in copy.__dict__ and copy._sorted_copy is None
    again = lr.recover.factored_gd(copy, y, 3, max_iter=20, tol=0, seed=2)
    np.testing.assert_array_equal(again.U, first.U)
    calls = []

    class Residuals(EntrySampling):  # overrides a private method only: still a library operator
        def _solver_residual(self, call, U, V, y):
            calls.append(self)
            return super()._solver_residual(call, U, V, y)

    sub = Residuals(rows, cols, M.shape)
    assert sub._solver_order(None, y) == (sub, y)
    lr.recover.factored_gd(sub, y, 3, max_iter=3, tol=0, seed=2)
    assert calls and all(c is sub for c in calls) and sub._sorted_copy[0] is None


@pytest.mark.gpu
def test_shuffled_entries_under_a_forced_cuda_backend_iterate_in_order():
    """With the CUDA backend forced (as the estimators' backend= does) the sorted copy is built
    from the host indices on the CPU and iterated on the device: the CPU run's iterates."""
    import cupy

    M, rows, cols = _shuffled_completion()
    cpu_op = EntrySampling(rows, cols, M.shape)
    y = cpu_op.forward(M)
    cpu = lr.recover.factored_gd(cpu_op, y, 3, max_iter=20, tol=0, seed=2)
    with lr.use_backend("cuda"):
        op = EntrySampling(cupy.asarray(rows), cupy.asarray(cols), M.shape)
        gpu = lr.recover.factored_gd(op, cupy.asarray(y), 3, max_iter=20, tol=0, seed=2)
    assert gpu.backend == "cuda" and op._sorted_copy is not None
    np.testing.assert_allclose(cupy.asnumpy(gpu.U), cpu.U, rtol=1e-9, atol=1e-12)


def test_an_operator_overriding_its_public_methods_is_called_through_them():
    """A subclass that overrides forward_factored / adjoint_times keeps its overrides: the loop's
    internal calls are for the library's own methods only."""
    calls = {"forward_factored": 0, "adjoint_times": 0}

    class Counting(EntrySampling):
        def forward_factored(self, U, V=None):
            calls["forward_factored"] += 1
            return super().forward_factored(U, V)

        def adjoint_times(self, y, B):
            calls["adjoint_times"] += 1
            return super().adjoint_times(y, B)

    rng = np.random.default_rng(0)
    M = rng.standard_normal((20, 2)) @ rng.standard_normal((2, 15))
    flat = rng.choice(300, 200, replace=False)
    op = Counting(flat // 15, flat % 15, (20, 15))
    plain = EntrySampling(flat // 15, flat % 15, (20, 15))
    result = lr.recover.factored_gd(op, op.forward(M), 2, max_iter=5, tol=0, seed=0)
    assert calls["forward_factored"] >= 6 and calls["adjoint_times"] >= 5  # every iteration (and the step estimate)
    reference_run = lr.recover.factored_gd(plain, plain.forward(M), 2, max_iter=5, tol=0, seed=0)
    np.testing.assert_allclose(result.U, reference_run.U, rtol=1e-12)


def test_scaled_gd_starts_spectral_by_default_and_warns_from_a_small_start():
    """ScaledGD's (V^T V)^-1 is huge at a small start: the loss test halves the step until it
    cannot move (relative error 0.9997 after 3,000 iterations here). None starts it spectral
    (recovery to 1e-5); an explicit "small" warns. The other methods keep the small start."""
    rng = np.random.default_rng(3)
    M = rng.standard_normal((40, 2)) @ rng.standard_normal((30, 2)).T
    rows, cols = np.nonzero(rng.random((40, 30)) < 0.5)
    op, y = EntrySampling(rows, cols, (40, 30)), M[rows, cols]
    default = lr.recover.factored_gd(op, y, 2, method="scaled", max_iter=3000, tol=1e-8, seed=0)
    assert default.converged and _relative(default.U @ default.V.T, M) < 1e-5
    spectral = lr.recover.factored_gd(op, y, 2, method="scaled", init="spectral", max_iter=3000, tol=1e-8, seed=0)
    np.testing.assert_array_equal(default.U, spectral.U)
    with pytest.warns(RuntimeWarning, match="method 'scaled' from init='small' barely moves"):
        small = lr.recover.factored_gd(op, y, 2, method="scaled", init="small", max_iter=200, seed=0)
    assert _relative(small.U @ small.V.T, M) > 0.5
    gd = lr.recover.factored_gd(op, y, 2, max_iter=5, seed=0)
    np.testing.assert_array_equal(gd.U, lr.recover.factored_gd(op, y, 2, init="small", max_iter=5, seed=0).U)
    sensing = lr.MatrixSensing(rank=2, method="scaled", max_iter=3000, tol=1e-8, random_state=0).fit(op, y)
    assert _relative(sensing.U_ @ sensing.V_.T, M) < 1e-5

    Mb, brows, bcols, bvals, offsets = _batched_problems(batch=4)
    runs = [lr.recover.batched_factored_gd(brows, bcols, bvals, offsets, Mb.shape[1:], 2, method="scaled",
                                           max_iter=300, seed=0, **given) for given in ({}, {"init": "spectral"})]
    np.testing.assert_array_equal(runs[0].U, runs[1].U)
    assert _relative(runs[0].U @ runs[0].V.transpose(0, 2, 1), Mb) < 0.1


@pytest.mark.parametrize("rank", [4, 5, 8])
def test_symmetric_scaled_gd_above_the_true_rank_recovers_through_a_singular_gram(rank):
    """The symmetric spectral start zeroes the columns of A*(y)'s negative eigenvalues, so U^T U
    was singular and ScaledGD raised numpy's LinAlgError ("Singular matrix") at ranks 4-8 of a
    rank-2 PSD matrix; the pseudo-inverse keeps those columns zero and the run converges."""
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((30, 2))
    P = Z @ Z.T
    op = lr.sensing.GaussianSensing(720, (30, 30), seed=3, symmetric=True)
    result = lr.recover.factored_gd(op, op.forward(P), rank, symmetric=True, method="scaled", seed=0,
                                    max_iter=2000, tol=1e-10)
    assert result.stop_reason == "converged"
    assert np.linalg.norm(result.U @ result.U.T - P) < 1e-8 * np.linalg.norm(P)  # measured 1.2e-10 to 1.8e-10


def test_scaled_gd_with_rows_the_data_never_reach_fits_the_observed_entries():
    """Entry sampling of rows 0-1 only, rank 3: A*(y) has rank 2, the spectral start a zero
    column, and U^T U a singular Gram (LinAlgError before); the observed entries are fitted."""
    rng = np.random.default_rng(0)
    M = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 20))
    rows, cols = np.repeat([0, 1], 20), np.tile(np.arange(20), 2)
    op = lr.sensing.EntrySampling(rows, cols, (20, 20))
    result = lr.recover.factored_gd(op, M[rows, cols], 3, method="scaled", seed=0, max_iter=500, tol=1e-12)
    assert np.linalg.norm((result.U @ result.V.T)[rows, cols] - M[rows, cols]) < 1e-5 * np.linalg.norm(M[rows, cols])


@pytest.mark.parametrize("public", [False, True], ids=["library operator", "public methods only"])
@pytest.mark.parametrize("step", [1e30, 1e36])
def test_alternating_steps_whose_products_overflow_are_halved(step, public):
    """A step whose products overflow float32 is halved (as when the factors' own update
    overflows), never an exception out of the solver: an operator seen through its public
    methods raises FloatingPointError there (it escaped the solver), the library's own
    operator gives inf through its solver methods."""
    rng = np.random.default_rng(0)
    M = (rng.standard_normal((40, 2)) @ rng.standard_normal((30, 2)).T).astype(np.float32)
    rows, cols = np.nonzero(rng.random((40, 30)) < 0.5)
    op = lr.sensing.EntrySampling(rows, cols, (40, 30))
    op = _PublicOnly(op) if public else op
    ones = (np.ones((40, 2), np.float32), np.ones((30, 2), np.float32))
    result = lr.recover.factored_gd(op, M[rows, cols], 2, method="alternating", init=ones, step=step, max_iter=5,
                                    seed=0)
    assert result.stop_reason == "no_progress"  # every halving still overflowed: the start kept
    np.testing.assert_array_equal(result.U, ones[0])
    np.testing.assert_array_equal(result.V, ones[1])
