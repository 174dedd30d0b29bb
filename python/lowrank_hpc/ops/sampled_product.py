"""Products sampled at observed entries (SDDMM): vals[k] = <U[rows[k]], V[cols[k]]>."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, offsets_array, resolve
from ._factors import checked_result, factor_pair, raise_index_error

# From factor rows this long (float32 r >= 128) a call on the CPU sorts its entries by row first
# and reads each U row once per row: 1e6 shuffled entries of 10,000 x 10,000, r = 256, 3 ms to
# sort against 15 ms saved. From half that once a problem's two factors outgrow 8 MiB (a V row
# then comes from the last-level cache or memory; float32, 2 threads, Zen 3, r = 64: 2e6 entries
# of 20,000 x 20,000 41 against 50 ms, 1e7 of 100,000 x 100,000 414 against 501; factors of
# 5 MiB, 1e6 of 10,000 x 10,000, keep the given order: 12 against 9 ms).
SORT_MIN_ROW_BYTES = 512
SORT_MIN_ROW_BYTES_LARGE_FACTORS = 256
LARGE_FACTOR_BYTES = 8 << 20


@_checks.constrained(check_finite=_checks.flag)
def sampled_product(U: Any, V: Any, rows: Any, cols: Any, *, offsets: Optional[Any] = None,
                    check_finite: bool = True) -> Any:
    """Entries of ``U @ V^T`` at (rows[k], cols[k]), without forming the product.

    Parameters
    ----------
    U : (m, r) or (batch, m, r) float32/float64 array, any layout (a list too; integer input
        becomes float64). r may exceed m and n (an over-parameterized factorization).
        float16 and bfloat16 (``ml_dtypes.bfloat16`` in numpy; float16 in CuPy) are low-precision
        storage: each product is read and summed in float32 and rounded once to the format.
    V : (n, r) or (batch, n, r) array of the same dtype.
    rows, cols : (nnz,) integer arrays of any integer dtype (``np.nonzero``'s output as it is);
        0 <= rows < m, 0 <= cols < n.
    offsets : (batch + 1,) int array (host or the data's device), needed with batched factors:
        problem b owns entries offsets[b]:offsets[b + 1] (non-decreasing, from 0 to nnz), its own
        index range.
    check_finite : raise ValueError if U or V holds NaN/inf, and FloatingPointError if a result
        overflows the dtype's range to inf (one pass over the result).

    Returns
    -------
    (nnz,) array of the factors' dtype: vals[k] = sum_c U[b, rows[k], c] * V[b, cols[k], c]
    (float16/bfloat16 factors: the float32 sum rounded to nearest even in their format).
    Each entry's sum is the same code whatever the path: on the CPU, float32/float64 factor rows
    of 512 bytes or more (float32 r >= 128), or of 256 bytes in factors of more than 8 MiB
    together (U's and V's rows of one problem), take the entries sorted by row (a stable counting
    sort; scratch for the call: 8 bytes an entry, plus one index and one result) so that each U
    row is read once per row, and the results are gathered back to the given order; shorter rows
    take the entries in the given order. For many products over one set of positions,
    :class:`SparsePattern` keeps that order.

    Raises
    ------
    IndexError for an index out of range (naming the first such entry; where the CPU sorts by
    row, see above, rows are checked before cols), TypeError for dtypes or mixed host/device arrays,
    ValueError for shapes, layout, empty factors or NaN/inf. No entry (empty rows and cols)
    gives an empty array.
    """
    call = resolve("sampled_product", U=U, V=V, rows=rows, cols=cols, offsets=offsets)
    U3, V3, _ = factor_pair(call, U, V, check_finite=check_finite, halves=True)
    rows, cols = call.coordinates(rows, cols, allow_empty=True, shape=(U3.shape[1], V3.shape[1]))
    offsets = offsets_array(call, "offsets", offsets, U3.shape[0], rows.shape[0])
    if rows.shape[0] == 0:  # no entry: the empty result, with no kernel to launch
        return call.wrap(call.xp.empty(0, dtype=U3.dtype))
    row_order = hasattr(call.module, "csr_sampled_product") and sort_pays(U3.dtype, U3.shape[-1],
                                                                          U3.shape[1] + V3.shape[1])
    out = _sampled(call, U3, V3, rows, cols, offsets, row_order)
    return call.wrap(checked_result(call, out, check_finite))


def row_order_pays(call: Call, U3, min_row_bytes: int) -> bool:
    """Whether the CPU's row-ordered kernel serves these factors with rows of min_row_bytes or more."""
    return hasattr(call.module, "csr_sampled_product") and long_factor_rows(U3.dtype, U3.shape[-1], min_row_bytes)


def long_factor_rows(dtype, rank: int, min_row_bytes: int) -> bool:
    """Whether float32/float64 factor rows of this rank hold min_row_bytes or more: the row-ordered
    kernel's rule; 16-bit storage never takes it."""
    dtype = np.dtype(dtype)
    return dtype in (np.float32, np.float64) and rank * dtype.itemsize >= min_row_bytes


def sort_pays(dtype, rank: int, factor_rows: int) -> bool:
    """Whether a one-shot sampled product on the CPU sorts its entries by row first, for factors of
    this dtype and rank with factor_rows rows in one problem's U and V together (lowrank_hpc.jax's
    FFI handler applies the same rule)."""
    row_bytes = rank * np.dtype(dtype).itemsize
    return long_factor_rows(dtype, rank, SORT_MIN_ROW_BYTES) or (
        long_factor_rows(dtype, rank, SORT_MIN_ROW_BYTES_LARGE_FACTORS) and factor_rows * row_bytes > LARGE_FACTOR_BYTES)


def csr_sampled(call: Call, indptr, perm, others, U3, V3, cols, y=None):
    """The row-ordered kernel (CPU) on CSR arrays from csr_order: the sampled product in the
    given order, or with y the residual and its float64 sum of squares. IndexError names the
    first entry (given order) whose column, cols[k], is out of range."""
    nnz = int(others.shape[0])
    out = np.empty(nnz, dtype=U3.dtype)
    first_bad = call.status(nnz)
    total = None if y is None else np.zeros(1, dtype=np.float64)
    call.module.csr_sampled_product(indptr, perm, others, U3, V3, out, first_bad, y, total)
    bad = call.read(first_bad)[0]
    if bad < nnz:
        raise_index_error(call, bad, [("cols", cols, V3.shape[1])])
    return out if y is None else (out, float(total[0]))


def _sampled(call, U3, V3, rows, cols, offsets, row_order: bool = False):
    """The kernel on validated arrays: (nnz,) values, IndexError for an out-of-range index.
    row_order: sort by row first (the CPU's float32/float64 kernel; sort_pays decides)."""
    out = call.xp.empty(rows.shape[0], dtype=U3.dtype)
    first_bad = call.status(rows.shape[0])
    call.module.sampled_product(U3, V3, rows, cols, offsets, out, first_bad, call.stream(), row_order)
    _raise_if_bad(call, first_bad, U3, V3, rows, cols)
    return out


def squared_residuals(call, U3, V3, rows, cols, vals, offsets):
    """(nnz,) float64 (vals[k] - <U[b, rows[k]], V[b, cols[k]]>)^2 for validated (batch, rows, r)
    factors: the loss terms of the completion solvers in one fused pass (private to them).
    Returns the terms and the device status word of the first bad entry, for the caller to read
    when it reads its loss (no sync here)."""
    out = call.xp.empty(rows.shape[0], dtype=call.xp.float64)
    first_bad = call.status(rows.shape[0])
    call.module.sampled_squared_residuals(U3, V3, rows, cols, vals, offsets, out, first_bad, call.stream())
    return out, first_bad


def _raise_if_bad(call, first_bad, U3, V3, rows, cols) -> None:
    bad = call.read(first_bad)[0]
    if bad < rows.shape[0]:
        raise_index_error(call, bad, [("rows", rows, U3.shape[1]), ("cols", cols, V3.shape[1])])
