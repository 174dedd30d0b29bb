"""Recovery from decentralized (column) sketches (Srinivasa, Lee, Junge and Romberg, NeurIPS
2019): column j of a rank-r X (n1, n2) is seen only through y_j = A_j x_j, A_j (L, n1), L < n1,
an independent A_j per column (:class:`lowrank_hpc.sensing.ColumnSketch`).

Two methods:

* ``"factored_gd"``: :func:`lowrank_hpc.recover.factored_gd` (ScaledGD by default) on
  1/2 sum_j ||A_j U v_j - y_j||^2, started where the column structure helps: U0 the top-r left
  singular vectors of the truncated back-projection sum_j A_j^T trunc(y_j) e_j^T (sketch entries
  with y^2 above 9 times the mean are zeroed, as in Nayer and Vaswani's truncated spectral init
  for column-wise compressive sensing), then every v_j the exact least-squares fit of y_j on
  A_j U0 (an r x r solve per column, all in one batched call), and the two balanced.
* ``"nuclear"``: the convex relaxation min 1/2 ||A(X) - y||^2 + reg ||X||_* by accelerated
  proximal gradient (FISTA with adaptive restart) whose proximal step is singular value
  thresholding (an SVD, then :func:`lowrank_hpc.ops.soft_threshold` on the singular values),
  step 1 / ||A||^2 (max_j ||A_j||_2^2, exact). With reg=None it solves the equality-
  constrained min ||X||_* s.t. A(X) = y (X itself when recovery succeeds) by Bregman iteration
  (Ma, Goldfarb and Chen 2011): the penalized problem with reg = 0.1 ||A*(y)||_2 against data
  b_k, solved until X changes by less than 1e-7, then b_{k+1} = b_k + (y - A(X_k)) (momentum
  reset), until ||A(X) - y|| / ||y|| < tol. The paper's own relaxation uses a mixed norm and the
  max column norm, solved by ADMM; the nuclear norm is the standard relaxation it compares with.

A shared sketch (``ColumnSketch(..., shared=True)``) measures A X with one A: X is identified
only when L >= n1 (else any X + N with A N = 0 fits), so such a call warns.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import resolve
from ..ops.proximal import soft_threshold
from ..sensing.column_sketch import ColumnSketch
from ._driver import LoopSettings, LoopState, run_loop
from ._result import RecoveryResult
from .factored_gd import METHODS, factored_gd, robust_norm

SKETCH_METHODS = ("factored_gd", "nuclear")
# Sketch entries with y^2 above this multiple of the mean are left out of the spectral start.
_TRUNCATION = 9.0
# The nuclear method's Bregman iteration (reg=None): reg = _BREGMAN_REG ||A*(y)||_2; an inner
# solve ends when X changes by less than _INNER_TOL.
_BREGMAN_REG = 0.1
_INNER_TOL = 1e-7


@_checks.constrained(rank=_checks.positive_int, method=_checks.one_of(*SKETCH_METHODS),
                     gd_method=_checks.one_of(*METHODS), reg=_checks.optional(_checks.nonnegative_float),
                     max_iter=_checks.nonnegative_int, tol=_checks.nonnegative_float, seed=_checks.seed_argument,
                     progress=_checks.flag)
def from_column_sketches(op: Any, y: Any, rank: int, *, method: str = "factored_gd", gd_method: str = "scaled",
                         reg: Optional[float] = None, max_iter: int = 3000, tol: float = 1e-10,
                         seed: Optional[int] = None, callback: Optional[Callable[[int, dict], Any]] = None,
                         progress: bool = False, time_limit: Optional[float] = None) -> RecoveryResult:
    """Recover X (n1, n2) of rank ``rank`` from its column sketches y = op.forward(X).

    Parameters
    ----------
    op : a :class:`lowrank_hpc.sensing.ColumnSketch` (per-column or shared); another kind of
        operator is a TypeError (use :func:`factored_gd` for general sensing operators).
    y : (L * n2,) float32/float64 sketches, column by column (numpy, or a CUDA array: GPU).
    rank : r >= 1, at most min(n1, n2) and at most L (each column's r coefficients need L >= r
        sketches).
    method : "factored_gd" (default) or "nuclear" (see the module docstring).
    gd_method : the :func:`factored_gd` method ("scaled": ScaledGD, the default).
    reg : "nuclear" only: the penalty of ||X||_* (>= 0), or None for the continuation to ~0.
    max_iter, tol : iteration limit; "factored_gd" stops when ||A(U V^T) - y|| / ||y|| < tol,
        "nuclear" when the relative change of X is below tol with reg at its final value.
    seed : None or an int: factored_gd's seed (its step estimate). callback, progress,
        time_limit : as for :func:`factored_gd`.

    Returns
    -------
    :class:`RecoveryResult` with U (n1, rank), V (n2, rank) (X ~ U @ V.T). "nuclear": the
    solution's top-``rank`` singular triplets split as L S^1/2, R S^1/2; ``info`` has
    "singular_values" (all of the solution's nonzero ones), "effective_rank", "reg" (final),
    "step". "factored_gd": factored_gd's result, ``info["init"]`` = "truncated spectral + least squares".

    Raises
    ------
    TypeError when op is not a ColumnSketch; ValueError for y's length, a rank above min(n1, n2)
    or above L, an all-zero y, bad settings (each named).
    """
    function = "from_column_sketches"
    if not isinstance(op, ColumnSketch):
        raise TypeError(f"{function}: op must be a lowrank_hpc.sensing.ColumnSketch (per-column sketches "
                        f"y_j = A_j x_j), got {type(op).__name__}; for other sensing operators use "
                        "lowrank_hpc.recover.factored_gd")
    _checks.required(function, y=y)
    call = resolve(function, y=y)
    y = call.float_array("y", y, (1,))
    n1, n2 = op.shape
    L = op.m_per_column
    if y.shape[0] != op.num_measurements:
        raise ValueError(f"{function}: y has length {y.shape[0]}, expected op.num_measurements = "
                         f"{op.num_measurements} (m_per_column {L} x n2 {n2})")
    if rank > min(n1, n2) or rank > L:
        raise ValueError(f"{function}: rank must be at most min(n1, n2) = {min(n1, n2)} and at most "
                         f"m_per_column = {L}, got {rank}")
    if robust_norm(call.xp, y) == 0:
        raise ValueError(f"{function}: y is all zeros; the solution is X = 0")
    if op.shared and L < n1:
        warnings.warn(f"{function}: a shared sketch with m_per_column = {L} < n1 = {n1} measures A X with one A, "
                      "which does not identify X (any X + N with A N = 0 fits); sketch every column with its own "
                      "matrix (shared=False)", UserWarning, stacklevel=3)
    if method == "factored_gd":
        U0, V0 = _sketch_start(call, op, y, rank)
        result = factored_gd(op, y, rank, method=gd_method, init=(U0, V0), max_iter=max_iter, tol=tol, seed=seed,
                             callback=callback, progress=progress, time_limit=time_limit)
        result.info["init"] = "truncated spectral + least squares"
        return result
    return _nuclear(call, op, y, rank, reg, max_iter, tol, callback, progress, time_limit)


def _sketch_start(call, op: ColumnSketch, y, rank: int):
    """(U0, V0): truncated spectral U, each column's least-squares coefficients, balanced."""
    xp = call.xp
    n1, n2 = op.shape
    L = op.m_per_column
    sketches = y.reshape(n2, L)
    squared = sketches.astype(np.float64) ** 2
    kept = xp.where(squared <= _TRUNCATION * squared.mean(), sketches, 0).astype(y.dtype)
    back = op.adjoint(xp.ascontiguousarray(kept.reshape(-1)))
    U = xp.linalg.svd(back, full_matrices=False)[0][:, :rank]
    V = column_least_squares(call, op, sketches, U)
    # Balance: U V^T = (U W S^1/2)(P S^1/2)^T for V = P S W^T.
    P, S, Wt = xp.linalg.svd(V, full_matrices=False)
    root = xp.sqrt(S)
    return (xp.ascontiguousarray((U @ Wt.T) * root, dtype=y.dtype),
            xp.ascontiguousarray(P * root, dtype=y.dtype))


def column_least_squares(call, op: ColumnSketch, sketches, U):
    """(n2, r) V with v_j = argmin ||A_j U v - y_j||: one batched r x r normal-equation solve."""
    xp = call.xp
    A = op.matrices(call, sketches.dtype)  # (n2, L, n1), or (1, L, n1) shared
    AU = xp.matmul(A, U)  # (n2 or 1, L, r)
    gram = xp.matmul(AU.transpose(0, 2, 1), AU)
    if op.shared:
        rhs = sketches @ AU[0]  # (n2, r)
        return xp.linalg.solve(gram[0], rhs.T).T
    rhs = xp.matmul(AU.transpose(0, 2, 1), sketches[:, :, None])
    return xp.linalg.solve(gram, rhs)[:, :, 0]


def sketch_norm_squared(call, op: ColumnSketch, dtype) -> float:
    """||A||_2^2 = max_j ||A_j||_2^2 (the operator is block diagonal over the columns)."""
    xp = call.xp
    A = op.matrices(call, np.dtype(dtype)).astype(np.float64)
    return float(xp.max(xp.linalg.svd(A, compute_uv=False)[:, 0])) ** 2


def singular_value_threshold(xp, X, threshold: float):
    """prox of threshold * ||.||_*: (left, thresholded singular values, right^T), zero ones dropped."""
    left, sigma, right_t = xp.linalg.svd(X, full_matrices=False)
    shrunk = soft_threshold(sigma, threshold)
    keep = int(xp.count_nonzero(shrunk))
    return left[:, :keep], shrunk[:keep], right_t[:keep]


def _nuclear(call, op: ColumnSketch, y, rank: int, reg: Optional[float], max_iter: int, tol: float,
             callback, progress: bool, time_limit: Optional[float]) -> RecoveryResult:
    """FISTA with adaptive restart on 1/2 ||A(X) - b||^2 + reg ||X||_*; b = y for a given reg,
    else Bregman updates of b towards the equality-constrained problem."""
    started = time.perf_counter()
    xp, dtype = call.xp, y.dtype
    n1, n2 = op.shape
    step = 1.0 / sketch_norm_squared(call, op, dtype)
    bregman = reg is None
    if bregman:
        reg = _BREGMAN_REG * float(xp.linalg.svd(op.adjoint(y).astype(np.float64), compute_uv=False)[0])
    y_norm = robust_norm(xp, y)
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            time_limit=time_limit, description="from_column_sketches[nuclear]")
    settings.validate("from_column_sketches")
    zero = xp.zeros((n1, n2), dtype=dtype)
    state = LoopState(arrays={"X": zero, "Z": zero.copy(), "b": y.copy()},
                      scalars={"t": 1.0, "momentum_restarts": 0.0, "bregman_steps": 0.0, "residual": 1.0})
    kept: dict[str, Any] = {"sigma": xp.zeros(0, dtype=dtype), "left": None, "right": None}

    def advance(state: LoopState):
        try:
            return _advance(state)
        except FloatingPointError:  # the operator's result overflowed the dtype: "diverged", as inf did
            return np.inf, np.inf

    def _advance(state: LoopState):
        X, Z, b, t = state.arrays["X"], state.arrays["Z"], state.arrays["b"], state.scalars["t"]
        gradient = op.adjoint(op.forward(Z) - b)
        left, sigma, right_t = singular_value_threshold(xp, Z - step * gradient, step * reg)
        X_new = (left * sigma) @ right_t
        t_new = 0.5 * (1 + np.sqrt(1 + 4 * t * t))
        # Adaptive restart (O'Donoghue and Candes 2015): momentum off when it points uphill.
        if float(xp.vdot((Z - X_new).ravel(), (X_new - X).ravel())) > 0:
            t_new, Z_new = 1.0, X_new
            state.scalars["momentum_restarts"] += 1
        else:
            Z_new = X_new + ((t - 1) / t_new) * (X_new - X)
        norm = float(xp.linalg.norm(X_new))
        if norm > 0:
            change = float(xp.linalg.norm(X_new - X)) / norm
        else:
            change = 0.0 if float(xp.linalg.norm(X)) == 0 else np.inf
        kept.update(sigma=sigma, left=left, right=right_t)
        misfit = op.forward(X_new) - y
        state.scalars["residual"] = robust_norm(xp, misfit) / y_norm
        if bregman and change < _INNER_TOL:  # add the residual back: the next Bregman step
            state.arrays["b"] = b - misfit
            state.scalars["bregman_steps"] += 1
            t_new, Z_new = 1.0, X_new
        state.arrays["X"], state.arrays["Z"], state.scalars["t"] = X_new, xp.ascontiguousarray(Z_new), t_new
        data = (op.forward(X_new) - b).astype(np.float64)
        return 0.5 * float(xp.vdot(data, data)) + reg * float(sigma.astype(np.float64).sum()), change

    def stop_reason(state: LoopState) -> Optional[str]:
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        if (state.scalars["residual"] if bregman else state.relative_change[-1]) < tol:
            return "converged"
        return None

    state, reason, _ = run_loop(settings, state, advance, "", stop_reason)
    sigma = kept["sigma"]
    width = min(rank, int(sigma.shape[0]))
    U = xp.zeros((n1, rank), dtype=dtype)
    V = xp.zeros((n2, rank), dtype=dtype)
    if width:
        root = xp.sqrt(sigma[:width])
        U[:, :width] = kept["left"][:, :width] * root
        V[:, :width] = kept["right"][:width].T * root
    return RecoveryResult(
        U=call.wrap(U), V=call.wrap(V),
        history={"loss": np.asarray(state.loss, dtype=np.float64),
                 "relative_change": np.asarray(state.relative_change, dtype=np.float64)},
        n_iter=state.iteration, converged=reason == "converged", stop_reason=reason,
        seconds=time.perf_counter() - started, backend=call.backend, step=step,
        info={"singular_values": call.to_host(sigma).astype(np.float64), "effective_rank": int(sigma.shape[0]),
              "reg": reg, "step": step, "bregman_steps": int(state.scalars["bregman_steps"]),
              "momentum_restarts": int(state.scalars["momentum_restarts"]),
              "relative_residual": state.scalars["residual"], "X": call.wrap(state.arrays["X"])})
