"""Alternating least squares (ALS) for matrix completion: one problem, or a batch of problems
of equal shape advanced together in the same kernel launches.

Each iteration solves every row of U given V, then every row of V given U; each row's
r x r regularised normal equations are solved by the square-root-free Cholesky factorisation
(G = L D L^T) shared by the CPU (OpenMP) and GPU (CUDA) backends
(``lowrank_hpc/ops/normal_equations.hpp``). The objective is

    sum over observed (i, j) of (M_ij - <u_i, v_j>)^2 + reg * sum_i w_i ||u_i||^2 + reg * sum_j w_j ||v_j||^2

with w = 1 (``reg_scaling="none"``) or w = the row's / column's number of observed entries
(``reg_scaling="count"``: ALS-WR, the weighting of Spark MLlib's ALS, so the same data and reg
give the model Spark gives). ALS never increases it.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, offsets_array, offsets_input, resolve
from .._backend import single_threaded_blas
from .._random import gaussian_fill
from ..ops._csr_order import csr_order
from ._driver import (LOOP_CONSTRAINTS, Digest, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start,
                      run_loop)
from ._measures import ChangeGrams, relative_change, row_blocks
from ._result import RecoveryResult

REG_SCALINGS = ("none", "count")
SOLVERS = ("auto", "cholesky", "cg")
# solver="auto" takes conjugate gradients from this rank on (or where the backend's exact row
# system does not fit it): a row's exact solve costs entries * r^2 / 2 + r^3 / 6 multiply-adds,
# CG_STEPS warm-started CG steps 2 (CG_STEPS + 1) entries * r. On MovieLens-20M's shape (CPU,
# BENCHMARKS.md session 13) an exact iteration took 2.37 s at r = 64 against CG's 2.52 (and
# ends lower), 4.72 s at r = 96 against 4.41, 7.94 s at r = 128 (CG: about 6, session 12). Explicit
# feedback takes 5 steps: there 3 steps left the loss 5.6% (r = 64) and 11% (r = 128) above the
# exact solver's after 12 iterations, 5 steps 0.3% and 1.5% below it, and 5 steps led 3 at
# equal time too (session 12). Implicit feedback keeps implicit's default of 3 (the peer's
# work per iteration).
CG_MIN_RANK = 96
CG_STEPS = 5
IMPLICIT_CG_STEPS = 3


def uses_cg(solver: str, rank: int, itemsize: int, system_bytes_limit: Optional[int]) -> bool:
    """Whether ALS row solves run CG: solver "cg", or "auto" from CG_MIN_RANK on and wherever
    the exact row system ((rank^2 + rank) numbers of ``itemsize`` bytes) exceeds the backend's
    ``system_bytes_limit`` (None: any size; the CUDA kernel's shared memory)."""
    if solver != "auto":
        return solver == "cg"
    return rank >= CG_MIN_RANK or (system_bytes_limit is not None
                                   and (rank * rank + rank) * itemsize > system_bytes_limit)


# Most bytes of old factor rows the rows kernel's iteration copies at a time (for the relative
# change): a block of U, not the whole of U and V (169 MiB at r = 256 on MovieLens-20M's shape).
_BLOCK_COPY_BYTES = 32 << 20
# Below this many problems per thread, parallel rows beat parallel problems, unless the whole
# batch is less work than is worth sharing among threads.
_FUSED_MIN_PROBLEMS = 8
_FUSED_MAX_SERIAL_WORK = 1 << 18
# The dense kernel (a SIMD register of problems per group, every lane on the same m x n grid)
# pays for unobserved cells too: worth it for small, densely observed problems of small rank,
# with a group for every thread. It gives each problem the same bits as the sparse kernels.
_DENSE_MAX_RANK = 4  # = als_cpu.cpp's kPerEntryMaxRank: the ranks whose sparse solves are per entry, as dense's
_DENSE_MAX_CELLS = 4096
_DENSE_MIN_DENSITY = 0.2


class _Problem:
    """Validated data of B problems of one shape, with both CSR orders built once per solve.

    Each order keeps (indptr, others, vals) with the values moved into CSR order once, so the
    row solves stream them instead of gathering through a permutation every half-step. Both
    come from the backend's ``coo_to_csr`` (a stable sort: each row keeps its entries in input
    order on either backend), which also checks every index once per solve.
    """

    def __init__(self, call: Call, rows, cols, vals, offsets, batch: int, shape: tuple[int, int], rank: int,
                 reg: float, count_scaling: bool, cg_steps: int = 0, keep_permutations: bool = False):
        self.call, self.xp = call, call.xp
        self.rows, self.cols, self.vals = rows, cols, vals
        self.batch, (self.m, self.n), self.rank = batch, shape, rank
        self.reg, self.count_scaling = reg, count_scaling
        self.cg_steps = cg_steps  # 0: exact row solves; else conjugate-gradient steps (the "rows" kernel)
        self.nnz = int(rows.shape[0])
        # The CSR permutations (8 bytes an entry each) only for replace_values: kept, they raised
        # ALS's peak on 20M row-sorted entries from 218 to 370 MiB above the input.
        self.keep_permutations = keep_permutations
        self._perms: dict[str, Any] = {}
        self._previous: Optional[tuple[Any, Any]] = None  # U, V before the iteration (rows kernel, batch > 1)
        self._block_copy: Optional[Any] = None  # old rows of one block (rows kernel, one problem)
        self.offsets = offsets_array(call, "offsets", offsets, batch, self.nnz)
        self.dense = self._dense_groups() if cg_steps == 0 else None
        if self.dense is not None:
            self.kernel = "dense"
            return  # the dense kernel needs neither CSR order nor the weights
        many = batch >= _FUSED_MIN_PROBLEMS * _threads(call)
        small = self.nnz * rank * rank < _FUSED_MAX_SERIAL_WORK  # too little work to share out
        # The fused iteration is the CPU module's own kernel (its data stays in one core's cache).
        fused = hasattr(call.module, "als_iterations") and (many or small) and cg_steps == 0
        self.kernel = "fused" if fused else "rows"
        self.by_rows = self._order(rows, cols, self.m, "rows")
        self.by_cols = self._order(cols, rows, self.n, "cols")
        # Penalty weights w (batch, n_key): observation counts for "count", else ones.
        self.row_weights = self._weights(self.by_rows[0], self.m)
        self.col_weights = self._weights(self.by_cols[0], self.n)
        # The rows kernel's fit term. Exact solves on the CPU: a pass of its own after both
        # half-steps, over the order that gathers the smaller factor ("rows": V; it stays in cache;
        # at r = 64 on MovieLens-20M's shape 100 ms, where sums inside the V half-step took 145).
        # Else (None) from the V half-step, U final: the CPU's CG keeps each entry's residual
        # through its own steps, no pass at all (r = 256: the pass took 0.58 s an iteration).
        self.fit_pass = (None if cg_steps or not hasattr(call.module, "als_squared_residuals")
                         else "rows" if self.n <= self.m else "cols")

    def _order(self, keys, others, n_key: int, name: str):
        """(indptr, others, vals) of one CSR orientation (its permutation kept for replace_values
        when the problem keeps permutations)."""
        indptr, perm, others_sorted, vals_sorted = csr_order(self.call, keys, others, self.vals, self.offsets, n_key,
                                                             name, keep_perm=self.keep_permutations)
        self._perms[name] = perm
        return indptr, others_sorted, vals_sorted

    def replace_values(self, vals) -> None:
        """New values (nnz,) on the same entries, keeping the CSR orders: for a solver that refits
        one pattern many times (mixture completion's annealing), the sorts are paid once."""
        self.vals = vals
        if self.dense is not None:
            self.dense = self._dense_groups()
            return
        if not self.keep_permutations:
            raise RuntimeError("replace_values needs the problem built with keep_permutations=True")
        moved = {name: vals if perm is None else vals[perm] for name, perm in self._perms.items()}
        self.by_rows = (self.by_rows[0], self.by_rows[1], moved["rows"])
        self.by_cols = (self.by_cols[0], self.by_cols[1], moved["cols"])

    def _dense_groups(self):
        """The arrays of the dense kernel (groups of 64 bytes' worth of problems, one per SIMD
        lane, laid out on the full m x n grid), or None where the sparse kernels fit better
        (or the backend has no dense kernel), or where the entries are not in strictly
        increasing (row, col) order within each problem (then only the sparse kernels give each
        problem the bits the single-problem solver does)."""
        if not hasattr(self.call.module, "als_dense_pack"):
            return None
        width = 64 // self.vals.dtype.itemsize
        cells = self.m * self.n
        if (self.rank > _DENSE_MAX_RANK or cells > _DENSE_MAX_CELLS
                or self.nnz < _DENSE_MIN_DENSITY * self.batch * cells
                or self.batch < width * _threads(self.call)):
            return None
        groups = -(-self.batch // width)
        xp = self.xp
        arrays = (xp.zeros((groups, self.m, self.n), dtype=np.uint8 if width == 8 else np.uint16),
                  xp.zeros((groups, self.m, self.n, width), dtype=self.vals.dtype),
                  xp.zeros((groups, self.m, width), dtype=self.vals.dtype),
                  xp.zeros((groups, self.n, width), dtype=self.vals.dtype))
        ordered = self.call.module.als_dense_pack(self.rows, self.cols, self.vals, self.offsets, *arrays)
        return arrays if ordered else None

    def _weights(self, indptr, n_key: int):
        xp = self.xp
        if not self.count_scaling:
            return xp.ones((self.batch, n_key), dtype=xp.float64)
        return xp.diff(indptr).reshape(self.batch, n_key).astype(xp.float64)

    def update(self, out, csr, F, n_key: int, active, singular, residuals=None) -> None:
        """Solve every row of ``out`` (batch, n_key, r) of the active problems given F; adds the
        singular rows to the device status word ``singular``; residuals (batch * n_key,) float64,
        if given, gets each row's sum of squared residuals at its solution."""
        indptr, others, vals = csr
        self.call.module.als_update_rows(indptr, others, vals, F, n_key, self.reg, self.count_scaling, active,
                                         self.cg_steps, out, singular, self.call.stream(), residuals=residuals)

    def _update_in_blocks(self, out, csr, F, n_key: int, active, singular, add_grams, residuals=None) -> None:
        """update() of one problem's rows (out (1, n_key, r)) a block of rows at a time, each block
        whole row_blocks (relative_change's float64 blocks, so the Grams sum in its order) of at
        most _BLOCK_COPY_BYTES, handing each row_blocks piece before and after to ``add_grams``.
        Few large blocks: with 2,048-row blocks at r = 256 the kernel calls alternated with the
        BLAS Grams 80 times an iteration and the iteration took 1.3x as long."""
        indptr, others, vals = csr
        pieces = row_blocks(n_key, self.rank)
        per_block = max(1, _BLOCK_COPY_BYTES // max(1, (pieces[0].stop - pieces[0].start) * self.rank
                                                    * out.dtype.itemsize))
        for first in range(0, len(pieces), per_block):
            group = pieces[first:first + per_block]
            lo, hi = group[0].start, group[-1].stop
            if self._block_copy is None or self._block_copy.shape[1] < hi - lo:
                # Kept across blocks and iterations: fresh copies page-faulted every time (r = 256,
                # 138,493 rows: 16 ms of copies a U half-step, 9-10 ms into one buffer).
                self._block_copy = self.xp.empty((1, hi - lo, self.rank), dtype=out.dtype)
            old = self._block_copy[:, :hi - lo]
            old[...] = out[:, lo:hi]
            block = out[:, lo:hi]  # a C-contiguous view for one problem: the kernel writes in place
            self.update(block, (indptr[lo:hi + 1], others, vals), F, hi - lo, active, singular,
                        None if residuals is None else residuals[lo:hi])
            for rows in group:
                add_grams(old[:, rows.start - lo:rows.stop - lo], out[:, rows])

    def iterate(self, U, V, active) -> tuple[int, np.ndarray, np.ndarray]:
        """One ALS iteration in place on (U, V); (singular rows, loss, relative change), per problem.

        The kernel (chosen once, ``self.kernel``): "dense" for many small densely observed
        problems on the CPU, a SIMD register of problems at a time; "fused" for many problems
        (or little work) on the CPU, each problem's whole iteration in one pass, problems in
        parallel, its data in cache throughout; "rows" (few large problems, or the GPU): each
        half-step over all rows in parallel, then the measures. On the CPU all three give a
        problem the same U, V (the GPU's may differ in rounding)."""
        if self.kernel == "dense":
            loss, change = np.full(self.batch, np.nan), np.full(self.batch, np.nan)
            singular = self.call.module.als_dense_iterations(*self.dense, self.reg, self.count_scaling, active, U, V,
                                                             loss, change)
            return int(singular), loss, change
        if self.kernel == "fused":
            loss, change = np.full(self.batch, np.nan), np.full(self.batch, np.nan)
            (row_indptr, row_others, row_vals), (col_indptr, col_others, col_vals) = self.by_rows, self.by_cols
            singular = self.call.module.als_iterations(row_indptr, row_others, row_vals, col_indptr, col_others,
                                                       col_vals, self.reg, self.count_scaling, active, U, V, loss,
                                                       change)
            return int(singular), loss, change
        singular, mask = self.call.status(0), self.xp.asarray(active)
        residuals = self.xp.zeros(self.batch * (self.m if self.fit_pass == "rows" else self.n), dtype=np.float64)
        half_step_residuals = None if self.fit_pass else residuals  # the fit term from the V half-step
        if self.batch == 1:
            # Each half-step a block of rows at a time, the relative change's Grams summed from
            # each block's old and new rows: a copy of one block, not of U and V (at r = 256
            # on 20M entries the copies were 169 MiB, a third of the peak above the input).
            grams = ChangeGrams(self.call, 1, self.rank)
            self._update_in_blocks(U, self.by_rows, V, self.m, mask, singular, grams.add_left)
            self._update_in_blocks(V, self.by_cols, U, self.n, mask, singular, grams.add_right, half_step_residuals)
            change = grams.finish()
        else:
            if self._previous is None:  # kept: fresh copies page-faulted 4 r (m + n) bytes an iteration
                self._previous = (self.xp.empty_like(U), self.xp.empty_like(V))
            U0, V0 = self._previous
            U0[...], V0[...] = U, V
            self.update(U, self.by_rows, V, self.m, mask, singular)
            self.update(V, self.by_cols, U, self.n, mask, singular, half_step_residuals)
            change = relative_change(self.call, U0, V0, U, V)
        if self.fit_pass:
            order, gathered, keyed = (self.by_rows, V, U) if self.fit_pass == "rows" else (self.by_cols, U, V)
            self.call.module.als_squared_residuals(*order, gathered, keyed, mask, residuals)
        # Everything the loop reads comes back in one transfer: the iteration's only host sync.
        measures = self.call.to_host(self.xp.concatenate([self.loss(U, V, residuals), change, singular.astype(np.float64)]))
        return int(measures[-1]), measures[:self.batch], measures[self.batch:2 * self.batch]

    def loss(self, U, V, residuals):
        """(batch,) half the objective on the device: 0.5 * (sum of squared residuals + reg *
        sum_i w_i ||U_i||^2 + reg * sum_j w_j ||V_j||^2), the residuals (batch * m or batch * n,)
        float64 summed per row or per column."""
        xp = self.xp
        penalty = ((self.row_weights * xp.einsum("bmr,bmr->bm", U, U, dtype=xp.float64)).sum(axis=1)
                   + (self.col_weights * xp.einsum("bnr,bnr->bn", V, V, dtype=xp.float64)).sum(axis=1))
        return 0.5 * (residuals.reshape(self.batch, -1).sum(axis=1) + self.reg * penalty)


def _threads(call: Call) -> int:
    """Threads the backend's parallel regions use (1 where it has no such notion)."""
    return call.module.max_threads() if hasattr(call.module, "max_threads") else 1


def _initial_V(call: Call, key: int, first_stream: int, count: int, n: int, rank: int, dtype):
    """(count, n, rank) on the call's backend: problem b's V is N(0, 1) / sqrt(rank), entry
    (j, c) the Philox draw (key, stream first_stream + b, index j * rank + c). One call for all
    problems, and bit-identical on the CPU and the GPU."""
    V = gaussian_fill(call, dtype, key, count, n, rank, first_stream=first_stream, scale=1.0 / np.sqrt(rank))
    return V.reshape(count, n, rank)


def _check_seed(function: str, name: str, seed: Any) -> Any:
    """None, an int in [0, 2**64), or a pair (key, stream) of them (als only)."""
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2:
            raise ValueError(f"{function}: {name} must be None, an integer in [0, 2**64) or a pair of them, "
                             f"got {seed!r}")
        return (_checks.seed(function, seed[0], name=f"{name}[0]"), _checks.seed(function, seed[1], name=f"{name}[1]"))
    return _checks.seed(function, seed, name=name)


# The declared constraints of the ALS solvers' scalar arguments (rank's range depends on shape:
# checked in the body).
_ALS_CONSTRAINTS = dict(LOOP_CONSTRAINTS, shape=_checks.shape_2d, reg=_checks.nonnegative_float,
                        reg_scaling=_checks.one_of(*REG_SCALINGS), solver=_checks.one_of(*SOLVERS),
                        cg_steps=_checks.positive_int)


def _key_stream(seed: Any) -> tuple[int, int]:
    """(Philox key, stream) of a resolved seed: an int s is (s, 0), a pair (s, b) is itself."""
    return (int(seed[0]), int(seed[1])) if isinstance(seed, tuple) else (int(seed), 0)


def _check_rank(function: str, shape: tuple[int, int], rank: Any) -> int:
    m, n = shape
    rank = _checks.integer(function, "rank", rank)
    # ALS keeps rank <= min(m, n): each row is an exact least-squares solve of width rank, whose
    # normal equations are singular for every row past that without reg, and U V^T gains nothing.
    if not 1 <= rank <= min(m, n):
        raise ValueError(f"{function}: rank must be an integer in [1, min(shape) = {min(m, n)}], got {rank!r}")
    return rank


def _check_coordinates(call: Call, rows, cols, vals):
    rows, cols = call.coordinates(rows, cols)
    vals = call.float_array("vals", vals, (1,))
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"{call.function}: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    return rows, cols, vals


def _check_init(call: Call, init, expected: tuple[int, ...]):
    V0 = call.float_array("init", init, (len(expected),))
    if tuple(V0.shape) != expected:
        raise ValueError(f"{call.function}: init (the initial V) has shape {tuple(V0.shape)}, expected {expected}")
    return V0.reshape(1, *V0.shape) if len(expected) == 2 else V0


# Per-problem outcomes of the ALS loop (state.arrays["reason"]).
_RUNNING, _CONVERGED, _DIVERGED = 0, 1, 2


def _solve(call: Call, problem: _Problem, V0, settings: LoopSettings, tol: float, digest: Digest,
           batched: bool, started: float, seed: Any) -> RecoveryResult:
    """The loop shared by als and batched_als: B problems, each frozen once it converges, or once
    its loss is NaN/inf ("diverged", converged False)."""
    xp = call.xp
    host = ("active", "n_iter", "reason")  # bookkeeping stays on the host
    fresh = LoopState(arrays={"U": xp.zeros((problem.batch, problem.m, problem.rank), dtype=V0.dtype), "V": V0,
                              "active": np.ones(problem.batch, dtype=np.uint8),
                              "n_iter": np.zeros(problem.batch, dtype=np.int64),
                              "reason": np.zeros(problem.batch, dtype=np.uint8)},
                      scalars={"singular_rows": 0.0}, seed=seed)
    state = resume_or_start(settings, digest, xp, fresh, host=host)

    def step(state: LoopState):
        U, V, active = state.arrays["U"], state.arrays["V"], state.arrays["active"]
        running = active.astype(bool)
        singular, loss, change = problem.iterate(U, V, active)
        loss[~running] = np.nan  # frozen problems did not iterate
        change[~running] = np.nan
        state.arrays["n_iter"][running] += 1
        diverged = running & ~np.isfinite(loss)
        state.arrays["reason"][diverged] = _DIVERGED
        converged = running & ~diverged & (change < tol)
        state.arrays["reason"][converged] = _CONVERGED
        active[diverged | converged] = 0
        state.scalars["singular_rows"] = float(singular)
        return (loss, change) if batched else (loss[0], change[0])

    def all_stopped(state: LoopState) -> Optional[str]:
        return None if state.arrays["active"].any() else "converged"

    # The CPU's host BLAS (the relative change's Grams between the OpenMP half-steps) on one
    # thread: OpenBLAS's idle threads spun on the cores the next half-step needed (7% of the
    # samples at r = 64 on MovieLens-20M's shape; iterations about 5% shorter without them).
    with single_threaded_blas() if call.backend == "cpu" else contextlib.nullcontext():
        state, reason, _ = run_loop(settings, state, step, digest, all_stopped)
    codes = state.arrays["reason"]
    converged = codes == _CONVERGED
    stop = ["converged" if code == _CONVERGED else "diverged" if code == _DIVERGED else reason for code in codes]
    empty = (0, problem.batch) if batched else (0,)
    history = {name: (np.asarray(values, dtype=np.float64) if values else np.zeros(empty))
               for name, values in (("loss", state.loss), ("relative_change", state.relative_change))}
    info = {"singular_rows": int(state.scalars["singular_rows"]), "reg": problem.reg, "kernel": problem.kernel,
            "solver": "cg" if problem.cg_steps else "cholesky",
            "reg_scaling": "count" if problem.count_scaling else "none", "seed": state.seed}
    U, V = state.arrays["U"], state.arrays["V"]
    if batched:
        info["n_iter"] = state.arrays["n_iter"].copy()
        return RecoveryResult(U=call.wrap(U), V=call.wrap(V), history=history, n_iter=state.iteration,
                              converged=converged, stop_reason=stop, seconds=time.perf_counter() - started,
                              backend=call.backend, info=info)
    return RecoveryResult(U=call.wrap(U[0]), V=call.wrap(V[0]), history=history, n_iter=state.iteration,
                          converged=bool(converged[0]), stop_reason=stop[0], seconds=time.perf_counter() - started,
                          backend=call.backend, info=info)


def _prepare(function: str, rows, cols, vals, offsets, init, shape, rank, reg, reg_scaling, settings: LoopSettings,
             batched: bool, solver: str = "cholesky", cg_steps: int = CG_STEPS):
    _checks.required(function, rows=rows, cols=cols, vals=vals)
    call = resolve(function, rows=rows, cols=cols, vals=vals, offsets=offsets, init=init)
    m, n = shape
    rank = _check_rank(function, shape, rank)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals)
    limit = call.module.ALS_SYSTEM_BYTES_LIMIT  # None where a row's system may take any size
    use_cg = uses_cg(solver, rank, vals.dtype.itemsize, limit)
    words, what = (3 * rank, "3 rank") if use_cg else (rank * rank + rank, "(rank^2 + rank)")
    if limit is not None and words * vals.dtype.itemsize > limit:
        raise ValueError(f"{function}: rank {rank} is too large for the {call.backend} ALS kernel with {vals.dtype} "
                         f"({what} * {vals.dtype.itemsize} bytes must fit in {limit // 1024} KiB of shared memory)")
    if batched:
        offsets = offsets_input(call, "offsets", offsets)
        batch = int(offsets.shape[0]) - 1
        if batch < 1:
            raise ValueError(f"{function}: offsets must have length B + 1 >= 2, got {offsets.shape[0]}")
    else:
        batch = 1
    problem = _Problem(call, rows, cols, vals, offsets, batch, (m, n), rank, float(reg), reg_scaling == "count",
                       cg_steps if use_cg else 0)
    return call, problem


FEEDBACKS = ("explicit", "implicit")


@_checks.constrained(**{**_ALS_CONSTRAINTS, "cg_steps": _checks.optional(_checks.positive_int)}, seed=_check_seed,
                     feedback=_checks.one_of(*FEEDBACKS), alpha=_checks.nonnegative_float)
def als(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], rank: int, reg: float = 0.1, *,
        reg_scaling: str = "none", solver: str = "auto", cg_steps: Optional[int] = None, max_iter: int = 50,
        tol: float = 1e-6, seed: Any = None, init: Optional[Any] = None,
        callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
        checkpoint: Optional[str] = None, checkpoint_every: int = 10,
        time_limit: Optional[float] = None, feedback: str = "explicit", alpha: float = 1.0) -> RecoveryResult:
    """Complete an m x n matrix of rank ``rank`` from observed entries by alternating least squares.

    ``feedback="implicit"`` fits implicit feedback instead (vals are interaction counts or
    strengths, every unobserved pair a zero preference): the confidence-weighted objective of
    Hu, Koren and Volinsky that ``implicit`` and Spark's ``implicitPrefs`` fit, with confidence
    slope ``alpha``; the call is :func:`lowrank_hpc.recover.implicit_als` with this call's rank,
    reg, cg_steps and loop settings, solver "cholesky" as its "exact" and "auto" as "cg" (CG at
    every rank, as ``implicit`` runs), and its result (loss: that objective). reg_scaling must be
    "none" and init None there.

    Minimises sum_k (vals[k] - <U[rows[k]], V[cols[k]]>)^2 + reg * sum_i w_i ||U[i]||^2
    + reg * sum_j w_j ||V[j]||^2, with w = 1 or, for ``reg_scaling="count"``, the number of
    observations of the row / column (ALS-WR, as in Spark MLlib). A row with no observations is
    zero when reg > 0; with reg == 0 a singular row system sets the row to zero and is counted in
    ``result.info["singular_rows"]`` (U and V rows of the last iteration).

    Memory: the entries in row and in column order (index and value: one more copy of the input
    for each order it does not already have), U and V, and for the relative change a copy of at
    most 32 MiB of old factor rows. On 20M float32 entries with int32 indices (229 MiB, row-sorted)
    the peak above the input measured 0.88x the input at r = 32 and 1.75x at r = 256
    (``bench/bench_peers.py --sections als``).

    Parameters
    ----------
    rows, cols : (nnz,) integer arrays (any integer dtype), 0 <= rows < m, 0 <= cols < n (numpy,
        or CUDA arrays to solve on the GPU). Repeated coordinates count as separate observations:
        c entries (i, j) with values v_1..v_c add sum_k (v_k - x_ij)^2 = c (mean(v) - x_ij)^2 +
        const to the objective, so the fit is the one of a single entry holding their mean with
        weight c (the same U, V as c copies of the mean; for reg_scaling="count" each copy counts).
    vals : (nnz,) float32/float64 observed values (finite); the factors take this dtype, and
        each row's system is formed and solved in it.
        With float32 an exact row solve is within about (10 + 2 cond(G)) eps32 of the exact
        ridge solution given the other factor, relative, G the row's system (tested at r = 512:
        1e-6 at cond 3, 4e-2 at cond 8e5): pass float64 where rows are ill-conditioned (small
        reg against the factors' scale, few observations).
    shape : (m, n), two ints >= 1 (a float such as 30.9 or 30.0 is a TypeError, never truncated).
    rank : an int, 1 <= rank <= min(m, n) (each row solve is a least-squares fit of width rank:
        past min(m, n) its normal equations are singular without reg, and U V^T gains nothing).
    reg : regularisation >= 0. The default (0.1, unscaled) is a fixed number, not a choice for
        your data: on uncentered, noisy ratings it overfits (a 3,000 x 1,500 sample of 1-5 star
        ratings with power-law degrees, 205k entries: held-out RMSE 1.10 at rank 10 and 1.76 at
        rank 32, where the training mean gives 1.02; with reg_scaling="count" 0.88 and 0.89).
        For rating prediction use :class:`lowrank_hpc.MatrixCompletion` (offsets, and reg
        chosen on held-out entries) or reg_scaling="count".
    reg_scaling : "none" or "count" (Spark MLlib's ALS-WR: reg times each row's and column's
        number of observations).
    solver : how each row's r x r system is solved. "cholesky": exactly (square-root-free
        Cholesky of the assembled normal equations, O(entries r^2 + r^3) per row; on the CPU,
        at every rank above 4, they are assembled and factored in register tiles as a BLAS-3
        kernel does (r padded to whole SIMD vectors), in the same order;
        on processors with FMA (the avx2 and avx512 levels of ``lowrank_hpc.info()``) the
        assembly's multiply-adds are fused, one rounding instead of two, so there U and V differ
        from the GPU's and the baseline level's by rounding only); "cg":
        ``cg_steps`` conjugate-gradient steps warm-started from the row's previous value
        (Takacs, Pilaszy and Tikk 2011; implicit's default), never forming the system, O(entries
        r) per step, so the cost grows linearly in r. Each CG step still lowers the row's
        quadratic, so the loss never rises either; the iterates are not the exact ALS ones.
        "auto" (default): "cg" from rank CG_MIN_RANK = 96 on, else "cholesky" (on the GPU also
        "cg" where the exact system does not fit the kernel's shared memory: float64 from rank
        78). On the CPU the exact iteration is the faster one below 96 (MovieLens-20M's shape:
        2.37 s against 2.52 at r = 64), CG above (4.41 against 4.72 s at r = 96).
        ``info["solver"]`` says which ran. CG uses the "rows" kernel.
    cg_steps : conjugate-gradient steps per row and half-step, an int >= 1; None (default): 5
        (CG_STEPS), or 3 with ``feedback="implicit"`` (implicit_als's default, the implicit
        library's). More steps trade time per iteration for loss: on MovieLens-20M's shape (20M
        power-law entries, reg 0.1, seed 0) after 12 iterations, 3 steps left the loss 5.6% (r =
        64) and 11% (r = 128) above the exact solver's, 5 steps 0.3% and 1.5% below it (within
        0.4% from iteration 9) at 1.3x the time per iteration of 3, and still ahead of 3 steps
        at equal time.
    max_iter, tol : stop after max_iter iterations ("max_iter"; max_iter=0 returns the start: U
        = 0 and the initial V, n_iter 0, empty history), or once the relative change of U V^T,
        ||X_t - X_{t-1}||_F / ||X_{t-1}||_F, is below tol (computed from r x r Gram matrices).
        A NaN/inf loss (values beyond the float range of a squared loss, e.g. near 1e160 in
        float64) stops the run with stop_reason "diverged" and converged False.
    seed : None (fresh entropy: a key is drawn for this call), an integer s in [0, 2**64) or a
        pair (s, b): V starts as standard normal draws / sqrt(rank) from the counter-based
        generator with key s and stream b (0 for an integer), identical on CPU and GPU; an int
        makes the run reproducible. ``result.info["seed"]`` is the seed used (the drawn key for
        None). U starts at 0, so the first relative change is inf.
    init : (n, rank) initial V of the dtype of vals (e.g. a previous ``result.V``); replaces the seed.
    callback : called as callback(iteration, {"loss", "relative_change", "U", "V", ...}) after
        every iteration (U, V there are (1, m, rank) / (1, n, rank) views of the live factors).
    progress : show a tqdm bar (on stderr) with the current loss.
    checkpoint : path of an .npz the state is written to atomically every ``checkpoint_every``
        iterations and at the end; calling again with the same path, data and settings resumes
        from it and ends with the same U, V as an uninterrupted run (also with seed=None: the
        checkpoint stores the drawn seed and a seed=None call reuses it). Its directory must
        exist (checked before the first iteration).
    time_limit : seconds after which the run stops with stop_reason "time_limit", read after
        each iteration (a positive limit runs at least one); 0 returns the start.
    feedback : "explicit" (default: vals are the matrix's entries) or "implicit" (vals >= 0 are
        interaction strengths; see above).
    alpha : implicit feedback's confidence slope, a float >= 0 (confidence 1 + alpha * vals;
        default 1.0, ``implicit``'s); ignored for explicit feedback.

    Returns
    -------
    RecoveryResult with U (m, rank), V (n, rank) (the array type of the inputs), history
    {"loss", "relative_change"} (n_iter,) float64, where loss is half the objective above
    (0.5 * squared residuals + 0.5 * reg * penalty), n_iter, converged (a bool), stop_reason
    (a str: "converged", "max_iter", "time_limit" or "diverged"), seconds, backend,
    info["singular_rows"], info["seed"], info["solver"] and info["kernel"] (which ALS kernel ran: "fused",
    "rows" or "dense"; on the CPU all three give the same U, V). With feedback="implicit",
    implicit_als's result.

    Raises
    ------
    TypeError for dtypes, mixed host/device arrays, None for an array, a non-int size, rank or
    seed; ValueError for shapes, NaN/inf in vals, empty input and bad settings; IndexError for
    an out-of-range index; CheckpointError for an unusable checkpoint file or directory, and its
    subclass CheckpointMismatchError when ``checkpoint`` belongs to another problem.
    """
    if feedback == "implicit":
        if reg_scaling != "none" or init is not None:
            raise ValueError("als: feedback='implicit' takes reg_scaling='none' and init=None (implicit_als "
                             f"starts from its seed), got reg_scaling={reg_scaling!r} and "
                             f"init={'an array' if init is not None else None}")
        from .implicit_als import implicit_als  # here: implicit_als imports this module's checks
        return implicit_als(rows, cols, vals, shape, rank, reg=reg, alpha=alpha,
                            solver="exact" if solver == "cholesky" else "cg",
                            cg_steps=IMPLICIT_CG_STEPS if cg_steps is None else cg_steps, max_iter=max_iter,
                            tol=tol, seed=seed, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit)
    started = time.perf_counter()
    cg_steps = CG_STEPS if cg_steps is None else cg_steps
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description="als")
    call, problem = _prepare("als", rows, cols, vals, None, init, shape, rank, reg, reg_scaling, settings,
                             batched=False, solver=solver, cg_steps=cg_steps)
    seed, seed_key = resolve_seed(seed, settings.checkpoint)
    if init is not None:
        V0 = _check_init(call, init, (problem.n, problem.rank)).copy()
    else:
        key, stream = _key_stream(seed)
        V0 = _initial_V(call, key, stream, 1, problem.n, problem.rank, problem.vals.dtype)
    # Without a checkpoint nothing is compared against, so the data need not be hashed.
    digest = fingerprint("als", problem.rows, problem.cols, problem.vals, problem.m, problem.n, problem.rank,
                         problem.reg, reg_scaling, problem.cg_steps, settings.tol, repr(seed_key),
                         init) if checkpoint else ""
    return _solve(call, problem, V0, settings, settings.tol, digest, batched=False, started=started, seed=seed)


@_checks.constrained(**_ALS_CONSTRAINTS, seed=_checks.seed_argument)
def batched_als(rows: Any, cols: Any, vals: Any, offsets: Any, shape: tuple[int, int], rank: int,
                reg: float = 0.1, *, reg_scaling: str = "none", solver: str = "auto", cg_steps: int = CG_STEPS,
                max_iter: int = 50, tol: float = 1e-6,
                seed: Optional[int] = None, init: Optional[Any] = None,
                callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
                checkpoint: Optional[str] = None, checkpoint_every: int = 10,
                time_limit: Optional[float] = None) -> RecoveryResult:
    """ALS on B independent m x n problems at once, each with its own observed entries.

    Every half-step solves the rows of all problems still running in one kernel launch; a
    problem whose relative change falls below ``tol`` is frozen (its U, V no longer change) and
    keeps its flag while the others go on. Problem b ends with the same U, V, n_iter and flag
    as ``als(rows[s], cols[s], vals[s], shape, rank, reg, seed=(seed, b), ...)`` with
    s = slice(offsets[b], offsets[b + 1]), the same reg_scaling, max_iter and tol.

    Parameters
    ----------
    rows, cols, vals : (nnz,) the problems' entries concatenated; problem b owns entries
        offsets[b]:offsets[b + 1], indices within one problem (0 <= rows < m, 0 <= cols < n).
        Repeated coordinates within a problem count as separate observations, as in :func:`als`
        (the fit sees their mean, weighted by their count).
    offsets : (B + 1,) int array (host or the data's device), non-decreasing from 0 to nnz. A
        problem may have no entries (its factors are zero when reg > 0).
    shape, rank, reg, reg_scaling, solver, cg_steps, max_iter, tol, callback, progress, checkpoint,
    checkpoint_every, time_limit : as for :func:`als`, per problem (the bar shows the loss
        summed over the running problems).
    seed : None or an int in [0, 2**64): problem b's V starts from stream b of key ``seed``,
        exactly as ``als(..., seed=(seed, b))``; None draws a fresh key for the call (reported
        in ``info["seed"]``, stored in checkpoints so a seed=None rerun resumes).
    init : (B, n, rank) initial V, replacing the seeds.

    Returns
    -------
    RecoveryResult with U (B, m, rank), V (B, n, rank), converged (B,) bool array, stop_reason a
    list of B str ("converged", "diverged", "max_iter" or "time_limit" per problem), history
    {"loss", "relative_change"} of shape (n_iter, B) (NaN once a problem is frozen), n_iter the
    most iterations any problem ran, info["n_iter"] (B,) int64 per problem, info["seed"] and
    info["singular_rows"] (all problems, last iteration), info["kernel"] as for :func:`als`
    ("dense", for many small densely observed problems of rank <= 4 whose entries come in
    (row, col) order, runs a SIMD register of problems at a time).
    """
    started = time.perf_counter()
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description="batched_als")
    if offsets is None:
        raise ValueError("batched_als: offsets (length B + 1) must say which entries belong to which problem")
    call, problem = _prepare("batched_als", rows, cols, vals, offsets, init, shape, rank, reg, reg_scaling,
                             settings, batched=True, solver=solver, cg_steps=cg_steps)
    seed, seed_key = resolve_seed(seed, settings.checkpoint)
    if init is not None:
        V0 = _check_init(call, init, (problem.batch, problem.n, problem.rank)).copy()
    else:
        V0 = _initial_V(call, seed, 0, problem.batch, problem.n, problem.rank, problem.vals.dtype)
    digest = fingerprint("batched_als", problem.rows, problem.cols, problem.vals, problem.offsets, problem.m,
                         problem.n, problem.rank, problem.reg, reg_scaling, problem.cg_steps, settings.tol,
                         repr(seed_key), init) if checkpoint else ""
    return _solve(call, problem, V0, settings, settings.tol, digest, batched=True, started=started, seed=seed)
