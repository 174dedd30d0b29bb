"""Row and column reductions on either backend (the reduce launchers over lowrank_hpc/ops/maps.hpp)."""
from __future__ import annotations

from typing import Any

from .. import _checks
from .._arrays import resolve
from ._factors import checked_result
from ._maps import reduction


@_checks.constrained(axis=_checks.one_of(0, 1), check_finite=_checks.flag)
def sum_of_squares(x: Any, axis: int = 1, *, check_finite: bool = True) -> Any:
    """Squared Euclidean norms of the rows (``axis=1``) or columns (``axis=0``) of a matrix.

    Parameters
    ----------
    x : (rows, cols) float32/float64 array, any layout (numpy, a list, or a CUDA array).
    axis : 1 for one value per row, 0 for one per column.
    check_finite : raise ValueError if x holds NaN/inf, and FloatingPointError if a sum, finite
        in float64, overflows x's dtype (float32 past 3.4e38).

    Returns
    -------
    (rows,) or (cols,) array of x's dtype, each sum accumulated in float64.
    """
    call = resolve("sum_of_squares", x=x)
    x = call.float_array("x", x, (2,), check_finite=check_finite, allow_empty=True)
    return call.wrap(checked_result(call, reduction(call, "square", x, axis), check_finite))
