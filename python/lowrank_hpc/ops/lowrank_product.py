"""U @ V^T through the vendor BLAS (numpy/OpenBLAS on the CPU, cuBLAS through CuPy on the GPU)."""
from __future__ import annotations

from typing import Any

from .. import _checks
from .._arrays import resolve
from ._factors import factor_pair


@_checks.constrained(check_finite=_checks.flag)
def lowrank_product(U: Any, V: Any, *, check_finite: bool = True) -> Any:
    """Dense product ``U @ V^T``.

    Parameters
    ----------
    U : (m, r) or (batch, m, r) float32/float64 array, C-contiguous.
    V : (n, r) or (batch, n, r) array of the same dtype and batching.
    check_finite : raise ValueError if U or V holds NaN/inf.

    Returns
    -------
    (m, n) or (batch, m, n) array of the inputs' dtype and array type (numpy or CUDA).
    """
    call = resolve("lowrank_product", U=U, V=V)
    U3, V3, batched = factor_pair(call, U, V, check_finite=check_finite)
    if not batched:  # the 2-D product takes the BLAS path directly, the stacked one may not
        return call.wrap(U3[0] @ V3[0].T)
    return call.wrap(call.xp.matmul(U3, V3.transpose(0, 2, 1)))
