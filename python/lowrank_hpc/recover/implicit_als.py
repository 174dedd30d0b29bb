"""ALS for implicit feedback (Hu, Koren and Volinsky, ICDM 2008): the confidence-weighted
objective that the ``implicit`` package and Spark's ``implicitPrefs`` fit.

Every (row, column) pair is an entry: preference p = 1 where an interaction was observed with
value v > 0 (a count, a play time), else 0, at confidence c = 1 + alpha v (1 where nothing was
observed). Minimises

    sum over all (u, i) of c_ui (p_ui - x_u . y_i)^2 + reg (||X||_F^2 + ||Y||_F^2).

The unobserved pairs cost nothing per pair (the Y^T Y trick): row u's normal equations are
(Y^T Y + reg I + sum_{i observed} alpha v_ui y_i y_i^T) x_u = sum_{i observed} (1 + alpha v_ui) y_i,
so a product with them is one r x r GEMM for every row at once plus a sampled product and a
sparse product over the observed entries. The default solver runs ``cg_steps`` conjugate-gradient
steps per row and half-step, warm-started from the previous factors (Takacs, Pilaszy and Tikk
2011; what ``implicit`` runs by default), every row's CG advanced together through those three
products, so it runs on both backends unchanged. ``solver="exact"`` solves each row's r x r
system (O(nnz r^2) to form them), the reference the CG iterates approach.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, resolve
from .._backend import single_threaded_blas
from .._random import gaussian_fill
from ..ops import SparsePattern
from ._driver import LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start, run_loop
from ._measures import relative_change
from ._result import RecoveryResult
from .als import _check_coordinates, _check_rank

_FUNCTION = "implicit_als"
SOLVERS = ("cg", "exact")
# The start's Y: standard normal draws times this (implicit starts from small random factors).
_INIT_SCALE = 0.01
# Numbers in the r x r outer products the exact solver forms at once (16 MB in float64): it takes
# the rows whose entries fit, one row at least.
_EXACT_CHUNK_ENTRIES = 1 << 21


class _Side:
    """One half-step's data: the observed entries in the CSR order of the solved factor (rows for
    X, cols for Y; the shared pattern holds both orders), with that factor's index and the other
    one per entry, and their confidence weights alpha v and targets 1 + alpha v in that order, so
    that the sampled product and the sparse product both walk the entries in sequence."""

    def __init__(self, call: Call, pattern: SparsePattern, vals, alpha: float, n_rows: int, transpose: bool):
        xp = call.xp
        self.call, self.pattern, self.transpose = call, pattern, transpose
        indptr, self.cols = pattern.csr_arrays(transpose)
        self.rows = xp.repeat(xp.arange(n_rows, dtype=self.cols.dtype), xp.diff(indptr).astype(np.int64))
        self.weights = alpha * pattern.in_csr_order(vals, transpose)
        self.targets = 1.0 + self.weights
        self.offsets = xp.asarray(np.array([0, self.rows.shape[0]], dtype=np.int64))
        self.status = call.status(int(self.rows.shape[0]))

    def at_entries(self, X, Y):
        """(nnz,) x_u . y_i at the observed entries in this side's order (u the solved factor's row)."""
        out = self.call.xp.empty(self.rows.shape[0], dtype=X.dtype)
        self.call.module.sampled_product(X[None], Y[None], self.rows, self.cols, self.offsets, out, self.status,
                                         self.call.stream())
        return out

    def times(self, entry_vals, Y):
        """(n_rows, r): row u = sum over its observed entries of entry_vals (in this side's order) * y_i."""
        return self.pattern.solver_product(self.call, entry_vals, Y, self.transpose, in_order=True)

    def apply(self, P, Y, gram):
        """(Y^T Y + reg I) p_u + sum_i alpha v_ui (y_i . p_u) y_i for every row p_u of P."""
        return P @ gram + self.times(self.weights * self.at_entries(P, Y), Y)

    def cg(self, X, Y, gram, steps: int):
        """``steps`` CG steps on every row's system from X (updated copy returned)."""
        xp = self.call.xp
        X = X.copy()
        # b - A x in one sparse pass: sum_i (c_ui - alpha v_ui y_i . x_u) y_i - (Y^T Y + reg I) x_u.
        residual = self.times(self.targets - self.weights * self.at_entries(X, Y), Y) - X @ gram
        direction = residual.copy()
        squared = xp.einsum("ij,ij->i", residual, residual)
        for _ in range(steps):
            product = self.apply(direction, Y, gram)
            curvature = xp.einsum("ij,ij->i", direction, product)
            # A row already solved (zero residual) has a zero direction: it takes no step.
            step = xp.where(curvature > 0, squared / xp.where(curvature > 0, curvature, 1), 0)
            X += step[:, None] * direction
            residual -= step[:, None] * product
            new_squared = xp.einsum("ij,ij->i", residual, residual)
            ratio = xp.where(squared > 0, new_squared / xp.where(squared > 0, squared, 1), 0)
            direction = residual + ratio[:, None] * direction
            squared = new_squared
        return X

    def exact(self, Y, gram, n_rows: int):
        """Every row's system solved: (n_rows, r). The systems are formed for a block of rows at
        a time (at most _EXACT_CHUNK_ENTRIES r x r outer products in memory)."""
        xp = self.call.xp
        r = Y.shape[1]
        right = self.times(self.targets, Y)
        owners, others, weights = self.rows, self.cols, self.weights  # grouped by the solved factor's row
        indptr = self.call.to_host(self.pattern.csr_arrays(self.transpose)[0])
        out = xp.empty((n_rows, r), dtype=Y.dtype)
        chunk = max(1, _EXACT_CHUNK_ENTRIES // (r * r))
        start = 0
        while start < n_rows:
            # Rows [start, stop): as many as keep their entries within the chunk (at least one row).
            stop = max(start + 1, int(np.searchsorted(indptr, indptr[start] + chunk, side="right")) - 1)
            first, last = int(indptr[start]), int(indptr[stop])
            systems = xp.broadcast_to(gram, (stop - start, r, r)).copy()
            if last > first:
                gathered = Y[others[first:last]]
                outer = (weights[first:last, None, None] * gathered[:, :, None]) * gathered[:, None, :]
                xp.add.at(systems, owners[first:last] - start, outer)
            out[start:stop] = xp.linalg.solve(systems, right[start:stop, :, None])[:, :, 0]
            start = stop
        return out


def _loss(side: _Side, X, Y, reg: float) -> Any:
    """The objective for factors X (rows of side) and Y, float64 on the backend."""
    xp = side.call.xp
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    everywhere = xp.sum((X64.T @ X64) * (Y64.T @ Y64))  # sum over all pairs of (x . y)^2
    s = side.at_entries(X, Y).astype(np.float64)
    c = side.targets.astype(np.float64)
    observed = xp.sum(c * (1.0 - s) ** 2 - s * s)  # the observed pairs' terms, minus their share above
    return everywhere + observed + reg * (xp.sum(X64 * X64) + xp.sum(Y64 * Y64))


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
                 alpha: float = 1.0, solver: str = "cg", cg_steps: int = 3, max_iter: int = 15, tol: float = 0.0,
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
        half-step from the previous factors, O(nnz r) per step; "exact": each row's system
        solved, O(nnz r^2 + n r^3).
    max_iter, tol : at most max_iter iterations (each: X given Y, then Y given X; default 15, as
        ``implicit``), or stop once the relative change of X Y^T is below tol (default 0: run
        all iterations).
    seed : None (fresh entropy, in ``info["seed"]``) or an int in [0, 2**64): the start's Y is
        0.01 times standard normal draws of the counter-based generator (the same on CPU and
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
    pattern = SparsePattern(rows, cols, shape)  # range-checks rows and cols (IndexError) before any other work
    _nonnegative_values(call, vals)
    summed = _summed_repeats(call, rows, cols, vals, shape)
    if summed[0] is not rows:
        rows, cols, vals = summed
        pattern = SparsePattern(rows, cols, shape)
    xp, dtype = call.xp, vals.dtype
    by_rows = _Side(call, pattern, vals, alpha, shape[0], transpose=False)
    by_cols = _Side(call, pattern, vals, alpha, shape[1], transpose=True)
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    Y0 = (_INIT_SCALE * gaussian_fill(call, dtype, seed_value, 1, shape[1], rank).reshape(shape[1], rank)).astype(dtype)
    digest = fingerprint(_FUNCTION, rows, cols, vals, shape[0], shape[1], rank, reg, alpha, solver, cg_steps,
                         settings.tol, repr(seed_key)) if checkpoint else ""
    fresh = LoopState(arrays={"X": xp.zeros((shape[0], rank), dtype=dtype), "Y": Y0}, seed=seed_value)
    state = resume_or_start(settings, digest, xp, fresh)
    identity = reg * xp.eye(rank, dtype=dtype)

    def half_step(side: _Side, X, Y, n_rows: int):
        gram = Y.T @ Y + identity
        return side.exact(Y, gram, n_rows) if solver == "exact" else side.cg(X, Y, gram, cg_steps)

    def iterate(state: LoopState) -> tuple[float, float]:
        X0, Y0 = state.arrays["X"], state.arrays["Y"]
        X = half_step(by_rows, X0, Y0, shape[0])
        Y = half_step(by_cols, Y0, X, shape[1])
        loss = _loss(by_rows, X, Y, reg)
        change = relative_change(call, X0[None], Y0[None], X[None], Y[None])
        state.arrays.update(X=X, Y=Y)
        loss, change = (float(x) for x in call.to_host(xp.stack([loss, change[0]])))
        return loss, change

    def stop(state: LoopState) -> Optional[str]:
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        return "converged" if state.relative_change[-1] < settings.tol else None

    with single_threaded_blas():  # the dense work is n x r by r x r: one BLAS thread beside the kernels
        state, reason, _ = run_loop(settings, state, iterate, digest, stop)
    history = {name: np.asarray(values, dtype=np.float64) for name, values in
               (("loss", state.loss), ("relative_change", state.relative_change))}
    return RecoveryResult(U=call.wrap(state.arrays["X"]), V=call.wrap(state.arrays["Y"]), history=history,
                          n_iter=state.iteration, converged=reason == "converged", stop_reason=reason,
                          seconds=time.perf_counter() - started, backend=call.backend,
                          info={"seed": state.seed, "solver": solver, "alpha": alpha, "reg": reg})
