"""Offsets of a completion model: x_ij ~ mu + a_i + b_j + (U V^T)_ij.

Real matrices are not centered: ratings have a mean near 3.5, pixels near 0.5, and some rows
(users, image rows) sit above others. The low-rank part then spends its first components on the
offsets, and a ridge penalty shrinks those towards 0 rather than towards the mean. The offsets
are fitted by ridge regressions of the residual on the observed entries, alternated between rows
and columns (a Gauss-Seidel sweep of the normal equations, as the softImpute R package's biScale
centers). soft-impute updates them after each of its sweeps, the estimator alternates them with
the other solvers' whole solves: either way offsets and factors minimise one objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._backend import array_module, cpu_module

CENTERS = ("none", "global", "both")
START_OFFSET_SWEEPS = 10  # Gauss-Seidel sweeps of the offsets alone, before any factor exists


@dataclass
class Offsets:
    """mu (a Python float), a (n1,) row offsets and b (n2,) column offsets in the values' dtype,
    on the values' side (numpy or CuPy); a and b are zeros unless center="both"."""

    intercept: float
    row: Any
    col: Any

    def at(self, rows: Any, cols: Any) -> Any:
        """(nnz,) mu + a[rows] + b[cols] in numpy's arithmetic (mu rounded to the offsets' dtype);
        rows in [0, n1) and cols in [0, n2), as the solvers pass them (the CPU kernel refuses a
        negative index with IndexError where numpy's gather would wrap it)."""
        if (type(self.intercept) is float and _cpu_kernels_take(_INDEX_TYPES, rows, cols)
                and _cpu_kernels_take(_FLOAT_TYPES, self.row, self.col)
                and not abs(self.intercept) > np.finfo(self.row.dtype).max):  # numpy warns of that cast
            out = np.empty(rows.shape[0], dtype=self.row.dtype)  # one pass, not two gathers and two adds
            _raise_if_bad(cpu_module().offsets_at(rows, cols, self.intercept, self.row, self.col, out), "Offsets.at")
            return out
        return self.intercept + self.row[rows] + self.col[cols]


_INDEX_TYPES = (np.dtype(np.int32), np.dtype(np.int64))
_FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _cpu_kernels_take(types: tuple, *arrays: Any) -> bool:
    """Whether the CPU module's offset kernels take these arrays as they are: plain 1-D
    C-contiguous numpy arrays of one dtype among ``types``, none of them empty."""
    first = arrays[0]
    return all(type(x) is np.ndarray and x.ndim == 1 and x.flags.c_contiguous and x.dtype == first.dtype
               and x.dtype in types and x.shape[0] > 0 for x in arrays)


def _raise_if_bad(first_bad: int, where: str) -> None:
    """IndexError for the first entry a CPU offset kernel found out of range (-1: none)."""
    if first_bad >= 0:  # the solvers pass range-checked indices: a bad one is a defect, never a silent sum
        raise IndexError(f"{where}: entry {first_bad} indexes outside the offsets")


def zero_offsets(xp: Any, shape: tuple[int, int], dtype: Any) -> Offsets:
    return Offsets(0.0, xp.zeros(shape[0], dtype), xp.zeros(shape[1], dtype))


class OffsetFit:
    """The ridge regression of the offsets on one set of observed entries: rows, cols (nnz,)
    integer arrays in range on one side (numpy or CuPy), counted once, then :meth:`sweep` as
    often as needed."""

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int], center: str, bias_reg: float):
        xp = array_module(rows)
        self.rows, self.cols, self.shape, self.center, self.xp = rows, cols, shape, center, xp
        # The CPU's sums (cpu::sums_by_index): bincount's bits in one pass, the row-sorted rows of
        # soft-impute's entries on every thread.
        self.uses_cpu_kernels = center == "both" and _cpu_kernels_take(_INDEX_TYPES, rows, cols)
        self.rows_sorted = self.uses_cpu_kernels and bool(np.all(rows[1:] >= rows[:-1]))
        if center == "both":
            # float64, as bincount's weighted sums are: mu's sums are taken in it whatever the dtype.
            self.row_count = xp.bincount(rows, minlength=shape[0]).astype(np.float64)
            self.col_count = xp.bincount(cols, minlength=shape[1]).astype(np.float64)
            # counts + bias_reg >= 1 where a row has an observation; elsewhere its sum is 0, as is its offset.
            self.row_scale = xp.maximum(self.row_count + bias_reg, 1)
            self.col_scale = xp.maximum(self.col_count + bias_reg, 1)

    def sweep(self, residual: Any, start: Offsets, sweeps: int = 1) -> Offsets:
        """Offsets that minimise sum_k (residual_k - mu - a_rows[k] - b_cols[k])^2
        + bias_reg * (||a||^2 + ||b||^2) (mu unpenalized), by ``sweeps`` Gauss-Seidel sweeps
        from ``start``: mu, then each a_i, then each b_j, exactly given the others.

        ``residual`` (nnz,) is vals minus the low-rank part at the observed entries. The row and
        column sums of the residual are taken once; a sweep then costs two gathered sums over the
        entries (mu comes from the sums: sum_k a_rows[k] = counts . a).
        With center="global", a and b stay zero and mu is the mean residual; "none" returns zeros.
        """
        xp, rows, cols, (n1, n2), dtype = self.xp, self.rows, self.cols, self.shape, residual.dtype
        if self.center == "none":
            return zero_offsets(xp, self.shape, dtype)
        if self.center == "global":
            return Offsets(float(residual.mean()), xp.zeros(n1, dtype), xp.zeros(n2, dtype))
        row_sums = self._sums(rows, residual, n1, sorted_index=self.rows_sorted)
        col_sums = self._sums(cols, residual, n2)
        total, nnz = float(row_sums.sum()), residual.shape[0]
        a, b = start.row, start.col
        for _ in range(sweeps):
            mu = (total - float(self.row_count @ a) - float(self.col_count @ b)) / nnz
            a = ((row_sums - mu * self.row_count - self._sums(rows, b, n1, gather=cols, sorted_index=self.rows_sorted))
                 / self.row_scale).astype(dtype)
            b = ((col_sums - mu * self.col_count - self._sums(cols, a, n2, gather=rows)) / self.col_scale).astype(dtype)
        return Offsets(mu, a, b)

    def _sums(self, index: Any, values: Any, n_out: int, gather: Any = None, sorted_index: bool = False) -> Any:
        """(n_out,) float64 bincount(index, weights=values[gather] or values, minlength=n_out) for
        index, gather (nnz,) (this fit's rows or cols) and values of the residual's dtype ((nnz,),
        or the offsets gathered): the same bits from the CPU's one pass where it takes them."""
        if self.uses_cpu_kernels and _cpu_kernels_take(_FLOAT_TYPES, values):
            out = np.empty(n_out, dtype=np.float64)
            _raise_if_bad(cpu_module().sums_by_index(index, values, gather, sorted_index, out), "OffsetFit")
            return out
        return self.xp.bincount(index, weights=values if gather is None else values[gather], minlength=n_out)


def fit_offsets(rows: Any, cols: Any, residual: Any, shape: tuple[int, int], center: str, bias_reg: float,
                start: Offsets, *, sweeps: int = 1) -> Offsets:
    """``sweeps`` Gauss-Seidel sweeps of :class:`OffsetFit` from ``start`` (one call)."""
    return OffsetFit(rows, cols, shape, center, bias_reg).sweep(residual, start, sweeps)


def initial_offsets(rows: Any, cols: Any, vals: Any, shape: tuple[int, int], center: str, bias_reg: float) -> Offsets:
    """The offsets fitted to vals alone (no low-rank part yet): START_OFFSET_SWEEPS sweeps from zero."""
    return fit_offsets(rows, cols, vals, shape, center, bias_reg, zero_offsets(array_module(vals), shape, vals.dtype),
                       sweeps=START_OFFSET_SWEEPS)
