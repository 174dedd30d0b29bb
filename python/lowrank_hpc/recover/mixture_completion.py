"""Mixture matrix completion (Pimentel-Alarcon, NeurIPS 2018): every observed entry belongs to
one of K low-rank matrices, which one unknown.

    minimize over labels z and factors (U^k, V^k), k = 1..K:
        1/2 sum over observed (i, j) of (x_ij - <U^{z_ij}_i, V^{z_ij}_j>)^2  (+ reg/2 sum_k ||U^k||^2 + ||V^k||^2)

The alternating algorithm of the paper (assign each entry to the component with the smallest
residual, refit each component on its entries) has many poor local minima when started at
random: two components start from nearly the same fit, and single rows or columns settle on a
self-consistent wrong split. This solver runs it in three phases, every component fit being an
ALS solve of :func:`lowrank_hpc.recover.batched_als` with one problem per (restart, component):

1. Annealed soft assignment (deterministic annealing EM). Each of ``restarts`` seeded starts
   draws random Gaussian factors for every component, scaled so that their products have the
   data's root mean square (random labels instead leave every component fitting nearly the
   same average: on 8 planted 300 x 300 K = 2 problems, 4 restarts from random labels solved
   4, from random factors 7); then, for ``anneal_iter`` steps, entry e gets the weights
   w_k = softmax_k(-res_k^2 / (2 s^2)) and component k one ALS sweep on *all* entries with the
   targets w_k x + (1 - w_k) x_hat_k (the majorization step of weighted least squares, Srebro
   and Jaakkola 2003, so the unweighted kernels fit a weighted problem); s^2 starts at the mean
   squared residual and shrinks by ``anneal_decay`` per step. All restarts and components are
   one batched_als call per step. The cooling must be slow: 80 steps at 0.9 failed every
   restart on planted 120 x 100 rank-2 mixtures that the default 200 steps at 0.96 solve.
2. Hard alternation (the paper's): labels = argmin_k res_k, then each component refitted on its
   own entries (``inner_iter`` ALS sweeps, warm-started), until the labels settle (in every
   restart, or in the one of least objective) or ``max_iter`` rounds. That restart is kept.
3. Repair: a row (column) whose residual stands out is a local minimum of that row alone: given
   the other side's factors, each flagged row solves its own K-component mixed linear regression
   from ``repair_trials`` seeded label draws (plus its current labels), keeping the best; then
   phase 2 again. Repeated while rows are flagged, at most ``repair_rounds`` times. The repair
   works on host copies (numpy; small r x r solves); everything else runs on the data's backend.

K = 1 is plain completion: exactly :func:`lowrank_hpc.recover.als` with the same arguments.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import resolve
from ..ops.sampled_product import sampled_product
from .als import _Problem as _AlsProblem
from .als import als, batched_als

DEFAULT_RESTARTS = 8
DEFAULT_ANNEAL_ITER = 200
DEFAULT_ANNEAL_DECAY = 0.96
DEFAULT_INNER_ITER = 2
DEFAULT_REPAIR_TRIALS = 8
DEFAULT_REPAIR_ROUNDS = 3
# A row is flagged for repair when its relative residual is this many times the median row's
# (and above the floor: rows fitted to working precision are left alone).
_REPAIR_FACTOR = 10.0
_REPAIR_FLOOR = 1e-10
_REPAIR_SWEEPS = 20
# Hard rounds stop when no restart's objective changes by more than this fraction.
_STALL = 1e-9


@dataclass
class MixtureResult:
    """The outcome of :func:`mixture_completion`.

    U : (K, n1, rank), V : (K, n2, rank): component k is U[k] @ V[k].T; on the input's backend.
    labels : (nnz,) int64 component of each observed entry (input order), on the input's backend.
    history : {"objective": (n_iter,) float64}: 1/2 the sum of squared residuals of each entry
        against its nearest component, after every step of the kept restart (annealing, hard
        rounds, repair refits), numpy.
    n_iter : steps recorded in the history. converged : the last hard rounds settled (no label
        changed, or the objective moved by less than 1e-9 of itself).
    seconds, backend : wall time and "cpu"/"cuda".
    info : "seed", "restart_objectives" (objective of each restart after phase 2, (R,)),
        "restart" (the one kept), "repaired_rows", "repaired_cols" (per repair round), "phase_steps".
    """

    U: Any
    V: Any
    labels: Any
    history: dict[str, np.ndarray]
    n_iter: int
    converged: bool
    seconds: float
    backend: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def factors(self) -> list[tuple[Any, Any]]:
        """The K factor pairs [(U[0], V[0]), ...]."""
        return [(self.U[k], self.V[k]) for k in range(self.U.shape[0])]


@_checks.constrained(shape=_checks.shape_2d, n_components=_checks.positive_int, rank=_checks.positive_int,
                     reg=_checks.nonnegative_float, restarts=_checks.positive_int,
                     anneal_iter=_checks.nonnegative_int, anneal_decay=_checks.fraction,
                     max_iter=_checks.nonnegative_int, inner_iter=_checks.positive_int,
                     repair_trials=_checks.nonnegative_int, repair_rounds=_checks.nonnegative_int,
                     tol=_checks.nonnegative_float, seed=_checks.seed_argument)
def mixture_completion(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], n_components: int, rank: int, *,
                       reg: float = 1e-6, restarts: int = DEFAULT_RESTARTS, anneal_iter: int = DEFAULT_ANNEAL_ITER,
                       anneal_decay: float = DEFAULT_ANNEAL_DECAY, max_iter: int = 50,
                       inner_iter: int = DEFAULT_INNER_ITER, repair_trials: int = DEFAULT_REPAIR_TRIALS,
                       repair_rounds: int = DEFAULT_REPAIR_ROUNDS, tol: float = 1e-6,
                       seed: Optional[int] = None) -> MixtureResult:
    """Fit K rank-``rank`` matrices to observed entries, each entry explained by one of them.

    Parameters
    ----------
    rows, cols : (nnz,) integer indices, 0 <= rows < n1, 0 <= cols < n2 (numpy, or CUDA arrays
        to run on the GPU).
    vals : (nnz,) float32/float64 finite observed values; the factors take this dtype.
    shape : (n1, n2). n_components : K >= 1. rank : each component's rank, 1 <= rank <= min(shape).
    reg : ridge of every ALS solve (>= 0; > 0 keeps rows with no entries of a component at 0).
    restarts : seeded starts run side by side (phases 1 and 2); the best objective is kept.
    anneal_iter, anneal_decay : phase 1's steps and the factor s^2 shrinks by per step, in (0, 1).
    max_iter : hard-assignment rounds per phase 2 (0 skips the phase).
    inner_iter : ALS sweeps per component refit in phase 2.
    repair_trials, repair_rounds : phase 3's label draws per flagged row and its rounds (0: none).
    tol : K = 1 only: the ALS tolerance (as :func:`als`); K > 1 stops on stable labels.
    seed : None (drawn; reported in ``info["seed"]``) or an int in [0, 2**64): every random
        choice (each restart's starting factors, the repair's label draws) comes from it. K = 1
        passes it to :func:`als`.

    Returns
    -------
    :class:`MixtureResult`.

    Raises
    ------
    ValueError for K < 1, a rank above min(shape), shapes, NaN/inf or empty vals and bad settings
    (each named); IndexError for an index outside ``shape``; TypeError for dtypes and mixed
    host/device arrays.
    """
    function = "mixture_completion"
    started = time.perf_counter()
    _checks.required(function, rows=rows, cols=cols, vals=vals)
    call = resolve(function, rows=rows, cols=cols, vals=vals)
    rows, cols = call.coordinates(rows, cols)
    vals = call.float_array("vals", vals, (1,))
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"{function}: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    n1, n2 = shape
    if rank > min(n1, n2):
        raise ValueError(f"{function}: rank must be in [1, min(shape) = {min(n1, n2)}], got {rank}")
    for name, index, bound in (("rows", rows, n1), ("cols", cols, n2)):
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= bound:
            raise IndexError(f"{function}: {name} holds {low if low < 0 else high}, outside [0, {bound})")
    seed = _checks.draw_seed() if seed is None else seed
    xp, K = call.xp, n_components

    if K == 1:  # plain completion, the same call as als
        single = als(rows, cols, vals, shape, rank, reg, max_iter=max_iter, tol=tol, seed=seed)
        objective = np.asarray(single.history["loss"], dtype=np.float64)
        return MixtureResult(U=call.wrap(single.U[None]), V=call.wrap(single.V[None]),
                             labels=call.wrap(xp.zeros(rows.shape[0], dtype=np.int64)),
                             history={"objective": objective}, n_iter=single.n_iter,
                             converged=bool(single.converged), seconds=time.perf_counter() - started,
                             backend=call.backend, info={"seed": seed, "als": single})

    solver = _Mixture(call, rows, cols, vals, shape, K, rank, reg, inner_iter)
    rng = np.random.default_rng(seed)
    R = restarts
    # Random factors whose products have the data's root mean square: unlike random labels (after
    # which every component fits nearly the same average), the components start apart.
    rms = float(xp.sqrt(xp.mean(vals.astype(np.float64) ** 2)))
    scale = np.sqrt(rms / np.sqrt(rank)) if rms > 0 else 1.0
    U = xp.asarray((scale * rng.standard_normal((R * K, n1, rank))).astype(vals.dtype))
    V = xp.asarray((scale * rng.standard_normal((R * K, n2, rank))).astype(vals.dtype))
    objectives: list[np.ndarray] = [solver.objective(U, V, R)[0]]
    U, V, soft = solver.anneal(U, V, R, anneal_iter, anneal_decay)
    objectives += soft
    labels = solver.assign(U, V, R)[1]
    U, V, labels, hard, settled = solver.alternate(U, V, labels, R, max_iter)
    objectives += hard
    final = objectives[-1]
    best = int(np.argmin(final))
    stable = bool(settled[best])
    history = [float(step[best]) for step in objectives]
    U, V, labels = U[best * K:(best + 1) * K], V[best * K:(best + 1) * K], labels[best:best + 1]
    repaired_rows, repaired_cols = [], []
    for _ in range(repair_rounds if repair_trials else 0):
        U_host, V_host, labels_host = call.to_host(U).copy(), call.to_host(V).copy(), call.to_host(labels[0]).copy()
        count_rows = _repair(solver.rows_host, solver.cols_host, solver.vals_host, labels_host, U_host, V_host,
                             repair_trials, rng, reg)
        count_cols = _repair(solver.cols_host, solver.rows_host, solver.vals_host, labels_host, V_host, U_host,
                             repair_trials, rng, reg)
        repaired_rows.append(count_rows)
        repaired_cols.append(count_cols)
        if count_rows == 0 and count_cols == 0:
            break
        U = xp.asarray(U_host)
        V = xp.asarray(V_host)
        labels = xp.asarray(labels_host)[None]
        U, V, labels, hard, settled = solver.alternate(U, V, labels, 1, max(max_iter, 1))
        stable = bool(settled[0])
        history += [float(step[0]) for step in hard]
    history_array = np.asarray(history, dtype=np.float64)
    return MixtureResult(U=call.wrap(U), V=call.wrap(V), labels=call.wrap(labels[0]),
                         history={"objective": history_array}, n_iter=int(history_array.shape[0]),
                         converged=bool(stable), seconds=time.perf_counter() - started, backend=call.backend,
                         info={"seed": seed, "restart_objectives": np.asarray(final, dtype=np.float64),
                               "restart": best, "repaired_rows": repaired_rows, "repaired_cols": repaired_cols,
                               "phase_steps": {"anneal": len(soft), "hard": len(objectives) - 1 - len(soft)}})


class _Mixture:
    """The validated entries and the batched steps over R restarts x K components (problem
    b = restart * K + component)."""

    def __init__(self, call, rows, cols, vals, shape, K: int, rank: int, reg: float, inner_iter: int):
        self.call, self.xp = call, call.xp
        self.rows, self.cols, self.vals = rows, cols, vals
        self.shape, self.K, self.rank, self.reg, self.inner_iter = shape, K, rank, reg, inner_iter
        self.nnz = int(rows.shape[0])
        self.rows_host, self.cols_host = call.to_host(rows), call.to_host(cols)
        self.vals_host = call.to_host(vals).astype(np.float64)
        self._tiles: dict[int, tuple[Any, Any, Any]] = {}

    def tiled(self, problems: int):
        """(rows, cols, offsets) of every entry repeated once per problem."""
        if problems not in self._tiles:
            xp = self.xp
            self._tiles[problems] = (xp.tile(self.rows, problems), xp.tile(self.cols, problems),
                                     xp.arange(problems + 1, dtype=np.int64) * self.nnz)
        return self._tiles[problems]

    def predictions(self, U, V, R: int):
        """(R, K, nnz): every entry under every component of every restart (one SDDMM)."""
        rows, cols, offsets = self.tiled(R * self.K)
        return sampled_product(U, V, rows, cols, offsets=offsets).reshape(R, self.K, self.nnz)

    def assign(self, U, V, R: int):
        """(squared residuals (R, K, nnz), labels (R, nnz))."""
        residual = (self.predictions(U, V, R) - self.vals) ** 2
        return residual, self.xp.argmin(residual, axis=1)

    def objective(self, U, V, R: int):
        """((R,) objective, labels)."""
        residual, labels = self.assign(U, V, R)
        return self.call.to_host(0.5 * residual.min(axis=1).astype(np.float64).sum(axis=1)), labels

    def refit(self, labels, V, R: int, sweeps: Optional[int] = None):
        """Each (restart, component) refitted on its own entries: one batched_als call."""
        xp, K = self.xp, self.K
        problem = (labels + K * xp.arange(R)[:, None]).ravel()
        order = xp.argsort(problem, kind="stable")
        entry = order % self.nnz
        offsets = xp.concatenate([xp.zeros(1, dtype=np.int64),
                                  xp.cumsum(xp.bincount(problem, minlength=R * K)).astype(np.int64)])
        result = batched_als(self.rows[entry], self.cols[entry], self.vals[entry], offsets, self.shape, self.rank,
                             self.reg, max_iter=sweeps or self.inner_iter, tol=0.0, seed=0, init=V)
        return result.U, result.V

    def anneal(self, U, V, R: int, steps: int, decay: float):
        """Phase 1: soft weights, one ALS sweep per component on the imputed targets, per step.
        The step is batched_als(..., max_iter=1, init=V) on one pattern whose values change: its
        problem (CSR orders) is built once and given the new targets each step."""
        xp = self.xp
        rows, cols, offsets = self.tiled(R * self.K)
        history, scale, problem = [], None, None
        active = np.ones(R * self.K, dtype=np.uint8)
        prediction = self.predictions(U, V, R)
        for _ in range(steps):
            residual = (prediction - self.vals) ** 2
            if scale is None:
                scale = xp.maximum(residual.mean(axis=(1, 2)), xp.finfo(residual.dtype).tiny)[:, None, None]
            logits = -residual / (2 * scale)
            logits -= logits.max(axis=1, keepdims=True)
            weights = xp.exp(logits)
            weights /= weights.sum(axis=1, keepdims=True)
            targets = xp.ascontiguousarray((weights * self.vals + (1 - weights) * prediction).reshape(-1))
            if problem is None:
                problem = _AlsProblem(self.call, rows, cols, targets, offsets, R * self.K, self.shape, self.rank,
                                      self.reg, False, keep_permutations=True)
            else:
                problem.replace_values(targets)
            U, V = xp.zeros_like(U), V.copy()
            if problem.kernel == "rows":  # the two half-steps alone: the loop's measures are not needed
                singular = self.call.status(0)
                problem.update(U, problem.by_rows, V, problem.m, xp.asarray(active), singular)
                problem.update(V, problem.by_cols, U, problem.n, xp.asarray(active), singular)
            else:
                problem.iterate(U, V, active)
            prediction = self.predictions(U, V, R)
            history.append(self.call.to_host(0.5 * ((prediction - self.vals) ** 2).min(axis=1)
                                             .astype(np.float64).sum(axis=1)))
            scale = scale * decay
        return U, V, history

    def alternate(self, U, V, labels, R: int, rounds: int):
        """Phase 2: refit on own entries, reassign, until every restart has settled (no label
        changed in the last round, or the objective moved by less than _STALL of itself:
        entries two components predict alike may swap back and forth at rounding level), or
        the restart of least objective has settled.
        Returns (U, V, labels, history, settled (R,) bool)."""
        history, settled = [], np.zeros(R, dtype=bool)
        for _ in range(rounds):
            U, V = self.refit(labels, V, R)
            values, new = self.objective(U, V, R)
            stalled = np.abs(history[-1] - values) <= _STALL * history[-1] if history else np.zeros(R, dtype=bool)
            history.append(values)
            settled = stalled | ~self.call.to_host((new != labels).any(axis=1))
            labels = new
            best = int(np.argmin(values))
            # Done when all have settled, or the best has and the others are all worse: hard
            # rounds lower a restart's objective, they do not carry it into another basin.
            if settled.all() or (settled[best] and bool(np.all(np.delete(values, best) > values[best]))):
                break
        return U, V, labels, history, settled


def _repair(keys: np.ndarray, others: np.ndarray, vals: np.ndarray, labels: np.ndarray, F: np.ndarray,
            G: np.ndarray, trials: int, rng: np.random.Generator, reg: float) -> int:
    """Phase 3 on one side, in place on host copies: the rows of F (K, n_key, r) whose relative
    residual stands out, each refitted as a K-component mixed linear regression against G
    (K, n_other, r) from its current labels and ``trials`` random ones. Returns how many rows."""
    K, n_key, r = F.shape
    prediction = np.einsum("kir,kir->ki", F[:, keys].astype(np.float64), G[:, others].astype(np.float64))
    best_residual = ((prediction - vals) ** 2).min(axis=0)
    error = np.bincount(keys, weights=best_residual, minlength=n_key)
    energy = np.bincount(keys, weights=vals * vals, minlength=n_key)
    relative = np.where(energy > 0, error / np.maximum(energy, np.finfo(np.float64).tiny), 0.0)
    observed = np.bincount(keys, minlength=n_key) > 0
    if not observed.any():
        return 0
    threshold = max(_REPAIR_FACTOR * float(np.median(relative[observed])), _REPAIR_FLOOR)
    flagged = np.flatnonzero(relative > threshold)
    order = np.argsort(keys, kind="stable")
    bounds = np.searchsorted(keys[order], np.arange(n_key + 1))
    ridge = max(reg, 0.0) * np.eye(r)
    for key in flagged:
        entries = order[bounds[key]:bounds[key + 1]]
        x = vals[entries]
        partners = G[:, others[entries]].astype(np.float64)  # (K, count, r)
        best = (np.inf, None, None)
        for trial in range(trials + 1):
            current = labels[entries].copy() if trial == 0 else rng.integers(0, K, entries.shape[0])
            for _ in range(_REPAIR_SWEEPS):
                solution = np.zeros((K, r))
                for k in range(K):
                    mine = current == k
                    if mine.any():
                        A = partners[k, mine]
                        solution[k] = np.linalg.lstsq(A.T @ A + ridge, A.T @ x[mine], rcond=None)[0]
                residual = (np.einsum("kcr,kr->kc", partners, solution) - x) ** 2
                new = residual.argmin(axis=0)
                if (new == current).all():
                    break
                current = new
            value = float(residual.min(axis=0).sum())
            if value < best[0]:
                best = (value, current, solution)
        labels[entries] = best[1]
        F[:, key] = best[2].astype(F.dtype)
    return int(flagged.shape[0])
