"""lowrank_hpc.sensing against independent numpy references, on each backend and dtype."""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import RTOL, rel_error
from philox_reference import PINNED_CHECKSUM_FNV1A64, PINNED_DRAWS, PINNED_SEED, PINNED_STREAM, standard_normal
from scipy.sparse.linalg import lsqr

from lowrank_hpc import sensing
from lowrank_hpc.sensing import ColumnSketch, EntrySampling, GaussianSensing, RankOneSensing
from lowrank_hpc._arrays import for_backend as backend_call

SEED = 20261123


def _entry_sampling(shape, m, seed):
    rng = np.random.default_rng(seed)
    return EntrySampling(rng.integers(0, shape[0], m), rng.integers(0, shape[1], m), shape)


# name -> (factory(shape, m, seed), needs a square shape). m is the measurement count (column
# sketches use m // n2 per column).
OPERATORS = {
    "gaussian_cached": (lambda s, m, seed: GaussianSensing(m, s, seed, mode="cached"), False),
    "gaussian_matrix_free": (lambda s, m, seed: GaussianSensing(m, s, seed, mode="matrix_free"), False),
    "gaussian_sym_cached": (lambda s, m, seed: GaussianSensing(m, s, seed, symmetric=True, mode="cached"), True),
    "gaussian_sym_matrix_free": (
        lambda s, m, seed: GaussianSensing(m, s, seed, symmetric=True, mode="matrix_free"), True),
    "rank_one": (lambda s, m, seed: RankOneSensing(m, s, seed), False),
    "rank_one_sym": (lambda s, m, seed: RankOneSensing(m, s, seed, symmetric=True), True),
    "entry_sampling": (_entry_sampling, False),
    "column_sketch": (lambda s, m, seed: ColumnSketch(max(1, m // s[1]), s, seed), False),
    "column_sketch_shared": (lambda s, m, seed: ColumnSketch(max(1, m // s[1]), s, seed, shared=True), False),
}


def make(name, shape=None, m=40, seed=SEED):
    factory, square = OPERATORS[name]
    shape = shape or ((6, 6) if square else (7, 5))
    return factory(shape, m, seed)


@pytest.fixture(params=sorted(OPERATORS))
def name(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def _restore_memory_budget():
    before = sensing.get_memory_budget()
    yield
    sensing.set_memory_budget(before)


def _data(rng, dtype, *shape):
    return rng.standard_normal(shape).astype(dtype)


def _inner(a, b) -> float:
    return float(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64)))


def _fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# ----------------------------------------------------------------------------- operator identities
def test_adjoint_identity(backend, dtype, name, rng):
    op = make(name)
    X = _data(rng, dtype, *op.shape)
    y = _data(rng, dtype, op.num_measurements)
    Ax = backend.get(op.forward(backend.put(X)))
    Aty = backend.get(op.adjoint(backend.put(y)))
    assert Ax.shape == (op.num_measurements,) and Ax.dtype == dtype
    assert Aty.shape == op.shape and Aty.dtype == dtype
    scale = np.linalg.norm(Ax.astype(np.float64)) * np.linalg.norm(y.astype(np.float64))
    assert abs(_inner(Ax, y) - _inner(X, Aty)) <= RTOL[dtype] * scale


def test_forward_factored_equals_forward_of_product(backend, dtype, name, rng):
    op = make(name)
    n1, n2 = op.shape
    U, V = _data(rng, dtype, n1, 3), _data(rng, dtype, n2, 3)
    got = backend.get(op.forward_factored(backend.put(U), backend.put(V)))
    expected = backend.get(op.forward(backend.put((U.astype(np.float64) @ V.T.astype(np.float64)).astype(dtype))))
    assert got.shape == (op.num_measurements,) and got.dtype == dtype
    assert rel_error(got, expected) < 10 * RTOL[dtype]
    if n1 == n2:
        got_sym = backend.get(op.forward_factored(backend.put(U)))
        expected_sym = backend.get(op.forward(backend.put((U.astype(np.float64) @ U.T).astype(dtype))))
        assert rel_error(got_sym, expected_sym) < 10 * RTOL[dtype]


def test_to_dense_times_vec_equals_forward(dtype, name, rng):
    op = make(name)
    X = _data(rng, dtype, *op.shape)
    dense = op.to_dense(dtype)
    assert dense.shape == (op.num_measurements, op.shape[0] * op.shape[1]) and dense.dtype == dtype
    assert rel_error(dense.astype(np.float64) @ X.ravel().astype(np.float64), op.forward(X)) < RTOL[dtype]
    y = _data(rng, dtype, op.num_measurements)
    assert rel_error(dense.T.astype(np.float64) @ y.astype(np.float64), op.adjoint(y).ravel()) < RTOL[dtype]


def test_batch_equals_items(backend, dtype, name, rng):
    op = make(name)
    X = _data(rng, dtype, 3, *op.shape)
    y = _data(rng, dtype, 3, op.num_measurements)
    Ax = backend.get(op.forward(backend.put(X)))
    Aty = backend.get(op.adjoint(backend.put(y)))
    assert Ax.shape == (3, op.num_measurements) and Aty.shape == (3, *op.shape)
    for b in range(3):
        assert rel_error(Ax[b], backend.get(op.forward(backend.put(X[b])))) < RTOL[dtype]
        assert rel_error(Aty[b], backend.get(op.adjoint(backend.put(y[b])))) < RTOL[dtype]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (13, 11)])
@pytest.mark.parametrize("kind", ["gaussian_cached", "gaussian_matrix_free", "rank_one", "entry_sampling",
                                  "column_sketch", "column_sketch_shared"])
def test_odd_sizes(kind, shape, rng):
    op = make(kind, shape=shape, m=17)
    X = rng.standard_normal(shape)
    y = rng.standard_normal(op.num_measurements)
    np.testing.assert_allclose(op.to_dense() @ X.ravel(), op.forward(X), rtol=1e-12, atol=1e-12)
    assert abs(_inner(op.forward(X), y) - _inner(X, op.adjoint(y))) <= 1e-12 * np.linalg.norm(X) * np.linalg.norm(
        op.to_dense().T @ y)


# ----------------------------------------------------------------------------- Gaussian generator
@pytest.mark.parametrize("symmetric", [False, True], ids=["general", "symmetric"])
def test_gaussian_modes_agree_and_entries_are_bit_identical(backend, dtype, symmetric, rng):
    shape = (6, 6) if symmetric else (5, 8)
    cached = GaussianSensing(23, shape, SEED, symmetric=symmetric, mode="cached")
    free = GaussianSensing(23, shape, SEED, symmetric=symmetric, mode="matrix_free")
    X = _data(rng, dtype, *shape)
    y = _data(rng, dtype, 23)
    for method, data in (("forward", X), ("adjoint", y)):
        from_free = backend.get(getattr(free, method)(backend.put(data)))
        assert rel_error(from_free, backend.get(getattr(cached, method)(backend.put(data)))) < RTOL[dtype]
    # The matrix-free adjoint of unit vectors returns the regenerated A_i exactly (a sum with one term).
    unit = np.eye(23, dtype=dtype)
    regenerated = backend.get(free.adjoint(backend.put(unit))).reshape(23, -1)
    stored = backend.get(cached.adjoint(backend.put(unit))).reshape(23, -1)
    dense = cached.to_dense(dtype)
    assert np.array_equal(regenerated.view(np.uint8), dense.view(np.uint8))
    assert np.array_equal(stored.view(np.uint8), dense.view(np.uint8))


def test_gaussian_entries_match_numpy_reference():
    m, shape, seed = 9, (4, 5), 2**64 - 3
    reference = np.stack([standard_normal(seed, i, np.arange(20)) for i in range(m)]) / math.sqrt(m)
    np.testing.assert_allclose(GaussianSensing(m, shape, seed).to_dense(), reference, rtol=1e-14, atol=0)
    sym = np.stack([standard_normal(seed, i, np.arange(16)) for i in range(m)]).reshape(m, 4, 4) / math.sqrt(m)
    np.testing.assert_allclose(GaussianSensing(m, (4, 4), seed, symmetric=True).to_dense().reshape(m, 4, 4),
                               (sym + sym.transpose(0, 2, 1)) / 2, rtol=1e-14, atol=1e-16)


def test_pinned_draws_and_checksum_are_bit_exact(backend, dtype):
    # Rank-one stream 3 holds a_3 (indices 0..n1-1) then b_3 (n1..n1+n2-1) unscaled: the raw generator.
    op = RankOneSensing(PINNED_STREAM + 1, (32768, 32768), PINNED_SEED)
    a, b = op.factors(backend_call("test", backend.name), np.dtype(dtype))
    draws = np.concatenate([backend.get(a)[PINNED_STREAM], backend.get(b)[PINNED_STREAM]])
    assert np.array_equal(draws[:8], PINNED_DRAWS.astype(dtype))
    if dtype == np.float64:
        assert _fnv1a64(draws.astype("<f8").tobytes()) == PINNED_CHECKSUM_FNV1A64


@pytest.mark.gpu
@pytest.mark.parametrize("symmetric", [False, True], ids=["general", "symmetric"])
def test_gpu_generated_entries_equal_cpu_bit_for_bit(dtype, symmetric):
    cpu, gpu = backend_call("test", "cpu"), backend_call("test", "cuda")
    op = GaussianSensing(31, (9, 9), 2**63 + 11, symmetric=symmetric, mode="cached")
    on_cpu = op._matrix(cpu, np.dtype(dtype))
    on_gpu = op._matrix(gpu, np.dtype(dtype)).get()
    assert np.array_equal(on_cpu.view(np.uint8), on_gpu.view(np.uint8))


@pytest.mark.parametrize("symmetric", [False, True], ids=["general", "symmetric"])
def test_gaussian_entry_statistics(symmetric):
    m, n = 200, 24
    A = GaussianSensing(m, (n, n), 7, symmetric=symmetric).to_dense().reshape(m, n, n)
    off_diagonal = A[:, ~np.eye(n, dtype=bool)]
    diagonal = A[:, np.eye(n, dtype=bool)]
    assert abs(off_diagonal.mean()) < 5 / math.sqrt(off_diagonal.size * m)
    # symmetrizing halves the variance off the diagonal and keeps it on the diagonal
    assert off_diagonal.var() * m == pytest.approx(0.5 if symmetric else 1.0, rel=0.05)
    assert diagonal.var() * m == pytest.approx(1.0, rel=0.2)


def test_rank_one_and_sketch_statistics():
    a, b = RankOneSensing(300, (40, 50), 3).factors(backend_call("test", "cpu"), np.dtype(np.float64))
    assert a.var() == pytest.approx(1.0, rel=0.05) and b.var() == pytest.approx(1.0, rel=0.05)
    assert abs(np.corrcoef(a[:, 0], b[:, 0])[0, 1]) < 0.25
    A = ColumnSketch(30, (40, 20), 3).to_dense()
    assert A[A != 0].var() * 30 == pytest.approx(1.0, rel=0.05)


# ----------------------------------------------------------------------------- operator specifics
def test_rank_one_forward_matches_definition(rng):
    op = RankOneSensing(12, (4, 6), 5)
    X = rng.standard_normal((4, 6))
    a = np.stack([standard_normal(5, i, np.arange(4)) for i in range(12)])
    b = np.stack([standard_normal(5, i, np.arange(4, 10)) for i in range(12)])
    np.testing.assert_allclose(op.forward(X), np.einsum("ij,jk,ik->i", a, X, b) / math.sqrt(12), rtol=1e-12)
    sym = RankOneSensing(12, (4, 4), 5, symmetric=True)
    Y = rng.standard_normal((4, 4))
    np.testing.assert_allclose(sym.forward(Y), np.einsum("ij,jk,ik->i", a, Y, a) / math.sqrt(12), rtol=1e-12)


def test_column_sketch_layout_and_sharing(rng):
    L, shape, seed = 3, (5, 4), 9
    X = rng.standard_normal(shape)
    A = [np.stack([standard_normal(seed, j, l * 5 + np.arange(5)) for l in range(L)]) / math.sqrt(L) for j in range(4)]
    y = ColumnSketch(L, shape, seed).forward(X)
    np.testing.assert_allclose(y, np.concatenate([A[j] @ X[:, j] for j in range(4)]), rtol=1e-12)
    shared = ColumnSketch(L, shape, seed, shared=True)
    np.testing.assert_allclose(shared.forward(X), (A[0] @ X).T.ravel(), rtol=1e-12)
    blocks = shared.to_dense().reshape(4, L, 5, 4)
    assert all(np.array_equal(blocks[j, :, :, j], blocks[0, :, :, 0]) for j in range(4))
    assert not np.array_equal(A[1], A[0])


def test_entry_sampling_matches_numpy(backend, dtype, rng):
    rows = np.array([0, 2, 2, 4, 0, 2], dtype=np.int32)
    cols = np.array([1, 3, 3, 0, 1, 2], dtype=np.int32)  # (2, 3) and (0, 1) repeat
    op = EntrySampling(backend.put(rows), backend.put(cols), (5, 4))
    X = _data(rng, dtype, 5, 4)
    y = _data(rng, dtype, 6)
    assert np.array_equal(backend.get(op.forward(backend.put(X))), X[rows, cols])
    expected = np.zeros((5, 4))
    np.add.at(expected, (rows, cols), y.astype(np.float64))
    np.testing.assert_allclose(backend.get(op.adjoint(backend.put(y))), expected, rtol=RTOL[dtype])
    U, V = _data(rng, dtype, 5, 2), _data(rng, dtype, 4, 2)
    np.testing.assert_allclose(backend.get(op.forward_factored(backend.put(U), backend.put(V))),
                               (U.astype(np.float64) @ V.T)[rows, cols], rtol=10 * RTOL[dtype])


def test_entry_sampling_keeps_its_own_indices(rng):
    rows, cols = np.array([0, 1]), np.array([1, 0])
    op = EntrySampling(rows, cols, (2, 2))
    rows[0] = 1
    X = rng.standard_normal((2, 2))
    assert np.array_equal(op.forward(X), [X[0, 1], X[1, 0]])


@pytest.mark.parametrize("kind", ["gaussian_cached", "gaussian_matrix_free", "rank_one", "entry_sampling",
                                  "column_sketch"])
def test_lsqr_solves_overdetermined_system(kind, rng):
    shape = (4, 3)
    op = make(kind, shape=shape, m=60)
    assert op.num_measurements > 12
    X = rng.standard_normal(shape)
    linear = op.as_linear_operator()
    assert linear.shape == (op.num_measurements, 12) and linear.dtype == np.float64
    solution = lsqr(linear, op.forward(X), atol=1e-15, btol=1e-15, iter_lim=500)[0]
    np.testing.assert_allclose(solution.reshape(shape), X, atol=1e-8)
    block = rng.standard_normal((12, 2))
    np.testing.assert_allclose(linear @ block, op.to_dense() @ block, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(linear.H @ linear @ block[:, 0], op.to_dense().T @ op.to_dense() @ block[:, 0],
                               rtol=1e-12, atol=1e-12)


def test_as_linear_operator_in_float32(rng):
    op = GaussianSensing(30, (3, 3), 1)
    linear = op.as_linear_operator(np.float32)
    assert linear.dtype == np.float32
    x = rng.standard_normal(9)
    assert (linear @ x).dtype == np.float32
    np.testing.assert_allclose(linear @ x, op.to_dense() @ x, rtol=1e-5)


# ----------------------------------------------------------------------------- memory budget
def test_auto_mode_follows_the_memory_budget():
    op = GaussianSensing(100, (10, 10), 1)  # 80 kB in float64, 40 kB in float32
    assert op.uses_cache(np.float64)
    sensing.set_memory_budget(50_000)
    assert sensing.get_memory_budget() == 50_000
    assert not op.uses_cache(np.float64) and op.uses_cache(np.float32)
    own = GaussianSensing(100, (10, 10), 1, memory_budget=10**6)
    assert own.memory_budget == 10**6 and own.uses_cache(np.float64)
    assert GaussianSensing(100, (10, 10), 1, mode="cached").uses_cache(np.float64)
    assert not GaussianSensing(100, (10, 10), 1, mode="matrix_free", memory_budget=10**9).uses_cache(np.float32)


def test_to_dense_refuses_above_the_budget():
    op = GaussianSensing(100, (10, 10), 1, memory_budget=1000)
    with pytest.raises(ValueError, match="memory budget"):
        op.to_dense()
    sensing.set_memory_budget(79_999)
    with pytest.raises(ValueError, match="memory budget"):
        RankOneSensing(100, (10, 10), 1).to_dense()
    with pytest.raises(TypeError, match="RankOneSensing.to_dense: dtype must be float32 or float64, got 'junk'"):
        RankOneSensing(4, (3, 3), 1).to_dense("junk")  # was numpy's "data type 'junk' not understood"


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("build, error, match", [
    (lambda: GaussianSensing(0, (3, 3), 1), ValueError, "m must be >= 1"),
    (lambda: GaussianSensing(2.0, (3, 3), 1), TypeError, "m must be an int"),
    (lambda: GaussianSensing(True, (3, 3), 1), TypeError, "m must be an int"),
    (lambda: GaussianSensing(5, (0, 3), 1), ValueError, r"shape\[0\]"),
    (lambda: GaussianSensing(5, (3,), 1), ValueError, "shape must be a pair"),
    (lambda: GaussianSensing(5, 3, 1), ValueError, "shape must be a pair"),
    (lambda: GaussianSensing(5, (3, 2.5), 1), TypeError, r"shape\[1\]"),
    (lambda: GaussianSensing(5, (3, 3), -1), ValueError, "seed"),
    (lambda: GaussianSensing(5, (3, 3), 2**64), ValueError, "seed"),
    (lambda: GaussianSensing(5, (3, 3), 1.0), TypeError, "seed"),
    (lambda: GaussianSensing(5, (3, 4), 1, symmetric=True), ValueError, "square"),
    (lambda: GaussianSensing(5, (3, 3), 1, symmetric="yes"), TypeError, "symmetric"),
    (lambda: GaussianSensing(5, (3, 3), 1, mode="fast"), ValueError, "mode"),
    (lambda: GaussianSensing(5, (3, 3), 1, memory_budget=0), ValueError, "memory_budget"),
    (lambda: GaussianSensing(5, (3, 3), 1, memory_budget=1.5), TypeError, "memory_budget"),
    (lambda: RankOneSensing(0, (3, 3), 1), ValueError, "m must be >= 1"),
    (lambda: RankOneSensing(5, (3, 4), 1, symmetric=True), ValueError, "square"),
    (lambda: RankOneSensing(5, (3, 3), -2), ValueError, "seed"),
    (lambda: RankOneSensing(5, (-1, 3), 1), ValueError, r"shape\[0\]"),
    (lambda: ColumnSketch(0, (3, 3), 1), ValueError, "m_per_column"),
    (lambda: ColumnSketch(2, (3, 3), 1, shared=1), TypeError, "shared"),
    (lambda: ColumnSketch(2, (3, 3), "1"), TypeError, "seed"),
    (lambda: ColumnSketch(2, (3, 0), 1), ValueError, r"shape\[1\]"),
    (lambda: EntrySampling(np.array([0.0]), np.array([0]), (2, 2)), TypeError, "rows must hold integers"),
    (lambda: EntrySampling(np.array([0]), np.array([True]), (2, 2)), TypeError, "cols must hold integers"),
    (lambda: EntrySampling(np.array([0, 2]), np.array([0, 1]), (2, 2)), IndexError, r"rows\[1\] = 2"),
    (lambda: EntrySampling(np.array([0, 1]), np.array([-1, 1]), (2, 2)), IndexError, r"cols\[0\] = -1"),
    (lambda: EntrySampling(np.array([0, 1]), np.array([0]), (2, 2)), ValueError, "cols has length 1"),
    (lambda: EntrySampling(np.array([], dtype=np.int64), np.array([], dtype=np.int64), (2, 2)), ValueError, "empty"),
    (lambda: EntrySampling(np.zeros((2, 2), dtype=np.int64), np.zeros(2, dtype=np.int64), (2, 2)), ValueError,
     "rows must be 1-D"),
    (lambda: EntrySampling(None, [0], (2, 2)), TypeError, "rows is None; pass an array"),
    (lambda: EntrySampling(np.array([0]), np.array([0]), (2, 0)), ValueError, r"shape\[1\]"),
])
def test_constructors_reject_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_forward_rejects_bad_x(name):
    op = make(name)
    n1, n2 = op.shape
    with pytest.raises(ValueError, match=rf"X has shape \({n1 + 1}, {n2}\), expected \({n1}, {n2}\)"):
        op.forward(np.zeros((n1 + 1, n2)))
    with pytest.raises(ValueError, match="X must have 2 or 3 dimensions"):
        op.forward(np.zeros(n1 * n2))
    with pytest.raises(TypeError, match="X is complex; Complex data not supported"):
        op.forward(np.zeros((n1, n2), dtype=np.complex64))
    with pytest.raises(TypeError, match="X must be an array"):
        op.forward("X")
    bad = np.zeros((n1, n2))
    bad[-1, -1] = np.nan
    with pytest.raises(ValueError, match="X contains 1 NaN/inf"):
        op.forward(bad)


def test_adjoint_rejects_bad_y(name):
    op = make(name)
    m = op.num_measurements
    with pytest.raises(ValueError, match=rf"y has shape \({m + 1},\), expected \({m},\)"):
        op.adjoint(np.zeros(m + 1))
    with pytest.raises(ValueError, match="y must have 1 or 2 dimensions"):
        op.adjoint(np.zeros((1, 1, m)))
    with pytest.raises(TypeError, match="y is complex; Complex data not supported"):
        op.adjoint(np.zeros(m, dtype=np.complex128))
    with pytest.raises(ValueError, match="y contains 1 NaN/inf"):
        op.adjoint(np.concatenate([np.zeros(m - 1), [np.inf]]))


def test_results_that_overflow_float32_raise(backend, name):
    """Finite float32 inputs whose measurements or adjoint products pass 3.4e38: a
    FloatingPointError naming the method, never inf/NaN returned (the cached Gaussian gave
    [nan, nan, 6.2e37, inf, 1.1e38] for X = 3e38, entry sampling infs with no warning)."""
    op = make(name)
    n1, n2 = op.shape
    U, V = (backend.put(np.full((n, 2), 1e20, np.float32)) for n in (n1, n2))
    with pytest.raises(FloatingPointError, match=rf"{type(op).__name__}.forward_factored: \d+ entries of the result overflowed"):
        op.forward_factored(U, None if n1 == n2 and name.endswith("sym") else V)
    y, B = backend.put(np.full(op.num_measurements, 3e38, np.float32)), backend.put(np.full((n2, 2), 3e38, np.float32))
    with pytest.raises(FloatingPointError, match=rf"{type(op).__name__}.adjoint_times: \d+ entries"):
        op.adjoint_times(y, B)
    if name != "entry_sampling":  # a gather and a scatter of distinct positions cannot overflow
        with pytest.raises(FloatingPointError, match=rf"{type(op).__name__}.forward: \d+ entries"):
            op.forward(backend.put(np.full((n1, n2), 3e38, np.float32)))
        with pytest.raises(FloatingPointError, match=rf"{type(op).__name__}.adjoint: \d+ entries"):
            op.adjoint(y)
    # Just inside the range the same calls return finite values.
    assert np.isfinite(backend.get(op.forward_factored(*(backend.put(np.full((n, 2), 1e17, np.float32)) for n in (n1, n2))))).all()


def test_forward_factored_rejects_bad_factors(name):
    op = make(name)
    n1, n2 = op.shape
    with pytest.raises(ValueError, match=rf"U has shape \({n1 + 1}, 2\) and V has shape \({n2}, 2\)"):
        op.forward_factored(np.zeros((n1 + 1, 2)), np.zeros((n2, 2)))
    with pytest.raises(ValueError, match=rf"V has shape \({n2}, 3\)"):
        op.forward_factored(np.zeros((n1, 2)), np.zeros((n2, 3)))
    with pytest.raises(TypeError, match="V is float32 but U is float64"):
        op.forward_factored(np.zeros((n1, 2)), np.zeros((n2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="U must have 2 or 3 dimensions"):
        op.forward_factored(np.zeros(n1), np.zeros((n2, 2)))
    with pytest.raises(ValueError, match=rf"U has shape \(1, {n1}, 2\) and V has shape \({n2}, 2\)"):
        op.forward_factored(np.zeros((1, n1, 2)), np.zeros((n2, 2)))
    with pytest.raises(ValueError, match="V contains"):
        op.forward_factored(np.zeros((n1, 2)), np.full((n2, 2), np.nan))
    if n1 != n2:
        with pytest.raises(ValueError, match="V=None means U U\\^T, which needs a square shape"):
            op.forward_factored(np.zeros((n1, 2)))


def test_dense_views_reject_bad_dtype(name):
    op = make(name)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        op.to_dense(np.int32)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        op.as_linear_operator(np.complex128)


@pytest.mark.parametrize("value, error", [(0, ValueError), (-5, ValueError), (1.5, TypeError), (True, TypeError)])
def test_set_memory_budget_rejects_bad_values(value, error):
    with pytest.raises(error, match="nbytes"):
        sensing.set_memory_budget(value)


def test_generation_on_an_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="backend must be 'cpu' or 'cuda'"):
        backend_call("test", "tpu")


def test_pickle_keeps_the_definition_not_the_generated_matrices(name):
    """An operator is its seed (and shape, indices): pickling one that has run forward, adjoint and
    the solvers' products gives the bytes of a fresh one, not its cached matrices or EntrySampling's
    sorted patterns, and the copy rebuilds them with bit-identical results."""
    import pickle

    op = make(name)
    fresh = len(pickle.dumps(make(name)))
    rng = np.random.default_rng(3)
    n1, n2 = op.shape
    X, y, B = _data(rng, np.float64, n1, n2), _data(rng, np.float64, op.num_measurements), _data(rng, np.float64, n2, 2)
    used = [op.forward(X), op.adjoint(y), op.forward(X.astype(np.float32)), op.adjoint_times(y, B)]
    cached = set(op._cache)
    copy = pickle.loads(pickle.dumps(op))
    assert len(pickle.dumps(op)) == fresh
    assert set(op._cache) == cached  # pickling leaves the original's cache alone
    for before, after in zip(used, [copy.forward(X), copy.adjoint(y), copy.forward(X.astype(np.float32)),
                                    copy.adjoint_times(y, B)]):
        assert after.dtype == before.dtype
        np.testing.assert_array_equal(after, before)
    assert repr(copy) == repr(op)


def test_pickle_of_a_used_gaussian_operator_stays_small():
    """GaussianSensing(2000, (100, 80)) pickled to 128 MB after one forward (its cached matrix)."""
    import pickle

    op = GaussianSensing(2000, (100, 80), seed=1)
    X = np.random.default_rng(0).standard_normal((100, 80))
    y = op.forward(X)
    assert op.uses_cache(np.float64) and len(pickle.dumps(op)) < 1000
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(op)).forward(X), y)
