"""Proximal operators, entry-wise, on either backend (the functors of lowrank_hpc/ops/maps.hpp)."""
from __future__ import annotations

from typing import Any, Optional

from .. import _checks
from .._arrays import resolve
from ._maps import elementwise


@_checks.constrained(threshold=_checks.nonnegative_float, check_finite=_checks.flag)
def soft_threshold(x: Any, threshold: float, *, out: Optional[Any] = None, check_finite: bool = True) -> Any:
    """sign(x) * max(|x| - threshold, 0), entry-wise: the proximal operator of threshold * ||x||_1.

    Parameters
    ----------
    x : float32/float64 array of any shape and layout (numpy, a list, or a CUDA array).
    threshold : a finite number >= 0.
    out : optional array to write into (x's shape and dtype, C-contiguous, writable; may be x itself,
        any other overlap with x is a ValueError).
    check_finite : raise ValueError if x holds NaN/inf.

    Returns
    -------
    Array of x's shape and dtype (``out`` when given).
    """
    call = resolve("soft_threshold", x=x, out=out)
    x = call.float_array("x", x, range(0, 33), check_finite=check_finite, allow_empty=True)
    result, _ = elementwise(call, "soft_threshold", x, [threshold], out=out)
    return call.wrap(result)
