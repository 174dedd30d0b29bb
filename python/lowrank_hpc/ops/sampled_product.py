"""Products sampled at observed entries (SDDMM): vals[k] = <U[rows[k]], V[cols[k]]>."""
from __future__ import annotations

from typing import Any, Optional

from .._arrays import offsets_array, resolve
from ._factors import factor_pair, raise_index_error


def sampled_product(U: Any, V: Any, rows: Any, cols: Any, offsets: Optional[Any] = None, *,
                    check_finite: bool = True) -> Any:
    """Entries of ``U @ V^T`` at (rows[k], cols[k]), without forming the product.

    Parameters
    ----------
    U : (m, r) or (batch, m, r) float32/float64 array, C-contiguous.
    V : (n, r) or (batch, n, r) array of the same dtype.
    rows, cols : (nnz,) int32/int64 arrays of the same dtype; 0 <= rows < m, 0 <= cols < n.
    offsets : (batch + 1,) int array, needed with batched factors: problem b owns entries
        offsets[b]:offsets[b + 1] (non-decreasing, from 0 to nnz), its own index range.
    check_finite : raise ValueError if U or V holds NaN/inf.

    Returns
    -------
    (nnz,) array of the factors' dtype: vals[k] = sum_c U[b, rows[k], c] * V[b, cols[k], c].

    Raises
    ------
    IndexError for an index out of range (naming the first such entry), TypeError for dtypes or
    mixed host/device arrays, ValueError for shapes, layout, empty input or NaN/inf.
    """
    call = resolve("sampled_product", U=U, V=V, rows=rows, cols=cols, offsets=offsets)
    U3, V3, _ = factor_pair(call, U, V, check_finite=check_finite)
    rows, cols = call.coordinates(rows, cols)
    offsets = offsets_array(call, "offsets", offsets, U3.shape[0], rows.shape[0])
    return call.wrap(_sampled(call, U3, V3, rows, cols, offsets))


def _sampled(call, U3, V3, rows, cols, offsets):
    """The kernel on validated arrays: (nnz,) values, IndexError for an out-of-range index."""
    batch, m, r = U3.shape
    n, nnz = V3.shape[1], rows.shape[0]
    out = call.xp.empty(nnz, dtype=U3.dtype)
    if call.on_device:
        first_bad = call.xp.full(1, nnz, dtype=call.xp.int64)
        call.module.sampled_product(U3.dtype.name, rows.dtype.name, U3.data.ptr, V3.data.ptr, rows.data.ptr,
                                    cols.data.ptr, offsets.data.ptr, batch, m, n, r, nnz, out.data.ptr,
                                    first_bad.data.ptr, call.stream())
        bad = int(first_bad.get()[0])
        bad = -1 if bad == nnz else bad
    else:
        bad = call.module.sampled_product(U3, V3, rows, cols, offsets, out)
    if bad >= 0:
        raise_index_error(call, bad, [("rows", rows, m), ("cols", cols, n)])
    return out


def squared_residuals(call, U3, V3, rows, cols, vals, offsets):
    """(nnz,) float64 (vals[k] - <U[b, rows[k]], V[b, cols[k]]>)^2 for validated (batch, rows, r)
    factors: the loss terms of the completion solvers in one fused pass (private to them)."""
    if call.on_device:  # the arrays are validated: no second pass over offsets (a sync) per call
        residual = vals - _sampled(call, U3, V3, rows, cols, offsets)
        return residual.astype(call.xp.float64) ** 2
    out = call.xp.empty(rows.shape[0], dtype=call.xp.float64)
    bad = call.module.sampled_squared_residuals(U3, V3, rows, cols, vals, offsets, out)
    if bad >= 0:
        raise_index_error(call, bad, [("rows", rows, U3.shape[1]), ("cols", cols, V3.shape[1])])
    return out
