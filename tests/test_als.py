"""ALS and batched ALS: the row solves against numpy, completion accuracy, monotone objective,
batched == per-problem, convergence flags, checkpoint resume after a kill, stopping, errors."""
from __future__ import annotations

import inspect
import textwrap

import numpy as np
import pytest

import reference
from conftest import rel_error, run_until_checkpoint_then_kill
from philox_reference import standard_normal
from lowrank_hpc import _cpu as lr_cpu
from lowrank_hpc.recover import CheckpointMismatchError, als, batched_als
from lowrank_hpc.recover.als import CG_STEPS

TOL = {np.float32: 1e-4, np.float64: 1e-10}


def low_rank_problem(rng, m, n, rank, fraction, noise=0.0, index_dtype=np.int64):
    """Exact rank-``rank`` M, observed on a random fraction of entries (row-major order)."""
    M = rng.standard_normal((m, rank)) @ rng.standard_normal((n, rank)).T
    mask = rng.random((m, n)) < fraction
    rows, cols = (np.ascontiguousarray(i, dtype=index_dtype) for i in np.nonzero(mask))
    vals = M[rows, cols] + noise * rng.standard_normal(rows.shape[0])
    return M, mask, rows, cols, vals


@pytest.mark.parametrize("reg_scaling", ["none", "count"])
def test_one_iteration_matches_dense_solves(backend, dtype, rng, reg_scaling):
    m, n, r = 9, 7, 3
    rows = rng.integers(0, m, 40)
    cols = rng.integers(0, n, 40)
    rows[rows == 4] = 5  # row 4 has no observation: it must come out as zero
    vals = rng.standard_normal(40).astype(dtype)
    V0 = rng.standard_normal((n, r)).astype(dtype)
    result = als(backend.put(rows), backend.put(cols), backend.put(vals), (m, n), r, reg=0.3,
                 reg_scaling=reg_scaling, max_iter=1, init=backend.put(V0))
    U_ref, V_ref = reference.als_half_steps(rows, cols, vals, (m, n), V0, 0.3, reg_scaling == "count")
    np.testing.assert_allclose(backend.get(result.U), U_ref, rtol=TOL[dtype], atol=TOL[dtype])
    np.testing.assert_allclose(backend.get(result.V), V_ref, rtol=TOL[dtype], atol=TOL[dtype])
    assert np.all(backend.get(result.U)[4] == 0)
    assert result.info["singular_rows"] == 0 and result.backend == backend.name
    assert result.U.dtype == dtype and result.n_iter == 1 and result.stop_reason == "max_iter"


@pytest.mark.parametrize("rank", [3, 8, 11])  # registers; compile-time rank, blocked; run-time rank, blocked
@pytest.mark.parametrize("m, n, nnz", [(14, 12, 110), (400, 300, 30000)])  # one fused pass; row-parallel half-steps
def test_one_iteration_matches_dense_solves_at_every_rank_path(rng, rank, m, n, nnz):
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    vals = rng.standard_normal(nnz)
    V0 = rng.standard_normal((n, rank))
    result = als(rows, cols, vals, (m, n), rank, reg=0.2, reg_scaling="count", max_iter=1, init=V0)
    U_ref, V_ref = reference.als_half_steps(rows, cols, vals, (m, n), V0, 0.2, True)
    np.testing.assert_allclose(result.U, U_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(result.V, V_ref, rtol=1e-9, atol=1e-10)
    residual = vals - np.einsum("kr,kr->k", result.U[rows], result.V[cols])
    penalty = (np.bincount(rows, minlength=m) @ (result.U ** 2).sum(1)
               + np.bincount(cols, minlength=n) @ (result.V ** 2).sum(1))
    np.testing.assert_allclose(result.history["loss"][0], 0.5 * residual @ residual + 0.1 * penalty, rtol=1e-12)


def test_unregularised_singular_rows_are_zero_and_counted(backend):
    # rank 2, reg 0: row 0 has one observation (singular 2 x 2 system), row 3 has none.
    rows = np.array([0, 1, 1, 1, 2, 2, 2], dtype=np.int64)
    cols = np.array([0, 0, 1, 2, 0, 1, 2], dtype=np.int64)
    vals = np.arange(1.0, 8.0)
    result = als(backend.put(rows), backend.put(cols), backend.put(vals), (4, 3), 2, reg=0.0, max_iter=1, seed=0)
    U = backend.get(result.U)
    assert np.all(U[0] == 0) and np.all(U[3] == 0) and np.all(np.isfinite(U))
    assert result.info["singular_rows"] == 2


def test_completes_exact_low_rank_matrix(backend, rng):
    M, mask, rows, cols, vals = low_rank_problem(rng, 500, 500, 5, 0.10)
    result = als(backend.put(rows), backend.put(cols), backend.put(vals), (500, 500), 5, reg=1e-8, seed=1,
                 max_iter=100, tol=1e-7)
    X = backend.get(result.U) @ backend.get(result.V).T
    assert np.sqrt(np.mean((X - M)[~mask] ** 2)) < 1e-4
    assert result.converged and result.stop_reason == "converged"


def test_noisy_completion_reaches_the_noise_level(rng):
    sigma = 0.01
    M, mask, rows, cols, vals = low_rank_problem(rng, 500, 500, 5, 0.10, noise=sigma)
    # ALS-WR with a small reg: a larger one (0.01 here) shrinks the signal more than the noise.
    result = als(rows, cols, vals, (500, 500), 5, reg=1e-3, reg_scaling="count", seed=2, max_iter=100, tol=1e-6)
    X = result.U @ result.V.T
    held_out = M[~mask] + sigma * rng.standard_normal(int((~mask).sum()))
    assert np.sqrt(np.mean((X[~mask] - held_out) ** 2)) < 1.5 * sigma


@pytest.mark.parametrize("reg_scaling", ["none", "count"])
def test_objective_never_increases(dtype, rng, reg_scaling):
    _, _, rows, cols, vals = low_rank_problem(rng, 80, 60, 4, 0.3, noise=0.5)
    result = als(rows, cols, vals.astype(dtype), (80, 60), 4, reg=0.5, reg_scaling=reg_scaling, seed=3,
                 max_iter=30, tol=0.0)
    loss = result.history["loss"]
    assert loss.shape == (30,) and result.history["relative_change"].shape == (30,)
    assert np.all(np.diff(loss) <= 10 * np.finfo(dtype).eps * loss[:-1])
    assert result.history["relative_change"][0] == np.inf


def batch_of_problems(rng, batch, m, n, rank, index_dtype=np.int64):
    """Concatenated entries of ``batch`` problems with different numbers of observations."""
    parts, offsets = [], [0]
    for b in range(batch):
        _, _, rows, cols, vals = low_rank_problem(rng, m, n, rank, 0.3 + 0.1 * (b % 4), noise=0.05 * (b % 2),
                                                  index_dtype=index_dtype)
        parts.append((rows, cols, vals))
        offsets.append(offsets[-1] + rows.shape[0])
    rows, cols, vals = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return rows, cols, vals, np.array(offsets, dtype=np.int64)


@pytest.mark.parametrize("reg_scaling", ["none", "count"])
def test_batched_equals_per_problem_solves(backend, rng, reg_scaling):
    rows, cols, vals, offsets = batch_of_problems(rng, 6, 12, 10, 2)
    settings = dict(reg=0.05, reg_scaling=reg_scaling, max_iter=25, tol=1e-5)
    batched = batched_als(backend.put(rows), backend.put(cols), backend.put(vals), backend.put(offsets), (12, 10), 2,
                          seed=11, **settings)
    assert batched.U.shape == (6, 12, 2) and batched.V.shape == (6, 10, 2)
    assert batched.history["loss"].shape == (batched.n_iter, 6)
    for b in range(6):
        s = slice(offsets[b], offsets[b + 1])
        single = als(backend.put(rows[s]), backend.put(cols[s]), backend.put(vals[s]), (12, 10), 2, seed=(11, b),
                     **settings)
        np.testing.assert_allclose(backend.get(batched.U)[b], backend.get(single.U), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(backend.get(batched.V)[b], backend.get(single.V), rtol=1e-12, atol=1e-14)
        assert batched.info["n_iter"][b] == single.n_iter
        assert batched.converged[b] == single.converged and batched.stop_reason[b] == single.stop_reason
        np.testing.assert_allclose(batched.history["loss"][:single.n_iter, b], single.history["loss"], rtol=1e-10)
        assert np.all(np.isnan(batched.history["loss"][single.n_iter:, b]))


def dense_batch(rng, m, n, dtype, index_dtype=np.int32):
    """Enough small, half-observed problems (entries in (row, col) order) for the dense kernel:
    a group of 64 bytes' worth of problems for every thread, and some past a whole group. Some
    problems have an empty row, one has no entries; values from exact rank 2 plus noise.

    Problem b's data depends on b alone, never on the thread count: the problems are drawn one
    after the other, and a machine with more threads only appends problems (at least the 5 groups
    two threads need, so one and two threads solve the very same batch)."""
    width = 64 // np.dtype(dtype).itemsize
    batch = max(5, 2 * lr_cpu.max_threads() + 1) * width - 3
    problems, rows, cols, vals = [], [], [], []
    for b in range(batch):
        M = rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
        seen = rng.random((m, n)) < 0.5
        if b % 5 == 0:
            seen[1, :] = False
        if b == 7:
            seen[:] = False
        r, c = np.nonzero(seen)
        rows.append(r)
        cols.append(c)
        vals.append(M[r, c] + 0.1 * rng.standard_normal(r.shape[0]))
        problems.append(r.shape[0])
    offsets = np.concatenate([[0], np.cumsum(problems)]).astype(np.int64)
    return (np.concatenate(rows).astype(index_dtype), np.concatenate(cols).astype(index_dtype),
            np.concatenate(vals).astype(dtype), offsets)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
@pytest.mark.parametrize("reg_scaling, reg", [("none", 0.05), ("count", 0.02), ("none", 0.0)])
def test_dense_kernel_gives_each_problem_the_per_problem_bits(dtype, rng, rank, reg_scaling, reg):
    m, n = 9, 8
    rows, cols, vals, offsets = dense_batch(rng, m, n, dtype)
    settings = dict(reg=reg, reg_scaling=reg_scaling, max_iter=12, tol=2e-2)  # some freeze early, some run on
    batched = batched_als(rows, cols, vals, offsets, (m, n), rank, seed=3, **settings)
    assert batched.info["kernel"] == "dense" and batched.U.dtype == dtype
    assert 1 < batched.converged.sum() < batched.converged.shape[0] - 1
    singular = 0
    for b in range(offsets.shape[0] - 1):
        if b == 7:  # no entries: als refuses it; batched_als leaves it at zero (checked below)
            continue
        s = slice(offsets[b], offsets[b + 1])
        single = als(rows[s], cols[s], vals[s], (m, n), rank, seed=(3, b), **settings)
        assert single.info["kernel"] == "fused"
        np.testing.assert_array_equal(batched.U[b], single.U)
        np.testing.assert_array_equal(batched.V[b], single.V)
        assert batched.info["n_iter"][b] == single.n_iter and batched.converged[b] == single.converged
        np.testing.assert_array_equal(batched.history["loss"][:single.n_iter, b], single.history["loss"])
        np.testing.assert_array_equal(batched.history["relative_change"][:single.n_iter, b],
                                      single.history["relative_change"])
        if single.n_iter == batched.n_iter:  # singular rows are counted in the last iteration
            singular += single.info["singular_rows"]
    assert np.all(batched.U[7] == 0) and np.all(batched.U[::5, 1] == 0)
    if reg == 0.0:
        assert batched.info["singular_rows"] == singular > 0


def test_dense_kernel_leaves_entries_out_of_order_to_the_sparse_kernel(rng):
    rows, cols, vals, offsets = dense_batch(rng, 9, 8, np.float64)
    order = np.concatenate([rng.permutation(np.arange(offsets[b], offsets[b + 1])) for b in range(len(offsets) - 1)])
    settings = dict(reg=0.05, max_iter=10, seed=4)
    ordered = batched_als(rows, cols, vals, offsets, (9, 8), 2, **settings)
    shuffled = batched_als(rows[order], cols[order], vals[order], offsets, (9, 8), 2, **settings)
    assert ordered.info["kernel"] == "dense" and shuffled.info["kernel"] == "fused"
    np.testing.assert_allclose(shuffled.U, ordered.U, rtol=1e-9, atol=1e-12)


def test_each_problem_keeps_its_own_convergence_flag(rng):
    # Problems 0 and 2: exact rank 2, fully observed (ALS settles in a few iterations). Problem 1:
    # pure noise, which rank-2 ALS does not settle in 40 iterations. Problem 3 has no entries.
    parts = [low_rank_problem(rng, 30, 30, 2, 1.0)[2:] for _ in range(3)]
    parts[1] = (parts[1][0], parts[1][1], rng.standard_normal(parts[1][2].shape[0]))
    rows, cols, vals = (np.concatenate([p[k] for p in parts]) for k in range(3))
    offsets = np.array([0, 900, 1800, 2700, 2700])
    result = batched_als(rows, cols, vals, offsets, (30, 30), 2, reg=1e-6, seed=5, max_iter=40, tol=1e-6)
    assert result.converged.tolist() == [True, False, True, True]
    assert result.stop_reason == ["converged", "max_iter", "converged", "converged"]
    assert result.info["n_iter"][1] == 40 and result.info["n_iter"][0] < 40 and result.n_iter == 40
    assert np.all(result.U[3] == 0) and np.all(result.V[3] == 0)


CHECKPOINT_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from lowrank_hpc.recover import als
    data = np.load(sys.argv[1])
    # Slow iterations so the parent can kill the run half-way.
    als(data["rows"], data["cols"], data["vals"], (120, 100), 3, reg=0.1, seed=7, max_iter=30, tol=0.0,
        checkpoint=sys.argv[2], checkpoint_every=3, callback=lambda i, state: time.sleep(0.1))
""")


def test_checkpoint_resume_after_kill_matches_uninterrupted_run(tmp_path, rng):
    _, _, rows, cols, vals = low_rank_problem(rng, 120, 100, 3, 0.2, noise=0.1)
    settings = dict(reg=0.1, seed=7, max_iter=30, tol=0.0)
    reference = als(rows, cols, vals, (120, 100), 3, **settings)
    data, checkpoint = tmp_path / "data.npz", tmp_path / "run.npz"
    np.savez(data, rows=rows, cols=cols, vals=vals)
    script = tmp_path / "run_als.py"
    script.write_text(CHECKPOINT_SCRIPT)
    run_until_checkpoint_then_kill(script, [str(data), str(checkpoint)], checkpoint)
    with np.load(checkpoint) as saved:
        assert 0 < int(saved["iteration"]) < 30 and str(saved["stop_reason"]) == ""
    resumed = als(rows, cols, vals, (120, 100), 3, checkpoint=str(checkpoint), checkpoint_every=3, **settings)
    np.testing.assert_array_equal(resumed.U, reference.U)
    np.testing.assert_array_equal(resumed.V, reference.V)
    np.testing.assert_array_equal(resumed.history["loss"], reference.history["loss"])
    assert resumed.n_iter == 30 and resumed.stop_reason == "max_iter"
    again = als(rows, cols, vals, (120, 100), 3, checkpoint=str(checkpoint), **settings)  # finished: returns at once
    np.testing.assert_array_equal(again.U, reference.U)
    with pytest.raises(CheckpointMismatchError, match="different problem"):
        als(rows, cols, vals + 1.0, (120, 100), 3, checkpoint=str(checkpoint), **settings)


class Interrupted(Exception):
    """Raised by a callback to cut a run short, as a crash would."""


def test_batched_checkpoint_resume_matches_uninterrupted_run(tmp_path, rng):
    rows, cols, vals, offsets = batch_of_problems(rng, 5, 15, 12, 2)
    settings = dict(reg=0.05, seed=3, max_iter=20, tol=1e-6)
    reference = batched_als(rows, cols, vals, offsets, (15, 12), 2, **settings)
    path = str(tmp_path / "batched.npz")

    def crash_at_seven(iteration, state):
        if iteration == 7:
            raise Interrupted

    with pytest.raises(Interrupted):
        batched_als(rows, cols, vals, offsets, (15, 12), 2, checkpoint=path, checkpoint_every=3,
                    callback=crash_at_seven, **settings)
    resumed = batched_als(rows, cols, vals, offsets, (15, 12), 2, checkpoint=path, checkpoint_every=3, **settings)
    np.testing.assert_array_equal(resumed.U, reference.U)
    np.testing.assert_array_equal(resumed.V, reference.V)
    np.testing.assert_array_equal(resumed.converged, reference.converged)
    np.testing.assert_array_equal(resumed.info["n_iter"], reference.info["n_iter"])
    np.testing.assert_array_equal(resumed.history["relative_change"], reference.history["relative_change"])
    assert resumed.stop_reason == reference.stop_reason


def test_progress_bar_writes_to_stderr(rng, capsys):
    _, _, rows, cols, vals = low_rank_problem(rng, 40, 30, 2, 0.5)
    als(rows, cols, vals, (40, 30), 2, seed=0, max_iter=3, tol=0.0, progress=True)
    assert "als" in capsys.readouterr().err


def test_time_limit_stops_the_run(rng):
    _, _, rows, cols, vals = low_rank_problem(rng, 60, 50, 3, 0.3, noise=0.5)
    result = als(rows, cols, vals, (60, 50), 3, seed=0, max_iter=1000, tol=0.0, time_limit=1e-6)
    assert result.stop_reason == "time_limit" and result.n_iter == 1 and not result.converged


def test_int32_indices_and_float32_give_float32_factors(rng):
    _, _, rows, cols, vals = low_rank_problem(rng, 30, 20, 2, 0.5, index_dtype=np.int32)
    result = als(rows, cols, vals.astype(np.float32), (30, 20), 2, seed=0, max_iter=5)
    assert result.U.dtype == np.float32 and result.V.dtype == np.float32


def _base(rng):
    _, _, rows, cols, vals = low_rank_problem(rng, 10, 8, 2, 0.6)
    return dict(rows=rows, cols=cols, vals=vals, shape=(10, 8), rank=2)


@pytest.mark.parametrize("change, error, match", [
    (lambda a: a["vals"].__setitem__(0, np.nan), ValueError, "vals contains 1 NaN/inf"),
    (lambda a: a["rows"].__setitem__(2, 10), IndexError, r"rows\[2\] = 10 is out of range \[0, 10\)"),
    (lambda a: a["cols"].__setitem__(1, -1), IndexError, r"cols\[1\] = -1 is out of range"),
    (lambda a: a.update(rank=0), ValueError, r"rank must be an integer in \[1, min\(shape\) = 8\]"),
    (lambda a: a.update(rank=9), ValueError, "rank must be"),
    (lambda a: a.update(reg=-1.0), ValueError, "reg must be a finite number >= 0"),
    (lambda a: a.update(reg=np.inf), ValueError, "reg must be"),
    (lambda a: a.update(reg_scaling="spark"), ValueError, "reg_scaling must be one of"),
    (lambda a: a.update(shape=(10,)), ValueError, "shape must be two positive integers"),
    (lambda a: a.update(vals=a["vals"].astype(np.complex128)), TypeError, "vals is complex; Complex data not supported"),
    (lambda a: a.update(rows=a["rows"].astype(np.float64)), TypeError, "rows must hold integers"),
    (lambda a: a.update(cols=None), TypeError, "cols is None; pass an array"),
    (lambda a: a.update(vals=a["vals"][:-1].copy()), ValueError, "vals has length"),
    (lambda a: a.update(rows=a["rows"][:0], cols=a["cols"][:0], vals=a["vals"][:0]), ValueError, "empty"),
    (lambda a: a.update(max_iter=-1), ValueError, "max_iter must be"),
    (lambda a: a.update(init=np.zeros((8, 3))), ValueError, r"init \(the initial V\) has shape \(8, 3\)"),
    (lambda a: a.update(init=np.zeros((8, 2), dtype=np.float32)), TypeError, "init is float32 but vals is float64"),
    (lambda a: a.update(time_limit=-1.0), ValueError, "time_limit must be"),
], ids=["nan", "row-range", "col-range", "rank0", "rank-big", "reg-neg", "reg-inf", "scaling", "shape",
        "vals-complex", "rows-float", "cols-none", "vals-length", "empty", "max_iter", "init-shape", "init-dtype",
        "time_limit"])
def test_bad_inputs_raise_clear_errors(rng, change, error, match):
    arguments = _base(rng)
    change(arguments)
    with pytest.raises(error, match=match):
        als(**arguments)


def test_batched_bad_inputs(rng):
    rows, cols, vals, offsets = batch_of_problems(rng, 2, 10, 8, 2)
    with pytest.raises(ValueError, match="offsets must start at 0 and end at the number of entries"):
        batched_als(rows, cols, vals, offsets - 1, (10, 8), 2)
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        batched_als(rows, cols, vals, offsets[[0, 2, 1, 2]], (10, 8), 2)
    with pytest.raises(ValueError, match="seed must be None or an integer >= 0"):
        batched_als(rows, cols, vals, offsets, (10, 8), 2, seed=-1)
    with pytest.raises(ValueError, match=r"init must have 3 dimensions, got shape \(8, 2\)"):
        batched_als(rows, cols, vals, offsets, (10, 8), 2, init=np.zeros((8, 2)))
    with pytest.raises(ValueError, match="offsets"):
        batched_als(rows, cols, vals, None, (10, 8), 2)


# ------------------------------------------------------------------ pinned defaults and measures
def _one_iteration_data(rng, m=9, n=7, r=3, nnz=40):
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    return rows, cols, rng.standard_normal(nnz), rng.standard_normal((n, r))


def test_default_reg_and_reg_scaling(rng):
    """reg = 0.1 with reg_scaling = "none" when not given: the signature says so, and one
    iteration equals the dense ridge solves with lambda = 0.1 for every row (not 0.1 * count)."""
    for function in (als, batched_als):
        parameters = inspect.signature(function).parameters
        assert parameters["reg"].default == 0.1, function.__name__
        assert parameters["reg_scaling"].default == "none", function.__name__
    m, n, r = 9, 7, 3
    rows, cols, vals, V0 = _one_iteration_data(rng, m, n, r)
    U_ref, V_ref = reference.als_half_steps(rows, cols, vals, (m, n), V0, 0.1, False)
    single = als(rows, cols, vals, (m, n), r, max_iter=1, init=V0)
    batched = batched_als(rows, cols, vals, np.array([0, rows.shape[0]]), (m, n), r, max_iter=1, init=V0[None])
    for U, V in ((single.U, single.V), (batched.U[0], batched.V[0])):
        np.testing.assert_allclose(U, U_ref, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(V, V_ref, rtol=1e-10, atol=1e-12)
    # The defaults are told apart from neighbouring values: another reg, or the count scaling.
    for other in (reference.als_half_steps(rows, cols, vals, (m, n), V0, 0.2, False),
                  reference.als_half_steps(rows, cols, vals, (m, n), V0, 0.1, True)):
        assert rel_error(single.U, other[0]) > 1e-3
    assert single.info["reg"] == 0.1 and single.info["reg_scaling"] == "none"


def test_seeded_start_is_the_documented_philox_draws(rng):
    """seed=(s, b): V0[j, c] = standard_normal(s, b, j * rank + c) / sqrt(rank) (the counter-based
    generator, here its independent numpy reference); an int seed s is stream 0, and batched_als
    gives problem b stream b. One iteration from those V0 equals one from the seed."""
    m, n, r = 9, 7, 3
    rows, cols, vals, _ = _one_iteration_data(rng, m, n, r)

    def start(key, stream):
        return standard_normal(key, stream, np.arange(n * r)).reshape(n, r) / np.sqrt(r)

    for seed, (key, stream) in (((5, 2), (5, 2)), (11, (11, 0))):
        seeded = als(rows, cols, vals, (m, n), r, max_iter=1, seed=seed)
        given = als(rows, cols, vals, (m, n), r, max_iter=1, init=start(key, stream))
        np.testing.assert_allclose(seeded.U, given.U, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(seeded.V, given.V, rtol=1e-10, atol=1e-12)
    offsets = np.array([0, 20, 40])
    batched = batched_als(rows, cols, vals, offsets, (m, n), r, max_iter=1, seed=13)
    for b in range(2):
        s = slice(offsets[b], offsets[b + 1])
        given = als(rows[s], cols[s], vals[s], (m, n), r, max_iter=1, init=start(13, b))
        np.testing.assert_allclose(batched.V[b], given.V, rtol=1e-10, atol=1e-12)


def _change_and_loss_problem(rng, kernel: str):
    """(rows, cols, vals, offsets, shape, rank) of two problems that batched_als solves with ``kernel``:
    "rows" (few problems with much work each: half-steps over all rows in parallel, the
    measures in Python) or "fused" (little work: each problem's whole iteration in C++)."""
    m, n, rank, fraction = (70, 60, 10, 0.7) if kernel == "rows" else (14, 11, 3, 0.6)
    parts = [low_rank_problem(rng, m, n, rank, fraction, noise=0.3)[2:] for _ in range(2)]
    rows, cols, vals = (np.concatenate([p[k] for p in parts]) for k in range(3))
    offsets = np.array([0, parts[0][0].shape[0], rows.shape[0]], dtype=np.int64)
    return rows, cols, vals, offsets, (m, n), rank


@pytest.mark.parametrize("kernel", ["rows", "fused"])
@pytest.mark.parametrize("reg_scaling", ["none", "count"])
def test_history_is_the_relative_change_and_objective_of_the_factors(rng, kernel, reg_scaling):
    """history["relative_change"][k] = ||U_k+1 V_k+1^T - U_k V_k^T||_F / ||U_k V_k^T||_F and
    history["loss"][k] = half the objective at (U_k+1, V_k+1), both computed densely in numpy
    from the factors of runs stopped after k and k + 1 iterations (same seed)."""
    rows, cols, vals, offsets, shape, rank = _change_and_loss_problem(rng, kernel)
    settings = dict(reg=0.3, reg_scaling=reg_scaling, tol=0.0, seed=17)
    runs = {k: batched_als(rows, cols, vals, offsets, shape, rank, max_iter=k, **settings) for k in (3, 4)}
    assert runs[4].info["kernel"] == kernel
    np.testing.assert_array_equal(runs[4].history["relative_change"][0], np.inf)  # U starts at zero
    for b in range(2):
        s = slice(offsets[b], offsets[b + 1])
        expected_change = reference.relative_change(runs[3].U[b], runs[3].V[b], runs[4].U[b], runs[4].V[b])
        assert 1e-6 < expected_change < 1.0  # a change a wrong formula would not match
        np.testing.assert_allclose(runs[4].history["relative_change"][3, b], expected_change, rtol=1e-8)
        expected_loss = reference.completion_objective(runs[4].U[b], runs[4].V[b], rows[s], cols[s], vals[s],
                                                       0.3, reg_scaling == "count")
        np.testing.assert_allclose(runs[4].history["loss"][3, b], expected_loss, rtol=1e-10)


@pytest.mark.parametrize("shape", [(90, 70), (60, 110)], ids=["rows-order", "columns-order"])
def test_rows_kernel_loss_is_the_objective_from_either_order(rng, shape):
    """The CPU sums the fit term in a pass of its own over the order that gathers the smaller
    factor: the rows' for m >= n, the columns' for m < n. Both are the dense objective."""
    m, n = shape
    rows, cols, vals = low_rank_problem(rng, m, n, 10, 0.7, noise=0.3)[2:]
    result = als(rows, cols, vals, shape, 10, reg=0.2, tol=0.0, seed=8, max_iter=3)
    assert result.info["kernel"] == "rows"
    expected = reference.completion_objective(result.U, result.V, rows, cols, vals, 0.2)
    np.testing.assert_allclose(result.history["loss"][-1], expected, rtol=1e-10)


def _keyed_entries(rng, counts, n_other):
    """(indptr, others) of CSR rows holding counts[i] distinct other indices each."""
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    others = np.concatenate([rng.choice(n_other, c, replace=False) for c in counts]).astype(np.int32)
    return indptr, others


def _assert_rows_residuals(reported, indptr, others, vals, F, X, active):
    """reported[row] is the row's sum of (<x_i, f_j> - v_ij)^2 (float64 numpy from the float
    inputs) for every row of an active problem, and untouched (-1) for the others."""
    n_key = X.shape[1]
    tolerance = 1e-12 if vals.dtype == np.float64 else 1e-5
    for row in range(reported.shape[0]):
        b = row // n_key
        if not active[b]:
            assert reported[row] == -1.0
            continue
        entries = slice(indptr[row], indptr[row + 1])
        dots = F[b, others[entries]].astype(np.float64) @ X[b, row % n_key].astype(np.float64)
        expected = float(((dots - vals[entries]) ** 2).sum())
        scale = expected + float((vals[entries].astype(np.float64) ** 2).sum())
        assert abs(reported[row] - expected) <= tolerance * scale, (row, reported[row], expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [1, 7, 16, 64, 70])
def test_als_squared_residuals_sums_each_rows_squared_residuals(rng, dtype, rank):
    """The CPU pass behind the loss: two problems' key rows (one of them empty, one inactive
    problem left untouched), each row's sum of (<x_i, f_j> - v_ij)^2 against float64 numpy."""
    batch, n_key, n_other = 3, 9, 11
    counts = rng.integers(0, 8, size=batch * n_key)
    counts[4] = 0
    indptr, others = _keyed_entries(rng, counts, n_other)
    vals = rng.standard_normal(others.size).astype(dtype)
    F = rng.standard_normal((batch, n_other, rank)).astype(dtype)
    X = rng.standard_normal((batch, n_key, rank)).astype(dtype)
    active = np.array([1, 0, 1], dtype=np.uint8)
    out = np.full(batch * n_key, -1.0)
    lr_cpu.als_squared_residuals(indptr, others, vals, F, X, active, out)
    _assert_rows_residuals(out, indptr, others, vals, F, X, active)
    assert out[4] == 0.0
    with pytest.raises(ValueError, match="X: expected float64, got float32"):
        lr_cpu.als_squared_residuals(indptr, others, vals.astype(np.float64), F.astype(np.float64), X.astype(np.float32),
                                     active, out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rank", [3, 16, 40])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_cg_row_solves_report_the_residuals_at_their_solution(rng, dtype, rank, weighted):
    """CG tracks each entry's residual through its own steps instead of a pass of its own: the
    residuals it reports are those of the rows it returns (float64 numpy from its output), an
    empty row's zero, an inactive problem's untouched. With weights (implicit feedback's
    confidences) the tracked quantity is not the residual, and the plain sum is reported."""
    batch, n_key, n_other = 3, 9, 50
    counts = rng.integers(0, 45, size=batch * n_key)
    counts[4], counts[5] = 0, n_other  # an empty row and a full one
    indptr, others = _keyed_entries(rng, counts, n_other)
    vals = (2.0 + rng.standard_normal(others.size)).astype(dtype)  # not centred
    F = rng.standard_normal((batch, n_other, rank)).astype(dtype)
    weights = (1.0 + rng.random(others.size)).astype(dtype) if weighted else None
    active = np.array([1, 0, 1], dtype=np.uint8)
    out = rng.standard_normal((batch, n_key, rank)).astype(dtype)
    start = out.copy()
    residuals = np.full(batch * n_key, -1.0)
    lr_cpu.als_update_rows(indptr, others, vals, F, n_key, 0.3, False, active, 4, out, np.zeros(1, np.int64),
                           weights=weights, residuals=residuals)
    np.testing.assert_array_equal(out[1], start[1])
    moved = np.any(out != start, axis=2).reshape(-1)
    assert np.all(moved[active.repeat(n_key).astype(bool) & (counts > 0)])  # every solved row moved
    _assert_rows_residuals(residuals, indptr, others, vals, F, out, active)
    assert residuals[4] == 0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cg_loss_is_the_objective_of_its_factors(rng, dtype):
    """The CPU's CG takes the fit term from its residuals tracked through the V half-step's steps
    (no pass of its own): the loss is still the dense objective at the returned factors."""
    m, n = 90, 70
    rows, cols, vals = low_rank_problem(rng, m, n, 6, 0.5, noise=0.3)[2:]
    vals = (vals + 3.0).astype(dtype)  # not centred
    for reg_scaling in ("none", "count"):
        result = als(rows, cols, vals, (m, n), 12, reg=0.2, reg_scaling=reg_scaling, solver="cg", tol=0.0, seed=8,
                     max_iter=3)
        assert result.info["kernel"] == "rows" and result.info["solver"] == "cg"
        expected = reference.completion_objective(result.U, result.V, rows, cols, vals, 0.2, reg_scaling == "count")
        np.testing.assert_allclose(result.history["loss"][-1], expected, rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_single_problem_rows_kernel_reports_the_relative_change(rng):
    rows, cols, vals, offsets, shape, rank = _change_and_loss_problem(rng, "rows")
    s = slice(0, offsets[1])
    runs = {k: als(rows[s], cols[s], vals[s], shape, rank, reg=0.3, tol=0.0, seed=4, max_iter=k) for k in (2, 3)}
    assert runs[3].info["kernel"] == "rows"
    expected = reference.relative_change(runs[2].U, runs[2].V, runs[3].U, runs[3].V)
    np.testing.assert_allclose(runs[3].history["relative_change"][2], expected, rtol=1e-8)


def test_tolerance_stops_at_the_first_change_below_it(rng):
    """converged at the first iteration whose relative change is below tol, not one later or earlier."""
    _, _, rows, cols, vals = low_rank_problem(rng, 40, 30, 2, 0.5, noise=0.05)
    free = als(rows, cols, vals, (40, 30), 2, reg=0.1, seed=6, max_iter=60, tol=0.0)
    changes = free.history["relative_change"]
    tol = float(np.sqrt(changes[5] * changes[6]))  # between two iterations' changes
    assert changes[6] < tol < changes[5]
    stopped = als(rows, cols, vals, (40, 30), 2, reg=0.1, seed=6, max_iter=60, tol=tol)
    first_below = int(np.flatnonzero(changes < tol)[0]) + 1
    assert stopped.n_iter == first_below and stopped.converged and stopped.stop_reason == "converged"
    np.testing.assert_array_equal(stopped.U, als(rows, cols, vals, (40, 30), 2, reg=0.1, seed=6, max_iter=first_below,
                                                 tol=0.0).U)


# ------------------------------------------------------------------ thread count
def _with_threads(threads: int, solve):
    before = lr_cpu.max_threads()
    lr_cpu.set_num_threads(threads)
    try:
        return solve()
    finally:
        lr_cpu.set_num_threads(before)


# Rank 4: each row's system per entry (70 x 70: past the dense kernel's cells); 6 (padded to a
# whole vector) and 24: in register tiles, factored 16 (AVX-512) rows at a time.
@pytest.mark.parametrize("rank, size", [(4, 70), (6, 30), (24, 30)])
def test_sparse_kernels_give_the_same_bits_whatever_the_thread_count(rng, rank, size):
    """20 problems with enough work each: "fused" while 20 >= 8 threads, "rows" from 3 threads on.
    Both give each problem the same U, V bit for bit (als's docstring), so the thread count,
    which picks the kernel, changes no factor; the measures (loss, relative change) are summed
    in another order by each kernel: equal to 1e-12 relative, not bitwise."""
    rows, cols, vals, offsets = batch_of_problems(rng, 20, size, size, 6)
    assert rows.shape[0] * rank * rank >= 1 << 18  # too much work for the serial shortcut
    runs = {threads: _with_threads(threads, lambda: batched_als(rows, cols, vals, offsets, (size, size), rank, reg=0.1,
                                                                 seed=2, max_iter=8, tol=1e-3))
            for threads in (1, 2, 3)}
    assert runs[1].info["kernel"] == "fused" and runs[3].info["kernel"] == "rows"
    for threads in (2, 3):
        np.testing.assert_array_equal(runs[threads].U, runs[1].U)
        np.testing.assert_array_equal(runs[threads].V, runs[1].V)
        np.testing.assert_array_equal(runs[threads].info["n_iter"], runs[1].info["n_iter"])
        np.testing.assert_allclose(runs[threads].history["loss"], runs[1].history["loss"], rtol=1e-12)
        np.testing.assert_allclose(runs[threads].history["relative_change"], runs[1].history["relative_change"],
                                   rtol=1e-12)


def test_dense_kernel_gives_the_same_bits_whatever_the_thread_count(rng):
    """37 problems of float64: the dense kernel for up to 4 threads, the sparse one from 5 on."""
    rows, cols, vals, offsets = dense_batch(np.random.default_rng(8), 9, 8, np.float64)
    rows, cols, vals, offsets = rows[:offsets[37]], cols[:offsets[37]], vals[:offsets[37]], offsets[:38]
    runs = {threads: _with_threads(threads, lambda: batched_als(rows, cols, vals, offsets, (9, 8), 2, reg=0.05,
                                                                 seed=1, max_iter=10, tol=1e-3))
            for threads in (1, 2, 5)}
    assert runs[1].info["kernel"] == runs[2].info["kernel"] == "dense" and runs[5].info["kernel"] == "fused"
    for threads in (2, 5):
        np.testing.assert_array_equal(runs[threads].U, runs[1].U)
        np.testing.assert_array_equal(runs[threads].V, runs[1].V)
        np.testing.assert_array_equal(runs[threads].history["relative_change"], runs[1].history["relative_change"])


# ------------------------------------------------------------------ GPU against CPU
@pytest.mark.gpu
@pytest.mark.parametrize("reg_scaling", ["none", "count"])
def test_gpu_batched_als_equals_cpu(dtype, rng, reg_scaling):
    """The GPU result against the CPU one: relative error below 1e-8 (float64) or 1e-4 (float32)."""
    from lowrank_hpc import _backend

    cupy = _backend.cupy_module()
    rows, cols, vals, offsets = batch_of_problems(rng, 6, 40, 30, 3)
    vals = vals.astype(dtype)
    settings = dict(reg=0.1, reg_scaling=reg_scaling, max_iter=12, tol=0.0, seed=11)
    cpu = batched_als(rows, cols, vals, offsets, (40, 30), 3, **settings)
    gpu = batched_als(*map(cupy.asarray, (rows, cols, vals, offsets)), (40, 30), 3, **settings)
    assert gpu.backend == "cuda" and isinstance(gpu.U, cupy.ndarray) and gpu.U.dtype == dtype
    tolerance = 1e-8 if dtype == np.float64 else 1e-4
    U, V = gpu.U.get(), gpu.V.get()
    for b in range(6):
        assert rel_error(U[b], cpu.U[b]) < tolerance, b
        assert rel_error(V[b], cpu.V[b]) < tolerance, b
    # The measures follow from the factors: the loss to about twice their relative error, the
    # relative change (a difference of products) to about twice it in absolute terms.
    np.testing.assert_allclose(gpu.history["loss"], cpu.history["loss"], rtol=4 * tolerance)
    np.testing.assert_allclose(gpu.history["relative_change"][1:], cpu.history["relative_change"][1:], rtol=0,
                               atol=4 * tolerance)


# ------------------------------------------------------------------ conjugate-gradient row solves
def cg_rows(rows, cols, vals, n_key, F, X0, reg, steps, matrix_free=False):
    """Each key row's regularised normal equations (sum_j f_j f_j^T + reg I) x = sum_j v_j f_j,
    solved by ``steps`` textbook conjugate-gradient steps from X0's row (dense numpy, the
    system formed explicitly, or with ``matrix_free`` applied as sum_j f_j <f_j, p> + reg p, for
    ranks where an r x r system per row is too large to build in a test); a row without
    observations is zero."""
    X = X0.copy()
    for i in range(n_key):
        mine = rows == i
        if not mine.any():
            X[i] = 0
            continue
        Fi, x = F[cols[mine]], X0[i].copy()
        if matrix_free:
            apply = lambda p, Fi=Fi: Fi.T @ (Fi @ p) + reg * p  # noqa: E731
        else:
            G = Fi.T @ Fi + reg * np.eye(F.shape[1])
            apply = lambda p, G=G: G @ p  # noqa: E731
        residual = Fi.T @ vals[mine] - apply(x)
        direction = residual.copy()
        for _ in range(steps):
            if residual @ residual == 0:
                break
            product = apply(direction)
            alpha = (residual @ residual) / (direction @ product)
            x = x + alpha * direction
            new = residual - alpha * product
            direction = new + (new @ new) / (residual @ residual) * direction
            residual = new
        X[i] = x
    return X


@pytest.mark.parametrize("steps", [1, 3])
def test_cg_half_steps_match_textbook_conjugate_gradients(backend, rng, steps):
    m, n, r = 12, 10, 4
    rows, cols = rng.integers(0, m, 70), rng.integers(0, n, 70)
    rows[rows == 5] = 6  # an empty row: zero
    vals, V0 = rng.standard_normal(70), rng.standard_normal((n, r))
    result = als(*map(backend.put, (rows, cols, vals)), (m, n), r, reg=0.3, solver="cg", cg_steps=steps,
                 max_iter=1, init=backend.put(V0))
    U = cg_rows(rows, cols, vals, m, V0, np.zeros((m, r)), 0.3, steps)  # ALS starts from U = 0
    V = cg_rows(cols, rows, vals, n, U, V0, 0.3, steps)  # V warm-starts from V0
    np.testing.assert_allclose(backend.get(result.U), U, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(backend.get(result.V), V, rtol=1e-10, atol=1e-12)
    assert result.info["solver"] == "cg" and result.info["kernel"] == "rows" and np.all(backend.get(result.U)[5] == 0)


def test_cg_reaches_the_exact_solvers_loss_and_never_raises_it(rng):
    """Run to convergence, CG (the default 5 steps) ends at the exact solver's loss."""
    M, mask, rows, cols, vals = low_rank_problem(rng, 300, 250, 12, 0.2, noise=0.1)
    settings = dict(reg=0.5, max_iter=1000, tol=1e-7, seed=3)
    exact = als(rows, cols, vals, (300, 250), 12, solver="cholesky", **settings)
    cg = als(rows, cols, vals, (300, 250), 12, solver="cg", **settings)
    assert exact.info["solver"] == "cholesky" and cg.info["solver"] == "cg" and exact.converged and cg.converged
    assert cg.history["loss"][-1] == pytest.approx(exact.history["loss"][-1], rel=1e-6)
    assert np.all(np.diff(cg.history["loss"]) <= 1e-12 * cg.history["loss"][0])
    assert rel_error(cg.U @ cg.V.T, M) < 0.05


def test_auto_solver_takes_cg_from_rank_96(rng):
    rows, cols = np.nonzero(rng.random((110, 100)) < 0.5)
    vals = rng.standard_normal(rows.shape[0])
    assert als(rows, cols, vals, (110, 100), 95, max_iter=1, seed=0).info["solver"] == "cholesky"
    assert als(rows, cols, vals, (110, 100), 96, max_iter=1, seed=0).info["solver"] == "cg"
    assert als(rows, cols, vals, (110, 100), 96, solver="cholesky", max_iter=1, seed=0).info["solver"] == "cholesky"


def test_auto_solver_takes_cg_where_the_exact_system_does_not_fit_the_backend(rng, monkeypatch):
    # The CUDA kernel keeps a row's (rank^2 + rank) system in 48 KiB of shared memory: float64
    # fits to rank 77. The CPU module stands in for it with that limit.
    from lowrank_hpc import _backend
    monkeypatch.setattr(_backend.cpu_module(), "ALS_SYSTEM_BYTES_LIMIT", 48 * 1024)
    rows, cols = np.nonzero(rng.random((90, 85)) < 0.5)
    vals = rng.standard_normal(rows.shape[0])
    assert als(rows, cols, vals, (90, 85), 77, max_iter=1, seed=0).info["solver"] == "cholesky"
    assert als(rows, cols, vals, (90, 85), 78, max_iter=1, seed=0).info["solver"] == "cg"
    assert als(rows, cols, vals.astype(np.float32), (90, 85), 78, max_iter=1, seed=0).info["solver"] == "cholesky"
    with pytest.raises(ValueError, match="rank 78 is too large"):
        als(rows, cols, vals, (90, 85), 78, solver="cholesky", max_iter=1, seed=0)


def test_default_cg_steps_are_5_for_ratings_and_implicits_3_for_implicit_feedback(rng):
    rows, cols = np.nonzero(rng.random((30, 20)) < 0.4)
    vals = rng.integers(1, 6, rows.shape[0]).astype(np.float64)
    settings = dict(solver="cg", max_iter=3, tol=0.0, seed=2)
    default, five, three = (als(rows, cols, vals, (30, 20), 4, cg_steps=steps, **settings) for steps in (None, 5, 3))
    np.testing.assert_array_equal(default.U, five.U)
    assert not np.array_equal(default.U, three.U)
    implicit = dict(settings, feedback="implicit", alpha=2.0)
    default, three, five = (als(rows, cols, vals, (30, 20), 4, cg_steps=steps, **implicit) for steps in (None, 3, 5))
    np.testing.assert_array_equal(default.U, three.U)
    assert not np.array_equal(default.U, five.U)


def test_batched_cg_equals_per_problem_cg(rng):
    rows, cols, vals, offsets = batch_of_problems(rng, 5, 15, 12, 3)
    batched = batched_als(rows, cols, vals, offsets, (15, 12), 4, reg=0.2, solver="cg", max_iter=8, tol=0.0, seed=9)
    for b in range(5):
        s = slice(offsets[b], offsets[b + 1])
        single = als(rows[s], cols[s], vals[s], (15, 12), 4, reg=0.2, solver="cg", max_iter=8, tol=0.0, seed=(9, b))
        np.testing.assert_array_equal(batched.U[b], single.U)
        np.testing.assert_array_equal(batched.V[b], single.V)


@pytest.mark.parametrize("change, match", [({"solver": "lu"}, "solver must be one of"),
                                           ({"cg_steps": 0}, "cg_steps must be"),
                                           ({"cg_steps": 2.5}, "cg_steps must be")])
def test_bad_solver_settings_raise(rng, change, match):
    rows, cols = np.nonzero(rng.random((8, 7)) < 0.6)
    with pytest.raises((ValueError, TypeError), match=match):
        als(rows, cols, rng.standard_normal(rows.shape[0]), (8, 7), 2, **change)


@pytest.mark.parametrize("pieces_per_block", [1, 3])
def test_rows_kernel_in_blocks_of_rows_is_the_whole_half_step(rng, monkeypatch, pieces_per_block):
    """The rows kernel updates a problem a block of rows at a time, summing the relative change's
    Grams from each block's old and new rows (no copy of the whole factors): the factors are
    those of one whole-factor pass bit for bit, the relative change matches the float64 reference,
    and blocks that are whole float64 pieces sum the Grams in relative_change's order exactly."""
    import sys

    import lowrank_hpc.recover._measures as measures

    als_module = sys.modules["lowrank_hpc.recover.als"]  # the package's `als` is the function

    rows, cols, vals, offsets, shape, rank = _change_and_loss_problem(rng, "rows")
    s = slice(0, offsets[1])
    whole = {k: als(rows[s], cols[s], vals[s], shape, rank, reg=0.3, tol=0.0, seed=4, max_iter=k, solver="cg")
             for k in (2, 3)}
    monkeypatch.setattr(measures, "_FLOAT64_BLOCK", 8 * rank)  # float64 pieces of 8 rows
    copy_bytes = pieces_per_block * 8 * rank * vals.dtype.itemsize
    monkeypatch.setattr(als_module, "_BLOCK_COPY_BYTES", copy_bytes)
    blocked = als(rows[s], cols[s], vals[s], shape, rank, reg=0.3, tol=0.0, seed=4, max_iter=3, solver="cg")
    assert blocked.info["kernel"] == "rows" and shape[0] > 16
    np.testing.assert_array_equal(blocked.U, whole[3].U)
    np.testing.assert_array_equal(blocked.V, whole[3].V)
    np.testing.assert_array_equal(blocked.history["loss"], whole[3].history["loss"])
    expected = reference.relative_change(whole[2].U, whole[2].V, whole[3].U, whole[3].V)
    np.testing.assert_allclose(blocked.history["relative_change"][2], expected, rtol=1e-8)
    from lowrank_hpc._arrays import resolve

    U0, V0 = whole[2].U[None], whole[2].V[None]
    U1, V1 = whole[3].U[None], whole[3].V[None]
    same_pieces = measures.relative_change(resolve("test", U=U0), U0, V0, U1, V1)
    assert blocked.history["relative_change"][2] == same_pieces[0]


def _ridge_rows_and_conditions(rows, cols, vals, n_key, F, reg):
    """Exact float64 rows of systems with few entries each, G = Fi^T Fi + reg I, by the identity
    G^-1 Fi^T v = Fi^T (Fi Fi^T + reg I)^-1 v, and each system's condition (sigma_max(Fi)^2 + reg) / reg
    (1 for rows without entries, which are zero)."""
    X, conditions = np.zeros((n_key, F.shape[1])), np.ones(n_key)
    for i in np.unique(rows):
        Fi = F[cols[rows == i]]
        X[i] = Fi.T @ np.linalg.solve(Fi @ Fi.T + reg * np.eye(Fi.shape[0]), vals[rows == i])
        conditions[i] = (np.linalg.norm(Fi, 2) ** 2 + reg) / reg
    return X, conditions


@pytest.mark.parametrize("reg, per_row", [(1.0, 60), (0.01, 200)])
def test_float32_exact_solves_at_rank_512_within_the_documented_tolerance(rng, reg, per_row):
    """als's docstring: a float32 row solution is within (10 + 2 cond(G)) eps32 of the exact one,
    relative. Both half-steps of one iteration at r = 512 against float64 ridge solutions given
    the same float32 factors (measured: about half the bound at most, from cond 2 to 8e5)."""
    r, m, n = 512, 520, 530
    key = rng.choice(m, 4, replace=False)
    rows = np.repeat(key, per_row)
    cols = np.concatenate([rng.choice(n, per_row, replace=False) for _ in key])
    vals = (3.5 + rng.standard_normal(rows.shape[0])).astype(np.float32)
    V0 = (rng.standard_normal((n, r)) / np.sqrt(r)).astype(np.float32)
    result = als(rows, cols, vals, (m, n), r, reg=reg, solver="cholesky", max_iter=1, init=V0)
    assert result.U.dtype == np.float32 and result.info["solver"] == "cholesky"
    halves = [(result.U, _ridge_rows_and_conditions(rows, cols, vals.astype(np.float64), m, V0.astype(np.float64), reg)),
              (result.V, _ridge_rows_and_conditions(cols, rows, vals.astype(np.float64), n,
                                                    result.U.astype(np.float64), reg))]
    worst_condition = 0.0
    for got, (expected, conditions) in halves:
        norms = np.linalg.norm(expected, axis=1)
        observed = norms > 0
        errors = np.linalg.norm(got[observed] - expected[observed], axis=1) / norms[observed]
        bounds = (10 + 2 * conditions[observed]) * np.finfo(np.float32).eps
        assert np.all(errors <= bounds), (errors / bounds).max()
        assert np.all(got[~observed] == 0)
        worst_condition = max(worst_condition, conditions.max())
    assert worst_condition > (100 if reg == 1.0 else 1e5)  # the bound is exercised, not only its constant


def _exact_rows(rows, cols, vals, n_key, F, reg):
    """Each key row's regularised normal equations solved by LAPACK; empty rows zero."""
    X = np.zeros((n_key, F.shape[1]))
    for i in np.unique(rows):
        Fi = F[cols[rows == i]]
        X[i] = np.linalg.solve(Fi.T @ Fi + reg * np.eye(F.shape[1]), Fi.T @ vals[rows == i])
    return X


@pytest.mark.parametrize("r, solver", [(1023, "cg"), (1024, "cg"), (1025, "cg"), (2048, "cg"),
                                       (1023, "cholesky"), (1024, "cholesky"), (1025, "cholesky")])
def test_ranks_past_a_thousand(backend, rng, r, solver):
    """Issue 10's large ranks (implicit's GPU ALS fails at 1024, cuMF from 60): one iteration on a
    (r + 5) x (r + 6) matrix whose few observed rows and columns keep the test small, both
    half-steps against float64 references (LAPACK for the exact solver, textbook CG); the exact
    solver to 1025 only (at 2048 its test took 14 s, mostly the relative change's Grams and the
    reference). The GPU's exact solver holds each row's system in shared memory and says so past
    its rank limit."""
    m, n = r + 5, r + 6
    key_rows, key_cols = np.array([0, 3, m // 2, m - 1]), np.array([1, 2, n // 2, n - 2])
    rows, cols = np.repeat(key_rows, 3), np.concatenate([rng.choice(key_cols, 3, replace=False) for _ in range(4)])
    vals, V0 = rng.standard_normal(rows.shape[0]), rng.standard_normal((n, r)) / np.sqrt(r)
    run = lambda: als(*map(backend.put, (rows, cols, vals)), (m, n), r, reg=0.4, solver=solver,  # noqa: E731
                      max_iter=1, init=backend.put(V0))
    if backend.name == "cuda" and solver == "cholesky":
        with pytest.raises(ValueError, match="shared memory"):
            run()
        return
    result = run()
    if solver == "cg":
        U = cg_rows(rows, cols, vals, m, V0, np.zeros((m, r)), 0.4, CG_STEPS, matrix_free=True)
        V = cg_rows(cols, rows, vals, n, U, V0, 0.4, CG_STEPS, matrix_free=True)
    else:
        U = _exact_rows(rows, cols, vals, m, V0, 0.4)
        V = _exact_rows(cols, rows, vals, n, U, 0.4)
    assert result.info["solver"] == solver
    np.testing.assert_allclose(backend.get(result.U), U, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(backend.get(result.V), V, rtol=1e-9, atol=1e-12)
    assert np.isfinite(result.history["loss"][0])
