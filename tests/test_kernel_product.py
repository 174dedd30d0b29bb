"""kernel_product: every kernel against f(U @ V^T) in float64, the top-k modes against a stable
numpy sort of that float64 reference (never of the kernel's own output), and the error paths."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import reference
from conftest import RTOL, rel_error
from lowrank_hpc import _backend
from lowrank_hpc.ops import KERNELS, GlobalTopK, TopK, apply_kernel, kernel_product
kernel_product_module = importlib.import_module("lowrank_hpc.ops.kernel_product")  # ops.kernel_product: the function

# (batch or None, m, n, r): single rows/columns, rank 1, primes, rank above 64.
SHAPES = [(None, 1, 5, 1), (None, 7, 1, 3), (None, 13, 17, 5), (None, 71, 67, 70), (3, 11, 13, 4)]


@pytest.fixture(params=["tiled", "blocked"])
def product_path(request, monkeypatch, backend):
    """The CPU's two ways to U V^T: row tiles formed by SciPy's BLAS in each OpenMP thread and
    used in cache ("tiled", asserted chosen on the CPU), or numpy's GEMM of row blocks
    ("blocked", the path of device arrays and of a framework's GEMM scope). On the GPU both are
    the blocked path. Yields the addresses consulted (0: blocked)."""
    chosen = []
    tile_gemm = kernel_product_module._tile_gemm
    if request.param == "blocked":
        monkeypatch.setattr(kernel_product_module, "_tile_gemm", lambda *args: chosen.append(0) or 0)
    else:  # small problems too (tiles of fewer rows than threads)
        monkeypatch.setattr(kernel_product_module, "_TILE_ROWS_A_THREAD", 0)
        monkeypatch.setattr(kernel_product_module, "_tile_gemm", lambda *args: chosen.append(tile_gemm(*args)) or chosen[-1])
    yield chosen  # the paths consulted: once a dense call or top-k selection
    if request.param == "tiled" and backend.name == "cpu":
        assert chosen and all(chosen), "the tiled path was not taken"


def _gaussian(rng, batch, m, n, r, dtype):
    lead = () if batch is None else (batch,)
    scale = r ** -0.25  # inner products of unit variance: no kernel saturates or overflows
    U = (rng.standard_normal(lead + (m, r)) * scale).astype(dtype)
    V = (rng.standard_normal(lead + (n, r)) * scale).astype(dtype)
    return U, V


def _half_integers(rng, batch, m, n, r, dtype):
    # Inner products are exact multiples of 1/4 in both precisions, so every GEMM (full or per
    # block, CPU or GPU) gives the same bits and many entries tie exactly.
    lead = () if batch is None else (batch,)
    U = (rng.integers(-2, 3, lead + (m, r)) * 0.5).astype(dtype)
    V = (rng.integers(-2, 3, lead + (n, r)) * 0.5).astype(dtype)
    return U, V


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(str(d) for d in s if d is not None))
def test_dense_matches_reference(backend, dtype, rng, kernel, shape, product_path):
    batch, m, n, r = shape
    U, V = _gaussian(rng, batch, m, n, r, dtype)
    K = kernel_product(backend.put(U), backend.put(V), kernel)
    expected_shape = (m, n) if batch is None else (batch, m, n)
    assert K.shape == expected_shape and K.dtype == dtype
    assert rel_error(backend.get(K), reference.kernel_product(U, V, kernel)) < RTOL[dtype]


@pytest.mark.parametrize("kernel", KERNELS)
def test_apply_kernel_is_kernel_products_element_step(backend, dtype, rng, kernel):
    # f of a product some other GEMM formed (the JAX adapter's): against the float64 reference,
    # equal to kernel_product's own (the same element step, here on a Fortran-ordered and a
    # 3-D K), and overflow raises as there.
    U, V = _gaussian(rng, None, 9, 7, 3, dtype)
    K = U @ V.T
    got = backend.get(apply_kernel(backend.put(np.asfortranarray(K)), kernel))
    assert got.dtype == dtype and got.shape == K.shape
    assert rel_error(got, reference.kernel_product(U, V, kernel)) < RTOL[dtype]
    np.testing.assert_array_equal(got, backend.get(kernel_product(backend.put(U), backend.put(V), kernel)))
    stacked = backend.get(apply_kernel(backend.put(np.stack([K, 2 * K])), kernel))
    np.testing.assert_array_equal(stacked[0], got)
    bad = K.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="K"):
        apply_kernel(backend.put(bad), kernel)
    if kernel == "exponential":
        bad[1, 2] = 1000.0
        with pytest.raises(FloatingPointError, match="exponential kernel overflowed: 1 entries"):
            apply_kernel(backend.put(bad), kernel)


def test_exp_is_an_alias(backend, rng):
    U, V = _gaussian(rng, None, 6, 9, 3, np.float64)
    np.testing.assert_array_equal(backend.get(kernel_product(backend.put(U), backend.put(V), "exp")),
                                  backend.get(kernel_product(backend.put(U), backend.put(V), "exponential")))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("block_rows", [None, 3])
# The CPU bounds a row's k-th magnitude by its 16-entry chunks' maxima when it has at least k
# chunks (203 columns: 13, the last of 11): k = 1, 5 and 13 take that path. With fewer chunks
# every entry competes: kept by insertion up to k = 32 (6 of 29, 14 of 203), else collected and
# sorted (33 of 203, 40 of 100).
@pytest.mark.parametrize("n,k", [(29, 6), (203, 1), (203, 5), (203, 13), (203, 14), (203, 33), (100, 40)])
def test_top_k_rows(backend, dtype, rng, kernel, batch, block_rows, n, k, product_path):
    m, r = 13, 4
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    # The ranking comes from f(U V^T) in float64 (inner products of half integers are exact in
    # both precisions, and each f is monotone in x or |x|, so the ties are the same ones).
    expected_values, expected_indices = reference.top_k_rows(reference.kernel_product(U, V, kernel), k)
    result = kernel_product(backend.put(U), backend.put(V), kernel, k, block_rows=block_rows)
    assert isinstance(result, TopK)
    values, indices = backend.get(result.values), backend.get(result.indices)
    assert values.shape == indices.shape == ((m, k) if batch is None else (batch, m, k))
    assert values.dtype == dtype and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("k", [1, 40, 600])
def test_top_k_rows_where_most_entries_tie(backend, dtype, rng, k, product_path):
    # relu of mostly negative products: most of each row ties at 0, so the rows' 16-entry chunks
    # bound nothing and the candidates are the whole row (k = 40: a few of many; k = 600 a large
    # part; the CPU orders them by a heap, or by the k-th found and a sort). Ties go to the
    # smaller column, the reference's stable sort of -|K|.
    m, n, r = 11, 2000, 4
    U = -np.abs(_half_integers(rng, None, m, n, r, dtype)[0])
    U[:, 0] = rng.integers(0, 3, m) * 0.5  # a few positive products a row
    V = np.abs(_half_integers(rng, None, m, n, r, dtype)[1])
    K = reference.kernel_product(U, V, "relu")
    assert np.mean(K == 0) > 0.8
    expected_values, expected_indices = reference.top_k_rows(K, k)
    result = kernel_product(backend.put(U), backend.put(V), "relu", k, block_rows=4)
    np.testing.assert_array_equal(backend.get(result.indices), expected_indices)
    np.testing.assert_array_equal(backend.get(result.values), expected_values.astype(dtype))


@pytest.mark.parametrize("kernel", ["tanh", "relu"])
def test_products_over_many_row_tiles(backend, rng, kernel, product_path):
    # 20,000 columns: tiles of 16 rows (1 MiB of float64 each is 6.5 rows, at least 16), 70 rows
    # a problem: 4 full tiles and one of 6, in 2 problems; dense and row top-k (k = 3, and
    # k = 1,500: every entry of a chunk-less row competes) against the float64 reference.
    U, V = _gaussian(rng, 2, 70, 20_000, 5, np.float64)
    K = reference.kernel_product(U, V, kernel)
    assert rel_error(backend.get(kernel_product(backend.put(U), backend.put(V), kernel)), K) < RTOL[np.float64]
    for k in (3, 1_500):
        expected_values, expected_indices = reference.top_k_rows(K, k)
        result = kernel_product(backend.put(U), backend.put(V), kernel, k)
        np.testing.assert_array_equal(backend.get(result.indices), expected_indices)
        np.testing.assert_allclose(backend.get(result.values), expected_values, rtol=RTOL[np.float64], atol=0)
    assert len(product_path) == 3  # dense and both top-k calls consult the rule (on the GPU too: 0)


def test_tile_gemm_is_scipys_blas():
    # SciPy (a dependency) declares its sgemm/dgemm with 32-bit integers: the CPU's tiled path.
    assert _backend.tile_gemm_address(np.float32) != 0 and _backend.tile_gemm_address(np.float64) != 0
    assert _backend.tile_gemm_address(np.float16) == 0 and _backend.tile_gemm_address(np.int64) == 0


def test_a_capsule_of_another_interface_gives_no_gemm():
    # Only a capsule declaring the GEMM with 32-bit integers is called; a 64-bit integer (ILP64)
    # declaration, another function or no capsule at all gives 0 (the blocked path).
    import ctypes

    new_capsule = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)(
        ("PyCapsule_New", ctypes.pythonapi))
    gemm_name = b"void (char *, char *, int *, int *, int *, float *, float *, int *, float *, int *, float *, float *, int *)"
    ilp64_name = gemm_name.replace(b"int *", b"long *")
    names = [gemm_name, ilp64_name, b"double (double)"]  # kept alive: a capsule keeps a pointer to its name
    capsules = [new_capsule(0x1000, name, None) for name in names]
    assert [_backend.capsule_gemm_address(c) for c in capsules] == [0x1000, 0, 0]
    assert _backend.capsule_gemm_address(object()) == 0


def test_the_tiled_path_leaves_room_for_a_frameworks_gemm_and_few_rows(rng):
    call = kernel_product_module.resolve("kernel_product", U=np.zeros((2, 2)), V=np.zeros((2, 2)))
    U, V = _gaussian(rng, 1, 8 * call.module.max_threads(), 30, 3, np.float64)
    assert kernel_product_module._tile_gemm(call, U, V) == _backend.tile_gemm_address(np.float64) != 0
    assert kernel_product_module._tile_gemm(call, U[:, 1:], V) == 0  # fewer rows than 8 a thread
    with _backend.host_gemm(lambda a, b, out=None: np.matmul(a, b, out=out)):  # lowrank_hpc.torch's scope
        assert kernel_product_module._tile_gemm(call, U, V) == 0


@pytest.mark.parametrize("block_rows,batch", [(None, 40), (26, 7), (39, 7), (12, 3)])
def test_row_top_k_of_many_small_problems_in_shared_blocks(backend, dtype, rng, block_rows, batch, product_path):
    """Row mode forms several problems' rows in one block (13 rows each: 2 or 3 problems a block,
    the last one short; block_rows 12: one block per problem's rows, as before), in the order
    asked, or (tiled) each problem's rows as a tile; an overflow in the last problem is still counted."""
    m, n, r, k = 13, 29, 4, 6
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    expected_values, expected_indices = reference.top_k_rows(reference.kernel_product(U, V, "tanh"), k)
    for order in ("magnitude", "position"):
        result = kernel_product(backend.put(U), backend.put(V), "tanh", k, block_rows=block_rows, top_k_order=order)
        values, indices = backend.get(result.values), backend.get(result.indices)
        assert values.shape == indices.shape == (batch, m, k)
        if order == "position":
            by_column = np.argsort(expected_indices, axis=-1)
            expected_indices = np.take_along_axis(expected_indices, by_column, -1)
            expected_values = np.take_along_axis(expected_values, by_column, -1)
        np.testing.assert_array_equal(indices, expected_indices)
        np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)
    U[-1, -1, 0], V[-1, 3, 0] = 100.0, 100.0
    overflowed = int(np.sum(U[-1].astype(np.float64) @ V[-1].T.astype(np.float64) > np.log(np.finfo(dtype).max)))
    assert overflowed >= 1
    with pytest.raises(FloatingPointError, match=f"exponential kernel overflowed: {overflowed} entries"):
        kernel_product(backend.put(U), backend.put(V), "exp", k, block_rows=block_rows)


@pytest.mark.parametrize("k", [1, 7, 33, 61, 13 * 29])
@pytest.mark.parametrize("block_rows,batch", [(None, 9), (26, 5), (39, 7)])
def test_global_top_k_of_a_batch_of_small_problems_in_shared_blocks(monkeypatch, backend, dtype, rng, k, block_rows,
                                                                    batch):
    """A batch of small problems selects each one's global top-k as one row of a shared block
    (2 or 3 problems a block, the last one short): the per-problem rule (magnitude, ties to the
    smaller flat index; or row-major), and the last problem's overflow is still counted."""
    def per_problem_merge(*args):
        raise AssertionError("the per-problem merge ran")

    monkeypatch.setattr(kernel_product_module, "_top_k_global", per_problem_merge)
    m, n, r = 13, 29, 4
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    expected_values, expected_rows, expected_cols = reference.top_k_global(reference.kernel_product(U, V, "tanh"), k)
    for order in ("magnitude", "position"):
        result = kernel_product(backend.put(U), backend.put(V), "tanh", k, top_k_mode="global", block_rows=block_rows,
                                top_k_order=order)
        values, rows, cols = (backend.get(x) for x in result)
        assert values.shape == rows.shape == cols.shape == (batch, k) and rows.dtype == np.int64
        if order == "position":
            by_flat = np.argsort(expected_rows * n + expected_cols, axis=-1)
            expected_values, expected_rows, expected_cols = (np.take_along_axis(x, by_flat, -1) for x in
                                                             (expected_values, expected_rows, expected_cols))
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(cols, expected_cols)
        np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)
    U[-1, 0, 0], V[-1, 0, 0] = 100.0, 100.0
    overflowed = int(np.sum(U[-1].astype(np.float64) @ V[-1].T.astype(np.float64) > np.log(np.finfo(dtype).max)))
    with pytest.raises(FloatingPointError, match=f"exponential kernel overflowed: {overflowed} entries"):
        kernel_product(backend.put(U), backend.put(V), "exp", k, top_k_mode="global", block_rows=block_rows)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("k,block_rows", [(1, None), (7, 3), (61, 3), (13 * 29, 5)])
def test_top_k_global(backend, dtype, rng, kernel, batch, k, block_rows, product_path):
    m, n, r = 13, 29, 4
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    expected_values, expected_rows, expected_cols = reference.top_k_global(reference.kernel_product(U, V, kernel), k)
    result = kernel_product(backend.put(U), backend.put(V), kernel, k, top_k_mode="global", block_rows=block_rows)
    assert isinstance(result, GlobalTopK)
    values, rows, cols = (backend.get(x) for x in result)
    assert values.shape == rows.shape == cols.shape == ((k,) if batch is None else (batch, k))
    assert values.dtype == dtype and rows.dtype == cols.dtype == np.int64
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(cols, expected_cols)
    np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("batch,m", [(None, 9), (2, 67)])  # 67 x 1031: above the grouped small problems
@pytest.mark.parametrize("k", [1, 2, 3])
def test_global_top_k_from_rows_offers_or_whole_blocks(monkeypatch, backend, dtype, rng, kernel, batch, m, k,
                                                       product_path):
    # Rows of 1,031 on the blocked path: k <= n / 512 (k = 1, 2) takes each row's top-k as the
    # block's offer, k = 3 the block's entries competing directly; the tiled path always the
    # latter. Which one ran is counted on the row selection.
    n, r = 1031, 3
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    row_selections = []
    blocks = kernel_product_module._Selection.blocks
    monkeypatch.setattr(kernel_product_module._Selection, "blocks",
                        lambda self, b: row_selections.append(b) or blocks(self, b))
    expected_values, expected_rows, expected_cols = reference.top_k_global(reference.kernel_product(U, V, kernel), k)
    for order in ("magnitude", "position"):
        values, rows, cols = (backend.get(x) for x in kernel_product(
            backend.put(U), backend.put(V), kernel, k, top_k_mode="global", top_k_order=order, block_rows=4))
        flat, expected_flat = rows * n + cols, expected_rows * n + expected_cols
        if order == "position":
            np.testing.assert_array_equal(flat, np.sort(expected_flat, axis=-1))
        else:
            np.testing.assert_array_equal(flat, expected_flat)
            np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)
    blocked = not any(product_path)
    assert row_selections == (2 * list(range(1 if batch is None else batch)) if blocked and k <= n // 512 else [])


@pytest.mark.parametrize("kernel", ["relu", "tanh"])
@pytest.mark.parametrize("batch", [None, 2])
@pytest.mark.parametrize("k,block_rows", [(1, None), (7, 3), (61, 3), (200, None), (13 * 29, 5)])
def test_top_k_in_position_order(backend, dtype, rng, kernel, batch, k, block_rows, product_path):
    # The reference's entries (ranked in float64, ties to the smaller index), put in position
    # order: row-major flat index (global), ascending column in each row (row mode). relu ties
    # every negative product at 0, so the tie rule decides which zeros are kept.
    m, n, r = 13, 29, 4
    U, V = _half_integers(rng, batch, m, n, r, dtype)
    K = reference.kernel_product(U, V, kernel)
    expected_values, expected_rows, expected_cols = reference.top_k_global(K, k)
    by_position = np.argsort(expected_rows * n + expected_cols, axis=-1)
    result = kernel_product(backend.put(U), backend.put(V), kernel, k, top_k_mode="global", top_k_order="position",
                            block_rows=block_rows)
    values, rows, cols = (backend.get(x) for x in result)
    np.testing.assert_array_equal(rows, np.take_along_axis(expected_rows, by_position, -1))
    np.testing.assert_array_equal(cols, np.take_along_axis(expected_cols, by_position, -1))
    np.testing.assert_allclose(values, np.take_along_axis(expected_values, by_position, -1), rtol=RTOL[dtype], atol=0)
    k_row = min(k, n)
    expected_values, expected_indices = reference.top_k_rows(K, k_row)
    by_column = np.argsort(expected_indices, axis=-1)
    result = kernel_product(backend.put(U), backend.put(V), kernel, k_row, top_k_order="position",
                            block_rows=block_rows)
    np.testing.assert_array_equal(backend.get(result.indices), np.take_along_axis(expected_indices, by_column, -1))
    np.testing.assert_allclose(backend.get(result.values), np.take_along_axis(expected_values, by_column, -1),
                               rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("batch", [None, 3])
def test_global_top_k_overflow_counts_every_block(backend, dtype, rng, batch, product_path):
    # exp overflows in the first block of rows and in the last problem's last one: the error counts
    # every inf entry, not only those of the block where the first was seen (problems of more
    # entries than the grouped small problems take: each one's blocks merged in turn).
    m, n, r = 300, 230, 3
    U, V = _gaussian(rng, batch, m, n, r, dtype)
    U3, V3 = U.reshape(-1, m, r), V.reshape(-1, n, r)
    U3[0, 1, 0] = U3[-1, m - 1, 0] = V3[0, 2, 0] = V3[-1, 5, 0] = 100.0
    products = np.einsum("bir,bjr->bij", U3.astype(np.float64), V3.astype(np.float64))
    overflowed = int(np.sum(products > np.log(np.finfo(dtype).max)))
    assert overflowed >= 2
    with pytest.raises(FloatingPointError, match=f"exponential kernel overflowed: {overflowed} entries"):
        kernel_product(backend.put(U), backend.put(V), "exp", 10, top_k_mode="global", block_rows=64)


@pytest.mark.parametrize("kernel", ["relu", "tanh"])
@pytest.mark.parametrize("k", [1_000, 30_000, 80_000])
def test_global_top_k_of_a_large_matrix(backend, dtype, rng, kernel, k, product_path):
    # 160,000 entries: the threshold comes from a partition of the entries above a sampled bound.
    # Half-integer factors give exact ties (relu's zeros: more than half the entries at k = 80,000).
    U, V = _half_integers(rng, None, 400, 400, 3, dtype)
    expected_values, expected_rows, expected_cols = reference.top_k_global(reference.kernel_product(U, V, kernel), k)
    for order in ("magnitude", "position"):
        values, rows, cols = (backend.get(x) for x in kernel_product(
            backend.put(U), backend.put(V), kernel, k, top_k_mode="global", top_k_order=order))
        flat, expected_flat = rows * 400 + cols, expected_rows * 400 + expected_cols
        if order == "position":
            np.testing.assert_array_equal(flat, np.sort(expected_flat))
        else:
            np.testing.assert_array_equal(flat, expected_flat)
            np.testing.assert_allclose(values, expected_values, rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("case", ["uniform", "ties", "sampled_entries_largest", "few_distinct"])
def test_kth_largest_is_exact_whichever_way_it_selects(case):
    # Private: the sampled bound is a shortcut; where the sample misleads (the sampled entries the
    # largest of all), the full partition answers. Against a sort.
    rng = np.random.default_rng(11)
    size = 300_000
    magnitude = rng.random(size)
    if case == "ties":
        magnitude = np.round(magnitude * 50) / 50
    elif case == "sampled_entries_largest":
        magnitude[kernel_product_module._sample_positions(np, size)] += 10.0
    elif case == "few_distinct":
        magnitude = rng.integers(0, 3, size).astype(np.float64)
    for k in (1, 77, 20_000, size // 2):
        assert kernel_product_module._kth_largest(np, magnitude, k) == np.sort(magnitude)[size - k]


def test_top_k_order_is_checked(backend, rng):
    U, V = _gaussian(rng, None, 4, 5, 2, np.float64)
    _raises(backend, ValueError, "top_k_order must be one of", U, V, "tanh", 2, top_k_order="value")


@pytest.mark.parametrize("m,n,r,k,mode", [(1, 7, 2, 7, "global"), (5, 1, 1, 1, "row"), (5, 1, 1, 5, "global"),
                                         (1, 67, 66, 3, "row")])
@pytest.mark.parametrize("kernel", ["identity", "piecewise_linear"])
def test_top_k_degenerate_shapes(backend, dtype, rng, m, n, r, k, mode, kernel):
    # Kernels exact in both precisions: at rank 66 the inner products reach tens, where the
    # float32 tanh (a few ulp from the rounded float64 one) saturates to 1 a little earlier,
    # so its ties there are not the reference's; piecewise_linear ties there exactly instead.
    U, V = _half_integers(rng, None, m, n, r, dtype)
    expected = (reference.top_k_rows if mode == "row" else reference.top_k_global)(
        reference.kernel_product(U, V, kernel), k)
    result = kernel_product(backend.put(U), backend.put(V), kernel, k, top_k_mode=mode, block_rows=2)
    np.testing.assert_array_equal(backend.get(result[0]), expected[0])
    for got, want in zip(result[1:], expected[1:]):
        np.testing.assert_array_equal(backend.get(got), want)


def test_top_k_values_are_the_dense_kernel_entries(backend, dtype, rng):
    """Top-k and dense mode give the same bits for the same entries (one element-wise step; the
    inner products of half integers are exact, whatever GEMM forms them)."""
    U, V = _half_integers(rng, 2, 9, 14, 3, dtype)
    dense = backend.get(kernel_product(backend.put(U), backend.put(V), "tanh"))
    top = kernel_product(backend.put(U), backend.put(V), "tanh", 4, block_rows=4)
    np.testing.assert_array_equal(backend.get(top.values),
                                  np.take_along_axis(dense, backend.get(top.indices), axis=-1))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [0, 1, 2, 255, 257, 100_000])
def test_order_by_magnitude_is_a_stable_argsort_of_minus_magnitude(dtype, size):
    # Private CPU kernel (the global top-k's final order): a radix sort of the magnitudes' bits,
    # against numpy's stable argsort of -|x|. Exact ties with both signs, zeros of both signs,
    # infinities, NaN (last), subnormals, and runs of keys equal in their high bytes (skipped passes).
    rng = np.random.default_rng(size)
    values = np.tanh(rng.standard_normal(size)).astype(dtype)
    if size >= 255:
        values[::7] = values[::3][:values[::7].shape[0]]
        negated = -values[2::11]
        values[1:1 + 11 * negated.shape[0]:11] = negated
        values[[3, 50, 60, 70, 80, 90, 100, 110, 120]] = [0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-40,
                                                          -1e-40, np.finfo(dtype).tiny]
    order = np.empty(size, dtype=np.int64)
    _backend.cpu_module().order_by_magnitude(values, order)
    np.testing.assert_array_equal(order, np.argsort(-np.abs(values), kind="stable"))
    # One magnitude everywhere (every pass skipped): the identity.
    same = np.where(rng.random(size) < 0.5, 0.75, -0.75).astype(dtype)
    _backend.cpu_module().order_by_magnitude(same, order)
    np.testing.assert_array_equal(order, np.arange(size))


def _top_magnitude_positions(values, k):
    """The reference: the first k of a stable argsort of -|values|, in position order."""
    return np.sort(np.argsort(-np.abs(values), kind="stable")[:k])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", ["gaussian", "ties", "specials", "one value", "columns", "sample misses"])
@pytest.mark.parametrize("size", [1, 257, 200_000, 200_007])
def test_select_top_magnitudes_keeps_a_stable_argsorts_first_k(dtype, case, size):
    # Private CPU kernel (the global top-k's selection): the k largest |x|, in position order,
    # ties at the k-th magnitude to the earlier positions, against numpy's stable argsort, the
    # same with no sample and with the caller's (from 131,072 entries: the candidates between its
    # bounds; "sample misses": the sampled positions hold zeros, the bounds miss and every key
    # competes). float32 tests 16 magnitudes at a time (200,007: a tail of 7).
    rng = np.random.default_rng(size)
    if case == "gaussian":
        values = (rng.standard_normal(size) * 0.05).astype(dtype)
    elif case == "ties":  # few magnitudes, both signs: the k-th is tied almost always
        values = rng.integers(-3, 4, size).astype(dtype)
    elif case == "specials":
        choices = np.array([0.0, -0.0, np.inf, -np.inf, 1e-40, -1e-40, np.finfo(dtype).tiny, 2.0, -2.0], dtype)
        values = choices[rng.integers(0, choices.shape[0], size)]
        if dtype == np.float64:
            values[::5] = 5e-324
    elif case == "one value":
        values = np.where(rng.random(size) < 0.5, 0.75, -0.75).astype(dtype)
    elif case == "columns":  # SNELL's: |<A_i, B_j>| of 1000 columns of unequal norms
        columns = 1000
        values = np.outer(rng.standard_normal(-(-size // columns)), rng.gamma(0.5, size=columns))
        values = values.reshape(-1)[:size].astype(dtype)
    else:
        values = rng.standard_normal(size).astype(dtype)
    samples = [np.zeros(0, dtype=np.int64)]
    if kernel_product_module._samples(size):
        samples.append(kernel_product_module._sample_positions(np, size))
        if case == "sample misses":
            values[samples[1]] = 0.0
    module = _backend.cpu_module()
    for k in sorted({1, min(2, size), max(1, size // 10), max(1, size // 2), size}):
        for sample in samples:
            positions = np.empty(k, dtype=np.int64)
            assert module.select_top_magnitudes(values, sample, positions) == k
            np.testing.assert_array_equal(positions, _top_magnitude_positions(values, k),
                                          err_msg=f"k={k}, sample of {sample.shape[0]}")


@pytest.mark.parametrize("size", [5, 200_000])
def test_select_top_magnitudes_leaves_nan_to_its_caller(size):
    # -1 and nothing written: kernel_product's numpy path handles NaN (and reports the overflow).
    values = np.ones(size, dtype=np.float32)
    values[size // 2] = np.nan
    positions = np.full(2, -7, dtype=np.int64)
    sample = np.arange(0, size, 3, dtype=np.int64)
    assert _backend.cpu_module().select_top_magnitudes(values, sample, positions) == -1
    np.testing.assert_array_equal(positions, [-7, -7])


def test_select_top_magnitudes_checks_its_arrays():
    module = _backend.cpu_module()
    none = np.zeros(0, np.int64)
    with pytest.raises(ValueError, match="positions: expected int64, got int32"):
        module.select_top_magnitudes(np.zeros(4, np.float32), none, np.zeros(2, np.int32))
    with pytest.raises(ValueError, match=r"positions: k = 5 must be in \[1, 4\]"):
        module.select_top_magnitudes(np.zeros(4, np.float32), none, np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"positions: k = 0 must be in \[1, 4\]"):
        module.select_top_magnitudes(np.zeros(4, np.float32), none, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="values"):
        module.select_top_magnitudes(np.zeros(4, np.int32), none, np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"sample: position 4 outside \[0, 4\)"):
        module.select_top_magnitudes(np.zeros(4, np.float32), np.array([0, 4]), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="sample: expected int64"):
        module.select_top_magnitudes(np.zeros(4, np.float32), np.array([0, 1], np.int32), np.zeros(2, np.int64))


def test_order_by_magnitude_checks_its_arrays():
    module = _backend.cpu_module()
    with pytest.raises(ValueError, match="order: expected int64, got int32"):
        module.order_by_magnitude(np.zeros(4, np.float32), np.zeros(4, np.int32))
    with pytest.raises(ValueError, match="order: axis 0 has length 3, expected 4"):
        module.order_by_magnitude(np.zeros(4, np.float32), np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="values"):
        module.order_by_magnitude(np.zeros(4, np.int32), np.zeros(4, np.int64))


def test_top_k_tie_rule(backend, dtype):
    # relu(K) = [[1, 0, 1, 0, 2], [1, 0, 1, 0, 2]]: equal magnitudes go to the smaller index.
    U = np.array([[1.0], [1.0]], dtype=dtype)
    V = np.array([[1.0], [-1.0], [1.0], [0.0], [2.0]], dtype=dtype)
    rows_result = kernel_product(backend.put(U), backend.put(V), "relu", 5, block_rows=1)
    np.testing.assert_array_equal(backend.get(rows_result.indices), [[4, 0, 2, 1, 3]] * 2)
    np.testing.assert_array_equal(backend.get(rows_result.values), [[2, 1, 1, 0, 0]] * 2)
    top = kernel_product(backend.put(U), backend.put(V), "relu", 6, top_k_mode="global", block_rows=1)
    np.testing.assert_array_equal(backend.get(top.rows), [0, 1, 0, 0, 1, 1])
    np.testing.assert_array_equal(backend.get(top.cols), [4, 4, 0, 2, 0, 2])
    np.testing.assert_array_equal(backend.get(top.values), [2, 2, 1, 1, 1, 1])


@pytest.mark.parametrize("kernel", ["relu", "tanh", "piecewise_linear", "identity"])
def test_an_overflowed_product_raises_whatever_the_kernel(backend, dtype, kernel, product_path):
    # U V^T = [[-inf, 1], [inf, 1]] from finite factors: a saturating f (relu(-inf) = 0,
    # tanh(inf) = 1) must not turn the overflow into a finite answer, in any mode.
    big = 1e200 if dtype == np.float64 else 1e20
    U = np.array([[big, 0.0], [-big, 0.0]], dtype=dtype)
    V = np.array([[-big, 0.0], [0.0, 1.0]], dtype=dtype)
    U, V = backend.put(U), backend.put(V)
    for call in (lambda: kernel_product(U, V, kernel), lambda: kernel_product(U, V, kernel, 1),
                 lambda: kernel_product(U, V, kernel, 2, top_k_mode="global")):
        with pytest.raises(FloatingPointError, match="U @ V\\^T overflowed: 2 entries"):
            call()


def test_exponential_overflow_raises(backend, dtype, product_path):
    big = 30.0 if dtype == np.float64 else 10.0  # inner product 900 (or 100) overflows exp
    U = np.full((3, 1), big, dtype=dtype)
    V = np.full((4, 1), big, dtype=dtype)
    with pytest.raises(FloatingPointError, match="exponential kernel overflowed: 12 entries"):
        kernel_product(backend.put(U), backend.put(V), "exponential")
    for mode in ("row", "global"):
        with pytest.raises(FloatingPointError, match="exponential kernel overflowed"):
            kernel_product(backend.put(U), backend.put(V), "exp", 2, top_k_mode=mode, block_rows=2)


def test_row_top_k_counts_every_overflow_past_its_chunk_bound(backend, dtype, product_path):
    # 203 columns, k = 1: the CPU applies f only to chunks that can reach the row's bound; the
    # two overflowing entries lie in different chunks (and one is not among the kept): both counted.
    U = np.ones((2, 1), dtype=dtype)
    V = np.linspace(-1, 1, 203).astype(dtype)[:, None]
    V[5], V[150] = 1000.0, 2000.0
    with pytest.raises(FloatingPointError, match="exponential kernel overflowed: 4 entries"):
        kernel_product(backend.put(U), backend.put(V), "exp", 1)


def test_gemm_overflow_raises(backend, product_path):
    U = np.full((2, 1), 1e30, dtype=np.float32)
    with pytest.raises(FloatingPointError, match=r"U @ V\^T overflowed: 4 entries"):
        kernel_product(backend.put(U), backend.put(U.copy()), "identity")


def _raises(backend, error, match, U, V, *args, **kwargs):
    with pytest.raises(error, match=match):
        kernel_product(backend.put(U), backend.put(V), *args, **kwargs)


def test_bad_inputs(backend, rng):
    U, V = _gaussian(rng, None, 4, 5, 2, np.float64)
    _raises(backend, TypeError, "U is complex; Complex data not supported", U.astype(np.complex128), V)
    _raises(backend, TypeError, "V is float32 but U is float64", U, V.astype(np.float32))
    _raises(backend, ValueError, r"U has shape \(4, 2\).*V has shape \(5, 3\)", U, np.ones((5, 3)))
    _raises(backend, ValueError, r"batch sizes differ: U \(2, 4, 2\), V \(3, 5, 2\)",
            np.ones((2, 4, 2)), np.ones((3, 5, 2)))
    bad = V.copy()
    bad[1, 1] = np.nan
    _raises(backend, ValueError, "V contains 1 NaN/inf", U, bad)
    _raises(backend, ValueError, "unknown kernel 'sigmoid'; valid kernels are identity, relu, exponential, tanh, "
            "piecewise_linear", U, V, "sigmoid")
    _raises(backend, ValueError, r"top_k_mode must be one of \('row', 'global'\)", U, V, "relu", 2, top_k_mode="column")


@pytest.mark.parametrize("top_k,mode,match", [
    (0, "row", r"1 <= top_k <= n = 5 in row mode, got 0"),
    (6, "row", r"1 <= top_k <= n = 5 in row mode, got 6"),
    (21, "global", r"1 <= top_k <= m \* n = 4 \* 5 = 20 in global mode, got 21"),
])
def test_top_k_out_of_range(backend, rng, top_k, mode, match):
    U, V = _gaussian(rng, None, 4, 5, 2, np.float64)
    _raises(backend, ValueError, match, U, V, "tanh", top_k, top_k_mode=mode)


def test_bad_top_k_and_block_rows_types(backend, rng):
    U, V = _gaussian(rng, None, 4, 5, 2, np.float64)
    _raises(backend, TypeError, "top_k must be an int, got float 2.5", U, V, "tanh", 2.5)
    _raises(backend, TypeError, "block_rows must be an int, got bool True", U, V, "tanh", 2, block_rows=True)
    _raises(backend, ValueError, "block_rows must be >= 1, got 0", U, V, "tanh", 2, block_rows=0)
