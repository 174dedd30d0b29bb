"""Numbers for reports: RMSE that is None when there is nothing to measure, and JSON that
never holds NaN or inf (``json.dumps(..., allow_nan=False)`` accepts what ``json_safe`` returns)."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np


def rmse(predicted: np.ndarray, actual: np.ndarray) -> Optional[float]:
    """Root mean squared error, or None for no entries (never NaN)."""
    if np.asarray(actual).size == 0:
        return None
    value = float(np.sqrt(np.mean((np.asarray(predicted, dtype=np.float64) - actual) ** 2)))
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python, and NaN/inf replaced by None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


# Scores formed at a time by mean_percentile_rank (128 MiB of float64: whole rows of the full
# matrix), and held-out pairs' rows compared against their scores at a time (a quarter of that).
_RANK_NUMBERS = 1 << 24


def mean_percentile_rank(U: np.ndarray, V: np.ndarray, train_rows: np.ndarray, train_cols: np.ndarray,
                         test_rows: np.ndarray, test_cols: np.ndarray) -> Optional[float]:
    """Hu, Koren and Volinsky's expected percentile ranking of held-out pairs: for each (u, i),
    the share of row u's columns not trained on (i excluded) that score above i, a column that
    ties with i counting half, averaged; 0 is every held-out column ranked first, 0.5 random (or
    all-equal) scores. None for no held-out pair. U (n1, r), V (n2, r) host factors; the pairs
    are index arrays. (Ties counted as below once made a row with no training entry, whose zero
    factors score every column 0, a perfect 0, and a diverged fit's zero factors too.)"""
    if test_rows.size == 0:
        return None
    n2 = V.shape[0]
    order = np.argsort(train_rows, kind="stable")
    train_rows, train_cols = train_rows[order], train_cols[order]
    users = np.unique(test_rows)
    per_chunk, per_batch = max(1, _RANK_NUMBERS // n2), max(1, _RANK_NUMBERS // (4 * n2))
    total = 0.0
    for start in range(0, users.shape[0], per_chunk):
        chunk = users[start:start + per_chunk]
        scores = U[chunk].astype(np.float64) @ V.T.astype(np.float64)  # (chunk, n2)
        slot = np.searchsorted(chunk, test_rows)  # row of each held-out pair in the chunk
        mine = (slot < chunk.shape[0]) & (chunk[np.minimum(slot, chunk.shape[0] - 1)] == test_rows)
        lo, hi = np.searchsorted(train_rows, chunk[0]), np.searchsorted(train_rows, chunk[-1], side="right")
        trained = np.searchsorted(chunk, train_rows[lo:hi])
        member = chunk[trained] == train_rows[lo:hi]  # rows between the chunk's held-out rows are not in it
        trained = trained[member]
        scores[trained, train_cols[lo:hi][member]] = -np.inf  # trained columns rank below every candidate
        candidates = n2 - np.bincount(trained, minlength=chunk.shape[0])  # held-out column included
        pair_rows, pair_cols = slot[mine], test_cols[mine]
        for first in range(0, pair_rows.shape[0], per_batch):
            rows_here, cols_here = pair_rows[first:first + per_batch], pair_cols[first:first + per_batch]
            own = scores[rows_here, cols_here][:, None]
            above = np.sum(scores[rows_here] > own, axis=1)
            tied = np.sum(scores[rows_here] == own, axis=1) - 1  # the held-out column itself excluded
            percentile = (above + 0.5 * tied) / np.maximum(candidates[rows_here] - 1, 1)
            # A NaN score (a diverged fit's factors) ranks nothing: the random 0.5, never a perfect 0.
            total += float(np.sum(np.where(np.isnan(own[:, 0]), 0.5, percentile)))
    return total / test_rows.shape[0]
