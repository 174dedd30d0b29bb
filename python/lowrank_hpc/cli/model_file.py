"""A fitted completion model with its id maps, saved to and loaded from one .npz file.

The file (format version 1) holds, with ``allow_pickle=False``:

- ``U`` (n1, r), ``V`` (n2, r) float64 factors; ``intercept`` (), ``row_bias`` (n1,),
  ``col_bias`` (n2,) float64 (zeros without centering): x_ij ~ intercept + row_bias[i] +
  col_bias[j] + U[i] . V[j];
- ``row_ids`` (n1,), ``col_ids`` (n2,): the original ids, sorted, int64 or str, so a row index
  i is the id ``row_ids[i]`` and ids round-trip exactly;
- ``seen_indptr`` (n1 + 1,), ``seen_indices`` int64: the observed columns of each row (CSR),
  which ``recommend`` leaves out;
- ``method``, ``center`` (str), ``rank`` (int), ``reg`` (float), ``format``
  ("lowrank_hpc.completion_model"), ``format_version`` (1) and ``meta`` (a JSON str).

Ids a model has not seen are predicted from what is known: the intercept plus the bias of the
known side (the bias-only prediction, as scikit-surprise and Spark do for a new user or item);
``lookup`` tells which ids are known.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .._arrays import to_numpy
from .errors import DataError

FORMAT = "lowrank_hpc.completion_model"
FORMAT_VERSION = 1
_ARRAYS = ("U", "V", "intercept", "row_bias", "col_bias", "row_ids", "col_ids", "seen_indptr", "seen_indices")


@dataclass
class CompletionModel:
    """A fitted model in the original id space; see the module docstring for the fields."""

    U: np.ndarray
    V: np.ndarray
    intercept: float
    row_bias: np.ndarray
    col_bias: np.ndarray
    row_ids: np.ndarray
    col_ids: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    method: str = ""
    rank: int = 0
    reg: float = float("nan")
    center: str = "none"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.U.shape[0]), int(self.V.shape[0]))

    # ------------------------------------------------------------------ building and saving
    @classmethod
    def from_estimator(cls, estimator: Any, row_ids: np.ndarray, col_ids: np.ndarray, seen_rows: np.ndarray,
                       seen_cols: np.ndarray, *, center: str = "none", meta: Optional[dict] = None
                       ) -> "CompletionModel":
        """The model of a fitted MatrixCompletion whose rows/cols are indices into row_ids/col_ids;
        (seen_rows, seen_cols) are the observed entries (indices) that ``recommend`` leaves out.
        Bias attributes the estimator lacks count as zero. row_ids/col_ids: the sorted distinct ids,
        integers in [-2**63, 2**64) (stored int64, or uint64 when one is above int64's range;
        integral floats and pandas' object columns converted) or strings; ValueError otherwise."""
        U, V = _host(estimator.U_), _host(estimator.V_)
        n1, n2 = U.shape[0], V.shape[0]
        row_ids, col_ids = _id_array("row_ids", row_ids), _id_array("col_ids", col_ids)
        for name, ids, size in (("row_ids", row_ids, n1), ("col_ids", col_ids, n2)):
            if ids.shape != (size,) or (size > 1 and not (ids[1:] > ids[:-1]).all()):
                raise ValueError(f"CompletionModel.from_estimator: {name} must be the {size} sorted distinct ids "
                                 f"of the fitted matrix (np.unique's order), got shape {ids.shape}")
        row_bias = getattr(estimator, "row_bias_", None)
        col_bias = getattr(estimator, "col_bias_", None)
        indptr, indices = _csr(np.asarray(seen_rows, dtype=np.int64), np.asarray(seen_cols, dtype=np.int64), n1)
        return cls(U=U, V=V, intercept=float(getattr(estimator, "intercept_", 0.0) or 0.0),
                   row_bias=np.zeros(n1) if row_bias is None else _host(row_bias).reshape(n1),
                   col_bias=np.zeros(n2) if col_bias is None else _host(col_bias).reshape(n2),
                   row_ids=row_ids, col_ids=col_ids, seen_indptr=indptr,
                   seen_indices=indices, method=str(getattr(estimator, "method_", estimator.method)),
                   rank=int(getattr(estimator, "rank_", U.shape[1])),
                   reg=float(getattr(estimator, "reg_", estimator.reg if not isinstance(estimator.reg, str)
                                     else float("nan"))),
                   center=str(center), meta=dict(meta or {}))

    def save(self, path: str) -> None:
        """Write the model to ``path`` (.npz) atomically: a reader sees the old file or the new one."""
        payload = {name: getattr(self, name) for name in _ARRAYS}
        payload.update(intercept=np.float64(self.intercept), method=np.asarray(self.method),
                       center=np.asarray(self.center), rank=np.int64(self.rank), reg=np.float64(self.reg),
                       format=np.asarray(FORMAT), format_version=np.int64(FORMAT_VERSION),
                       meta=np.asarray(json.dumps(self.meta, allow_nan=False)))
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=".model-", suffix=".npz")
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **payload)
            os.replace(temporary, path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise

    # ------------------------------------------------------------------ ids
    def lookup(self, row_ids: Any = None, col_ids: Any = None) -> tuple[Optional[np.ndarray], Optional[np.ndarray]]:
        """Indices of the given ids (int64, -1 where the model does not know the id)."""
        return (None if row_ids is None else _lookup(self.row_ids, row_ids),
                None if col_ids is None else _lookup(self.col_ids, col_ids))

    # ------------------------------------------------------------------ predictions
    def predict_indices(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(n,) float64 predictions at row/col indices; an index of -1 (unknown) contributes no
        factor and no bias, so an unknown id gets the bias-only prediction of the other side."""
        rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
        known_r, known_c = rows >= 0, cols >= 0
        r, c = np.where(known_r, rows, 0), np.where(known_c, cols, 0)
        both = known_r & known_c
        product = np.einsum("kr,kr->k", self.U[r], self.V[c]) * both
        return (self.intercept + np.where(known_r, self.row_bias[r], 0.0) + np.where(known_c, self.col_bias[c], 0.0)
                + product)

    def predict_ids(self, row_ids: Any, col_ids: Any) -> np.ndarray:
        """(n,) float64 predictions for pairs of original ids (bias-only for unknown ids)."""
        rows, cols = self.lookup(row_ids, col_ids)
        if rows.shape != cols.shape:
            raise ValueError(f"predict_ids: {rows.shape[0]} row ids but {cols.shape[0]} column ids")
        return self.predict_indices(rows, cols)

    def recommend(self, row_ids: Any, k: int, *, exclude_seen: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each row id, (col_ids, scores) of its k best columns, best first.

        Scores are the model's predictions, biases included. exclude_seen leaves out the columns
        the row was observed in (so a row may get fewer than k). An unknown row id gets the
        columns of the best bias-only prediction (the most popular ones).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"recommend: k must be an integer >= 1, got {k!r}")
        rows, _ = self.lookup(row_ids, None)
        results: list[Optional[tuple[np.ndarray, np.ndarray]]] = [None] * rows.shape[0]
        known = np.flatnonzero(rows >= 0)
        unknown = np.flatnonzero(rows < 0)
        if unknown.size:
            scores = self.intercept + self.col_bias
            order = np.argsort(-scores, kind="stable")[:k]
            for position in unknown:
                results[position] = (self.col_ids[order], scores[order])
        for positions, cols, scores in self._top_columns(rows[known], known, int(k), exclude_seen):
            for position, c, s in zip(positions, cols, scores):
                results[position] = (self.col_ids[c], s)
        return results  # type: ignore[return-value]

    def _top_columns(self, rows: np.ndarray, positions: np.ndarray, k: int, exclude_seen: bool):
        """Yield (positions, column lists, score lists) per group of rows of similar seen counts.

        Uses kernel_product's per-row top-k on factors augmented by the biases and a per-row
        shift that makes every score positive (kernel_product ranks by |value|), asking for
        k + (most columns seen by a row of the group) and dropping the seen ones."""
        from ..ops import kernel_product

        if rows.size == 0:
            return
        n2 = self.V.shape[0]
        seen_count = (self.seen_indptr[rows + 1] - self.seen_indptr[rows]) if exclude_seen else np.zeros_like(rows)
        # Rows grouped by the bit length of their seen count: the extra columns asked for stay
        # within twice what each row needs.
        groups = np.frexp(seen_count.astype(np.float64))[1]
        V_norm = float(np.sqrt((self.V ** 2).sum(axis=1)).max(initial=0.0))
        Va = np.hstack([self.V, self.col_bias[:, None], np.ones((n2, 1))])
        max_col_bias = float(np.abs(self.col_bias).max(initial=0.0))
        seen_keys = self._seen_keys() if exclude_seen else None
        for group in np.unique(groups):
            members = np.flatnonzero(groups == group)
            r = rows[members]
            kk = int(min(n2, k + int(seen_count[members].max())))
            U = self.U[r]
            base = self.intercept + self.row_bias[r]
            shift = np.sqrt((U ** 2).sum(axis=1)) * V_norm + max_col_bias + np.abs(base) + 1.0
            Ua = np.hstack([U, np.ones((r.shape[0], 1)), (base + shift)[:, None]])
            top = kernel_product(Ua, Va, "identity", top_k=kk)
            values, cols = np.asarray(top.values) - shift[:, None], np.asarray(top.indices)
            if exclude_seen:
                keys = r[:, None] * n2 + cols
                where = np.minimum(np.searchsorted(seen_keys, keys), max(seen_keys.shape[0] - 1, 0))
                seen = (seen_keys[where] == keys) if seen_keys.size else np.zeros(keys.shape, dtype=bool)
            else:
                seen = np.zeros(cols.shape, dtype=bool)
            order = np.argsort(seen, axis=1, kind="stable")[:, :k]  # unseen first, in score order
            cols = np.take_along_axis(cols, order, axis=1)
            values = np.take_along_axis(values, order, axis=1)
            available = np.minimum((~seen).sum(axis=1), k)
            yield (positions[members], [c[:a] for c, a in zip(cols, available)],
                   [v[:a] for v, a in zip(values, available)])

    def _seen_keys(self) -> np.ndarray:
        n2 = self.V.shape[0]
        counts = np.diff(self.seen_indptr)
        rows = np.repeat(np.arange(self.U.shape[0], dtype=np.int64), counts)
        return rows * n2 + self.seen_indices  # sorted: CSR rows in order, columns sorted in each


def load_model(path: str) -> CompletionModel:
    """The model saved at ``path``; DataError (a ValueError) naming the file if it is not one."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such model file" if not os.path.exists(path) else f"{path} is not a file")
    try:
        with np.load(path, allow_pickle=False) as data:
            if not hasattr(data, "files") or "format" not in data.files or str(data["format"]) != FORMAT:
                raise DataError(f"{path} is not a lowrank_hpc model file (save one with lowrank-hpc complete "
                                "--output)")
            version = int(data["format_version"])
            if version > FORMAT_VERSION:
                raise DataError(f"{path} has model format version {version}, newer than this lowrank_hpc reads "
                                f"({FORMAT_VERSION}); upgrade lowrank_hpc")
            arrays = {name: data[name] for name in _ARRAYS}
            return CompletionModel(**arrays | {"intercept": float(arrays["intercept"])},
                                   method=str(data["method"]), center=str(data["center"]), rank=int(data["rank"]),
                                   reg=float(data["reg"]), meta=json.loads(str(data["meta"])))
    except DataError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DataError(f"{path} is not a readable lowrank_hpc model file ({type(error).__name__}: {error})") from None


# ---------------------------------------------------------------------- helpers
def _host(array: Any) -> np.ndarray:
    """A float64 numpy copy of a numpy or CuPy array."""
    return np.array(to_numpy(array), dtype=np.float64)


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
    return indptr, np.ascontiguousarray(cols[order])


def _id_array(name: str, ids: Any) -> np.ndarray:
    """ids as the file stores them (``allow_pickle=False``): int64, uint64 (ids above int64's
    range) or str. Integral floats and object arrays of integers (pandas' columns) become int64,
    or uint64 when an id needs it; object arrays of str become str; ValueError naming ``name``
    for anything else (fractions, ids beyond 2**64, mixed types)."""
    array = np.asarray(ids)
    if array.dtype.kind == "O" and all(isinstance(item, str) for item in array.reshape(-1).tolist()):
        return array.astype(str)
    if array.dtype.kind == "f" and np.isfinite(array).all() and (array == np.round(array)).all() and \
            (array.size == 0 or (array.min() >= -2.0**63 and array.max() < 2.0**63)):
        return array.astype(np.int64)  # the common case in one pass; the loop below for the rest
    if array.dtype.kind in "Of":
        numbers = [None if isinstance(item, (bool, np.bool_, str)) else _id_integer(item)
                   for item in array.reshape(-1).tolist()]
        unsigned = any(number is not None and number >= 2**63 for number in numbers)
        if all(number is not None for number in numbers) and not (unsigned and min(numbers) < 0):
            return np.asarray(numbers, dtype=np.uint64 if unsigned else np.int64).reshape(array.shape)
    if array.dtype.kind not in "iuU":
        raise ValueError(f"CompletionModel.from_estimator: {name} must hold integers in [-2**63, 2**64) or strings, "
                         f"got dtype {array.dtype}")
    return array


def _id_integer(item: Any) -> Optional[int]:
    """An id as an int in [-2**63, 2**64), or None."""
    number = _as_integer(item)
    return number if number is not None else _as_integer(item, unsigned=True)


def _lookup(known: np.ndarray, query: Any) -> np.ndarray:
    """Index of each query id in the sorted ids ``known`` (-1 when absent).

    Integer ids match integers and text that reads as the same integer ("7", "7.0"); text ids
    match text (an integer query matches its decimal text). uint64 ids (above int64's range)
    are compared as uint64."""
    query = np.asarray(query)
    if query.ndim == 0:
        query = query.reshape(1)
    valid = np.ones(query.shape[0], dtype=bool)
    if known.dtype.kind in "iu":
        unsigned = known.dtype.kind == "u"
        if query.dtype.kind in "iu":
            if query.dtype.kind != known.dtype.kind:  # outside the other's range no id matches (astype wraps)
                valid = query >= 0 if unsigned else query <= np.iinfo(np.int64).max
            values = np.where(valid, query, 0).astype(known.dtype)
        else:
            values = np.zeros(query.shape[0], dtype=known.dtype)
            for k, token in enumerate(query.tolist()):
                number = _as_integer(token, unsigned)
                if number is None:
                    valid[k] = False
                else:
                    values[k] = number
    else:
        values = query.astype(str)
    if known.shape[0] == 0:
        return np.full(query.shape[0], -1, dtype=np.int64)
    position = np.minimum(np.searchsorted(known, values), known.shape[0] - 1)
    found = valid & (known[position] == values)
    return np.where(found, position, -1).astype(np.int64)


def _as_integer(token: Any, unsigned: bool = False) -> Optional[int]:
    """token as an int in int64's range ([0, 2**64) if ``unsigned``), read from an integer, an
    integral float or their text; None otherwise."""
    low, high = (0, 2**64) if unsigned else (-2**63, 2**63)
    if isinstance(token, (int, np.integer)) and not isinstance(token, (bool, np.bool_)):
        return int(token) if low <= int(token) < high else None
    try:
        return _as_integer(int(str(token)), unsigned)
    except ValueError:
        pass
    try:
        number = float(str(token))
    except ValueError:
        return None
    return _as_integer(int(number), unsigned) if np.isfinite(number) and number == int(number) else None