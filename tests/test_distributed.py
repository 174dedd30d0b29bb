"""lowrank_hpc.distributed: solve_batch and DistributedALS on a LocalCluster of two worker processes
(one cluster for the module), against the single-node solvers; and without a client, without Dask."""
from __future__ import annotations

import gc
import json
import os
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
