"""A 0/1 matrix (or a batch of them) as Boolean matrix factorization reads it: validated once at
entry, then only multiplied by thin factors (A @ F and A^T @ F). On the CPU a dense A is
bit-packed once (A and A^T, 1/64 of a float64 copy each) and a sparse one listed once by the
int32 column indices of its ones (A and A^T in CSR order), and the products sum the factor rows of
its ones (cpp/src/binary_product_cpu.cpp); too large for that, or on the GPU, a dense A goes to
the vendor GEMM and a sparse one (never densified) to the library's CSR kernel (A @ F) and
scipy's / cupyx's CSC product (A^T @ F)."""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from .._arrays import Call, is_device_array, to_numpy
from ..ops import SparsePattern


# Pack a dense A (index a sparse one) when its two packings (index lists) take at most this many
# bytes (a 50,000 x 5,000 A takes 62 MB packed; with 1% ones, 21 MB indexed); past it, the GEMM or
# the sparse products.
_PACKED_MAX_BYTES = 1 << 28
# The packed products gather the factor's rows at random while it takes at most this many bytes
# (it stays in L2), else stream it and scatter into the output (a gathered 50,000 x 10 float64
# factor misses the cache on most ones).
_GATHER_MAX_BYTES = 1 << 19
# The indexed products (sparse A) gather up to this many bytes of factor: with each row's ones
# listed, a gather from the last-level cache beats the scatter's partial sums once two threads
# share the work (A^T U at 50,000 x 5,000, 1% ones, U 4 MB: 3.2 against 4.5 ms).
_INDEXED_GATHER_MAX_BYTES = 1 << 23


def is_sparse(A: Any) -> bool:
    """True for a scipy.sparse or cupyx.scipy.sparse matrix or array."""
    for name in ("scipy.sparse", "cupyx.scipy.sparse"):
        module = sys.modules.get(name)
        if module is not None and module.issparse(A):
            return True
    return False


def _first_bad(function: str, name: str, bad_positions, values, count: int, shape: tuple[int, ...]) -> ValueError:
    """The error for entries that are neither 0 nor 1: the first one by position, and how many."""
    where = ", ".join(str(int(i)) for i in bad_positions)
    value = values.item() if hasattr(values, "item") else values
    more = f" (and {count - 1} more)" if count > 1 else ""
    return ValueError(f"{function}: {name} must be a 0/1 (Boolean) matrix; entry ({where}) is {value!r}{more} "
                      f"in {name} of shape {shape}; binarize it first (e.g. {name} > threshold)")


class BinaryMatrix:
    """A validated 0/1 matrix: dense (batch, n, m) in the factors' float dtype, or sparse
    (batch 1) as the positions of its ones (possibly none: the solvers refuse a sparse matrix
    without ones, a fold-in of new rows takes it).

    Parameters
    ----------
    function, name : for messages.
    A : a 2-D array-like (numpy, list, CUDA array) of any real or Boolean dtype, or a
        scipy.sparse / cupyx.scipy.sparse matrix; with ``batched`` a 3-D dense (batch, n, m).
    dtype : float32/float64 for the factors; None: A's float dtype, else float64.
    backend : "cpu" or "cuda" to move A there; None keeps it where it is.
    """

    def __init__(self, function: str, name: str, A: Any, *, dtype: Optional[Any] = None, batched: bool = False,
                 backend: Optional[str] = None):
        if A is None:
            raise TypeError(f"{function}: {name} is None; pass a 0/1 matrix (dense array or scipy.sparse)")
        self.function = function
        self.sparse = is_sparse(A)
        if self.sparse and batched:
            raise TypeError(f"{function}: {name} must be a dense (batch, n, m) array; sparse matrices are "
                            "factored one at a time")
        on_device = (backend == "cuda") if backend is not None else (
            is_device_array(A) or type(A).__module__.startswith("cupyx"))
        self.call = Call(function=function, backend="cuda" if on_device else "cpu")
        if self.sparse:
            self._from_sparse(name, A, dtype)
        else:
            self._from_dense(name, A, dtype, 3 if batched else 2)
        self.batch = 1 if self.sparse else int(self.dense.shape[0])
        self.packed = None if self.sparse else self._pack()
        self.indexed = self._index() if self.sparse else None
        self.pattern = None  # a sparse A's vendor products, built when first needed

    # ------------------------------------------------------------------ conversion
    def _float_dtype(self, given: Any, found: np.dtype) -> np.dtype:
        if given is not None:
            dtype = np.dtype(given)
            if dtype not in (np.float32, np.float64):
                raise TypeError(f"{self.function}: dtype must be float32 or float64, got {dtype}")
            return dtype
        return found if found in (np.float32, np.float64) else np.dtype(np.float64)

    def _check_kind(self, name: str, dtype: np.dtype) -> None:
        if dtype.kind == "c":
            raise TypeError(f"{self.function}: {name} is complex; pass a real 0/1 matrix")
        if dtype.kind not in "biuf":
            raise TypeError(f"{self.function}: {name} must hold numbers 0 and 1 (bool, integer or float), got {dtype}")

    def _from_dense(self, name: str, A: Any, dtype: Any, ndim: int) -> None:
        call, xp = self.call, self.call.xp
        if call.on_device:  # a host array is moved once; a CUDA array is viewed
            array = call._as_backend_array(name, A) if is_device_array(A) else call.xp.asarray(np.asarray(A))
        else:
            array = to_numpy(A)
            if array.dtype == object:
                try:
                    array = array.astype(np.float64)
                except (TypeError, ValueError):
                    raise TypeError(f"{self.function}: {name} must hold numbers 0 and 1, got object values that "
                                    "are not numbers") from None
        self._check_kind(name, array.dtype)
        if array.ndim != ndim:
            raise ValueError(f"{self.function}: {name} must have {ndim} dimensions, got shape {tuple(array.shape)}")
        if array.size == 0:
            raise ValueError(f"{self.function}: {name} is empty (shape {tuple(array.shape)}); a matrix with at least "
                             "one row and one column is needed")
        self.dtype = self._float_dtype(dtype, array.dtype)
        if array.dtype.kind == "f":
            nan = xp.isnan(array)
            if bool(nan.any()):
                raise ValueError(f"{self.function}: {name} contains {int(nan.sum())} NaN value(s); a Boolean "
                                 "matrix has only 0 and 1 (fill or drop the missing entries)")
        if array.dtype.kind != "b":
            bad = (array != 0) & (array != 1)
            count = int(bad.sum())
            if count:
                position = [int(i) for i in call.to_host(xp.argwhere(bad)[0])]
                raise _first_bad(self.function, name, position, call.to_host(array[tuple(position)]), count,
                                 tuple(array.shape))
        dense = xp.ascontiguousarray(array, dtype=self.dtype)
        self.dense = dense if ndim == 3 else dense[None]
        self.shape = tuple(int(s) for s in self.dense.shape[1:])
        self.ones = call.to_host(self.dense.sum(axis=(1, 2), dtype=np.float64)).astype(np.float64)

    def _from_sparse(self, name: str, A: Any, dtype: Any) -> None:
        call, xp = self.call, self.call.xp
        coo = A.tocoo(copy=True)
        if len(coo.shape) != 2:
            raise ValueError(f"{self.function}: {name} must be 2-D, got shape {coo.shape}")
        self._check_kind(name, coo.dtype)
        shape = tuple(int(s) for s in coo.shape)
        if shape[0] == 0 or shape[1] == 0:
            raise ValueError(f"{self.function}: {name} is empty (shape {shape}); a matrix with at least one row and "
                             "one column is needed")
        self.dtype = self._float_dtype(dtype, np.dtype(coo.dtype))
        coo.sum_duplicates()  # repeated coordinates add up, as in scipy: two ones make a 2, an error below
        data = coo.data
        if data.dtype.kind == "f" and bool(xp.isnan(data).any()):
            raise ValueError(f"{self.function}: {name} contains {int(xp.isnan(data).sum())} NaN value(s); a "
                             "Boolean matrix has only 0 and 1")
        keep = data != 0  # stored zeros are zeros
        rows, cols, data = coo.row[keep], coo.col[keep], data[keep]
        bad = data != 1
        count = int(bad.sum())
        if count:
            first = int(call.to_host(xp.argmax(bad)))
            raise _first_bad(self.function, name, (call.to_host(rows[first]), call.to_host(cols[first])),
                             call.to_host(data[first]), count, shape)
        rows, cols = xp.asarray(rows, dtype=np.int64), xp.asarray(cols, dtype=np.int64)
        self.rows, self.cols, self.shape = rows, cols, shape
        self.ones = np.array([float(rows.shape[0])])

    def _sparse_products(self) -> None:
        """The CSR pattern for A @ F and the CSC matrix for A^T @ F of a sparse A, once."""
        if self.pattern is not None:
            return
        rows, cols, xp = self.rows, self.cols, self.call.xp
        self.pattern = SparsePattern(rows, cols, self.shape, copy=False)
        self.vals = xp.ones(rows.shape[0], dtype=self.dtype)
        # A^T F by the vendor's CSC product, which streams F's rows and scatters into the small
        # output; a CSR gather would read F (n x k, n large) at random (3x slower at 50,000 rows).
        library = sys.modules["cupyx.scipy.sparse" if self.call.on_device else "scipy.sparse"]
        self.transposed = library.csr_matrix((self.vals, (rows, cols)), shape=self.shape).T

    def _compact_form_allowed(self, size: int) -> bool:
        """The core's products apply: on the CPU, in a module that has them, within the budget."""
        return (not self.call.on_device and hasattr(self.call.module, "binary_indexed_times_dense")
                and size <= _PACKED_MAX_BYTES)

    def _pack(self) -> Optional[tuple[Any, Any]]:
        """(A, A^T) of a dense A bit-packed by rows, (batch, n, ceil(m / 64)) and (batch, m,
        ceil(n / 64)) int64 words, when allowed (see _compact_form_allowed); else None."""
        n, m = self.shape
        if not self._compact_form_allowed(8 * self.batch * (n * -(-m // 64) + m * -(-n // 64))):
            return None
        b, i, j = (index.astype(np.int64, copy=False) for index in np.nonzero(self.dense))
        packed = []
        for key, other, size, width in ((i, j, n, m), (j, i, m, n)):
            words = np.empty((self.batch, size, -(-width // 64)), dtype=np.int64)
            bad = self.call.module.pack_binary(b * size + key, np.ascontiguousarray(other), self.batch * size, width,
                                               words.reshape(self.batch * size, -1))
            if bad >= 0:  # the indices were validated: a failure here is a bug, never a wrong product
                raise AssertionError(f"{self.function}: packing entry {bad} of A failed")
            packed.append(words)
        return packed[0], packed[1]

    def _index(self) -> Optional[tuple[tuple[Any, Any], tuple[Any, Any]]]:
        """((indptr, indices) of A, the same of A^T) in CSR order, indptr int64 and indices int32,
        for a sparse A when allowed (see _compact_form_allowed) and its sizes fit int32; else None."""
        n, m = self.shape
        nnz = int(self.rows.shape[0])
        if nnz == 0 or max(n, m) >= 2**31 or not self._compact_form_allowed(8 * nnz + 8 * (n + m + 2)):
            return None
        # The library's stable counting sort into both CSR orders (the ones of a row in increasing
        # column order, as in the packed form: scipy's sum_duplicates sorted them by row, then column).
        pattern = SparsePattern(self.rows, self.cols, self.shape, copy=False)
        (indptr, indices), (indptr_t, indices_t) = pattern.csr_arrays(False), pattern.csr_arrays(True)
        return (indptr, indices.astype(np.int32)), (indptr_t, indices_t.astype(np.int32))

    def _packed_gathers(self, F) -> bool:
        """Whether the core's product gathers F's rows (F stays in cache); past that it streams
        them and scatters into the output."""
        return F[0].nbytes <= (_INDEXED_GATHER_MAX_BYTES if self.indexed is not None else _GATHER_MAX_BYTES)

    def _core_times(self, F, transpose: bool):
        """A @ F, or A^T @ F with ``transpose``, from the packings (dense A) or index lists (sparse
        A): gathering F's rows (of the ones of each output row) while F stays in cache, else
        scattering them (streaming F, the output in cache)."""
        n, m = self.shape
        F = np.ascontiguousarray(F)
        gather = self._packed_gathers(F)
        # A^T F gathers over A^T's rows or scatters over A's; A F likewise.
        by_a = gather != transpose
        if self.indexed is not None:
            indptr, indices = self.indexed[0 if by_a else 1]
            out = np.empty((m if transpose else n, F.shape[2]), dtype=F.dtype)
            self.call.module.binary_indexed_times_dense(indptr, indices, m if by_a else n, F[0], out,
                                                        transpose=not gather)
            return out[None]
        by_rows, by_cols = self.packed
        out = np.empty((F.shape[0], m if transpose else n, F.shape[2]), dtype=F.dtype)
        self.call.module.binary_times_dense(by_rows if by_a else by_cols, m if by_a else n, F, out,
                                            transpose=not gather)
        return out

    # ------------------------------------------------------------------ products
    def times(self, F):
        """A @ F for F (batch, m, k): (batch, n, k); past the core's compact forms, a sparse A by
        the library's CSR kernel (OpenMP / CUDA), gathering rows of the small F."""
        if self.packed is not None or self.indexed is not None:
            return self._core_times(F, False)
        if self.sparse and self.ones[0] == 0:  # no ones (new rows in a fold-in): nothing to index
            return self.call.xp.zeros((1, self.shape[0], F.shape[2]), dtype=F.dtype)
        if self.sparse:
            self._sparse_products()
            return self.pattern.solver_product(self.call, self.vals, F[0])[None]
        if self.batch == 1:  # a plain 2-D GEMM: the vendor's fastest path
            return (self.dense[0] @ F[0])[None]
        return self.call.xp.matmul(self.dense, F)

    def transpose_times(self, F):
        """A^T @ F for F (batch, n, k): (batch, m, k)."""
        if self.packed is not None or self.indexed is not None:
            return self._core_times(F, True)
        if self.sparse and self.ones[0] == 0:
            return self.call.xp.zeros((1, self.shape[1], F.shape[2]), dtype=F.dtype)
        if self.sparse:
            self._sparse_products()
            return self.call.xp.ascontiguousarray(self.transposed @ F[0])[None]
        if self.batch == 1:
            return (self.dense[0].T @ F[0])[None]
        return self.call.xp.matmul(self.dense.transpose(0, 2, 1), F)

    def fingerprint_parts(self) -> tuple:
        return (self.rows, self.cols, self.shape) if self.sparse else (self.dense,)
