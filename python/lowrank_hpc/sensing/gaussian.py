"""Dense Gaussian measurements: A(X)_i = <A_i, X> with A_i iid N(0, 1/m) entries, so E[A* A] = I."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._arrays import Call, for_backend
from .._random import gaussian_fill
from ._base import (SensingOperator, check_count, check_flag, check_seed, check_shape,
                    inverse_sqrt)

MODES = ("auto", "matrix_free", "cached")


class GaussianSensing(SensingOperator):
    """m Gaussian measurement matrices A_i (n1, n2): entry (j, k) of A_i is
    standard_normal(seed, stream=i, index=j*n2 + k) / sqrt(m), computed in double (symmetric=True:
    A_i = (G_i + G_i^T) / 2, square shape).

    Parameters
    ----------
    m : number of measurements, >= 1.
    shape : (n1, n2) of the measured matrices.
    seed : Philox key, an int in [0, 2**64).
    symmetric : measure with symmetrized matrices (PSD problems).
    mode : "matrix_free" regenerates entries in every call (memory O(n1 n2)); "cached" generates the
        (m, n1 n2) matrix once per backend and dtype and uses BLAS; "auto" caches when that matrix
        fits the memory budget. The same entries in both: the matrix-free products multiply
        them in double and round each result once to the data's dtype; the cached matrix
        holds them rounded to that dtype (float32 data: results agree to float32's rounding,
        float64 data: bit-identical entries).
    memory_budget : bytes for "auto", "cached" and ``to_dense``; None uses ``get_memory_budget()``.
        "cached" never exceeds it: ValueError (naming memory_budget and the bytes needed) at
        construction when even the float32 matrix (4 m n1 n2 bytes) is over it, else at the
        first call on data whose dtype's matrix is over it (float64: 8 m n1 n2 bytes).
    """

    _name = "GaussianSensing"

    def __init__(self, m: int, shape: tuple[int, int], seed: int, symmetric: bool = False, mode: str = "auto",
                 memory_budget: Optional[int] = None):
        m = check_count(self._name, "m", m)
        symmetric = check_flag(self._name, "symmetric", symmetric)
        shape = check_shape(self._name, shape, square=symmetric)
        seed = check_seed(self._name, seed)
        if mode not in MODES:
            raise ValueError(f"{self._name}: mode must be one of {MODES}, got {mode!r}")
        super().__init__(shape, m, seed, memory_budget)
        self.symmetric = symmetric
        self.mode = mode
        self._scale = inverse_sqrt(m)
        if mode == "cached":
            self._check_cache_fits(self._name, np.float32)

    def _check_cache_fits(self, function: str, dtype: Any) -> None:
        needed = self.dense_bytes(np.dtype(dtype))
        if needed > self.memory_budget:
            n1, n2 = self._shape
            raise ValueError(f"{function}: mode='cached' needs the dense ({self._m}, {n1 * n2}) {np.dtype(dtype)} "
                             f"matrix of {needed} bytes, over memory_budget = {self.memory_budget} bytes; raise "
                             "memory_budget (or lowrank_hpc.sensing.set_memory_budget), or use mode='auto' or "
                             "'matrix_free'")

    def uses_cache(self, dtype: Any) -> bool:
        """Whether calls on ``dtype`` data use the cached dense matrix (mode, and for "auto" the
        budget). Mode "cached" always does, and a call whose matrix is over the budget raises."""
        if self.mode != "auto":
            return self.mode == "cached"
        return self.dense_bytes(np.dtype(dtype)) <= self.memory_budget

    def _matrix(self, call: Call, dtype: np.dtype):
        n1, n2 = self._shape
        if (call.backend, np.dtype(dtype).name) not in self._cache:
            self._check_cache_fits(call.function, dtype)
        return self.cached(call, dtype, lambda: gaussian_fill(call, dtype, self._seed, self._m, n1, n2,
                                                              scale=self._scale, symmetric=self.symmetric))

    def _forward(self, call: Call, X3: Any) -> Any:
        batch = X3.shape[0]
        X2 = X3.reshape(batch, -1)
        if self.uses_cache(X3.dtype):
            return call.xp.matmul(X2, self._matrix(call, X3.dtype).T)
        out = call.xp.empty((batch, self._m), dtype=X3.dtype)
        n1, n2 = self._shape
        call.module.gaussian_forward(self._seed, n1, n2, self._scale, self.symmetric, X2, out, call.stream())
        return out

    def _adjoint(self, call: Call, y2: Any) -> Any:
        batch = y2.shape[0]
        n1, n2 = self._shape
        if self.uses_cache(y2.dtype):
            return call.xp.matmul(y2, self._matrix(call, y2.dtype)).reshape(batch, n1, n2)
        out = call.xp.empty((batch, n1, n2), dtype=y2.dtype)
        call.module.gaussian_adjoint(self._seed, n1, n2, self._scale, self.symmetric, y2,
                                     out.reshape(batch, n1 * n2), call.stream())
        return out

    def _dense(self, dtype: np.dtype) -> np.ndarray:
        n1, n2 = self._shape
        return gaussian_fill(for_backend(f"{self._name}.to_dense", "cpu"), dtype, self._seed, self._m, n1, n2,
                             scale=self._scale, symmetric=self.symmetric)
