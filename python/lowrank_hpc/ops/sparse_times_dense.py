"""Sparse (coordinate form) times dense: the adjoint of the sampled product.

A completion gradient is two calls: ``sparse_times_dense(rows, cols, resid, V, m)`` and
``sparse_times_dense(rows, cols, resid, U, n, transpose=True)``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, offsets_array, resolve
from ._factors import raise_index_error


def _dense_operand(call: Call, B: Any, check_finite: bool):
    B = call.float_array("B", B, (2, 3), check_finite=check_finite)
    batched = B.ndim == 3
    return (B if batched else B.reshape(1, *B.shape)), batched


def _check_coordinates(call: Call, rows: Any, cols: Any, vals: Any, check_finite: bool):
    rows, cols = call.coordinates(rows, cols)
    vals = call.float_array("vals", vals, (1,), check_finite=check_finite, allow_empty=True)
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"{call.function}: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    return rows, cols, vals


def _check_n_rows(call: Call, n_rows: Any) -> int:
    if isinstance(n_rows, bool) or not isinstance(n_rows, (int, np.integer)) or n_rows < 1:
        raise ValueError(f"{call.function}: n_rows must be a positive integer, got {n_rows!r}")
    return int(n_rows)


class SparsePattern:
    """The positions of a sparse matrix, prepared once for repeated products with new values.

    Solvers multiply the same pattern by new residuals every iteration; on the CPU this keeps
    the row- and column-sorted orders (a counting sort each) so every later product is one pass.

    Parameters
    ----------
    rows, cols : (nnz,) int32/int64 arrays of one dtype (numpy, or CUDA arrays for the GPU).
        A position may repeat: as in scipy's COO format (``coo_matrix(...).tocsr()``), the
        values of repeated positions add up in every product.
    shape : (n_rows, n_cols) of one problem, two ints >= 1 (a float is a TypeError).
    offsets : (batch + 1,) entry ranges of the problems, for a batch of patterns (optional).
    """

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int], offsets: Optional[Any] = None):
        _checks.required("SparsePattern", rows=rows, cols=cols)
        call = resolve("SparsePattern", rows=rows, cols=cols, offsets=offsets)
        rows, cols = call.coordinates(rows, cols)
        shape = _checks.shape_2d("SparsePattern", "shape", shape)
        batch = 1 if offsets is None else int(offsets.shape[0]) - 1
        self._setup(call, rows, cols, shape, offsets, batch, orders=(False, True))

    @classmethod
    def _for_one_product(cls, call: Call, rows, cols, shape, offsets, batch: int, transpose: bool) -> "SparsePattern":
        pattern = cls.__new__(cls)
        pattern._setup(call, rows, cols, shape, offsets, batch, orders=(transpose,))
        return pattern

    def _setup(self, call: Call, rows, cols, shape, offsets, batch: int, orders) -> None:
        self._backend = call.backend
        self.rows, self.cols, self.shape = rows, cols, shape
        self.nnz, self.batch = int(rows.shape[0]), batch
        self.offsets = offsets_array(call, "offsets", offsets, batch, self.nnz)
        # Per orientation: CSR row pointers, the permutation to CSR order (None when the entries
        # are already in order) and the other index in CSR order.
        self._csr: dict[bool, tuple[Any, Any, Any]] = {}
        if call.on_device:
            return  # the GPU kernel checks index ranges as it reads them
        for transpose in orders:
            bad = self._order(transpose, call)
            if bad >= 0:
                name, keys, bound = ("cols", cols, shape[1]) if transpose else ("rows", rows, shape[0])
                raise_index_error(call, bad, [(name, keys, bound)])

    def _order(self, transpose: bool, call: Call) -> int:
        keys, others = (self.cols, self.rows) if transpose else (self.rows, self.cols)
        n_key = self.shape[1] if transpose else self.shape[0]
        indptr, perm, others_sorted = _csr_buffers(self.batch * n_key, self.nnz, others.dtype)
        bad, already_sorted = call.module.coo_to_csr(keys, others, None, self.offsets, n_key, indptr, perm,
                                                     others_sorted, None)
        if bad < 0:
            self._csr[transpose] = (indptr, None, others) if already_sorted else (indptr, perm, others_sorted)
        return bad

    def times_dense(self, vals: Any, B: Any, *, transpose: bool = False, check_finite: bool = True) -> Any:
        """S @ B (or S^T @ B when ``transpose``) for S with this pattern and values ``vals``.

        vals : (nnz,) float32/float64; B : (n_cols, r) or (batch, n_cols, r) of the same dtype
        ((n_rows, r) with ``transpose``). Returns (n_rows, r) ((n_cols, r) with ``transpose``),
        batched like B. The CPU result is bit-reproducible: each output row sums its entries in
        their input order, whatever the thread count. The GPU sums with atomics (not bitwise
        reproducible, same value to rounding).
        """
        call = resolve("SparsePattern.times_dense", vals=vals, B=B)
        if call.backend != self._backend:
            raise TypeError(f"SparsePattern.times_dense: the pattern lives on the {self._backend} backend "
                            f"but the arrays are {call.backend} arrays")
        vals = call.float_array("vals", vals, (1,), check_finite=check_finite)
        if vals.shape[0] != self.nnz:
            raise ValueError(f"SparsePattern.times_dense: vals has length {vals.shape[0]}, expected nnz = {self.nnz}")
        B3, batched = _dense_operand(call, B, check_finite)
        n_key, n_other = (self.shape[1], self.shape[0]) if transpose else self.shape
        if B3.shape[0] != self.batch or B3.shape[1] != n_other or (self.batch > 1 and not batched):
            wanted = f"({self.batch}, {n_other}, r)" if self.batch > 1 else f"({n_other}, r)"
            raise ValueError(f"SparsePattern.times_dense: B has shape {tuple(B.shape)}, expected {wanted} for a "
                             f"{'transposed ' if transpose else ''}product with a {self.shape} pattern")
        out = _multiply(call, self, vals, B3, transpose, n_key, n_other)
        return call.wrap(out if batched else out[0])


def _csr_buffers(n_rows: int, nnz: int, index_dtype):
    return np.empty(n_rows + 1, dtype=np.int64), np.empty(nnz, dtype=np.int64), np.empty(nnz, dtype=index_dtype)


def _multiply(call: Call, pattern: SparsePattern, vals, B3, transpose: bool, n_key: int, n_other: int):
    keys, others = (pattern.cols, pattern.rows) if transpose else (pattern.rows, pattern.cols)
    batch, _, r = B3.shape
    if call.on_device:
        out = call.xp.zeros((batch, n_key, r), dtype=B3.dtype)
        first_bad = call.xp.full(1, pattern.nnz, dtype=call.xp.int64)
        call.module.coo_times_dense(B3.dtype.name, keys.dtype.name, keys.data.ptr, others.data.ptr, vals.data.ptr,
                                    B3.data.ptr, pattern.offsets.data.ptr, batch, n_key, n_other, r, pattern.nnz,
                                    out.data.ptr, first_bad.data.ptr, call.stream())
        bad = int(first_bad.get()[0])
        bad = -1 if bad == pattern.nnz else bad
    else:
        indptr, perm, others_in_order = pattern._csr[transpose]
        out = np.empty((batch, n_key, r), dtype=B3.dtype)
        bad = call.module.csr_times_dense(indptr, perm, others_in_order, vals, B3, n_key, out)
    if bad >= 0:
        raise_index_error(call, bad, [("cols" if transpose else "rows", keys, n_key),
                                      ("rows" if transpose else "cols", others, n_other)])
    return out


def _one_shot_cpu(call: Call, rows, cols, vals, B3, offsets, n_key: int, transpose: bool):
    """Sort once, moving indices and values together, then one streaming pass."""
    keys, others = (cols, rows) if transpose else (rows, cols)
    batch, n_other, r = B3.shape
    indptr, perm, others_sorted = _csr_buffers(batch * n_key, rows.shape[0], others.dtype)
    vals_sorted = np.empty_like(vals)
    bad, already_sorted = call.module.coo_to_csr(keys, others, vals, offsets, n_key, indptr, perm, others_sorted,
                                                 vals_sorted)
    if bad >= 0:
        raise_index_error(call, bad, [("cols" if transpose else "rows", keys, n_key)])
    if already_sorted:
        others_sorted, vals_sorted = others, vals
    out = np.empty((batch, n_key, r), dtype=B3.dtype)
    bad = call.module.csr_times_dense(indptr, None, others_sorted, vals_sorted, B3, n_key, out)
    if bad >= 0:
        # Without a permutation the reported position is in sorted order: map it back.
        position = bad if already_sorted else int(perm[bad])
        raise_index_error(call, position, [("rows" if transpose else "cols", others, n_other)])
    return out


def sparse_times_dense(rows: Any, cols: Any, vals: Any, B: Any, n_rows: int, *, transpose: bool = False,
                       offsets: Optional[Any] = None, check_finite: bool = True) -> Any:
    """S @ B for the sparse S given by coordinates, or S^T @ B with ``transpose=True``.

    Parameters
    ----------
    rows, cols : (nnz,) int32/int64 arrays of one dtype: entry k sits at (rows[k], cols[k]).
        Repeated coordinates add up, as in scipy: the result equals
        ``scipy.sparse.coo_matrix((vals, (rows, cols)), shape).tocsr() @ B`` with duplicates
        summed (unlike ``lowrank_hpc.recover.als``, which treats them as separate observations).
    vals : (nnz,) float32/float64 values.
    B : (k, r) or (batch, k, r) dense array of the dtype of vals, C-contiguous, where k is the
        number of columns of S (of S^T with ``transpose``): cols < k (rows < k with ``transpose``).
    n_rows : rows of the result: S's row count, or its column count with ``transpose``.
    offsets : (batch + 1,) entry ranges of the problems when B is batched.
    check_finite : raise ValueError if vals or B holds NaN/inf.

    Returns
    -------
    (n_rows, r) or (batch, n_rows, r) array of the dtype of vals.

    On the CPU the entries are counting-sorted by output row (stable, so each row sums its
    entries in input order: bit-reproducible whatever the thread count); entries that come
    already sorted (CSR order, ``np.nonzero``) skip that sort. For many products with one
    pattern, build a :class:`SparsePattern` once. The GPU sums with atomics.
    """
    call = resolve("sparse_times_dense", rows=rows, cols=cols, vals=vals, B=B, offsets=offsets)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals, check_finite)
    B3, batched = _dense_operand(call, B, check_finite)
    n_rows = _check_n_rows(call, n_rows)
    n_other = B3.shape[1]
    shape = (n_other, n_rows) if transpose else (n_rows, n_other)
    if not batched and offsets is not None:
        raise ValueError("sparse_times_dense: offsets given but B is not batched (2-D)")
    if batched and offsets is None and B3.shape[0] != 1:
        raise ValueError(f"sparse_times_dense: B is batched (batch={B3.shape[0]}) so offsets (length batch + 1) "
                         "must say which entries belong to which problem")
    offsets = offsets_array(call, "offsets", offsets, int(B3.shape[0]), int(rows.shape[0]))
    if call.on_device:
        pattern = SparsePattern._for_one_product(call, rows, cols, shape, offsets, int(B3.shape[0]), transpose)
        out = _multiply(call, pattern, vals, B3, transpose, n_rows, n_other)
    else:
        out = _one_shot_cpu(call, rows, cols, vals, B3, offsets, n_rows, transpose)
    return call.wrap(out if batched else out[0])
