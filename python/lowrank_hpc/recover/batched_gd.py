"""Many small completion problems advanced together: every iteration is a handful of batched
kernel launches over all problems, each problem with its own step, divergence control and
convergence flag (converged problems are frozen)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .._arrays import offsets_array, resolve
from ..ops import SparsePattern, sampled_product
from ._driver import LoopSettings, LoopState, fingerprint, load_checkpoint, run_loop
from ._measures import relative_change
from ._result import RecoveryResult

BATCHED_METHODS = ("gd", "alternating", "scaled", "scaled_damped")
_GROWTH_ALLOWED = 1e-9


class _BatchedCompletion:
    """The batch of operators P_Omega_b with their sparse products."""

    def __init__(self, call, rows, cols, vals, offsets, shape):
        self.xp, self.shape, self.vals = call.xp, shape, vals
        self.offsets = offsets
        self.batch = int(offsets.shape[0]) - 1
        self.rows, self.cols = rows, cols
        self.pattern = SparsePattern(rows, cols, shape, offsets=offsets)
        counts = (offsets[1:] - offsets[:-1])
        self.problem_of_entry = self.xp.repeat(self.xp.arange(self.batch), counts)
        # reduceat sums [start_b, start_{b+1}); an empty problem must read 0, not its neighbour.
        self._starts = self.xp.minimum(offsets[:-1], max(int(rows.shape[0]) - 1, 0))
        self._empty = counts == 0

    def residual(self, U, V):
        return sampled_product(U, V, self.rows, self.cols, self.offsets, check_finite=False) - self.vals

    def per_problem_sum(self, values):
        """Sum of entry-wise values within each problem, (batch,) float64."""
        sums = self.xp.add.reduceat(values, self._starts, dtype=np.float64)
        sums[self._empty] = 0.0
        return sums

    def times(self, z, B):  # S_b(z) @ B_b for every b: (batch, m, k)
        return self.pattern.times_dense(z, B, check_finite=False)

    def transpose_times(self, z, B):  # S_b(z)^T @ B_b: (batch, n, k)
        return self.pattern.times_dense(z, B, transpose=True, check_finite=False)


class _WorkingSet:
    """The problems still running, their entries gathered into a smaller batch once enough of
    the others have converged (so the slow tail does not pay for the finished problems)."""

    def __init__(self, call, full: _BatchedCompletion, ids: Optional[np.ndarray]):
        self.ids = ids  # host indices into the full batch; None while every problem runs
        if ids is None:
            self.problems = full
            return
        xp = call.xp
        offsets = full.offsets.get() if call.on_device else full.offsets
        starts, counts = offsets[ids], offsets[ids + 1] - offsets[ids]
        sub_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        entries = np.repeat(starts - sub_offsets[:-1], counts) + np.arange(int(sub_offsets[-1]))
        entries, sub_offsets = xp.asarray(entries), xp.asarray(sub_offsets)
        self.problems = _BatchedCompletion(call, xp.ascontiguousarray(full.rows[entries]),
                                           xp.ascontiguousarray(full.cols[entries]),
                                           xp.ascontiguousarray(full.vals[entries]), sub_offsets, full.shape)
        self.device_ids = xp.asarray(ids)

    def gather(self, array):
        return array if self.ids is None else array[self.device_ids]

    def scatter(self, full, values) -> None:
        if self.ids is None:
            full[...] = values
        else:
            full[self.device_ids] = values


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


def _precondition(xp, method: str, grad, partner, damping):
    """grad (P^T P)^-1 or (P^T P + lambda I)^-1 per problem: batched k x k solves."""
    if method not in ("scaled", "scaled_damped"):
        return grad
    gram = partner.transpose(0, 2, 1) @ partner
    if method == "scaled_damped":
        gram = gram + damping[:, None, None] * xp.eye(gram.shape[-1], dtype=gram.dtype)
    # k x k inverses then one batched product: far cheaper than a solve with m right-hand sides.
    return grad @ xp.linalg.inv(gram)


def batched_factored_gd(rows: Any, cols: Any, vals: Any, offsets: Any, shape: tuple[int, int], rank: int, *,
                        method: str = "gd", init: Any = "small", init_scale: float = 1e-3, step: Any = None,
                        damping: Any = None, max_iter: int = 1000, tol: float = 1e-6, seed: Optional[int] = None,
                        callback: Optional[Callable[[int, dict], Any]] = None, progress: bool = False,
                        checkpoint: Optional[str] = None, checkpoint_every: int = 100,
                        time_limit: Optional[float] = None) -> RecoveryResult:
    """Complete B matrices of equal shape at once by factored gradient methods.

    Problem b observes vals[offsets[b]:offsets[b+1]] at (rows, cols) in the same range and
    minimizes 1/2 ||P_Omega_b(U_b V_b^T) - vals_b||^2 over U_b (m, rank), V_b (n, rank). The
    update rules, init, step rule and stopping rule are those of :func:`factored_gd` for the
    completion operator, applied to each problem with its own step and flag.

    Parameters
    ----------
    rows, cols : (nnz,) int32/int64 indices, 0 <= rows < m, 0 <= cols < n.
    vals : (nnz,) float32/float64 observed values; every problem needs a nonzero one.
    offsets : (B + 1,) int array, non-decreasing from 0 to nnz: problem b's entry range.
    shape : (m, n) of every problem.
    rank : factor width, 1 <= rank <= min(m, n).
    method : "gd", "alternating", "scaled" or "scaled_damped".
    init : "small" (problem b uses the init factored_gd would draw with seed = seed + b),
        "spectral" (top-rank SVD of each problem's zero-filled observations divided by its
        sampling rate; dense per problem, meant for small problems) or arrays
        (U0 (B, m, rank), V0 (B, n, rank)).
    step : None (per problem 0.5 / ||S_b||_2, or 0.5 / (fraction observed) for the scaled
        methods), a number, or a (B,) array. Divergence halves a problem's own step.
    damping : lambda of "scaled_damped": None (1e-2 * ||S_b||_2 / fraction observed), a
        number or a (B,) array.
    max_iter, tol, callback, progress, checkpoint, checkpoint_every, time_limit : as in
        :func:`factored_gd`; a problem stops when its relative residual is below tol
        ("converged") or its relative change below 1e-3 * tol ("stationary").

    Returns
    -------
    RecoveryResult with U (B, m, rank), V (B, n, rank), converged (B,) bool array,
    stop_reason (list of B strings), history["loss"] and ["relative_change"] (n_iter, B).
    """
    pair = init if isinstance(init, (tuple, list)) else (None, None)
    call = resolve("batched_factored_gd", rows=rows, cols=cols, vals=vals, offsets=offsets,
                   init_U=pair[0] if len(pair) == 2 else None, init_V=pair[1] if len(pair) == 2 else None)
    rows, cols = call.coordinates(rows, cols)
    vals = call.float_array("vals", vals, (1,))
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"batched_factored_gd: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    if offsets is None:
        raise ValueError("batched_factored_gd: offsets (B + 1,) is required")
    batch = int(offsets.shape[0]) - 1
    offsets = offsets_array(call, "offsets", offsets, batch, int(vals.shape[0]))
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"batched_factored_gd: shape must be two positive sizes, got {shape!r}")
    m, n = int(shape[0]), int(shape[1])
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= min(m, n):
        raise ValueError(f"batched_factored_gd: rank must be an integer in [1, {min(m, n)}], got {rank!r}")
    if method not in BATCHED_METHODS:
        raise ValueError(f"batched_factored_gd: unknown method {method!r}; choose one of {BATCHED_METHODS}")
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=f"batched_factored_gd[{method}]")
    settings.validate("batched_factored_gd")
    xp, dtype = call.xp, vals.dtype
    seed_value = 0 if seed is None else int(seed)
    problems = _BatchedCompletion(call, rows, cols, vals, offsets, (m, n))

    vals_norm = xp.sqrt(problems.per_problem_sum(vals * vals))
    if bool(xp.any(vals_norm == 0)):
        empty = int(xp.flatnonzero(vals_norm == 0)[0])
        raise ValueError(f"batched_factored_gd: problem {empty} has no nonzero observation")
    fraction = (offsets[1:] - offsets[:-1]).astype(np.float64) / (m * n)
    sigma = _batched_spectral_norm(problems, dtype, seed_value)
    steps = _per_problem("step", step, batch, xp,
                         default=(0.5 / fraction) if method in ("scaled", "scaled_damped") else 0.5 / sigma)
    dampings = _per_problem("damping", damping, batch, xp, default=1e-2 * sigma / fraction, allow_zero=True)

    if isinstance(init, str) and init == "small":
        U = np.empty((batch, m, rank))
        V = np.empty((batch, n, rank))
        for b in range(batch):  # factored_gd's draws with seed + b, so single and batched solves agree
            rng = np.random.default_rng(seed_value + b)
            U[b] = init_scale * rng.standard_normal((m, rank)) / np.sqrt(m)
            V[b] = (init_scale / 3.0) * rng.standard_normal((n, rank)) / np.sqrt(n)
        U, V = xp.asarray(U.astype(dtype)), xp.asarray(V.astype(dtype))
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

    digest = fingerprint("batched_factored_gd", method, rank, init_scale, tol, seed_value, (m, n),
                         rows, cols, vals, offsets, steps, dampings, U, V)
    state = load_checkpoint(checkpoint, digest, xp) if checkpoint else None
    if state is None:
        # Per-problem history lives in (rows, B) arrays that double when full, so checkpoints carry it.
        state = LoopState(arrays={"U": U, "V": V, "step": steps, "active": xp.ones(batch, dtype=bool),
                                  "reason": xp.zeros(batch, dtype=np.int8), "halvings": xp.zeros(batch),
                                  "loss_history": xp.zeros((min(max_iter, 64), batch)),
                                  "change_history": xp.zeros((min(max_iter, 64), batch))})
    reasons = ("running", "converged", "stationary", "max_iter", "time_limit")
    cache: dict[str, Any] = {}

    def take(problems, U, V, z, step, damping):
        s = step[:, None, None].astype(dtype)
        if method == "alternating":
            U1 = U - s * problems.times(z, V)
            V1 = V - s * problems.transpose_times(problems.residual(U1, V), U1)
            return U1, V1
        grad_u, grad_v = problems.times(z, V), problems.transpose_times(z, U)
        return (xp.ascontiguousarray(U - s * _precondition(xp, method, grad_u, V, damping)),
                xp.ascontiguousarray(V - s * _precondition(xp, method, grad_v, U, damping)))

    def working_set(state: LoopState) -> _WorkingSet:
        if cache.get("work") is None:
            active = state.arrays["active"]
            active_host = active.get() if call.on_device else active
            ids = None if active_host.all() else np.flatnonzero(active_host)
            cache["work"] = _WorkingSet(call, problems, ids)
            cache.pop("z", None)
        return cache["work"]

    def advance(state: LoopState):
        work = working_set(state)
        sub = work.problems
        U, V = work.gather(state.arrays["U"]), work.gather(state.arrays["V"])
        step, damping = work.gather(state.arrays["step"]), work.gather(dampings)
        z = cache.pop("z", None)
        if z is None:
            z = sub.residual(U, V)
        loss = 0.5 * sub.per_problem_sum(z * z)
        pending = xp.ones(sub.batch, dtype=bool)
        halvings = xp.zeros(sub.batch)
        U_next, V_next, z_next, loss_next = U, V, z, loss
        for _ in range(50):
            U1, V1 = take(sub, U, V, z, step, damping)
            z1 = sub.residual(U1, V1)
            loss1 = 0.5 * sub.per_problem_sum(z1 * z1)
            accept = pending & xp.isfinite(loss1) & (loss1 <= loss * (1 + _GROWTH_ALLOWED))
            if bool(xp.all(accept)):  # the common case: every problem took its step, nothing to merge
                U_next, V_next, z_next, loss_next = U1, V1, z1, loss1
            else:
                mask = accept[:, None, None]
                U_next, V_next = xp.where(mask, U1, U_next), xp.where(mask, V1, V_next)
                z_next = xp.where(accept[sub.problem_of_entry], z1, z_next)
                loss_next = xp.where(accept, loss1, loss_next)
            pending &= ~accept
            if not bool(xp.any(pending)):
                break
            step = xp.where(pending, 0.5 * step, step)
            halvings += pending
        change = relative_change(xp, U, V, U_next, V_next)
        for name, values in (("U", U_next), ("V", V_next), ("step", step)):
            work.scatter(state.arrays[name], values)
        state.arrays["halvings"] = state.arrays["halvings"] + _spread(xp, work, halvings, batch, 0.0)
        for name in ("loss_history", "change_history"):
            if state.iteration >= state.arrays[name].shape[0]:
                state.arrays[name] = xp.concatenate([state.arrays[name], xp.zeros_like(state.arrays[name])])
        # Finished problems read NaN in the history from the iteration after they stopped.
        state.arrays["loss_history"][state.iteration] = _spread(xp, work, loss_next, batch, np.nan)
        state.arrays["change_history"][state.iteration] = _spread(xp, work, change, batch, np.nan)
        # A problem that cannot decrease even with tiny steps is stationary at working precision.
        cache.update(z=z_next, loss=loss_next, stuck=pending, change=change)
        return float(xp.sum(loss_next)), float(xp.max(change))

    def stop(state: LoopState):
        work = cache["work"]
        reason = state.arrays["reason"]
        residual = xp.sqrt(2 * cache["loss"]) / work.gather(vals_norm)
        done = residual < tol
        stationary = ~done & ((cache["change"] < 1e-3 * tol) | cache["stuck"])
        codes = xp.where(done, 1, xp.where(stationary, 2, 0)).astype(np.int8)
        work.scatter(reason, codes)
        still = ~done & ~stationary
        work.scatter(state.arrays["active"], still)
        running = int(xp.count_nonzero(still))
        if running == 0:
            return "converged"
        if running <= still.shape[0] // 2:  # regroup the survivors into a smaller batch
            cache["work"] = None
        return None

    state, reason, seconds = run_loop(settings, state, advance, digest, stop)
    final = state.arrays["reason"]
    if reason in ("max_iter", "time_limit"):
        final[state.arrays["active"]] = reasons.index(reason)
    final_host = final.get() if call.on_device else final
    stop_reasons = [reasons[int(code)] for code in final_host]
    to_host = (lambda a: a.get()) if call.on_device else np.asarray
    history_loss = to_host(state.arrays["loss_history"][:state.iteration])
    history_change = to_host(state.arrays["change_history"][:state.iteration])
    converged = np.isin(final_host, (1, 2))
    return RecoveryResult(
        U=call.wrap(state.arrays["U"]), V=call.wrap(state.arrays["V"]),
        history={"loss": history_loss, "relative_change": history_change}, n_iter=state.iteration,
        converged=converged, stop_reason=stop_reasons, seconds=seconds, backend=call.backend,
        step=None, step_halvings=int(to_host(state.arrays["halvings"]).sum()),
        info={"steps": to_host(state.arrays["step"]), "dampings": to_host(dampings)})


def _spread(xp, work: _WorkingSet, values, batch: int, fill: float):
    """A (batch,) float64 array holding the working set's values at their problems, fill elsewhere."""
    if work.ids is None:
        return values.astype(np.float64)
    full = xp.full(batch, fill)
    full[work.device_ids] = values
    return full


def _per_problem(name: str, value: Any, batch: int, xp: Any, default: Any, allow_zero: bool = False):
    if value is None:
        return xp.asarray(default, dtype=np.float64)
    array = xp.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        array = xp.full(batch, float(array))
    if array.shape != (batch,):
        raise ValueError(f"batched_factored_gd: {name} must be a number or a ({batch},) array, got shape {array.shape}")
    bad = ~xp.isfinite(array) | ((array < 0) if allow_zero else (array <= 0))
    if bool(xp.any(bad)):
        raise ValueError(f"batched_factored_gd: {name} must be {'non-negative' if allow_zero else 'positive'} "
                         "and finite for every problem")
    return array
