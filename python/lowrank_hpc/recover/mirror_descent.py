"""Mirror descent for matrix sensing with spectral mirror maps (Wu & Rebeschini 2021).

Full-matrix parameterization (no factors): the iterate X is the image of a dual matrix W under
the inverse mirror map, W takes plain gradient steps. With the spectral entropy (PSD X) or the
spectral hypentropy (any X) and a small init scale alpha, the limit is the interpolant of least
Bregman divergence from X_0, which tends to the minimum-nuclear-norm interpolant as alpha -> 0.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import sum_of_squares
from ._driver import LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start, run_loop
from ._operator_math import spectral_norm
from ._result import RecoveryResult
from .factored_gd import _GROWTH_ALLOWED, _MAX_HALVINGS_PER_STEP, quiet, robust_norm, sensing_measurements

_FUNCTION = "mirror_descent"
MIRROR_MAPS = ("entropy", "hypentropy")


def primal(xp: Any, W: Any, mirror: str, alpha: float) -> tuple[Any, Any, Any, Any]:
    """(X, left, values, right) with X = left diag(values) right^T, the inverse mirror map of W.

    "entropy": W symmetric, X = expm(W) (values = exp(eigenvalues), right = left).
    "hypentropy": X = alpha sinh(W) in the spectral sense: W = P S Q^T, values = alpha sinh(S).
    """
    if mirror == "entropy":
        eigenvalues, vectors = xp.linalg.eigh(0.5 * (W + W.T))
        values = xp.exp(eigenvalues)
        return (vectors * values) @ vectors.T, vectors, values, vectors
    left, singular, right_t = xp.linalg.svd(W, full_matrices=False)
    # In float64: float32 sinh overflows past 89, which W passes where X / alpha > 3e38 (X ~ 1e3, alpha 1e-36).
    values = (alpha * xp.sinh(singular.astype(np.float64))).astype(W.dtype)
    return (left * values) @ right_t, left, values, right_t.T


@_checks.constrained(**LOOP_CONSTRAINTS, init_scale=_checks.positive_float,
                     step=_checks.optional(_checks.positive_float), seed=_checks.seed_argument,
                     mirror=_checks.one_of(*MIRROR_MAPS))
def mirror_descent(op: Any, y: Any, *, mirror: str = "entropy", init_scale: float = 1e-3,
                   step: Optional[float] = None, max_iter: int = 5000, tol: float = 1e-8,
                   seed: Optional[int] = None, callback: Optional[Callable[[int, dict], Any]] = None,
                   progress: bool = False, checkpoint: Optional[str] = None, checkpoint_every: int = 100,
                   time_limit: Optional[float] = None) -> RecoveryResult:
    """Recover a low-rank matrix from y = A(M) by mirror descent on L(X) = 1/2 ||A(X) - y||^2
    with a spectral mirror map (Wu & Rebeschini, "Implicit Regularization in Matrix Sensing via
    Mirror Descent", NeurIPS 2021).

    The gradient is grad L(X) = A*(A(X) - y), which for the Gaussian operators of
    ``lowrank_hpc.sensing`` (entries N(0, 1/m)) is the paper's (1/m) sum_i (<A_i, X> - y_i) A_i
    for N(0, 1) matrices A_i.

    - mirror="entropy" (PSD X, the spectral entropy tr(X log X - X)): W_0 = log(alpha) I, so
      X_0 = alpha I; W <- W - step * sym(grad L(X)), X = expm(W) (by eigh of W).
    - mirror="hypentropy" (rectangular or indefinite X, the spectral hypentropy with parameter
      alpha): W_0 = 0, so X_0 = 0; W <- W - step * grad L(X), X = alpha sinh(W) applied to the
      singular values of W (by an SVD of W), which is (alpha/2)(e^W - e^-W) for symmetric W.

    Each iteration is one ``op.forward``, one ``op.adjoint`` and one n x n eigh (or n1 x n2 SVD),
    all on the measurements' backend (numpy: CPU; CUDA arrays: GPU through CuPy's linalg).
    A step that would increase the loss (or make it non-finite) is halved, as in ``factored_gd``.

    [check] Followed the update rules of the project spec (solvers.md, "Mirror descent"); the
    paper's experiment uses step 1 on data of unit nuclear norm, so the default step here is
    chosen relative to the data: 2 / ||A*(y)||_2 (about 2.7 on the unit-nuclear-norm problems of
    the tests); a step that increases the loss is halved, and stays halved.

    How close to minimum nuclear norm: run to convergence, the result is the interpolant of least
    Bregman divergence from X_0 (the dual iterate stays in W_0 + range(A*)), for "entropy"
    argmin tr X + tr(X log X - X) / log(1/alpha). It tends to the minimum-nuclear-norm
    interpolant as alpha -> 0, but only at the rate 1/log(1/alpha) where that interpolant is
    not M (measured, PSD 20 x 20 rank 2, m = 60: distance 0.26, 0.13, 0.069 at alpha = 1e-3,
    1e-6, 1e-12, i.e. 1.8 / log(1/alpha); rectangular 8 x 10, m = 30, "hypentropy": 0.062 at
    1e-10, 0.017 at 1e-40, where the error is the minimum-nuclear-norm solution's to 1%). Where
    nuclear-norm minimization recovers M the approach is much faster. Smaller alpha needs more
    iterations (each eigen-direction grows from alpha: ~log(1/alpha) / gradient), so pick the
    smallest alpha the iteration budget converges from (down to the smallest normal number of
    y's dtype: 1.2e-38 in float32, 2.2e-308 in float64; below it is a ValueError).

    Parameters
    ----------
    op : a sensing operator (``lowrank_hpc.sensing``) of shape (n1, n2); square for "entropy"
        (a symmetric operator, e.g. GaussianSensing(symmetric=True), measures PSD matrices).
    y : (op.num_measurements,) float32/float64 measurements, numpy or CUDA array.
    mirror : "entropy" or "hypentropy".
    init_scale : alpha, the init scale (at least the smallest normal number of y's dtype);
        smaller alpha, closer to minimum nuclear norm.
    step : the mirror step; None uses 2 / ||A*(y)||_2 (estimated by subspace iteration).
    max_iter, tol : stop after max_iter iterations, or when ||A(X) - y|| / ||y|| < tol
        ("converged"), or when the relative change of X falls below 1e-3 * tol ("stationary");
        "diverged" when the loss is not finite, "no_progress" when no halving of the step
        decreases the loss.
    seed : None (drawn) or an int in [0, 2**64): seeds the step estimate (the iteration is
        deterministic); result.info["seed"] is the seed used.
    callback : callback(iteration, {"loss", "relative_change", "W"}) each iteration (W is the
        dual iterate: log X for "entropy", arcsinh(X / alpha) for "hypentropy").
    progress, checkpoint, checkpoint_every, time_limit : as in ``factored_gd`` (the checkpoint
        stores W; a rerun with it resumes and ends with the same result).

    Returns
    -------
    RecoveryResult with X (n1, n2) the recovered matrix, U = left sqrt(values) and
    V = right sqrt(values) its full-width factors (X = U V^T; U = V for "entropy"),
    history {"loss", "relative_change"}, info: "mirror", "init_scale", "nuclear_norm" of X,
    "effective_rank" (exp of the entropy of the normalized singular values), "seed".

    Raises
    ------
    TypeError for None y, a non-operator op or bad dtypes; ValueError for shapes (a non-square
    operator with "entropy") and settings out of range.
    """
    call, y = sensing_measurements(_FUNCTION, op, y)
    n1, n2 = op.shape
    if mirror == "entropy" and n1 != n2:
        raise ValueError(f"{_FUNCTION}: mirror='entropy' recovers PSD matrices and needs a square operator, got "
                         f"shape {op.shape}; use mirror='hypentropy' for rectangular matrices")
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=f"{_FUNCTION}[{mirror}]")
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    xp, dtype = call.xp, y.dtype
    smallest = float(np.finfo(dtype).tiny)
    if init_scale < smallest:  # X would underflow to 0 and stay there while W moves: a false "stationary"
        raise ValueError(f"{_FUNCTION}: init_scale = {init_scale:.3g} is below the smallest normal {dtype} number "
                         f"({smallest:.3g}), where X underflows to 0; pass float64 y or a larger init_scale")
    y_norm = robust_norm(xp, y)
    if y_norm == 0:
        raise ValueError(f"{_FUNCTION}: y is all zeros; the solution is X = 0")
    sigma = None
    if step is None:
        sigma = quiet(spectral_norm)(op, y, xp, seed=seed_value)
        step = 2.0 / sigma
    symmetric = mirror == "entropy"
    if symmetric:
        W0 = xp.asarray((np.log(init_scale) * np.eye(n1)).astype(dtype))
    else:
        W0 = xp.zeros((n1, n2), dtype=dtype)
    digest = fingerprint(_FUNCTION, mirror, init_scale, step, tol, op.shape, type(op).__name__,
                         getattr(op, "seed", None), y, seed_key)
    fresh = LoopState(arrays={"W": W0}, scalars={"step": float(step), "halvings": 0.0}, seed=seed_value)
    state = resume_or_start(settings, digest, xp, fresh)
    cache: dict[str, Any] = {}

    def evaluate(W: Any) -> tuple[Any, Any, float]:
        X = primal(xp, W, mirror, init_scale)[0]
        if not bool(xp.isfinite(X).all()):  # exp/sinh of a finite W overflowed: a step to halve, not bad data
            return X, None, np.inf
        try:
            z = op.forward(xp.ascontiguousarray(X)) - y
        except FloatingPointError:  # A(X) of a finite X overflowed the dtype: a step to halve as well
            return X, None, np.inf
        return X, z, 0.5 * sum_of_squares(xp, z)

    @quiet
    def advance(state: LoopState) -> tuple[float, float]:
        W = state.arrays["W"]
        X, z, loss = cache.pop("current", None) or evaluate(W)
        try:
            grad = op.adjoint(z)
        except FloatingPointError:  # the gradient overflowed the dtype: no step can follow it
            return np.inf, 0.0
        if symmetric:
            grad = 0.5 * (grad + grad.T)
        step_now = state.scalars["step"]
        for _ in range(_MAX_HALVINGS_PER_STEP):
            W_new = W - step_now * grad
            X_new, z_new, loss_new = evaluate(W_new) if bool(xp.isfinite(W_new).all()) else (None, None, np.inf)
            if np.isfinite(loss_new) and loss_new <= loss * (1 + _GROWTH_ALLOWED):
                break
            step_now *= 0.5
            state.scalars["halvings"] += 1
        else:
            cache["current"], cache["stuck"] = (X, z, loss), True
            return loss, 0.0
        state.scalars["step"] = step_now
        change = robust_norm(xp, X_new - X) / max(robust_norm(xp, X), np.finfo(np.float64).tiny)
        state.arrays["W"] = W_new
        cache["current"] = (X_new, z_new, loss_new)
        return loss_new, change

    def stop_reason(state: LoopState) -> Optional[str]:
        if cache.pop("stuck", False):
            return "no_progress"
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        if np.sqrt(2 * state.loss[-1]) / y_norm < tol:
            return "converged"
        if state.relative_change[-1] < 1e-3 * tol:
            return "stationary"
        return None

    state, reason, seconds = run_loop(settings, state, advance, digest, stop_reason)
    X, left, values, right = primal(xp, state.arrays["W"], mirror, init_scale)
    magnitudes = xp.abs(values).astype(np.float64)
    nuclear = float(magnitudes.sum())
    weights = magnitudes / nuclear if nuclear > 0 else magnitudes
    entropy = -float(xp.sum(xp.where(weights > 0, weights * xp.log(xp.where(weights > 0, weights, 1.0)), 0.0)))
    root = xp.sqrt(xp.abs(values))
    sign = xp.where(values < 0, -1.0, 1.0).astype(values.dtype)
    U = xp.ascontiguousarray(left * root)
    V = U if symmetric else xp.ascontiguousarray(right * (root * sign))
    return RecoveryResult(
        U=call.wrap(U), V=call.wrap(V), X=call.wrap(xp.ascontiguousarray(X)),
        history={"loss": np.asarray(state.loss), "relative_change": np.asarray(state.relative_change)},
        n_iter=state.iteration, converged=reason in ("converged", "stationary"), stop_reason=reason,
        seconds=seconds, backend=call.backend, step=state.scalars["step"], step_halvings=int(state.scalars["halvings"]),
        info={"mirror": mirror, "init_scale": init_scale, "nuclear_norm": nuclear,
              "effective_rank": float(np.exp(entropy)) if nuclear > 0 else 0.0,
              "spectral_norm_adjoint_y": sigma, "seed": state.seed})
