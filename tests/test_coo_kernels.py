"""sampled_product, sparse_times_dense and SparsePattern against dense numpy/scipy references."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import _backend, _cpu_isa
from conftest import RTOL, cpu_threads, rel_error, skip_unless_a_lower_level
import reference

# (m, n, r, nnz): odd sizes, rank 1, a rank above 64, and a problem with many repeats.
SIZES = [(1, 1, 1, 1), (7, 13, 3, 50), (31, 2, 1, 40), (71, 47, 67, 900), (97, 89, 32, 3000)]


def _factors(rng, dtype, m, n, r, batch=None):
    lead = () if batch is None else (batch,)
    return (rng.standard_normal(lead + (m, r)).astype(dtype), rng.standard_normal(lead + (n, r)).astype(dtype))


def _coords(rng, m, n, nnz, index_dtype=np.int64):
    return rng.integers(0, m, nnz).astype(index_dtype), rng.integers(0, n, nnz).astype(index_dtype)


def _batched_coords(rng, m, n, sizes, index_dtype=np.int64):
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rows, cols = _coords(rng, m, n, int(offsets[-1]), index_dtype)
    return rows, cols, offsets


@pytest.mark.parametrize("m,n,r,nnz", SIZES)
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_sampled_product_matches_gather_einsum(backend, dtype, rng, m, n, r, nnz, index_dtype):
    U, V = _factors(rng, dtype, m, n, r)
    rows, cols = _coords(rng, m, n, nnz, index_dtype)
    got = lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))
    assert type(got) is type(backend.put(U)) and got.dtype == dtype and got.shape == (nnz,)
    assert rel_error(backend.get(got), reference.sampled_product(U, V, rows, cols)) < RTOL[dtype]


@pytest.mark.parametrize("r", [5, 7, 9, 15, 17, 20, 23, 31, 33, 40, 63, 65, 100, 129, 300])
def test_sampled_product_at_run_time_ranks_matches_float64(backend, dtype, rng, r):
    """Ranks without a compiled width take the run-time dot (on the host 128- and 64-byte blocks of
    partial sums, the remainder zero-padded into a last one; on the GPU 16-byte chunks per lane
    where r allows, several per lane above 32 floats): every block count and remainder against
    float64 einsum, per entry."""
    U, V = _factors(rng, dtype, 23, 19, r)
    rows, cols = _coords(rng, 23, 19, 200)
    got = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols))))
    exact = np.einsum("kr,kr->k", U[rows].astype(np.float64), V[cols].astype(np.float64))
    scale = np.einsum("kr,kr->k", np.abs(U[rows]).astype(np.float64), np.abs(V[cols]).astype(np.float64))
    assert np.all(np.abs(got - exact) <= 4 * r * np.finfo(dtype).eps * scale)


@pytest.mark.parametrize("r", [1, 2, 3, 4, 8, 16, 32])
def test_sampled_product_at_compiled_ranks_is_the_halving_tree(backend, dtype, rng, r):
    """Compiled ranks sum the r products by a fixed tree (the upper half of the live lanes added
    onto the lower, ceil(live / 2) apart): the host's vector forms (host_dot, or at a level too
    narrow for it the run-time rank's form, the same tree for a power of two) and the shared
    functor's array form must all give exactly these sums."""
    U, V = _factors(rng, dtype, 23, 19, r)
    rows, cols = _coords(rng, 23, 19, 300)
    got = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols))))
    p = U[rows] * V[cols]  # the products, rounded in dtype
    live = r
    while live > 1:
        half, top = live // 2, (live + 1) // 2
        p[:, :half] = p[:, :half] + p[:, top:top + half]
        live = top
    np.testing.assert_array_equal(got, p[:, 0])


@pytest.mark.parametrize("r", [4, 32, 64])
def test_sampled_product_of_misaligned_factor_views(backend, dtype, rng, r):
    """Factors that are C-contiguous views starting one element into their buffer: the GPU's
    16-byte loads need 16-byte aligned rows, so these take the one-coordinate-a-lane path and
    must give the same sums as aligned copies (the halving tree at r = 4 and 32)."""
    m, n = 23, 19
    U, V = _factors(rng, dtype, m, n, r)
    rows, cols = _coords(rng, m, n, 300)
    buffers = [backend.xp.zeros(X.size + 1, dtype=dtype) for X in (U, V)]
    views = []
    for buffer, X in zip(buffers, (U, V)):
        buffer[1:] = backend.put(X.ravel())
        views.append(buffer[1:].reshape(X.shape))
    misaligned = backend.get(lr.ops.sampled_product(views[0], views[1], backend.put(rows), backend.put(cols)))
    aligned = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols))))
    exact = np.einsum("kr,kr->k", U[rows].astype(np.float64), V[cols].astype(np.float64))
    scale = np.einsum("kr,kr->k", np.abs(U[rows]).astype(np.float64), np.abs(V[cols]).astype(np.float64))
    assert np.all(np.abs(misaligned - exact) <= 4 * r * np.finfo(dtype).eps * scale)
    if r <= 32:
        np.testing.assert_array_equal(misaligned, aligned)


@pytest.mark.parametrize("r", [5, 6, 10, 11, 12, 15, 17, 20, 21, 24, 33, 40, 48, 63, 64, 100])
def test_sampled_product_at_run_time_ranks_is_the_host_order(dtype, rng, r):
    """Run-time ranks on the host: the products summed lane by lane into 128 bytes of partial
    sums (then one 64-byte block more into the lower half, then the rest zero-padded to 64
    bytes into the lower half), the lanes folded by the halving tree; the host's vector form
    (masked loads for the rest where the level has them) must give exactly these sums. The
    common ranks the host compiles for dots (5, 6, 10, 12, 20, 24, 64, 100: cpu_backend.hpp's
    dispatch_dot_rank) keep this order: the same bits as their run-time neighbours' form."""
    U, V = _factors(rng, dtype, 23, 19, r)
    rows, cols = _coords(rng, 23, 19, 300)
    got = lr.ops.sampled_product(U, V, rows, cols)
    p = U[rows] * V[cols]  # the products, rounded in dtype
    block = 64 // np.dtype(dtype).itemsize
    part = np.zeros((p.shape[0], 2 * block), dtype)
    c = 0
    while c + 2 * block <= r:
        part = part + p[:, c:c + 2 * block]
        c += 2 * block
    if c + block <= r:
        part[:, :block] = part[:, :block] + p[:, c:c + block]
        c += block
    if c < r:
        rest = np.zeros((p.shape[0], block), dtype)  # +0 in the padding, as the masked loads give
        rest[:, :r - c] = p[:, c:r]
        part[:, :block] = part[:, :block] + rest
    live = 2 * block
    while live > 1:
        live //= 2
        part[:, :live] = part[:, :live] + part[:, live:2 * live]
    np.testing.assert_array_equal(got, part[:, 0])


@pytest.mark.parametrize("r", [3, 16, 20, 21])
def test_squared_residuals_square_the_sampled_products_residuals(backend, dtype, rng, r):
    """The solvers' fused loss terms (the distributed shards' loss): (vals - product)^2 in float64
    of the residual rounded in the factors' dtype, the product's bits those of sampled_product
    at compiled (3, 16, 20) and run-time (21) ranks, over two problems."""
    from lowrank_hpc._arrays import resolve
    from lowrank_hpc.ops.sampled_product import squared_residuals

    U, V = _factors(rng, dtype, 11, 9, r, batch=2)
    rows, cols, offsets = _batched_coords(rng, 11, 9, [40, 25])
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    put = [backend.put(np.ascontiguousarray(x)) for x in (U, V, rows, cols, vals, offsets)]
    terms, _ = squared_residuals(resolve("test", U=put[0]), *put)
    product = backend.get(lr.ops.sampled_product(put[0], put[1], put[2], put[3], offsets=put[5]))
    residual = (vals - product).astype(np.float64)
    np.testing.assert_array_equal(backend.get(terms), residual * residual)


@pytest.mark.parametrize("level", ["baseline", "avx2"])
def test_the_host_order_holds_at_the_lower_levels(level):
    """The host-order, compiled-rank tree and row-sorted input-order tests again at each lower
    level this processor runs (16- and 32-byte vectors: the rest spans several, some empty; avx2
    loads it by mask, the baseline number by number; r = 16 and 32 take the run-time form where
    host_dot does not fit); this process runs only the widest level (a process forced lower
    leaves the levels above it to the unforced run)."""
    skip_unless_a_lower_level(level)
    env = {**os.environ, _cpu_isa.ENVIRONMENT_VARIABLE: level}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                           "-k", "run_time_ranks_is_the_host_order or row_sorted_product_is_the_input_order_sum"
                           " or (compiled_ranks_is_the_halving_tree and cpu)"],
                          env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # 16 ranks x 2 dtypes; 13 x 2 x 2 index dtypes; 7 compiled ranks x 2 dtypes
    assert "98 passed" in done.stdout, done.stdout[-3000:]


def test_sampled_product_batched_equals_each_problem(backend, dtype, rng):
    U, V = _factors(rng, dtype, 11, 9, 5, batch=4)
    rows, cols, offsets = _batched_coords(rng, 11, 9, [30, 0, 1, 45])
    got = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)), offsets=backend.put(offsets)))
    assert rel_error(got, reference.sampled_product(U, V, rows, cols, offsets)) < RTOL[dtype]
    for b in range(4):
        s = slice(offsets[b], offsets[b + 1])
        if s.stop > s.start:
            single = lr.ops.sampled_product(*map(backend.put, (U[b], V[b], rows[s], cols[s])))
            np.testing.assert_array_equal(got[s], backend.get(single))


def test_lowrank_product_matches_numpy(backend, dtype, rng):
    for batch in (None, 3):
        U, V = _factors(rng, dtype, 17, 5, 4, batch=batch)
        got = lr.ops.lowrank_product(backend.put(U), backend.put(V))
        assert got.shape == U.shape[:-1] + (5,) and got.dtype == dtype
        assert rel_error(backend.get(got), reference.lowrank_product(U, V)) < RTOL[dtype]


@pytest.mark.parametrize("m,n,r,nnz", SIZES)
@pytest.mark.parametrize("transpose", [False, True])
def test_sparse_times_dense_matches_scipy(backend, dtype, rng, m, n, r, nnz, transpose):
    rows, cols = _coords(rng, m, n, nnz)
    vals = rng.standard_normal(nnz).astype(dtype)
    n_out, n_in = (n, m) if transpose else (m, n)
    B = rng.standard_normal((n_in, r)).astype(dtype)
    got = lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, vals, B)), n_out, transpose=transpose)
    assert got.shape == (n_out, r) and got.dtype == dtype
    expected = reference.sparse_times_dense(rows, cols, vals, B, n_out, transpose)
    assert rel_error(backend.get(got), expected) < RTOL[dtype]


@pytest.mark.parametrize("r", [100, 300])
@pytest.mark.parametrize("transpose", [False, True])
def test_sparse_times_dense_of_a_b_beyond_the_cache_is_each_columns_product(backend, dtype, rng, r, transpose):
    """From 16 MiB of B the CPU product runs a block of whole tiles of columns at a time, the
    block's columns of B copied together: each column is still the product with that column
    alone (every coordinate sums its row's entries in order), bit for bit, at the blocks' edges
    (64 float32 or 32 float64 columns), in the remainder and in both problems of a batch."""
    n_in = (16 << 20) // (2 * r * np.dtype(dtype).itemsize) + 1  # two problems: B just over 16 MiB
    n_out = 40
    out_index, in_index, offsets = _batched_coords(rng, n_out, n_in, [3000, 2000])
    out_index[:300] = 7  # one heavy output row
    rows, cols = (in_index, out_index) if transpose else (out_index, in_index)
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    B = rng.standard_normal((2, n_in, r)).astype(dtype)

    def product(dense):
        return backend.get(lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, vals, dense)), n_out,
                                                     transpose=transpose, offsets=backend.put(offsets)))

    got = product(B)
    for c in sorted({0, 31, 32, 63, 64, 65, 95, 96, 127, 128, r - 13, r - 1} & set(range(r))):
        np.testing.assert_array_equal(got[:, :, c:c + 1], product(np.ascontiguousarray(B[:, :, c:c + 1])),
                                      err_msg=f"column {c}")
    expected = reference.sparse_times_dense(rows, cols, vals, B, n_out, transpose, offsets)
    assert rel_error(got, expected) < RTOL[dtype]


def test_sparse_times_dense_is_the_adjoint_of_sampled_product(backend, dtype, rng):
    """<S(U V^T), y> = <U, (S^* y) V> = <V, (S^* y)^T U>: a completion gradient is two calls."""
    U, V = _factors(rng, dtype, 40, 30, 6)
    rows, cols = _coords(rng, 40, 30, 500)
    y = rng.standard_normal(500).astype(dtype)
    lhs = float(np.dot(backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))), y))
    grad_u = backend.get(lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, y, V)), 40))
    grad_v = backend.get(lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, y, U)), 30, transpose=True))
    assert abs(lhs - float(np.sum(grad_u * U))) < 50 * RTOL[dtype] * abs(lhs) + 1e-6
    assert abs(lhs - float(np.sum(grad_v * V))) < 50 * RTOL[dtype] * abs(lhs) + 1e-6


def test_sparse_times_dense_batched(backend, dtype, rng):
    rows, cols, offsets = _batched_coords(rng, 8, 6, [20, 0, 33])
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    for transpose, n_out, n_in in ((False, 8, 6), (True, 6, 8)):
        B = rng.standard_normal((3, n_in, 4)).astype(dtype)
        got = lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, vals, B)), n_out, transpose=transpose,
                                        offsets=backend.put(offsets))
        expected = reference.sparse_times_dense(rows, cols, vals, B, n_out, transpose, offsets)
        assert got.shape == (3, n_out, 4)
        assert rel_error(backend.get(got), expected) < RTOL[dtype]
        np.testing.assert_array_equal(backend.get(got)[1], 0)  # the empty problem


def test_sparse_pattern_reuse(backend, dtype, rng):
    rows, cols = _coords(rng, 25, 19, 400)
    pattern = lr.ops.SparsePattern(backend.put(rows), backend.put(cols), (25, 19))
    for _ in range(2):
        vals = rng.standard_normal(400).astype(dtype)
        B, Bt = rng.standard_normal((19, 3)).astype(dtype), rng.standard_normal((25, 3)).astype(dtype)
        got = backend.get(pattern.times_dense(backend.put(vals), backend.put(B)))
        got_t = backend.get(pattern.times_dense(backend.put(vals), backend.put(Bt), transpose=True))
        assert rel_error(got, reference.sparse_times_dense(rows, cols, vals, B, 25)) < RTOL[dtype]
        assert rel_error(got_t, reference.sparse_times_dense(rows, cols, vals, Bt, 19, True)) < RTOL[dtype]


def test_cpu_sparse_times_dense_is_reproducible_across_thread_counts(rng):
    """Each output row sums its entries in input order, whatever the number of threads."""

    rows, cols = _coords(rng, 300, 200, 20000)
    vals = rng.standard_normal(20000).astype(np.float32)
    B = rng.standard_normal((200, 16)).astype(np.float32)
    results = []
    for threads in (1, 2, 3):
        with cpu_threads(threads):
            results.append(lr.ops.sparse_times_dense(rows, cols, vals, B, 300))
    # Serial sum in input order, row by row, in float32: what every thread count must reproduce.
    expected = np.zeros((300, 16), dtype=np.float32)
    for k in range(20000):
        expected[rows[k]] += vals[k] * B[cols[k]]
    for got in results:
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------- bad inputs
def _valid(rng):
    U, V = _factors(rng, np.float64, 5, 4, 2)
    rows, cols = _coords(rng, 5, 4, 10)
    return U, V, rows, cols


def test_sampled_product_rejects_bad_indices(backend, rng):
    U, V, rows, cols = _valid(rng)
    bad = rows.copy()
    bad[7] = 5
    with pytest.raises(IndexError, match=r"rows\[7\] = 5 is out of range \[0, 5\)"):
        lr.ops.sampled_product(*map(backend.put, (U, V, bad, cols)))
    bad = cols.copy()
    bad[3] = -1
    with pytest.raises(IndexError, match=r"cols\[3\] = -1"):
        lr.ops.sampled_product(*map(backend.put, (U, V, rows, bad)))


@pytest.mark.parametrize("case,error,match", [
    ("float_dtype", TypeError, "U is complex; Complex data not supported"),
    ("mixed_float", TypeError, "V is float32 but U is float64"),
    ("index_dtype", TypeError, "rows must hold integers"),
    ("bool_index", TypeError, "cols must hold integers"),
    ("rank_mismatch", ValueError, r"rank mismatch: U has shape \(5, 2\).*V has shape \(4, 3\)"),
    ("ndim", ValueError, "U must have 2 or 3 dimensions"),
    ("nan", ValueError, "V contains 1 NaN/inf"),
    ("inf", ValueError, "U contains 1 NaN/inf"),
    ("length", ValueError, "cols has length 9, expected 10"),
    ("empty_factor", ValueError, r"U is empty \(shape \(0, 2\)\)"),
    ("none", TypeError, "rows is None; pass an array"),
    ("object", TypeError, "cols must be an array"),
    ("batched_without_offsets", ValueError, "need offsets"),
    ("offsets_range", ValueError, "offsets must start at 0 and end at the number of entries 10"),
])
def test_sampled_product_bad_inputs(rng, case, error, match):
    U, V, rows, cols = _valid(rng)
    offsets = None
    if case == "float_dtype":
        U = U.astype(np.complex128)
    elif case == "mixed_float":
        V = V.astype(np.float32)
    elif case == "index_dtype":
        rows = rows.astype(np.float64)
    elif case == "bool_index":
        cols = cols > 1
    elif case == "rank_mismatch":
        V = np.ones((4, 3))
    elif case == "ndim":
        U = U.reshape(-1)
    elif case == "nan":
        V[1, 1] = np.nan
    elif case == "inf":
        U[0, 0] = np.inf
    elif case == "length":
        cols = cols[:9]
    elif case == "empty_factor":
        U = np.ones((0, 2))
    elif case == "none":
        rows = None
    elif case == "object":
        cols = object()
    elif case == "batched_without_offsets":
        U, V = np.stack([U, U]), np.stack([V, V])
    elif case == "offsets_range":
        U, V = np.stack([U, U]), np.stack([V, V])
        offsets = np.array([0, 4, 9])
    with pytest.raises(error, match=match):
        lr.ops.sampled_product(U, V, rows, cols, offsets=offsets)


def test_factors_wider_than_both_dimensions_are_valid(backend, rng):
    """An over-parameterized width r > max(m, n) is a legitimate factorization, not an error."""
    U, V = _factors(rng, np.float64, 5, 4, 6)
    rows, cols = _coords(rng, 5, 4, 10)
    got = lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))
    assert rel_error(backend.get(got), reference.sampled_product(U, V, rows, cols)) < RTOL[np.float64]


def test_sparse_times_dense_bad_inputs(backend, rng):
    rows, cols = _coords(rng, 5, 4, 10)
    vals, B = rng.standard_normal(10), rng.standard_normal((4, 3))
    put = backend.put
    rows_, cols_, vals_, B_ = put(rows), put(cols), put(vals), put(B)
    with pytest.raises(IndexError, match=r"cols\[\d+\] = 3 is out of range \[0, 3\)"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(B[:3]), 5)
    with pytest.raises(IndexError, match=r"rows\[\d+\] = \d+ is out of range \[0, 2\)"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, B_, 2)
    # Transposed, cols index the output and rows the operand.
    with pytest.raises(IndexError, match=r"cols\[\d+\] = 3 is out of range \[0, 3\)"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(rng.standard_normal((5, 3))), 3, transpose=True)
    with pytest.raises(IndexError, match=r"rows\[\d+\] = \d+ is out of range \[0, 2\)"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(rng.standard_normal((2, 3))), 4, transpose=True)
    with pytest.raises(ValueError, match="vals has length 9 but rows has 10"):
        lr.ops.sparse_times_dense(rows_, cols_, put(vals[:9]), B_, 5)
    with pytest.raises(ValueError, match="n_rows must be >= 1"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, B_, 0)
    with pytest.raises(TypeError, match="B is float32 but vals is float64"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(B.astype(np.float32)), 5)
    for bad in (np.nan, np.inf, -np.inf):
        bad_vals = vals.copy()
        bad_vals[2] = bad
        with pytest.raises(ValueError, match="vals contains 1 NaN/inf"):
            lr.ops.sparse_times_dense(rows_, cols_, put(bad_vals), B_, 5)
        bad_B = B.copy()
        bad_B[1, 2] = bad
        with pytest.raises(ValueError, match="B contains 1 NaN/inf"):
            lr.ops.sparse_times_dense(rows_, cols_, vals_, put(bad_B), 5)
    with pytest.raises(ValueError, match="offsets must start at 0 and end at the number of entries 10"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(np.stack([B, B])), 5, offsets=put(np.array([0, 3, 11])))
    with pytest.raises(ValueError, match="offsets must start at 0 and end at the number of entries 10"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(np.stack([B, B])), 5, offsets=put(np.array([2, 3, 10])))
    with pytest.raises(ValueError, match="offsets must be non-decreasing"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(np.stack([B, B, B])), 5,
                                  offsets=put(np.array([0, 6, 4, 10])))
    with pytest.raises(ValueError, match="B is batched"):
        lr.ops.sparse_times_dense(rows_, cols_, vals_, put(np.stack([B, B])), 5)
    pattern = lr.ops.SparsePattern(rows_, cols_, (5, 4))
    with pytest.raises(ValueError, match=r"B has shape \(5, 3\), expected \(4, r\)"):
        pattern.times_dense(vals_, put(np.ones((5, 3))))
    with pytest.raises(IndexError, match=r"rows\[\d+\] = \d+ is out of range \[0, 3\)"):
        small = lr.ops.SparsePattern(rows_, cols_, (3, 4))  # the CPU checks the indices here,
        small.times_dense(vals_, B_)  # the GPU as its product reads them


def test_lowrank_product_bad_inputs(rng):
    U, V, _, _ = _valid(rng)
    with pytest.raises(ValueError, match=r"both must be batched \(3-D\) or neither"):
        lr.ops.lowrank_product(np.stack([U, U]), V)
    with pytest.raises(ValueError, match="batch sizes differ"):
        lr.ops.lowrank_product(np.stack([U, U]), np.stack([V, V, V]))
    with pytest.raises(TypeError, match="U must be an array"):
        lr.ops.lowrank_product("U", V)


def test_csr_order_without_the_permutation_sorts_the_same(backend, dtype, rng):
    """keep_perm=False (ALS keeps no permutation: 8 bytes an entry) moves the other index and the
    values into the same stable CSR order, and returns no permutation."""
    from lowrank_hpc._arrays import resolve
    from lowrank_hpc.ops.sparse_times_dense import csr_order

    rows, cols = _coords(rng, 40, 30, 2000, np.int32)
    vals = rng.standard_normal(2000).astype(dtype)
    rows_, cols_, vals_ = map(backend.put, (rows, cols, vals))
    call = resolve("test", rows=rows_, cols=cols_, vals=vals_)
    offsets = backend.put(np.array([0, 2000], dtype=np.int64))
    kept = csr_order(call, rows_, cols_, vals_, offsets, 40, "rows")
    dropped = csr_order(call, rows_, cols_, vals_, offsets, 40, "rows", keep_perm=False)
    assert dropped[1] is None and kept[1] is not None
    order = np.argsort(rows, kind="stable")
    np.testing.assert_array_equal(backend.get(kept[1]), order)
    for got in (kept, dropped):
        np.testing.assert_array_equal(backend.get(got[0]), np.r_[0, np.cumsum(np.bincount(rows, minlength=40))])
        np.testing.assert_array_equal(backend.get(got[2]), cols[order])
        np.testing.assert_array_equal(backend.get(got[3]), vals[order])


@pytest.mark.gpu
@pytest.mark.parametrize("r", [1, 8, 32])
def test_gpu_kernels_on_two_million_shuffled_entries(rng, r):
    """The GPU's first benchmark (H200, 2026-12-04) hit an illegal address right after the first
    shuffled-order SDDMM at nnz 1e7, in one of the SpMM calls: every product on a large
    shuffled pattern against scipy on the host (the sizes small tests never reach: a radix sort
    of several passes, millions of gathered values)."""
    import cupy
    import scipy.sparse as sp

    m, n, nnz = 20_000, 15_000, 2_000_000
    rows, cols = _coords(rng, m, n, nnz, np.int32)
    vals = rng.standard_normal(nnz).astype(np.float32)
    U, V = _factors(rng, np.float32, m, n, r)
    S = sp.coo_matrix((vals.astype(np.float64), (rows, cols)), shape=(m, n)).tocsr()
    d_rows, d_cols, d_vals, d_U, d_V = map(cupy.asarray, (rows, cols, vals, U, V))
    sddmm = lr.ops.sampled_product(d_U, d_V, d_rows, d_cols)
    np.testing.assert_allclose(sddmm.get(), reference.sampled_product(U, V, rows, cols), rtol=1e-4, atol=1e-4)
    pattern = lr.ops.SparsePattern(d_rows, d_cols, (m, n))
    for got in (pattern.times_dense(d_vals, d_V), lr.ops.sparse_times_dense(d_rows, d_cols, d_vals, d_V, m)):
        cupy.cuda.Device().synchronize()
        assert rel_error(got.get(), S @ V.astype(np.float64)) < 1e-5
    for got in (pattern.times_dense(d_vals, d_U, transpose=True),
                lr.ops.sparse_times_dense(d_rows, d_cols, d_vals, d_U, n, transpose=True)):
        assert rel_error(got.get(), S.T @ U.astype(np.float64)) < 1e-5


@pytest.mark.parametrize("case", ["sorted", "empty ends", "block edges", "gaps", "late descent", "one entry",
                                  "bad first", "bad last"])
def test_csr_order_of_sorted_keys(backend, rng, case):
    """Keys already in order take a path of their own on the CPU (a branch-free check per block,
    then each row's start read off the boundaries, stretches of one key skipped): indptr as
    counting gives it, no permutation; keys out of order anywhere, even after many sorted
    blocks, fall back to the sort."""
    from lowrank_hpc._arrays import resolve
    from lowrank_hpc.ops.sparse_times_dense import csr_order

    n_key, nnz = 5000, 200_000  # several 4,096-key blocks, and past the threads' threshold
    keys = np.sort(rng.integers(0, n_key, nnz))
    if case == "empty ends":
        keys = np.sort(rng.integers(100, n_key - 100, nnz))
    elif case == "block edges":  # rows change exactly at the blocks' first and last keys
        keys = np.repeat(np.arange(nnz // 4096 + 1), 4096)[:nnz] * 3
        n_key = int(keys[-1]) + 5
    elif case == "gaps":  # rows of 1-500 keys (16-key stretches skipped whole) with empty rows between
        present = np.sort(rng.choice(n_key, 800, replace=False))
        keys = np.repeat(present, rng.integers(1, 500, present.size))
        nnz = keys.size
    elif case == "late descent":
        keys = np.sort(rng.integers(0, n_key - 1, nnz))
        keys[-10] = keys[-9] + 1  # one descent, 9 keys from the end
    elif case == "one entry":
        keys, nnz = np.array([n_key // 2]), 1
    elif case in ("bad first", "bad last"):
        keys[0 if case == "bad first" else -1] = -1 if case == "bad first" else n_key
    keys = keys.astype(np.int32)
    others = rng.integers(0, 7, nnz).astype(np.int32)
    vals = rng.standard_normal(nnz)
    put = backend.put
    call = resolve("test", rows=put(keys), cols=put(others), vals=put(vals))
    offsets = put(np.array([0, nnz], dtype=np.int64))
    if case.startswith("bad"):
        with pytest.raises(IndexError, match="rows"):
            csr_order(call, put(keys), put(others), put(vals), offsets, n_key, "rows")
        return
    indptr, perm, others_sorted, vals_sorted = csr_order(call, put(keys), put(others), put(vals), offsets, n_key,
                                                         "rows")
    order = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(backend.get(indptr), np.r_[0, np.cumsum(np.bincount(keys, minlength=n_key))])
    np.testing.assert_array_equal(backend.get(others_sorted), others[order])
    np.testing.assert_array_equal(backend.get(vals_sorted), vals[order])
    if backend.name == "cpu":
        assert (perm is None) == (case != "late descent")


@pytest.mark.parametrize("case", ["permutation kept", "no permutation", "no values", "batch of 3", "int64 indices",
                                  "gaps", "one heavy row"])
def test_csr_order_of_many_shuffled_entries_in_many_rows(case):
    """From 4,096 rows and 12 MiB of sorted output on, the CPU's counting sort first groups the
    entries into at most 128 runs of consecutive rows, then spreads each run over its rows (the
    direct scatter kept a write stream per row and waited on memory). Same stable order as the
    direct scatter, numpy's stable argsort by (problem, key), on 1, 2 and 3 threads. A run of
    more than 2^20 entries (one row holding most of them) keeps the direct scatter."""
    from lowrank_hpc._arrays import resolve
    from lowrank_hpc.ops.sparse_times_dense import csr_order

    rng = np.random.default_rng(5)
    n_key, nnz, index_dtype, keep_perm = 9_999, 700_000, np.int32, case != "no permutation"
    sizes = [nnz]
    if case == "no permutation":
        nnz = sizes[0] = 1_200_000  # others and vals alone: 12 bytes an entry
    elif case == "no values":
        nnz, sizes[0], index_dtype = 900_000, 900_000, np.int64  # perm and others: 16 bytes an entry
    elif case == "batch of 3":
        n_key, sizes = 2_001, [300_000, 0, 400_000]  # 6,003 rows of the flattened problems, one empty
    elif case == "int64 indices":
        index_dtype = np.int64
    elif case == "one heavy row":
        nnz = sizes[0] = 1_600_000  # 70% in one row: a run of more than 2^20 entries
    keys = rng.integers(0, n_key, nnz)
    if case == "gaps":  # rows 0-499 and most others empty: runs with no entry
        keys = rng.choice(np.r_[np.arange(500, 800), np.arange(6000, 6100)], nnz)
    elif case == "one heavy row":
        keys[rng.random(nnz) < 0.7] = 4_321
    keys = keys.astype(index_dtype)
    others = rng.integers(0, 2**31 - 1, nnz).astype(index_dtype)
    vals = None if case == "no values" else rng.standard_normal(nnz)
    offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
    call = resolve("test", rows=keys, cols=others, vals=vals)
    flat = np.repeat(np.arange(len(sizes)), sizes) * n_key + keys
    order = np.argsort(flat, kind="stable")
    for threads in (1, 2, 3):
        with cpu_threads(threads):
            indptr, perm, others_sorted, vals_sorted = csr_order(call, keys, others, vals, offsets, n_key, "rows",
                                                                 keep_perm=keep_perm)
            np.testing.assert_array_equal(indptr, np.r_[0, np.cumsum(np.bincount(flat, minlength=len(sizes) * n_key))])
            np.testing.assert_array_equal(others_sorted, others[order])
            if vals is None:
                assert vals_sorted is None
            else:
                np.testing.assert_array_equal(vals_sorted, vals[order])
            if keep_perm:
                np.testing.assert_array_equal(perm, order)
            else:
                assert perm is None


def test_sparse_times_dense_names_the_first_bad_column_in_input_order(backend, rng):
    """The one-shot product keeps no permutation of its sort, so a bad column is looked up in the
    caller's order: of two bad entries, the earlier one in the input is named, even when the other
    comes first in row order."""
    rows = rng.permutation(np.repeat(np.arange(50), 40))
    cols = rng.integers(0, 30, rows.shape[0])
    early = np.flatnonzero(rows == 49)[0]
    late = np.flatnonzero((rows == 0) & (np.arange(rows.shape[0]) > early))[-1]  # first in row order
    cols[late], cols[early] = 31, 30
    vals, B = rng.standard_normal(rows.shape[0]), rng.standard_normal((30, 3))
    with pytest.raises(IndexError, match=rf"cols\[{early}\] = 30 is out of range \[0, 30\)"):
        lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, vals, B)), 50)


def _row_sorted_problem(rng, dtype, m: int, n: int, r: int):
    """Row-sorted entries: empty first, middle and last rows, a row holding half of them, a
    position repeated within a row; the sequential input-order sum in dtype as the reference."""
    lengths = rng.integers(0, 30, m)
    lengths[[0, 1, m // 2, m - 1]] = 0
    lengths[57] = lengths.sum()
    rows = np.repeat(np.arange(m), lengths)
    cols = rng.integers(0, n, rows.shape[0])
    cols[5:9] = cols[5]
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    B = rng.standard_normal((n, r)).astype(dtype)
    expected = np.zeros((m, r), dtype=dtype)
    np.add.at(expected, rows, vals[:, None] * B[cols])  # in input order, one rounding each
    return rows, cols, vals, B, expected


@pytest.mark.parametrize("r", [1, 3, 8, 16, 17, 20, 32, 40, 63, 70, 100, 116, 300])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_cpu_row_sorted_product_is_the_input_order_sum(dtype, rng, r, index_dtype):
    """Entries already sorted by output row (their row pointers read off without a sort): the
    sequential sum bit for bit with a heavy row, empty rows and a repeated position, on 1 to 3
    threads, and by columns with transpose. The run-time ranks' rests after whole tiles fill one
    to four vectors, the last by mask (17-63, 70, 300 at every level's width); with AVX2 the full
    tiles are eight vectors, then one of four where the rest fills it (float32 100 = 64 + 32 + 4,
    116 = 64 + 32 + 20; float64 63 = 32 + 16 + 15, 116 = 96 + 16 + 4)."""
    rows, cols, vals, B, expected = _row_sorted_problem(rng, dtype, 400, 150, r)
    rows, cols = rows.astype(index_dtype), cols.astype(index_dtype)
    for threads in (1, 2, 3):
        with cpu_threads(threads):
            np.testing.assert_array_equal(lr.ops.sparse_times_dense(rows, cols, vals, B, 400), expected)
            np.testing.assert_array_equal(lr.ops.sparse_times_dense(cols, rows, vals, B, 400, transpose=True),
                                          expected)


def test_cpu_row_sorted_product_names_the_first_bad_column(rng):
    rows, cols, vals, B, _ = _row_sorted_problem(rng, np.float32, 400, 150, 8)
    cols[[9000, 100]] = [150, -1]
    with pytest.raises(IndexError, match=r"cols\[100\] = -1 is out of range \[0, 150\)"):
        lr.ops.sparse_times_dense(rows, cols, vals, B, 400)


@pytest.mark.parametrize("case", ["row past the end", "negative row", "descent at the end", "shuffled"])
def test_cpu_row_order_broken_near_sorted_rows(rng, case):
    """Nearly row-sorted entries whose order or range breaks late: the sort's result, or the row named."""
    rows, cols, vals, B, expected = _row_sorted_problem(rng, np.float64, 400, 150, 5)
    if case == "row past the end":
        rows[-1] = 400
        with pytest.raises(IndexError, match=rf"rows\[{rows.shape[0] - 1}\] = 400 is out of range"):
            lr.ops.sparse_times_dense(rows, cols, vals, B, 400)
        return
    if case == "negative row":
        rows[0] = -3
        with pytest.raises(IndexError, match=r"rows\[0\] = -3 is out of range"):
            lr.ops.sparse_times_dense(rows, cols, vals, B, 400)
        return
    nnz = rows.shape[0]  # "descent at the end": the first entry (row 2) moved after the last (row 398)
    order = np.r_[1:nnz, 0] if case == "descent at the end" else rng.permutation(nnz)
    rows, cols, vals = rows[order], cols[order], vals[order]
    reference = np.zeros_like(expected)
    np.add.at(reference, rows, vals[:, None] * B[cols])
    np.testing.assert_array_equal(lr.ops.sparse_times_dense(rows, cols, vals, B, 400), reference)


@pytest.mark.parametrize("r", [1, 2, 3, 8, 16, 17, 20, 40])
def test_sparse_pattern_sums_each_row_in_input_order(backend, dtype, rng, r):
    """Rows of uneven length (0 to 9 entries) summed bit for bit as a sequential loop in the
    dtype sums them: product, then add, entry by entry, in the entries' order."""
    lengths = rng.integers(0, 10, 37)
    lengths[[4, 5, 6, 7]] = [0, 9, 1, 0]
    rows = np.repeat(np.arange(37), lengths)
    cols = rng.integers(0, 11, rows.shape[0])
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    B = rng.standard_normal((11, r)).astype(dtype)
    expected = np.zeros((37, r), dtype=dtype)
    for k in range(rows.shape[0]):
        expected[rows[k]] = expected[rows[k]] + vals[k] * B[cols[k]]
    pattern = lr.ops.SparsePattern(backend.put(rows), backend.put(cols), (37, 11))
    np.testing.assert_array_equal(backend.get(pattern.times_dense(backend.put(vals), backend.put(B))), expected)
    np.testing.assert_array_equal(
        backend.get(lr.ops.sparse_times_dense(*map(backend.put, (rows, cols, vals, B)), 37)), expected)


@pytest.mark.parametrize("r", [2, 4, 8, 16, 32])
@pytest.mark.parametrize("offset_bytes", [0, 8, 16, 48])
def test_cpu_sparse_times_dense_of_b_off_a_cache_line(dtype, rng, r, offset_bytes):
    """B's rows starting off a cache line (numpy gives 16-byte alignment) are copied onto whole
    lines before the gathers: the sums are the sequential loop's, bit for bit, wherever B starts."""
    lengths = rng.integers(0, 10, 37)
    rows = np.repeat(np.arange(37), lengths)
    cols = rng.integers(0, 11, rows.shape[0])  # about 15 entries a row of B: the copy pays
    vals = rng.standard_normal(rows.shape[0]).astype(dtype)
    values = rng.standard_normal((11, r)).astype(dtype)
    expected = np.zeros((37, r), dtype=dtype)
    for k in range(rows.shape[0]):
        expected[rows[k]] = expected[rows[k]] + vals[k] * values[cols[k]]
    itemsize = np.dtype(dtype).itemsize  # (every offset a whole number of float64s)
    buffer = np.zeros(values.size + 128 // itemsize, dtype=dtype)
    start = (-buffer.ctypes.data % 64 + offset_bytes) // itemsize
    B = buffer[start:start + values.size].reshape(values.shape)
    B[...] = values
    assert B.ctypes.data % 64 == offset_bytes
    pattern = lr.ops.SparsePattern(rows, cols, (37, 11))
    np.testing.assert_array_equal(pattern.times_dense(vals, B), expected)
    np.testing.assert_array_equal(lr.ops.sparse_times_dense(rows, cols, vals, B, 37), expected)
    np.testing.assert_array_equal(B, values)  # the caller's B untouched


@pytest.mark.parametrize("r", [1, 4, 16, 40])
def test_sparse_pattern_ignores_an_index_changed_after_it_was_built(rng, r):
    """The pattern is a snapshot of the caller's sorted columns: one changed later (out of range,
    in the first row or the last) changes no product and is never read outside B."""
    rows = np.repeat(np.arange(12), 5)
    cols = rng.integers(0, 6, rows.shape[0])
    pattern = lr.ops.SparsePattern(rows, cols, (12, 6))
    vals, B = rng.standard_normal(rows.shape[0]), rng.standard_normal((6, r))
    expected = np.zeros((12, r))
    np.add.at(expected, rows, vals[:, None] * B[cols])
    np.testing.assert_allclose(pattern.times_dense(vals, B), expected, rtol=1e-12)
    before = pattern.times_dense(vals, B)
    for position in (2, 57):  # a row of the first group, a row of the last
        cols[position] = 6
        np.testing.assert_array_equal(pattern.times_dense(vals, B), before)


def test_rank_one_sampled_product_is_the_product_of_two_numbers(backend, dtype, rng):
    """Rank 1, past the threading threshold (on the CPU the loop over pre-checked indices,
    vectorised across entries): U[rows] * V[cols] rounded once, bit for bit; a bad index sends
    the call through the checking loop, which names its entry."""
    m, n, nnz = 300, 200, 100_000
    U, V = rng.standard_normal((m, 1)).astype(dtype), rng.standard_normal((n, 1)).astype(dtype)
    rows, cols = rng.integers(0, m, nnz).astype(np.int32), rng.integers(0, n, nnz)
    got = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols))))
    np.testing.assert_array_equal(got, U[rows, 0] * V[cols, 0])
    cols[77_777] = n
    with pytest.raises(IndexError, match=rf"cols\[77777\] = {n} is out of range \[0, {n}\)"):
        lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))
    rows[5] = -1
    with pytest.raises(IndexError, match=r"rows\[5\] = -1 is out of range"):
        lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))


# ------------------------------------------------------------- SparsePattern.sampled_product
def _skewed_coords(rng, m, n, nnz, order):
    """One row holding half the entries, the first two and last three rows empty, repeats allowed;
    row-sorted or shuffled."""
    rows = np.concatenate([np.full(nnz // 2, 2), rng.integers(2, m - 3, nnz - nnz // 2)])
    cols = rng.integers(0, n, nnz)
    keep = np.lexsort((cols, rows)) if order == "sorted" else rng.permutation(nnz)
    return rows[keep], cols[keep]


@pytest.mark.parametrize("order", ["sorted", "random", "random, row order at every rank"])
@pytest.mark.parametrize("r", [1, 2, 3, 4, 5, 8, 16, 17, 20, 32, 33, 64, 100, 129, 300])
def test_sparse_pattern_sampled_product_is_sampled_product(backend, dtype, rng, order, r, monkeypatch):
    """The pattern's product (on the CPU taken in row order, each result written to its entry's
    place; shuffled entries with short factor rows by the coordinate kernel unless the threshold
    is lowered) equals ops.sampled_product bit for bit, and float64 einsum within the rounding of
    an r-term dot, at every compiled width and run-time rank, on a skewed pattern split across
    threads inside its long row."""
    if order.endswith("every rank"):
        monkeypatch.setattr(importlib.import_module("lowrank_hpc.ops.sparse_times_dense"), "ROW_ORDER_MIN_ROW_BYTES", 0)
    m, n, nnz = 97, 61, 6000
    U, V = _factors(rng, dtype, m, n, r)
    rows, cols = _skewed_coords(rng, m, n, nnz, order)
    pattern = lr.ops.SparsePattern(backend.put(rows), backend.put(cols), (m, n))
    got = pattern.sampled_product(backend.put(U), backend.put(V))
    assert type(got) is type(backend.put(U)) and got.dtype == dtype and got.shape == (nnz,)
    got = backend.get(got)
    np.testing.assert_array_equal(got, backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))))
    exact = np.einsum("kr,kr->k", U[rows].astype(np.float64), V[cols].astype(np.float64))
    scale = np.einsum("kr,kr->k", np.abs(U[rows]).astype(np.float64), np.abs(V[cols]).astype(np.float64))
    assert np.all(np.abs(got - exact) <= 4 * r * np.finfo(dtype).eps * scale)


def test_sparse_pattern_sampled_product_batched(backend, dtype, rng):
    U, V = _factors(rng, dtype, 11, 9, 6, batch=4)
    rows, cols, offsets = _batched_coords(rng, 11, 9, [30, 0, 1, 45])
    pattern = lr.ops.SparsePattern(*map(backend.put, (rows, cols)), (11, 9), offsets=backend.put(offsets))
    got = backend.get(pattern.sampled_product(backend.put(U), backend.put(V)))
    assert rel_error(got, reference.sampled_product(U, V, rows, cols, offsets)) < RTOL[dtype]
    expected = lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)), offsets=backend.put(offsets))
    np.testing.assert_array_equal(got, backend.get(expected))
    with pytest.raises(ValueError, match=r"expected \(4, 11, r\) and \(4, 9, r\)"):
        pattern.sampled_product(backend.put(U[0]), backend.put(V[0]))


@pytest.mark.parametrize("order,r", [("sorted", 24), ("random", 64)])
def test_cpu_sparse_pattern_sampled_product_across_thread_counts(rng, order, r):
    """The row-ordered kernel shares the entries out evenly, so thread shares split rows (the
    long one above all): the same values for 1-3 threads as the coordinate kernel."""
    from lowrank_hpc._arrays import resolve

    rows, cols = _skewed_coords(rng, 300, 200, 30000, order)
    U, V = _factors(rng, np.float32, 300, 200, r)
    call = resolve("test", U=U)
    expected = np.empty(30000, dtype=np.float32)  # the coordinate kernel, called directly
    call.module.sampled_product(U[None], V[None], rows, cols, np.array([0, 30000]), expected, call.status(30000))
    pattern = lr.ops.SparsePattern(rows, cols, (300, 200))
    for threads in (1, 2, 3):
        with cpu_threads(threads):
            np.testing.assert_array_equal(pattern.sampled_product(U, V), expected)


def test_sparse_pattern_sampled_product_bad_inputs(backend, rng):
    """A column out of range when the pattern is built; one changed to out of range afterwards
    (row-sorted entries) changes nothing, as the pattern is a snapshot; shapes that do not match
    the pattern, a rank mismatch, NaN."""
    rows = np.array([0, 0, 1, 2, 3, 3, 4])
    cols = np.array([1, 2, 3, 3, 0, 2, 1])
    U, V = _factors(rng, np.float64, 5, 4, 3)
    bad = cols.copy()
    bad[[2, 5]] = [4, 9]
    with pytest.raises(IndexError, match=r"cols\[2\] = 4 is out of range \[0, 4\)"):
        lr.ops.SparsePattern(backend.put(rows), backend.put(bad), (5, 4))
    cols_, rows_ = backend.put(cols.copy()), backend.put(rows)
    pattern = lr.ops.SparsePattern(rows_, cols_, (5, 4))
    cols_[[2, 5]] = backend.put(np.array([4, 9]))
    np.testing.assert_array_equal(backend.get(pattern.sampled_product(backend.put(U), backend.put(V))),
                                  np.einsum("kr,kr->k", U[rows], V[cols]))
    with pytest.raises(ValueError, match=r"U has shape \(5, 3\) and V \(5, 3\), expected \(5, r\) and \(4, r\)"):
        pattern.sampled_product(backend.put(U), backend.put(U))
    with pytest.raises(ValueError, match="rank mismatch"):
        pattern.sampled_product(backend.put(U), backend.put(V[:, :2]))
    with pytest.raises(ValueError, match="NaN"):
        pattern.sampled_product(backend.put(np.full((5, 3), np.nan)), backend.put(V))


@pytest.mark.parametrize("order", ["sorted", "random", "random, row order at every rank"])
@pytest.mark.parametrize("r", [3, 16, 20, 64])
def test_sparse_pattern_solver_residual_is_the_product_minus_y(backend, dtype, rng, order, r, monkeypatch):
    """The solvers' fused residual: z = sampled_product(U, V) - y bit for bit (in the factors'
    dtype), and the float64 sum of its squares, on every path the pattern takes."""
    if order.endswith("every rank"):
        monkeypatch.setattr(importlib.import_module("lowrank_hpc.ops.sparse_times_dense"), "ROW_ORDER_MIN_ROW_BYTES", 0)
    m, n, nnz = 97, 61, 6000
    U, V = _factors(rng, dtype, m, n, r)
    rows, cols = _skewed_coords(rng, m, n, nnz, order)
    y = rng.standard_normal(nnz).astype(dtype)
    pattern = lr.ops.SparsePattern(backend.put(rows), backend.put(cols), (m, n))
    from lowrank_hpc._arrays import resolve

    call = resolve("test", U=backend.put(U))
    z, total = pattern.solver_residual(call, *map(backend.put, (U, V, y)))
    expected = backend.get(lr.ops.sampled_product(*map(backend.put, (U, V, rows, cols)))) - y
    np.testing.assert_array_equal(backend.get(z), expected)
    exact = float(np.sum(expected.astype(np.float64) ** 2))
    assert isinstance(total, float) and abs(total - exact) <= 1e-12 * exact


def test_cpu_solver_residual_sum_is_fixed_for_a_thread_count(rng):
    """Each thread sums its share, the shares are added in thread order: the same bits on every
    run with one thread count (3 threads, run three times), and within rounding across counts."""
    from lowrank_hpc._arrays import resolve

    rows, cols = _skewed_coords(rng, 300, 200, 30000, "sorted")
    U, V = _factors(rng, np.float32, 300, 200, 24)
    y = rng.standard_normal(30000).astype(np.float32)
    pattern = lr.ops.SparsePattern(rows, cols, (300, 200))
    call = resolve("test", U=U)
    sums = {}
    for threads in (1, 2, 3, 3, 3):
        with cpu_threads(threads):
            z, total = pattern.solver_residual(call, U, V, y)
            np.testing.assert_array_equal(z, lr.ops.sampled_product(U, V, rows, cols) - y)
            sums.setdefault(threads, set()).add(total)
    assert len(sums[3]) == 1
    values = [next(iter(s)) for s in sums.values()]
    assert max(values) - min(values) <= 1e-12 * max(values)


@pytest.mark.parametrize("order", ["sorted", "random"])
@pytest.mark.parametrize("residual", [False, True])
def test_cpu_row_ordered_kernel_reports_the_first_bad_column(rng, order, residual):
    """The row-ordered kernel called on CSR arrays with two columns out of range (a pattern
    checks them when built; the kernel still must not read past V): those entries are 0 and
    outside the residual's sum, the first bad one in the given order is reported, the others
    equal the coordinate kernel's, across its chunks of 1,024 entries on one and two threads
    (each thread's squares summed in CSR order, the shares in thread order)."""
    from lowrank_hpc._arrays import resolve
    from lowrank_hpc.ops._csr_order import csr_order

    m, n, nnz, r = 300, 200, 5000, 64
    rows, cols = _skewed_coords(rng, m, n, nnz, order)
    U, V = _factors(rng, np.float32, m, n, r)
    y = rng.standard_normal(nnz).astype(np.float32)
    call = resolve("test", U=U)
    indptr, perm, others, _ = csr_order(call, rows, cols, None, np.array([0, nnz]), m, "rows")
    assert (perm is None) == (order == "sorted")
    others = others.copy()
    at = [1500, 4100]  # CSR positions in two chunks, the later one first in the given order when shuffled
    others[at] = [n, -1]
    given = at if perm is None else [int(perm[j]) for j in at]
    good = np.ones(nnz, bool)
    good[given] = False
    expected = lr.ops.sampled_product(U, V, rows, cols) - (y if residual else 0)
    squares = np.where(good, expected.astype(np.float64) ** 2, 0.0)[np.arange(nnz) if perm is None else perm]
    for threads in (1, 2):
        with cpu_threads(threads):
            out, first_bad, total = np.full(nnz, np.nan, np.float32), call.status(nnz), np.zeros(1)
            call.module.csr_sampled_product(indptr, perm, others, U[None], V[None], out, first_bad,
                                            y if residual else None, total if residual else None)
            assert call.read(first_bad)[0] == min(given)
            np.testing.assert_array_equal(out[good], expected[good])
            np.testing.assert_array_equal(out[~good], 0)
            if residual:  # each thread's share in CSR order, added in thread order: these bits
                shares = [sum(squares[nnz * t // threads:nnz * (t + 1) // threads].tolist(), 0.0)
                          for t in range(threads)]
                assert total[0] == sum(shares, 0.0)


@pytest.mark.parametrize("order", ["sorted", "random"])
@pytest.mark.parametrize("r", [64, 128, 129, 300])
def test_sampled_product_of_long_rows_sorts_first_with_the_same_values(dtype, rng, order, r):
    """From factor rows of 512 bytes the CPU call sorts its entries by row and takes the
    row-ordered kernel: the same values, bit for bit, as the coordinate kernel on the given
    order (called directly), batched too; a bad column is named by its given position."""
    from lowrank_hpc._arrays import resolve

    m, n, nnz = 97, 61, 6000
    U, V = _factors(rng, dtype, m, n, r, batch=2)
    rows, cols = _skewed_coords(rng, m, n, nnz, order)
    offsets = np.array([0, 2500, nnz])
    got = lr.ops.sampled_product(U, V, rows, cols, offsets=offsets)
    call = resolve("test", U=U)
    direct = np.empty(nnz, dtype=dtype)
    call.module.sampled_product(U, V, rows, cols, offsets, direct, call.status(nnz))
    np.testing.assert_array_equal(got, direct)
    assert rel_error(got, reference.sampled_product(U, V, rows, cols, offsets)) < RTOL[dtype]
    bad = cols.copy()
    bad[[4000, 17]] = [n, n + 5]
    with pytest.raises(IndexError, match=rf"cols\[17\] = {n + 5} is out of range \[0, {n}\)"):
        lr.ops.sampled_product(U, V, rows, bad, offsets=offsets)


@pytest.mark.parametrize("dtype, r, m, takes_row_order", [
    (np.float32, 128, 50, True),       # 512-byte rows: sorted at any size
    (np.float32, 64, 8_000, False),    # 256-byte rows in 4 MiB of factors: the given order
    (np.float32, 64, 17_000, True),    # ... in 8.3 MiB: sorted
    (np.float64, 32, 17_000, True),
    (np.float32, 48, 60_000, False),   # 192-byte rows: the given order at any size
    (np.float16, 256, 50, False),      # 16-bit storage: never
])
def test_one_shot_sampled_product_sorts_from_long_rows_or_large_factors(monkeypatch, rng, dtype, r, m,
                                                                        takes_row_order):
    """ops.sampled_product sorts by row from rows of 512 bytes, or of 256 bytes in factors of more
    than 8 MiB (U and V of m rows each here); the value is the coordinate kernel's either way."""
    sampled = importlib.import_module("lowrank_hpc.ops.sampled_product")
    taken = []
    original = sampled._sampled
    monkeypatch.setattr(sampled, "_sampled", lambda *a: taken.append(a[-1]) or original(*a))
    U, V = (rng.standard_normal((m, r)).astype(dtype) for _ in range(2))
    rows, cols = rng.integers(0, m, 500), rng.integers(0, m, 500)
    got = lr.ops.sampled_product(U, V, rows, cols)
    assert taken == [takes_row_order]
    expected = np.einsum("kc,kc->k", U[rows].astype(np.float64), V[cols].astype(np.float64))
    assert rel_error(got.astype(np.float64), expected) < (1e-2 if dtype == np.float16 else RTOL[dtype])


@pytest.mark.parametrize("r, m, n, nnz, index_dtype", [
    (128, 300, 250, 70_000, np.int64),
    (200, 300, 250, 70_000, np.int32),
    (128, 5_000, 400, 1_600_000, np.int64),  # rows and bytes enough for the sort's runs of rows (not taken here)
])
def test_sampled_product_in_row_order_gathers_back_on_any_thread_count(rng, r, m, n, nnz, index_dtype):
    """The one-shot row-ordered product of shuffled entries (its sort writes each entry's CSR
    place; products formed by rows, then gathered back to the given order, in parallel from 65,536
    multiply-adds): the coordinate kernel's bits on 1 to 3 threads with a row holding half the
    entries; a bad row is named before an earlier bad column (rows are sorted on first)."""
    from lowrank_hpc._arrays import resolve

    U, V = _factors(rng, np.float32, m, n, r)
    rows, cols = (a.astype(index_dtype) for a in _skewed_coords(rng, m, n, nnz, "random"))
    call = resolve("test", U=U)
    direct = np.empty(nnz, dtype=np.float32)
    call.module.sampled_product(U[None], V[None], rows, cols, np.array([0, nnz]), direct, call.status(nnz))
    assert rel_error(direct, np.einsum("kc,kc->k", U[rows].astype(np.float64), V[cols].astype(np.float64))) < 1e-5
    for threads in (1, 2, 3):
        with cpu_threads(threads):
            np.testing.assert_array_equal(lr.ops.sampled_product(U, V, rows, cols), direct)
    bad_rows, bad_cols = rows.copy(), cols.copy()
    bad_cols[5], bad_rows[60_000] = n, m
    with pytest.raises(IndexError, match=rf"rows\[60000\] = {m} is out of range \[0, {m}\)"):
        lr.ops.sampled_product(U, V, bad_rows, bad_cols)
    with pytest.raises(IndexError, match=rf"cols\[5\] = {n} is out of range \[0, {n}\)"):
        lr.ops.sampled_product(U, V, rows, bad_cols)
    # The kernel itself: every product gathered back even so, the bad entry's 0.
    out, first_bad = np.full(nnz, np.nan, np.float32), call.status(nnz)
    call.module.sampled_product(U[None], V[None], rows, bad_cols, np.array([0, nnz]), out, first_bad, 0, True)
    assert call.read(first_bad)[0] == 5 and out[5] == 0
    np.testing.assert_array_equal(np.delete(out, 5), np.delete(direct, 5))


def test_products_over_no_entry_are_empty_and_zero(backend, rng):
    """Empty rows and cols: the sampled product is empty and S @ B the zero matrix (of the
    factors' dtype and batching), with U, V and B checked as ever; what the torch and JAX
    adapters and the estimators' predict on no entry return."""
    U, V, rows, cols = _valid(rng)
    none = backend.put(rows[:0])
    for dtype in (np.float32, np.float64):
        got = backend.get(lr.ops.sampled_product(backend.put(U.astype(dtype)), backend.put(V.astype(dtype)), none,
                                                 none))
        assert got.shape == (0,) and got.dtype == dtype
    batched = lr.ops.sampled_product(backend.put(np.stack([U, U])), backend.put(np.stack([V, V])), none, none,
                                     offsets=backend.put(np.zeros(3, dtype=np.int64)))
    assert batched.shape == (0,)
    product = backend.get(lr.ops.sparse_times_dense(none, none, backend.put(np.zeros(0)), backend.put(V), 7))
    np.testing.assert_array_equal(product, np.zeros((7, V.shape[1])))
    product = backend.get(lr.ops.sparse_times_dense(none, none, backend.put(np.zeros(0)), backend.put(np.stack([V, V])),
                                                    7, offsets=backend.put(np.zeros(3, dtype=np.int64))))
    assert product.shape == (2, 7, V.shape[1]) and not product.any()
    with pytest.raises(ValueError, match="V contains 1 NaN/inf"):
        bad = V.copy()
        bad[0, 0] = np.nan
        lr.ops.sampled_product(backend.put(U), backend.put(bad), none, none)


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("shuffled", [False, True])
def test_keys_in_csr_order_expand_the_indptr(transpose, shuffled):
    """SparsePattern.keys_in_csr_order is each entry's row (column) in that orientation's CSR
    order: numpy's repeat of the indptr's counts, and the keys gathered by the sort's order."""
    rng = np.random.default_rng(3)
    rows, cols = rng.integers(0, 40, 500).astype(np.int32), rng.integers(0, 30, 500).astype(np.int32)
    if not shuffled:
        order = np.lexsort((cols, rows) if not transpose else (rows, cols))
        rows, cols = rows[order], cols[order]
    pattern = lr.ops.SparsePattern(rows, cols, (40, 30))
    indptr, _ = pattern.csr_arrays(transpose)
    keys = pattern.keys_in_csr_order(transpose)
    np.testing.assert_array_equal(keys, np.repeat(np.arange(30 if transpose else 40), np.diff(indptr)))
    assert keys.dtype == np.int32
    np.testing.assert_array_equal(keys, pattern.in_csr_order((cols if transpose else rows).astype(np.float64),
                                                             transpose))
