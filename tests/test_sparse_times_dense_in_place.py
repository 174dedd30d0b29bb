"""sparse_times_dense's in-place path on the CPU (shuffled entries of narrow rank into a small
result, on one thread: cpu::coo_times_dense_in_place): the sorted path's numbers bit for bit at
every rank it takes, scipy's within rounding, the same errors in the same order, and the cases
it leaves to the sort (sorted entries, wide rows, large results, many threads, batches)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

import lowrank_hpc as lr
from lowrank_hpc import _backend

pytestmark = pytest.mark.skipif(not hasattr(_backend.cpu_module(), "coo_times_dense_in_place"),
                                reason="this CPU module has no in-place product")


@pytest.fixture(autouse=True)
def _few_threads():
    """The in-place path runs on machines of at most 4 OpenMP threads (in_place_product_pays):
    two here, whatever the machine, so the tests reach it (a test may lift the limit inside)."""
    with threadpool_limits(limits=2, user_api="openmp"):
        yield


@pytest.fixture
def in_place_calls(monkeypatch):
    """The in-place kernel's calls, each (r, whether it computed)."""
    module, calls = _backend.cpu_module(), []
    kernel = module.coo_times_dense_in_place

    def counted(keys, others, vals, B, out, bad):
        done = kernel(keys, others, vals, B, out, bad)
        calls.append((B.shape[1], done))
        return done

    monkeypatch.setattr(module, "coo_times_dense_in_place", counted)
    return calls


def _problem(rng, m, n, nnz, r, dtype, index_dtype):
    rows, cols = rng.integers(0, m, nnz).astype(index_dtype), rng.integers(0, n, nnz).astype(index_dtype)
    rows[:3], cols[:3] = m - 1, 0  # a repeated position; rows m//2.. left empty below
    rows[rows == m // 2] = m - 1
    return rows, cols, rng.standard_normal(nnz).astype(dtype)


def _declined(*args):
    return False


def _sorted_path(monkeypatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(_backend.cpu_module(), "coo_times_dense_in_place", _declined)
        return lr.ops.sparse_times_dense(*args, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("transpose", [False, True])
def test_equals_the_sorted_path_bit_for_bit(monkeypatch, in_place_calls, dtype, index_dtype, transpose):
    rng = np.random.default_rng(7)
    m, n, nnz = 301, 257, 20_000
    for r in range(1, 64 // np.dtype(dtype).itemsize + 1):  # every rank of rows up to 64 bytes
        rows, cols, vals = _problem(rng, m, n, nnz, r, dtype, index_dtype)
        n_out, n_in = (n, m) if transpose else (m, n)
        B = rng.standard_normal((n_in, r)).astype(dtype)
        in_place_calls.clear()
        got = lr.ops.sparse_times_dense(rows, cols, vals, B, n_out, transpose=transpose)
        assert in_place_calls == [(r, True)]
        expected = _sorted_path(monkeypatch, rows, cols, vals, B, n_out, transpose=transpose)
        assert got.dtype == dtype and got.shape == (n_out, r)
        np.testing.assert_array_equal(got, expected)
        S = sp.coo_matrix((vals.astype(np.float64), (rows, cols)), shape=(m, n)).tocsr()
        reference = (S.T if transpose else S) @ B.astype(np.float64)
        # within the rounding of the longest sum (row m - 1 takes row m // 2's entries too)
        scale = abs(S.T if transpose else S) @ np.abs(B.astype(np.float64))
        terms = np.bincount(cols if transpose else rows).max()
        assert np.all(np.abs(got - reference) <= terms * np.finfo(dtype).eps * scale)
        if not transpose:
            assert not got[m // 2].any()  # a row with no entries is zeros


def test_errors_name_the_first_bad_key_before_any_bad_other_index(in_place_calls):
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 50, 9000), rng.integers(0, 40, 9000)
    vals, B = rng.standard_normal(9000), rng.standard_normal((40, 3))
    cols[10], rows[20] = 40, -1  # an earlier bad column, a later bad row: the row is named (as the sort does)
    with pytest.raises(IndexError, match=r"sparse_times_dense: rows\[20\] = -1 is out of range \[0, 50\)"):
        lr.ops.sparse_times_dense(rows, cols, vals, B, 50)
    rows[20] = 3
    cols[30] = -5
    with pytest.raises(IndexError, match=r"sparse_times_dense: cols\[10\] = 40 is out of range \[0, 40\)"):
        lr.ops.sparse_times_dense(rows, cols, vals, B, 50)
    cols[30] = 1
    rows[5] = 50  # transposed: cols are the keys (bound 40), rows the other index (bound 50)
    with pytest.raises(IndexError, match=r"sparse_times_dense: cols\[10\] = 40 is out of range \[0, 40\)"):
        lr.ops.sparse_times_dense(rows, cols, vals, rng.standard_normal((50, 3)), 40, transpose=True)
    cols[10] = 0
    with pytest.raises(IndexError, match=r"sparse_times_dense: rows\[5\] = 50 is out of range \[0, 50\)"):
        lr.ops.sparse_times_dense(rows, cols, vals, rng.standard_normal((50, 3)), 40, transpose=True)
    assert all(done for _, done in in_place_calls) and len(in_place_calls) == 4


def test_the_cases_left_to_the_sort(monkeypatch, in_place_calls):
    rng = np.random.default_rng(2)
    m, n, nnz = 400, 300, 10_000
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    vals = rng.standard_normal(nnz).astype(np.float32)
    B8, B16, B17 = (rng.standard_normal((n, r)).astype(np.float32) for r in (8, 16, 17))
    order = np.argsort(rows, kind="stable")  # each row's entries keep their order: the same sums
    lr.ops.sparse_times_dense(rows[order], cols[order], vals[order], B8, m)  # sorted: the kernel declines
    assert in_place_calls == [(8, False)]
    in_place_calls.clear()
    lr.ops.sparse_times_dense(rows, cols, vals, B17, m)  # 68-byte rows
    lr.ops.sparse_times_dense(rows, cols, vals.astype(np.float16), B8.astype(np.float16), m)  # 16-bit storage
    lr.ops.sparse_times_dense(rows, cols, vals, np.stack([B8, B8]), m, offsets=[0, nnz // 2, nnz])  # a batch
    lr.ops.sparse_times_dense(rows, cols, vals, B16, (4 << 20) // 64 + 1)  # a result above 4 MiB
    with threadpool_limits(limits=5, user_api="openmp"):  # more OpenMP threads than the rule allows
        assert _backend.cpu_module().max_threads() == 5
        lr.ops.sparse_times_dense(rows, cols, vals, B8, m)
    assert in_place_calls == []
    module = _backend.cpu_module()
    assert module.in_place_product_pays(m, 16, 4) and module.in_place_product_pays((4 << 20) // 64, 16, 4)
    assert not module.in_place_product_pays(m, 17, 4) and not module.in_place_product_pays((4 << 20) // 64 + 1, 16, 4)
    assert not module.in_place_product_pays(2**62, 1, 8) and not module.in_place_product_pays(m, 9, 8)
    got = lr.ops.sparse_times_dense(rows, cols, vals, B8, m)
    assert in_place_calls == [(8, True)]
    np.testing.assert_array_equal(got, lr.ops.sparse_times_dense(rows[order], cols[order], vals[order], B8, m))


def test_a_product_that_overflows_is_reported(in_place_calls):
    """The in-place result goes through the same finite check as the sorted path's (a NaN in the
    data is refused before any kernel runs, unchanged)."""
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 20, 500), rng.integers(0, 20, 500)
    vals, B = rng.standard_normal(500).astype(np.float32), rng.standard_normal((20, 4)).astype(np.float32)
    vals[7] = 3e38
    with pytest.raises(FloatingPointError, match="overflowed to inf"):
        lr.ops.sparse_times_dense(rows, cols, vals, B * 10, 20)
    assert in_place_calls == [(4, True)]


@pytest.mark.parametrize("transpose", [False, True])
def test_a_shuffled_pattern_takes_it_too_with_the_same_numbers(monkeypatch, in_place_calls, transpose):
    """SparsePattern.times_dense and solver_product (a solver's loop) on shuffled entries: the
    in-place product on the caller's order, equal to the pattern's CSR product bit for bit."""
    rng = np.random.default_rng(4)
    m, n, nnz, r = 300, 200, 12_000, 4  # float64: rows of 32 bytes
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    vals = rng.standard_normal(nnz)
    pattern = lr.ops.SparsePattern(rows, cols, (m, n))
    B = rng.standard_normal((m if transpose else n, r))
    got = pattern.times_dense(vals, B, transpose=transpose)
    call = lr._arrays.resolve("test", B=B)
    out = np.full((n if transpose else m, r), np.nan)
    assert pattern.solver_product(call, vals, B, transpose=transpose, out=out) is out
    assert in_place_calls == [(r, True), (r, True)]
    with monkeypatch.context() as patch:
        patch.setattr(_backend.cpu_module(), "coo_times_dense_in_place", _declined)
        expected = pattern.times_dense(vals, B, transpose=transpose)
        np.testing.assert_array_equal(pattern.solver_product(call, vals, B, transpose=transpose), expected)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(out, expected)
    assert len(in_place_calls) == 2
    order = np.argsort(cols if transpose else rows, kind="stable")  # already in order: the CSR product
    sorted_pattern = lr.ops.SparsePattern(rows[order], cols[order], (m, n))
    np.testing.assert_array_equal(sorted_pattern.times_dense(vals[order], B, transpose=transpose), expected)
    assert len(in_place_calls) == 2


@pytest.mark.parametrize("transpose", [False, True])
def test_the_jax_handler_gives_the_sorted_paths_numbers(monkeypatch, transpose):
    """lowrank_hpc.jax's CPU handler (which takes the in-place product for these shapes) gives
    the sorted path's numbers bit for bit for shuffled entries of rank 1-16 (the sort forced in
    ops here); its errors are tests/test_jax_ffi.py's, whose shuffled indices take it too on
    machines of at most 4 OpenMP threads. Both paths give these numbers by design: a check against
    regressions of the handler's branch, not a proof that it ran."""
    jax = pytest.importorskip("jax")
    import lowrank_hpc.jax as lj
    if not lj._FFI:
        pytest.skip("this build has no JAX FFI handlers")
    rng = np.random.default_rng(5)
    m, n, nnz = 90, 70, 5_000
    rows, cols = rng.integers(0, m, nnz).astype(np.int32), rng.integers(0, n, nnz).astype(np.int32)
    vals = rng.standard_normal(nnz).astype(np.float32)
    n_out, n_in = (n, m) if transpose else (m, n)
    for r in (1, 3, 8, 16):
        B = rng.standard_normal((n_in, r)).astype(np.float32)
        got = jax.jit(lambda v, b: lj.sparse_times_dense(rows, cols, v, b, n_out, transpose=transpose))(vals, B)
        np.testing.assert_array_equal(np.asarray(got), _sorted_path(monkeypatch, rows, cols, vals, B, n_out,
                                                                    transpose=transpose))
