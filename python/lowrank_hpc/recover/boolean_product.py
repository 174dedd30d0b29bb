"""Boolean algebra on factors: rounding relaxed factors, the Boolean product (OR of ANDs) and how
well it reconstructs a 0/1 matrix (recall, precision, F1), without densifying a sparse matrix."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import is_device_array
from .._backend import cupy_module
from .binary_matrix import BinaryMatrix

# Rows of the Boolean product formed at a time when counting its ones (bounds the memory).
_ROWS_PER_BLOCK = 2048


def binarize(F: Any) -> Any:
    """The Boolean factor of a relaxed one: clamp to [0, 1] and threshold at 0.5 (F >= 0.5),
    a bool array of F's shape on F's side (numpy or CuPy)."""
    return F >= 0.5


def _boolean_factor(xp: Any, name: str, F: Any) -> Any:
    """F as a bool or 0/1 array of xp; a relaxed factor (entries other than 0 and 1) is a ValueError,
    since the product's threshold would OR fractions (0.3 + 0.3 > 0.5)."""
    F = xp.asarray(F)
    if F.dtype.kind not in "biuf":
        raise TypeError(f"boolean_product: {name} must be a bool or 0/1 numeric array, got dtype {F.dtype}")
    if F.dtype.kind != "b" and bool(((F != 0) & (F != 1)).any()):
        raise ValueError(f"boolean_product: {name} must hold only 0 and 1 (or bool); round relaxed factors "
                         f"first (e.g. {name} >= 0.5)")
    return F


def boolean_product(W: Any, H: Any) -> Any:
    """(W o H)_ij = OR_c (W_ic AND H_cj): W (n, k), H (k, m) Boolean (or 0/1) arrays, numpy (or
    array-likes) or CuPy, batched (B, n, k) x (B, k, m) too. Returns a bool array (n, m) (or
    (B, n, m)). Counted by one float32 GEMM (exact for k < 2**24).

    Raises ValueError for entries other than 0 and 1 (relaxed factors: round them first) and for
    shapes that do not chain; TypeError for non-numeric arrays."""
    xp = cupy_module() if is_device_array(W) or is_device_array(H) else np
    W, H = _boolean_factor(xp, "W", W), _boolean_factor(xp, "H", H)
    if W.ndim not in (2, 3) or H.ndim != W.ndim or W.shape[-1] != H.shape[-2] or W.shape[:-2] != H.shape[:-2]:
        raise ValueError(f"boolean_product: W of shape {tuple(W.shape)} and H of shape {tuple(H.shape)} do not "
                         "chain; expected (n, k) and (k, m), or (B, n, k) and (B, k, m)")
    return xp.matmul(W.astype(np.float32), H.astype(np.float32)) > 0.5


def _product_ones(xp: Any, W: Any, H: Any) -> int:
    """The number of ones of W o H, formed in blocks of rows."""
    Hf = H.astype(np.float32)
    total = 0
    for start in range(0, W.shape[0], _ROWS_PER_BLOCK):
        total += int((W[start:start + _ROWS_PER_BLOCK].astype(np.float32) @ Hf > 0.5).sum())
    return total


def reconstruction_scores(matrix: BinaryMatrix, W: Any, H: Any) -> dict[str, float]:
    """Recall, precision and F1 of W o H against the ones of a (single) 0/1 matrix, plus the
    counts behind them (true positives, predicted ones, actual ones, Boolean error = the number
    of entries where W o H and A differ). A sparse A is read through its ones only."""
    xp = matrix.call.xp
    W, H = xp.asarray(W, dtype=bool), xp.asarray(H, dtype=bool)
    if matrix.sparse:
        covered = (W[matrix.rows].astype(np.float32) * H[:, matrix.cols].T.astype(np.float32)).sum(axis=1) > 0.5
        true_positives = int(covered.sum())
    else:
        true_positives = int((boolean_product(W, H) & (matrix.dense[0] != 0)).sum())
    predicted = _product_ones(xp, W, H)
    actual = int(matrix.ones[0])
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"recall": recall, "precision": precision, "f1": f1, "true_positives": true_positives,
            "predicted_ones": predicted, "actual_ones": actual,
            "boolean_error": predicted + actual - 2 * true_positives}
