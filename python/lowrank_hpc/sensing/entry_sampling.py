"""Entry sampling, the matrix-completion operator: A(X) = X[rows, cols]."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .._arrays import Call, for_backend, resolve
from ..ops import SparsePattern, sampled_product
from ..ops._csr_order import row_column_order
from ._base import SensingOperator, check_shape


class EntrySampling(SensingOperator):
    """Observe the entries (rows[k], cols[k]) of an (n1, n2) matrix; repeated positions are allowed.

    forward gathers X[rows, cols]; adjoint scatter-adds y into an (n1, n2) zero matrix (repeated
    positions add up); forward_factored samples U V^T without forming it (``ops.sampled_product``,
    or ``SparsePattern.sampled_product`` once the adjoint products have built the pattern: the
    same values). Entries given out of (row, col) order are kept a second time, sorted so (ties
    in the given order), for ``recover.factored_gd``, which iterates on them (and y gathered
    into that order, per fit): its iterates are those of the sorted entries, bit for bit.

    Parameters
    ----------
    rows, cols : (m,) integer arrays of any integer dtype and layout (numpy or CUDA),
        0 <= rows < n1 and 0 <= cols < n2.
    shape : (n1, n2) of the measured matrices.
    """

    _name = "EntrySampling"
    # (the sorted copy factored_gd iterates on, its order per backend), (None, {}) where the
    # entries are in order already: found on first need.
    _sorted_copy: Optional[tuple[Optional["EntrySampling"], dict[str, Any]]] = None

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int]):
        call = resolve(self._name, rows=rows, cols=cols)
        shape = check_shape(self._name, shape)
        rows, cols = call.coordinates(rows, cols, shape=shape)
        host_rows, host_cols = call.to_host(rows), call.to_host(cols)
        for name, index, bound in (("rows", host_rows, shape[0]), ("cols", host_cols, shape[1])):
            bad = np.flatnonzero((index < 0) | (index >= bound))
            if bad.size:
                raise IndexError(f"{self._name}: {name}[{bad[0]}] = {int(index[bad[0]])} is out of range [0, {bound})")
        # Copies: later changes to the caller's arrays must not change the operator.
        self._set_entries(shape, host_rows.copy(), host_cols.copy())

    def _set_entries(self, shape: tuple[int, int], host_rows: np.ndarray, host_cols: np.ndarray) -> None:
        """The operator of these validated host indices (its own arrays)."""
        SensingOperator.__init__(self, shape, int(host_rows.shape[0]), None)
        self._host_rows, self._host_cols = host_rows, host_cols
        self._host_flat = host_rows.astype(np.int64) * shape[1] + host_cols
        self._patterns: dict[str, SparsePattern] = {}

    def __getstate__(self) -> dict:
        """As every operator's, without the sorted copy either (rebuilt on first need)."""
        state = super().__getstate__()
        state.pop("_sorted_copy", None)
        return state

    def indices(self, call: Call) -> tuple[Any, Any, Any]:
        """(rows, cols, rows * n2 + cols) on the call's backend."""
        host = (self._host_rows, self._host_cols, self._host_flat)
        return self.cached(call, self._host_rows.dtype, lambda: tuple(call.xp.asarray(a) for a in host))

    def _forward(self, call: Call, X3: Any) -> Any:
        flat = self.indices(call)[2]
        return call.xp.take(X3.reshape(X3.shape[0], -1), flat, axis=1)

    def _adjoint(self, call: Call, y2: Any) -> Any:
        flat = self.indices(call)[2]
        n1, n2 = self._shape
        # Repeated positions add up; bincount sums in float64 on either backend.
        out = call.xp.stack([call.xp.bincount(flat, weights=y, minlength=n1 * n2) for y in y2])
        return out.astype(y2.dtype, copy=False).reshape(y2.shape[0], n1, n2)

    def _forward_factored(self, call: Call, U: Any, V: Any) -> Any:
        # The pattern the adjoint keeps, once built (the same values bit for bit, its entries in
        # row order: each U row read once per row); a forward alone does not build it, whose
        # orders hold 32 bytes an entry.
        pattern = self._patterns.get(call.backend)
        if pattern is not None:
            return pattern.sampled_product(U, V, check_finite=False)
        rows, cols, _ = self.indices(call)
        return sampled_product(U, V, rows, cols, check_finite=False)

    def _solver_order(self, call: Call, y: Any) -> tuple["EntrySampling", Any]:
        # Entries out of (row, col) order: the solvers iterate on the same entries sorted so (y
        # gathered once), where the residual and the row products need no permutation and each
        # row reads V's rows in increasing order (20,000 x 20,000, 8e6 shuffled entries, r = 20,
        # factored_gd: 72-76 against 182-183 ms an iteration in the given order; sorted by row
        # only, 139-141 against 92-119 by row and column in another run). The iterates are those
        # of the sorted entries, bit for bit. A subclass keeps its own methods: it iterates on itself.
        if self._sorted_copy is None:
            flat = self._host_flat
            if type(self) is not EntrySampling or flat.shape[0] < 2 or bool((flat[1:] >= flat[:-1]).all()):
                self._sorted_copy = (None, {})  # in order already (or a subclass): itself, y as given
            else:
                # On the host whatever backend is in force (the indices are checked: no resolve).
                order = row_column_order(for_backend(self._name, "cpu"), self._host_rows, self._host_cols,
                                         self._shape)
                copy = EntrySampling.__new__(EntrySampling)
                copy._set_entries(self._shape, self._host_rows[order], self._host_cols[order])
                self._sorted_copy = (copy, {"cpu": order})
        sorted_op, orders = self._sorted_copy
        if sorted_op is None:
            return self, y
        if call.backend not in orders:  # the order on the call's device, moved once
            orders[call.backend] = call.xp.asarray(orders["cpu"])
        return sorted_op, y[orders[call.backend]]

    def _solver_residual(self, call: Call, U: Any, V: Any, y: Any) -> tuple[Any, float]:
        # One pass: the sampled product, minus y, its squares summed (on the CPU).
        return self.pattern(call).solver_residual(call, U, V, y)

    def _solver_adjoint_products(self, call: Call, z: Any, V: Any, U: Any) -> tuple[Any, Any]:
        # Both orders were range-checked when the pattern was built (each orientation's keys are
        # the other's others): no checks and no status read (a device sync) per product.
        pattern = self.pattern(call)
        return pattern.solver_product(call, z, V), pattern.solver_product(call, z, U, transpose=True)

    def pattern(self, call: Call) -> SparsePattern:
        """The observed positions as a SparsePattern on the call's backend, sorted once."""
        if call.backend not in self._patterns:  # one pattern serves every float dtype
            self._patterns[call.backend] = SparsePattern(*self.indices(call)[:2], self._shape, copy=False)
        return self._patterns[call.backend]

    def _adjoint_times(self, call: Call, y: Any, B: Any, transpose: bool) -> Any:
        # A*(y) is the sparse matrix of y at the observed positions: no (n1, n2) matrix.
        return self.pattern(call).times_dense(y, B, transpose=transpose, check_finite=False)

    def _dense(self, dtype: np.dtype) -> np.ndarray:
        dense = np.zeros((self._m, self._shape[0] * self._shape[1]), dtype=dtype)
        dense[np.arange(self._m), self._host_flat] = 1
        return dense
