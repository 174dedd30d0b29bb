"""Per-iteration measures shared by the solvers."""
from __future__ import annotations

from typing import Any

import numpy as np


def relative_change(xp: Any, U0: Any, V0: Any, U1: Any, V1: Any) -> Any:
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F per problem for (batch, rows, r) factors, (batch,)
    float64 on the factors' backend, from r x r products only (never an m x n matrix).

    The difference is expanded as dU V1^T + U0 dV^T, so a small change is computed from small
    terms and not lost to cancellation between large ones. inf where U0 V0^T = 0 and the new
    product is not; 0 where both are 0.
    """
    U0, V0, U1, V1 = (x.astype(np.float64, copy=False) for x in (U0, V0, U1, V1))

    def inner(A, B, C, D):  # <A B^T, C D^T>_F per problem = sum((A^T C) * (B^T D))
        return xp.sum(xp.matmul(A.transpose(0, 2, 1), C) * xp.matmul(B.transpose(0, 2, 1), D), axis=(1, 2))

    dU, dV = U1 - U0, V1 - V0
    squared = xp.maximum(inner(dU, V1, dU, V1) + 2.0 * inner(dU, V1, U0, dV) + inner(U0, dV, U0, dV), 0.0)
    before = inner(U0, V0, U0, V0)
    safe = xp.where(before > 0, before, 1.0)
    return xp.where(before > 0, xp.sqrt(squared / safe), xp.where(squared > 0, np.inf, 0.0))
