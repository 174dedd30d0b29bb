"""The worker side of DistributedALS: shards of rows (or columns) with their entries in CSR order,
the factor blocks they own, and the half-step that solves a shard's rows with the same compiled
kernel ``recover.als`` runs (``als_update_rows``), so every row gets the bits it gets there.

A row shard owns the rows [lo, hi) of U and every observed entry in them (its CSR: local row ->
global column, value); a column shard likewise for V. A half-step of a shard reads the whole
other factor (the blocks of every other shard, fetched by Dask) and returns its own new block
with the sums the client needs for the loss and the relative change (r x r Gram blocks,
penalties, squared residuals, singular rows): everything the iteration reads, in one small array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .._arrays import Call, for_backend, host_array, to_numpy
from .._random import gaussian_fill
from ..ops.sampled_product import squared_residuals
from ..ops._csr_order import csr_order
from ._executor import worker_backend

FUNCTION = "DistributedALS"


def _on(call: Call, x: Any) -> Any:
    """x on the call's backend (blocks from other workers may come from another backend)."""
    if call.on_device:
        return call.xp.asarray(x)
    return to_numpy(x)


# ---------------------------------------------------------------------- splitting entries
def balanced_bounds(weights: np.ndarray, edges: np.ndarray, parts: int) -> np.ndarray:
    """(parts + 1,) key bounds 0 = b_0 < ... < b_parts = edges[-1], each at one of ``edges`` (the
    edges of the units ``weights`` measure: single keys, or histogram bins), so that every part
    holds about the same weight; every part gets at least one key."""
    total = np.concatenate([[0.0], np.cumsum(weights, dtype=np.float64)])
    targets = total[-1] * np.arange(1, parts) / parts
    inner = edges[np.clip(np.searchsorted(total, targets, side="left"), 0, len(edges) - 1)]
    bounds = np.concatenate([[0], inner, [edges[-1]]]).astype(np.int64)
    for k in range(1, parts):  # strictly increasing, with room for the parts after
        bounds[k] = min(max(bounds[k], bounds[k - 1] + 1), edges[-1] - (parts - k))
    return bounds


def _nbytes(*arrays: Any) -> int:
    """The bytes of the arrays (numpy or CuPy; None counts 0)."""
    return sum(int(getattr(a, "nbytes", 0)) for a in arrays)


@dataclass
class Pieces:
    """One set of entries split by shard: for each row shard (keys = global rows, others =
    columns, vals), and for each column shard (keys = global columns, others = rows, vals);
    entries keep their input order within each piece."""

    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    cols: list[tuple[np.ndarray, np.ndarray, np.ndarray]]

    # dask.sizeof falls back to sys.getsizeof (this __sizeof__): the arrays, so workers count what they hold.
    def __sizeof__(self) -> int:
        return object.__sizeof__(self) + _nbytes(*(a for piece in self.rows + self.cols for a in piece))


def split_entries(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, row_bounds: np.ndarray,
                  col_bounds: np.ndarray) -> Pieces:
    def by(keys, others, bounds):
        shard = np.searchsorted(bounds, keys, side="right") - 1
        order = np.argsort(shard, kind="stable")
        cuts = np.concatenate([[0], np.cumsum(np.bincount(shard, minlength=len(bounds) - 1))])
        k, o, v = keys[order], others[order], vals[order]
        return [(k[a:b], o[a:b], v[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]

    return Pieces(rows=by(rows, cols, row_bounds), cols=by(cols, rows, col_bounds))


def select(pieces: Pieces, side: str, shard: int):
    return getattr(pieces, side)[shard]


# ---------------------------------------------------------------------- Dask DataFrame partitions
def frame_arrays(frame: Any, columns: Sequence[str]):
    """(rows, cols, vals) numpy arrays of a pandas partition's three columns, checked."""
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise KeyError(f"{FUNCTION}: the DataFrame has no column {missing[0]!r} (columns: {list(frame.columns)}); "
                       "pass columns=(row, col, value) names")
    # pandas' nullable columns (Int64, Float64): pd.NA in an index column is a ValueError, in values NaN
    rows, cols, vals = (host_array(FUNCTION, f"column {name!r}", frame[name], indices=k < 2)
                        for k, name in enumerate(columns))
    for name, index in ((columns[0], rows), (columns[1], cols)):
        if index.dtype.kind not in "iu":
            raise TypeError(f"{FUNCTION}: column {name!r} must hold integer indices, got {index.dtype}")
    if vals.dtype.kind not in "iubf":
        raise TypeError(f"{FUNCTION}: column {columns[2]!r} must hold real numbers, got {vals.dtype}")
    call = for_backend(FUNCTION, "cpu")  # uint64 above the int64 maximum: the IndexError, not a wrapped value
    rows, cols = (call.index_array(f"column {name!r}", index)
                  for name, index in ((columns[0], rows), (columns[1], cols)))
    return rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False), vals


def describe_partition(frame: Any, columns: Sequence[str]) -> dict[str, Any]:
    """What the client needs of a partition before splitting it: entries, index ranges, dtype."""
    return describe_entries(columns, *frame_arrays(frame, columns))


def describe_entries(columns: Sequence[str], rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> dict[str, Any]:
    """:func:`describe_partition` of a partition's arrays (from :func:`frame_arrays`)."""
    if vals.dtype.kind == "f" and not np.isfinite(vals).all():
        raise ValueError(f"{FUNCTION}: column {columns[2]!r} contains {int((~np.isfinite(vals)).sum())} NaN/inf "
                         "value(s); clean or drop them first")
    empty = rows.shape[0] == 0
    return {"nnz": int(rows.shape[0]), "dtype": vals.dtype.str,
            "row_min": 0 if empty else int(rows.min()), "row_max": -1 if empty else int(rows.max()),
            "col_min": 0 if empty else int(cols.min()), "col_max": -1 if empty else int(cols.max())}


def partition_histograms(frame: Any, columns: Sequence[str], row_edges: np.ndarray, col_edges: np.ndarray):
    rows, cols, _ = frame_arrays(frame, columns)
    return (np.histogram(rows, bins=row_edges)[0].astype(np.int64),
            np.histogram(cols, bins=col_edges)[0].astype(np.int64))


def split_partition(frame: Any, columns: Sequence[str], row_bounds: np.ndarray, col_bounds: np.ndarray,
                    dtype: str) -> Pieces:
    rows, cols, vals = frame_arrays(frame, columns)
    return split_entries(rows, cols, vals.astype(np.dtype(dtype), copy=False), row_bounds, col_bounds)


# ---------------------------------------------------------------------- shards and blocks
@dataclass
class Shard:
    """Keys [lo, hi) of one side with their entries in CSR order on the worker's backend:
    indptr (hi - lo + 1,), others (global indices of the other side), vals, and keys (the local
    key of every entry, for the residuals)."""

    backend: str
    lo: int
    hi: int
    indptr: Any
    others: Any
    vals: Any
    keys: Any
    weights: Any  # (hi - lo,) float64: each key's observation count (the "count" penalty weights)

    def call(self) -> Call:
        return for_backend(FUNCTION, self.backend)

    def __sizeof__(self) -> int:  # as Pieces': Dask's memory limits and spilling count the arrays
        return object.__sizeof__(self) + _nbytes(self.indptr, self.others, self.vals, self.keys, self.weights)


def build_shard(lo: int, hi: int, backend: str, side: str, index_dtype: str, dtype: str, *pieces) -> Shard:
    """The shard of keys [lo, hi) from its pieces (one per input part, in input order)."""
    backend = worker_backend(backend, FUNCTION)
    call = for_backend(FUNCTION, backend)
    xp = call.xp
    keys = np.concatenate([p[0] for p in pieces]) - lo if pieces else np.zeros(0, np.int64)
    others = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
    vals = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, dtype)
    index = np.dtype(index_dtype)
    keys, others, vals = (xp.asarray(a) for a in (keys.astype(index), others.astype(index),
                                                  vals.astype(np.dtype(dtype), copy=False)))
    n_key, nnz = hi - lo, int(vals.shape[0])
    if nnz:
        offsets = xp.asarray(np.array([0, nnz], dtype=np.int64))
        indptr, _, others, vals = csr_order(call, keys, others, vals, offsets, n_key, side, keep_perm=False)
        keys = (xp.searchsorted(indptr, xp.arange(nnz, dtype=np.int64), side="right") - 1).astype(index)
    else:
        indptr = xp.zeros(n_key + 1, dtype=np.int64)
    weights = xp.diff(indptr).astype(np.float64)
    return Shard(backend, lo, hi, indptr, others, vals, keys, weights)


@dataclass
class Block:
    """A shard's rows of U (or V) after a half-step, on the worker's backend, with the sums the
    client reads (None for a starting block)."""

    factor: Any
    stats: Optional[np.ndarray] = None

    def __sizeof__(self) -> int:  # as Pieces': Dask's memory limits and spilling count the arrays
        return object.__sizeof__(self) + _nbytes(self.factor, self.stats)


def starting_block(lo: int, hi: int, rank: int, backend: str, dtype: str, key: Optional[int] = None,
                   stream: int = 0, given: Optional[np.ndarray] = None) -> Block:
    """Rows [lo, hi) of the start: zeros (U, key None), the given rows, or those of recover.als's
    seeded V: N(0, 1) / sqrt(rank) Philox draws (key, stream, index j * rank + c), read at j >= lo."""
    call = for_backend(FUNCTION, worker_backend(backend, FUNCTION))
    if given is not None:
        return Block(call.xp.asarray(given))
    if key is None:
        return Block(call.xp.zeros((hi - lo, rank), dtype=np.dtype(dtype)))
    V = gaussian_fill(call, np.dtype(dtype), key, 1, hi - lo, rank, first_stream=stream, index_offset=lo * rank,
                      scale=1.0 / np.sqrt(rank))
    return Block(V.reshape(hi - lo, rank))


def half_step(shard: Shard, previous: Block, *others: Block, reg: float, count_scaling: bool, cg_steps: int,
              columns: bool) -> Block:
    """The shard's new block: each key's regularised normal equations against the whole other
    factor (the concatenated ``others``), solved by the kernel recover.als calls, from the
    previous block (the start of conjugate gradients).

    stats (float64): for a row shard (columns False) the Gram blocks dU^T dU, dU^T U0, U0^T U0
    (dU = U1 - U0), the penalty sum_i w_i ||u_i||^2 and the singular rows; for a column shard
    V1^T V1, V1^T dV, dV^T dV, V0^T V0, the penalty, the squared residuals of its entries (the
    iteration's: U is final) and the singular rows.
    """
    call = shard.call()
    xp = call.xp
    F = xp.concatenate([_on(call, block.factor) for block in others])[None]
    old = _on(call, previous.factor)
    out = xp.array(old[None], copy=True)
    singular = call.status(0)
    active = xp.ones(1, dtype=np.uint8)
    n_key = shard.hi - shard.lo
    call.module.als_update_rows(shard.indptr, shard.others, shard.vals, F, n_key, reg, count_scaling, active,
                                cg_steps, out, singular, call.stream())
    new = out[0]
    new64, old64 = new.astype(np.float64), old.astype(np.float64)
    k = new.shape[1]
    if columns:
        stacked = xp.concatenate([new64, new64 - old64, old64], axis=1)
    else:
        stacked = xp.concatenate([new64 - old64, old64], axis=1)
    gram = stacked.T @ stacked
    first, second, third = slice(0, k), slice(k, 2 * k), slice(2 * k, 3 * k)
    if columns:
        blocks = [gram[first, first], gram[first, second], gram[second, second], gram[third, third]]
    else:
        blocks = [gram[first, first], gram[first, second], gram[second, second]]
    weights = shard.weights if count_scaling else xp.ones(n_key, dtype=np.float64)
    penalty = (weights * xp.einsum("ir,ir->i", new, new, dtype=np.float64)).sum()
    numbers = [penalty]
    if columns:
        if shard.vals.shape[0]:
            offsets = xp.asarray(np.array([0, shard.vals.shape[0]], dtype=np.int64))
            terms, _ = squared_residuals(call, F, out, shard.others, shard.keys, shard.vals, offsets)
            numbers.append(terms.sum())
        else:
            numbers.append(xp.zeros((), dtype=np.float64))
    numbers.append(singular[0].astype(np.float64))
    stats = to_numpy(xp.concatenate([xp.stack(blocks).reshape(-1), xp.stack(numbers)]))
    return Block(new, stats)


def backend_of(shard: Shard) -> str:
    return shard.backend


def stats_of(block: Block) -> np.ndarray:
    return block.stats


def host_factor(block: Block) -> np.ndarray:
    return to_numpy(block.factor)
