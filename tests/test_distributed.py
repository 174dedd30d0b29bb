"""lowrank_hpc.distributed: solve_batch and DistributedALS on a LocalCluster of two worker processes
(one cluster for the module), against the single-node solvers; and without a client, without Dask."""
from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc.distributed import DistributedALS, DistributedFactor, ProblemFailure, solve_batch

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(lr.__file__)))


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None)
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def transitions(client) -> int:
    """The scheduler's count of task state transitions: unchanged when no task was sent."""
    return client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)


def settled_transitions(client, timeout: float = 20.0) -> int:
    """The transition count once the scheduler is quiet: the keys of earlier tests' released
    futures are forgotten asynchronously (their transitions landed inside a later test's window
    under a loaded CI run), so wait until the count holds still for half a second."""
    gc.collect()
    deadline = time.monotonic() + timeout
    count = transitions(client)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = transitions(client)
        if now == count:
            return now
        count = now
    return count


def stack(seed=0, B=120, shape=(12, 10), rank=2, observed=0.5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((B, shape[0], rank)) @ rng.standard_normal((B, rank, shape[1]))
    return np.where(rng.random(X.shape) < observed, X, np.nan)


def entries_of(S):
    """(rows, cols, vals, offsets) of a stack, each problem's entries in row-major order."""
    b, i, j = np.nonzero(~np.isnan(S))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=S.shape[0]))])
    return i, j, S[b, i, j], offsets


def completion(seed=0, shape=(300, 200), rank=5, nnz=6000, duplicates=0):
    rng = np.random.default_rng(seed)
    U, V = rng.standard_normal((shape[0], rank)), rng.standard_normal((shape[1], rank))
    rows, cols = rng.integers(0, shape[0], nnz), rng.integers(0, shape[1], nnz)
    if duplicates:  # repeated coordinates: separate observations, as recover.als counts them
        rows, cols = np.concatenate([rows, rows[:duplicates]]), np.concatenate([cols, cols[:duplicates]])
    vals = np.einsum("ij,ij->i", U[rows], V[cols]) + 0.01 * rng.standard_normal(rows.shape[0])
    return rows, cols, vals


def same_results(got, want_U, want_V, n_iter, stop):
    assert isinstance(got, lr.recover.RecoveryResult)
    np.testing.assert_array_equal(got.U, want_U)
    np.testing.assert_array_equal(got.V, want_V)
    assert got.n_iter == n_iter and got.stop_reason == stop
    assert got.history["loss"].shape == (n_iter,)


# ---------------------------------------------------------------------- solve_batch
def test_batch_on_the_cluster_equals_batched_als(client):
    S = stack()
    rows, cols, vals, offsets = entries_of(S)
    want = lr.recover.batched_als(rows, cols, vals, offsets, (12, 10), 2, 0.01, seed=5, max_iter=40)
    got = solve_batch(S, 2, client=client, chunk_size=25, seed=5, reg=0.01, max_iter=40)
    local = solve_batch(S, 2, chunk_size=25, seed=5, reg=0.01, max_iter=40)
    assert len(got) == len(local) == S.shape[0]
    for b, (result, here) in enumerate(zip(got, local)):
        same_results(result, want.U[b], want.V[b], int(want.info["n_iter"][b]), want.stop_reason[b])
        np.testing.assert_array_equal(result.history["loss"], want.history["loss"][:result.n_iter, b])
        assert result.info["seed"] == (5, b) and result.info["chunk"] == b // 25
        same_results(here, result.U, result.V, result.n_iter, result.stop_reason)


def test_batch_of_entries_with_two_shapes_and_a_gradient_method(client):
    rng = np.random.default_rng(3)
    problems = []
    for shape, count in (((9, 8), 30), ((7, 11), 20)):
        for _ in range(count):
            rows, cols = np.nonzero(rng.random(shape) < 0.6)
            M = rng.standard_normal((shape[0], 2)) @ rng.standard_normal((2, shape[1]))
            problems.append((rows, cols, M[rows, cols], shape))
    got = solve_batch(problems, 2, client=client, method="scaled", step=0.5, seed=11, max_iter=60, chunk_size=8)
    for first, count, shape in ((0, 30, (9, 8)), (30, 20, (7, 11))):
        group = problems[first:first + count]
        offsets = np.concatenate([[0], np.cumsum([len(p[0]) for p in group])])
        want = lr.recover.batched_factored_gd(*(np.concatenate([p[k] for p in group]) for k in range(3)), offsets,
                                              shape, 2, method="scaled", step=0.5, seed=11 + first, max_iter=60)
        for k in range(count):
            result = got[first + k]
            same_results(result, want.U[k], want.V[k], int(want.info["n_iter"][k]), want.stop_reason[k])
            assert result.step == want.info["steps"][k] and result.info["seed"] == 11 + first + k


def test_a_failing_problem_returns_its_error_in_its_slot(client):
    clean = stack(B=40)
    S = clean.copy()
    S[3] = np.nan  # no observed entry
    S[17, 2, 2] = np.inf  # not a number the solver takes
    got = solve_batch(S, 2, client=client, chunk_size=10, seed=2, reg=0.01, max_iter=20)
    want = lr.recover.batched_als(*entries_of(clean), (12, 10), 2, 0.01, seed=2, max_iter=20)
    for failed, fragment in ((3, "no observed entry"), (17, "NaN/inf")):
        assert isinstance(got[failed], ProblemFailure) and not got[failed]
        assert got[failed].index == failed and isinstance(got[failed].error, ValueError)
        assert fragment in str(got[failed].error) and "ValueError: " in got[failed].traceback
        with pytest.raises(ValueError):
            got[failed].reraise()
    for b in set(range(40)) - {3, 17}:  # the others, also those sharing a chunk with a failure, as if it were fine
        same_results(got[b], want.U[b], want.V[b], int(want.info["n_iter"][b]), want.stop_reason[b])


@pytest.mark.parametrize("bad, error, fragment", [
    (dict(problems=[np.zeros((3, 4)), np.zeros((3, 5))]), ValueError, "ragged stack"),
    (dict(problems=np.empty(3, dtype=object)), ValueError, "ragged stack"),
    (dict(method="newton"), ValueError, "unknown method 'newton'"),
    (dict(rank=11), ValueError, "rank must be an integer in [1, min(shape) = 10]"),
    (dict(rank=0), ValueError, "rank must be an integer >= 1"),
    (dict(reg=-1.0), ValueError, "reg must be"),
    (dict(step_size=0.1), TypeError, "unknown option 'step_size'"),
    (dict(checkpoint="run.npz"), TypeError, "'checkpoint' is not taken"),
    (dict(problems=[(np.zeros(3, int), np.zeros(2, int), np.zeros(3), (4, 4))]), ValueError, "one length"),
    (dict(problems=[(lr.sensing.GaussianSensing(10, (4, 4), seed=0), np.zeros(10))]), ValueError, "ALS completes"),
    (dict(init=np.zeros((120, 9, 2))), ValueError, "init[0]"),
    # max_iter: the dry run sets its own, the user's value is checked before it (it failed in every slot)
    (dict(max_iter=-1), ValueError, "max_iter must be >= 0, got -1"),
    (dict(max_iter=1.5), TypeError, "max_iter must be an int, got float 1.5"),
    (dict(max_iter="x"), TypeError, "max_iter must be an int, got str 'x'"),
    (dict(max_iter=None), TypeError, "max_iter must be an int, got NoneType None"),
    # sensing y against its operator (it failed in its slot, unlike malformed entries)
    (dict(problems=[(lr.sensing.GaussianSensing(10, (4, 4), seed=0), np.zeros(9))], method="gd"), ValueError,
     "problem 0's y has length 9 but the operator makes 10 measurements"),
    (dict(problems=[(lr.sensing.GaussianSensing(10, (4, 4), seed=0), np.zeros((10, 1)))], method="gd"), ValueError,
     "problem 0's y must be 1-D, got shape (10, 1)"),
    # only a tuple is an entries problem: a list in the list is a stack's matrix
    (dict(problems=[(np.array([0]), np.array([0]), np.array([1.0]), (2, 2)), [[0, 1], [1, 0], [5, 6], [2, 2]]]),
     TypeError, "problem 1 must be a tuple (rows, cols, vals, shape) or (operator, y)"),
    (dict(problems=[[[0.0, 1.0], [1.0]]]), ValueError, "ragged stack: problem 0 is a nested list"),
])
def test_bad_input_raises_before_any_task_is_sent(client, bad, error, fragment):
    arguments = dict(problems=stack(), rank=2, client=client, seed=0)
    arguments.update(bad)
    before = settled_transitions(client)
    with pytest.raises(error) as raised:
        solve_batch(arguments.pop("problems"), arguments.pop("rank"), **arguments)
    assert fragment in str(raised.value) and str(raised.value).startswith("solve_batch: ")
    assert transitions(client) == before


def test_batch_without_a_client_runs_sensing_and_rebalanced_problems_one_at_a_time():
    rng = np.random.default_rng(4)
    M = rng.standard_normal((10, 2)) @ rng.standard_normal((2, 8))
    op = lr.sensing.GaussianSensing(120, (10, 8), seed=1)
    rows, cols = np.nonzero(rng.random((10, 8)) < 0.7)
    sampled = lr.sensing.EntrySampling(rows, cols, (10, 8))
    got = solve_batch([(op, op.forward(M)), (sampled, sampled.forward(M)), (rows, cols, M[rows, cols], (10, 8))], 2,
                      method="gd_rebalanced", seed=7, max_iter=300, tol=1e-8)
    for b, (operator, y) in enumerate([(op, op.forward(M)), (sampled, M[rows, cols]), (sampled, M[rows, cols])]):
        want = lr.recover.factored_gd(operator, y, 2, method="gd_rebalanced", seed=7 + b, max_iter=300, tol=1e-8)
        np.testing.assert_allclose(got[b].U, want.U, rtol=1e-12, atol=1e-14)
        assert got[b].n_iter == want.n_iter and got[b].info["chunk"] == 0


def test_batch_of_a_stack_one_at_a_time_and_seeds_that_wrap():
    """A (B, m, n) stack under a per-problem method (gd_rebalanced) solves each problem from its
    observed entries (it had no operators: every problem failed), and problem b's seed is
    (seed + b) mod 2**64, the one factored_gd takes, also past the top of the range."""
    rng = np.random.default_rng(5)
    stack = rng.standard_normal((3, 10, 2)) @ rng.standard_normal((3, 2, 8))
    stack[rng.random(stack.shape) > 0.7] = np.nan
    seed = 2**64 - 2
    for method in ("gd_rebalanced", "gd"):
        got = solve_batch(stack, 2, method=method, seed=seed, max_iter=50)
        for b in range(3):
            rows, cols = np.nonzero(~np.isnan(stack[b]))
            want = lr.recover.factored_gd(lr.sensing.EntrySampling(rows, cols, (10, 8)), stack[b][rows, cols], 2,
                                          method=method, seed=(seed + b) % 2**64, max_iter=50)
            np.testing.assert_allclose(got[b].U, want.U, rtol=1e-6, atol=1e-9)
            assert got[b].info["seed"] == (seed + b) % 2**64


def test_a_nested_list_is_a_matrix_of_a_stack_not_an_entries_problem():
    """[[0, 1], [1, 0], [5, 6], [2, 2]] is a 4 x 2 matrix (it was read as entries: rows [0, 1],
    cols [1, 0], vals [5, 6] of a 2 x 2 problem); floats alike (they were a TypeError)."""
    for nested in ([[0, 1], [1, 0], [5, 6], [2, 2]], [[1.0, 2.0], [3.0, np.nan], [5.0, 6.0], [7.0, 8.0]]):
        got = solve_batch([nested, nested], 1, seed=3, max_iter=5)
        want = solve_batch(np.array([nested, nested], dtype=np.float64), 1, seed=3, max_iter=5)
        for result, reference in zip(got, want):
            assert result.U.shape == (4, 1) and result.V.shape == (2, 1)
            same_results(result, reference.U, reference.V, reference.n_iter, reference.stop_reason)


def test_sensing_measurements_with_nan_fail_in_their_slot_as_entries_do():
    op = lr.sensing.GaussianSensing(40, (5, 4), seed=0)
    y = op.forward(np.ones((5, 4)))
    bad = y.copy()
    bad[3] = np.nan
    got = solve_batch([(op, bad), (op, y)], 1, method="gd", seed=0, max_iter=5)
    assert isinstance(got[0], ProblemFailure) and isinstance(got[0].error, ValueError)
    assert "NaN/inf" in str(got[0].error)
    assert isinstance(got[1], lr.recover.RecoveryResult) and got[1].n_iter == 5


def test_a_closed_client_is_named_not_a_key_error(client):
    distributed = pytest.importorskip("distributed")
    closed = distributed.Client(client.scheduler.address)
    closed.close()
    with pytest.raises(ValueError, match=r"^solve_batch: client is closed \(status 'closed'\)"):
        solve_batch(stack(B=3), 2, client=closed, seed=0)
    with pytest.raises(ValueError, match=r"^DistributedALS: client is closed \(status 'closed'\)"):
        DistributedALS(2, client=closed).fit(np.array([0, 1]), np.array([1, 0]), np.array([1.0, 2.0]), shape=(2, 2))


# ---------------------------------------------------------------------- DistributedALS
def test_distributed_als_says_a_worker_was_lost(monkeypatch):
    """Dask reports a lost worker's futures as "cancelled for reason: already forgotten"; fit
    raises a RuntimeError naming the loss and the remedy, other errors pass through as they are."""
    from distributed.client import FutureCancelledError

    model = DistributedALS(2)
    monkeypatch.setattr(DistributedALS, "_solve", lambda self, *a: (_ for _ in ()).throw(
        FutureCancelledError("lowrank_hpc-stats-1", reason="already forgotten")))
    with pytest.raises(RuntimeError, match="a worker was lost during the solve.*rerun the fit"):
        model.fit(np.array([0]), np.array([0]), np.array([1.0]), shape=(1, 1))
    monkeypatch.setattr(DistributedALS, "_solve", lambda self, *a: (_ for _ in ()).throw(ValueError("bad rows")))
    with pytest.raises(ValueError, match="bad rows"):
        model.fit(np.array([0]), np.array([0]), np.array([1.0]), shape=(1, 1))


@pytest.mark.parametrize("options, shards", [(dict(), None), (dict(reg_scaling="count"), 3),
                                             (dict(solver="cg", tol=1e-3), None)])
def test_distributed_als_equals_recover_als(client, options, shards):
    rows, cols, vals = completion(duplicates=200)
    settings = dict(options, seed=3, max_iter=8)
    settings.setdefault("tol", 0.0)
    want = lr.recover.als(rows, cols, vals, (300, 200), 5, 0.1, **settings)
    model = DistributedALS(5, 0.1, client=client, n_shards=shards, **settings).fit(rows, cols, vals, shape=(300, 200))
    got = model.result_
    np.testing.assert_allclose(got.U, want.U, rtol=1e-8, atol=1e-12 * np.abs(want.U).max())
    np.testing.assert_allclose(got.V, want.V, rtol=1e-8, atol=1e-12 * np.abs(want.V).max())
    np.testing.assert_allclose(got.history["loss"], want.history["loss"], rtol=1e-10)
    assert (got.n_iter, got.stop_reason, got.converged) == (want.n_iter, want.stop_reason, want.converged)
    assert got.info["n_shards"] == (shards or 2) and got.info["seed"] == 3 and got.backend == "cpu"
    assert model.U_ is got.U


def test_distributed_als_from_a_dask_dataframe_left_distributed(client):
    dd = pytest.importorskip("dask.dataframe")
    pd = pytest.importorskip("pandas")
    rows, cols, vals = completion(seed=1)
    want = lr.recover.als(rows, cols, vals, (300, 200), 5, 0.1, seed=(9, 2), max_iter=8)
    frame = dd.from_pandas(pd.DataFrame({"user": rows, "item": cols, "rating": vals}), npartitions=3)
    got = DistributedALS(5, 0.1, client=client, seed=(9, 2), max_iter=8, gather=False).fit(
        frame, columns=("user", "item", "rating")).result_
    assert isinstance(got.U, DistributedFactor) and got.U.shape == (300, 5) and len(got.U.blocks) == 2
    np.testing.assert_allclose(got.U.gather(), want.U, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got.V.to_dask_array().compute(), want.V, rtol=1e-8, atol=1e-12)


def test_distributed_als_without_a_client_equals_recover_als():
    rows, cols, vals = completion(seed=2, nnz=3000)
    vals = vals.astype(np.float32)
    init = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    want = lr.recover.als(rows, cols, vals, (300, 200), 4, 0.5, init=init, max_iter=6)
    got = DistributedALS(4, 0.5, n_shards=4, max_iter=6).fit(rows, cols, vals, shape=(300, 200), init=init).result_
    np.testing.assert_allclose(got.U, want.U, rtol=1e-5, atol=1e-6)
    assert got.U.dtype == np.float32 and got.info["n_shards"] == 4


@pytest.mark.parametrize("change, error, fragment", [
    (dict(rank=201), ValueError, "rank must be an integer in [1, min(shape) = 200]"),
    (dict(index=300), IndexError, "rows[0] = 300 is out of range [0, 300)"),
    (dict(value=np.nan), ValueError, "NaN/inf"),
    (dict(reg=-1), ValueError, "reg must be"),
    (dict(init=np.zeros((199, 5))), ValueError, "init (the initial V) has shape (199, 5)"),
])
def test_distributed_als_bad_input_raises_before_any_task_is_sent(client, change, error, fragment):
    rows, cols, vals = completion(nnz=500)
    rows[0] = change.get("index", rows[0])
    vals[0] = change.get("value", vals[0])
    before = settled_transitions(client)
    with pytest.raises(error) as raised:
        DistributedALS(change.get("rank", 5), change.get("reg", 0.1), client=client).fit(
            rows, cols, vals, shape=(300, 200), init=change.get("init"))
    assert fragment in str(raised.value)
    assert transitions(client) == before


def _frame_input(kind, client, rows, cols, vals):
    """(the frame, the client) for a DataFrame path of fit: pandas (with or without a client),
    or Dask (workers with a client, computed here without)."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"row": rows, "col": cols, "value": vals})
    if kind.startswith("dask"):
        frame = pytest.importorskip("dask.dataframe").from_pandas(frame, npartitions=2)
    return frame, (client if kind.endswith("client") else None)


FRAME_KINDS = ["pandas", "pandas+client", "dask", "dask+client"]


@pytest.mark.parametrize("kind", FRAME_KINDS)
def test_distributed_als_takes_the_shape_of_any_dataframe_from_its_indices(client, kind):
    """shape=None is (max row + 1, max col + 1) for every DataFrame (pandas, and Dask without a
    client, said "shape=(m, n) is required with array input")."""
    rows, cols, vals = completion(seed=4, shape=(60, 40), rank=2, nnz=900)
    keep = (rows < 57) & (cols < 38)  # the largest indices below the generating shape
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    assert shape == (57, 38)
    want = lr.recover.als(rows, cols, vals, shape, 2, 0.1, seed=1, max_iter=3)
    frame, chosen = _frame_input(kind, client, rows, cols, vals)
    got = DistributedALS(2, 0.1, client=chosen, seed=1, max_iter=3).fit(frame).result_
    assert got.U.shape == (57, 2) and got.V.shape == (38, 2)
    np.testing.assert_allclose(got.U, want.U, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got.history["loss"], want.history["loss"], rtol=1e-10)


@pytest.mark.parametrize("kind", ["arrays"] + FRAME_KINDS)
def test_distributed_als_checks_init_alike_on_every_path(client, kind):
    """init's check is recover.als's on every path (the Dask DataFrame path took NaN, and refused
    float32 in its own words)."""
    rows, cols, vals = completion(seed=5, shape=(30, 20), rank=2, nnz=300)
    rows[0], cols[0] = 29, 19  # shape None on the frame paths infers (30, 20)
    if kind == "arrays":
        data, chosen, extra = (rows, cols, vals), client, dict(shape=(30, 20))
    else:
        frame, chosen = _frame_input(kind, client, rows, cols, vals)
        data, extra = (frame,), {}
    init = np.random.default_rng(0).standard_normal((20, 2))
    model = DistributedALS(2, client=chosen, max_iter=2)
    nan = init.copy()
    nan[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"^DistributedALS: init contains 1 NaN/inf value\(s\)"):
        model.fit(*data, init=nan, **extra)
    with pytest.raises(TypeError, match=r"^DistributedALS: init is float32 but vals is float64"):
        model.fit(*data, init=init.astype(np.float32), **extra)
    with pytest.raises(ValueError, match=r"^DistributedALS: init \(the initial V\) has shape \(19, 2\), "
                                         r"expected \(20, 2\)"):
        model.fit(*data, init=init[:19], **extra)
    want = lr.recover.als(rows, cols, vals, (30, 20), 2, init=init, max_iter=2)
    got = model.fit(*data, init=init.tolist(), **extra).result_  # a list, as recover.als takes it
    np.testing.assert_allclose(got.U, want.U, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("kind", FRAME_KINDS)
@pytest.mark.parametrize("columns", [("row", "col"), "row", ("row", "col", 2)])
def test_distributed_als_checks_the_columns_of_any_dataframe(client, kind, columns):
    frame, chosen = _frame_input(kind, client, np.array([0, 1]), np.array([1, 0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"^DistributedALS: columns must name three columns \(row, col, value\), "
                                         rf"got {re.escape(repr(columns))}$"):
        DistributedALS(1, client=chosen).fit(frame, shape=(2, 2), columns=columns)


def test_dask_sees_the_bytes_of_shards_and_blocks():
    """Dask sizes a task's result with dask.sizeof (sys.getsizeof for these classes): the arrays
    count, or memory limits and spilling miss the data (a 12 MB shard was 56 bytes)."""
    sizeof = pytest.importorskip("dask.sizeof").sizeof
    from lowrank_hpc.distributed import _shards

    rows, cols, vals = completion(seed=6, shape=(300, 200), rank=3, nnz=20000)
    pieces = _shards.split_entries(rows, cols, vals, np.array([0, 150, 300]), np.array([0, 100, 200]))
    shard = _shards.build_shard(0, 150, "cpu", "rows", "<i8", "<f8", pieces.rows[0])
    start = _shards.starting_block(0, 200, 3, "cpu", "<f8", 1)
    block = _shards.half_step(shard, _shards.starting_block(0, 150, 3, "cpu", "<f8"), start, reg=0.1,
                              count_scaling=False, cg_steps=0, columns=False)
    arrays = {"pieces": [a for piece in pieces.rows + pieces.cols for a in piece],
              "shard": [shard.indptr, shard.others, shard.vals, shard.keys, shard.weights],
              "start": [start.factor], "block": [block.factor, block.stats]}
    for name, value in (("pieces", pieces), ("shard", shard), ("start", start), ("block", block)):
        data = sum(a.nbytes for a in arrays[name])
        assert data > 3000  # the arrays dominate: each held ~56 bytes in Dask's eyes before
        assert data <= sizeof(value) <= data + 200, name


# ---------------------------------------------------------------------- lowrank-hpc complete --scheduler
def test_cli_complete_on_the_cluster_reports_what_it_reports_alone(client, tmp_path):
    rng = np.random.default_rng(0)
    M = 3 + rng.standard_normal((60, 2)) @ rng.standard_normal((2, 50))
    rows, cols = np.nonzero(rng.random((60, 50)) < 0.5)
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{i},i{j},{float(M[i, j])!r}\n" for i, j in zip(rows, cols)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, os.environ.get("PYTHONPATH", "")]))
    options = ["--rank", "2", "--reg", "0.1", "--center", "global", "--max-iter", "15", "--json"]
    reports = []
    for extra in (["--method", "als"], ["--scheduler", client.scheduler.address]):
        run = subprocess.run([sys.executable, "-m", "lowrank_hpc", "complete", str(path), *options, *extra],
                             capture_output=True, text=True, env=env, timeout=120)
        assert run.returncode == 0, run.stderr
        reports.append(json.loads(run.stdout))
    alone, on_cluster = reports
    assert on_cluster["scheduler"] == client.scheduler.address and on_cluster["workers"] == 2
    assert on_cluster["method"] == "als" and on_cluster["iterations"] == alone["iterations"]
    for key in ("test_rmse", "train_rmse"):
        assert on_cluster[key] == pytest.approx(alone[key], rel=1e-10)


# ---------------------------------------------------------------------- a worker dies mid-batch
def test_a_worker_killed_mid_batch_still_gives_every_result(client):
    S = stack(seed=6, B=4000, shape=(40, 30), rank=3)
    settings = dict(seed=8, reg=0.01, max_iter=40, tol=0.0, chunk_size=50)
    want = solve_batch(S, 3, **settings)
    out: dict = {}
    solving = threading.Thread(target=lambda: out.update(results=solve_batch(S, 3, client=client, **settings)))
    solving.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both workers busy with chunks: kill one of them
        busy = {worker: keys for worker, keys in client.processing().items() if keys}
        if len(busy) == 2:
            break
        time.sleep(0.01)
    victim = sorted(busy)[0]
    assert solving.is_alive() and busy[victim]  # mid-batch: the victim holds chunks
    try:
        client.run(os._exit, 1, workers=[victim])
    except Exception:  # the worker died before it could answer: what this test wants
        pass
    solving.join(timeout=120)
    client.wait_for_workers(2, timeout=60)  # the nanny restarts it, for the tests after this one
    results = out["results"]
    assert len(results) == S.shape[0] and all(results)
    for result, reference in zip(results, want):
        same_results(result, reference.U, reference.V, reference.n_iter, reference.stop_reason)


# ---------------------------------------------------------------------- without Dask
def test_the_package_and_a_local_batch_need_no_dask():
    script = ("import sys; sys.modules['dask'] = None; sys.modules['distributed'] = None\n"
              "import numpy as np, lowrank_hpc, lowrank_hpc.distributed as d\n"
              "S = np.where(np.eye(4, 3)[None] > 0, 1.0, np.nan).repeat(3, axis=0)\n"
              "print(len(d.solve_batch(S, 1, seed=0, max_iter=3)))\n"
              "try:\n    d.solve_batch(S, 1, client=object())\nexcept TypeError as e:\n    print('TypeError')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["3", "TypeError"]
