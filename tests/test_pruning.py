"""prune_and_finetune's regularized phase stops like factored_gd when it cannot move U, and its
history is that of X = U U^T; each check against a dense numpy reference (op.to_dense()) or the
documented start U0 = init_scale * sqrt(s) * G / sqrt(n)."""
from __future__ import annotations

import numpy as np
import pytest

import reference
import lowrank_hpc as lr
from lowrank_hpc.sensing import GaussianSensing

_D, _R, _WIDTH, _SEED = 12, 2, 6, 3


def _problem():
    Z = np.random.default_rng(0).standard_normal((_D, _R))
    M = Z @ Z.T
    op = GaussianSensing(5 * _D * _R, (_D, _D), seed=1, symmetric=True)
    return op, op.forward(M)


def _start(sigma: float, init_scale: float = 1.0) -> np.ndarray:
    """The documented U0 (float64 data: no rounding)."""
    G = np.random.default_rng(_SEED).standard_normal((_D, _WIDTH))
    return init_scale * np.sqrt(sigma) * G / np.sqrt(_D)


def _objective(A: np.ndarray, y: np.ndarray, U: np.ndarray, lam: float, eps: float) -> float:
    """1/4 ||A vec(U U^T) - y||^2 + lam sum_i sqrt(||U e_i||^2 + eps^2), dense, float64."""
    z = A @ (U @ U.T).ravel() - y
    return 0.25 * float(z @ z) + lam * float(np.sqrt((U ** 2).sum(axis=0) + eps ** 2).sum())


@pytest.mark.parametrize("step, halvings", [(1e30, 50), (1e-300, 0)])
def test_a_step_that_cannot_move_u_is_no_progress_at_once(step, halvings):
    """step=1e30: 50 halvings all raise the objective; step=1e-300: the step leaves U unchanged.
    Either way U is a fixed point of the iteration: both phases stop after one iteration with
    "no_progress", as factored_gd does, and return the start (the best point found), instead of
    running all max_iter iterations (at 51 objective evaluations each for the large step)."""
    op, y = _problem()
    result = lr.recover.prune_and_finetune(op, y, _WIDTH, step=step, max_iter=500, finetune_iter=500, seed=_SEED)
    info = result.info
    assert info["regularized_stop_reason"] == "no_progress" and info["regularized_iterations"] == 1
    assert info["finetune"].stop_reason == "no_progress" and info["finetune"].n_iter == 1
    assert result.stop_reason == "no_progress" and result.converged is False and result.n_iter == 2
    assert result.step_halvings == 2 * halvings and result.step == step
    # The returned factor is the start's kept columns, bit for bit.
    U0 = _start(info["spectral_norm_adjoint_y"])
    norms = np.linalg.norm(U0, axis=0)
    kept = np.flatnonzero(norms >= 0.1 * norms.max())
    np.testing.assert_array_equal(info["kept_columns"], kept)
    np.testing.assert_allclose(info["column_norms"], norms, rtol=1e-12)
    np.testing.assert_array_equal(result.U, U0[:, kept])
    np.testing.assert_allclose(result.X, U0[:, kept] @ U0[:, kept].T, rtol=1e-12, atol=1e-12)
    # History: the regularized objective at U0, then the plain loss at the kept columns; no change.
    A = op.to_dense()
    expected = [_objective(A, y, U0, info["reg_lambda"], info["smoothing_eps"]),
                _objective(A, y, U0[:, kept], 0.0, 0.0)]
    np.testing.assert_allclose(result.history["loss"], expected, rtol=1e-10)
    np.testing.assert_array_equal(result.history["relative_change"], [0.0, 0.0])


def test_the_regularized_history_is_the_relative_change_of_x():
    """history["relative_change"] is ||X_t - X_{t-1}||_F / ||X_{t-1}||_F (RecoveryResult) in the
    regularized phase too, not the change of U; the loss is the regularized objective."""
    op, y = _problem()
    seen = {}
    result = lr.recover.prune_and_finetune(op, y, _WIDTH, max_iter=6, finetune_iter=3, seed=_SEED,
                                           callback=lambda i, info: seen.setdefault(i, np.array(info["U"])))
    assert result.info["regularized_iterations"] == 6 and result.info["regularized_stop_reason"] == "max_iter"
    A = op.to_dense()
    factors = [_start(result.info["spectral_norm_adjoint_y"])] + [seen[i] for i in range(1, 7)]
    changes = [reference.relative_change(a, a, b, b) for a, b in zip(factors, factors[1:])]
    losses = [_objective(A, y, U, result.info["reg_lambda"], result.info["smoothing_eps"]) for U in factors[1:]]
    np.testing.assert_allclose(result.history["relative_change"][:6], changes, rtol=1e-8)
    np.testing.assert_allclose(result.history["loss"][:6], losses, rtol=1e-10)
    # The U change is clearly different (about half the X change here): the check can tell them apart.
    u_changes = [np.linalg.norm(b - a) / np.linalg.norm(a) for a, b in zip(factors, factors[1:])]
    assert not np.allclose(u_changes, changes, rtol=0.1)
