"""Sparse (coordinate form) times dense: the adjoint of the sampled product.

A completion gradient is two calls: ``sparse_times_dense(rows, cols, resid, V, m)`` and
``sparse_times_dense(rows, cols, resid, U, n, transpose=True)``.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import Call, is_device_array, offsets_array, offsets_input, resolve, sum_of_squares
from ._csr_order import csr_order
from ._factors import checked_result, factor_pair, raise_index_error
from .sampled_product import _sampled, csr_sampled, row_order_pays


# SparsePattern.sampled_product takes shuffled entries in row order from factor rows this long.
ROW_ORDER_MIN_ROW_BYTES = 256


def _oriented(rows: Any, cols: Any, transpose: bool) -> tuple[Any, Any, str, str]:
    """(keys, others, key_name, other_name): the index of the result's rows (rows; cols with
    ``transpose``) and the other index, with the argument names an IndexError gives them."""
    return (cols, rows, "cols", "rows") if transpose else (rows, cols, "rows", "cols")


def _dense_operand(call: Call, B: Any, check_finite: bool):
    B = call.float_array("B", B, (2, 3), check_finite=check_finite, halves=True)
    batched = B.ndim == 3
    return (B if batched else B.reshape(1, *B.shape)), batched


def _check_coordinates(call: Call, rows: Any, cols: Any, vals: Any, check_finite: bool):
    rows, cols = call.coordinates(rows, cols, allow_empty=True)
    vals = call.float_array("vals", vals, (1,), check_finite=check_finite, allow_empty=True, halves=True)
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"{call.function}: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    return rows, cols, vals


def _snapshot(call: Call, name: str, kept: Any, given: Any) -> Any:
    """kept (a validated index array), copied when it is still the caller's memory ``given``."""
    if given is None or isinstance(given, (list, tuple)) or call.on_device != is_device_array(given):
        return kept  # nothing given, or its conversion (a list; host offsets moved to the GPU) made kept new
    return kept.copy() if call.xp.may_share_memory(kept, call._as_backend_array(name, given)) else kept


class SparsePattern:
    """The positions of a sparse matrix, prepared once for repeated products with new values.

    Solvers multiply the same pattern by new residuals every iteration; this keeps the row- and
    column-sorted (CSR) orders, built once by a stable counting sort (CPU) or a stable radix
    sort (GPU), so every later product is one pass that sums each output row in input order.

    Parameters
    ----------
    rows, cols : (nnz,) integer arrays (any integer dtype and layout; numpy, or CUDA arrays for
        the GPU). A position may repeat: as in scipy's COO format (``coo_matrix(...).tocsr()``),
        the values of repeated positions add up in every product.
    shape : (n_rows, n_cols) of one problem, two ints >= 1 (a float is a TypeError).
    offsets : (batch + 1,) entry ranges of the problems, for a batch of patterns (optional).

    copy : True (default): the pattern is a snapshot taken at construction: rows, cols and
        offsets are copied when they are still the caller's memory (input that had to be
        converted, e.g. a list or int16, is copied once by that conversion), so changing those
        arrays afterwards changes no product. False keeps the caller's int32/int64 arrays (no
        copy: 16 bytes an entry less), which must then not change while the pattern is used.
    """

    def __init__(self, rows: Any, cols: Any, shape: tuple[int, int], offsets: Optional[Any] = None, *,
                 copy: bool = True):
        _checks.required("SparsePattern", rows=rows, cols=cols)
        call = resolve("SparsePattern", rows=rows, cols=cols, offsets=offsets)
        given = {"rows": rows, "cols": cols, "offsets": offsets}
        shape = _checks.shape_2d("SparsePattern", "shape", shape)
        rows, cols = call.coordinates(rows, cols, shape=shape)  # the range an IndexError names
        if offsets is not None:
            offsets = offsets_input(call, "offsets", offsets)  # a 1-D index array (or the error naming it)
            if offsets.shape[0] < 2:
                raise ValueError(f"SparsePattern: offsets has length {offsets.shape[0]}, expected batch + 1 >= 2")
        batch = 1 if offsets is None else int(offsets.shape[0]) - 1
        offsets = offsets_array(call, "offsets", offsets, batch, int(rows.shape[0]))
        if _checks.flag("SparsePattern", "copy", copy):  # the CSR orders built below are copies: so must the rest be
            rows, cols, offsets = (_snapshot(call, name, array, given[name]) for name, array in
                                   (("rows", rows), ("cols", cols), ("offsets", offsets)))
        self._setup(call, rows, cols, shape, offsets, batch, orders=(False, True))

    def _setup(self, call: Call, rows, cols, shape, offsets, batch: int, orders) -> None:
        self._backend = call.backend
        self.rows, self.cols, self.shape = rows, cols, shape
        self.nnz, self.batch, self.offsets = int(rows.shape[0]), batch, offsets
        # Per orientation: CSR row pointers, the permutation to CSR order (None when the entries
        # are already in order) and the other index in CSR order.
        self._csr: dict[bool, tuple[Any, Any, Any]] = {}
        self._unread_status = None  # solver_product's status word: written by the kernel, never read
        self._in_place_bad = None  # solver_product's in-place status words (np.ndarray (2,) once used)
        for transpose in orders:
            keys, others, key_name, _ = _oriented(rows, cols, transpose)
            n_key = shape[1] if transpose else shape[0]
            indptr, perm, others_sorted, _ = csr_order(call, keys, others, None, self.offsets, n_key, key_name,
                                                       size_name="shape[1]" if transpose else "shape[0]")
            self._csr[transpose] = (indptr, perm, others_sorted)

    def times_dense(self, vals: Any, B: Any, *, transpose: bool = False, check_finite: bool = True) -> Any:
        """S @ B (or S^T @ B when ``transpose``) for S with this pattern and values ``vals``.

        vals : (nnz,) float32/float64 (or float16/bfloat16, summed in float32 as in
        :func:`sparse_times_dense`); B : (n_cols, r) or (batch, n_cols, r) of the same dtype
        ((n_rows, r) with ``transpose``). Returns (n_rows, r) ((n_cols, r) with ``transpose``),
        batched like B. Each output row sums its entries in their input order, on both
        backends: bit-reproducible whatever the thread count.
        """
        call = resolve("SparsePattern.times_dense", vals=vals, B=B)
        transpose = _checks.flag(call.function, "transpose", transpose)
        check_finite = _checks.flag(call.function, "check_finite", check_finite)
        if call.backend != self._backend:
            raise TypeError(f"SparsePattern.times_dense: the pattern lives on the {self._backend} backend "
                            f"but the arrays are {call.backend} arrays")
        vals = call.float_array("vals", vals, (1,), check_finite=check_finite, halves=True)
        if vals.shape[0] != self.nnz:
            raise ValueError(f"SparsePattern.times_dense: vals has length {vals.shape[0]}, expected nnz = {self.nnz}")
        B3, batched = _dense_operand(call, B, check_finite)
        n_key, n_other = (self.shape[1], self.shape[0]) if transpose else self.shape
        if B3.shape[0] != self.batch or B3.shape[1] != n_other or (self.batch > 1 and not batched):
            wanted = f"({self.batch}, {n_other}, r)" if self.batch > 1 else f"({n_other}, r)"
            raise ValueError(f"SparsePattern.times_dense: B has shape {tuple(B.shape)}, expected {wanted} for a "
                             f"{'transposed ' if transpose else ''}product with a {self.shape} pattern")
        if transpose not in self._csr:  # a one-product pattern asked for the other orientation
            raise ValueError("SparsePattern.times_dense: this pattern was prepared for the other orientation")
        indptr, perm, others = self._csr[transpose]
        keys, given_others, key_name, other_name = _oriented(self.rows, self.cols, transpose)
        out = None if perm is None else _in_place_product(call, keys, given_others, vals, B3, n_key, key_name,
                                                          other_name)
        if out is None:
            out = csr_product(call, indptr, perm, others, vals, B3, n_key, [(other_name, given_others, n_other)])
        out = checked_result(call, out, check_finite)
        return call.wrap(out if batched else out[0])

    def sampled_product(self, U: Any, V: Any, *, check_finite: bool = True) -> Any:
        """vals[k] = <U[b, rows[k]], V[b, cols[k]]> at every entry of this pattern, in its given
        order: :func:`lowrank_hpc.ops.sampled_product` on the pattern's coordinates, equal to it
        bit for bit (each entry's dot is the same code), for a pattern used many times.

        U : (n_rows, r) or (batch, n_rows, r) float32/float64 (or float16/bfloat16, summed in
        float32 as in ``ops.sampled_product``); V : (n_cols, r) or (batch, n_cols, r), same dtype
        and batching. Returns (nnz,) of their dtype. On the CPU the entries are taken in the row
        order kept here, so a U row is read once per row instead of once per entry, and each
        result is written to its entry's place: for entries given in random order that halves
        the factor rows a call reads at random, and is done from factor rows of 256 bytes on
        (float32 r >= 64), where it pays. Elsewhere (shorter rows given out of order, the GPU,
        16-bit factors, a pattern prepared for the transposed product only) the coordinate
        kernel runs on the kept arrays.
        IndexError names the first entry (given order) whose column is out of range.
        """
        call = resolve("SparsePattern.sampled_product", U=U, V=V)
        check_finite = _checks.flag(call.function, "check_finite", check_finite)
        if call.backend != self._backend:
            raise TypeError(f"SparsePattern.sampled_product: the pattern lives on the {self._backend} backend "
                            f"but the arrays are {call.backend} arrays")
        U3, V3, batched = factor_pair(call, U, V, check_finite=check_finite, halves=True)
        m, n = self.shape
        if U3.shape[:2] != (self.batch, m) or V3.shape[:2] != (self.batch, n) or (self.batch > 1 and not batched):
            lead = f"{self.batch}, " if self.batch > 1 else ""
            given_u, given_v = (U3.shape, V3.shape) if batched else (U3.shape[1:], V3.shape[1:])
            raise ValueError(f"SparsePattern.sampled_product: U has shape {tuple(given_u)} and V {tuple(given_v)}, "
                             f"expected ({lead}{m}, r) and ({lead}{n}, r) for a {self.shape} pattern")
        return call.wrap(checked_result(call, self._sampled_values(call, U3, V3), check_finite))

    def solver_residual(self, call: Call, U: Any, V: Any, y: Any) -> tuple[Any, float]:
        """(z, sum of z^2 in float64) with z = sampled_product(U, V) - y: a completion solver's
        residual and loss in one pass on the CPU (no product array, no float64 copy of z).
        For a loop over one problem (batch 1) whose operands were validated once at its entry:
        U (n_rows, r) and V (n_cols, r) C-contiguous of one float dtype, y (nnz,) of that dtype,
        on this pattern's backend; z matches ``sampled_product(U, V) - y`` bit for bit."""
        return self._sampled_values(call, U[None], V[None], y)

    def _sampled_values(self, call: Call, U3: Any, V3: Any, y: Any = None) -> Any:
        """The sampled product of validated (batch, rows, r) factors, or with y the residual
        and its float64 sum of squares."""
        row_order = self._csr.get(False)
        # Entries given out of row order are worth reordering from factor rows of 256 bytes on
        # (1e6 shuffled entries of 10,000 x 10,000, float32: r = 256 15 against 31 ms, r = 64 5.6
        # against 6.8); below, the scattered writes cost more than the U rows they save (r = 8:
        # 2.4 against 2.1 ms). In row order the pattern's loop is ahead at every rank.
        if row_order is not None and row_order_pays(call, U3, 0 if row_order[1] is None else ROW_ORDER_MIN_ROW_BYTES):
            indptr, perm, others = row_order
            return csr_sampled(call, indptr, perm, others, U3, V3, self.cols, y)
        out = _sampled(call, U3, V3, self.rows, self.cols, self.offsets)
        if y is None:
            return out
        z = out - y
        return z, sum_of_squares(call.xp, z)

    def csr_arrays(self, transpose: bool = False) -> tuple[Any, Any]:
        """(indptr, indices) of the row-sorted (with ``transpose`` column-sorted) order: indptr
        (batch * n_rows + 1,) int64 and the column (row) indices in that order (their given dtype), each
        row's entries in their input order (for a caller's own kernels over the same pattern)."""
        indptr, _, others = self._csr[_checks.flag("SparsePattern.csr_arrays", "transpose", transpose)]
        return indptr, others

    def keys_in_csr_order(self, transpose: bool = False) -> Any:
        """(nnz,) each entry's row (with ``transpose``: its column) in the CSR order of that
        orientation: the index its indptr compresses, expanded (one gather, or the pattern's own
        array when the entries are already in that order), in the indices' dtype."""
        transpose = _checks.flag("SparsePattern.keys_in_csr_order", "transpose", transpose)
        keys, perm = (self.cols if transpose else self.rows), self._csr[transpose][1]
        return keys if perm is None else keys[perm]

    def in_csr_order(self, vals: Any, transpose: bool = False) -> Any:
        """vals (nnz,) moved into the CSR order of one orientation (vals itself when the entries
        are already in that order): a solver that multiplies by the same values many times keeps
        this copy and passes ``in_order=True`` to solver_product, so the kernel reads the values
        in sequence instead of through the permutation (2.5x faster for the transposed product
        of a 20,000 x 5,000 CSR matrix with 1% nonzero, k = 20)."""
        if not hasattr(vals, "shape"):  # a solver's own array, not converted here: lists are refused by name
            raise TypeError(f"SparsePattern.in_csr_order: vals must be an array of this pattern's backend, "
                            f"got {type(vals).__name__}")
        if tuple(vals.shape) != (self.nnz,):  # solver_product reads nnz values from the result, unchecked
            raise ValueError(f"SparsePattern.in_csr_order: vals has shape {tuple(vals.shape)}, expected ({self.nnz},)")
        perm = self._csr[_checks.flag("SparsePattern.in_csr_order", "transpose", transpose)][1]
        return vals if perm is None else vals[perm]  # a gather: a new contiguous array

    def solver_product(self, call: Call, vals: Any, B: Any, transpose: bool = False, in_order: bool = False,
                       out: Optional[Any] = None) -> Any:
        """times_dense for a solver's loop over one problem (batch 1), whose operands were
        validated once at its entry: vals (nnz,) and a contiguous B (n_cols, r) ((n_rows, r) with ``transpose``) of one dtype
        on this pattern's backend. No checks and no status read (every index was checked when
        the pattern was built), so an iteration costs the kernel and one allocation. With
        ``in_order`` vals are already in this orientation's CSR order (``in_csr_order``). ``out``:
        a C-contiguous (n_rows, r) array of B's dtype to write into, which a loop reuses (a fresh
        multi-megabyte result costs its page faults on every call: 0.3 of 2.6 ms at 20,000 x 20)."""
        indptr, perm, others = self._csr[transpose]
        if in_order:
            perm = None
        n_key = self.shape[1] if transpose else self.shape[0]
        result = call.xp.empty((n_key, B.shape[1]), dtype=B.dtype) if out is None else out
        if perm is not None:  # shuffled values: in place where it pays (every index was checked at construction)
            if self._in_place_bad is None:
                self._in_place_bad = np.empty(2, dtype=np.int64)  # its status words, reused: no allocation a call
            keys, given_others, key_name, other_name = _oriented(self.rows, self.cols, transpose)
            if _in_place_product(call, keys, given_others, vals, B[None], n_key, key_name, other_name,
                                 out=result[None], bad=self._in_place_bad) is not None:
                return result
        if self._unread_status is None:
            self._unread_status = call.status(int(others.shape[0]))
        call.module.csr_times_dense(indptr, perm, others, vals, B[None], n_key, result[None], self._unread_status,
                                    call.stream())
        return result


def csr_product(call: Call, indptr, perm, others, vals, B3, n_key: int, other_check, input_order: bool = True):
    """(batch, n_key, r) = S @ B3 for S in CSR form; IndexError for an out-of-range other index
    (``other_check`` = [(name, indices in input order, bound)]). ``input_order`` False: the
    entries were moved into CSR order without a permutation kept, so the error names the first
    bad entry found in the input's order."""
    batch, _, r = B3.shape
    out = call.xp.empty((batch, n_key, r), dtype=B3.dtype)
    first_bad = call.status(int(others.shape[0]))
    call.module.csr_times_dense(indptr, perm, others, vals, B3, n_key, out, first_bad, call.stream())
    bad = call.read(first_bad)[0]
    if bad < others.shape[0]:
        if not input_order:  # the error path only: one pass over the input's indices
            _, indices, bound = other_check[0]
            bad = int(call.to_host(call.xp.flatnonzero((indices < 0) | (indices >= bound))[:1])[0])
        raise_index_error(call, bad, other_check)
    return out


@_checks.constrained(n_rows=_checks.positive_int, transpose=_checks.flag, check_finite=_checks.flag)
def sparse_times_dense(rows: Any, cols: Any, vals: Any, B: Any, n_rows: int, *, transpose: bool = False,
                       offsets: Optional[Any] = None, check_finite: bool = True) -> Any:
    """S @ B for the sparse S given by coordinates, or S^T @ B with ``transpose=True``.

    Parameters
    ----------
    rows, cols : (nnz,) integer arrays (any integer dtype and layout): entry k sits at
        (rows[k], cols[k]). Repeated coordinates add up, as in scipy: the result equals
        ``scipy.sparse.coo_matrix((vals, (rows, cols)), shape).tocsr() @ B`` with duplicates
        summed (unlike ``lowrank_hpc.recover.als``, which treats them as separate observations).
    vals : (nnz,) float32/float64 values, or float16/bfloat16 (``ml_dtypes.bfloat16`` in numpy;
        float16 in CuPy): low-precision storage, read and summed in float32, each output entry
        rounded once (to nearest even) to the format.
    B : (k, r) or (batch, k, r) dense array of the dtype of vals, any layout, where k is the
        number of columns of S (of S^T with ``transpose``): cols < k (rows < k with ``transpose``).
    n_rows : rows of the result: S's row count, or its column count with ``transpose``.
    offsets : (batch + 1,) entry ranges of the problems when B is batched (host or B's device).
    check_finite : raise ValueError if vals or B holds NaN/inf, and FloatingPointError if a result
        overflows the dtype's range to inf (one pass over the result).

    Returns
    -------
    (n_rows, r) or (batch, n_rows, r) array of the dtype of vals.

    Each output row sums its entries in input order: bit-reproducible whatever the thread count.
    The entries are sorted by output row for that (stable: a counting sort on the CPU, a radix
    sort on the GPU), except on the CPU where they come sorted already (CSR order,
    ``np.nonzero``) or where shuffled entries of rank r <= 16 (float32; 8 in float64) add into a
    result of at most 4 MiB in place, on one thread, on machines running at most 4 OpenMP
    threads (the same numbers, bit for bit). For many products with one pattern, build a
    :class:`SparsePattern` once.
    """
    call = resolve("sparse_times_dense", rows=rows, cols=cols, vals=vals, B=B, offsets=offsets)
    rows, cols, vals = _check_coordinates(call, rows, cols, vals, check_finite)
    B3, batched = _dense_operand(call, B, check_finite)
    n_other = B3.shape[1]
    if not batched and offsets is not None:
        raise ValueError("sparse_times_dense: offsets given but B is not batched (2-D)")
    if batched and offsets is None and B3.shape[0] != 1:
        raise ValueError(f"sparse_times_dense: B is batched (batch={B3.shape[0]}) so offsets (length batch + 1) "
                         "must say which entries belong to which problem")
    offsets = offsets_array(call, "offsets", offsets, int(B3.shape[0]), int(rows.shape[0]))
    if rows.shape[0] == 0:  # no entry: the zero matrix, with no kernel to launch
        out = call.xp.zeros((B3.shape[0], n_rows, B3.shape[2]), dtype=B3.dtype)
        return call.wrap(out if batched else out[0])
    keys, others, key_name, other_name = _oriented(rows, cols, transpose)
    out = _in_place_product(call, keys, others, vals, B3, n_rows, key_name, other_name)
    if out is None:
        # Sort once, moving indices and values together (no permutation kept: it cost 38% of a
        # shuffled sort's time), then one streaming pass in CSR order.
        indptr, _, others_sorted, vals_sorted = csr_order(call, keys, others, vals, offsets, n_rows, key_name,
                                                          keep_perm=False)
        out = csr_product(call, indptr, None, others_sorted, vals_sorted, B3, n_rows,
                          [(other_name, others, n_other)], input_order=False)
    out = checked_result(call, out, check_finite)
    return call.wrap(out if batched else out[0])


def _in_place_product(call: Call, keys, others, vals, B3, n_key: int, key_name: str, other_name: str,
                      out: Optional[Any] = None, bad: Optional[np.ndarray] = None):
    """(1, n_key, r) = S @ B3[0] by the CPU's in-place product where it pays (the kernel's rule:
    cpu::in_place_product_pays and shuffled keys; the sorted path's numbers), into ``out``
    (1, n_key, r) C-contiguous if given, its status words into ``bad`` (2,) int64 if given; or
    None, nothing written (and for a batch or 16-bit storage)."""
    r = int(B3.shape[2])
    if (not hasattr(call.module, "coo_times_dense_in_place") or B3.shape[0] != 1
            or B3.dtype not in (np.float32, np.float64)
            or not call.module.in_place_product_pays(n_key, r, B3.dtype.itemsize)):
        return None
    out = np.empty((1, n_key, r), dtype=B3.dtype) if out is None else out
    bad = np.empty(2, dtype=np.int64) if bad is None else bad
    if not call.module.coo_times_dense_in_place(keys, others, vals, B3[0], out[0], bad):
        return None  # the first keys came in order: the sorted path's check and CSR product
    nnz = int(keys.shape[0])
    if bad[0] < nnz:  # as csr_order: the first bad key, then the first bad other index
        raise_index_error(call, int(bad[0]), [(key_name, keys, n_key)])
    if bad[1] < nnz:
        raise_index_error(call, int(bad[1]), [(other_name, others, int(B3.shape[1]))])
    return out
