"""soft-impute-ALS: nuclear-norm regularized matrix completion by rank-restricted alternating
ridge steps (Hastie, Mazumder, Lee and Zadeh, "Matrix completion and low-rank SVD via fast
alternating least squares", JMLR 16, 2015, Algorithm 3.1; the ``softImpute`` R package's
``type="als"``).

It minimises

    1/2 ||P_Omega(X - A B^T)||_F^2 + reg/2 (||A||_F^2 + ||B||_F^2)

over A (n1, r), B (n2, r), which for a rank bound r at least the rank of the solution is the
nuclear-norm regularized problem 1/2 ||P_Omega(X - Z)||_F^2 + reg ||Z||_*. The iterate is kept
as Z = U diag(d) V^T (U, V orthonormal columns, d >= 0), i.e. A = U D, B = V D with D^2 = diag(d).
With the filled matrix X* = P_Omega(X - Z) + Z (sparse residual S plus low rank, never formed),
one sweep is two half-steps; the left one (the right one is its mirror image, with X*^T):

    M = X* V diag(d / (d + reg)) = (S V + U diag(d) V^T V) diag(d / (d + reg)),
    M = U~ diag(s) R^T (thin SVD),  U <- U~,  d <- s,  V <- V R,

after which S is recomputed on Omega. The run stops once the relative change of Z is below tol,
and finishes with M = X* V = U_s diag(D_s) R^T, V_s = V R, d = max(D_s - reg, 0): the rank adapts
to reg. Every product with X* costs one sparse pass (a SparsePattern built once per solve) and
(n1 + n2) r^2 dense work: a sweep is O(nnz r + (n1 + n2) r^2).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, resolve
from .._backend import array_module, single_threaded_blas
from .._random import gaussian_fill
from ..ops import SparsePattern
from ._driver import LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start, run_loop
from ._measures import relative_change
from ._result import RecoveryResult
from ._thin_svd import product_svd, tall_svd
from .als import _check_coordinates, _check_rank
from .offsets import CENTERS, OffsetFit, Offsets, initial_offsets

# Lanczos bidiagonalization for the observed spectral norm: stop once the top Ritz value's
# residual bound is below this fraction of it (the value itself is then exact to about its
# square), or after this many steps (or min(shape), where the Krylov space is the whole space).
_LANCZOS_RTOL = 1e-13
_LANCZOS_MAX_STEPS = 500
# Up to this many flops (n1 n2 min(n1, n2)) and entries (n1 n2), one dense SVD of P_Omega(X)
# costs less than the Lanczos steps' overhead (3 ms of it on a 30 x 100 matrix, 0.1 ms dense).
_DENSE_NORM_MAX_WORK = 1 << 24
_DENSE_NORM_MAX_ENTRIES = 1 << 22
# fancyimpute's SoftImpute default: shrinkage value = max singular value of P_Omega(X) / 50.
_DEFAULT_REG_DIVISOR = 50.0
# accelerate=True: each sweep is a step of the proximal-gradient view (soft-impute is the step
# 1), over-relaxed to this step: forward-backward iterations converge for steps below 2 / L, and
# the gradient of 1/2 ||P_Omega(X - Z)||^2 is 1-Lipschitz (P_Omega is a projection). From a
# cold start at the chosen penalty, with the offsets, to tol 1e-3 on the bundled data sets: 28 /
# 103 / 148 / 73 sweeps with it and the momentum, against 47 / 136 / 169 / 103 plain (MovieLens
# sample, camera, digits, china); 1.9 took 26 / 100 / 233 / 67: digits' momentum then restarted
# every third sweep.
_RELAXATION = 1.5
# The half-steps' thin SVDs of short (n, rank) matrices: on the CPU by the core's one-sided
# Jacobi, which reuses the near-orthogonality of a converging iterate (51 against gesdd's 119 us
# at 100 x 20, where gesdd's r x r bidiagonal stage dominates); taller ones (gesdd's QR then
# wins: 313 against 248 us at 512 x 20), or on the GPU, by the vendor's SVD.
_JACOBI_MAX_ROWS = 192
_JACOBI_MAX_RANK = 64
_JACOBI_MAX_SWEEPS = 30


class _Problem:
    """The validated entries of one solve (held in row order), their SparsePattern (both CSR
    orders, built once) and the products with the filled matrix X* = S + U diag(d) V^T."""

    def __init__(self, call: Call, rows, cols, vals, shape: tuple[int, int], rank: int, reg: float):
        self.call, self.xp = call, call.xp
        (self.m, self.n), self.rank, self.reg = shape, rank, reg
        self.pattern = SparsePattern(rows, cols, shape, copy=False)  # range-checks rows and cols (IndexError)
        in_rows = self.pattern.in_csr_order(vals)
        if in_rows is not vals:
            # The entries in row order (each row's in input order), once: the sampled products then
            # read each U row once (4.5M shuffled entries, r = 20: 78 -> 28 ms a product).
            rows, cols, vals = self.pattern.keys_in_csr_order(), self.pattern.csr_arrays()[1], in_rows
            self.pattern = SparsePattern(rows, cols, shape, copy=False)
        self.rows, self.cols, self.vals = rows, cols, vals
        self.dtype = vals.dtype
        self.target = vals  # what Z fits: vals minus the offsets in force (centered solves)
        self.offsets = call.xp.asarray(np.array([0, rows.shape[0]], dtype=np.int64))
        self.unread_status = None  # the sampled product's status word, allocated once
        self.jacobi = hasattr(call.module, "thin_svd") and rank <= _JACOBI_MAX_RANK

    def svd(self, M):
        """(left, s, q) with M = left diag(s) q^T for an (n, rank) M: left (n, rank) C-contiguous
        orthonormal columns, s (rank,) descending, q (rank, rank) orthogonal."""
        n, r = M.shape
        if self.jacobi and n <= _JACOBI_MAX_ROWS:
            left, s, q = np.empty((n, r), M.dtype), np.empty(r, M.dtype), np.empty((r, r), M.dtype)
            if self.call.module.thin_svd(M, left, s, q, _JACOBI_MAX_SWEEPS) >= 0:
                return left, s, q
        if self.xp is np:  # also raises on NaN/inf
            left, s, q_t = tall_svd(M)
            return left, s, q_t.T
        left, s, q_t = self.xp.linalg.svd(M, full_matrices=False)
        return self.xp.ascontiguousarray(left), s, q_t.T

    def residual(self, U, d, V):
        """(nnz,) S = target - <U_i diag(d), V_j> on Omega, in the dtype of vals."""
        return self.target - self.lowrank_at_observed(U, d, V)

    def lowrank_at_observed(self, U, d, V):
        """(nnz,) <U_i diag(d), V_j> on Omega. Every index was checked when the pattern was
        built: the kernel's status word is not read (no sync)."""
        out = self.xp.empty(self.rows.shape[0], dtype=self.dtype)
        if self.unread_status is None:
            self.unread_status = self.call.status(self.rows.shape[0])
        self.call.module.sampled_product((U * d)[None], V[None], self.rows, self.cols, self.offsets, out,
                                         self.unread_status, self.call.stream())
        return out

    def filled_times(self, S, terms, R, transpose: bool, relaxation: float):
        """X* R / relaxation for the filled matrix X* = relaxation S + sum_k c_k L_k diag(d_k) R_k^T
        over ``terms`` [(c_k, L_k, d_k, R_k)] (with ``transpose`` the product with X*^T, whose
        terms are given transposed: (c_k, R_k, d_k, L_k)): one sparse pass and r x r Gram work,
        never an n1 x n2 matrix. Dividing by the relaxation keeps the pass over S unscaled."""
        M = self.pattern.solver_product(self.call, S, R, transpose)
        for c, L, d, R_k in terms:
            M += L @ ((c / relaxation * d)[:, None] * (R_k.T @ R))
        return M

    def half_step(self, S, terms, d, R, transpose: bool, relaxation: float):
        """The update of the left factor (R = V) or, with ``transpose``, of the right one (R = U)
        against the filled matrix of ``terms`` (see filled_times) whose current right factor is
        R diag(d): M = X* R diag(d / (d + relaxation reg)) = L~ diag(s) Q^T; returns (L~, s, R Q),
        C-contiguous (the kernels' layout)."""
        M = self.filled_times(S, terms, R, transpose, relaxation)
        M *= relaxation * d / (d + relaxation * self.reg) if self.reg > 0 else relaxation
        left, s, q = self.svd(M)
        return left, s, R @ q

    def loss(self, S, d):
        """1/2 ||S||^2 + reg sum(d) (= reg/2 (||A||^2 + ||B||^2) for A = U D, B = V D), float64 on the device."""
        S64 = S.astype(np.float64, copy=False)
        return 0.5 * (S64 @ S64) + self.reg * d.astype(np.float64, copy=False).sum()

    def finish(self, S, U, d, V):
        """The plain step (no relaxation): M = X* V = U_s diag(D_s) R^T; (U_s, max(D_s - reg, 0), V R)."""
        M = self.filled_times(S, [(1.0, U, d, V)], V, False, 1.0)
        left, s, q = self.svd(M)
        return left, self.xp.maximum(s - self.reg, 0), V @ q


def _pad_right(call: Call, V_keep, n: int, rank: int, dtype, key: int):
    """(n, rank) orthonormal columns: V_keep (n, k) followed by rank - k columns orthogonal to it,
    from the seeded counter-based Gaussian draws (stream 0, the same on CPU and GPU) and a QR."""
    xp = call.xp
    k = int(V_keep.shape[1])
    if k == rank:
        return V_keep
    G = gaussian_fill(call, dtype, key, 1, n, rank).reshape(n, rank)[:, k:]
    if k:
        G = G - V_keep @ (V_keep.T @ G)
        G = G - V_keep @ (V_keep.T @ G)  # twice is enough (Kahan, Parlett)
    Q, _ = xp.linalg.qr(G)
    return xp.ascontiguousarray(xp.concatenate([V_keep, Q], axis=1))


def _init_parts(function: str, init: Any) -> tuple[Any, Any, Any]:
    """(U, d, V) of a warm start: a RecoveryResult of soft_impute or a (U, d, V) tuple."""
    if isinstance(init, RecoveryResult):
        factors = init.info.get("factors")
        if factors is None:
            raise ValueError(f"{function}: init is a RecoveryResult without info['factors'] (not a soft_impute "
                             "result); pass a soft_impute result or a (U, d, V) tuple")
        return tuple(factors)
    if isinstance(init, (tuple, list)) and len(init) == 3:
        return tuple(init)
    raise TypeError(f"{function}: init must be None, a soft_impute RecoveryResult or a tuple (U, d, V) of "
                    f"shapes (n1, k), (k,), (n2, k), got {type(init).__name__}")


def _init_array(call: Call, name: str, x: Any, ndim: int, dtype):
    """A part of the warm start on the call's backend, converted to the dtype of vals."""
    x = call._as_backend_array(name, x)
    if x.dtype.kind not in "fiu":
        raise TypeError(f"{call.function}: {name} must be real numbers, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{call.function}: {name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    x = call.xp.ascontiguousarray(x, dtype=dtype)
    call.check_finite(name, x)
    return x


def _warm_start(call: Call, init: Any, problem: _Problem, key: int):
    """(U, d, V) to start from: the estimate U diag(d) V^T of ``init`` re-factored through QR of
    U and V and an SVD of the k x k core (so any factors of the estimate will do; a soft_impute
    result's own factors are an SVD already and are taken as they are), its top
    ``rank`` directions with d > 0 kept; missing columns get V orthogonal to the kept ones (seeded),
    U = 0 and d = the smallest kept d (1 if none is kept), as the softImpute package pads."""
    xp, dtype = call.xp, problem.dtype
    U, d, V = _init_parts(call.function, init)
    U = _init_array(call, "init U", U, 2, dtype)
    d = _init_array(call, "init d", d, 1, dtype)
    V = _init_array(call, "init V", V, 2, dtype)
    k = int(d.shape[0])
    if U.shape != (problem.m, k) or V.shape != (problem.n, k) or k == 0:
        raise ValueError(f"{call.function}: init (U, d, V) has shapes {tuple(U.shape)}, {tuple(d.shape)}, "
                         f"{tuple(V.shape)}; expected ({problem.m}, k), (k,), ({problem.n}, k) with k >= 1")
    if isinstance(init, RecoveryResult) and init.info["factors"][1].dtype == dtype:
        # A soft_impute result's factors are already an SVD (orthonormal, d descending): a path
        # point needs no QR and SVD of its predecessor.
        s, U_basis, V_basis = d, U, V
    else:
        U_basis, s, V_basis = product_svd(xp, U, V, d)
    # Directions below the rounding of the largest are zero (a d = 0 of the previous solve).
    floor = float(s[0]) * max(s.shape[0], 1) * float(np.finfo(dtype).eps)
    kept = min(int(call.to_host((s > floor).sum())), problem.rank)
    U_keep = xp.ascontiguousarray(U_basis[:, :kept])
    V_keep = xp.ascontiguousarray(V_basis[:, :kept])
    pad = problem.rank - kept
    d_pad = s[kept - 1:kept] if kept else xp.ones(1, dtype=dtype)
    d0 = xp.concatenate([s[:kept], xp.repeat(d_pad, pad)]).astype(dtype)
    U0 = xp.ascontiguousarray(xp.concatenate([U_keep, xp.zeros((problem.m, pad), dtype=dtype)], axis=1))
    return U0, d0, _pad_right(call, V_keep, problem.n, problem.rank, dtype, key)


def _start_offsets(call: Call, given: Optional[Offsets], init: Any, problem: _Problem, center: str,
                   bias_reg: float) -> Offsets:
    """The offsets a centered solve starts from: those given, a warm start's, else their fit to vals alone."""
    previous = given if given is not None else (init.info.get("offsets") if isinstance(init, RecoveryResult)
                                                else None)
    if previous is not None:
        return Offsets(float(previous.intercept), call.xp.asarray(previous.row, dtype=problem.dtype),
                       call.xp.asarray(previous.col, dtype=problem.dtype))
    return initial_offsets(problem.rows, problem.cols, problem.vals, (problem.m, problem.n), center, bias_reg)


def _offset_arrays(xp: Any, offsets: Offsets) -> dict[str, Any]:
    """The offsets as loop-state arrays (checkpointed with the factors)."""
    return {"intercept": xp.asarray([offsets.intercept], dtype=np.float64), "row_offsets": offsets.row,
            "col_offsets": offsets.col}


def _offsets_of(state: LoopState) -> Offsets:
    arrays = state.arrays
    return Offsets(float(arrays["intercept"][0]), arrays["row_offsets"], arrays["col_offsets"])


def _cold_start(call: Call, problem: _Problem, key: int):
    """The paper's start: V random orthonormal (seeded), D = I, U = 0 (so A B^T = 0)."""
    xp, dtype = call.xp, problem.dtype
    V0 = _pad_right(call, xp.zeros((problem.n, 0), dtype=dtype), problem.n, problem.rank, dtype, key)
    return xp.zeros((problem.m, problem.rank), dtype=dtype), xp.ones(problem.rank, dtype=dtype), V0


def _lanczos_top(xp: Any, times: Callable[[Any], Any], times_t: Callable[[Any], Any], start, m: int,
                 steps: int) -> float:
    """Largest singular value of the operator A (A v = times(v) for v (n, 1), A^T u = times_t(u)
    for u (m, 1)) by Golub-Kahan bidiagonalization with full reorthogonalisation (classical
    Gram-Schmidt, twice, against the stored bases) from ``start`` (n, 1), at most ``steps`` steps.
    Stops once the top Ritz value sigma's residual bound beta_k |x_k| (A^T u~ - sigma v~ has that
    norm; A v~ = sigma u~ exactly) is below _LANCZOS_RTOL sigma."""
    n = int(start.shape[0])
    # The bases as rows: each reorthogonalisation reads one contiguous block (column slices of
    # (m, steps) bases had numpy copy the block at every step: 6.7 of a 4.5M-entry fit's 52 s).
    Us = xp.zeros((steps, m), dtype=start.dtype)
    Vs = xp.zeros((steps + 1, n), dtype=start.dtype)
    Vs[0] = start.reshape(n) / xp.linalg.norm(start)
    alphas: list[float] = []
    betas: list[float] = []
    u = times(Vs[0][:, None]).reshape(m)
    for j in range(steps):
        for _ in range(2):
            u = u - Us[:j].T @ (Us[:j] @ u)
        alpha = float(xp.linalg.norm(u))
        if alpha == 0.0:  # A v_j lies in span(u_1..u_{j-1}): the Krylov space is exhausted
            break
        Us[j] = u / alpha
        alphas.append(alpha)
        v = times_t(Us[j][:, None]).reshape(n) - alpha * Vs[j]
        for _ in range(2):
            v = v - Vs[:j + 1].T @ (Vs[:j + 1] @ v)
        beta = float(xp.linalg.norm(v))
        x, sigma, _ = np.linalg.svd(np.diag(alphas) + np.diag(betas, 1))
        if beta * abs(x[-1, 0]) <= _LANCZOS_RTOL * sigma[0]:
            return float(sigma[0])
        betas.append(beta)
        if j == steps - 1:  # out of steps: the k x (k + 1) bidiagonal below sees beta_k too
            break
        Vs[j + 1] = v / beta
        u = times(Vs[j + 1][:, None]).reshape(m) - beta * Us[j]
    if not alphas:
        return 0.0
    # Exhausted at step k (A v_{k+1} in span(u_1..u_k)), or out of steps: the k x (k + 1)
    # bidiagonal [B_k, beta_k e_k] is U_k^T A V_{k+1}, whose singular values are A's when the space
    # is exhausted and never further from them than B_k's; its last beta counts (one observed row:
    # A v_1 is its direction, so B_1 alone gave |A v_1|, a fraction of ||A||_2; 2 x 2,200,000 with
    # steps = 2: 8.78 for 9.05).
    k = len(alphas)
    bidiagonal = np.zeros((k, k + 1))
    bidiagonal[np.arange(k), np.arange(k)] = alphas
    bidiagonal[np.arange(k), np.arange(1, k + 1)] = betas[:k]
    return float(np.linalg.svd(bidiagonal, compute_uv=False)[0])


def _spectral_norm(call: Call, problem: _Problem, seed: int) -> float:
    """||P_Omega(X)||_2 for validated entries, in float64 (whatever the dtype of vals)."""
    vals = problem.vals.astype(np.float64)
    m, n, xp = problem.m, problem.n, call.xp
    if m * n * min(m, n) <= _DENSE_NORM_MAX_WORK and m * n <= _DENSE_NORM_MAX_ENTRIES:  # repeated coordinates add up, as in the sparse products
        dense = xp.bincount(problem.rows.astype(np.int64) * n + problem.cols, weights=vals, minlength=m * n)
        return float(xp.linalg.svd(dense.reshape(m, n), compute_uv=False)[0])
    pattern = problem.pattern
    start = gaussian_fill(call, np.float64, seed, 1, problem.n, 1).reshape(problem.n, 1)
    return _lanczos_top(call.xp, lambda v: pattern.times_dense(vals, v, check_finite=False),
                        lambda u: pattern.times_dense(vals, u, transpose=True, check_finite=False),
                        start, problem.m, min(problem.m, problem.n, _LANCZOS_MAX_STEPS))


def _prepare(function: str, rows, cols, vals, shape, rank: int, reg: float, init=None):
    _checks.required(function, rows=rows, cols=cols, vals=vals)
    call = resolve(function, rows=rows, cols=cols, vals=vals)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals)
    problem = _Problem(call, rows, cols, vals, shape, rank, reg)  # checks the index ranges
    check_distinct(function, rows, cols, shape)
    return call, problem


def check_distinct(function: str, rows: Any, cols: Any, shape: tuple[int, int]) -> None:
    """ValueError counting the entries that repeat an earlier (row, col): soft-impute observes
    each entry at most once. rows, cols: in-range index arrays (numpy or CuPy)."""
    xp = array_module(rows)
    keys = rows.astype(np.int64) * shape[1] + cols.astype(np.int64)
    ordered = keys.shape[0] < 2 or bool(xp.all(keys[1:] > keys[:-1]))  # np.nonzero order: no sort needed
    if not ordered:
        keys = xp.sort(keys)
    repeated = 0 if ordered else int((keys[1:] == keys[:-1]).sum())
    if repeated:
        raise ValueError(f"{function}: rows and cols repeat {repeated} coordinate(s); soft-impute observes each "
                         "entry at most once (average the values of repeated coordinates first)")


def _start_seed(function: str, name: str, value: Any) -> int:
    """An int in [0, 2**64) (None is refused: the value is a deterministic function of the data)."""
    if value is None:
        raise TypeError(f"{function}: {name} must be an integer in [0, 2**64), got None")
    return _checks.seed(function, value, name=name)


@_checks.constrained(shape=_checks.shape_2d, seed=_start_seed)
def observed_spectral_norm(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], *, seed: int = 0) -> float:
    """The largest singular value of P_Omega(X): the n1 x n2 matrix holding vals at (rows, cols)
    and zeros elsewhere (never formed), i.e. reg_max of :func:`soft_impute` (at any reg at or
    above it the optimum is the zero matrix; the solver's iterate only decays towards it).

    Computed by Golub-Kahan-Lanczos bidiagonalization with full reorthogonalisation through
    sparse products (a SparsePattern), in float64, until the top Ritz value is exact to about
    1e-13 relative (at most min(shape, 500) steps, each one product with P_Omega(X) and one
    with its transpose). rows, cols, vals, shape as for :func:`soft_impute` (repeated
    coordinates add up, as in scipy's COO format); seed (an int in [0, 2**64), default 0) seeds
    the Lanczos start vector. Small matrices (n1 n2 min(n1, n2) <= 2**24) take one dense SVD
    instead, exact to rounding. Returns a Python float.
    """
    call = resolve("observed_spectral_norm", rows=rows, cols=cols, vals=vals)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals)
    problem = _Problem(call, rows, cols, vals, shape, 1, 0.0)
    return _spectral_norm(call, problem, seed)


@_checks.constrained(**LOOP_CONSTRAINTS, shape=_checks.shape_2d, reg=_checks.optional(_checks.nonnegative_float),
                     seed=_checks.seed_argument, center=_checks.one_of(*CENTERS), bias_reg=_checks.nonnegative_float,
                     accelerate=_checks.flag)
def soft_impute(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], rank: int, reg: Optional[float] = None, *,
                max_iter: int = 100, tol: float = 1e-5, seed: Optional[int] = None, init: Optional[Any] = None,
                center: str = "none", bias_reg: float = 0.0, offsets: Optional[Offsets] = None, accelerate: bool = True,
                callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
                checkpoint: Optional[str] = None, checkpoint_every: int = 10,
                time_limit: Optional[float] = None) -> RecoveryResult:
    """Complete an n1 x n2 matrix by soft-impute-ALS (nuclear-norm regularized, rank-restricted).

    Minimises 1/2 sum_k (vals[k] - (A B^T)[rows[k], cols[k]])^2 + reg/2 (||A||_F^2 + ||B||_F^2)
    over A (n1, rank), B (n2, rank) by the alternating ridge steps of Hastie et al. (2015,
    Algorithm 3.1); when ``rank`` is at least the rank of the solution this is nuclear-norm
    regularized completion (soft-impute, Mazumder et al. 2010) with the same reg. The filled
    matrix is never formed: a sweep costs two sparse products, two sampled products and
    O((n1 + n2) rank^2) dense work. The result is finished with a soft-thresholded SVD, so its
    rank adapts to reg (``info["effective_rank"]``).

    Parameters
    ----------
    rows, cols : (nnz,) integer arrays (any integer dtype and layout; numpy, or CUDA arrays to
        solve on the GPU), 0 <= rows < n1, 0 <= cols < n2, each coordinate at most once.
    vals : (nnz,) float32/float64 observed values (finite); the solve runs in this dtype.
    shape : (n1, n2), two ints >= 1.
    rank : the rank bound r, an int in [1, min(shape)].
    reg : lambda >= 0 (finite), or None for fancyimpute's default
        ``observed_spectral_norm(rows, cols, vals, shape) / 50``. reg = 0 is the plain rank-r
        fit; at reg >= observed_spectral_norm(...) (lambda_max) the optimum is the zero matrix,
        but the iterate only decays towards it (at lambda_max itself, after 100 sweeps, entries
        of about 1e-2 of the data remain) and the relative change does not fall: a path of reg
        should start below lambda_max, or take the zero solution for granted there.
    max_iter, tol : stop after max_iter sweeps ("max_iter"; 0 only finishes the start), or once
        the relative change of the estimate, ||Z_t - Z_{t-1}||_F / ||Z_{t-1}||_F, is below tol
        ("converged"; computed from r x r Gram products; the paper's ratio is its square).
        A NaN/inf loss stops the run with "diverged".
    seed : None (fresh entropy, reported in ``info["seed"]``) or an int in [0, 2**64): the cold
        start's V (or the padding columns of a warm start) are orthonormalised standard normal
        draws of the counter-based generator with that key, the same on CPU and GPU.
    init : None (cold start: V random orthonormal, D = I, A = 0), a previous soft_impute
        RecoveryResult, or a tuple (U, d, V) with U (n1, k), d (k,), V (n2, k) (estimate
        U diag(d) V^T; e.g. ``result.info["factors"]``), possibly from another reg: a warm start.
        Its top ``rank`` directions with d > 0 are kept; missing ones are padded as the
        softImpute package does (new orthonormal V columns from ``seed``, zero U columns, d =
        the smallest kept value).
    center, bias_reg : "none" (default), "global" or "both": fit the model mu + a_i + b_j +
        (A B^T)_ij jointly, the offsets updated after every sweep by one Gauss-Seidel sweep of
        their ridge regression on vals - A B^T (:func:`lowrank_hpc.recover.offsets.fit_offsets`;
        penalty bias_reg/2 (||a||^2 + ||b||^2), mu unpenalized). They start from ``offsets``
        (an :class:`~lowrank_hpc.recover.offsets.Offsets` on vals' backend), else from a warm
        start's ``info["offsets"]``, else from their fit to vals alone, and are returned in
        ``info["offsets"]``. Ratings (1-5 stars and the like) need "both": uncentered, the low
        rank part spends itself on the mean (a 1,500 x 800 sample of 28k ratings: held-out RMSE 1.18
        with "none" and 0.99 with "both", the training mean 1.04). :class:`lowrank_hpc.MatrixCompletion`
        centers by default and picks reg on held-out entries.
    accelerate : True (default): over-relax each sweep as a proximal-gradient step of 1.5
        instead of 1 and extrapolate the iterate before it (Nesterov momentum, beta = (t - 1) /
        (t + 2)), restarting the momentum when the loss rises and returning to the plain
        iteration for good when a sweep without momentum raises it; the fixed points, hence the
        solution, are those of the plain iteration, reached in fewer sweeps (1.1-1.7x fewer to
        tol 1e-3 on the bundled real data sets). False: exactly Algorithm 3.1, whose loss never
        rises.
    callback : called as callback(iteration, {"loss", "relative_change", "U", "d", "V", ...})
        after every sweep, with the live iterate (U (n1, rank), d (rank,), V (n2, rank): A B^T =
        U diag(d) V^T; also the previous one as "previous_U", "previous_d", "previous_V";
        centered solves add "offsets").
    progress, checkpoint, checkpoint_every, time_limit : as for :func:`lowrank_hpc.recover.als`
        (a run resumed from its checkpoint ends with the same result as an uninterrupted one).

    Returns
    -------
    RecoveryResult with U (n1, rank) and V (n2, rank) in the dtype and array type of vals,
    U = U_s sqrt(d), V = V_s sqrt(d), so U @ V.T is the estimate (zero columns where d = 0);
    history {"loss", "relative_change"} (n_iter,) float64, loss the objective above after each
    sweep (with A = U_t D, B = V_t D: 1/2 ||P_Omega(X - Z_t)||^2 + reg sum(d_t), plus the
    offsets' residual and penalty when centered); n_iter,
    converged, stop_reason ("converged", "max_iter", "time_limit" or "diverged"), seconds,
    backend, and info: "reg" (the lambda used), "singular_values" (d, (rank,) descending numpy
    float64), "effective_rank" (the number of d > 0), "seed", and "factors" (U_s (n1, rank),
    d (rank,), V_s (n2, rank) on the backend in the dtype of vals: orthonormal U_s, V_s; the
    warm start of a next solve).

    Raises
    ------
    TypeError for dtypes, mixed host/device arrays, a non-int rank or seed; ValueError for
    shapes, a rank outside [1, min(shape)], reg < 0, NaN or inf, NaN/inf in vals or init,
    repeated coordinates, empty input and bad settings; IndexError for an out-of-range index;
    CheckpointError (CheckpointMismatchError) for an unusable (foreign) checkpoint.
    """
    started = time.perf_counter()
    function = "soft_impute"
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=function)
    rank = _check_rank(function, shape, rank)
    call, problem = _prepare(function, rows, cols, vals, shape, rank, 0.0)
    if reg is None:
        reg = _spectral_norm(call, problem, 0) / _DEFAULT_REG_DIVISOR
    problem.reg = float(reg)
    xp = call.xp
    seed, seed_key = resolve_seed(seed, settings.checkpoint)
    if init is not None:
        U0, d0, V0 = _warm_start(call, init, problem, seed)
    else:
        U0, d0, V0 = _cold_start(call, problem, seed)
    # The data and settings; a warm start enters through the start it gives (a function of init
    # and the seed), a cold one through the seed ("drawn" for a drawn one, saved in the file).
    digest = fingerprint(function, problem.rows, problem.cols, problem.vals, problem.m, problem.n, rank,
                         problem.reg, settings.tol, repr(seed_key), accelerate,
                         *((U0, d0, V0) if init is not None else ())) if checkpoint else ""
    centered = center != "none"
    if centered:
        start = _start_offsets(call, offsets, init, problem, center, bias_reg)
        digest = fingerprint(digest, center, bias_reg, start.intercept, start.row, start.col) if checkpoint else ""
    fresh = LoopState(arrays={"U": U0, "d": d0, "V": V0, "previous_U": U0, "previous_d": d0, "previous_V": V0,
                              **(_offset_arrays(xp, start) if centered else {})},
                      scalars={"momentum_step": 1.0 if accelerate else 0.0,
                               "relaxation": _RELAXATION if accelerate else 1.0}, seed=seed)
    state = resume_or_start(settings, digest, xp, fresh)
    if centered:
        offset_fit = OffsetFit(problem.rows, problem.cols, shape, center, bias_reg)
        live = {"offsets": _offsets_of(state)}  # the state's, kept as an Offsets: not read back every sweep
        problem.target = problem.vals - live["offsets"].at(problem.rows, problem.cols)
    # Z on Omega for the current and the previous iterate, carried from one sweep to the next (a
    # resumed run recomputes them from the state's factors, with the same bits).
    cache: dict[str, Any] = {}

    def lowrank_of(state: LoopState, key: str, prefix: str = ""):
        cached = cache.pop(key, None)
        if cached is not None:
            return cached
        arrays = state.arrays
        return problem.lowrank_at_observed(arrays[prefix + "U"], arrays[prefix + "d"], arrays[prefix + "V"])

    def sweep(state: LoopState) -> tuple[float, float]:
        U0, d0, V0 = state.arrays["U"], state.arrays["d"], state.arrays["V"]
        lowrank0 = lowrank_of(state, "lowrank")
        step, relaxation = int(state.scalars["momentum_step"]), state.scalars["relaxation"]
        # Nesterov's extrapolation Z_t + beta (Z_t - Z_{t-1}), beta = (t - 1) / (t + 2), t the
        # sweeps since the last restart (step 0: momentum off). The filled matrix of the first
        # half-step is built from it: on Omega from the two iterates' values, elsewhere as a
        # rank-2r term, so it is never formed.
        beta = (step - 1) / (step + 2) if step >= 1 else 0.0
        if beta > 0:
            previous_lowrank = lowrank_of(state, "previous_lowrank", "previous_")
            S0 = problem.target - ((1 + beta) * lowrank0 - beta * previous_lowrank)
            terms = [(1 + beta, U0, d0, V0), (-beta, state.arrays["previous_U"], state.arrays["previous_d"],
                                              state.arrays["previous_V"])]
        else:
            S0, terms = problem.target - lowrank0, [(1.0, U0, d0, V0)]
        U, d, V = problem.half_step(S0, terms, d0, V0, False, relaxation)
        V, d, U = problem.half_step(problem.residual(U, d, V), [(1.0, V, d, U)], d, U, True, relaxation)
        lowrank = problem.lowrank_at_observed(U, d, V)
        if centered:  # one sweep of the offsets on vals - Z
            swept = live["offsets"] = offset_fit.sweep(problem.vals - lowrank, live["offsets"])
            # The expression a resumed run starts from, so that it continues with the same bits.
            problem.target = problem.vals - swept.at(problem.rows, problem.cols)
            state.arrays.update(_offset_arrays(xp, swept))
        S = problem.target - lowrank
        loss = problem.loss(S, d)
        if centered:
            loss = loss + 0.5 * bias_reg * (swept.row.astype(np.float64) @ swept.row
                                            + swept.col.astype(np.float64) @ swept.col)
        change = relative_change(call, (U0 * d0)[None], V0[None], (U * d)[None], V[None])
        loss, change = (float(x) for x in call.to_host(xp.stack([loss, change[0]])))  # the sweep's one transfer
        # Adaptive restart (O'Donoghue and Candes 2015): a sweep whose loss rises restarts the
        # momentum; one without momentum whose loss rises ends the acceleration, leaving the
        # paper's iteration, whose loss never rises, to converge.
        if state.loss and loss > state.loss[-1]:
            step, relaxation = (1, relaxation) if beta > 0 else (0, 1.0)
        elif step >= 1:
            step += 1
        state.scalars.update(momentum_step=float(step), relaxation=relaxation)
        state.arrays.update(U=U, d=d, V=V, previous_U=U0, previous_d=d0, previous_V=V0)
        cache.update(lowrank=lowrank, previous_lowrank=lowrank0)
        return loss, change

    def stop(state: LoopState) -> Optional[str]:
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        return "converged" if state.relative_change[-1] < settings.tol else None

    # The dense work is n x rank SVDs between OpenMP kernels: one BLAS thread (see single_threaded_blas).
    with single_threaded_blas(), np.errstate(over="ignore", invalid="ignore"):  # a NaN/inf loss is reported as "diverged"
        state, reason, _ = run_loop(settings, state, sweep, digest, stop)
        U, d, V = state.arrays["U"], state.arrays["d"], state.arrays["V"]
        U_s, d, V_s = problem.finish(problem.target - lowrank_of(state, "lowrank"), U, d, V)
    U_s, V_s = xp.ascontiguousarray(U_s), xp.ascontiguousarray(V_s)
    root = xp.sqrt(d)
    singular_values = call.to_host(d).astype(np.float64)
    history = {name: np.asarray(values, dtype=np.float64) if values else np.zeros(0)
               for name, values in (("loss", state.loss), ("relative_change", state.relative_change))}
    info = {"reg": problem.reg, "singular_values": singular_values,
            "effective_rank": int((singular_values > 0).sum()), "seed": state.seed,
            "factors": (call.wrap(U_s), call.wrap(d), call.wrap(V_s))}
    if centered:
        info["offsets"] = live["offsets"]
    return RecoveryResult(U=call.wrap(U_s * root), V=call.wrap(V_s * root), history=history, n_iter=state.iteration,
                          converged=reason == "converged", stop_reason=reason,
                          seconds=time.perf_counter() - started, backend=call.backend, info=info)
