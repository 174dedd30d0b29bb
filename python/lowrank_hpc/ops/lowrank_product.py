"""U @ V^T through the vendor BLAS (numpy/OpenBLAS on the CPU, cuBLAS through CuPy on the GPU)."""
from __future__ import annotations

from typing import Any

from .. import _checks
import numpy as np

from .._arrays import is_half, resolve
from .._backend import gemm_takes_halves, matmul
from ._factors import factor_pair
from ._maps import elementwise


@_checks.constrained(check_finite=_checks.flag)
def lowrank_product(U: Any, V: Any, *, check_finite: bool = True) -> Any:
    """Dense product ``U @ V^T``.

    Parameters
    ----------
    U : (m, r) or (batch, m, r) float32/float64 array, any layout. float16/bfloat16 factors
        (``ml_dtypes.bfloat16`` in numpy) are upcast once to float32 (a copy of the factors),
        multiplied by the float32 GEMM and the product rounded once to their format (under
        lowrank_hpc.torch, torch's 16-bit GEMM does the same: float32 sums, rounded once).
    V : (n, r) or (batch, n, r) array of the same dtype and batching.
    check_finite : raise ValueError if U or V holds NaN/inf.

    Returns
    -------
    (m, n) or (batch, m, n) array of the inputs' dtype and array type (numpy or CUDA). A product
    beyond the dtype's range is inf there, as the BLAS gives it (numpy warns); ``kernel_product(U,
    V)`` (the identity kernel) raises FloatingPointError instead, at the cost of a pass over the
    result.
    """
    call = resolve("lowrank_product", U=U, V=V)
    U3, V3, batched = factor_pair(call, U, V, check_finite=check_finite, halves=True)
    # numpy's BLAS has no 16-bit GEMM: float32, rounded once after (a scope's GEMM may have one)
    half = U3.dtype if is_half(U3.dtype) and not gemm_takes_halves(call.xp) else None
    if half is not None:
        U3, V3 = U3.astype(np.float32), V3.astype(np.float32)
    if not batched:  # the 2-D product takes the BLAS path directly, the stacked one may not
        out = matmul(call.xp, U3[0], V3[0].T)
    else:
        out = matmul(call.xp, U3, V3.transpose(0, 2, 1))
    if half is not None:  # rounded in one pass; beyond the format's range: inf, as the GEMM gives
        out, _ = elementwise(call, "copy", out, dtype=half)
    return call.wrap(out)
