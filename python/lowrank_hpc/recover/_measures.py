"""Per-iteration measures shared by the solvers."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import Call


def relative_change(call: Call, U0: Any, V0: Any, U1: Any, V1: Any) -> Any:
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F per problem for (batch, rows, r) factors, (batch,)
    float64 on the factors' backend, from r x r products only (never an m x n matrix).

    The r x r blocks come from the vendor GEMM in float64; the ratio from the core's
    ``solvers::relative_change_from_grams``, the one formula the fused C++ iterations use too:
    the difference is expanded as dU V1^T + U0 dV^T, so a small change is computed from small
    terms and not lost to cancellation between large ones. inf where U0 V0^T = 0 and the new
    product is not; 0 where both are 0.
    """
    xp = call.xp
    U0, V0, U1, V1 = (x.astype(np.float64, copy=False) for x in (U0, V0, U1, V1))
    batch, k = U0.shape[0], U0.shape[2]
    dU, dV = U1 - U0, V1 - V0
    # The seven blocks the expansion needs, one GEMM each (half the time of two Grams of the
    # stacked factors and the copies of their blocks, at n ~ 100, r ~ 20).
    left = xp.empty((batch, 3, k, k), dtype=np.float64)  # dU^T dU, dU^T U0, U0^T U0
    right = xp.empty((batch, 4, k, k), dtype=np.float64)  # V1^T V1, V1^T dV, dV^T dV, V0^T V0
    dU_t, U0_t, V1_t, dV_t = (x.transpose(0, 2, 1) for x in (dU, U0, V1, dV))
    for out, (a, b) in ((left[:, 0], (dU_t, dU)), (left[:, 1], (dU_t, U0)), (left[:, 2], (U0_t, U0)),
                        (right[:, 0], (V1_t, V1)), (right[:, 1], (V1_t, dV)), (right[:, 2], (dV_t, dV)),
                        (right[:, 3], (V0.transpose(0, 2, 1), V0))):
        out[...] = xp.matmul(a, b)  # (CuPy's matmul takes no strided out)
    out = xp.empty(batch, dtype=np.float64)
    call.module.relative_change(left, right, out, call.stream())
    return out
