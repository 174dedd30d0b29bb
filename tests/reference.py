"""Independent dense references the kernels are tested against (numpy and scipy only)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def lowrank_product(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    return np.matmul(U.astype(np.float64), np.swapaxes(V.astype(np.float64), -1, -2))


def sampled_product(U, V, rows, cols, offsets=None) -> np.ndarray:
    """Gather-einsum in float64, problem by problem."""
    U, V = U.astype(np.float64), V.astype(np.float64)
    if U.ndim == 2:
        return np.einsum("kr,kr->k", U[rows], V[cols])
    out = np.empty(rows.shape[0])
    for b in range(U.shape[0]):
        s = slice(offsets[b], offsets[b + 1])
        out[s] = np.einsum("kr,kr->k", U[b][rows[s]], V[b][cols[s]])
    return out


def sparse_times_dense(rows, cols, vals, B, n_rows, transpose=False, offsets=None) -> np.ndarray:
    """scipy.sparse COO (duplicates summed) times dense, in float64."""
    B = B.astype(np.float64)
    if B.ndim == 3:
        return np.stack([sparse_times_dense(rows[offsets[b]:offsets[b + 1]], cols[offsets[b]:offsets[b + 1]],
                                            vals[offsets[b]:offsets[b + 1]], B[b], n_rows, transpose)
                         for b in range(B.shape[0])])
    shape = (B.shape[0], n_rows) if transpose else (n_rows, B.shape[0])
    S = sp.coo_matrix((vals.astype(np.float64), (rows, cols)), shape=shape).tocsr()
    return (S.T @ B) if transpose else (S @ B)


KERNEL_FUNCTIONS = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "exponential": np.exp,
    "tanh": np.tanh,
    "piecewise_linear": lambda x: np.clip(x, -1.0, 1.0),
}


def kernel_product(U, V, kernel: str) -> np.ndarray:
    """f(U @ V^T) in float64."""
    return KERNEL_FUNCTIONS[kernel](lowrank_product(U, V))


def top_k_rows(K: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row top-k of a dense (..., m, n) K by |K|, ties to the smaller column (stable sort)."""
    indices = np.argsort(-np.abs(K), axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(K, indices, axis=-1), indices


def top_k_global(K: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Global top-k of a dense (..., m, n) K by |K|, ties to the smaller flat index."""
    n = K.shape[-1]
    flat_K = K.reshape(*K.shape[:-2], -1)
    flat = np.argsort(-np.abs(flat_K), axis=-1, kind="stable")[..., :k]
    return np.take_along_axis(flat_K, flat, axis=-1), flat // n, flat % n


def als_half_steps(rows, cols, vals, shape, V0, reg, count_scaling):
    """One ALS iteration by dense per-row ridge least squares in float64: U given V0, then V given U.

    Row i solves (A^T A + lam_i I) u_i = A^T v for the rows A of the fixed factor at its observed
    entries, lam_i = reg (times its number of observations when ``count_scaling``); a row with no
    observation is zero."""
    vals = np.asarray(vals, dtype=np.float64)

    def solve_side(keys, others, n_key, F):
        out = np.zeros((n_key, F.shape[1]))
        for i in range(n_key):
            picked = keys == i
            if not picked.any():
                continue
            A = F[others[picked]]
            lam = reg * picked.sum() if count_scaling else reg
            out[i] = np.linalg.solve(A.T @ A + lam * np.eye(F.shape[1]), A.T @ vals[picked])
        return out

    U = solve_side(rows, cols, shape[0], np.asarray(V0, dtype=np.float64))
    return U, solve_side(cols, rows, shape[1], U)


def completion_objective(U, V, rows, cols, vals, reg=0.0, count_scaling=False) -> float:
    """Half the ALS objective in float64: 0.5 * (sum of squared residuals at the observed entries
    + reg * sum_i w_i ||u_i||^2 + reg * sum_j w_j ||v_j||^2), w = 1 or the observation counts."""
    U, V = U.astype(np.float64), V.astype(np.float64)
    residual = np.asarray(vals, dtype=np.float64) - (U @ V.T)[rows, cols]
    w_u = np.bincount(rows, minlength=U.shape[0]) if count_scaling else np.ones(U.shape[0])
    w_v = np.bincount(cols, minlength=V.shape[0]) if count_scaling else np.ones(V.shape[0])
    penalty = w_u @ (U ** 2).sum(axis=1) + w_v @ (V ** 2).sum(axis=1)
    return 0.5 * float(residual @ residual + reg * penalty)


def relative_change(U0, V0, U1, V1) -> float:
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F from the dense m x n products, in float64."""
    before = lowrank_product(U0, V0)
    return float(np.linalg.norm(lowrank_product(U1, V1) - before) / np.linalg.norm(before))


def ridge_fold_in(V, X, reg, count_scaling=False) -> np.ndarray:
    """Row factors of new rows X (NaN for missing) against V: per row the ridge least squares
    argmin ||x_obs - V_obs u||^2 + lam ||u||^2, lam = reg (times the row's count of observed
    entries when ``count_scaling``), by numpy's lstsq on the stacked system [V_obs; sqrt(lam) I]."""
    V = np.asarray(V, dtype=np.float64)
    out = np.zeros((X.shape[0], V.shape[1]))
    for i, row in enumerate(np.asarray(X, dtype=np.float64)):
        seen = ~np.isnan(row)
        if not seen.any():
            continue
        lam = reg * seen.sum() if count_scaling else reg
        A = np.vstack([V[seen], np.sqrt(lam) * np.eye(V.shape[1])])
        b = np.concatenate([row[seen], np.zeros(V.shape[1])])
        out[i] = np.linalg.lstsq(A, b, rcond=None)[0]
    return out


def truncated_svd(A: np.ndarray, k: int) -> np.ndarray:
    """The best rank-k approximation of A (Eckart-Young), by numpy's SVD in float64."""
    left, sigma, right_t = np.linalg.svd(np.asarray(A, dtype=np.float64), full_matrices=False)
    return (left[:, :k] * sigma[:k]) @ right_t[:k]
