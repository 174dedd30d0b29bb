"""Rank-one measurements: y_i = a_i^T X b_i / sqrt(m), a_i, b_i ~ N(0, I); storage m (n1 + n2)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._arrays import Call, for_backend
from .._random import gaussian_fill
from ._base import (SensingOperator, check_count, check_flag, check_seed, check_shape,
                    inverse_sqrt)


class RankOneSensing(SensingOperator):
    """m rank-one measurement matrices A_i = a_i b_i^T / sqrt(m) (symmetric=True: b_i = a_i).

    a_i is standard_normal(seed, stream=i, index=0..n1-1) and b_i the same stream's indices
    n1..n1+n2-1, rounded to the dtype of the data; stored as Amat (m, n1) and Bmat (m, n2) per
    backend and dtype, so every call is a few GEMMs and no n1 x n2 matrix per measurement.
    Symmetric: E[A*(A(M))] = 2 M + tr(M) I, so ``spectral_correction(y)`` is (sum(y) / sqrt(m), 2):
    spectral starts take (A*(y) - tr I) / 2.

    Parameters
    ----------
    m : number of measurements, >= 1.
    shape : (n1, n2) of the measured matrices (square when symmetric).
    seed : Philox key, an int in [0, 2**64).
    symmetric : measure a_i^T X a_i (PSD problems).
    """

    _name = "RankOneSensing"

    def __init__(self, m: int, shape: tuple[int, int], seed: int, symmetric: bool = False):
        m = check_count(self._name, "m", m)
        symmetric = check_flag(self._name, "symmetric", symmetric)
        shape = check_shape(self._name, shape, square=symmetric)
        seed = check_seed(self._name, seed)
        super().__init__(shape, m, seed)
        self.symmetric = symmetric
        self._scale = inverse_sqrt(m)

    def factors(self, call: Call, dtype: np.dtype) -> tuple[Any, Any]:
        """(Amat (m, n1), Bmat (m, n2)) of ``dtype`` on the call's backend (Bmat is Amat when symmetric)."""
        n1, n2 = self._shape

        def make():
            a = gaussian_fill(call, dtype, self._seed, self._m, 1, n1)
            b = a if self.symmetric else gaussian_fill(call, dtype, self._seed, self._m, 1, n2, index_offset=n1)
            return a, b

        return self.cached(call, dtype, make)

    def _forward(self, call: Call, X3: Any) -> Any:
        a, b = self.factors(call, X3.dtype)
        scale = X3.dtype.type(self._scale)
        return (call.xp.matmul(a, X3) * b).sum(axis=-1) * scale

    def _adjoint(self, call: Call, y2: Any) -> Any:
        a, b = self.factors(call, y2.dtype)
        scale = y2.dtype.type(self._scale)
        return call.xp.matmul(a.T, y2[:, :, None] * b) * scale

    def _forward_factored(self, call: Call, U: Any, V: Any) -> Any:
        a, b = self.factors(call, U.dtype)
        scale = U.dtype.type(self._scale)
        return (call.xp.matmul(a, U) * call.xp.matmul(b, V)).sum(axis=1) * scale

    def _adjoint_times(self, call: Call, y: Any, B: Any, transpose: bool) -> Any:
        # A*(y) = Amat^T diag(y) Bmat / sqrt(m): O(m k (n1 + n2)), no (n1, n2) matrix.
        a, b = self.factors(call, y.dtype)
        scale = y.dtype.type(self._scale)
        near, far = (b, a) if transpose else (a, b)
        return near.T @ (y[:, None] * (far @ B)) * scale

    def _spectral_correction(self, call: Call, y: Any) -> Optional[tuple[float, float]]:
        # Symmetric: A*(A(X)) = (1/m) sum_i (a_i^T X a_i) a_i a_i^T, whose mean over Gaussian a_i is
        # X + X^T + tr(X) I (Isserlis), i.e. 2 M + tr(M) I for symmetric M; E[y_i] = tr(M) / sqrt(m),
        # so sum(y) / sqrt(m) estimates tr(M) and (A*(y) - tr I) / 2 estimates M. Asymmetric: a_i and
        # b_i are independent, E[A*(A(X))] = X: no correction.
        if not self.symmetric:
            return None
        trace = float(call.xp.sum(y, dtype=np.float64)) * self._scale
        return trace, 2.0

    def _dense(self, dtype: np.dtype) -> np.ndarray:
        a, b = self.factors(for_backend(f"{self._name}.to_dense", "cpu"), dtype)
        return (a[:, :, None] * b[:, None, :]).reshape(self._m, -1) * dtype.type(self._scale)
