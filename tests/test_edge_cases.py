"""Bad and unusual inputs (issue 8, "What a run of bad and unusual inputs found"): one test per
class, each against an independent reference (numpy, scipy or a formula).

- silent wrong results: a NaN/inf loss or a step that cannot move the factors never reads
  "converged"; non-integral sizes are refused, never truncated;
- seed=None: fresh entropy everywhere, reported in info["seed"], and a checkpointed run with
  seed=None resumes;
- unhelpful errors: None for an array, a string in a shape, unusable checkpoint files and
  directories;
- valid input refused: factor widths above min(m, n), max_iter=0 and time_limit=0;
- GaussianSensing(mode="cached") within memory_budget;
- duplicate (row, col) entries: summed by sparse_times_dense (as scipy), separate observations
  in ALS;
- RecoveryResult fields of one type in single and batched solves.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import scipy.sparse as sp

import lowrank_hpc as lr
from lowrank_hpc import _checks
from lowrank_hpc.ops import SparsePattern, lowrank_product, sampled_product, sparse_times_dense
from lowrank_hpc.recover import (CheckpointError, CheckpointMismatchError, als, batched_als, batched_factored_gd,
                                 factored_gd)
from lowrank_hpc.sensing import ColumnSketch, EntrySampling, GaussianSensing, RankOneSensing


# ----------------------------------------------------------------------------- data and references
def completion(seed=0, m=12, n=10, r=2, fraction=0.7):
    """A rank-r (m, n) matrix and its observed entries (row-major, int64 indices, float64 values)."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((m, r)) @ rng.standard_normal((r, n))
    mask = rng.random((m, n)) < fraction
    rows, cols = (np.ascontiguousarray(a, dtype=np.int64) for a in np.nonzero(mask))
    return M, rows, cols, M[rows, cols]


def two_problems(seed=0, m=12, n=10):
    """Two completion problems of one shape, concatenated, with their offsets."""
    parts = [completion(seed + b, m, n) for b in range(2)]
    rows = np.concatenate([p[1] for p in parts])
    cols = np.concatenate([p[2] for p in parts])
    vals = np.concatenate([p[3] for p in parts])
    offsets = np.array([0, parts[0][1].size, rows.size], dtype=np.int64)
    return [p[0] for p in parts], rows, cols, vals, offsets


def small_start(seed, m, n, r, scale=1e-3):
    """factored_gd's "small" init drawn with numpy: U = scale G / sqrt(m), V = scale / 3 G' / sqrt(n)."""
    rng = np.random.default_rng(seed)
    U = scale * rng.standard_normal((m, r)) / np.sqrt(m)
    V = (scale / 3.0) * rng.standard_normal((n, r)) / np.sqrt(n)
    return U, V


def half_squared_residual(U, V, rows, cols, vals):
    with np.errstate(over="ignore", invalid="ignore"):
        z = np.einsum("kr,kr->k", U[rows].astype(np.float64), V[cols].astype(np.float64)) - vals
        return 0.5 * float(np.sum(z * z))


def weighted_als(rows, cols, vals, shape, V0, reg, iterations):
    """ALS by dense per-row ridge solves in float64, each distinct (i, j) once with weight = its
    count and value = the mean of its values (the fit of repeated entries as the docstring says)."""
    m, n = shape
    weight = np.zeros((m, n))
    total = np.zeros((m, n))
    np.add.at(weight, (rows, cols), 1.0)
    np.add.at(total, (rows, cols), vals)
    mean = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    V = V0.astype(np.float64)
    r = V.shape[1]
    for _ in range(iterations):
        U = np.stack([np.linalg.solve((V.T * weight[i]) @ V + reg * np.eye(r), (V.T * weight[i]) @ mean[i])
                      for i in range(m)])
        V = np.stack([np.linalg.solve((U.T * weight[:, j]) @ U + reg * np.eye(r), (U.T * weight[:, j]) @ mean[:, j])
                      for j in range(n)])
    return U, V


def put_all(backend, *arrays):
    return [backend.put(a) for a in arrays]


# ----------------------------------------------------------------------------- silent wrong results
def test_factored_gd_nonfinite_loss_stops_as_diverged(backend):
    M, rows, cols, vals = completion()
    y = vals * 1e160  # each value fits float64, their squares do not
    U0, V0 = small_start(1, *M.shape, 2)
    assert np.isinf(half_squared_residual(U0, V0, rows, cols, y))
    op = EntrySampling(*put_all(backend, rows, cols), M.shape)
    result = factored_gd(op, backend.put(y), 2, init=tuple(put_all(backend, U0, V0)), max_iter=50, seed=0)
    assert result.stop_reason == "diverged" and result.converged is False and result.n_iter == 1
    assert np.isinf(result.history["loss"]).all()
    np.testing.assert_array_equal(backend.get(result.U), U0)  # no step was taken
    np.testing.assert_array_equal(backend.get(result.V), V0)


def test_batched_factored_gd_diverges_per_problem(backend):
    Ms, rows, cols, vals, offsets = two_problems()
    vals = vals.copy()
    vals[:offsets[1]] *= 1e160  # problem 0 only
    result = batched_factored_gd(*put_all(backend, rows, cols, vals, offsets), Ms[0].shape, 2, step=0.05,
                                 max_iter=5000, tol=1e-7, seed=0)
    assert result.stop_reason[0] == "diverged" and result.info["n_iter"][0] == 1
    assert result.stop_reason[1] == "converged"
    np.testing.assert_array_equal(result.converged, [False, True])
    U, V = backend.get(result.U), backend.get(result.V)
    s = slice(offsets[1], offsets[2])
    fitted = np.einsum("kr,kr->k", U[1][rows[s]], V[1][cols[s]])
    assert np.linalg.norm(fitted - vals[s]) / np.linalg.norm(vals[s]) < 1e-7  # the tolerance it met


@pytest.mark.parametrize("method", ["gd", "alternating", "scaled", "scaled_damped"])
def test_a_step_too_large_to_move_is_no_progress(backend, method):
    M, rows, cols, vals = completion()
    U0, V0 = small_start(2, *M.shape, 2, scale=1.0)
    op = EntrySampling(*put_all(backend, rows, cols), M.shape)
    result = factored_gd(op, backend.put(vals), 2, method=method, init=tuple(put_all(backend, U0, V0)), step=1e30,
                         max_iter=100, seed=0)
    assert result.stop_reason == "no_progress" and result.converged is False and result.n_iter == 1
    assert result.step_halvings == 50 and result.step == 1e30
    np.testing.assert_array_equal(backend.get(result.U), U0)
    np.testing.assert_allclose(result.history["loss"], [half_squared_residual(U0, V0, rows, cols, vals)], rtol=1e-12)


@pytest.mark.parametrize("method", ["gd", "scaled"])
def test_batched_step_too_large_is_no_progress(backend, method):
    Ms, rows, cols, vals, offsets = two_problems()
    starts = [small_start(3 + b, *Ms[0].shape, 2, scale=1.0) for b in range(2)]
    U0, V0 = (np.stack([s[i] for s in starts]) for i in (0, 1))
    result = batched_factored_gd(*put_all(backend, rows, cols, vals, offsets), Ms[0].shape, 2, method=method,
                                 init=tuple(put_all(backend, U0, V0)), step=np.array([1e30, 1e-2]), max_iter=3)
    assert result.stop_reason == ["no_progress", "max_iter"]
    np.testing.assert_array_equal(result.converged, [False, False])
    np.testing.assert_array_equal(backend.get(result.U)[0], U0[0])
    s = slice(0, offsets[1])
    np.testing.assert_allclose(result.history["loss"][0, 0],
                               half_squared_residual(U0[0], V0[0], rows[s], cols[s], vals[s]), rtol=1e-12)
    np.testing.assert_array_equal(result.info["n_iter"], [1, 3])


def test_float32_values_too_large_for_the_gradients_are_no_progress(backend):
    M, rows, cols, vals = completion()
    y = (vals * 1e30).astype(np.float32)  # fits float32, but y * V overflows it
    op = EntrySampling(*put_all(backend, rows, cols), M.shape)
    single = factored_gd(op, backend.put(y), 2, max_iter=3000, seed=1)
    batched = batched_factored_gd(*put_all(backend, rows, cols, y, np.array([0, rows.size])), M.shape, 2,
                                  max_iter=3000, seed=1)
    start_loss = 0.5 * float(np.sum(y.astype(np.float64) ** 2))  # the loss at U V^T ~ 0
    for converged, reason, loss in ((single.converged, single.stop_reason, single.history["loss"][-1]),
                                    (batched.converged[0], batched.stop_reason[0], batched.history["loss"][-1, 0])):
        assert not converged and reason in ("no_progress", "diverged")
        assert not loss < 0.5 * start_loss  # it never fitted the data


def test_als_nonfinite_loss_stops_as_diverged(backend):
    M, rows, cols, vals = completion()
    V0 = np.random.default_rng(4).standard_normal((M.shape[1], 2))
    single = als(*put_all(backend, rows, cols, vals * 1e160), M.shape, 2, init=backend.put(V0), max_iter=20)
    assert single.stop_reason == "diverged" and single.converged is False and single.n_iter == 1
    assert np.isinf(single.history["loss"][0])
    Ms, rows2, cols2, vals2, offsets = two_problems()
    vals2 = vals2.copy()
    vals2[offsets[1]:] *= 1e160  # problem 1 only
    V0s = np.random.default_rng(5).standard_normal((2, Ms[0].shape[1], 2))
    batched = batched_als(*put_all(backend, rows2, cols2, vals2, offsets), Ms[0].shape, 2, reg=0.2,
                          init=backend.put(V0s), max_iter=3, tol=0.0)
    assert batched.stop_reason == ["max_iter", "diverged"]
    np.testing.assert_array_equal(batched.converged, [False, False])
    np.testing.assert_array_equal(batched.info["n_iter"], [3, 1])
    s = slice(0, offsets[1])
    U_ref, V_ref = weighted_als(rows2[s], cols2[s], vals2[s], Ms[0].shape, V0s[0], 0.2, 3)
    np.testing.assert_allclose(backend.get(batched.U)[0], U_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(backend.get(batched.V)[0], V_ref, rtol=1e-9, atol=1e-10)


def _shape_call_sites(backend):
    M, rows, cols, vals = completion()
    r, c, v = put_all(backend, rows, cols, vals)
    offsets = backend.put(np.array([0, rows.size]))
    return {
        "als": lambda shape: als(r, c, v, shape, 2),
        "batched_als": lambda shape: batched_als(r, c, v, offsets, shape, 2),
        "batched_factored_gd": lambda shape: batched_factored_gd(r, c, v, offsets, shape, 2),
        "SparsePattern": lambda shape: SparsePattern(r, c, shape),
        "EntrySampling": lambda shape: EntrySampling(r, c, shape),
        "GaussianSensing": lambda shape: GaussianSensing(5, shape, 1),
        "RankOneSensing": lambda shape: RankOneSensing(5, shape, 1),
        "ColumnSketch": lambda shape: ColumnSketch(2, shape, 1),
        "MatrixCompletion.fit": lambda shape: lr.MatrixCompletion(rank=2, max_iter=2, random_state=0).fit(
            r, c, v, shape=shape),
    }


@pytest.mark.parametrize("site", ["als", "batched_als", "batched_factored_gd", "SparsePattern", "EntrySampling",
                                  "GaussianSensing", "RankOneSensing", "ColumnSketch", "MatrixCompletion.fit"])
@pytest.mark.parametrize("shape, where", [((30.9, 20), 0), ((30.0, 20), 0), ((30, 20.0), 1), (("30", 20), 0),
                                          ((30, None), 1)], ids=["30.9", "30.0", "20.0", "str", "None"])
def test_non_integral_sizes_are_refused_not_truncated(backend, site, shape, where):
    call = _shape_call_sites(backend)[site]
    with pytest.raises(TypeError, match=rf"shape\[{where}\] must be an int, got {type(shape[where]).__name__}"):
        call(shape)


def test_numpy_integer_sizes_are_accepted(backend):
    M, rows, cols, vals = completion()
    shape = (np.int32(M.shape[0]), np.int64(M.shape[1]))
    V0 = np.random.default_rng(6).standard_normal((M.shape[1], 2))
    result = als(*put_all(backend, rows, cols, vals), shape, np.int64(2), reg=0.2, init=backend.put(V0), max_iter=2)
    U_ref, V_ref = weighted_als(rows, cols, vals, M.shape, V0, 0.2, 2)
    np.testing.assert_allclose(backend.get(result.U), U_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", ["als", "factored_gd", "batched_factored_gd"])
def test_a_float_rank_is_refused(backend, solver):
    M, rows, cols, vals = completion()
    r, c, v = put_all(backend, rows, cols, vals)
    calls = {"als": lambda: als(r, c, v, M.shape, 2.0),
             "factored_gd": lambda: factored_gd(EntrySampling(r, c, M.shape), v, 2.0),
             "batched_factored_gd": lambda: batched_factored_gd(r, c, v, backend.put(np.array([0, rows.size])),
                                                                M.shape, 2.0)}
    with pytest.raises(TypeError, match="rank must be an int, got float 2.0"):
        calls[solver]()


# ----------------------------------------------------------------------------- seeds
def _run(solver, backend, seed, **settings):
    """One small solve of each solver on the same data (two problems for the batched ones)."""
    Ms, rows, cols, vals, offsets = two_problems()
    shape = Ms[0].shape
    if solver == "factored_gd":
        s = slice(0, offsets[1])
        op = EntrySampling(*put_all(backend, rows[s], cols[s]), shape)
        return factored_gd(op, backend.put(vals[s]), 2, seed=seed, **settings)
    if solver == "batched_factored_gd":
        return batched_factored_gd(*put_all(backend, rows, cols, vals, offsets), shape, 2, seed=seed, **settings)
    if solver == "als":
        s = slice(0, offsets[1])
        return als(*put_all(backend, rows[s], cols[s], vals[s]), shape, 2, seed=seed, **settings)
    return batched_als(*put_all(backend, rows, cols, vals, offsets), shape, 2, seed=seed, **settings)


SOLVERS = ["factored_gd", "batched_factored_gd", "als", "batched_als"]


def _same(backend, a, b):
    """Equal factors: bitwise on the CPU; to rounding on the GPU (its sums use atomics)."""
    for x, y in ((a.U, b.U), (a.V, b.V)):
        if backend.name == "cpu":
            np.testing.assert_array_equal(backend.get(x), backend.get(y))
        else:
            np.testing.assert_allclose(backend.get(x), backend.get(y), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_seed_none_is_fresh_entropy_and_reported(backend, solver):
    first = _run(solver, backend, None, max_iter=3, tol=0.0)
    second = _run(solver, backend, None, max_iter=3, tol=0.0)
    seeds = first.info["seed"], second.info["seed"]
    assert all(isinstance(s, int) and 0 <= s < 2**64 for s in seeds) and seeds[0] != seeds[1]
    again = _run(solver, backend, seeds[0], max_iter=3, tol=0.0)  # the reported seed reproduces the run
    assert again.info["seed"] == seeds[0]
    _same(backend, first, again)
    assert not np.array_equal(backend.get(first.V), backend.get(second.V))


def test_gradient_starts_are_numpys_draws_of_the_seed(backend):
    """seed=s gives factored_gd numpy's default_rng(s) start and problem b of a batch default_rng(s + b)
    (batched_factored_gd's seed=None used to mean 0: now it is drawn, like everywhere)."""
    Ms, rows, cols, vals, offsets = two_problems()
    shape = Ms[0].shape
    batched = batched_factored_gd(*put_all(backend, rows, cols, vals, offsets), shape, 2, seed=None, max_iter=0)
    seed = batched.info["seed"]
    for b in range(2):
        U_ref, V_ref = small_start(seed + b, *shape, 2)
        np.testing.assert_allclose(backend.get(batched.U)[b], U_ref, rtol=1e-15)
        np.testing.assert_allclose(backend.get(batched.V)[b], V_ref, rtol=1e-15)
    s = slice(0, offsets[1])
    single = factored_gd(EntrySampling(*put_all(backend, rows[s], cols[s]), shape), backend.put(vals[s]), 2,
                         seed=12345, max_iter=0)
    U_ref, V_ref = small_start(12345, *shape, 2)
    np.testing.assert_allclose(backend.get(single.U), U_ref, rtol=1e-15)
    assert single.info["seed"] == 12345


@pytest.mark.parametrize("solver", SOLVERS)
def test_checkpointed_run_with_seed_none_resumes(backend, solver, tmp_path):
    path = tmp_path / "run.npz"
    settings = dict(tol=0.0, checkpoint=str(path), checkpoint_every=2)
    stopped = _run(solver, backend, None, max_iter=4, **settings)
    assert stopped.n_iter == 4 and path.exists()
    drawn = stopped.info["seed"]
    resumed = _run(solver, backend, None, max_iter=9, **settings)  # goes on from iteration 4
    assert resumed.n_iter == 9 and resumed.info["seed"] == drawn
    uninterrupted = _run(solver, backend, drawn, max_iter=9, tol=0.0)
    _same(backend, resumed, uninterrupted)
    np.testing.assert_allclose(resumed.history["loss"], uninterrupted.history["loss"], rtol=1e-12)
    # A seed=None call does not resume a run of an explicit seed: that is another run.
    explicit = tmp_path / "explicit.npz"
    _run(solver, backend, 7, max_iter=2, tol=0.0, checkpoint=str(explicit))
    with pytest.raises(CheckpointMismatchError, match="different problem"):
        _run(solver, backend, None, max_iter=4, tol=0.0, checkpoint=str(explicit))


@pytest.mark.parametrize("seed, error, match", [
    (-1, ValueError, "seed must be None or an integer >= 0"),
    (2**64, ValueError, "seed must be None or an integer >= 0"),
    (1.5, TypeError, "seed must be None or an integer >= 0, got float 1.5"),
    ("7", TypeError, "seed must be None or an integer >= 0, got str"),
])
@pytest.mark.parametrize("solver", SOLVERS)
def test_bad_seeds_are_named(backend, solver, seed, error, match):
    with pytest.raises(error, match=match):
        _run(solver, backend, seed, max_iter=1)


# ----------------------------------------------------------------------------- unhelpful errors
def _none_calls(backend):
    M, rows, cols, vals = completion()
    r, c, v = put_all(backend, rows, cols, vals)
    offsets = backend.put(np.array([0, rows.size]))
    op = GaussianSensing(30, M.shape, 1)
    return [
        ("rows", lambda: als(None, c, v, M.shape, 2)),
        ("vals", lambda: als(r, c, None, M.shape, 2)),
        ("cols", lambda: batched_als(r, None, v, offsets, M.shape, 2)),
        ("vals", lambda: batched_factored_gd(r, c, None, offsets, M.shape, 2)),
        ("y", lambda: factored_gd(op, None, 2)),
        ("rows", lambda: SparsePattern(None, c, M.shape)),
        ("X", lambda: op.forward(None)),
        ("y", lambda: op.adjoint(None)),
        ("U", lambda: op.forward_factored(None)),
        ("B", lambda: op.adjoint_times(backend.put(np.ones(30)), None)),
    ]


@pytest.mark.parametrize("case", range(10))
def test_none_for_an_array_names_the_argument(backend, case):
    name, call = _none_calls(backend)[case]
    with pytest.raises(TypeError, match=rf": {name} is None; pass an array"):
        call()


def test_sizes_too_large_for_the_row_pointers_name_the_argument(backend):
    # numpy's own "array is too big" / MemoryError name nothing; indptr holds size + 1 int64.
    r, c = put_all(backend, np.array([0, 1]), np.array([0, 1]))
    vals, B = backend.put(np.ones(2)), backend.put(np.ones((5, 2)))
    for n_rows, error in ((2**62, ValueError), (2**56, MemoryError)):  # past int64 bytes; past any address space
        need = f"{8 * (n_rows + 1):,}"
        error = (ValueError, MemoryError) if backend.name == "cuda" else error  # CuPy's own split of the two
        with pytest.raises(error, match=rf"sparse_times_dense: n_rows = {n_rows} is too large: the row-pointer "
                                        rf"array of n_rows \+ 1 int64 would need {need} bytes"):
            sparse_times_dense(r, c, vals, B, n_rows)
    # Past int64 itself: the bindings' "incompatible function arguments" before; now named.
    for n_rows in (2**63, 2**64 + 5):
        with pytest.raises(ValueError, match=rf"sparse_times_dense: n_rows must be below 2\*\*63 \(int64\), got {n_rows}"):
            sparse_times_dense(r, c, vals, B, n_rows)
    with pytest.raises(ValueError, match=r"GaussianSensing: m must be below 2\*\*63"):
        lr.sensing.GaussianSensing(2**63, (3, 4), seed=1)
    with pytest.raises(ValueError, match=rf"SparsePattern: shape\[0\] = {2**62} is too large"):
        SparsePattern(r, c, (2**62, 4))
    with pytest.raises(ValueError, match=rf"SparsePattern: shape\[1\] = {2**62} is too large"):
        SparsePattern(r, c, (4, 2**62))


def test_sparse_pattern_offsets_that_are_not_an_array_are_named(backend):
    r, c = put_all(backend, np.array([0, 1, 2]), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"SparsePattern: offsets must be 1-D, got shape \(\)"):
        SparsePattern(r, c, (5, 4), offsets=3)
    for offsets in ([], [0]):
        with pytest.raises(ValueError, match=rf"SparsePattern: offsets has length {len(offsets)}, expected batch"):
            SparsePattern(r, c, (5, 4), offsets=offsets)
    pattern = SparsePattern(r, c, (5, 4), offsets=[0, 1, 3])  # a list, as for the other functions
    U, V = np.arange(30.0).reshape(2, 5, 3), np.arange(24.0).reshape(2, 4, 3)
    np.testing.assert_array_equal(backend.get(pattern.sampled_product(backend.put(U), backend.put(V))),
                                  [U[0, 0] @ V[0, 0], U[1, 1] @ V[1, 1], U[1, 2] @ V[1, 2]])


def test_apply_kernel_errors_speak_of_its_own_argument(backend):
    limit = np.log(np.finfo(np.float64).max)  # 709.78: exp overflows float64 above it
    cases = [(ValueError, np.array([np.nan]), "exp", "apply_kernel: K contains 1 NaN/inf"),
             (FloatingPointError, np.array([1.0, 1000.0]), "exp",
              rf"apply_kernel: exponential kernel overflowed: 1 entries of exp\(K\) are inf in float64 \(entries "
              rf"of K above {limit:.1f}\)"),
             (FloatingPointError, np.float32([1e5, 1.0]), "identity",
              r"apply_kernel: f\(K\) overflowed: 1 entries of identity\(K\) are NaN/inf in float16"),
             (ValueError, np.ones(2), "cube", "apply_kernel: unknown kernel 'cube'")]
    for error, K, kernel, match in cases:
        dtype = np.float16 if kernel == "identity" else None
        with pytest.raises(error, match=match) as caught:
            lr.ops.apply_kernel(backend.put(K), kernel, dtype)
        assert "kernel_product" not in str(caught.value) and "U V^T" not in str(caught.value)


def _write_checkpoint_kinds(path, kind, good):
    """Turn ``path`` into a damaged or foreign checkpoint; ``good`` holds a valid one's bytes."""
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "foreign_npz":
        with open(path, "wb") as stream:
            np.savez(stream, weights=np.ones(3))
    elif kind == "npy":
        with open(path, "wb") as stream:
            np.save(stream, np.ones(3))
    elif kind == "misshaped":
        path.write_bytes(good)
        with np.load(path) as saved:
            entries = dict(saved)
        entries["array_V"] = np.ones((3, 3, 3))  # the fingerprint still matches
        with open(path, "wb") as stream:
            np.savez(stream, **entries)


@pytest.mark.parametrize("kind, what", [
    ("empty", "is empty"), ("truncated", "cannot be read"), ("text", "cannot be read"),
    ("foreign_npz", "is not a lowrank_hpc checkpoint"), ("npy", "single .npy array"),
    ("misshaped", r"V of shape \(3, 3, 3\)"),
])
@pytest.mark.parametrize("solver", SOLVERS)
def test_unusable_checkpoint_files_raise_checkpoint_error(backend, solver, tmp_path, kind, what):
    path = tmp_path / "run.npz"
    _run(solver, backend, 3, max_iter=2, tol=0.0, checkpoint=str(path))
    good = path.read_bytes()
    _write_checkpoint_kinds(path, kind, good)
    with pytest.raises(CheckpointError, match=re.escape(repr(str(path))) + ".*" + what):
        _run(solver, backend, 3, max_iter=4, tol=0.0, checkpoint=str(path))


@pytest.mark.parametrize("solver", SOLVERS)
def test_checkpoint_in_a_missing_directory_fails_before_any_work(backend, solver, tmp_path):
    calls = []
    missing = tmp_path / "no" / "such" / "dir" / "run.npz"
    where = re.escape(repr(str(missing.parent)))
    with pytest.raises(CheckpointError, match=where + " of checkpoint .* does not exist"):
        _run(solver, backend, 0, max_iter=5, checkpoint=str(missing), callback=lambda i, state: calls.append(i))
    assert calls == [] and not missing.parent.exists()


def test_checkpoint_errors_are_one_family():
    assert lr.CheckpointError is CheckpointError is lr.recover.CheckpointError
    assert issubclass(CheckpointMismatchError, CheckpointError) and issubclass(CheckpointError, ValueError)


# ----------------------------------------------------------------------------- valid input refused
def test_factor_width_above_both_dimensions(backend):
    rng = np.random.default_rng(8)
    m, n, r = 3, 2, 8  # over-parameterized: r > max(m, n)
    U, V = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    rows, cols = np.array([0, 2, 1, 2], dtype=np.int64), np.array([1, 0, 1, 1], dtype=np.int64)
    np.testing.assert_allclose(backend.get(sampled_product(*put_all(backend, U, V, rows, cols))),
                               np.einsum("kr,kr->k", U[rows], V[cols]), rtol=1e-12)
    np.testing.assert_allclose(backend.get(lowrank_product(*put_all(backend, U, V))), U @ V.T, rtol=1e-12)
    U3, V3 = rng.standard_normal((2, m, r)), rng.standard_normal((2, n, r))
    offsets = np.array([0, 2, 4], dtype=np.int64)
    expected = np.concatenate([np.einsum("kr,kr->k", U3[b][rows[2 * b:2 * b + 2]], V3[b][cols[2 * b:2 * b + 2]])
                               for b in range(2)])
    np.testing.assert_allclose(backend.get(sampled_product(*put_all(backend, U3, V3, rows, cols),
                                                           offsets=backend.put(offsets))), expected, rtol=1e-12)


def test_over_parameterized_gradient_solves(backend):
    rng = np.random.default_rng(9)
    m, n, rank = 6, 5, 7  # rank > min(m, n): legitimate for gradient methods
    M = rng.standard_normal((m, 2)) @ rng.standard_normal((2, n))
    rows, cols = (np.ascontiguousarray(a.ravel(), dtype=np.int64) for a in np.indices((m, n)))
    op = EntrySampling(*put_all(backend, rows, cols), (m, n))
    single = factored_gd(op, backend.put(M.ravel()), rank, max_iter=20000, tol=1e-7, seed=0)
    assert single.converged and backend.get(single.U).shape == (m, rank)
    assert np.linalg.norm(backend.get(single.U) @ backend.get(single.V).T - M) / np.linalg.norm(M) < 1e-6
    batched = batched_factored_gd(*put_all(backend, rows, cols, M.ravel(), np.array([0, m * n])), (m, n), rank,
                                  max_iter=20000, tol=1e-7, seed=0)
    assert batched.converged.all()
    X = backend.get(batched.U)[0] @ backend.get(batched.V)[0].T
    assert np.linalg.norm(X - M) / np.linalg.norm(M) < 1e-6
    for call in (lambda: factored_gd(op, backend.put(M.ravel()), rank, method="scaled"),
                 lambda: factored_gd(op, backend.put(M.ravel()), rank, init="spectral")):
        with pytest.raises(ValueError, match=r"rank 7 exceeds min\(6, 5\) = 5"):
            call()
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, min\(shape\) = 5\]"):
        als(*put_all(backend, rows, cols, M.ravel()), (m, n), rank)  # ALS: singular without reg, no gain


@pytest.mark.parametrize("limit", ["max_iter", "time_limit"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_iterations_return_the_start(backend, solver, limit):
    Ms, rows, cols, vals, offsets = two_problems()
    shape = Ms[0].shape
    rng = np.random.default_rng(10)
    stop = {"max_iter": 0} if limit == "max_iter" else {"time_limit": 0}
    batched = solver.startswith("batched")
    lead = (2,) if batched else ()
    if solver in ("factored_gd", "batched_factored_gd"):
        U0, V0 = rng.standard_normal(lead + (shape[0], 2)), rng.standard_normal(lead + (shape[1], 2))
        init = tuple(put_all(backend, U0, V0))
    else:
        U0, V0 = np.zeros(lead + (shape[0], 2)), rng.standard_normal(lead + (shape[1], 2))
        init = backend.put(V0)
    result = _run(solver, backend, 0, init=init, **stop)
    assert result.n_iter == 0
    np.testing.assert_array_equal(backend.get(result.U), U0)
    np.testing.assert_array_equal(backend.get(result.V), V0)
    if batched:
        assert result.stop_reason == [limit, limit] and result.converged.tolist() == [False, False]
        assert result.history["loss"].shape == (0, 2) and result.history["relative_change"].shape == (0, 2)
        np.testing.assert_array_equal(result.info["n_iter"], [0, 0])
    else:
        assert result.stop_reason == limit and result.converged is False
        assert result.history["loss"].shape == (0,) and result.history["relative_change"].shape == (0,)


# ----------------------------------------------------------------------------- memory budget
def test_cached_gaussian_sensing_respects_memory_budget(backend):
    m, shape = 100, (10, 10)
    float64_bytes, float32_bytes = m * 100 * 8, m * 100 * 4  # the (m, n1 n2) matrix
    op = GaussianSensing(m, shape, 1, mode="cached", memory_budget=50_000)
    X = np.random.default_rng(11).standard_normal(shape)
    y32 = backend.get(op.forward(backend.put(X.astype(np.float32))))  # 40 kB: within the budget
    np.testing.assert_allclose(y32, op.to_dense(np.float32).astype(np.float64) @ X.ravel(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=f"{float64_bytes} bytes, over memory_budget = 50000 bytes"):
        op.forward(backend.put(X))
    with pytest.raises(ValueError, match=f"{float32_bytes} bytes, over memory_budget = 30000 bytes"):
        GaussianSensing(m, shape, 1, mode="cached", memory_budget=30_000)


# ----------------------------------------------------------------------------- duplicates
@pytest.mark.parametrize("transpose", [False, True])
def test_sparse_times_dense_sums_duplicates_like_scipy(backend, transpose):
    rng = np.random.default_rng(12)
    rows = np.array([0, 3, 0, 2, 3, 0, 1], dtype=np.int64)
    cols = np.array([1, 2, 1, 0, 2, 1, 3], dtype=np.int64)  # (0, 1) three times, (3, 2) twice
    vals = rng.standard_normal(rows.size)
    S = sp.coo_matrix((vals, (rows, cols)), shape=(4, 5)).tocsr()  # scipy sums duplicates
    B = rng.standard_normal((4 if transpose else 5, 3))
    expected = (S.T @ B) if transpose else (S @ B)
    n_rows = 5 if transpose else 4
    out = sparse_times_dense(*put_all(backend, rows, cols, vals, B), n_rows, transpose=transpose)
    np.testing.assert_allclose(backend.get(out), expected, rtol=1e-12, atol=1e-14)
    pattern = SparsePattern(*put_all(backend, rows, cols), (4, 5))
    np.testing.assert_allclose(backend.get(pattern.times_dense(*put_all(backend, vals, B), transpose=transpose)),
                               expected, rtol=1e-12, atol=1e-14)


def test_als_counts_duplicates_as_separate_observations(backend):
    M, rows, cols, vals = completion(seed=13)
    rng = np.random.default_rng(13)
    picked = rng.choice(rows.size, 15, replace=False)  # observe these cells again, with other values
    rows_d = np.concatenate([rows, rows[picked]])
    cols_d = np.concatenate([cols, cols[picked]])
    vals_d = np.concatenate([vals, vals[picked] + rng.standard_normal(picked.size)])
    V0 = rng.standard_normal((M.shape[1], 2))
    result = als(*put_all(backend, rows_d, cols_d, vals_d), M.shape, 2, reg=0.3, init=backend.put(V0), max_iter=3,
                 tol=0.0)
    U_ref, V_ref = weighted_als(rows_d, cols_d, vals_d, M.shape, V0, 0.3, 3)  # mean value, weight = count
    np.testing.assert_allclose(backend.get(result.U), U_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(backend.get(result.V), V_ref, rtol=1e-9, atol=1e-10)
    offsets = np.array([0, rows_d.size, 2 * rows_d.size], dtype=np.int64)
    batched = batched_als(*put_all(backend, np.tile(rows_d, 2), np.tile(cols_d, 2), np.tile(vals_d, 2), offsets),
                          M.shape, 2, reg=0.3, init=backend.put(np.stack([V0, V0])), max_iter=3, tol=0.0)
    np.testing.assert_allclose(backend.get(batched.U)[1], U_ref, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------------------- RecoveryResult
def test_result_fields_have_one_type_per_kind_of_solve(backend):
    Ms, rows, cols, vals, offsets = two_problems()
    for solver in ("factored_gd", "als"):
        result = _run(solver, backend, 0, max_iter=5)
        assert type(result.converged) is bool and isinstance(result.stop_reason, str)
        assert isinstance(result.n_iter, int) and isinstance(result.info["seed"], int)
    for solver in ("batched_factored_gd", "batched_als"):
        result = _run(solver, backend, 0, max_iter=400, tol=1e-6)
        assert isinstance(result.converged, np.ndarray) and result.converged.dtype == bool
        assert result.converged.shape == (2,)
        assert isinstance(result.stop_reason, list) and all(isinstance(s, str) for s in result.stop_reason)
        n_iter = result.info["n_iter"]
        assert isinstance(n_iter, np.ndarray) and n_iter.dtype == np.int64 and n_iter.shape == (2,)
        # A problem's history holds a number for each iteration it ran, NaN after it stopped.
        np.testing.assert_array_equal(n_iter, np.sum(~np.isnan(result.history["loss"]), axis=0))
        assert result.n_iter == n_iter.max()


def test_gradient_batched_n_iter_matches_single_solves(backend):
    Ms, rows, cols, vals, offsets = two_problems()
    batched = batched_factored_gd(*put_all(backend, rows, cols, vals, offsets), Ms[0].shape, 2, step=0.05,
                                  max_iter=3000, tol=1e-6, seed=4)
    for b in range(2):
        s = slice(offsets[b], offsets[b + 1])
        single = factored_gd(EntrySampling(*put_all(backend, rows[s], cols[s]), Ms[0].shape),
                             backend.put(vals[s]), 2, step=0.05, max_iter=3000, tol=1e-6, seed=4 + b)
        assert abs(int(batched.info["n_iter"][b]) - single.n_iter) <= 1  # summation order may shift a stop
        assert batched.stop_reason[b] == single.stop_reason


# ----------------------------------------------------------------------------- the shared checks
@pytest.mark.parametrize("check, value, error, match", [
    (_checks.positive_int, 0, ValueError, "n must be >= 1, got 0"),
    (_checks.positive_int, 2.0, TypeError, "n must be an int, got float 2.0"),
    (_checks.positive_int, True, TypeError, "n must be an int, got bool"),
    (_checks.nonnegative_int, -1, ValueError, "n must be >= 0, got -1"),
    (_checks.nonnegative_float, float("nan"), ValueError, "n must be a finite number >= 0"),
    (_checks.nonnegative_float, "1", TypeError, "n must be a number, got str"),
    (_checks.positive_float, 0.0, ValueError, "n must be a finite number > 0"),
    (_checks.shape_2d, (3,), ValueError, r"n must be a pair \(n1, n2\)"),
    (_checks.shape_2d, "ab", ValueError, r"n must be a pair \(n1, n2\)"),
])
def test_shared_checks_name_the_argument(check, value, error, match):
    with pytest.raises(error, match="^f: " + match):
        check("f", "n", value)


def test_shared_checks_normalize():
    assert _checks.shape_2d("f", "shape", np.array([3, 4])) == (3, 4)
    assert type(_checks.positive_int("f", "n", np.int32(3))) is int
    assert _checks.nonnegative_float("f", "t", np.inf, finite=False) == np.inf
    assert _checks.seed("f", None) is None and _checks.seed("f", np.uint64(2**64 - 1)) == 2**64 - 1
    drawn = {_checks.draw_seed() for _ in range(8)}
    assert len(drawn) == 8 and all(0 <= s < 2**63 for s in drawn)


def test_run_fingerprint_is_the_hash_of_the_data_bytes(backend):
    """The checkpoint fingerprint hashes each array's bytes in place (device arrays in chunks)
    yet equals the digest of copies that checkpoints of earlier versions stored, for any layout,
    and a fingerprint inside a fingerprint counts as its hex string."""
    import hashlib

    from lowrank_hpc.recover._driver import Fingerprint, fingerprint

    rng = np.random.default_rng(3)
    parts = ("als", rng.standard_normal((7, 5)).astype(np.float32), np.arange(12, dtype=np.int32)[::2],
             np.asfortranarray(rng.standard_normal((4, 3))), 5, 0.25)
    expected = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            array = np.ascontiguousarray(part)
            expected.update(str((array.dtype.str, array.shape)).encode())
            expected.update(array.tobytes())
        else:
            expected.update(repr(part).encode())
    moved = tuple(backend.put(p) if isinstance(p, np.ndarray) else p for p in parts)
    old = Fingerprint.CHUNK_BYTES
    try:
        Fingerprint.CHUNK_BYTES = 8  # several chunks per device array
        digest = fingerprint(*moved)
        assert str(digest) == expected.hexdigest() and digest == expected.hexdigest()
    finally:
        Fingerprint.CHUNK_BYTES = old
    outer = hashlib.sha256(repr(expected.hexdigest()).encode()).hexdigest()
    assert str(fingerprint(digest)) == outer


@pytest.mark.parametrize("seed, error", [("a", TypeError), (None, TypeError), (-1, ValueError), (2**64, ValueError)])
def test_dataset_split_names_a_bad_seed(seed, error):
    # numpy's "SeedSequence expects int" named nothing; None gave another split at every call.
    from lowrank_hpc import datasets
    with pytest.raises(error, match=r"split: seed must be an integer >= 0( \(below 2\*\*64\))?, got"):
        datasets.split("movielens_sample", seed=seed)
    assert datasets.split("movielens_sample", seed=2**64 - 1)[0].nnz == 1201
