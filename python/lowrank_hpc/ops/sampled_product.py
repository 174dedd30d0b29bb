"""Products sampled at observed entries (SDDMM): vals[k] = <U[rows[k]], V[cols[k]]>."""
from __future__ import annotations

from typing import Any, Optional

from .. import _checks
from .._arrays import offsets_array, resolve
from ._factors import factor_pair, raise_index_error


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
    check_finite : raise ValueError if U or V holds NaN/inf.

    Returns
    -------
    (nnz,) array of the factors' dtype: vals[k] = sum_c U[b, rows[k], c] * V[b, cols[k], c]
    (float16/bfloat16 factors: the float32 sum rounded to nearest even in their format).

    Raises
    ------
    IndexError for an index out of range (naming the first such entry), TypeError for dtypes or
    mixed host/device arrays, ValueError for shapes, layout, empty input or NaN/inf.
    """
    call = resolve("sampled_product", U=U, V=V, rows=rows, cols=cols, offsets=offsets)
    U3, V3, _ = factor_pair(call, U, V, check_finite=check_finite, halves=True)
    rows, cols = call.coordinates(rows, cols)
    offsets = offsets_array(call, "offsets", offsets, U3.shape[0], rows.shape[0])
    return call.wrap(_sampled(call, U3, V3, rows, cols, offsets))


def _sampled(call, U3, V3, rows, cols, offsets):
    """The kernel on validated arrays: (nnz,) values, IndexError for an out-of-range index."""
    out = call.xp.empty(rows.shape[0], dtype=U3.dtype)
    first_bad = call.status(rows.shape[0])
    call.module.sampled_product(U3, V3, rows, cols, offsets, out, first_bad, call.stream())
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
