"""Thousands of independent completion (or sensing) problems, cut into chunks that run on a Dask
cluster's workers (or in this process), each chunk one call of the batched solvers."""
from __future__ import annotations

import numbers
import time
from typing import Any, Optional

import numpy as np

from .. import _backend, _checks
from .._arrays import for_backend, to_numpy
from ..recover import batched_als, batched_factored_gd, factored_gd
from ..recover._driver import LOOP_CONSTRAINTS
from ..recover._result import RecoveryResult
from ..recover.als import _initial_V
from ..recover.batched_gd import problem_seed, small_init
from ..recover.factored_gd import resolve_init
from ..sensing import EntrySampling
from . import _problems
from ._executor import executor, worker_backend
from ._problems import FUNCTION, PATH_OPTIONS, REFUSED_OPTIONS, Chunk
from .failure import ProblemFailure

# Per-problem options: arrays (or lists) with one entry per problem, sliced into each chunk.
_PER_PROBLEM = ("init", "step", "damping")


def solve_batch(problems: Any, rank: int, *, client: Any = None, chunk_size: Optional[int] = None,
                method: str = "als", seed: Optional[int] = None, backend: str = "auto", retries: int = 2,
                **options: Any) -> list:
    """Solve B independent low-rank problems on a Dask cluster (or in this process), in chunks.

    Each chunk is one call of the batched solvers (:func:`lowrank_hpc.recover.batched_als`, or
    :func:`lowrank_hpc.recover.batched_factored_gd` for its methods) on the worker's own backend
    (the GPU when the worker has one, with ``backend="auto"``); the B results come back in input
    order. Without a client the same chunks run here, one after another, with the same results.

    Parameters
    ----------
    problems : one of
        - a stack: a (B, m, n) float array (or a list of B equal-shape 2-D arrays or nested
          lists of rows), NaN for a missing entry;
        - a list of tuples (rows, cols, vals, shape): each problem's observed entries and its
          (m, n) (shapes may differ: problems of one shape and value dtype are chunked
          together). Only a tuple is read as entries: a list in the list is a matrix of a stack;
        - a list of (operator, y) with :mod:`lowrank_hpc.sensing` operators: EntrySampling ones
          are completion problems (as entries); the others are solved by
          :func:`lowrank_hpc.recover.factored_gd`, one at a time within their chunk.
    rank : the factors' width, an int >= 1 (ALS: at most min(m, n) of every problem).
    client : a ``dask.distributed.Client``, or None to run in this process.
    chunk_size : problems per chunk (per task). None: as many as keep a chunk's data under
        4 MiB, at most 512. It depends on the data only, never on the cluster, so every cluster
        (and client=None) cuts a batch the same way.
    method : "als" (batched ALS), or a factored_gd method: "gd", "alternating", "scaled",
        "scaled_damped" run batched; "gd_rebalanced" and sensing operators run factored_gd per
        problem.
    seed : None (one seed is drawn here for the whole batch) or an int in [0, 2**64). Problem b
        starts as the single solvers would with ``seed=(seed, b)`` (ALS) or ``seed=(seed + b) % 2**64``
        (gradient methods), so its start never depends on its chunk; ``result.info["seed"]``
        says which.
    backend : "auto" (each worker uses its GPU when it has one, else its CPU), "cpu" or "cuda".
        Results always come back as numpy arrays.
    retries : how often Dask runs a chunk again after it raised (a chunk whose worker died is
        rescheduled by Dask anyway, up to its ``distributed.scheduler.allowed-failures``).
    **options : the solver's settings, e.g. ``reg``, ``reg_scaling``, ``solver``, ``max_iter``,
        ``tol``, ``time_limit`` (per chunk) for ALS; ``step``, ``damping``, ``init``,
        ``init_scale``, ``max_iter``, ``tol`` for the gradient methods. ``init``, ``step`` and
        ``damping`` may be given per problem (an array or list with B entries: ALS ``init`` a
        (B, n, rank) array or B (n_b, rank) arrays; gradient ``init`` a pair (U0s, V0s)).
        ``checkpoint``, ``callback`` and ``progress`` are refused (chunks run on the workers).

    Returns
    -------
    A list of B entries in input order: problem b's :class:`lowrank_hpc.recover.RecoveryResult`
    (U (m, rank), V (n, rank) numpy arrays, history of its own iterations, n_iter, converged,
    stop_reason, the chunk's seconds and backend; info["seed"], info["chunk"] and, for ALS,
    info["kernel"], or for the gradient methods ``step``, ``step_halvings`` and
    info["damping"]), or a :class:`ProblemFailure` (falsy; ``.error`` is the exception) where
    that problem's solve raised: NaN/inf values (in the stack, vals or y), an index out of
    range, no observed entry. A failing problem never sinks its chunk: the chunk's problems are
    then solved one at a time.
    With the batched ALS every problem gets the bits ``batched_als`` over the whole batch would
    give it. With the gradient methods the default ``step`` and ``damping`` come from a power
    iteration over the chunk's problems, so they depend on the chunk in their last digits; pass
    ``step`` (and ``damping``) to make every result independent of the chunking.

    Raises (before any task is sent)
    ------
    ValueError for a ragged stack, an unknown method, a rank out of range for some problem's
    shape, a malformed problem (a bad shape; rows, cols and vals not 1-D of one length; y not
    1-D with one value per measurement of its operator) or per-problem option, a bad setting
    (the solver's own check, max_iter included; a TypeError for one of the wrong type), a
    closed client; TypeError for an unknown option, a problem that is neither kind, or a bad
    client. Errors of the cluster (a chunk that keeps failing, KilledWorker) propagate from Dask.
    """
    rank = _checks.integer(FUNCTION, "rank", rank)
    if rank < 1:
        raise ValueError(f"{FUNCTION}: rank must be an integer >= 1, got {rank}")
    method = _problems.check_method(method)
    if chunk_size is not None:
        chunk_size = _checks.positive_int(FUNCTION, "chunk_size", chunk_size)
    seed = _checks.seed_argument(FUNCTION, "seed", seed)
    retries = _checks.nonnegative_int(FUNCTION, "retries", retries)
    if backend not in ("auto", "cpu", "cuda"):
        raise ValueError(f"{FUNCTION}: backend must be 'auto', 'cpu' or 'cuda', got {backend!r}")
    refused = sorted(set(options) & set(REFUSED_OPTIONS))
    if refused:
        raise TypeError(f"{FUNCTION}: {refused[0]!r} is not taken: solve_batch sets {REFUSED_OPTIONS[refused[0]]}")

    if _problems.is_stack(problems):
        stack = _problems.read_stack(problems)
        count = stack.shape[0]
        path = _problems.path_of(method, None)
        size = _problems.chunk_problems(count, np.full(1, stack[0].nbytes, dtype=np.float64), chunk_size)
        chunks = _problems.stack_chunks(stack, size)
        for chunk in chunks:
            chunk.path = path
        shapes = [tuple(stack.shape[1:])] * count
        kinds = {(path, tuple(stack.shape[1:]), stack.dtype.str)}
    else:
        items = _problems.read_items(problems)
        count = len(items)
        paths = [_problems.path_of(method, item) for item in items]
        if method == "als" and "single" in paths:
            b = paths.index("single")
            raise ValueError(f"{FUNCTION}: problem {b} is {type(items[b].operator).__name__} sensing; ALS completes "
                             "observed entries only (EntrySampling operators or (rows, cols, vals, shape)); use a "
                             "factored_gd method for sensing problems")
        chunks = _problems.item_chunks(items, paths, chunk_size)
        shapes = [item.shape for item in items]
        kinds = {(path, item.shape, item.dtype.str) for item, path in zip(items, paths)}
    scalar, per_problem = _per_problem_options(method, options, count, shapes, rank)
    for path in sorted({kind[0] for kind in kinds}):
        unknown = sorted(set(options) - set(PATH_OPTIONS[path]))
        if unknown:
            raise TypeError(f"{FUNCTION}: unknown option {unknown[0]!r} for method {method!r} "
                            f"({_SOLVER_NAMES[path]} takes {', '.join(PATH_OPTIONS[path])})")
    for kind in sorted(kinds):
        _dry_run(kind, method, rank, scalar)
    for chunk in chunks:
        chunk.options = {name: _slice(values, chunk) for name, values in per_problem.items()}

    seed = _checks.draw_seed() if seed is None else seed
    settings = {"method": method, "rank": rank, "seed": seed, "backend": backend, "options": scalar}
    run = executor(client, retries, function=FUNCTION)
    futures = [run.submit(_solve_chunk, chunk, settings, name=f"solve_batch-chunk{chunk.number}")
               for chunk in chunks]
    results: list[Any] = [None] * count
    for chunk, solved in zip(chunks, run.gather(futures)):
        for b, result in zip(chunk.indices, solved):
            results[int(b)] = result
    return results


_SOLVER_NAMES = {"batched_als": "batched_als", "batched_gd": "batched_factored_gd", "single": "factored_gd"}


# ---------------------------------------------------------------------- options, on the client
def _per_problem_options(method: str, options: dict[str, Any], count: int, shapes: list[tuple[int, int]],
                         rank: int) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(the options every chunk takes as they are, {name: B per-problem values}), checked here."""
    scalar, per_problem = dict(options), {}
    init = options.get("init")
    if method == "als" and init is not None:
        values = _sequence("init", init, count)
        for b, (value, (m, n)) in enumerate(zip(values, shapes)):
            if np.shape(value) != (n, rank):
                raise ValueError(f"{FUNCTION}: init[{b}] (problem {b}'s initial V) has shape {np.shape(value)}, "
                                 f"expected {(n, rank)}")
        per_problem["init"] = values
    elif method != "als" and isinstance(init, (tuple, list)):
        if len(init) != 2:
            raise ValueError(f"{FUNCTION}: init must be 'small', 'spectral' or a pair (U0s, V0s) of per-problem "
                             f"factors, got a sequence of length {len(init)}")
        left, right = _sequence("init[0] (U0s)", init[0], count), _sequence("init[1] (V0s)", init[1], count)
        for b, (U0, V0, (m, n)) in enumerate(zip(left, right, shapes)):
            if np.shape(U0) != (m, rank) or np.shape(V0) != (n, rank):
                raise ValueError(f"{FUNCTION}: problem {b}'s init has shapes {np.shape(U0)}, {np.shape(V0)}; "
                                 f"expected {(m, rank)} and {(n, rank)}")
        per_problem["init"] = list(zip(left, right))
    for name in ("step", "damping"):
        value = options.get(name)
        if value is None or isinstance(value, numbers.Real):
            continue
        values = np.asarray(to_numpy(value), dtype=np.float64)
        if values.shape != (count,):
            raise ValueError(f"{FUNCTION}: {name} must be a number or have one value per problem ({count},), got "
                             f"shape {values.shape}")
        bad = ~np.isfinite(values) | ((values < 0) if name == "damping" else (values <= 0))
        if bad.any():
            raise ValueError(f"{FUNCTION}: {name}[{int(np.argmax(bad))}] = {values[bad][0]} must be "
                             f"{'non-negative' if name == 'damping' else 'positive'} and finite")
        per_problem[name] = list(values)
    for name in per_problem:
        scalar.pop(name, None)
    return scalar, per_problem


def _sequence(name: str, value: Any, count: int) -> list[Any]:
    """B per-problem host arrays from a (B, ...) array or a list of B arrays."""
    if isinstance(value, (list, tuple)) and len(value) == count:
        return [to_numpy(v) for v in value]
    if hasattr(value, "shape") and len(value.shape) >= 1 and value.shape[0] == count:
        return list(to_numpy(value))
    raise ValueError(f"{FUNCTION}: {name} must hold one array per problem ({count} of them), got "
                     f"{type(value).__name__}{' of shape ' + str(np.shape(value)) if hasattr(value, 'shape') else ''}")


def _slice(values: list[Any], chunk: Chunk) -> list[Any]:
    return [values[int(b)] for b in chunk.indices]


def _dry_run(kind: tuple, method: str, rank: int, scalar: dict[str, Any]) -> None:
    """Check the rank and settings against one (path, shape, dtype) by the solver itself, on a
    one-entry problem with max_iter=0, so a bad setting raises here and not in every chunk."""
    path, shape, dtype = kind
    if "max_iter" in scalar:  # overridden below: the user's value gets the solvers' own check here
        LOOP_CONSTRAINTS["max_iter"](FUNCTION, "max_iter", scalar["max_iter"])
    options = dict(scalar, max_iter=0)
    rows, cols, vals = np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, np.dtype(dtype))
    offsets = np.array([0, 1], dtype=np.int64)
    try:
        if path == "batched_als":
            batched_als(rows, cols, vals, offsets, shape, rank, seed=0, **options)
        elif path == "batched_gd":
            batched_factored_gd(rows, cols, vals, offsets, shape, rank, method=method, seed=0, **options)
        else:
            factored_gd(EntrySampling(rows, cols, shape), vals, rank, method=method, seed=0, **options)
    except (TypeError, ValueError) as error:
        message = str(error).replace(f"{_SOLVER_NAMES[path]}: ", "")
        raise type(error)(f"{FUNCTION}: {message} (problems of shape {shape})") from None


# ---------------------------------------------------------------------- the chunk, on a worker
def _solve_chunk(chunk: Chunk, settings: dict[str, Any]) -> list[Any]:
    """Every problem of the chunk: a RecoveryResult (numpy factors) or a ProblemFailure, in order."""
    backend = worker_backend(settings["backend"], FUNCTION)
    with _backend.use_backend(backend):
        if chunk.path == "single":
            return [_solve_single(chunk, k, settings, backend) for k in range(len(chunk.indices))]
        return _solve_batched(chunk, settings, backend)


def _to(backend: str, x: Any) -> Any:
    return _backend.cupy_module().asarray(x) if backend == "cuda" and isinstance(x, np.ndarray) else x


def _entries_of(chunk: Chunk):
    """(rows, cols, vals, offsets) of the chunk's problems, from its stack slice or its entries."""
    if chunk.entries is not None:
        return chunk.entries
    X = chunk.dense
    index = np.int32 if max(X.shape[1:]) < 2**31 else np.int64
    problem, rows, cols = np.nonzero(~np.isnan(X))  # row-major within each problem
    counts = np.bincount(problem, minlength=X.shape[0])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return rows.astype(index), cols.astype(index), X[problem, rows, cols], offsets


def _solve_batched(chunk: Chunk, settings: dict[str, Any], backend: str) -> list[Any]:
    rows, cols, vals, offsets = _entries_of(chunk)
    counts = np.diff(offsets)
    results: list[Any] = [None] * len(chunk.indices)
    solvable = []
    for k, b in enumerate(chunk.indices):
        if counts[k] == 0:
            results[k] = ProblemFailure.from_exception(b, ValueError(f"{FUNCTION}: problem {b} has no observed entry"))
        else:
            solvable.append(k)
    if not solvable:
        return results
    data = (rows, cols, vals, offsets, counts)
    try:
        solved = _batched_call(chunk, settings, backend, data, solvable)
    except Exception:  # a problem that fails must not sink the others: solve them one at a time
        solved = []
        for k in solvable:
            try:
                solved += _batched_call(chunk, settings, backend, data, [k])
            except Exception as error:
                solved.append(ProblemFailure.from_exception(chunk.indices[k], error))
    for k, result in zip(solvable, solved):
        results[k] = result
    return results


def _batched_call(chunk: Chunk, settings: dict[str, Any], backend: str, data, members: list[int]) -> list[Any]:
    """One batched solver call on the chunk's problems ``members`` (local positions, each with
    entries); their results, split per problem."""
    rows, cols, vals, offsets, counts = data
    if len(members) < len(chunk.indices):
        pieces = [slice(offsets[k], offsets[k + 1]) for k in members]
        rows, cols, vals = (np.concatenate([a[p] for p in pieces]) for a in (rows, cols, vals))
        offsets = np.concatenate([[0], np.cumsum(counts[members])]).astype(np.int64)
    indices = chunk.indices[members]
    shape, rank, seed, options = chunk.shape, settings["rank"], settings["seed"], dict(settings["options"])
    started = time.perf_counter()
    rows, cols, vals, offsets_d = (_to(backend, a) for a in (rows, cols, vals, offsets))
    if chunk.path == "batched_als":
        options.pop("init", None)  # None here: per-problem starts are in chunk.options
        given = chunk.options.get("init")
        if given is not None:
            init = _to(backend, np.stack([np.asarray(given[k], dtype=vals.dtype) for k in members]))
        else:
            init = _als_starts(backend, seed, indices, shape[1], rank, vals.dtype)
        result = batched_als(rows, cols, vals, offsets_d, shape, rank, seed=seed, init=init, **options)
        seeds = [None if given is not None else (seed, int(b)) for b in indices]
    else:
        init = resolve_init(FUNCTION, options.pop("init", None), settings["method"])
        given = chunk.options.get("init")
        if given is not None:
            init = tuple(_to(backend, np.stack([np.asarray(given[k][side], dtype=vals.dtype) for k in members]))
                         for side in (0, 1))
        elif isinstance(init, str) and init == "small":
            init = tuple(_to(backend, a) for a in small_init([problem_seed(seed, b) for b in indices], shape, rank,
                                                             options.pop("init_scale", 1e-3), vals.dtype))
        for name in ("step", "damping"):
            if name in chunk.options:
                options[name] = _to(backend, np.asarray([chunk.options[name][k] for k in members]))
        result = batched_factored_gd(rows, cols, vals, offsets_d, shape, rank, method=settings["method"], init=init,
                                     seed=seed, **options)
        seeds = [problem_seed(seed, b) for b in indices]
    seconds = time.perf_counter() - started
    return [_one(result, k, seeds[k], chunk, seconds, len(members)) for k in range(len(members))]


def _als_starts(backend: str, seed: int, indices: np.ndarray, n: int, rank: int, dtype) -> Any:
    """(c, n, rank) initial V: problem b's is stream b of key ``seed``, as batched_als over the
    whole batch (or als(seed=(seed, b))) draws it; one Philox call per run of consecutive problems."""
    call = for_backend(FUNCTION, backend)
    runs = np.split(np.arange(len(indices)), np.flatnonzero(np.diff(indices) != 1) + 1)
    parts = [_initial_V(call, seed, int(indices[run[0]]), len(run), n, rank, dtype) for run in runs]
    return parts[0] if len(parts) == 1 else call.xp.concatenate(parts)


def _one(result: RecoveryResult, k: int, seed: Any, chunk: Chunk, seconds: float, solved: int) -> RecoveryResult:
    """Problem k's RecoveryResult out of a batched one (numpy factors, its own history)."""
    n_iter = int(result.info["n_iter"][k])
    history = {name: np.ascontiguousarray(to_numpy(values)[:n_iter, k]) for name, values in result.history.items()}
    info: dict[str, Any] = {"seed": seed, "chunk": chunk.number, "chunk_problems": solved}
    step, halvings = None, 0
    if "kernel" in result.info:  # ALS
        info.update(kernel=result.info["kernel"], solver=result.info["solver"], reg=result.info["reg"],
                    reg_scaling=result.info["reg_scaling"], chunk_singular_rows=result.info["singular_rows"])
    else:
        step = float(result.info["steps"][k])
        halvings = int(result.info["step_halvings"][k])
        info["damping"] = float(result.info["dampings"][k])
    return RecoveryResult(U=np.ascontiguousarray(to_numpy(result.U[k])), V=np.ascontiguousarray(to_numpy(result.V[k])),
                          history=history, n_iter=n_iter, converged=bool(result.converged[k]),
                          stop_reason=result.stop_reason[k], seconds=seconds, backend=result.backend, step=step,
                          step_halvings=halvings, info=info)


def _solve_single(chunk: Chunk, k: int, settings: dict[str, Any], backend: str) -> Any:
    """Problem k of a "single" chunk by factored_gd, or its ProblemFailure."""
    b = int(chunk.indices[k])
    try:
        if chunk.operators is not None:
            operator, y = chunk.operators[k]
        else:  # a stack's slice (NaN for missing): its observed entries, as the batched paths read them
            observed = ~np.isnan(chunk.dense[k])
            operator, y = (*np.nonzero(observed), tuple(chunk.shape)), chunk.dense[k][observed]
        if isinstance(operator, tuple):  # entries: completion by factored_gd's own methods
            rows, cols, shape = operator
            if rows.shape[0] == 0:
                raise ValueError(f"{FUNCTION}: problem {b} has no observed entry")
            operator = EntrySampling(_to(backend, rows), _to(backend, cols), shape)
        options = dict(settings["options"])
        for name, values in chunk.options.items():
            value = values[k]
            options[name] = tuple(_to(backend, np.asarray(v)) for v in value) if name == "init" else value
        result = factored_gd(operator, _to(backend, np.asarray(y)), settings["rank"], method=settings["method"],
                             seed=problem_seed(settings["seed"], b), **options)
    except Exception as error:
        return ProblemFailure.from_exception(b, error)
    result.U, result.V = to_numpy(result.U), to_numpy(result.V)
    if result.X is not None:
        result.X = to_numpy(result.X)
    result.info = dict(result.info, chunk=chunk.number)
    return result
