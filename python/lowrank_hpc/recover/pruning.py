"""Greedy pruning with a group lasso, then fine-tuning (Rajaraman, Devvrit, Mokhtari & Ramchandran 2023).

Over-parameterized symmetric matrix sensing: train U (n, width), width >> rank, on the sensing
loss plus a smoothed group lasso on U's columns; the penalty drives all but rank columns to
(near) zero, so a norm threshold keeps exactly the columns that carry M; factored GD on the
pruned U then converges linearly (the pruned problem is exactly parameterized).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import to_numpy
from ._driver import LOOP_CONSTRAINTS, LoopSettings, LoopState, run_loop
from ._measures import relative_change
from ._operator_math import spectral_norm
from ._result import RecoveryResult
from .factored_gd import (_GROWTH_ALLOWED, _MAX_HALVINGS_PER_STEP, _Problem, factored_gd, quiet, robust_norm,
                          sensing_measurements, stalled_reason)

_FUNCTION = "prune_and_finetune"
_LOOP = {name: LOOP_CONSTRAINTS[name] for name in ("tol", "callback", "progress", "time_limit")}


def group_lasso(xp: Any, U: Any, smoothing: float) -> tuple[float, Any]:
    """(sum_i sqrt(||U e_i||^2 + smoothing^2), its gradient U / sqrt(||U e_i||^2 + smoothing^2))."""
    smoothed = xp.sqrt(xp.sum(U.astype(np.float64) ** 2, axis=0) + smoothing ** 2)
    return float(smoothed.sum()), U / smoothed.astype(U.dtype)[None, :]


@_checks.constrained(**_LOOP, width=_checks.positive_int, reg=_checks.nonnegative_float,
                     smoothing=_checks.positive_float, threshold=_checks.fraction, init_scale=_checks.positive_float,
                     step=_checks.optional(_checks.positive_float), max_iter=_checks.nonnegative_int,
                     finetune_iter=_checks.nonnegative_int, seed=_checks.seed_argument)
def prune_and_finetune(op: Any, y: Any, width: int, *, reg: float = 1e-2, smoothing: float = 1e-3,
                       threshold: float = 0.1, init_scale: float = 1.0, step: Optional[float] = None,
                       max_iter: int = 3000, finetune_iter: int = 2000, tol: float = 1e-8,
                       seed: Optional[int] = None, callback: Optional[Callable[[int, dict], Any]] = None,
                       progress: bool = False, time_limit: Optional[float] = None) -> RecoveryResult:
    """Recover a PSD low-rank M from y = A(M) by group-lasso training of a wide factor, greedy
    pruning of its small columns and fine-tuning of the rest (Rajaraman et al., "Greedy Pruning
    with Group Lasso Provably Generalizes for Matrix Sensing", NeurIPS 2023).

    1. Regularized training: up to ``max_iter`` gradient steps on U (n, width) for
       1/4 ||A(U U^T) - y||^2 + lam sum_i sqrt(||U e_i||^2 + eps^2), from
       U0 = init_scale * sqrt(s) * G / sqrt(n), G iid N(0, 1) (columns of norm about sqrt(s)),
       where s = ||A*(y)||_2 estimates ||M||_2; lam = reg * s^(3/2) and eps = smoothing * sqrt(s),
       so the settings are free of the data's scale (the penalty's gradient lam on a unit column
       direction shifts U U^T by about reg * ||M||_2). The phase ends early, as ``factored_gd``
       does, when an iteration cannot move U (every step of the halving sequence raises the
       objective, or the step is too small to change U): "no_progress", or "stationary" right
       after a change of U U^T below 16 sqrt(eps) of the dtype, or, with tol > 0, an iteration
       that left U as it was (``info["regularized_stop_reason"]``); U is then the last accepted
       iterate, and pruning and fine-tuning go on from it.
    2. Pruning: every column whose norm is below ``threshold`` times the largest is removed.
    3. Fine-tuning: ``factored_gd`` (method "gd", symmetric) from the kept columns, up to
       ``finetune_iter`` iterations or relative residual ``tol``.

    [check] The paper's pruning threshold is absolute and its fine-tuning is plain GD; here the
    threshold is relative to the largest column norm (scale-free) and the init is the
    moderate random one above: from a small init (init_scale << 1) the penalty's gradient
    lam U / eps dominates the data term on tiny columns and drives every column to zero, so
    the regularized phase must start from columns of the data's scale. Without the penalty
    (reg=0) GD leaves many columns of norm comparable to the largest and pruning keeps too
    many of them, as the paper says.

    Parameters
    ----------
    op : a square sensing operator (``lowrank_hpc.sensing``; symmetric Gaussian sensing is the
        paper's setting) of shape (n, n).
    y : (op.num_measurements,) float32/float64 measurements, numpy (CPU) or CUDA array (GPU):
        every step is one ``op.forward_factored`` and one pair of adjoint products, so the loop
        runs on the measurements' backend.
    width : k, the width of the over-parameterized factor, an int >= 1.
    reg, smoothing : lam / s^(3/2) and eps / sqrt(s) above (reg >= 0; reg=0 trains without the
        penalty, smoothing > 0).
    threshold : in (0, 1): columns under threshold * (largest column norm) are pruned.
    init_scale : column scale of U0 relative to sqrt(s).
    step : step of the regularized phase and of fine-tuning; None uses 0.25 / s. A step that
        increases the regularized objective is halved (as in ``factored_gd``).
    max_iter, finetune_iter : iterations of the regularized phase and of fine-tuning.
    tol : fine-tuning stops at relative residual ||A(U U^T) - y|| / ||y|| < tol.
    seed : None (drawn) or an int in [0, 2**64): seeds U0 and the estimate of s.
    callback : called as callback(iteration, {"loss", "relative_change", "U", "V"}) in both
        phases (iterations counted from the start of the regularized phase).
    progress, time_limit : a tqdm bar per phase; a time limit (seconds) for the two phases together.

    Returns
    -------
    RecoveryResult with U (n, kept) the fine-tuned factor, V = U, X = U U^T; history of both
    phases (the first ``info["regularized_iterations"]`` entries are the regularized
    objective; relative_change is that of X = U U^T in both phases); info: "kept_columns"
    (indices into the width columns), "column_norms" (width,) after the regularized phase,
    "regularized_iterations", "regularized_stop_reason" ("max_iter", "time_limit",
    "no_progress" or "stationary"), "reg_lambda", "smoothing_eps",
    "spectral_norm_adjoint_y" (s), "finetune" (the fine-tuning RecoveryResult), "seed".
    converged and stop_reason are the fine-tuning's.

    Raises
    ------
    TypeError for non-int width or seed, None for y, dtypes; ValueError for shapes, a non-square
    operator and settings out of range; FloatingPointError when the regularized phase diverges
    (non-finite U) or the penalty zeroes every column (reg far too large for the data).
    """
    call, y = sensing_measurements(_FUNCTION, op, y)
    n1, n2 = op.shape
    if n1 != n2:
        raise ValueError(f"{_FUNCTION}: op must be square (the model is U U^T), got shape {op.shape}")
    seed_value = _checks.draw_seed() if seed is None else seed
    xp, dtype = call.xp, y.dtype
    y_norm = robust_norm(xp, y)
    if y_norm == 0:
        raise ValueError(f"{_FUNCTION}: y is all zeros; the solution is U U^T = 0")
    started = time.perf_counter()
    sigma = quiet(spectral_norm)(op, y, xp, seed=seed_value)
    lam, eps = reg * sigma ** 1.5, smoothing * np.sqrt(sigma)
    step = 0.25 / sigma if step is None else step
    problem = _Problem(call=call, op=op, y=y, xp=xp, symmetric=True, method="gd", step=step, damping=0.0,
                       rebalance_at=1.0, y_norm=y_norm)
    rng = np.random.default_rng(seed_value)
    U0 = init_scale * np.sqrt(sigma) * rng.standard_normal((n1, width)) / np.sqrt(n1)
    state = LoopState(arrays={"U": xp.asarray(U0.astype(dtype))}, scalars={"step": step, "halvings": 0.0},
                      seed=seed_value)

    stalled: dict[str, bool] = {}  # set by an iteration that no step of the halving sequence could take

    def objective(U: Any, z: Any) -> float:
        return problem.loss(z) + lam * group_lasso(xp, U, eps)[0]

    @quiet
    def advance(state: LoopState) -> tuple[float, float]:
        U = state.arrays["U"]
        z = problem.residual(U, None)
        current = objective(U, z)
        grad, _ = problem.gradients(U, None, z)
        if lam:
            grad = grad + lam * group_lasso(xp, U, eps)[1]
        step_now = state.scalars["step"]
        for _ in range(_MAX_HALVINGS_PER_STEP):
            U_new = U - step_now * grad
            value = objective(U_new, problem.residual(U_new, None)) if bool(xp.isfinite(U_new).all()) else np.inf
            if np.isfinite(value) and value <= current * (1 + _GROWTH_ALLOWED):
                break
            step_now *= 0.5
            state.scalars["halvings"] += 1
        else:
            stalled["stuck"] = True
            return current, 0.0
        state.scalars["step"] = step_now
        change = float(relative_change(call, U[None], U[None], U_new[None], U_new[None])[0])
        state.arrays["U"] = U_new
        return value, change

    def stop_reason(state: LoopState) -> Optional[str]:
        # factored_gd's decision. An unmoved U is a fixed point of the iteration (the same U and
        # step give the same trial steps), so running on would only repeat it.
        stuck = stalled.pop("stuck", False)
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        change = state.relative_change[-1]
        if stuck or change == 0:
            previous = state.relative_change[-2] if len(state.relative_change) > 1 else None
            reason = stalled_reason(previous, dtype)
            if stuck or reason == "no_progress" or tol > 0:  # change == 0 here: below 1e-3 tol
                return reason
        return None

    settings = LoopSettings(max_iter=max_iter, tol=tol, progress=progress, time_limit=time_limit,
                            callback=None if callback is None else
                            (lambda i, info: callback(i, {**info, "V": info["U"]})),
                            description=f"{_FUNCTION}[group lasso]")
    state, reason, _ = run_loop(settings, state, advance, "", stop_reason)
    U = state.arrays["U"]
    norms = xp.sqrt(xp.sum(U.astype(np.float64) ** 2, axis=0))
    norms = to_numpy(norms)  # (width,) host bookkeeping
    if reason == "diverged" or not np.isfinite(norms).all() or norms.max() == 0:
        raise FloatingPointError(f"{_FUNCTION}: the regularized phase diverged or zeroed every column (column norms "
                                 f"{norms}); lower step or reg")
    kept = np.flatnonzero(norms >= threshold * norms.max())
    U_kept = xp.ascontiguousarray(U[:, xp.asarray(kept)])
    remaining = None if time_limit is None else max(0.0, time_limit - (time.perf_counter() - started))
    offset = state.iteration
    finetune = factored_gd(op, y, int(kept.size), symmetric=True, method="gd", init=U_kept,
                           step=state.scalars["step"], max_iter=finetune_iter, tol=tol, seed=seed_value,
                           callback=None if callback is None else (lambda i, info: callback(offset + i, info)),
                           progress=progress, time_limit=remaining)
    history = {name: np.concatenate([np.asarray(getattr(state, name), dtype=np.float64), finetune.history[name]])
               for name in ("loss", "relative_change")}
    return RecoveryResult(
        U=finetune.U, V=finetune.V, X=finetune.X, history=history, n_iter=state.iteration + finetune.n_iter,
        converged=finetune.converged, stop_reason=finetune.stop_reason, seconds=time.perf_counter() - started,
        backend=call.backend, step=finetune.step, step_halvings=int(state.scalars["halvings"]) + finetune.step_halvings,
        info={"kept_columns": kept, "column_norms": norms, "regularized_iterations": state.iteration,
              "regularized_stop_reason": reason,
              "reg_lambda": lam, "smoothing_eps": eps, "spectral_norm_adjoint_y": sigma, "finetune": finetune,
              "seed": seed_value})
