"""Many small completion problems advanced together: every iteration is a handful of batched
kernel launches over all problems, each problem with its own step, divergence control and
convergence flag (converged problems are frozen)."""
from __future__ import annotations

import functools

from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import offsets_array, offsets_input, problem_of_entries, resolve, to_numpy
from .._backend import CONSTANTS
from ..ops import SparsePattern
from ._driver import (LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start,
                      run_loop)
from ._result import RecoveryResult
from .factored_gd import PRECISION_CHANGE, quiet, resolve_init

# The codes of lowrank_hpc::solvers::StepMethod (completion_step.hpp), by name, from the core.
_METHOD_CODES: dict[str, int] = CONSTANTS["step_methods"]
BATCHED_METHODS = tuple(sorted(_METHOD_CODES, key=_METHOD_CODES.__getitem__))


class _BatchedCompletion:
    """The batch of operators P_Omega_b with their sparse products (for the setup estimates; the
    iterations run in the fused kernel)."""

    def __init__(self, call, rows, cols, vals, offsets, shape):
        self.call, self.xp, self.shape, self.vals = call, call.xp, shape, vals
        self.offsets = offsets
        self.batch = int(offsets.shape[0]) - 1
        self.rows, self.cols = rows, cols
        self.problem_of_entry = problem_of_entries(call, offsets, int(rows.shape[0]))

    @functools.cached_property
    def pattern(self) -> SparsePattern:
        """Both sorted orders, built only when a default needs the power iteration."""
        return SparsePattern(self.rows, self.cols, self.shape, offsets=self.offsets, copy=False)

    def per_problem_sum(self, values):
        """Sum of entry-wise values within each problem, (batch,) float64 (0 for an empty one)."""
        return self.xp.bincount(self.problem_of_entry, weights=values.astype(np.float64), minlength=self.batch)

    def times(self, z, B):  # S_b(z) @ B_b for every b: (batch, m, k)
        return self.pattern.times_dense(z, B, check_finite=False)

    def transpose_times(self, z, B):  # S_b(z)^T @ B_b: (batch, n, k)
        return self.pattern.times_dense(z, B, transpose=True, check_finite=False)


def _batched_spectral_norm(problems: _BatchedCompletion, dtype, seed: int, iterations: int = 30):
    """||S_b(vals)||_2 per problem by power iteration on S^T S (deterministic given seed)."""
    xp = problems.xp
    n = problems.shape[1]
    rng = np.random.default_rng(seed)
    v = xp.asarray(rng.standard_normal((problems.batch, n, 1)).astype(dtype))
    sigma = xp.zeros(problems.batch)
    for _ in range(iterations):
        v = v / xp.maximum(xp.linalg.norm(v, axis=(1, 2), keepdims=True), np.finfo(dtype).tiny)
        u = problems.times(problems.vals, v)
        sigma = xp.linalg.norm(u, axis=(1, 2))
        v = problems.transpose_times(problems.vals, u)
    return sigma.astype(np.float64)


@_checks.constrained(**LOOP_CONSTRAINTS, shape=_checks.shape_2d, init_scale=_checks.positive_float,
                     seed=_checks.seed_argument)
def batched_factored_gd(rows: Any, cols: Any, vals: Any, offsets: Any, shape: tuple[int, int], rank: int, *,
                        method: str = "gd", init: Any = None, init_scale: float = 1e-3, step: Any = None,
                        damping: Any = None, max_iter: int = 1000, tol: float = 1e-6, seed: Optional[int] = None,
                        callback: Optional[Callable[[int, dict], Any]] = None, progress: bool = False,
                        checkpoint: Optional[str] = None, checkpoint_every: int = 100,
                        time_limit: Optional[float] = None) -> RecoveryResult:
    """Complete B matrices of equal shape at once by factored gradient methods.

    Problem b observes vals[offsets[b]:offsets[b+1]] at (rows, cols) in the same range and
    minimizes 1/2 ||P_Omega_b(U_b V_b^T) - vals_b||^2 over U_b (m, rank), V_b (n, rank). The
    update rules, init, step halving and stopping rule are those of :func:`factored_gd` for the
    completion operator, applied to each problem with its own step and flag; given the same
    step (and damping), problem b's run from init "small" or arrays is factored_gd's bit for
    bit ("scaled_damped" to rounding: its damped r x r solve is this kernel's own, about 2e-16
    apart; "spectral" divides by the exact observed fraction, factored_gd by its estimate: starts
    about 1% apart on a 30 x 20 problem). The default step and
    damping of the scaled methods use each problem's exact observed fraction where
    factored_gd estimates it with three random probes, so those defaults differ by a few
    percent (see ``step``).

    Parameters
    ----------
    rows, cols : (nnz,) integer indices (any integer dtype), 0 <= rows < m, 0 <= cols < n.
    vals : (nnz,) float32/float64 observed values; every problem needs a nonzero one.
    offsets : (B + 1,) int array (host or the data's device), non-decreasing from 0 to nnz: problem
        b's entry range.
    shape : (m, n) of every problem, two ints >= 1.
    rank : factor width, an int >= 1; as in :func:`factored_gd` it may exceed min(m, n)
        (over-parameterized) except with method "scaled" or init "spectral".
    method : "gd", "alternating", "scaled" or "scaled_damped".
    init : "small" (problem b uses the init factored_gd would draw with seed = seed + b, modulo 2**64),
        "spectral" (top-rank SVD of each problem's zero-filled observations divided by its
        sampling rate; dense per problem, meant for small problems) or arrays
        (U0 (B, m, rank), V0 (B, n, rank)). None (default): as :func:`factored_gd`'s, "spectral"
        for method "scaled" and "small" for the others.
    step : None (per problem 0.5 / ||S_b||_2, or 0.5 / (fraction observed) for the scaled
        methods), a number, or a (B,) array. Divergence halves a problem's own step.
    damping : lambda of "scaled_damped": None (1e-2 * ||S_b||_2 / fraction observed), a
        number or a (B,) array.
    max_iter, tol, callback, progress, checkpoint, checkpoint_every, time_limit : as in
        :func:`factored_gd`; a problem stops when its relative residual is below tol
        ("converged") or its relative change below 1e-3 * tol ("stationary"), or, with
        converged False, when its loss is NaN/inf ("diverged") or an iteration cannot move its
        factors ("no_progress"), exactly as :func:`factored_gd` decides for one problem.
    seed : None (fresh entropy: one seed is drawn for the call) or an int in [0, 2**64): problem
        b draws its "small" init with seed + b (modulo 2**64: :func:`problem_seed`), as
        factored_gd(..., seed=problem_seed(seed, b)) does.
        ``result.info["seed"]`` is the seed used; a checkpointed run with seed=None resumes
        with the seed it drew (stored in the checkpoint).

    Returns
    -------
    RecoveryResult with U (B, m, rank), V (B, n, rank), converged (B,) bool array,
    stop_reason (list of B strings), history["loss"] and ["relative_change"] (n_iter, B),
    n_iter the most iterations any problem ran, info["n_iter"] (B,) int64 per problem (as
    :func:`batched_als` reports), info["steps"], info["dampings"], info["step_halvings"] (B,) int64
    per problem (``step_halvings`` is their total), info["seed"].
    """
    _checks.required("batched_factored_gd", rows=rows, cols=cols, vals=vals)
    pair = init if isinstance(init, (tuple, list)) else (None, None)
    call = resolve("batched_factored_gd", rows=rows, cols=cols, vals=vals, offsets=offsets,
                   init_U=pair[0] if len(pair) == 2 else None, init_V=pair[1] if len(pair) == 2 else None)
    rows, cols = call.coordinates(rows, cols)
    vals = call.float_array("vals", vals, (1,))
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"batched_factored_gd: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    if offsets is None:
        raise ValueError("batched_factored_gd: offsets (B + 1,) is required")
    offsets = offsets_input(call, "offsets", offsets)  # a list too, as batched_als takes
    batch = int(offsets.shape[0]) - 1
    if batch < 1:
        raise ValueError(f"batched_factored_gd: offsets must have length B + 1 >= 2, got {offsets.shape[0]}")
    offsets = offsets_array(call, "offsets", offsets, batch, int(vals.shape[0]))
    m, n = shape
    rank = _checks.integer("batched_factored_gd", "rank", rank)
    if rank < 1:
        raise ValueError(f"batched_factored_gd: rank must be an integer >= 1, got {rank}")
    if method not in BATCHED_METHODS:
        raise ValueError(f"batched_factored_gd: unknown method {method!r}; choose one of {BATCHED_METHODS}")
    init = resolve_init("batched_factored_gd", init, method)
    if rank > min(m, n) and (method == "scaled" or (isinstance(init, str) and init == "spectral")):
        what = "method 'scaled' (it inverts the rank x rank V^T V)" if method == "scaled" else "init='spectral'"
        raise ValueError(f"batched_factored_gd: rank {rank} exceeds min{(m, n)} = {min(m, n)}, which {what} "
                         "cannot take; over-parameterized factors need another method or init")
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=f"batched_factored_gd[{method}]")
    xp, dtype = call.xp, vals.dtype
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    problems = _BatchedCompletion(call, rows, cols, vals, offsets, (m, n))

    # Per-problem ||vals_b|| in float64, scaled by max |vals| so values near the float range
    # neither overflow nor underflow when squared.
    magnitude = float(xp.max(xp.abs(vals)))
    unit = magnitude if magnitude > 0 and np.isfinite(magnitude) else 1.0
    scaled_vals = vals.astype(np.float64) / unit
    vals_norm = unit * xp.sqrt(problems.per_problem_sum(scaled_vals * scaled_vals))
    if bool(xp.any(vals_norm == 0)):
        empty = int(xp.flatnonzero(vals_norm == 0)[0])
        raise ValueError(f"batched_factored_gd: problem {empty} has no nonzero observation")
    fraction = (offsets[1:] - offsets[:-1]).astype(np.float64) / (m * n)
    scaled = method in ("scaled", "scaled_damped")
    # The power iteration costs a few sparse products: run only when a default needs it.
    needs_sigma = (step is None and not scaled) or (method == "scaled_damped" and damping is None)
    sigma = quiet(_batched_spectral_norm)(problems, dtype, seed_value) if needs_sigma else None
    steps = _per_problem("step", step, batch, xp,
                         default=quiet((lambda: 0.5 / fraction) if scaled else (lambda: 0.5 / sigma)))
    dampings = _per_problem("damping", damping, batch, xp, allow_zero=True,
                            default=quiet((lambda: 1e-2 * sigma / fraction) if method == "scaled_damped"
                                          else (lambda: xp.zeros(batch))))

    if isinstance(init, str) and init == "small":
        U, V = small_init([problem_seed(seed_value, b) for b in range(batch)], (m, n), rank, init_scale, dtype)
        U, V = xp.asarray(U), xp.asarray(V)
    elif isinstance(init, str) and init == "spectral":
        # Zero-filled observations rescaled by the sampling rate: small problems, so dense SVDs.
        dense = xp.zeros((batch, m, n), dtype=dtype)
        problem = problems.problem_of_entry
        dense[problem, rows, cols] = vals / fraction[problem].astype(dtype)
        left, sigma_all, right_t = xp.linalg.svd(dense, full_matrices=False)
        root = xp.sqrt(sigma_all[:, :rank])[:, None, :]
        U = xp.ascontiguousarray(left[:, :, :rank] * root)
        V = xp.ascontiguousarray(right_t[:, :rank, :].transpose(0, 2, 1) * root)
    elif isinstance(init, (tuple, list)) and len(init) == 2:
        U = call.float_array("init U", init[0], (3,))
        V = call.float_array("init V", init[1], (3,))
        if U.shape != (batch, m, rank) or V.shape != (batch, n, rank):
            raise ValueError(f"batched_factored_gd: init arrays have shapes {tuple(U.shape)}, {tuple(V.shape)}; "
                             f"expected ({batch}, {m}, {rank}) and ({batch}, {n}, {rank})")
        U, V = U.copy(), V.copy()
    else:
        raise ValueError(f"batched_factored_gd: init must be 'small', 'spectral' or a pair of arrays (U0, V0), "
                         f"got {init!r}")

    _check_ranges(call, rows, cols, m, n)
    # Hashing the settings and data is only needed to match a checkpoint (the random start is a
    # function of them and the seed; a drawn seed enters as "drawn" and is saved in the state).
    given = (U, V) if isinstance(init, (tuple, list)) else (init,)
    digest = fingerprint("batched_factored_gd", method, rank, init_scale, tol, seed_key, (m, n),
                         rows, cols, vals, offsets, _given(step), _given(damping), *given) if checkpoint else ""
    # Per-problem history lives in (rows, B) arrays that double when full, so checkpoints carry it.
    fresh = LoopState(arrays={"U": U, "V": V, "step": steps, "active": xp.ones(batch, dtype=bool),
                              "reason": xp.zeros(batch, dtype=np.int8),
                              "halvings": xp.zeros(batch, dtype=np.int64),
                              "n_iter": xp.zeros(batch, dtype=np.int64),
                              "loss_history": xp.zeros((max(min(settings.max_iter, 64), 1), batch)),
                              "change_history": xp.zeros((max(min(settings.max_iter, 64), 1), batch))},
                      seed=seed_value)
    growable = ("loss_history", "change_history")
    state = resume_or_start(settings, digest, xp, fresh, growable=growable)
    reasons = ("running", "converged", "stationary", "max_iter", "time_limit", "diverged", "no_progress")
    kernel = _FusedSteps(call, rows, cols, vals, offsets, batch, (m, n), rank, method, dampings)

    @quiet
    def advance(state: LoopState):
        """One fused step of every running problem, then its stopping test, on the device; the
        loop's numbers (summed loss, largest change, problems still running) come back in one
        transfer: the iteration's only host sync."""
        arrays = state.arrays
        running = arrays["active"]
        U_next, V_next, loss, change, stuck = kernel.run(arrays["U"], arrays["V"], running, arrays["step"],
                                                         arrays["halvings"])
        arrays["U"], arrays["V"] = U_next, V_next
        arrays["n_iter"] += running
        for name in ("loss_history", "change_history"):
            if state.iteration >= arrays[name].shape[0]:
                arrays[name] = xp.concatenate([arrays[name], xp.zeros_like(arrays[name])])
        # Finished problems read NaN in the history from the iteration after they stopped.
        arrays["loss_history"][state.iteration] = xp.where(running, loss, np.nan)
        arrays["change_history"][state.iteration] = xp.where(running, change, np.nan)
        _decide(state, running, loss, change, stuck)
        summary = call.to_host(xp.stack([xp.sum(xp.where(running, loss, 0.0)), xp.max(xp.where(running, change, 0.0)),
                                         xp.sum(arrays["active"]).astype(np.float64)]))
        cache["running"] = int(summary[2])
        return float(summary[0]), float(summary[1])

    cache: dict[str, Any] = {}

    def _decide(state: LoopState, running, loss, change, stuck) -> None:
        """Each running problem's stop code after this iteration (device arrays, no sync)."""
        diverged = running & ~xp.isfinite(loss)
        residual = xp.sqrt(2 * xp.where(diverged, 0.0, loss)) / vals_norm
        done = running & ~diverged & (residual < tol)
        # An iterate that did not move (no step decreased the loss, or the step could not change
        # the factors) is stationary at working precision after a tiny previous change, else it
        # made no progress; as factored_gd decides for one problem.
        previous = (state.arrays["change_history"][state.iteration - 1] if state.iteration >= 1
                    else xp.full(batch, np.inf))
        tiny = xp.isfinite(previous) & (previous < PRECISION_CHANGE[np.dtype(dtype)])
        open_ = running & ~diverged & ~done
        unmoved = open_ & (stuck | (change == 0))
        no_progress = unmoved & ~tiny
        stationary = open_ & ~no_progress & ((change < 1e-3 * tol) | stuck)
        reason = state.arrays["reason"]
        for flag, code in ((done, 1), (stationary, 2), (diverged, 5), (no_progress, 6)):
            reason = xp.where(flag, np.int8(code), reason)
        state.arrays["reason"] = reason
        state.arrays["active"] = open_ & ~no_progress & ~stationary

    def stop(state: LoopState):
        return None if cache["running"] else "converged"

    state, reason, seconds = run_loop(settings, state, advance, digest, stop)
    final = state.arrays["reason"]
    if reason in ("max_iter", "time_limit"):
        final = xp.where(state.arrays["active"], np.int8(reasons.index(reason)), final)
    to_host = call.to_host
    final_host = to_host(final)
    return RecoveryResult(
        U=call.wrap(state.arrays["U"]), V=call.wrap(state.arrays["V"]),
        history={"loss": to_host(state.arrays["loss_history"][:state.iteration]),
                 "relative_change": to_host(state.arrays["change_history"][:state.iteration])},
        n_iter=state.iteration, converged=np.isin(final_host, (1, 2)),
        stop_reason=[reasons[int(code)] for code in final_host], seconds=seconds, backend=call.backend,
        step=None, step_halvings=int(to_host(state.arrays["halvings"]).sum()),
        info={"steps": to_host(state.arrays["step"]), "dampings": to_host(dampings),
              "step_halvings": to_host(state.arrays["halvings"]).astype(np.int64),
              "n_iter": to_host(state.arrays["n_iter"]).astype(np.int64), "seed": state.seed})


def problem_seed(seed: int, b: int) -> int:
    """Problem b's seed in a batch seeded ``seed``: seed + b, wrapped to [0, 2**64) (the range a
    seed takes), so that factored_gd(..., seed=problem_seed(seed, b)) reproduces problem b."""
    return (int(seed) + int(b)) % 2**64


def small_init(seeds, shape: tuple[int, int], rank: int, init_scale: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """The "small" starts (U0 (B, m, rank), V0 (B, n, rank)) numpy arrays of ``dtype``, problem b's
    drawn with seed ``seeds[b]`` exactly as factored_gd(..., seed=seeds[b]) draws its own, so
    single and batched solves (and :func:`lowrank_hpc.distributed.solve_batch`'s chunks) agree."""
    m, n = shape
    U = np.empty((len(seeds), m, rank))
    V = np.empty((len(seeds), n, rank))
    for b, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        U[b] = init_scale * rng.standard_normal((m, rank)) / np.sqrt(m)
        V[b] = (init_scale / 3.0) * rng.standard_normal((n, rank)) / np.sqrt(n)
    return U.astype(dtype), V.astype(dtype)


class _FusedSteps:
    """One call of the fused per-problem kernel (lowrank_hpc/solvers/completion_step.hpp) per
    iteration: gradients, preconditioning, step halving and measures for every running problem."""

    def __init__(self, call, rows, cols, vals, offsets, batch: int, shape, rank: int, method: str, dampings):
        self.call, self.xp = call, call.xp
        self.rows, self.cols, self.vals, self.offsets = rows, cols, vals, offsets
        self.batch, (self.m, self.n), self.rank = batch, shape, rank
        self.method = _METHOD_CODES[method]
        self.dampings = dampings.astype(np.float64)
        xp, dtype = self.xp, vals.dtype
        self.scratch = xp.empty(batch * ((self.m + self.n) * rank + 2 * rank * rank), dtype=dtype)
        self.spare = (xp.empty((batch, self.m, rank), dtype=dtype), xp.empty((batch, self.n, rank), dtype=dtype))

    def run(self, U, V, running, steps, halvings):
        """Next (U, V) and per-problem (loss, change, stuck); steps and halvings update in place."""
        xp = self.xp
        U1, V1 = self.spare
        loss, change = xp.zeros(self.batch), xp.zeros(self.batch)
        stuck = xp.zeros(self.batch, dtype=np.uint8)
        active = running.astype(np.uint8)
        self.call.module.completion_steps(self.rows, self.cols, self.vals, self.offsets, self.method, active, U, V,
                                          U1, V1, steps, self.dampings, self.scratch, loss, change, halvings, stuck,
                                          self.call.stream())
        self.spare = (U, V)  # double buffering: the old iterate's memory takes the next one
        return U1, V1, loss, change, stuck.astype(bool)


def _check_ranges(call, rows, cols, m: int, n: int) -> None:
    """Index ranges, once per solve (the fused kernel reads without checking)."""
    for name, index, bound in (("rows", rows, m), ("cols", cols, n)):
        bad = (index < 0) | (index >= bound)
        if bool(bad.any()):
            first = int(call.xp.argmax(bad))
            raise IndexError(f"batched_factored_gd: {name}[{first}] = {int(index[first])} is out of range [0, {bound})")


def _given(value: Any) -> Any:
    """A step or damping argument as the fingerprint records it: None, a number or a host array."""
    if value is None or np.ndim(value) == 0:
        return value if value is None else float(value)
    return to_numpy(value)


def _per_problem(name: str, value: Any, batch: int, xp: Any, default: Callable[[], Any], allow_zero: bool = False):
    if value is None:
        return xp.ascontiguousarray(xp.asarray(default(), dtype=np.float64))
    array = xp.array(value, dtype=np.float64)  # a copy: the solver updates steps in place
    if array.ndim == 0:
        array = xp.full(batch, float(array))
    if array.shape != (batch,):
        raise ValueError(f"batched_factored_gd: {name} must be a number or a ({batch},) array, got shape {array.shape}")
    bad = ~xp.isfinite(array) | ((array < 0) if allow_zero else (array <= 0))
    if bool(xp.any(bad)):
        raise ValueError(f"batched_factored_gd: {name} must be {'non-negative' if allow_zero else 'positive'} "
                         "and finite for every problem")
    return array
