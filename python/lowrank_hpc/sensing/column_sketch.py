"""Column sketches (decentralized sketching): y_j = A_j x_j for every column x_j of X."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import Call, for_backend
from .._random import gaussian_fill
from ._base import (SensingOperator, check_count, check_flag, check_seed, check_shape,
                    inverse_sqrt)


class ColumnSketch(SensingOperator):
    """Sketch column j of an (n1, n2) matrix with its own A_j (L, n1), iid N(0, 1/L) entries.

    Entry (l, k) of A_j is standard_normal(seed, stream=j, index=l*n1 + k) / sqrt(L), rounded to
    the data's dtype; shared=True gives every column stream 0's matrix. y has length L * n2,
    column by column: y[j*L:(j+1)*L] = A_j X[:, j]. forward and adjoint are batched GEMVs.

    Parameters
    ----------
    m_per_column : L, sketch length per column, >= 1.
    shape : (n1, n2) of the sketched matrices.
    seed : Philox key, an int in [0, 2**64).
    shared : one matrix for all columns.
    """

    _name = "ColumnSketch"

    def __init__(self, m_per_column: int, shape: tuple[int, int], seed: int, shared: bool = False):
        length = check_count(self._name, "m_per_column", m_per_column)
        shape = check_shape(self._name, shape)
        seed = check_seed(self._name, seed)
        self.shared = check_flag(self._name, "shared", shared)
        super().__init__(shape, length * shape[1], seed)
        self.m_per_column = length
        self._scale = inverse_sqrt(length)

    def matrices(self, call: Call, dtype: np.dtype) -> Any:
        """The (n2, L, n1) stack of A_j ((1, L, n1) when shared) of ``dtype`` on the call's backend."""
        n1, n2 = self._shape
        count = 1 if self.shared else n2
        return self.cached(call, dtype, lambda: gaussian_fill(call, dtype, self._seed, count, self.m_per_column, n1,
                                                              scale=self._scale).reshape(count, self.m_per_column, n1))

    def _forward(self, call: Call, X3: Any) -> Any:
        A = self.matrices(call, X3.dtype)
        columns = X3.transpose(0, 2, 1)  # (batch, n2, n1): row j is column j of X
        if self.shared:
            sketches = call.xp.matmul(columns, A[0].T)
        else:
            sketches = call.xp.matmul(A, columns[..., None])[..., 0]
        return sketches.reshape(X3.shape[0], self._m)

    def _adjoint(self, call: Call, y2: Any) -> Any:
        A = self.matrices(call, y2.dtype)
        sketches = y2.reshape(y2.shape[0], self._shape[1], self.m_per_column)
        if self.shared:
            columns = call.xp.matmul(sketches, A[0])
        else:
            columns = call.xp.matmul(sketches[:, :, None, :], A)[:, :, 0, :]
        return call.xp.ascontiguousarray(columns.transpose(0, 2, 1))

    def _forward_factored(self, call: Call, U: Any, V: Any) -> Any:
        if not self.shared:
            return super()._forward_factored(call, U, V)  # per-column A_j U costs r times forming U V^T
        A = self.matrices(call, U.dtype)[0]
        return call.xp.matmul(V, call.xp.matmul(A, U).T).reshape(self._m)  # row j: (A U) v_j

    def _dense(self, dtype: np.dtype) -> np.ndarray:
        n1, n2 = self._shape
        A = self.matrices(for_backend(f"{self._name}.to_dense", "cpu"), dtype)
        dense = np.zeros((n2, self.m_per_column, n1, n2), dtype=dtype)
        for j in range(n2):
            dense[j, :, :, j] = A[0 if self.shared else j]
        return dense.reshape(self._m, n1 * n2)
