"""What every measurement operator shares: argument checks, batching, the memory budget, and the
scipy LinearOperator adapter.

An operator A maps an (n1, n2) matrix X to m measurements y_i = <A_i, X>; its adjoint maps y back
to sum_i y_i A_i. Arrays decide the backend (numpy -> CPU, CUDA arrays -> GPU) and the dtype
(float32 or float64); matrices an operator generates are cached per (backend, dtype).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Callable, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, resolve, sum_of_squares
from ..ops._factors import checked_result

DEFAULT_MEMORY_BUDGET = 512 * 2**20
_memory_budget = DEFAULT_MEMORY_BUDGET


def set_memory_budget(nbytes: int) -> None:
    """Set the default byte budget of generated dense matrices (cached modes and ``to_dense``).

    Operators built with an explicit ``memory_budget`` keep theirs. Default: 512 MiB.
    """
    global _memory_budget
    _memory_budget = check_budget("set_memory_budget", "nbytes", nbytes)


def get_memory_budget() -> int:
    """The default byte budget of generated dense matrices (see :func:`set_memory_budget`)."""
    return _memory_budget


def check_budget(function: str, name: str, nbytes: Any) -> int:
    """A positive int number of bytes."""
    return _checks.positive_int(function, name, nbytes)


def check_count(function: str, name: str, value: Any) -> int:
    """A positive int (not a bool, not a float)."""
    return _checks.positive_int(function, name, value)


def check_seed(function: str, seed: Any) -> int:
    """A non-negative int below 2**64: the Philox key. Required: an operator is its seed, so
    None (fresh entropy in the solvers) is refused here."""
    return _checks.seed(function, seed, optional=False)


def check_shape(function: str, shape: Any, *, square: bool = False) -> tuple[int, int]:
    """Two positive ints (n1, n2); ``square`` also requires n1 == n2."""
    n1, n2 = _checks.shape_2d(function, "shape", shape)
    if square and n1 != n2:
        raise ValueError(f"{function}: symmetric=True needs a square shape, got shape {(n1, n2)}")
    return n1, n2


def check_flag(function: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{function}: {name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _finite_result(call: Call, compute: Callable[[], Any]) -> Any:
    """compute()'s result, wrapped for the caller once its entries are found finite: the inputs
    were checked finite, so a NaN/inf entry is an overflow of the dtype (float32 ends at
    3.4e38), raised as FloatingPointError, never returned (numpy's warnings are off for it)."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = compute()
    return call.wrap(checked_result(call, out if out.flags.c_contiguous else call.xp.ascontiguousarray(out), True))


class SensingOperator(ABC):
    """Base class of the measurement operators A: (n1, n2) matrices -> m measurements.

    Subclasses implement ``_forward(call, X3) -> (batch, m)``, ``_adjoint(call, y2) -> (batch, n1, n2)``
    and ``_dense(dtype) -> (m, n1 * n2)`` numpy matrix; the base validates and batches. A result
    that overflows its dtype from finite inputs raises FloatingPointError.
    """

    _name = "SensingOperator"
    # What an operator derives from its definition (seed, shape, indices) and rebuilds on first
    # use: the generated matrices (_cache) and EntrySampling's sorted SparsePatterns (_patterns).
    _derived_state = ("_cache", "_patterns")

    def __init__(self, shape: tuple[int, int], num_measurements: int, seed: Optional[int],
                 memory_budget: Optional[int] = None):
        self._shape = shape
        self._m = num_measurements
        self._seed = seed
        self._memory_budget = (None if memory_budget is None
                               else check_budget(self._name, "memory_budget", memory_budget))
        self._cache: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ properties
    @property
    def shape(self) -> tuple[int, int]:
        """(n1, n2): the shape of the matrices X the operator measures."""
        return self._shape

    @property
    def num_measurements(self) -> int:
        """m: the length of A(X)."""
        return self._m

    @property
    def seed(self) -> Optional[int]:
        """The Philox seed of the generated matrices (None for operators with no randomness)."""
        return self._seed

    @property
    def memory_budget(self) -> int:
        """Bytes a generated dense matrix may take: this operator's budget, else the module default."""
        return self._memory_budget if self._memory_budget is not None else get_memory_budget()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(m={self._m}, shape={self._shape}, seed={self._seed})"

    def __getstate__(self) -> dict:
        """What pickle and copy keep: an operator is its seed, so not the derived state (a cached
        GaussianSensing(2000, (100, 80)) matrix is 128 MB), which the copy rebuilds on first use."""
        state = self.__dict__.copy()
        for name in self._derived_state:
            if name in state:
                state[name] = {}
        return state

    # ------------------------------------------------------------------ public API
    def forward(self, X: Any) -> Any:
        """A(X): X (n1, n2) or (batch, n1, n2), float32/float64, any layout, numpy or CUDA.

        Returns (m,) or (batch, m) of X's dtype and array type.
        """
        function = f"{self._name}.forward"
        _checks.required(function, X=X)
        call = resolve(function, X=X)
        X = call.float_array("X", X, (2, 3))
        if tuple(X.shape[-2:]) != self._shape:
            raise ValueError(f"{function}: X has shape {tuple(X.shape)}, expected {self._shape} or "
                             f"(batch, {self._shape[0]}, {self._shape[1]})")
        batched = X.ndim == 3
        if batched:
            return _finite_result(call, lambda: self._forward(call, X))
        return _finite_result(call, lambda: self._forward(call, X.reshape(1, *self._shape))[0])

    def adjoint(self, y: Any) -> Any:
        """A*(y) = sum_i y_i A_i: y (m,) or (batch, m), float32/float64, any layout.

        Returns (n1, n2) or (batch, n1, n2) of y's dtype and array type.
        """
        function = f"{self._name}.adjoint"
        _checks.required(function, y=y)
        call = resolve(function, y=y)
        y = call.float_array("y", y, (1, 2))
        if y.shape[-1] != self._m:
            raise ValueError(f"{function}: y has shape {tuple(y.shape)}, expected ({self._m},) or (batch, {self._m})")
        batched = y.ndim == 2
        if batched:
            return _finite_result(call, lambda: self._adjoint(call, y))
        return _finite_result(call, lambda: self._adjoint(call, y.reshape(1, self._m))[0])

    def forward_factored(self, U: Any, V: Any = None) -> Any:
        """A(U V^T) for U (n1, r) and V (n2, r), or A(U U^T) when V is None (square shape).

        A leading batch axis is optional: U (batch, n1, r), V (batch, n2, r) give (batch, m).
        float32/float64 arrays of one dtype, any layout; returns (m,) or (batch, m) of that dtype.
        """
        function = f"{self._name}.forward_factored"
        _checks.required(function, U=U)
        call = resolve(function, U=U, V=V)
        n1, n2 = self._shape
        U = call.float_array("U", U, (2, 3))
        if V is None:
            if n1 != n2:
                raise ValueError(f"{function}: V=None means U U^T, which needs a square shape, got {self._shape}")
            V = U
        else:
            V = call.float_array("V", V, (2, 3))
        batched = U.ndim == 3
        if (V.ndim != U.ndim or U.shape[-2] != n1 or V.shape[-2] != n2 or U.shape[-1] != V.shape[-1]
                or (batched and U.shape[0] != V.shape[0])):
            lead = "(batch, " if batched else "("
            raise ValueError(f"{function}: U has shape {tuple(U.shape)} and V has shape {tuple(V.shape)}, "
                             f"expected {lead}{n1}, r) and {lead}{n2}, r)")
        if not batched:
            return _finite_result(call, lambda: self._forward_factored(call, U, V))
        return _finite_result(call, lambda: call.xp.stack([self._forward_factored(call, U[b], V[b])
                                                           for b in range(U.shape[0])]))

    def adjoint_times(self, y: Any, B: Any) -> Any:
        """A*(y) @ B for y (m,) and B (n2, k): the gradient product of factored solvers.

        Operators with structure (entry sampling, rank-one) never form the (n1, n2) A*(y).
        Returns (n1, k) of y's dtype and array type.
        """
        return self._adjoint_product("adjoint_times", y, B, transpose=False)

    def adjoint_transpose_times(self, y: Any, B: Any) -> Any:
        """A*(y)^T @ B for y (m,) and B (n1, k). Returns (n2, k)."""
        return self._adjoint_product("adjoint_transpose_times", y, B, transpose=True)

    def _adjoint_product(self, method: str, y: Any, B: Any, transpose: bool) -> Any:
        function = f"{self._name}.{method}"
        _checks.required(function, y=y, B=B)
        call = resolve(function, y=y, B=B)
        y = call.float_array("y", y, (1,))
        B = call.float_array("B", B, (2,))
        rows_expected = self._shape[0] if transpose else self._shape[1]
        if y.shape[0] != self._m:
            raise ValueError(f"{function}: y has shape {tuple(y.shape)}, expected ({self._m},)")
        if B.shape[0] != rows_expected:
            raise ValueError(f"{function}: B has shape {tuple(B.shape)}, expected ({rows_expected}, k)")
        return _finite_result(call, lambda: self._adjoint_times(call, y, B, transpose))

    def spectral_correction(self, y: Any) -> Optional[tuple[float, float]]:
        """How a spectral start reads M off A*(y), for measurements y = A(M) (m,).

        Returns (shift, gain) when E[A*(A(M))] = gain * M + shift(M) * I for the matrices the
        operator measures, with shift estimated from y: the start then takes the top pairs of
        (A*(y) - shift I) / gain, an estimate of M itself. None (the default) when A*(y) ~ s M
        with no identity term, s = E||A(X)||^2 / ||X||_F^2 (estimated by the solvers with random
        probes). Symmetric rank-one sensing is the operator with a shift (its trace term).
        """
        function = f"{self._name}.spectral_correction"
        _checks.required(function, y=y)
        call = resolve(function, y=y)
        y = call.float_array("y", y, (1,))
        if y.shape[0] != self._m:
            raise ValueError(f"{function}: y has shape {tuple(y.shape)}, expected ({self._m},)")
        return self._spectral_correction(call, y)

    def _spectral_correction(self, call: Call, y: Any) -> Optional[tuple[float, float]]:
        """Default: no identity term; A*(y) is the operator's scale times M."""
        return None

    # What the factored solvers call in their loops, once they have validated U, V and y at
    # entry (U (n1, r), V (n2, r) C-contiguous of y's dtype, on the call's backend; V is U for
    # U U^T): no per-call checks, and an operator may fuse the steps.
    def _solver_order(self, call: Call, y: Any) -> tuple["SensingOperator", Any]:
        """(operator, y) the factored solvers iterate on: these measurements, in an order the
        operator's kernels prefer (the loss and its gradients do not depend on the order; y (m,)
        validated, on the call's backend). Default: this operator and y as they are."""
        return self, y

    def _solver_residual(self, call: Call, U: Any, V: Any, y: Any) -> tuple[Any, float]:
        """(z, sum of z^2 in float64) for z = A(U V^T) - y (m,)."""
        z = self._forward_factored(call, U, V) - y
        return z, sum_of_squares(call.xp, z)

    def _solver_adjoint_products(self, call: Call, z: Any, V: Any, U: Any) -> tuple[Any, Any]:
        """(A*(z) @ V, A*(z)^T @ U) for z (m,) of the factors' dtype."""
        return self._adjoint_times(call, z, V, False), self._adjoint_times(call, z, U, True)

    def _adjoint_times(self, call: Call, y: Any, B: Any, transpose: bool) -> Any:
        """Default: form A*(y) once and multiply (one (n1, n2) matrix)."""
        G = self._adjoint(call, y.reshape(1, self._m))[0]
        return (G.T if transpose else G) @ B

    def to_dense(self, dtype: Any = np.float64) -> np.ndarray:
        """The (m, n1 * n2) numpy matrix of the operator, rows in row-major vec order: A(X) = M @ X.ravel().

        ``dtype`` float32/float64. Refuses (ValueError) above the memory budget.
        """
        dtype = self.check_dtype(f"{self._name}.to_dense", dtype)
        self.check_fits(f"{self._name}.to_dense", dtype)
        return self._dense(dtype)

    def as_linear_operator(self, dtype: Any = np.float64):
        """A scipy.sparse.linalg.LinearOperator of shape (m, n1 * n2) on numpy vectors of ``dtype``.

        matvec takes vec(X) (row-major), rmatvec returns vec(A*(y)); inputs are converted to
        ``dtype`` (scipy solvers pass float64), so lsqr, lsmr and cg work on it.
        """
        from scipy.sparse.linalg import LinearOperator

        dtype = self.check_dtype(f"{self._name}.as_linear_operator", dtype)
        n1, n2 = self._shape

        def matvec(x):
            return self.forward(np.ascontiguousarray(x, dtype=dtype).reshape(n1, n2))

        def rmatvec(y):
            return self.adjoint(np.ascontiguousarray(y, dtype=dtype).reshape(self._m)).reshape(n1 * n2)

        def matmat(X):
            batch = np.ascontiguousarray(np.asarray(X, dtype=dtype).T).reshape(-1, n1, n2)
            return self.forward(batch).T

        def rmatmat(Y):
            batch = np.ascontiguousarray(np.asarray(Y, dtype=dtype).T)
            return self.adjoint(batch).reshape(-1, n1 * n2).T

        return LinearOperator((self._m, n1 * n2), matvec=matvec, rmatvec=rmatvec, matmat=matmat,
                              rmatmat=rmatmat, dtype=dtype)

    # ------------------------------------------------------------------ helpers for subclasses
    def check_dtype(self, function: str, dtype: Any) -> np.dtype:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"{function}: dtype must be float32 or float64, got {dtype!r}") from None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"{function}: dtype must be float32 or float64, got {dtype}")
        return dtype

    def dense_bytes(self, dtype: np.dtype) -> int:
        return self._m * self._shape[0] * self._shape[1] * np.dtype(dtype).itemsize

    def check_fits(self, function: str, dtype: np.dtype) -> None:
        needed = self.dense_bytes(dtype)
        if needed > self.memory_budget:
            raise ValueError(f"{function}: the dense ({self._m}, {self._shape[0] * self._shape[1]}) {np.dtype(dtype)} "
                             f"matrix needs {needed} bytes, over the memory budget of {self.memory_budget} bytes; "
                             "raise memory_budget or lowrank_hpc.sensing.set_memory_budget")

    def cached(self, call: Call, dtype: np.dtype, make: Callable[[], Any]) -> Any:
        """The array ``make()`` builds for (call.backend, dtype), built once."""
        key = (call.backend, np.dtype(dtype).name)
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _forward_factored(self, call: Call, U: Any, V: Any) -> Any:
        """Default: form U V^T (an (n1, n2) GEMM) and measure it."""
        product = call.xp.matmul(U, V.T)
        return self._forward(call, product.reshape(1, *self._shape))[0]

    @abstractmethod
    def _forward(self, call: Call, X3: Any) -> Any:
        """(batch, m) measurements of the validated (batch, n1, n2) X3."""

    @abstractmethod
    def _adjoint(self, call: Call, y2: Any) -> Any:
        """(batch, n1, n2) adjoint of the validated (batch, m) y2."""

    @abstractmethod
    def _dense(self, dtype: np.dtype) -> np.ndarray:
        """The (m, n1 * n2) numpy matrix, already checked against the budget."""


def inverse_sqrt(n: int) -> float:
    """1 / sqrt(n) in double, correctly rounded operations (identical for every backend)."""
    return 1.0 / math.sqrt(n)

