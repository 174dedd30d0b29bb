"""Boolean matrix factorization by elastic-binary proximal alternating steps (Elbmf, Dalleiger &
Vreeken, NeurIPS 2022; formulas in shared/specs/elbmf.md).

A 0/1 matrix A (n x m) is approximated by U V with U (n x k), V (k x m) real, minimising
1/2 ||A - U V||_F^2 + R(U) + R(V) with the elastic-binary regularizer R, whose minima sit at 0
and 1. Each iteration is a PALM (or inertial iPALM) half-step for U, then one for V; the l2
weight grows as lambda_t = l2 * reg_growth^t, which drives the factors to 0/1. The Boolean
factors are the relaxed ones thresholded at 0.5, and the model is their Boolean product.

Per half-step the vendor GEMM forms V V^T (k x k) and A V^T (n x k) (the library's CSR kernel
when A is sparse); one fused kernel (ops.elastic_binary_half_step) does the gradient, the step
from ||V V^T||_F, the extrapolation and the prox. The loss ||A - U V||_F^2 is expanded as
|A| - 2 <A^T U, V^T> + <U^T U, V V^T>: it reuses the products of the V half-step and never
forms U V.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import to_numpy
from .._backend import single_threaded_blas
from ..ops.elastic_binary import half_step
from ._driver import (LOOP_CONSTRAINTS, Digest, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start,
                      run_loop)
from ._result import RecoveryResult
from .binary_matrix import BinaryMatrix
from .boolean_product import binarize

# The spec's defaults (shared/specs/elbmf.md), as the Elbmf reference implementation has them.
DEFAULT_L1 = 0.01
DEFAULT_L2 = 0.02
DEFAULT_REG_GROWTH = 1.02
DEFAULT_MAX_ITER = 3000
DEFAULT_TOL = 1e-8

# Per-problem outcomes (state.arrays["reason"]).
_RUNNING, _CONVERGED, _DIVERGED = 0, 1, 2


def _growth(function: str, name: str, value: Any) -> float:
    """A finite number >= 1: the factor the l2 weight is multiplied by per iteration."""
    value = _checks.real(function, name, value)
    if not (math.isfinite(value) and value >= 1):
        raise ValueError(f"{function}: {name} must be a finite number >= 1, got {value!r}")
    return value


def _dtype(function: str, name: str, value: Any) -> Any:
    """None, or float32 / float64 (as a dtype, a type or its name)."""
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise TypeError(f"{function}: {name} must be None, float32 or float64, got {value!r}") from None
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{function}: {name} must be None, float32 or float64, got {dtype}")
    return dtype


# The declared constraints of the Elbmf solvers' scalar arguments.
BMF_CONSTRAINTS = dict(LOOP_CONSTRAINTS, n_components=_checks.positive_int, l1=_checks.nonnegative_float,
                       l2=_checks.nonnegative_float, reg_growth=_growth, inertia=_checks.fraction_or_zero,
                       nonnegative=_checks.flag, seed=_checks.seed_argument, dtype=_dtype)


def initial_factors(seed: int, batch: int, n: int, m: int, k: int, dtype: np.dtype, xp: Any,
                    stacked_seeds: bool) -> tuple[Any, Any]:
    """(U (batch, n, k), V^T (batch, m, k)) ~ Uniform[0, 1): problem b draws U = rng.random((n, k))
    then V = rng.random((k, m)) from rng = numpy.random.default_rng(seed + b) (seed itself for a
    single problem), so batched problem b starts where boolean_mf(..., seed=seed + b) does."""
    U = np.empty((batch, n, k), dtype=dtype)
    Vt = np.empty((batch, m, k), dtype=dtype)
    for b in range(batch):
        rng = np.random.default_rng(seed + b if stacked_seeds else seed)
        U[b] = rng.random((n, k))
        Vt[b] = rng.random((k, m)).T
    return xp.asarray(U), xp.asarray(Vt)


def _check_init(matrix: BinaryMatrix, init: Any, k: int, batched: bool) -> tuple[Any, Any]:
    """init = (U0 (n, k), V0 (k, m)) (batched: (B, n, k), (B, k, m)) as (U, V^T) stacks of the
    factors' dtype on A's side."""
    if not isinstance(init, (tuple, list)) or len(init) != 2:
        raise TypeError(f"{matrix.function}: init must be None or a pair (U0, V0) of arrays, got {type(init).__name__}")
    xp, (n, m), batch = matrix.call.xp, matrix.shape, matrix.batch
    expected = {"U0": (batch, n, k) if batched else (n, k), "V0": (batch, k, m) if batched else (k, m)}
    arrays = []
    for name, value in zip(("U0", "V0"), init):
        array = xp.asarray(to_numpy(value) if xp is np else value)
        if tuple(array.shape) != expected[name]:
            raise ValueError(f"{matrix.function}: init {name} has shape {tuple(array.shape)}, expected "
                             f"{expected[name]}")
        if array.dtype.kind not in "biuf" or not bool(xp.isfinite(array).all()):
            raise ValueError(f"{matrix.function}: init {name} must hold finite real numbers")
        arrays.append(xp.array(array, dtype=matrix.dtype, order="C", copy=True))  # the loop reuses its buffers
    U0, V0 = arrays
    if not batched:
        U0, V0 = U0[None], V0[None]
    return xp.ascontiguousarray(U0), xp.ascontiguousarray(V0.transpose(0, 2, 1))


def check_has_ones(matrix: BinaryMatrix, name: str) -> None:
    """A matrix to factor must hold a one, dense or sparse alike, and so must each of a batch's
    (a fold-in of new rows may hold none)."""
    ones = np.asarray(matrix.ones)
    empty = np.flatnonzero(ones == 0)
    if empty.size:
        which = f"{name}[{int(empty[0])}]" if ones.size > 1 else name
        raise ValueError(f"{matrix.function}: {which} has no nonzero entry; there is nothing to factor")


class _Elbmf:
    """The iteration: half-steps for U then V (or for U alone against a fixed V: fold-in)."""

    def __init__(self, matrix: BinaryMatrix, k: int, l1: float, l2: float, growth: float, inertia: float,
                 nonnegative: bool, update_v: bool):
        self.matrix, self.call, self.xp = matrix, matrix.call, matrix.call.xp
        self.k, self.l1, self.l2, self.growth = k, l1, l2, growth
        self.inertia, self.nonnegative, self.update_v = inertia, nonnegative, update_v
        self._spare: dict[str, Any] = {}
        self._fixed: Optional[tuple[Any, Any]] = None  # fold-in: gram and cross of the fixed V

    def gram(self, F):
        """F^T F per problem: (batch, k, k) from (batch, rows, k)."""
        return self.xp.matmul(F.transpose(0, 2, 1), F)

    def _half_step(self, state: LoopState, name: str, gram, cross, lam: float, active):
        """One fused half-step of factor ``name`` and the rotation current -> previous -> spare;
        returns the new factor's Gram matrix (batch, k, k), summed by the same pass."""
        current, previous = state.arrays[name], state.arrays[name + "_prev"]
        spare = self._spare.get(name)
        if spare is None or spare.shape != current.shape:
            spare = self.xp.empty_like(current)
        gram_out = self.xp.empty((current.shape[0], self.k, self.k), dtype=current.dtype)
        half_step(self.call, current, previous, gram, cross, self.l1, lam, self.inertia, self.nonnegative, spare,
                  active, gram_out)
        state.arrays[name + "_prev"], state.arrays[name], self._spare[name] = current, spare, previous
        return gram_out

    def iterate(self, state: LoopState) -> np.ndarray:
        """One iteration of every running problem; returns the (batch,) float64 losses ||A - U V||_F^2."""
        xp, matrix = self.xp, self.matrix
        lam = self.l2 * self.growth ** state.iteration
        running = state.arrays["active"]
        active = None if running.all() else xp.asarray(running)
        Vt = state.arrays["Vt"]
        if self.update_v:
            gram_v = state.arrays["gram_v"]  # summed by the last V half-step (checkpointed with it)
            cross_u = matrix.times(Vt)
        else:
            if self._fixed is None:
                self._fixed = (self.gram(Vt), matrix.times(Vt))
            gram_v, cross_u = self._fixed
        gram_u = self._half_step(state, "U", gram_v, cross_u, lam, active)
        U = state.arrays["U"]
        if not self.update_v:
            inner = (cross_u * U).sum(axis=(1, 2), dtype=np.float64)
            quadratic = (gram_u * gram_v).sum(axis=(1, 2), dtype=np.float64)
        else:
            cross_v = matrix.transpose_times(U)
            gram_v = state.arrays["gram_v"] = self._half_step(state, "Vt", gram_u, cross_v, lam, active)
            Vt = state.arrays["Vt"]
            inner = (cross_v * Vt).sum(axis=(1, 2), dtype=np.float64)
            quadratic = (gram_u * gram_v).sum(axis=(1, 2), dtype=np.float64)
        return matrix.ones - 2.0 * self.call.to_host(inner) + self.call.to_host(quadratic)


def solve(matrix: BinaryMatrix, k: int, U0, Vt0, *, l1: float, l2: float, reg_growth: float, inertia: float,
          nonnegative: bool, settings: LoopSettings, digest: Digest, batched: bool, started: float, seed: Any,
          update_v: bool = True) -> RecoveryResult:
    """The loop shared by boolean_mf, batched_boolean_mf and the estimator's fold-in: B problems,
    each frozen once the change of its loss falls below tol ("converged") or its loss is not
    finite ("diverged")."""
    call, xp = matrix.call, matrix.call.xp
    batch = matrix.batch
    iteration = _Elbmf(matrix, k, l1, l2, reg_growth, inertia, nonnegative, update_v)
    fresh = LoopState(arrays={"U": U0, "U_prev": U0.copy(), "Vt": Vt0, "Vt_prev": Vt0.copy(),
                              "gram_v": iteration.gram(Vt0), "active": np.ones(batch, dtype=np.uint8), "n_iter": np.zeros(batch, dtype=np.int64),
                              "reason": np.zeros(batch, dtype=np.uint8),
                              "last_loss": np.full(batch, np.nan)}, seed=seed)
    state = resume_or_start(settings, digest, xp, fresh, host=("active", "n_iter", "reason", "last_loss"))

    def step(state: LoopState):
        arrays = state.arrays
        running = arrays["active"].astype(bool)
        loss = iteration.iterate(state)
        previous = arrays["last_loss"]
        change = np.abs(previous - loss)
        relative = change / np.maximum(np.abs(previous), np.finfo(np.float64).tiny)
        loss[~running], relative[~running] = np.nan, np.nan
        arrays["n_iter"][running] += 1
        diverged = running & ~np.isfinite(loss)
        converged = running & ~diverged & (change < settings.tol)
        arrays["reason"][diverged] = _DIVERGED
        arrays["reason"][converged] = _CONVERGED
        arrays["active"][diverged | converged] = 0
        arrays["last_loss"] = np.where(running, loss, previous)
        return (loss, relative) if batched else (float(loss[0]), float(relative[0]))

    def all_stopped(state: LoopState) -> Optional[str]:
        return None if state.arrays["active"].any() else "converged"

    # Host BLAS on one thread: its threads and the kernels' OpenMP team otherwise spin-wait for
    # each other (a 328 x 400, k = 8 iteration took 20 ms instead of 0.9 ms on a loaded 2-core VM).
    with single_threaded_blas() if call.backend == "cpu" else contextlib.nullcontext():
        state, reason, _ = run_loop(settings, state, step, digest, all_stopped)
    codes = state.arrays["reason"]
    converged = codes == _CONVERGED
    stop = ["converged" if c == _CONVERGED else "diverged" if c == _DIVERGED else reason for c in codes]
    empty = (0, batch) if batched else (0,)
    history = {name: (np.asarray(values, dtype=np.float64) if values else np.zeros(empty))
               for name, values in (("loss", state.loss), ("relative_change", state.relative_change))}
    U, Vt = state.arrays["U"], state.arrays["Vt"]
    W, H = binarize(U), binarize(Vt).transpose(0, 2, 1)
    info = {"seed": state.seed, "W": W if batched else W[0], "H": H if batched else H[0],
            "l2_final": l2 * reg_growth ** max(state.iteration - 1, 0), "sparse": matrix.sparse}
    if batched:
        info["n_iter"] = state.arrays["n_iter"].copy()
        return RecoveryResult(U=U, V=Vt, history=history, n_iter=state.iteration, converged=converged,
                              stop_reason=stop, seconds=time.perf_counter() - started, backend=call.backend, info=info)
    return RecoveryResult(U=U[0], V=Vt[0], history=history, n_iter=state.iteration, converged=bool(converged[0]),
                          stop_reason=stop[0], seconds=time.perf_counter() - started, backend=call.backend, info=info)


def _run(function: str, A: Any, n_components: int, batched: bool, *, l1, l2, reg_growth, inertia, nonnegative,
         max_iter, tol, seed, init, dtype, callback, progress, checkpoint, checkpoint_every, time_limit):
    started = time.perf_counter()
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit, description=function)
    # An estimator passes a matrix it has validated and placed already.
    matrix = A if isinstance(A, BinaryMatrix) else BinaryMatrix(function, "A", A, dtype=dtype, batched=batched)
    check_has_ones(matrix, "A")
    seed, seed_key = resolve_seed(seed, settings.checkpoint)
    n, m = matrix.shape
    if init is not None:
        U0, Vt0 = _check_init(matrix, init, n_components, batched)
    else:
        U0, Vt0 = initial_factors(seed, matrix.batch, n, m, n_components, matrix.dtype, matrix.call.xp, batched)
    digest = fingerprint(function, *matrix.fingerprint_parts(), n_components, l1, l2, reg_growth, inertia,
                         nonnegative, settings.tol, repr(seed_key), matrix.dtype.str,
                         None if init is None else tuple(init)) if checkpoint else ""
    return solve(matrix, n_components, U0, Vt0, l1=l1, l2=l2, reg_growth=reg_growth, inertia=inertia,
                 nonnegative=nonnegative, settings=settings, digest=digest, batched=batched, started=started,
                 seed=seed)


@_checks.constrained(**BMF_CONSTRAINTS)
def boolean_mf(A: Any, n_components: int, *, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2,
               reg_growth: float = DEFAULT_REG_GROWTH, inertia: float = 0.0, nonnegative: bool = True,
               max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL, seed: Optional[int] = None,
               init: Optional[tuple[Any, Any]] = None, dtype: Any = None,
               callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
               checkpoint: Optional[str] = None, checkpoint_every: int = 50,
               time_limit: Optional[float] = None) -> RecoveryResult:
    """Factor a 0/1 matrix A (n x m) as the Boolean product of W (n x k) and H (k x m) by Elbmf.

    Parameters
    ----------
    A : (n, m) 0/1 matrix: a dense array of any real or bool dtype (numpy, a list, or a CUDA
        array to solve on the GPU), or a scipy.sparse / cupyx.scipy.sparse matrix whose stored
        entries are ones (stored zeros are ignored; repeated coordinates add up, so two ones at
        one position are an error). Never densified when sparse.
    n_components : k >= 1, the number of Boolean factors.
    l1, l2 : the elastic-binary regularizer's weights kappa and lambda (>= 0); only l2 grows.
    reg_growth : c >= 1: iteration t (from 0) uses lambda_t = l2 * c^t.
    inertia : 0 for PALM (step 1 / (1.1 L)); in (0, 1) for iPALM (extrapolation weight beta,
        step 2 (1 - beta) / ((1 + 2 beta) L)), L = max(||V V^T||_F, 1e-4).
    nonnegative : use the non-negative prox (max(prox, 0)), keeping the factors >= 0.
    max_iter, tol : stop after max_iter iterations or once |loss_{t-1} - loss_t| < tol, loss =
        ||A - U V||_F^2 of the relaxed factors (an absolute tolerance, as in the spec).
    seed : None (fresh entropy) or an int in [0, 2**64): U = rng.random((n, k)), V =
        rng.random((k, m)) with rng = numpy.random.default_rng(seed); ``info["seed"]`` reports it.
    init : (U0 (n, k), V0 (k, m)) starting factors, replacing the seed.
    dtype : float32 or float64 for the factors; None: A's float dtype, float64 for bool/int A.
    callback, progress, checkpoint, checkpoint_every, time_limit : as for :func:`als`.

    Returns
    -------
    RecoveryResult with U (n, k) and V (m, k) (V^T, the library's convention), the relaxed
    factors of ``dtype`` on A's side; info["W"] (n, k) and info["H"] (k, m) bool, the rounded
    factors (U >= 0.5 and V >= 0.5); history {"loss": ||A - U V||_F^2, "relative_change":
    |loss_{t-1} - loss_t| / loss_{t-1}} (n_iter,) float64; stop_reason "converged",
    "max_iter", "time_limit" or "diverged"; info["seed"], info["l2_final"].

    Raises
    ------
    ValueError for entries other than 0 and 1 (the message names the first and counts them),
    NaN, an empty matrix, n_components < 1 and bad settings; TypeError for non-numeric data,
    a non-int n_components, a dtype other than float32/float64.
    """
    return _run("boolean_mf", A, n_components, False, l1=l1, l2=l2, reg_growth=reg_growth, inertia=inertia,
                nonnegative=nonnegative, max_iter=max_iter, tol=tol, seed=seed, init=init, dtype=dtype,
                callback=callback, progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                time_limit=time_limit)


@_checks.constrained(**BMF_CONSTRAINTS)
def batched_boolean_mf(A: Any, n_components: int, *, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2,
                       reg_growth: float = DEFAULT_REG_GROWTH, inertia: float = 0.0, nonnegative: bool = True,
                       max_iter: int = DEFAULT_MAX_ITER, tol: float = DEFAULT_TOL, seed: Optional[int] = None,
                       init: Optional[tuple[Any, Any]] = None, dtype: Any = None,
                       callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
                       checkpoint: Optional[str] = None, checkpoint_every: int = 50,
                       time_limit: Optional[float] = None) -> RecoveryResult:
    """Elbmf on B independent small 0/1 matrices at once, like :func:`batched_als`: every
    half-step of all problems is one batched GEMM (cuBLAS strided-batched on the GPU) and one
    fused kernel launch; a problem whose loss change falls below ``tol`` is frozen while the
    others go on.

    Parameters
    ----------
    A : (B, n, m) dense 0/1 array (numpy or CUDA).
    seed : problem b starts where ``boolean_mf(A[b], ..., seed=seed + b)`` does.
    init : (U0 (B, n, k), V0 (B, k, m)).
    Everything else as :func:`boolean_mf`, per problem.

    Returns
    -------
    RecoveryResult with U (B, n, k), V (B, m, k), info["W"] (B, n, k) and info["H"] (B, k, m)
    bool, converged (B,) bool, stop_reason a list of B str, history (n_iter, B) (NaN once a
    problem is frozen), info["n_iter"] (B,) int64.
    """
    return _run("batched_boolean_mf", A, n_components, True, l1=l1, l2=l2, reg_growth=reg_growth, inertia=inertia,
                nonnegative=nonnegative, max_iter=max_iter, tol=tol, seed=seed, init=init, dtype=dtype,
                callback=callback, progress=progress, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                time_limit=time_limit)
