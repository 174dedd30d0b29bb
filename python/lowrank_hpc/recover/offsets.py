"""Offsets of a completion model: x_ij ~ mu + a_i + b_j + (U V^T)_ij.

Real matrices are not centered: ratings have a mean near 3.5, pixels near 0.5, and some rows
(users, image rows) sit above others. The low-rank part then spends its first components on the
offsets, and a ridge penalty shrinks those towards 0 rather than towards the mean. The offsets
are fitted by ridge regressions of the residual on the observed entries, alternated between rows
and columns (a Gauss-Seidel sweep of the normal equations, as the softImpute R package's biScale
centers); the estimator alternates them with the low-rank fit, so both minimise one objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._backend import array_module

CENTERS = ("none", "global", "both")


@dataclass
class Offsets:
    """mu (a Python float), a (n1,) row offsets and b (n2,) column offsets in the values' dtype,
    on the values' side (numpy or CuPy); a and b are zeros unless center="both"."""

    intercept: float
    row: Any
    col: Any

    def at(self, rows: Any, cols: Any) -> Any:
        """(nnz,) mu + a[rows] + b[cols]."""
        return self.intercept + self.row[rows] + self.col[cols]


def zero_offsets(xp: Any, shape: tuple[int, int], dtype: Any) -> Offsets:
    return Offsets(0.0, xp.zeros(shape[0], dtype), xp.zeros(shape[1], dtype))


def fit_offsets(rows: Any, cols: Any, residual: Any, shape: tuple[int, int], center: str, bias_reg: float,
                start: Offsets, *, sweeps: int = 1) -> Offsets:
    """Offsets that minimise sum_k (residual_k - mu - a_rows[k] - b_cols[k])^2
    + bias_reg * (||a||^2 + ||b||^2) (mu unpenalized), by ``sweeps`` Gauss-Seidel sweeps from
    ``start``: mu, then each a_i, then each b_j, exactly given the others.

    ``residual`` is vals minus the low-rank part at the observed entries; rows, cols (nnz,)
    int64 and residual on one side (numpy or CuPy). Each sweep costs O(nnz). With
    center="global", a and b stay zero and mu is the mean residual; "none" returns zeros.
    """
    xp = array_module(residual)
    dtype = residual.dtype
    if center == "none":
        return zero_offsets(xp, shape, dtype)
    if center == "global":
        return Offsets(float(residual.mean()), xp.zeros(shape[0], dtype), xp.zeros(shape[1], dtype))
    row_counts = xp.bincount(rows, minlength=shape[0]).astype(dtype)
    col_counts = xp.bincount(cols, minlength=shape[1]).astype(dtype)
    # counts + bias_reg >= 1 wherever a row has an observation; elsewhere the sum is 0 and so is the offset.
    row_scale = xp.maximum(row_counts + bias_reg, 1)
    col_scale = xp.maximum(col_counts + bias_reg, 1)
    a, b, mu = start.row, start.col, start.intercept
    for _ in range(sweeps):
        mu = float((residual - a[rows] - b[cols]).mean())
        a = (xp.bincount(rows, weights=residual - mu - b[cols], minlength=shape[0]) / row_scale).astype(dtype)
        b = (xp.bincount(cols, weights=residual - mu - a[rows], minlength=shape[1]) / col_scale).astype(dtype)
    return Offsets(mu, a, b)
