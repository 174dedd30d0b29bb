"""The problems of a batch: read, checked and cut into chunks on the client, before any task is sent.

A chunk is a list of problems one solver call takes: the same path ("batched_als",
"batched_gd" or "single", solved one at a time), and for the batched paths the same shape and
value dtype. It carries its own data (a slice of the stack, or the problems' concatenated
entries with their offsets), so the scheduler can run it again on another worker when its
worker dies.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .. import _checks
from .._arrays import host_array, is_device_array, to_numpy
from ..recover.batched_gd import BATCHED_METHODS
from ..recover.factored_gd import METHODS as GD_METHODS
from ..sensing import EntrySampling, SensingOperator

FUNCTION = "solve_batch"
ALS_METHODS = ("als",)
ALL_METHODS = ALS_METHODS + GD_METHODS

# The options each path's solver takes from solve_batch's **options (the rest it sets itself).
PATH_OPTIONS = {
    "batched_als": ("reg", "reg_scaling", "solver", "cg_steps", "max_iter", "tol", "init", "time_limit"),
    "batched_gd": ("init", "init_scale", "step", "damping", "max_iter", "tol", "time_limit"),
    "single": ("symmetric", "init", "init_scale", "step", "damping", "max_iter", "tol", "time_limit",
               "rebalance_at"),
}
# Options no chunk can honour: each chunk would write the same file, call back on a worker, or
# draw its own bar.
REFUSED_OPTIONS = {
    "checkpoint": "checkpoints (each chunk would write the same file)",
    "checkpoint_every": "checkpoints (each chunk would write the same file)",
    "callback": "callbacks (chunks run on the workers)",
    "progress": "per-solve progress bars (chunks run on the workers)",
    "offsets": "offsets (solve_batch builds them from the problems)",
    "shape": "shape (each problem gives its own)",
}
# A chunk's payload stays below this (a task message well under Dask's 10 MB large-graph warning).
CHUNK_BYTES = 4 << 20
CHUNK_PROBLEMS = 512


@dataclass
class Chunk:
    """One task's problems. ``indices`` are their positions in the batch (results go back there)."""

    number: int
    path: str
    indices: np.ndarray
    shape: Optional[tuple[int, int]] = None
    dense: Optional[np.ndarray] = None  # (c, m, n), NaN for missing
    entries: Optional[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = None  # rows, cols, vals, offsets
    operators: Optional[list[tuple[Any, Any]]] = None  # "single": (operator or (rows, cols, shape), y)
    options: dict[str, Any] = field(default_factory=dict)  # the chunk's slices of per-problem options


@dataclass
class _Item:
    """One problem of a list: observed entries, or an operator with its measurements."""

    shape: tuple[int, int]
    dtype: np.dtype
    rows: Any = None
    cols: Any = None
    vals: Any = None
    operator: Any = None
    y: Any = None

    @property
    def is_entries(self) -> bool:
        return self.operator is None

    def payload_bytes(self) -> int:
        if self.is_entries:
            return int(self.rows.nbytes + self.cols.nbytes + self.vals.nbytes)
        return int(np.asarray(self.y).nbytes) + 64 * 1024  # the operator: its own arrays, roughly


def _float_dtype(what: str, x: np.ndarray) -> np.dtype:
    if x.dtype in (np.float32, np.float64):
        return x.dtype
    if x.dtype.kind in "iub":
        return np.dtype(np.float64)
    raise TypeError(f"{FUNCTION}: {what} must hold real numbers (float32 or float64), got {x.dtype}")


def _shape(what: str, value: Any) -> tuple[int, int]:
    return _checks.shape_2d(FUNCTION, what, value)


def _index_array(what: str, x: Any) -> np.ndarray:
    x = to_numpy(x) if is_device_array(x) else host_array(FUNCTION, what, x, indices=True)
    if x.ndim != 1:
        raise ValueError(f"{FUNCTION}: {what} must be 1-D, got shape {x.shape}")
    if x.size and x.dtype.kind not in "iu":
        raise TypeError(f"{FUNCTION}: {what} must hold integer indices, got {x.dtype}")
    return x.astype(np.int64, copy=False)


def read_stack(problems: Any) -> np.ndarray:
    """A (B, m, n) float32/float64 stack, NaN for missing; ValueError for a ragged one."""
    if isinstance(problems, (list, tuple)):
        shapes = [_matrix_shape(b, p) for b, p in enumerate(problems)]
        if any(shape != shapes[0] for shape in shapes):
            first = next(b for b, shape in enumerate(shapes) if shape != shapes[0])
            raise ValueError(f"{FUNCTION}: ragged stack: problem {first} has shape {shapes[first]} but problem 0 has "
                             f"{shapes[0]}; a stack needs one shape (give problems of different shapes as "
                             "(rows, cols, vals, shape) entries)")
        stack = np.stack([to_numpy(p) for p in problems]) if problems else np.zeros((0, 1, 1))
    else:
        stack = to_numpy(problems)
    if stack.dtype == object:
        raise ValueError(f"{FUNCTION}: ragged stack (an object array); a stack is a (B, m, n) float array with NaN "
                         "for missing entries (give problems of different shapes as (rows, cols, vals, shape))")
    if stack.ndim != 3:
        raise ValueError(f"{FUNCTION}: a stack of problems must be (B, m, n), got shape {stack.shape}")
    if 0 in stack.shape:
        raise ValueError(f"{FUNCTION}: the stack is empty (shape {stack.shape})")
    return stack.astype(_float_dtype("the stack", stack), copy=False)


def _matrix_shape(b: int, problem: Any) -> tuple[int, ...]:
    """The shape of a stack's problem b (an array or a nested list); ValueError for a ragged list."""
    try:
        return np.shape(problem)
    except ValueError:  # numpy's "inhomogeneous shape" names neither the problem nor the fix
        raise ValueError(f"{FUNCTION}: ragged stack: problem {b} is a nested list of rows of different lengths; "
                         "a list in a list of problems is an (m, n) matrix of a stack (give a problem's entries as a "
                         "tuple (rows, cols, vals, shape))") from None


def _is_sensing(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], SensingOperator)


def _read_item(b: int, item: Any) -> _Item:
    if _is_sensing(item):
        operator, y = item
        y = to_numpy(y)
        if isinstance(operator, EntrySampling):  # completion: solved as entries by the batched solvers
            rows, cols = operator._host_rows, operator._host_cols
            return _entries(b, rows, cols, y, operator.shape)
        # factored_gd's check of y's shape, here before any task; NaN/inf fail in the slot, as in vals
        if y.ndim != 1:
            raise ValueError(f"{FUNCTION}: problem {b}'s y must be 1-D, got shape {y.shape}")
        if y.shape[0] != operator.num_measurements:
            raise ValueError(f"{FUNCTION}: problem {b}'s y has length {y.shape[0]} but the operator makes "
                             f"{operator.num_measurements} measurements")
        return _Item(shape=tuple(operator.shape), dtype=_float_dtype(f"problem {b}'s y", y), operator=operator, y=y)
    if isinstance(item, tuple) and len(item) == 4:
        return _entries(b, *item)
    raise TypeError(f"{FUNCTION}: problem {b} must be a tuple (rows, cols, vals, shape) or (operator, y) with a "
                    f"lowrank_hpc.sensing operator, got {type(item).__name__}"
                    + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
                    + (" (a list is a matrix of a stack; a stack holds matrices only)" if isinstance(item, list)
                       else ""))


def _entries(b: int, rows: Any, cols: Any, vals: Any, shape: Any) -> _Item:
    shape = _shape(f"problem {b}'s shape", shape)
    rows, cols = _index_array(f"problem {b}'s rows", rows), _index_array(f"problem {b}'s cols", cols)
    vals = to_numpy(vals)
    if vals.ndim != 1:
        raise ValueError(f"{FUNCTION}: problem {b}'s vals must be 1-D, got shape {vals.shape}")
    if not rows.shape[0] == cols.shape[0] == vals.shape[0]:
        raise ValueError(f"{FUNCTION}: problem {b} has {rows.shape[0]} rows, {cols.shape[0]} cols and "
                         f"{vals.shape[0]} vals; they must have one length")
    dtype = _float_dtype(f"problem {b}'s vals", vals)
    return _Item(shape=shape, dtype=dtype, rows=rows, cols=cols, vals=vals.astype(dtype, copy=False))


def read_items(problems: Any) -> list[_Item]:
    if len(problems) == 0:
        raise ValueError(f"{FUNCTION}: no problems (an empty list)")
    return [_read_item(b, item) for b, item in enumerate(problems)]


def is_stack(problems: Any) -> bool:
    """A stack: an array (or array-like with a shape), or a list whose items are all matrices: 2-D
    arrays or lists (nested lists of rows). A tuple is one problem, (rows, cols, vals, shape) or
    (operator, y), never a matrix: [[0, 1], [1, 0], [5, 6], [2, 2]] is a 4 x 2 matrix."""
    if hasattr(problems, "shape") and hasattr(problems, "dtype"):
        return True
    if isinstance(problems, (list, tuple)) and problems:
        return all(len(p.shape) == 2 if hasattr(p, "shape") and hasattr(p, "dtype")
                   else isinstance(p, list) and not _is_sensing(p) for p in problems)
    if isinstance(problems, (list, tuple)):
        return False
    raise TypeError(f"{FUNCTION}: problems must be a (B, m, n) array with NaN for missing entries, or a list of "
                    f"(rows, cols, vals, shape) or (operator, y); got {type(problems).__name__}")


def path_of(method: str, item: Optional[_Item]) -> str:
    """Which solver a problem goes to under ``method``."""
    if item is not None and not item.is_entries:
        return "single"  # sensing operators: factored_gd, one problem at a time
    if method == "als":
        return "batched_als"
    return "batched_gd" if method in BATCHED_METHODS else "single"


def check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in ALL_METHODS:
        raise ValueError(f"{FUNCTION}: unknown method {method!r}; choose 'als' or a factored_gd method: "
                         f"{', '.join(map(repr, GD_METHODS))}")
    return method


def chunk_problems(count: int, costs: np.ndarray, chunk_size: Optional[int]) -> int:
    """Problems per chunk: ``chunk_size``, or as many as keep the payload under CHUNK_BYTES (at most
    CHUNK_PROBLEMS). The default depends on the data only, never on the cluster, so a batch is cut
    the same way on any cluster and locally."""
    if chunk_size is not None:
        return chunk_size
    mean = float(np.mean(costs)) if costs.size else 1.0
    return int(max(1, min(CHUNK_PROBLEMS, count, CHUNK_BYTES // max(mean, 1.0))))


def stack_chunks(stack: np.ndarray, size: int) -> list[Chunk]:
    count = stack.shape[0]
    return [Chunk(number=k, path="", indices=np.arange(start, min(start + size, count)), shape=stack.shape[1:],
                  dense=stack[start:start + size])
            for k, start in enumerate(range(0, count, size))]


def item_chunks(items: list[_Item], paths: list[str], chunk_size: Optional[int]) -> list[Chunk]:
    """Chunks of a list of problems: grouped by (path, shape, dtype) in order of first appearance
    (batched solvers take one shape and dtype), each group cut into runs of the chunk size."""
    groups: dict[tuple, list[int]] = {}
    for b, (item, path) in enumerate(zip(items, paths)):
        key = (path,) if path == "single" else (path, item.shape, item.dtype.str)
        groups.setdefault(key, []).append(b)
    chunks: list[Chunk] = []
    for key, members in groups.items():
        size = chunk_problems(len(members), np.array([items[b].payload_bytes() for b in members]), chunk_size)
        for start in range(0, len(members), size):
            indices = np.asarray(members[start:start + size], dtype=np.int64)
            chosen = [items[b] for b in indices]
            chunk = Chunk(number=len(chunks), path=key[0], indices=indices)
            if key[0] == "single":
                chunk.operators = [(item.operator, item.y) if not item.is_entries
                                   else ((item.rows, item.cols, item.shape), item.vals) for item in chosen]
            else:
                chunk.shape = chosen[0].shape
                counts = np.array([item.rows.shape[0] for item in chosen], dtype=np.int64)
                offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
                chunk.entries = (np.concatenate([item.rows for item in chosen]),
                                 np.concatenate([item.cols for item in chosen]),
                                 np.concatenate([item.vals for item in chosen]), offsets)
            chunks.append(chunk)
    return chunks
