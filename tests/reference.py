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
