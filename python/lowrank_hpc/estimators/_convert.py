"""The estimators' one conversion layer: where an estimator computes (its backend, or where the
arrays live) and its inputs converted the way scikit-learn's ``check_array`` converts them
(array-likes, any layout, integer and object dtypes to float64; float32 and float64 kept), by the
library's conversion layer (lowrank_hpc._arrays) underneath."""
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np

from .. import _backend, _checks
from .._arrays import for_backend, host_array, is_device_array
from ..recover.binary_matrix import BinaryMatrix, is_sparse


def _side(backend: str, *arrays: Any) -> str:
    """The side to compute on, "cpu" or "cuda": the named backend, else where the arrays live."""
    if backend in ("cpu", "cuda"):
        return backend
    return "cuda" if any(is_device_array(a) for a in arrays if a is not None) else "cpu"


def _to_side(function: str, x: Any, side: str, name: str = "X", indices: bool = False) -> Any:
    """x as a numpy array (side "cpu") or a CuPy array (side "cuda"), copied only to move it;
    pandas' nullable columns as the library's conversion layer takes them (``host_array``: pd.NA is
    NaN in values, a ValueError naming ``name`` in ``indices``)."""
    if is_device_array(x):
        cupy = _backend.cupy_module()
        array = cupy.asarray(x) if hasattr(x, "__cuda_array_interface__") else cupy.from_dlpack(x)
        return array.get() if side == "cpu" else array
    sparse = sys.modules.get("scipy.sparse")  # a sparse matrix exists only once scipy.sparse is loaded
    if sparse is not None and sparse.issparse(x):
        raise TypeError(f"{function}: sparse input is not supported; pass a dense array with NaN for the missing entries, "
                        "or the observed entries as (rows, cols, vals)")
    array = host_array(function, name, x, indices=indices)
    return _backend.cupy_module().asarray(array) if side == "cuda" else array


def _as_float(function: str, name: str, x: Any, side: str, ndim: int) -> Any:
    """A C-contiguous float32/float64 array of ``ndim`` dimensions on ``side``, converted by the
    library's one conversion layer (lowrank_hpc._arrays); scikit-learn's wording for empty input."""
    array = _to_side(function, x, side, name)
    if array.ndim != ndim:
        hint = (" (Reshape your data: X.reshape(1, -1) for one sample; entries of the fitted matrix are "
                "given as rows, cols (and vals for score))") if ndim == 2 and array.ndim == 1 else ""
        raise ValueError(f"{function}: {name} must have {ndim} dimension(s), got shape {tuple(array.shape)}{hint}")
    if ndim == 2:
        if array.shape[1] == 0:
            raise ValueError(f"{function}: found array with 0 feature(s) (shape={tuple(array.shape)}) "
                             "while a minimum of 1 is required.")
        if array.shape[0] == 0:
            raise ValueError(f"{function}: found array with 0 sample(s) (shape={tuple(array.shape)}) "
                             "while a minimum of 1 is required.")
    return for_backend(function, side).float_array(name, array, (ndim,), check_finite=False, allow_empty=True)


def _coordinates(function: str, rows: Any, cols: Any, side: str,
                 shape: Optional[tuple[int, int]] = None) -> tuple[Any, Any]:
    """(rows, cols) as the kernels take them (any integer dtype in, one index dtype out);
    ``shape``, when known, is the range an IndexError names."""
    call = for_backend(function, side)
    n1, n2 = (None, None) if shape is None else shape
    rows = call.index_array("rows", _to_side(function, rows, side, "rows", indices=True), bound=n1)
    cols = call.index_array("cols", _to_side(function, cols, side, "cols", indices=True), bound=n2)
    if rows.shape != cols.shape:
        raise ValueError(f"{function}: rows has shape {tuple(rows.shape)} but cols has shape {tuple(cols.shape)}")
    if rows.dtype != cols.dtype:  # the kernels take one index dtype
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    return rows, cols


def _entries(function: str, rows: Any, cols: Any, vals: Any, side: str,
             shape: Optional[tuple[int, int]] = None) -> tuple[Any, Any, Any]:
    """Validated (rows, cols, vals) of observed entries: equal lengths, finite vals."""
    rows, cols = _coordinates(function, rows, cols, side, shape)
    vals = _as_float(function, "vals", vals, side, 1)
    if vals.shape != rows.shape:
        raise ValueError(f"{function}: vals has shape {tuple(vals.shape)} but rows has shape {tuple(rows.shape)}")
    if rows.shape[0] == 0:
        raise ValueError(f"{function}: rows, cols and vals are empty; there is no observed entry")
    for_backend(function, side).check_finite("vals", vals)
    return rows, cols, vals


def _observed_in(function: str, X: Any) -> tuple[Any, Any, Any]:
    """(rows, cols, vals) of the non-NaN entries of a 2-D float X, row-major; inf is an error."""
    xp = _backend.array_module(X)
    if bool(xp.isinf(X).any()):
        raise ValueError(f"{function}: X contains inf; NaN marks a missing entry, inf is not allowed")
    rows, cols = xp.nonzero(~xp.isnan(X))
    if rows.shape[0] == 0:
        raise ValueError(f"{function}: X has no observed entry (all values are NaN)")
    return rows.astype(np.int64), cols.astype(np.int64), X[rows, cols]


def _completion_entries(function: str, X: Any, cols: Any, vals: Any, shape: Any,
                        side: str) -> tuple[Any, Any, Any, tuple[int, int]]:
    """(rows, cols, vals, shape) of a completion estimator's ``fit(X, cols, vals, shape=)``:
    a 2-D X (NaN for missing; the shape is X's) or 1-D row indices with cols, vals and shape.
    Indices are range-checked by :func:`_check_index_range` once the caller has its shape checks."""
    X = _to_side(function, X, side, "X", indices=_is_1d(X))
    if X.ndim == 2 and vals is None:
        matrix = _as_float(function, "X", X, side, 2)
        rows, cols, vals = _observed_in(function, matrix)
        return rows, cols, vals, tuple(int(n) for n in matrix.shape)
    if X.ndim == 1:
        if cols is None or vals is None or shape is None:
            raise ValueError(f"{function}: a 1-D X holds the row indices of observed entries and needs cols, "
                             "vals and shape=(n1, n2); for a dense matrix pass a 2-D X with NaN for missing (Reshape "
                             "your data with X.reshape(1, -1) for a single sample)")
        shape = _check_shape(function, shape)
        return (*_entries(function, X, cols, vals, side, shape), shape)
    raise ValueError(f"{function}: X must be a 2-D matrix (NaN for missing) or 1-D row indices with cols, "
                     f"vals and shape; got shape {tuple(X.shape)}" +
                     (" and vals, which only a 1-D X takes" if vals is not None else ""))


def _is_1d(X: Any) -> bool:
    """Whether an array X (a pandas Series, say) is 1-D, row indices rather than a matrix, before
    its conversion; lists are 1-D or not after it (they hold no pd.NA to tell apart)."""
    return getattr(X, "ndim", None) == 1


def _check_index_range(function: str, rows: Any, cols: Any, shape: tuple[int, int]) -> None:
    """IndexError unless 0 <= rows < n1 and 0 <= cols < n2 (the offsets index with them before any kernel does)."""
    for name, index, n in (("rows", rows, shape[0]), ("cols", cols, shape[1])):
        if index.shape[0] == 0:  # no index, none out of range (min/max of nothing would raise)
            continue
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= n:
            raise IndexError(f"{function}: {name} holds {low if low < 0 else high}, outside [0, {n}) for shape {shape}")


def _check_shape(function: str, shape: Any) -> tuple[int, int]:
    return _checks.shape_2d(function, "shape", shape)


def _rmse(xp: Any, errors: Any) -> float:
    return float(xp.sqrt(xp.mean(errors.astype(np.float64) ** 2)))


def _binary_matrix(function: str, name: str, X: Any, side: str, dtype: Optional[Any] = None) -> BinaryMatrix:
    """A 0/1 matrix (dense or scipy/cupyx sparse) validated and moved to ``side`` once."""
    if is_sparse(X):
        on_device = type(X).__module__.startswith("cupyx")
        if side == "cpu" and on_device:
            X = X.get()
        elif side == "cuda" and not on_device:
            _backend.cuda_module()  # BackendUnavailableError with the reason, before cupyx's ImportError
            import cupyx.scipy.sparse as device_sparse

            X = device_sparse.csr_matrix(X.tocsr())
        return BinaryMatrix(function, name, X, dtype=dtype, backend=side)
    if is_device_array(X) and side == "cpu":
        X = _to_side(function, X, side)
    return BinaryMatrix(function, name, X, dtype=dtype, backend=side)
