"""Per-iteration measures shared by the solvers."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._arrays import Call


# Numbers of a factor converted to float64 at a time (4 MiB): blocks below glibc's mmap threshold
# reuse one allocation, while float64 copies of whole factors were mapped afresh and page-faulted
# on every call (60,000 x 128 float32 factors: 0.15 s became 0.11 s).
_FLOAT64_BLOCK = 1 << 19


# The factor dtypes the CPU module's change_grams_* take (others go through numpy's GEMM).
_TILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def row_blocks(n_rows: int, width: int):
    """Slices of [0, n_rows) whose rows hold about _FLOAT64_BLOCK numbers of ``width`` each."""
    step = max(1, _FLOAT64_BLOCK // max(1, width))
    return [slice(start, min(n_rows, start + step)) for start in range(0, n_rows, step)] or [slice(0, 0)]


def gram64(call: Call, F: Any) -> Any:
    """(r, r) float64 F^T F of an (n, r) factor of any float dtype, on its backend, summed over
    blocks of rows in float64 (its trace is ||F||_F^2)."""
    xp = call.xp
    out = xp.zeros((F.shape[1], F.shape[1]), dtype=np.float64)
    for rows in row_blocks(F.shape[0], F.shape[1]):
        block = F[rows].astype(np.float64)
        out += block.T @ block
    return out


class ChangeGrams:
    """The seven r x r float64 blocks of :func:`relative_change`, summed a block of rows at a
    time: a solver that updates its factors a block of rows at a time (the ALS rows kernel)
    keeps a copy of one block's old values, not of the whole factors. Blocks given in the order
    of ``row_blocks(rows, batch * r)`` sum exactly as relative_change does."""

    def __init__(self, call: Call, batch: int, k: int):
        xp = call.xp
        self.call = call
        self.left = xp.zeros((batch, 3, k, k), dtype=np.float64)  # dU^T dU, dU^T U0, U0^T U0
        self.right = xp.zeros((batch, 4, k, k), dtype=np.float64)  # V1^T V1, V1^T dV, dV^T dV, V0^T V0
        # The CPU module's register tiles where it has them (the same bits for any thread count;
        # numpy's float64 GEMM runs on the one BLAS thread the ALS loop leaves it): on the GPU, cuBLAS.
        self._tiled = hasattr(call.module, "change_grams_left")

    def add_left(self, u0: Any, u1: Any, u0_gram: bool = True) -> None:
        """Rows of U before (u0) and after (u1), (batch, rows, k)."""
        if self._tiled and u0.dtype in _TILED_DTYPES:
            # (A batch's block of rows is strided: one copy of it, as the float64 path made two.)
            self.call.module.change_grams_left(np.ascontiguousarray(u0), np.ascontiguousarray(u1), u0_gram, self.left)
            return
        u0 = u0.astype(np.float64)
        du = u1.astype(np.float64) - u0
        du_t = du.transpose(0, 2, 1)
        xp = self.call.xp
        self.left[:, 0] += xp.matmul(du_t, du)
        self.left[:, 1] += xp.matmul(du_t, u0)
        if u0_gram:
            self.left[:, 2] += xp.matmul(u0.transpose(0, 2, 1), u0)

    def add_right(self, v0: Any, v1: Any, v1_gram: bool = True, v0_gram: bool = True) -> None:
        """Rows of V before (v0) and after (v1), (batch, rows, k)."""
        if self._tiled and v0.dtype in _TILED_DTYPES:
            self.call.module.change_grams_right(np.ascontiguousarray(v0), np.ascontiguousarray(v1), v1_gram, v0_gram,
                                                self.right)
            return
        v0, v1 = v0.astype(np.float64), v1.astype(np.float64)
        dv, v1_t = v1 - v0, v1.transpose(0, 2, 1)
        xp = self.call.xp
        if v1_gram:
            self.right[:, 0] += xp.matmul(v1_t, v1)
        self.right[:, 1] += xp.matmul(v1_t, dv)
        self.right[:, 2] += xp.matmul(dv.transpose(0, 2, 1), dv)
        if v0_gram:
            self.right[:, 3] += xp.matmul(v0.transpose(0, 2, 1), v0)

    def finish(self, U0_gram: Optional[Any] = None, V0_gram: Optional[Any] = None,
               V1_gram: Optional[Any] = None) -> Any:
        """(batch,) float64 relative change; the Grams given replace the blocks not summed."""
        for out, gram in ((self.left[:, 2], U0_gram), (self.right[:, 0], V1_gram), (self.right[:, 3], V0_gram)):
            if gram is not None:
                out[...] = gram
        out = self.call.xp.empty(self.left.shape[0], dtype=np.float64)
        self.call.module.relative_change(self.left, self.right, out, self.call.stream())
        return out


def relative_change(call: Call, U0: Any, V0: Any, U1: Any, V1: Any, *, U0_gram: Optional[Any] = None,
                    V0_gram: Optional[Any] = None, V1_gram: Optional[Any] = None) -> Any:
    """||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F per problem for (batch, rows, r) factors, (batch,)
    float64 on the factors' backend, from r x r products only (never an m x n matrix).

    The r x r blocks are float64 sums (the CPU module's register tiles, the same bits for any
    thread count; cuBLAS's GEMM on the GPU); the ratio comes from the core's
    ``solvers::relative_change_from_grams``, the one formula the fused C++ iterations use too:
    the difference is expanded as dU V1^T + U0 dV^T, so a small change is computed from small
    terms and not lost to cancellation between large ones. inf where U0 V0^T = 0 and the new
    product is not; 0 where both are 0; NaN where a factor holds NaN/inf (never "no change").
    U0_gram, V0_gram, V1_gram: the (k, k) float64 Grams U0^T U0, V0^T V0, V1^T V1 of one problem
    where the caller has them (its loss needed them).
    """
    batch, k = U0.shape[0], U0.shape[2]
    grams = ChangeGrams(call, batch, k)
    # The seven blocks the expansion needs, in float64, a block of rows at a time.
    for rows in row_blocks(U0.shape[1], batch * k):
        grams.add_left(U0[:, rows], U1[:, rows], u0_gram=U0_gram is None)
    for rows in row_blocks(V0.shape[1], batch * k):
        grams.add_right(V0[:, rows], V1[:, rows], v1_gram=V1_gram is None, v0_gram=V0_gram is None)
    return grams.finish(U0_gram, V0_gram, V1_gram)
