"""ALS for implicit feedback (Hu, Koren and Volinsky, ICDM 2008): the confidence-weighted
objective that the ``implicit`` package and Spark's ``implicitPrefs`` fit.

Every (row, column) pair is an entry: preference p = 1 where an interaction was observed with
value v > 0 (a count, a play time), else 0, at confidence c = 1 + alpha v (1 where nothing was
observed). Minimises

    sum over all (u, i) of c_ui (p_ui - x_u . y_i)^2 + reg (||X||_F^2 + ||Y||_F^2).

The unobserved pairs cost nothing per pair (the Y^T Y trick): row u's normal equations are
(Y^T Y + reg I + sum_{i observed} alpha v_ui y_i y_i^T) x_u = sum_{i observed} (1 + alpha v_ui) y_i,
so a product with them costs r^2 for Y^T Y plus one pass over the row's observed entries. Each
half-step is one fused kernel over every row (ops/normal_equations.hpp, explicit ALS's with
per-entry weights and Y^T Y shared by the rows; OpenMP on the CPU, a block per row on the GPU).
The default solver runs ``cg_steps`` conjugate-gradient steps per row and half-step,
warm-started from the previous factors (Takacs, Pilaszy and Tikk 2011; what ``implicit`` runs by
default), one pass over the row's entries per step. ``solver="exact"`` solves each row's r x r
system (O(nnz r^2 + n r^3)), the reference the CG iterates approach.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, resolve
from .._backend import single_threaded_blas
from .._random import gaussian_fill
from ..ops import SparsePattern
from ._driver import LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start, run_loop
from ._measures import gram64, relative_change
from ._result import RecoveryResult
from .als import IMPLICIT_CG_STEPS, _check_coordinates, _check_rank

_FUNCTION = "implicit_als"
SOLVERS = ("cg", "exact")
# The start's Y: standard normal draws times this. 0.01 (implicit's uniform start is that small)
# left the objective after 15 iterations 7-41% above 0.1's on a planted-cluster and a power-law
# interaction log (ranks 16-64, alpha 10-40, exact and CG solves; within 0.2% at alpha 1): with a
# tiny Y the first half-steps are ridge-dominated, X ~ Y^T C p / reg. 1.0 was worse on the latter.
_INIT_SCALE = 0.1


class _Side:
    """One half-step's data: the observed entries in the CSR order of the solved factor (rows for
    X, cols for Y; the shared pattern holds both orders), with their confidence weights alpha v
    and targets 1 + alpha v in that order. Each half-step is one fused kernel over every row's
    normal equations (ops/normal_equations.hpp, as explicit ALS's), with Y^T Y as the term the
    rows share."""

    def __init__(self, call: Call, pattern: SparsePattern, vals, alpha: float, n_rows: int, transpose: bool):
        xp = call.xp
        self.call, self.n_rows = call, n_rows
        self.indptr, self.cols = pattern.csr_arrays(transpose)
        self.pattern, self.transpose = pattern, transpose
        ordered = pattern.in_csr_order(vals, transpose)
        self.weights = (alpha * ordered).astype(vals.dtype)
        # v = 0 is no interaction: preference 0 at confidence 1, as if unobserved (target 0, weight 0).
        self.targets = xp.where(ordered > 0, 1.0 + self.weights, 0).astype(vals.dtype)

    @functools.cached_property
    def _entries(self):
        """(rows, offsets, status) for the sampled product at the entries: only the loss's side
        needs them."""
        xp, nnz = self.call.xp, int(self.cols.shape[0])
        rows = self.pattern.keys_in_csr_order(self.transpose).astype(self.cols.dtype, copy=False)
        return rows, xp.asarray(np.array([0, nnz], dtype=np.int64)), self.call.status(nnz)

    def at_entries(self, X, Y):
        """(nnz,) x_u . y_i at the observed entries in this side's order (u the solved factor's row)."""
        rows, offsets, status = self._entries
        out = self.call.xp.empty(rows.shape[0], dtype=X.dtype)
        self.call.module.sampled_product(X[None], Y[None], rows, self.cols, offsets, out, status, self.call.stream())
        return out

    def solve(self, X, Y, Y_gram, reg: float, cg_steps: int):
        """The rows of X (n_rows, r) given Y: ``cg_steps`` CG steps from X (0: exact solves);
        Y_gram (r, r) float64 = Y^T Y, the term every row shares. A new array."""
        out = X.copy()
        singular = self.call.xp.zeros(1, dtype=np.int64)
        self.call.module.als_update_rows(self.indptr, self.cols, self.targets, Y[None], self.n_rows, reg, False, None,
                                         cg_steps, out[None], singular, self.call.stream(), weights=self.weights,
                                         shared=Y_gram.astype(Y.dtype)[None])
        return out


def _loss(side: _Side, X, Y, X_gram, Y_gram, reg: float) -> Any:
    """The objective for factors X (rows of side) and Y with float64 Grams X^T X and Y^T Y,
    float64 on the backend."""
    xp = side.call.xp
    everywhere = xp.sum(X_gram * Y_gram)  # sum over all pairs of (x . y)^2
    s = side.at_entries(X, Y).astype(np.float64)
    c = 1.0 + side.weights.astype(np.float64)
    p = (side.targets > 0).astype(np.float64)
    observed = xp.sum(c * (p - s) ** 2 - s * s)  # the observed pairs' terms, minus their share above
    return everywhere + observed + reg * (xp.trace(X_gram) + xp.trace(Y_gram))


def _nonnegative_values(call: Call, vals) -> None:
    negative = int(call.to_host((vals < 0).sum()))
    if negative:
        raise ValueError(f"{call.function}: vals must be >= 0 (interaction counts or strengths: confidence is "
                         f"1 + alpha * vals); {negative} value(s) are negative")


def _summed_repeats(call: Call, rows, cols, vals, shape: tuple[int, int]):
    """(rows, cols, vals) with each pair once, the values of repeated pairs added up (an
    interaction log lists a pair once per event; scipy's coo format sums them alike)."""
    xp = call.xp
    keys = rows.astype(np.int64) * shape[1] + cols.astype(np.int64)
    if keys.shape[0] < 2 or bool(xp.all(keys[1:] > keys[:-1])):
        return rows, cols, vals
    unique, inverse = xp.unique(keys, return_inverse=True)
    if unique.shape[0] == keys.shape[0]:
        return rows, cols, vals
    summed = xp.bincount(inverse.ravel(), weights=vals.astype(np.float64), minlength=unique.shape[0])
    return (unique // shape[1]).astype(rows.dtype), (unique % shape[1]).astype(cols.dtype), summed.astype(vals.dtype)


@_checks.constrained(**LOOP_CONSTRAINTS, shape=_checks.shape_2d, reg=_checks.nonnegative_float,
                     alpha=_checks.nonnegative_float, solver=_checks.one_of(*SOLVERS),
                     cg_steps=_checks.positive_int, seed=_checks.seed_argument)
def implicit_als(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], rank: int, *, reg: float = 0.01,
                 alpha: float = 1.0, solver: str = "cg", cg_steps: int = IMPLICIT_CG_STEPS, max_iter: int = 15, tol: float = 0.0,
                 seed: Optional[int] = None, callback: Optional[Callable[[int, dict[str, Any]], Any]] = None,
                 progress: bool = False, checkpoint: Optional[str] = None, checkpoint_every: int = 5,
                 time_limit: Optional[float] = None) -> RecoveryResult:
    """Factor an implicit-feedback matrix: X (n1, rank) and Y (n2, rank) with scores X Y^T.

    Parameters
    ----------
    rows, cols : (nnz,) integer arrays (any integer dtype and layout; numpy, or CUDA arrays to
        solve on the GPU), 0 <= rows < n1, 0 <= cols < n2; a pair listed more than once (an
        interaction log) is one entry whose value is the sum of its values.
    vals : (nnz,) float32/float64 interaction strengths >= 0 (finite); the solve runs in this
        dtype. A pair with v > 0 has preference 1 and confidence 1 + alpha v; v = 0 is the same
        as an unobserved pair.
    shape : (n1, n2); rank : an int in [1, min(shape)].
    reg, alpha : the penalty reg >= 0 on ||X||^2 + ||Y||^2 (not scaled by counts) and the
        confidence slope alpha >= 0; defaults 0.01 and 1.0 are ``implicit``'s.
    solver : "cg" (default): ``cg_steps`` (default 3) conjugate-gradient steps per row and
        half-step from the previous factors, O(nnz r + n r^2) per step; "exact": each row's
        system solved, O(nnz r^2 + n r^3). On the GPU a row's system lives in a block's shared
        memory: "exact" takes ranks whose r^2 + r numbers fit in 48 KiB (110 in float32), "cg"
        ranks whose 3 r fit (ValueError beyond). A row without interactions gets zero factors.
    max_iter, tol : at most max_iter iterations (each: X given Y, then Y given X; default 15, as
        ``implicit``), or stop once the relative change of X Y^T is below tol (default 0: run
        all iterations).
    seed : None (fresh entropy, in ``info["seed"]``) or an int in [0, 2**64): the start's Y is
        0.1 times standard normal draws of the counter-based generator (the same on CPU and
        GPU); X starts at 0, so the first half-step solves for it.
    callback, progress, checkpoint, checkpoint_every, time_limit : as for
        :func:`lowrank_hpc.recover.als`.

    Returns
    -------
    RecoveryResult with U = X (n1, rank) and V = Y (n2, rank) in the dtype and array type of
    vals (scores X @ Y.T); history {"loss", "relative_change"} (n_iter,) float64, loss the
    objective above after each iteration; n_iter, converged, stop_reason, seconds, backend;
    info "seed", "solver", "alpha", "reg".

    Raises
    ------
    TypeError for dtypes and mixed host/device arrays; ValueError for shapes, a rank outside
    [1, min(shape)], negative reg or alpha, negative, NaN or inf values and bad settings; IndexError for an out-of-range index.
    """
    started = time.perf_counter()
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit, description=_FUNCTION)
    rank = _check_rank(_FUNCTION, shape, rank)
    _checks.required(_FUNCTION, rows=rows, cols=cols, vals=vals)
    call = resolve(_FUNCTION, rows=rows, cols=cols, vals=vals)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals)
    pattern = SparsePattern(rows, cols, shape, copy=False)  # range-checks rows and cols (IndexError) before any other work
    _nonnegative_values(call, vals)
    summed = _summed_repeats(call, rows, cols, vals, shape)
    if summed[0] is not rows:
        rows, cols, vals = summed
        pattern = SparsePattern(rows, cols, shape, copy=False)
    xp, dtype = call.xp, vals.dtype
    limit = call.module.ALS_SYSTEM_BYTES_LIMIT  # None where a row's system may take any size
    words, what = (3 * rank, "3 rank") if solver == "cg" else (rank * rank + rank, "(rank^2 + rank)")
    if limit is not None and words * dtype.itemsize > limit:
        raise ValueError(f"{_FUNCTION}: rank {rank} is too large for the {call.backend} solver={solver!r} kernel "
                         f"with {dtype} ({what} * {dtype.itemsize} bytes must fit in {limit // 1024} KiB of shared "
                         f"memory); solver='cg' takes any rank up to {limit // (3 * dtype.itemsize)}")
    by_rows = _Side(call, pattern, vals, alpha, shape[0], transpose=False)
    by_cols = _Side(call, pattern, vals, alpha, shape[1], transpose=True)
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    Y0 = (_INIT_SCALE * gaussian_fill(call, dtype, seed_value, 1, shape[1], rank).reshape(shape[1], rank)).astype(dtype)
    digest = fingerprint(_FUNCTION, rows, cols, vals, shape[0], shape[1], rank, reg, alpha, solver, cg_steps,
                         settings.tol, repr(seed_key)) if checkpoint else ""
    fresh = LoopState(arrays={"X": xp.zeros((shape[0], rank), dtype=dtype), "Y": Y0}, seed=seed_value)
    state = resume_or_start(settings, digest, xp, fresh)
    steps = 0 if solver == "exact" else cg_steps
    # One float64 Gram per factor and iteration serves the other half-step's shared term, the
    # loss and the next relative change. Kept beside the state, not in it: after a resume the
    # first iteration computes Y0's afresh, the same numbers.
    grams: dict[str, Any] = {}

    def iterate(state: LoopState) -> tuple[float, float]:
        X0, Y0 = state.arrays["X"], state.arrays["Y"]
        Y0_gram = grams["Y"] if "Y" in grams else gram64(call, Y0)
        X = by_rows.solve(X0, Y0, Y0_gram, reg, steps)
        X_gram = gram64(call, X)
        Y = by_cols.solve(Y0, X, X_gram, reg, steps)
        Y_gram = gram64(call, Y)
        loss = _loss(by_rows, X, Y, X_gram, Y_gram, reg)
        X0_gram = grams["X"] if "X" in grams else gram64(call, X0)
        change = relative_change(call, X0[None], Y0[None], X[None], Y[None], U0_gram=X0_gram, V0_gram=Y0_gram,
                                 V1_gram=Y_gram)
        grams.update(X=X_gram, Y=Y_gram)
        state.arrays.update(X=X, Y=Y)
        loss, change = (float(x) for x in call.to_host(xp.stack([loss, change[0]])))
        return loss, change

    def stop(state: LoopState) -> Optional[str]:
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        return "converged" if state.relative_change[-1] < settings.tol else None

    with single_threaded_blas():  # BLAS's threads would spin beside the OpenMP kernels
        state, reason, _ = run_loop(settings, state, iterate, digest, stop)
    history = {name: np.asarray(values, dtype=np.float64) for name, values in
               (("loss", state.loss), ("relative_change", state.relative_change))}
    return RecoveryResult(U=call.wrap(state.arrays["X"]), V=call.wrap(state.arrays["Y"]), history=history,
                          n_iter=state.iteration, converged=reason == "converged", stop_reason=reason,
                          seconds=time.perf_counter() - started, backend=call.backend,
                          info={"seed": state.seed, "solver": solver, "alpha": alpha, "reg": reg})


def implicit_fold_in(rows: Any, cols: Any, vals: Any, n_rows: int, Y: Any, *, reg: float, alpha: float) -> Any:
    """(n_rows, r) factors of new rows against a fitted Y (n2, r): each row's exact implicit-ALS
    solve, by the half-step's kernel. rows, cols, vals (nnz,) are the new rows' interactions
    (0 <= rows < n_rows, 0 <= cols < n2, vals >= 0 of Y's dtype, each pair once). A row without
    interactions (or with a singular system, possible only with reg = 0) gets zeros."""
    call = resolve("implicit_fold_in", rows=rows, cols=cols, vals=vals, Y=Y)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals)
    out = call.xp.zeros((n_rows, Y.shape[1]), dtype=Y.dtype)
    if rows.shape[0] == 0:
        return out
    side = _Side(call, SparsePattern(rows, cols, (n_rows, Y.shape[0]), copy=False), vals, alpha, n_rows, transpose=False)
    return side.solve(out, Y, gram64(call, Y), reg, 0)
