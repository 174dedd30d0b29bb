"""Per-iteration measures shared by the solvers."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import Call


def relative_change(call: Call, U0: Any, V0: Any, U1: Any, V1: Any) -> Any:
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F per problem for (batch, rows, r) factors, (batch,)
    float64 on the factors' backend, from r x r products only (never an m x n matrix).

    The Gram products come from the vendor GEMM in float64; the ratio from the core's
    ``solvers::relative_change_from_grams``, the one formula the fused C++ iterations use too:
    the difference is expanded as dU V1^T + U0 dV^T, so a small change is computed from small
    terms and not lost to cancellation between large ones. inf where U0 V0^T = 0 and the new
    product is not; 0 where both are 0.
    """
    xp = call.xp
    U0, V0, U1, V1 = (x.astype(np.float64, copy=False) for x in (U0, V0, U1, V1))
    k = U0.shape[2]

    def gram(A):  # A^T A per problem: one GEMM gives every block of the expansion
        return xp.matmul(A.transpose(0, 2, 1), A)

    G = gram(xp.concatenate([U1 - U0, U0], axis=2))  # [dU, U0]
    H = gram(xp.concatenate([V1, V1 - V0, V0], axis=2))  # [V1, dV, V0]
    first, second, third = slice(0, k), slice(k, 2 * k), slice(2 * k, 3 * k)
    left = xp.stack([G[:, first, first], G[:, first, second], G[:, second, second]], axis=1)
    right = xp.stack([H[:, first, first], H[:, first, second], H[:, second, second], H[:, third, third]], axis=1)
    out = xp.empty(U0.shape[0], dtype=np.float64)
    call.module.relative_change(left, right, out, call.stream())
    return out
