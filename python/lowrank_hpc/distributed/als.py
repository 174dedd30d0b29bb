"""One ALS completion too big for one node: rows and columns sharded over the workers of a Dask
cluster, the factors exchanged every half-step."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .. import _checks
from .._arrays import Call, resolve
from .._backend import CONSTANTS, cpu_kernels
from ..recover._driver import LoopSettings, LoopState, resolve_seed, run_loop
from ..recover._result import RecoveryResult
from ..recover.als import (_ALS_CONSTRAINTS, CG_STEPS, uses_cg, _check_coordinates, _check_init, _check_rank,
                           _check_seed, _key_stream)
from . import _shards
from ._executor import executor, worker_backend
from ._shards import FUNCTION
from .factors import DistributedFactor

DEFAULT_COLUMNS = ("row", "col", "value")
# Histogram bins per shard when a Dask DataFrame's rows are counted to balance the shards.
_BINS_PER_SHARD = 256


class DistributedALS:
    """ALS matrix completion on a Dask cluster: the same iterations as :func:`lowrank_hpc.recover.als`.

    The rows of U are cut into ``n_shards`` contiguous ranges holding about the same work (their
    observed entries plus rank / 3 per row), and so are the rows of V; each range lives on one
    worker with its entries in CSR order. Every iteration solves all rows of U (each shard
    against the whole V, whose blocks Dask moves between the workers), then all rows of V
    against the new U, with the compiled half-step ``recover.als`` runs: each row's
    regularised normal equations from its own entries in their input order. So a solve gives
    the U, V, loss history and stop of ``recover.als`` with the same data, seed and settings
    (to rounding of the sums behind the loss and the relative change: 1e-8 relative or better).
    The client reads a few r x r sums per iteration; factors never pass through it until the end.
    A worker lost in mid-solve loses its shards and blocks, and the solve raises a RuntimeError
    that says so (no checkpoints on a cluster): rerun it. solve_batch, whose chunks carry their data, survives that.

    Parameters
    ----------
    rank, reg, reg_scaling, solver, cg_steps, max_iter, tol, seed : as for :func:`recover.als`
        (seed: None draws one, an int s or a pair (s, stream) seeds V as recover.als does).
    client : a ``dask.distributed.Client``; None runs the same shards in this process.
    n_shards : row (and column) shards; None: one per worker (1 without a client). At most
        min(m, n). On a cluster, give each worker its node's cores for the kernel's OpenMP
        threads (Dask's nanny sets OMP_NUM_THREADS=1 for its workers unless told otherwise).
    gather : True: ``U_``/``V_`` (and the result's U, V) are numpy arrays on the client; False:
        :class:`DistributedFactor`s left on the workers (for factors too big for the client).
    backend : "auto" (each worker's GPU when it has one), "cpu" or "cuda".

    Attributes (after :meth:`fit`)
    ----------
    result_ : the :class:`lowrank_hpc.recover.RecoveryResult` (info: "singular_rows", "seed",
        "solver", "reg", "reg_scaling", "kernel" = "distributed", "n_shards", "row_bounds",
        "col_bounds").
    U_, V_ : the factors (numpy arrays, or DistributedFactor with gather=False).
    """

    def __init__(self, rank: int, reg: float = 0.1, *, reg_scaling: str = "none", solver: str = "auto",
                 cg_steps: int = CG_STEPS, max_iter: int = 50, tol: float = 1e-6, seed: Any = None,
                 client: Any = None, n_shards: Optional[int] = None, gather: bool = True, backend: str = "auto"):
        self.rank = rank
        self.reg = reg
        self.reg_scaling = reg_scaling
        self.solver = solver
        self.cg_steps = cg_steps
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.client = client
        self.n_shards = n_shards
        self.gather = gather
        self.backend = backend

    def fit(self, rows: Any, cols: Any = None, vals: Any = None, *, shape: Optional[tuple[int, int]] = None,
            columns: Sequence[str] = DEFAULT_COLUMNS, init: Any = None,
            callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
            time_limit: Optional[float] = None) -> "DistributedALS":
        """Complete the matrix from its observed entries.

        Parameters
        ----------
        rows, cols, vals : the entries as for :func:`recover.als` (numpy arrays; shape required),
            or ``rows`` a Dask DataFrame (e.g. ``dask.dataframe.read_parquet(...)``) or a pandas
            one with the columns ``columns`` = (row, col, value) and cols, vals None: integer
            indices from 0 and real values; shape None takes (max row + 1, max col + 1). With a
            client, a Dask DataFrame is read, checked and split by the workers, partition by
            partition; it never passes through the client. Without one (and for a pandas
            DataFrame) the entries are read here and split as arrays are.
        init : (n, rank) initial V of the values' dtype, finite (replaces the seed); the same
            check as :func:`recover.als`'s for every kind of input.
        callback : called as callback(iteration, {"loss", "relative_change"}) after every
            iteration (the factors stay on the workers).
        progress, time_limit : as for :func:`recover.als`.

        Returns
        -------
        self, with result_, U_ and V_.
        """
        try:
            self.result_ = self._solve(rows, cols, vals, shape, columns, init, callback, progress, time_limit)
        except Exception as error:
            # Dask's words for a lost worker ("... cancelled for reason: already forgotten") name neither.
            if type(error).__name__ not in ("FutureCancelledError", "CancelledError", "KilledWorker"):
                raise
            raise RuntimeError(f"{FUNCTION}: a worker was lost during the solve, and with it the shards and factor "
                               f"blocks it held ({type(error).__name__}: {error}); DistributedALS keeps no "
                               "checkpoint on a cluster: rerun the fit") from error
        self.U_, self.V_ = self.result_.U, self.result_.V
        return self

    # ------------------------------------------------------------------ the solve
    def _settings(self) -> dict[str, Any]:
        values = {name: getattr(self, name) for name in ("reg", "reg_scaling", "solver", "cg_steps", "max_iter", "tol")}
        for name, value in values.items():
            values[name] = _ALS_CONSTRAINTS[name](FUNCTION, name, value)
        values["seed"] = _check_seed(FUNCTION, "seed", self.seed)
        values["gather"] = _checks.flag(FUNCTION, "gather", self.gather)
        if self.backend not in ("auto", "cpu", "cuda"):
            raise ValueError(f"{FUNCTION}: backend must be 'auto', 'cpu' or 'cuda', got {self.backend!r}")
        if self.n_shards is not None:
            _checks.positive_int(FUNCTION, "n_shards", self.n_shards)
        return values

    def _solve(self, rows, cols, vals, shape, columns, init, callback, progress, time_limit) -> RecoveryResult:
        started = time.perf_counter()
        settings = self._settings()
        loop = LoopSettings(max_iter=settings["max_iter"], tol=settings["tol"], callback=callback, progress=progress,
                            time_limit=time_limit, description=FUNCTION)
        loop.validate(FUNCTION)
        run = executor(self.client, function=FUNCTION)
        if (_is_dask_frame(rows) or _is_pandas_frame(rows)) and cols is None and vals is None:
            columns = _checked_columns(columns)
            if _is_dask_frame(rows) and hasattr(run, "client"):
                data = _FrameData(run, rows, columns, shape)
            else:  # a pandas frame, or a Dask one without a cluster (computed here): its entries as arrays
                data = _frame_here(rows.compute() if _is_dask_frame(rows) else rows, columns, shape)
        else:
            data = _ArrayData(rows, cols, vals, shape)
        m, n = data.shape
        rank = _check_rank(FUNCTION, data.shape, self.rank)
        given = data.initial_V(init, rank)
        shards = min(self.n_shards or run.worker_count(), m, n)
        workers = [run.workers[s % len(run.workers)] for s in range(shards)]
        limit = _system_bytes_limit(run, workers, self.backend)
        use_cg = uses_cg(settings["solver"], rank, np.dtype(data.dtype).itemsize, limit)
        cg_steps = settings["cg_steps"] if use_cg else 0
        row_bounds, col_bounds = data.bounds(shards, rank)
        row_shards, col_shards = data.shards(run, row_bounds, col_bounds, workers, self.backend)
        seed, _ = resolve_seed(settings["seed"], None)
        key, stream = _key_stream(seed)
        dtype = data.dtype.str
        U_blocks = [run.submit(_shards.starting_block, int(lo), int(hi), rank, self.backend, dtype, worker=w,
                               name="U0")
                    for lo, hi, w in zip(row_bounds[:-1], row_bounds[1:], workers)]
        V_blocks = [run.submit(_shards.starting_block, int(lo), int(hi), rank, self.backend, dtype, key, stream,
                               None if given is None else given[lo:hi], worker=w, name="V0")
                    for lo, hi, w in zip(col_bounds[:-1], col_bounds[1:], workers)]
        reg, count_scaling = float(settings["reg"]), settings["reg_scaling"] == "count"
        k = rank
        flags: dict[str, Any] = {}

        def submit_iteration(U_prev: list, V_prev: list, number: int):
            """One iteration's tasks: every row shard against the whole V, then every column shard
            against the new U, and the small sums of each block."""
            new_U = [run.submit(_shards.half_step, shard, U_prev[s], *V_prev, reg=reg, count_scaling=count_scaling,
                                cg_steps=cg_steps, columns=False, worker=workers[s], name=f"U{number}")
                     for s, shard in enumerate(row_shards)]
            new_V = [run.submit(_shards.half_step, shard, V_prev[s], *new_U, reg=reg, count_scaling=count_scaling,
                                cg_steps=cg_steps, columns=True, worker=workers[s], name=f"V{number}")
                     for s, shard in enumerate(col_shards)]
            stats = [run.submit(_shards.stats_of, block, worker=workers[s % shards], name="stats")
                     for s, block in enumerate(new_U + new_V)]
            return new_U, new_V, stats

        # On a cluster the next iteration is submitted before this one's sums are read, so the
        # workers never wait for the client's round trip; a run that stops drops it unread.
        lookahead = hasattr(run, "client")
        pending: list[Any] = []

        def step(state: LoopState):
            number = state.iteration + 1
            current = pending.pop() if pending else submit_iteration(U_blocks, V_blocks, number)
            if lookahead and number < settings["max_iter"]:
                pending.append(submit_iteration(current[0], current[1], number + 1))
            stats = run.gather(current[2])
            U_blocks[:], V_blocks[:] = current[0], current[1]
            left = np.sum([s[:3 * k * k] for s in stats[:shards]], axis=0).reshape(1, 3, k, k)
            right = np.sum([s[:4 * k * k] for s in stats[shards:]], axis=0).reshape(1, 4, k, k)
            penalty = sum(s[3 * k * k] for s in stats[:shards]) + sum(s[4 * k * k] for s in stats[shards:])
            residuals = sum(s[4 * k * k + 1] for s in stats[shards:])
            singular = sum(s[-1] for s in stats)
            change = np.empty(1, dtype=np.float64)
            cpu_kernels().relative_change(np.ascontiguousarray(left), np.ascontiguousarray(right), change, 0)
            loss = 0.5 * (float(residuals) + reg * float(penalty))
            state.scalars["singular_rows"] = float(singular)
            flags["diverged"] = not np.isfinite(loss)
            flags["converged"] = not flags["diverged"] and change[0] < settings["tol"]
            return loss, float(change[0])

        def stopped(state: LoopState) -> Optional[str]:
            return "diverged" if flags.get("diverged") else "converged" if flags.get("converged") else None

        state = LoopState(arrays={}, scalars={"singular_rows": 0.0}, seed=seed)
        state, reason, _ = run_loop(loop, state, step, "", stopped)
        pending.clear()  # an iteration submitted ahead of a stop: released, Dask cancels it
        if settings["gather"]:
            U = np.concatenate(run.gather([run.submit(_shards.host_factor, b, worker=w, name="U")
                                           for b, w in zip(U_blocks, workers)]))
            V = np.concatenate(run.gather([run.submit(_shards.host_factor, b, worker=w, name="V")
                                           for b, w in zip(V_blocks, workers)]))
        else:
            U = DistributedFactor(U_blocks, row_bounds, rank, data.dtype, run)
            V = DistributedFactor(V_blocks, col_bounds, rank, data.dtype, run)
        history = {name: np.asarray(values, dtype=np.float64)
                   for name, values in (("loss", state.loss), ("relative_change", state.relative_change))}
        info = {"singular_rows": int(state.scalars["singular_rows"]), "reg": reg, "kernel": "distributed",
                "solver": "cg" if cg_steps else "cholesky", "reg_scaling": settings["reg_scaling"], "seed": seed,
                "n_shards": shards, "row_bounds": row_bounds, "col_bounds": col_bounds,
                "workers": sorted(set(w for w in workers if w is not None))}
        return RecoveryResult(U=U, V=V, history=history, n_iter=state.iteration, converged=reason == "converged",
                              stop_reason=reason, seconds=time.perf_counter() - started,
                              backend=_backend_name(run.gather([run.submit(_shards.backend_of, shard, worker=w,
                                                                           name="backend")
                                                                for shard, w in zip(row_shards, workers)])),
                              info=info)

    # ------------------------------------------------------------------ recover.als's call
    def als(self, rows: Any, cols: Any, vals: Any, shape: tuple[int, int], rank: int, reg: float = 0.1, *,
            reg_scaling: str = "none", solver: str = "auto", cg_steps: int = CG_STEPS, max_iter: int = 50,
            tol: float = 1e-6, seed: Any = None, init: Any = None,
            callback: Optional[Callable[[int, dict[str, Any]], Any]] = None, progress: bool = False,
            checkpoint: Optional[str] = None, time_limit: Optional[float] = None) -> RecoveryResult:
        """:func:`recover.als`'s call on this cluster (its client, shards, gather and backend; the
        ALS settings from the arguments): a drop-in for code that calls recover.als, such as
        ``lowrank-hpc complete --scheduler``. ``checkpoint`` must be None."""
        if checkpoint is not None:
            raise ValueError(f"{FUNCTION}: checkpoints are not supported on a cluster (the state lives on the "
                             "workers); pass checkpoint=None")
        solver_ = DistributedALS(rank, reg, reg_scaling=reg_scaling, solver=solver, cg_steps=cg_steps,
                                 max_iter=max_iter, tol=tol, seed=seed, client=self.client, n_shards=self.n_shards,
                                 gather=self.gather, backend=self.backend)
        return solver_.fit(rows, cols, vals, shape=shape, init=init, callback=callback, progress=progress,
                           time_limit=time_limit).result_


def _is_dask_frame(x: Any) -> bool:
    return hasattr(x, "to_delayed") and hasattr(x, "npartitions") and hasattr(x, "columns")


def _is_pandas_frame(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and type(x).__module__.split(".")[0] == "pandas"


def _checked_columns(columns: Any) -> tuple[str, str, str]:
    """The names (row, col, value) of a DataFrame's entry columns; ValueError for anything else."""
    names = (columns,) if isinstance(columns, str) else tuple(columns)  # a str is one name, not three
    if len(names) != 3 or not all(isinstance(c, str) for c in names):
        raise ValueError(f"{FUNCTION}: columns must name three columns (row, col, value), got {columns!r}")
    return names


def _frame_shape(described: Sequence[dict[str, Any]], columns: Sequence[str], shape: Any) -> tuple[int, int]:
    """The shape of a DataFrame's entries from its partitions' descriptions
    (:func:`_shards.describe_partition`): ``shape`` checked against the indices, or for None
    (max row + 1, max col + 1)."""
    found = [d for d in described if d["nnz"]]
    if not found:
        raise ValueError(f"{FUNCTION}: the DataFrame has no rows; there is no entry")
    lows = (min(d["row_min"] for d in found), min(d["col_min"] for d in found))
    highs = (max(d["row_max"] for d in found), max(d["col_max"] for d in found))
    for name, low in zip(columns, lows):
        if low < 0:
            raise IndexError(f"{FUNCTION}: column {name!r} holds {low}; indices start at 0")
    if shape is None:
        return highs[0] + 1, highs[1] + 1
    shape = _checks.shape_2d(FUNCTION, "shape", shape)
    for name, high, bound in zip(columns, highs, shape):
        if high >= bound:
            raise IndexError(f"{FUNCTION}: column {name!r} holds {high}, out of range [0, {bound}) of shape {shape}")
    return shape


def _frame_here(frame: Any, columns: Sequence[str], shape: Any) -> "_ArrayData":
    """A pandas DataFrame's entries as _ArrayData, checked and shaped as _FrameData checks a Dask one."""
    rows, cols, vals = _shards.frame_arrays(frame, columns)
    return _ArrayData(rows, cols, vals, _frame_shape([_shards.describe_entries(columns, rows, cols, vals)],
                                                     columns, shape))


def _checked_init(call: Call, init: Any, n: int, rank: int) -> Optional[np.ndarray]:
    """The (n, rank) initial V on the host, by recover.als's own check of init (the call's float
    dtype, finite, its shape), or None."""
    return None if init is None else call.to_host(_check_init(call, init, (n, rank))[0])


class _ArrayData:
    """Entries given as arrays on the client: checked here as recover.als checks them, split by
    shard here, each piece scattered to its shard's worker."""

    def __init__(self, rows: Any, cols: Any, vals: Any, shape: Any):
        _checks.required(FUNCTION, rows=rows, cols=cols, vals=vals)
        if shape is None:
            raise ValueError(f"{FUNCTION}: shape=(m, n) is required with array input")
        self.shape = _checks.shape_2d(FUNCTION, "shape", shape)
        call = resolve(FUNCTION, rows=rows, cols=cols, vals=vals)
        rows, cols, vals = _check_coordinates(call, rows, cols, vals)
        self.call = call
        self.rows, self.cols, self.vals = (call.to_host(a) for a in (rows, cols, vals))
        for name, index, bound in (("rows", self.rows, self.shape[0]), ("cols", self.cols, self.shape[1])):
            bad = np.flatnonzero((index < 0) | (index >= bound))
            if bad.size:
                raise IndexError(f"{FUNCTION}: {name}[{bad[0]}] = {int(index[bad[0]])} is out of range [0, {bound})")
        self.dtype = self.vals.dtype

    def bounds(self, shards: int, rank: int):
        m, n = self.shape
        rows = np.bincount(self.rows, minlength=m) + rank / 3.0
        cols = np.bincount(self.cols, minlength=n) + rank / 3.0
        return (_shards.balanced_bounds(rows, np.arange(m + 1), shards),
                _shards.balanced_bounds(cols, np.arange(n + 1), shards))

    def shards(self, run: Any, row_bounds, col_bounds, workers, backend: str):
        pieces = _shards.split_entries(self.rows, self.cols, self.vals, row_bounds, col_bounds)
        index, dtype = self.rows.dtype.str, self.dtype.str

        def built(side: str, bounds):
            return [run.submit(_shards.build_shard, int(lo), int(hi), backend, side, index, dtype,
                               run.scatter(piece, worker=w), worker=w, name=f"{side}-shard")
                    for lo, hi, w, piece in zip(bounds[:-1], bounds[1:], workers, getattr(pieces, side))]

        return built("rows", row_bounds), built("cols", col_bounds)

    def initial_V(self, init: Any, rank: int) -> Optional[np.ndarray]:
        return _checked_init(self.call, init, self.shape[1], rank)


class _FrameData:
    """Entries in a Dask DataFrame: each partition is checked, counted and split by shard on the
    worker that holds it; the pieces of a shard are fetched by the worker that builds it."""

    def __init__(self, run: Any, frame: Any, columns: tuple[str, str, str], shape: Any):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise KeyError(f"{FUNCTION}: the DataFrame has no column {missing[0]!r} (columns: {list(frame.columns)});"
                           " pass columns=(row, col, value) names")
        self.run, self.columns = run, columns
        self.parts = run.client.compute(frame[list(columns)].to_delayed())
        described = run.gather([run.submit(_shards.describe_partition, part, columns, name="describe")
                                for part in self.parts])
        self.shape = _frame_shape(described, columns, shape)
        dtype = np.result_type(*[np.dtype(d["dtype"]) for d in described if d["nnz"]])
        self.dtype = dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)

    def bounds(self, shards: int, rank: int):
        m, n = self.shape
        row_edges = np.unique(np.linspace(0, m, min(m, _BINS_PER_SHARD * shards) + 1).astype(np.int64))
        col_edges = np.unique(np.linspace(0, n, min(n, _BINS_PER_SHARD * shards) + 1).astype(np.int64))
        # np.histogram's last bin is closed: edges shifted by half keep integer keys in their bin.
        counts = self.run.gather([self.run.submit(_shards.partition_histograms, part, self.columns, row_edges - 0.5,
                                                  col_edges - 0.5, name="histogram") for part in self.parts])
        rows = np.sum([c[0] for c in counts], axis=0) + np.diff(row_edges) * rank / 3.0
        cols = np.sum([c[1] for c in counts], axis=0) + np.diff(col_edges) * rank / 3.0
        return (_shards.balanced_bounds(rows, row_edges, shards), _shards.balanced_bounds(cols, col_edges, shards))

    def shards(self, run: Any, row_bounds, col_bounds, workers, backend: str):
        splits = [run.submit(_shards.split_partition, part, self.columns, row_bounds, col_bounds, self.dtype.str,
                             name="split") for part in self.parts]

        def built(side: str, bounds):
            result = []
            for s, (lo, hi, w) in enumerate(zip(bounds[:-1], bounds[1:], workers)):
                pieces = [run.submit(_shards.select, split, side, s, name="piece") for split in splits]
                result.append(run.submit(_shards.build_shard, int(lo), int(hi), backend, side, "<i8", self.dtype.str,
                                         *pieces, worker=w, name=f"{side}-shard"))
            return result

        shards = built("rows", row_bounds), built("cols", col_bounds)
        return shards

    def initial_V(self, init: Any, rank: int) -> Optional[np.ndarray]:
        # The values stay on the workers: a host call that knows their dtype checks init as the array path does.
        call = Call(function=FUNCTION, backend="cpu", _float_dtype=self.dtype, _float_owner="vals")
        return _checked_init(call, init, self.shape[1], rank)


def _system_bytes_limit(run: Any, workers: Sequence[Any], backend: str) -> Optional[int]:
    """The bytes an exact row system may take where the shards solve: the CUDA kernel's shared
    memory when a worker solves on its GPU, else None (any size, as recover.als on the CPU). With
    backend "auto" each worker says which it takes: a limit applied on CPU-only workers made
    solver="auto" run CG where recover.als runs exact solves (float64, rank 78 to 95)."""
    if backend == "cpu":
        return None
    if backend == "auto":
        chosen = run.gather([run.submit(worker_backend, "auto", FUNCTION, worker=w, name="backend")
                             for w in dict.fromkeys(workers)])
        if "cuda" not in chosen:
            return None
    return CONSTANTS["als_shared_bytes"]


def _backend_name(backends: Sequence[str]) -> str:
    """The backend the shards ran on: "cpu", "cuda", or "cpu+cuda" for a mixed cluster."""
    return "+".join(sorted(set(backends)))
