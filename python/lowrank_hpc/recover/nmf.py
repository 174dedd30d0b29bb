"""Non-negative matrix factorization X ~ W H (W, H >= 0): the solvers behind
:class:`lowrank_hpc.NMF` (shared/specs/nmf.md), with scikit-learn's objective, initialisations
and stopping rules.

- ``cd``: HALS coordinate descent (Frobenius). Per half-step the vendor GEMM forms H H^T (k x k)
  and X H^T (n x k) (the library's CSR kernel when X is sparse) and one kernel
  (``hals_sweep``, lowrank_hpc/ops/hals.hpp) sweeps the coordinates of every row, rows in
  parallel (OpenMP, SIMD lanes of rows; a thread per row on the GPU). It stops when the
  projected-gradient violation relative to the first iteration's is <= tol.
- ``mu``: beta-divergence multiplicative updates (Lee & Seung; Fevotte & Idier), Frobenius,
  Kullback-Leibler, Itakura-Saito or any beta; sparse X is only read at its stored entries
  (``sampled_product`` and ``sparse_times_dense``). It checks every 10 iterations whether
  (previous error - error) / initial error < tol.
- masked (missing entries): the loss runs over the observed entries only (weighted NMF). ``cd``
  then works on the residual of the observed entries, column by column (CCD++ order: each
  coordinate's gradient and curvature from ``sparse_times_dense`` over the observed pattern),
  ``mu`` on ``sampled_product`` (W H at the observed entries) and ``sparse_times_dense``.
- ``alternating_relu``: Li, Liang & Risteski (NeurIPS 2016), see :func:`alternating_relu_step`.

Arrays live on one side: numpy/scipy (CPU) or CuPy/cupyx (GPU); the factors are kept as W
(n, k) and H^T (m, k), both C-contiguous, so each half-step has the same shape.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call
from .._backend import single_threaded_blas
from ..ops import SparsePattern
from ._driver import LoopSettings, LoopState, run_loop

EPSILON = float(np.finfo(np.float32).eps)  # scikit-learn's guard against division by zero
TINY64 = float(np.finfo(np.float64).eps)
BETA_NAMES = {"frobenius": 2.0, "kullback-leibler": 1.0, "itakura-saito": 0.0}


def beta_value(beta_loss: Any) -> float:
    """beta of a beta_loss name or number."""
    return BETA_NAMES[beta_loss] if isinstance(beta_loss, str) else float(beta_loss)


def is_sparse(X: Any) -> bool:
    for name in ("scipy.sparse", "cupyx.scipy.sparse"):
        module = sys.modules.get(name)
        if module is not None and module.issparse(X):
            return True
    return False


def _mu_gamma(beta: float) -> float:
    if beta < 1:
        return 1.0 / (2.0 - beta)
    if beta > 2:
        return 1.0 / (beta - 1.0)
    return 1.0


class NmfData:
    """The matrix to factor, validated by the caller: dense (n, m) float32/float64 on its side, or
    sparse (CSR, numpy/cupyx), or the observed entries of a partly missing matrix (``observed``:
    (rows, cols, vals) in row-major order, the rest missing). Only ever multiplied by thin factors
    or sampled at its stored entries."""

    def __init__(self, call: Call, X: Any = None, *, observed: Optional[tuple[Any, Any, Any]] = None,
                 shape: Optional[tuple[int, int]] = None):
        self.call, self.xp = call, call.xp
        xp = self.xp
        self.masked = observed is not None
        self.sparse = self.masked or is_sparse(X)
        if self.sparse:
            if self.masked:
                rows, cols, vals = observed
                self.shape = tuple(int(s) for s in shape)
            else:
                coo = X.tocoo()
                coo.sum_duplicates()
                rows, cols, vals = coo.row, coo.col, coo.data
                self.shape = tuple(int(s) for s in X.shape)
            self.rows = xp.ascontiguousarray(xp.asarray(rows, dtype=np.int64))
            self.cols = xp.ascontiguousarray(xp.asarray(cols, dtype=np.int64))
            self.vals = xp.ascontiguousarray(vals)
            self.dtype = self.vals.dtype
            self.pattern = SparsePattern(self.rows, self.cols, self.shape, copy=False)
            # X's values in the transposed product's order, read in sequence by X^T F.
            self.vals_t = self.pattern.in_csr_order(self.vals, transpose=True)
            self.nnz = int(self.vals.shape[0])
            self.squared_norm = float(xp.dot(self.vals.astype(np.float64), self.vals.astype(np.float64)))
            self.total = float(self.vals.sum(dtype=np.float64))
            # The mean over all n m entries (missing ones excluded when masked).
            self.mean = self.total / (self.nnz if self.masked else self.shape[0] * self.shape[1])
        else:
            self.dense = X
            self.shape = tuple(int(s) for s in X.shape)
            self.dtype = X.dtype
            flat = X.ravel().astype(np.float64, copy=False)
            self.squared_norm = float(xp.dot(flat, flat))
            self.total = float(X.sum(dtype=np.float64))
            self.mean = float(X.mean())

    def times(self, F, out=None):
        """X @ F for F (m, k): (n, k) (the observed entries only when masked); into ``out`` if
        given (a C-contiguous (n, k) array of F's dtype that a loop reuses)."""
        if self.sparse:
            return self.pattern.solver_product(self.call, self.vals, F, out=out)
        return self.xp.matmul(self.dense, F, out=out)

    def transpose_times(self, F, out=None):
        """X^T @ F for F (n, k): (m, k); into ``out`` if given, as for times."""
        if self.sparse:
            return self.pattern.solver_product(self.call, self.vals_t, F, transpose=True, in_order=True, out=out)
        return self.xp.matmul(self.dense.T, F, out=out)

    def entries_times(self, values, F, transpose: bool = False):
        """S @ F (S^T @ F) for S with X's stored pattern and other values."""
        return self.pattern.solver_product(self.call, self.xp.ascontiguousarray(values), F, transpose=transpose)

    def sampled(self, W, Ht):
        """(W H)[rows, cols] at the stored entries: the sampled product (SDDMM) kernel."""
        out = self.xp.empty(self.nnz, dtype=W.dtype)
        module = self.call.module
        offsets = self.xp.asarray(np.array([0, self.nnz], dtype=np.int64))
        status = self.call.status(self.nnz)
        module.sampled_product(W[None], Ht[None], self.rows, self.cols, offsets, out, status, self.call.stream())
        return out


def host_blas(data: "NmfData"):
    """single_threaded_blas() for a CPU problem (see fit), nothing on the GPU."""
    return single_threaded_blas() if data.call.backend == "cpu" else contextlib.nullcontext()


# ---------------------------------------------------------------------- initialisation
def rng_of(random_state: Any, function: str) -> np.random.RandomState:
    """scikit-learn's check_random_state: None -> numpy's global RandomState, an int in
    [0, 2**32) -> a new RandomState(int), a RandomState -> itself. ValueError naming ``function``
    and random_state for anything else."""
    if random_state is None or random_state is np.random:
        return np.random.mtrand._rand
    if isinstance(random_state, np.random.RandomState):
        return random_state
    # RandomState's own error for a seed out of its range named neither NMF nor random_state.
    if _checks._is_int(random_state) and 0 <= random_state < 2**32:
        return np.random.RandomState(int(random_state))
    raise ValueError(f"{function}: random_state must be None, an integer in [0, 2**32) or a numpy RandomState, "
                     f"got {random_state!r}")


def _lu_normalize(A):
    import scipy.linalg

    return scipy.linalg.lu(A, permute_l=True, check_finite=False)[0]


def _beta_scaled(X, WH, beta: float):
    """X (W H)^(beta - 2), the multiplicative update's numerator term (WH already clipped away
    from 0 where beta < 2): X itself for beta 2, X / WH for beta 1."""
    if beta == 2:
        return X
    if beta == 1:
        return X / WH
    return X * WH ** -2 if beta == 0 else X * WH ** (beta - 2)


def _qr_basis(A):
    return np.linalg.qr(A, mode="reduced")[0]


def randomized_svd(data: NmfData, k: int, random_state: Any, fast: bool = False):
    """The truncated SVD of Halko, Martinsson & Tropp with scikit-learn's settings (10 extra
    directions, 7 power iterations when k < 0.1 min(n, m) else 4, LU-normalised power steps and a
    QR basis, the transposed problem when n < m, signs fixed so each left vector's largest entry
    is positive), drawing its Gaussian test matrix as scikit-learn does: the same random_state
    gives scikit-learn's start. Returns U (n, k), s (k,), Vt (k, m) as host float arrays.

    ``fast``: the same test matrix and steps, but the products with X in float32 and the power
    iterations stopped once the top-k subspace holds still (see _fast_range): on a matrix whose
    top k singular values stand clear of the rest this is scikit-learn's result to about
    FAST_SUBSPACE_TOL in a third of the passes; without such a gap it runs scikit-learn's
    iteration count (in float32)."""
    n, m = data.shape
    transpose = n < m
    size = k + 10
    n_iter = 7 if k < 0.1 * min(n, m) else 4
    rng = rng_of(random_state, data.call.function)
    Q = rng.normal(size=(n if transpose else m, size))
    products = _Float32Products(data) if fast else data
    if products.dtype == np.float32:
        Q = Q.astype(np.float32, copy=False)

    def apply(F):  # M @ F with M = X (or X^T when transposed)
        return products.transpose_times(F) if transpose else products.times(F)

    def apply_t(F):
        return products.times(F) if transpose else products.transpose_times(F)

    host = data.call.to_host
    xp = data.xp
    dtype = products.dtype
    if fast:
        Q, B = _fast_range(data, apply, apply_t, Q, k, n_iter)
    else:
        Q = xp.asarray(Q)
        for _ in range(n_iter):
            Q = xp.asarray(_lu_normalize(host(apply(xp.ascontiguousarray(Q)))).astype(dtype, copy=False))
            Q = xp.asarray(_lu_normalize(host(apply_t(xp.ascontiguousarray(Q)))).astype(dtype, copy=False))
        Q = _qr_basis(host(apply(xp.ascontiguousarray(Q))))
        B = host(apply_t(xp.ascontiguousarray(xp.asarray(Q)))).T  # Q^T M, (size, cols of M)
    import scipy.linalg

    Uhat, s, Vt = scipy.linalg.svd(B, full_matrices=False, lapack_driver="gesdd")
    U = Q @ Uhat
    if transpose:  # signs from the rows of Vt (the left vectors of X)
        signs = np.sign(Vt[np.arange(Vt.shape[0]), np.argmax(np.abs(Vt), axis=1)])
        U *= signs[None, :]
        Vt *= signs[:, None]
        return Vt[:k].T, s[:k], U[:, :k].T
    signs = np.sign(U[np.argmax(np.abs(U), axis=0), np.arange(U.shape[1])])
    U *= signs[None, :]
    Vt *= signs[:, None]
    return U[:, :k], s[:k], Vt[:k]


# The fast initialisation's stopping rule: the estimated sine of the largest principal angle
# between the top-k right singular subspace of an iterate and the iteration's limit.
FAST_SUBSPACE_TOL = 1e-3


class _Float32Products:
    """X @ F and X^T @ F in float32 (a float32 copy of X, or X itself when it is float32): the
    fast initialisation's products, F cast to float32 on the way in."""

    def __init__(self, data: NmfData):
        self.data, self.dtype = data, np.dtype(np.float32)
        self.same = data.dtype == np.float32
        if self.same:
            return
        if data.sparse:
            self.vals, self.vals_t = data.vals.astype(np.float32), data.vals_t.astype(np.float32)
        else:
            self.dense = data.dense.astype(np.float32)

    def _operand(self, F):
        return self.data.xp.ascontiguousarray(F, dtype=np.float32)

    def times(self, F):
        if self.same:
            return self.data.times(self._operand(F))
        if self.data.sparse:
            return self.data.pattern.solver_product(self.data.call, self.vals, self._operand(F))
        return self.dense @ self._operand(F)

    def transpose_times(self, F):
        if self.same:
            return self.data.transpose_times(self._operand(F))
        if self.data.sparse:
            return self.data.pattern.solver_product(self.data.call, self.vals_t, self._operand(F), transpose=True,
                                                    in_order=True)
        return self.dense.T @ self._operand(F)


def _fast_range(data: NmfData, apply, apply_t, Q, k: int, n_iter: int):
    """The power iterations from the test matrix Q with a QR basis at both half-steps (the
    subspaces of scikit-learn's LU-normalised ones, up to rounding): Z = M Q, basis = qr(Z),
    Y = M^T basis, Q <- qr(Y). Y^T is the projected matrix basis^T M of that basis, so every
    iteration has its Rayleigh-Ritz SVD at no extra product; the loop stops after at most n_iter
    power iterations (scikit-learn's count), or once the top-k right singular subspace of
    basis^T M is estimated within FAST_SUBSPACE_TOL (sine of the largest principal angle) of its
    limit: its move since the previous iteration times the contraction r / (1 - r) that the Ritz
    values predict. Returns (basis (rows of M, k + 10) float64, B = basis^T M float64)."""
    host, xp = data.call.to_host, data.xp
    previous = None
    for iteration in range(n_iter + 1):
        basis = np.linalg.qr(host(apply(xp.asarray(Q))).astype(np.float64))[0]
        Y = host(apply_t(xp.asarray(basis))).astype(np.float64)  # (cols of M, k + 10)
        if iteration == n_iter:
            break
        Q, R = np.linalg.qr(Y)
        # The top-k right singular vectors of basis^T M = R^T Q^T: Q times R^T's top left vectors.
        left, ritz, _ = np.linalg.svd(R.T)
        top = Q @ left[:, :k]
        if previous is not None:
            cosine = float(np.linalg.svd(previous.T @ top, compute_uv=False).min())
            change = math.sqrt(max(0.0, 1.0 - cosine * cosine))
            # The subspace error contracts by about r = (sigma_(k+11) / sigma_k)^2 per iteration, so
            # this iterate is about change r / (1 - r) from the limit (the last Ritz value for
            # sigma_(k+11)); 0.5 keeps the estimate to where that contraction is fast.
            r = (float(ritz[-1]) / float(ritz[k - 1])) ** 2 if ritz[k - 1] > 0 else 1.0
            if r <= 0.5 and change * r / (1.0 - r) <= FAST_SUBSPACE_TOL:
                break
        previous = top
    return basis, Y.T


def initialize(data: NmfData, k: int, init: Optional[str], random_state: Any, eps: float = 1e-6,
               fast: bool = False):
    """(W (n, k), H (k, m)) as host arrays of X's dtype, by scikit-learn's rules: init=None is
    'nndsvda' when k <= min(n, m), else 'random'; 'random' is |N(0, 1)| sqrt(mean(X) / k) (H drawn
    first); 'nndsvd' (Boutsidis & Gallopoulos) keeps the dominant-sign part of each singular pair;
    'nndsvda' fills its zeros with mean(X), 'nndsvdar' with |N(0, 1)| mean(X) / 100. ``fast``: the
    nndsvd* starts from randomized_svd(fast=True)."""
    with host_blas(data):
        return _initialize(data, k, init, random_state, eps, fast)


def _initialize(data: NmfData, k: int, init: Optional[str], random_state: Any, eps: float, fast: bool = False):
    n, m = data.shape
    if init is not None and init != "random" and k > min(n, m):
        raise ValueError(f"init = '{init}' can only be used when n_components <= min(n_samples, n_features)")
    if init is None:
        init = "nndsvda" if k <= min(n, m) else "random"
    dtype = data.dtype
    if init == "random":
        scale = math.sqrt(data.mean / k)
        rng = rng_of(random_state, data.call.function)
        H = np.abs(scale * rng.standard_normal(size=(k, m)).astype(dtype, copy=False))
        W = np.abs(scale * rng.standard_normal(size=(n, k)).astype(dtype, copy=False))
        return W, H
    U, S, Vt = randomized_svd(data, k, random_state, fast)
    W = np.zeros_like(U)
    H = np.zeros_like(Vt)
    W[:, 0] = np.sqrt(S[0]) * np.abs(U[:, 0])
    H[0, :] = np.sqrt(S[0]) * np.abs(Vt[0, :])
    for j in range(1, k):
        x, y = U[:, j], Vt[j, :]
        x_p, y_p = np.maximum(x, 0), np.maximum(y, 0)
        x_n, y_n = np.abs(np.minimum(x, 0)), np.abs(np.minimum(y, 0))
        x_p_norm, y_p_norm = math.sqrt(float(np.dot(x_p, x_p))), math.sqrt(float(np.dot(y_p, y_p)))
        x_n_norm, y_n_norm = math.sqrt(float(np.dot(x_n, x_n))), math.sqrt(float(np.dot(y_n, y_n)))
        positive, negative = x_p_norm * y_p_norm, x_n_norm * y_n_norm
        if positive > negative:
            u, v, sigma = x_p / x_p_norm, y_p / y_p_norm, positive
        else:
            u, v, sigma = x_n / x_n_norm, y_n / y_n_norm, negative
        scale = np.sqrt(S[j] * sigma)
        W[:, j] = scale * u
        H[j, :] = scale * v
    W[W < eps] = 0
    H[H < eps] = 0
    if init == "nndsvda":
        W[W == 0] = data.mean
        H[H == 0] = data.mean
    elif init == "nndsvdar":
        rng = rng_of(random_state, data.call.function)
        W[W == 0] = abs(data.mean * rng.standard_normal(size=int((W == 0).sum())) / 100)
        H[H == 0] = abs(data.mean * rng.standard_normal(size=int((H == 0).sum())) / 100)
    return W.astype(dtype, copy=False), H.astype(dtype, copy=False)


# ---------------------------------------------------------------------- objective
def beta_divergence(data: NmfData, W, Ht, beta: float, square_root: bool = False) -> float:
    """scikit-learn's _beta_divergence of X and W H (over the observed entries when masked):
    beta = 2 is 1/2 ||X - W H||_F^2, 1 the generalised Kullback-Leibler divergence, 0
    Itakura-Saito; entries of X <= float32 eps are left out of the non-Frobenius sums and W H is
    clamped at that eps, as scikit-learn does. square_root gives sqrt(2 res)."""
    xp = data.xp
    if beta == 2:
        if data.masked:
            residual = data.vals - data.sampled(W, Ht)
            res = float(xp.dot(residual.astype(np.float64), residual.astype(np.float64))) / 2.0
        elif data.sparse:
            gram = (W.T @ W) @ (Ht.T @ Ht)
            res = (data.squared_norm + float(xp.trace(gram)) - 2.0 * float((data.times(Ht) * W).sum())) / 2.0
        else:
            difference = data.dense - W @ Ht.T
            res = float(xp.vdot(difference.ravel(), difference.ravel())) / 2.0
        return math.sqrt(max(res, 0.0) * 2) if square_root else res
    if data.sparse:
        WH_data = data.sampled(W, Ht)
        X_data = data.vals
    else:
        WH = W @ Ht.T
        WH_data, X_data = WH.ravel(), data.dense.ravel()
    keep = X_data > EPSILON
    WH_data, X_data = WH_data[keep], X_data[keep]
    WH_data = xp.maximum(WH_data, EPSILON)
    if beta == 1:
        if data.masked:  # sum of W H over the observed entries only
            sum_WH = float(data.sampled(W, Ht).sum(dtype=np.float64))
        else:
            sum_WH = float(xp.dot(W.sum(axis=0), Ht.sum(axis=0)))
        res = float(xp.dot(X_data, xp.log(X_data / WH_data))) + sum_WH - float(X_data.sum())
    elif beta == 0:
        div = X_data / WH_data
        count = data.nnz if data.masked else data.shape[0] * data.shape[1]
        res = float(div.sum()) - count - float(xp.log(div).sum())
    else:
        if data.masked:
            sum_WH_beta = float((data.sampled(W, Ht) ** beta).sum())
        elif data.sparse:
            sum_WH_beta = float(sum(float(((W @ Ht[j]) ** beta).sum()) for j in range(data.shape[1])))
        else:
            sum_WH_beta = float((WH ** beta).sum())
        sum_X_WH = float(xp.dot(X_data, WH_data ** (beta - 1)))
        res = float((X_data ** beta).sum()) - beta * sum_X_WH
        res += sum_WH_beta * (beta - 1)
        res /= beta * (beta - 1)
    return math.sqrt(2 * max(res, 0.0)) if square_root else res


# ---------------------------------------------------------------------- solvers
class Penalty:
    """scikit-learn's scaled regularisation: l1 and l2 weights of W and of H."""

    def __init__(self, l1_W: float = 0.0, l1_H: float = 0.0, l2_W: float = 0.0, l2_H: float = 0.0):
        self.l1_W, self.l1_H, self.l2_W, self.l2_H = l1_W, l1_H, l2_W, l2_H


# sweeps="auto" (accelerated HALS, Gillis & Glineur 2012): a half-step sweeps up to
# 1 + floor(ALPHA rho) times, rho = 1 + (the products' cost) / (one sweep's cost), and stops once
# a sweep changes every row by at most INNER_TOL times the first sweep's change.
AUTO_ALPHA = 0.5
AUTO_INNER_TOL = 0.1


# ... and extrapolates between iterations with restarts (Ang & Gillis 2019, "Accelerating
# nonnegative matrix factorization algorithms using extrapolation"): after W's half-step the H
# half-step runs against W_y = max(W + beta (W - W_previous), 0), after H's the next W half-step
# against H_y likewise; an iteration that raises the objective restarts (H_y = H, the ceiling
# becomes beta and beta shrinks by SHRINK), one that lowers it grows beta by GROW up to the
# ceiling, which grows by CEILING_GROW up to 1. On the 20,000 x 5,000 sparse benchmark (k = 20)
# scikit-learn's loss after 200 iterations took 36 iterations instead of 174.
EXTRAPOLATION_START = 0.5
EXTRAPOLATION_SHRINK = 1.5
EXTRAPOLATION_GROW = 1.05
EXTRAPOLATION_CEILING_GROW = 1.01


def auto_sweeps(product_cost: float, rows: int, k: int) -> int:
    """Gillis & Glineur's bound on the inner sweeps of a half-step of ``rows`` rows."""
    return 1 + int(AUTO_ALPHA * (1.0 + product_cost / max(rows * k * (k + 1), 1)))


def _hals(call: Call, F, gram, cross, order, l1: float, l2: float, sweeps: int, inner_tol: float,
          violations) -> None:
    call.module.hals_sweep(F, gram, cross, order, l1, l2, sweeps, inner_tol, violations, call.stream())


class _CD:
    """HALS on the full (or sparse) matrix: the shared Gram of each half-step."""

    def __init__(self, data: NmfData, k: int, penalty: Penalty, update_H: bool, shuffle: bool, rng, sweeps: int):
        self.data, self.k, self.penalty, self.update_H = data, k, penalty, update_H
        self.shuffle, self.rng, self.sweeps = shuffle, rng, sweeps
        xp = data.xp
        n, m = data.shape
        if sweeps == "auto":  # products: X H^T and H H^T for W, X^T W and W^T W for H
            cost = (data.nnz if data.sparse else n * m) * k
            self.sweeps_W, self.sweeps_H = auto_sweeps(cost + m * k * k, n, k), auto_sweeps(cost + n * k * k, m, k)
            self.inner_tol = AUTO_INNER_TOL
        else:
            self.sweeps_W = self.sweeps_H = int(sweeps)
            self.inner_tol = 0.0
        self.identity = xp.arange(k, dtype=np.int64)
        self.row_violations = xp.empty(data.shape[0], dtype=np.float64)
        self.col_violations = xp.empty(data.shape[1], dtype=np.float64)
        self._cross: dict[str, Any] = {}  # X H^T, X^T W and the extrapolation's arrays, rewritten each iteration
        # Extrapolation (sweeps="auto" with H updated): the caller's W holds W_y, the pair
        # (W_y, H) whose loss each iteration reports; W's own sequence lives here.
        self.extrapolate = sweeps == "auto" and update_H
        self.beta, self.beta_ceiling, self.previous_objective = EXTRAPOLATION_START, 1.0, np.inf
        self._W_sequence: Any = None
        self._Ht_y: Any = None

    def _buffer(self, name: str, rows: int, like):
        buffer = self._cross.get(name)
        if buffer is None or buffer.shape != (rows, like.shape[1]) or buffer.dtype != like.dtype:
            buffer = self._cross[name] = self.data.xp.empty((rows, like.shape[1]), dtype=like.dtype)
        return buffer

    def _order(self):
        if not self.shuffle:
            return self.identity
        return self.data.xp.asarray(self.rng.permutation(self.k).astype(np.int64))

    def iterate(self, W, Ht) -> tuple[float, float]:
        """One iteration in place; returns (violation, 1/2 ||X - W H||^2 after it). Extrapolating
        (see EXTRAPOLATION_START), W's half-step advances its own sequence against H_y and the
        caller's W becomes W_y, so the loss is that of (W_y, H): a non-negative pair."""
        data, call, p, xp = self.data, self.data.call, self.penalty, self.data.xp
        n, m = data.shape
        if self.extrapolate and self._W_sequence is None:
            self._W_sequence, self._Ht_y = W.copy(), Ht.copy()
        W_solved, Ht_fixed = (self._W_sequence, self._Ht_y) if self.extrapolate else (W, Ht)
        if self.extrapolate:
            W_previous = self._buffer("W_previous", n, W)
            W_previous[...] = W_solved
        gram_H = Ht_fixed.T @ Ht_fixed
        cross_W = data.times(Ht_fixed, out=self._buffer("W", n, Ht))
        _hals(call, W_solved, gram_H, cross_W, self._order(), p.l1_W, p.l2_W, self.sweeps_W, self.inner_tol,
              self.row_violations)
        violation = self.row_violations.sum()
        if self.extrapolate:
            _extrapolate(xp, W_solved, W_previous, self.beta, out=W)
            Ht_previous = self._buffer("Ht_previous", m, Ht)
            Ht_previous[...] = Ht
        gram_W = W.T @ W
        if self.update_H:
            cross_H = data.transpose_times(W, out=self._buffer("H", m, W))
            _hals(call, Ht, gram_W, cross_H, self._order(), p.l1_H, p.l2_H, self.sweeps_H, self.inner_tol,
                  self.col_violations)
            violation = violation + self.col_violations.sum()
            gram_H = Ht.T @ Ht
            inner = (cross_H * Ht).sum(dtype=np.float64)
        else:
            inner = (cross_W * W).sum(dtype=np.float64)
        quadratic = (gram_W * gram_H).sum(dtype=np.float64)
        loss = (data.squared_norm - 2.0 * float(inner) + float(quadratic)) / 2.0
        if self.extrapolate:
            self._next_Ht_y(W, Ht, Ht_previous, loss)
        return float(violation), loss

    def _next_Ht_y(self, W, Ht, Ht_previous, loss: float) -> None:
        """H_y for the next iteration and the next beta, from the penalised objective HALS
        decreases: a rise restarts from H itself with a smaller beta."""
        p = self.penalty
        objective = loss
        for F, l1, l2 in ((W, p.l1_W, p.l2_W), (Ht, p.l1_H, p.l2_H)):
            if l1:
                objective += l1 * float(F.sum(dtype=np.float64))
            if l2:
                objective += 0.5 * l2 * float((F * F).sum(dtype=np.float64))
        if objective > self.previous_objective:
            self._Ht_y[...] = Ht
            self.beta_ceiling = self.beta
            self.beta /= EXTRAPOLATION_SHRINK
        else:
            _extrapolate(self.data.xp, Ht, Ht_previous, self.beta, out=self._Ht_y)
            self.beta = min(self.beta_ceiling, EXTRAPOLATION_GROW * self.beta)
            self.beta_ceiling = min(1.0, EXTRAPOLATION_CEILING_GROW * self.beta_ceiling)
        self.previous_objective = objective


def _extrapolate(xp, F, previous, beta: float, out) -> None:
    """out = max(F + beta (F - previous), 0), in place in out (not F or previous)."""
    xp.subtract(F, previous, out=out)
    out *= beta
    out += F
    xp.maximum(out, 0.0, out=out)


class _MaskedCD:
    """Coordinate descent on the observed entries only: a column of W (of H^T) at a time from the
    residual R = X - W H at the observed entries, kept up to date after every column. For column
    t of W: grad_i = -sum_j R_ij H_tj + l2 W_it + l1, curvature sum_j H_tj^2 + l2 over row i's
    observed j (both by the sparse-times-dense kernel), W_it <- max(W_it - grad_i / curv_i, 0)."""

    def __init__(self, data: NmfData, k: int, penalty: Penalty, update_H: bool, shuffle: bool, rng, sweeps: Any):
        self.data, self.k, self.penalty, self.update_H = data, k, penalty, update_H
        # Each column's products cost as much as its sweep here: "auto" is one sweep.
        self.shuffle, self.rng, self.sweeps = shuffle, rng, 1 if sweeps == "auto" else int(sweeps)
        self.residual = None

    def _order(self):
        return self.rng.permutation(self.k) if self.shuffle else range(self.k)

    def _half(self, F, G, transpose: bool, l1: float, l2: float) -> float:
        """Columns of F (rows of X, or columns when transpose) against the fixed G."""
        data, xp = self.data, self.data.xp
        R = self.residual
        own, other = (data.cols, data.rows) if transpose else (data.rows, data.cols)
        # Curvatures of every coordinate at once: (sum over the observed j of G_jt^2) + l2.
        curvatures = data.entries_times(xp.ones_like(R), xp.ascontiguousarray(G * G), transpose) + l2
        violation = 0.0
        for sweep in range(self.sweeps):
            for t in self._order():
                g = xp.ascontiguousarray(G[:, t:t + 1])
                f = F[:, t]
                grad = l2 * f + l1 - data.entries_times(R, g, transpose)[:, 0]
                curvature = curvatures[:, t]
                if sweep == 0:
                    violation += float(xp.abs(xp.where(f == 0, xp.minimum(grad, 0), grad)).sum())
                safe = xp.where(curvature != 0, curvature, 1)
                new = xp.where(curvature != 0, xp.maximum(f - grad / safe, 0), f).astype(F.dtype, copy=False)
                delta = new - f
                F[:, t] = new
                R -= delta[own] * g[other, 0]
        return violation

    def iterate(self, W, Ht) -> tuple[float, float]:
        data, p = self.data, self.penalty
        if self.residual is None:
            self.residual = data.vals - data.sampled(W, Ht)
        violation = self._half(W, Ht, False, p.l1_W, p.l2_W)
        if self.update_H:
            violation += self._half(Ht, W, True, p.l1_H, p.l2_H)
        R = self.residual.astype(np.float64)
        return violation, float(data.xp.dot(R, R)) / 2.0


class _MU:
    """Multiplicative updates for the beta-divergence (scikit-learn's rules), on the full, sparse
    or observed-only matrix."""

    def __init__(self, data: NmfData, k: int, penalty: Penalty, update_H: bool, beta: float, sweeps: Any = 1):
        self.data, self.k, self.penalty, self.update_H, self.beta = data, k, penalty, update_H, beta
        self.gamma = _mu_gamma(beta)
        n, m = data.shape
        if sweeps == "auto":
            cost = (data.nnz if data.sparse else n * m) * k
            self.extra_W = auto_sweeps(cost + m * k * k, n, k) - 1
            self.extra_H = auto_sweeps(cost + n * k * k, m, k) - 1
            self.inner_tol = AUTO_INNER_TOL
        else:
            self.extra_W = self.extra_H = int(sweeps) - 1
            self.inner_tol = 0.0
        self._fixed = None  # (cross, gram) of a fixed H (transform)

    def _ratio(self, W, Ht, for_H: bool):
        """(numerator, denominator) of the W update (or of H^T's with for_H), before penalties."""
        data, xp, beta = self.data, self.data.xp, self.beta
        F, G = (Ht, W) if for_H else (W, Ht)  # update F against the fixed G
        if beta == 2 and not data.masked:
            if for_H:
                numerator = data.transpose_times(W)
                denominator = Ht @ (W.T @ W)
            else:
                if self._fixed is None or self.update_H:
                    cross, gram = data.times(Ht), Ht.T @ Ht
                    if not self.update_H:
                        self._fixed = (cross, gram)
                else:
                    cross, gram = self._fixed
                numerator = cross  # never written: the updates divide into a new array
                denominator = W @ gram
            return numerator, denominator
        if data.sparse:  # W H only at the stored (observed) entries
            WH = data.sampled(W, Ht)
            X_data = data.vals
            if beta < 2:
                WH = xp.maximum(WH, EPSILON)
            numerator = data.entries_times(_beta_scaled(X_data, WH, beta).astype(F.dtype, copy=False), G,
                                           transpose=for_H)
            if data.masked:  # the denominator also runs over the observed entries only
                values = xp.ones_like(WH) if beta == 1 else WH if beta == 2 else WH ** (beta - 1)
                denominator = data.entries_times(values.astype(F.dtype, copy=False), G, transpose=for_H)
            elif beta == 1:
                denominator = self._sums(G, for_H, F.shape)
            else:
                denominator = self._dense_power(W, Ht, beta - 1, for_H)
            return numerator, denominator
        WH = W @ Ht.T
        X = data.dense
        scaled = _beta_scaled(X, xp.maximum(WH, EPSILON) if beta < 2 else WH, beta)
        numerator = scaled.T @ W if for_H else scaled @ Ht
        if beta == 1:
            denominator = self._sums(G, for_H, F.shape)
        else:
            powered = (xp.maximum(WH, EPSILON) if beta < 1 else WH) ** (beta - 1)
            denominator = powered.T @ W if for_H else powered @ Ht
        return numerator, denominator

    def _sums(self, G, for_H: bool, shape):
        """The KL denominator: column sums of the fixed factor, broadcast (scikit-learn sets a
        zero sum of W's columns to 1 for the H update)."""
        xp = self.data.xp
        sums = G.sum(axis=0)
        if for_H:
            sums = xp.where(sums == 0, 1, sums)
        return xp.broadcast_to(sums[None, :], shape)

    def _dense_power(self, W, Ht, power: float, for_H: bool):
        """(W H)^power @ H^T (or its transpose side), row blocks of the dense W H (general beta)."""
        xp = self.data.xp
        out = xp.zeros(Ht.shape if for_H else W.shape, dtype=W.dtype)
        step = max(1, 2 ** 22 // max(1, Ht.shape[0]))
        for start in range(0, W.shape[0], step):
            block = W[start:start + step] @ Ht.T
            if power < 0:
                block = xp.maximum(block, EPSILON)
            block = block ** power
            if for_H:
                out += block.T @ W[start:start + step]
            else:
                out[start:start + step] = block @ Ht
        return out

    def _apply(self, F, numerator, denominator, l1: float, l2: float):
        xp = self.data.xp
        denominator = denominator + l1 if l1 > 0 else denominator
        if l2 > 0:
            denominator = denominator + l2 * F
        denominator = xp.where(denominator == 0, EPSILON, denominator)
        delta = numerator / denominator
        if self.gamma != 1:
            delta = delta ** self.gamma
        F *= delta.astype(F.dtype, copy=False)

    def _repeat(self, F, G, numerator, gram_of_G, l1: float, l2: float, count: int) -> None:
        """Frobenius: `count` more updates of F against the same X G and G^T G (accelerated MU,
        Gillis & Glineur 2012: the products with X are the expensive part); with "auto" they
        stop once an update changes F by at most AUTO_INNER_TOL of the first's change."""
        xp = self.data.xp
        first = None
        for _ in range(count):
            before = F.copy()
            self._apply(F, numerator, F @ gram_of_G, l1, l2)
            change = float(xp.linalg.norm(F - before))
            if first is None:
                first = change
            elif self.inner_tol > 0 and change <= self.inner_tol * first:
                break

    def iterate(self, W, Ht) -> None:
        p, beta = self.penalty, self.beta
        numerator, denominator = self._ratio(W, Ht, for_H=False)
        self._apply(W, numerator, denominator, p.l1_W, p.l2_W)
        repeat = beta == 2 and not self.data.masked and self.extra_W > 0
        if repeat:
            self._repeat(W, Ht, numerator, Ht.T @ Ht, p.l1_W, p.l2_W, self.extra_W)
        if beta < 1:
            W[W < TINY64] = 0.0
        if self.update_H:
            numerator, denominator = self._ratio(W, Ht, for_H=True)
            self._apply(Ht, numerator, denominator, p.l1_H, p.l2_H)
            if repeat and self.extra_H > 0:
                self._repeat(Ht, W, numerator, W.T @ W, p.l1_H, p.l2_H, self.extra_H)
            if beta <= 1:
                Ht[Ht < TINY64] = 0.0


def fit(data: NmfData, W, Ht, *, solver: str, beta: float, tol: float, max_iter: int, penalty: Penalty,
        update_H: bool = True, shuffle: bool = False, random_state: Any = None, sweeps: Any = 1,
        verbose: bool = False, callback: Optional[Callable] = None, relu_threshold: float = 0.0,
        relu_step: float = 0.5, description: str = "NMF") -> dict[str, Any]:
    """Run ``solver`` from (W (n, k), H^T (m, k)) (modified in place); returns
    {"W", "Ht", "n_iter", "loss": history (NaN where not computed), "stop_reason"}."""
    k = W.shape[1]
    started = time.perf_counter()
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=bool(verbose),
                            description=description)
    state = LoopState(arrays={"W": W, "Ht": Ht})
    memory: dict[str, Any] = {}
    if solver == "cd":
        rng = rng_of(random_state, description) if shuffle else None
        method = (_MaskedCD if data.masked else _CD)(data, k, penalty, update_H, shuffle, rng, sweeps)

        def step(state: LoopState):
            violation, loss = method.iterate(state.arrays["W"], state.arrays["Ht"])
            if "initial" not in memory:
                memory["initial"] = violation
            memory["ratio"] = violation / memory["initial"] if memory["initial"] else 0.0
            return loss, memory["ratio"]

        def converged(state: LoopState):
            if memory["initial"] == 0 or memory["ratio"] <= tol:
                return "converged"
            return None
    elif solver == "mu":
        method = _MU(data, k, penalty, update_H, beta, sweeps)
        memory["initial"] = memory["previous"] = beta_divergence(data, W, Ht, beta, square_root=True)

        def step(state: LoopState):
            method.iterate(state.arrays["W"], state.arrays["Ht"])
            iteration = state.iteration + 1
            memory["stop"] = False
            if tol > 0 and iteration % 10 == 0:
                error = beta_divergence(data, state.arrays["W"], state.arrays["Ht"], beta, square_root=True)
                change = (memory["previous"] - error) / memory["initial"] if memory["initial"] else 0.0
                memory["stop"] = change < tol
                memory["previous"] = error
                return error * error / 2.0, change
            return float("nan"), float("nan")

        def converged(state: LoopState):
            return "converged" if memory["stop"] else None
    elif solver == "alternating_relu":
        method = _AlternatingRelu(data, k, update_H, relu_threshold, relu_step)

        def step(state: LoopState):
            change = method.iterate(state.arrays["W"], state.arrays["Ht"])
            memory["change"] = change
            return float("nan"), change

        def converged(state: LoopState):
            return "converged" if memory["change"] <= tol else None
    else:  # pragma: no cover - checked by the estimator
        raise ValueError(f"unknown solver {solver!r}")
    # Host BLAS on one thread: its threads and the kernels' OpenMP team otherwise spin-wait for
    # each other (on the shared 2-core machine a 2000 x 500, k = 30 cd iteration took 32 ms with
    # OpenBLAS's threads and 14 ms without; digits' 22 ms and 1.9 ms).
    with host_blas(data):
        state, reason, _ = run_loop(settings, state, step, "", converged)
    if solver == "alternating_relu":
        method.finish(state.arrays["W"], state.arrays["Ht"])
    return {"W": state.arrays["W"], "Ht": state.arrays["Ht"], "n_iter": state.iteration,
            "loss": np.asarray(state.loss, dtype=np.float64), "stop_reason": reason,
            "seconds": time.perf_counter() - started}


# ---------------------------------------------------------------------- alternating updates with ReLU decoding
class _AlternatingRelu:
    """Li, Liang & Risteski (NeurIPS 2016, arXiv 1611.03819), "Recovery guarantee of non-negative
    matrix factorization via alternating updates": samples y (rows of X) = A* x* + noise with
    x* >= 0. Each round decodes every sample's weights by a thresholded ReLU of the pseudo-inverse
    of the current features, x = max(A^+ y - alpha, 0), then moves the features towards the
    correlation of residuals and decodings over pairs of samples,
        A <- (1 - eta) A + eta E[(y - y')(x - x')^T] (E[(x - x')(x - x')^T])^{-1},
    the pairs (y, y') cancelling the decoder's mean bias. The paper's scalar r is replaced by the
    inverse of the decodings' pair covariance (equal to r when that covariance is a multiple of
    the identity, as in the paper's analysis), so that the planted A* is a fixed point for any
    weight distribution. That update leaves each feature's scale free (W H = (W D^-1)(D H) for
    any positive diagonal D, and the decodings follow A's scale), and with a fixed threshold the
    scale drifts (a larger A decodes smaller weights, which the threshold cuts more); so after
    each round every column of A is rescaled to its norm at the start: features are recovered up
    to the start's scale, as NMF identifies them. Pairs: the whole sample against a fixed
    random cyclic shift of it (one pair per sample), the expectation an average over n pairs.
    Constants: threshold alpha = ``relu_threshold`` (default 0, in the units of the weights at
    the start's scale), step eta = ``relu_step`` (default 0.5); the paper's analysis takes
    alpha of the order of the noise level and a small constant eta.

    Here A = H^T (m x k): components_ are the features, W the decoded weights.
    """

    def __init__(self, data: NmfData, k: int, update_H: bool, threshold: float, step: float):
        if data.sparse:
            raise ValueError("solver='alternating_relu' takes dense X (without missing entries)")
        self.data, self.k, self.update_H = data, k, update_H
        self.threshold, self.step = threshold, step
        n = data.shape[0]
        rng = np.random.RandomState(n)
        shift = int(rng.randint(1, n)) if n > 1 else 0
        self.partner = data.xp.asarray((np.arange(n) + shift) % n)
        self.norms = None  # the start's column norms, which every iterate keeps

    def decode(self, Ht):
        xp = self.data.xp
        pinv = xp.linalg.pinv(Ht)  # (k, m): A^+
        return xp.maximum(self.data.dense @ pinv.T - self.threshold, 0).astype(Ht.dtype, copy=False)

    def iterate(self, W, Ht) -> float:
        xp = self.data.xp
        X = self.data.dense
        W[...] = self.decode(Ht)
        if not self.update_H:
            return 0.0
        dy = X - X[self.partner]
        dx = W - W[self.partner]
        correlation = dy.T @ dx  # (m, k)
        covariance = dx.T @ dx  # (k, k)
        target = xp.linalg.lstsq(covariance.T, correlation.T, rcond=None)[0].T
        new = (1 - self.step) * Ht + self.step * target
        if self.norms is None:
            self.norms = xp.linalg.norm(Ht, axis=0)
        new *= self.norms / xp.maximum(xp.linalg.norm(new, axis=0), 1e-300)
        change = float(xp.linalg.norm(new - Ht) / max(float(xp.linalg.norm(Ht)), 1e-300))
        Ht[...] = new
        return change

    def finish(self, W, Ht) -> None:
        W[...] = self.decode(Ht)
