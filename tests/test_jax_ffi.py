"""lowrank_hpc.jax's XLA FFI handlers (the CPU kernels called by XLA on its own buffers) against
its host-callback path and jax.numpy: the same values bit for bit in every storage type, row
order and index dtype, the same errors for out-of-range indices, under jit, vmap and grad.
Skipped without jax; the handler tests where this build has none (``info()["jax_ffi"]``)."""
from __future__ import annotations

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402

import lowrank_hpc  # noqa: E402
import lowrank_hpc.jax as lj  # noqa: E402

needs_ffi = pytest.mark.skipif(not lj._FFI, reason="this build has no JAX FFI handlers (built where the building "
                                                   "Python has jaxlib)")
HALVES = (jnp.float16, jnp.bfloat16)


pytestmark = pytest.mark.usefixtures("jax_x64")


def both_paths(monkeypatch, function, *args):
    """function(*args) under jit by the FFI handlers, then by the host callback (a new closure
    each, so neither reuses the other's trace)."""
    by_ffi = jax.jit(lambda *a: function(*a))(*args)
    with monkeypatch.context() as patch:
        patch.setattr(lj, "_FFI", False)
        by_callback = jax.jit(lambda *a: function(*a))(*args)
    return by_ffi, by_callback


def entries(m, n, nnz, seed, order):
    """nnz coordinates with repeats: row-sorted (np.nonzero's order), or shuffled."""
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    rows[1:4], cols[1:4] = rows[0], cols[0]  # a repeated position
    if order == "sorted":
        keep = np.lexsort((cols, rows))
        rows, cols = rows[keep], cols[keep]
    return rows, cols


def test_info_reports_the_handlers():
    """info() and the registration agree with what the build recorded (a binding that failed to
    compile in, or one info() cannot see, would differ)."""
    from lowrank_hpc import _build_info

    assert lowrank_hpc.info()["jax_ffi"]["built"] == _build_info.JAX_FFI_BUILT
    assert ("cpu" in lj._FFI_PLATFORMS) == (_build_info.JAX_FFI_BUILT and hasattr(jax, "ffi"))


@needs_ffi
@pytest.mark.parametrize("function", ["sampled_product", "sparse_times_dense"])
def test_xla_calls_the_handler_on_the_cpu(function):
    """The lowered CPU program holds the FFI custom call and no host callback."""
    U, V = jnp.ones((5, 3)), jnp.ones((4, 3))
    rows, cols = jnp.arange(4, dtype=jnp.int32), jnp.arange(4, dtype=jnp.int32)
    if function == "sampled_product":
        lowered = jax.jit(lj.sampled_product).lower(U, V, rows, cols)
    else:
        lowered = jax.jit(lambda v, B: lj.sparse_times_dense(rows, cols, v, B, 5)).lower(jnp.ones(4), V)
    text = lowered.as_text()
    assert f"lowrank_hpc_{function}" in text and "callback" not in text


@needs_ffi
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64] + list(HALVES))
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("r", [3, 17, 130])  # 130: float32/float64 rows of 512 bytes or more take the row order
def test_sampled_product_matches_callback_and_jnp(monkeypatch, dtype, order, r):
    m, n, nnz = 40, 30, 300
    rng = np.random.default_rng(r)
    U = jnp.asarray(rng.standard_normal((m, r)), dtype)
    V = jnp.asarray(rng.standard_normal((n, r)), dtype)
    rows, cols = entries(m, n, nnz, r, order)
    rows, cols = jnp.asarray(rows, jnp.int32), jnp.asarray(cols, jnp.int64)  # mixed: widened to int64
    by_ffi, by_callback = both_paths(monkeypatch, lj.sampled_product, U, V, rows, cols)
    assert by_ffi.dtype == dtype and by_ffi.shape == (nnz,)
    np.testing.assert_array_equal(np.asarray(by_ffi, np.float64), np.asarray(by_callback, np.float64))
    reference = (np.asarray(U, np.float64)[rows] * np.asarray(V, np.float64)[cols]).sum(1)
    tolerance = 2e-2 if dtype in HALVES else 1e-5
    np.testing.assert_allclose(np.asarray(by_ffi, np.float64), reference, rtol=tolerance, atol=tolerance * np.sqrt(r))


@needs_ffi
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64] + list(HALVES))
@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("r", [1, 8, 33])
def test_sparse_times_dense_matches_callback_and_scipy(monkeypatch, dtype, order, transpose, r):
    scipy_sparse = pytest.importorskip("scipy.sparse")
    m, n, nnz = 40, 30, 300
    rng = np.random.default_rng(r)
    rows, cols = entries(m, n, nnz, r, order)
    vals = jnp.asarray(rng.standard_normal(nnz), dtype)
    n_rows, n_other = (n, m) if transpose else (m, n)
    B = jnp.asarray(rng.standard_normal((n_other, r)), dtype)
    rows, cols = jnp.asarray(rows), jnp.asarray(cols)
    by_ffi, by_callback = both_paths(
        monkeypatch, lambda v, B: lj.sparse_times_dense(rows, cols, v, B, n_rows, transpose=transpose), vals, B)
    assert by_ffi.dtype == dtype and by_ffi.shape == (n_rows, r)
    np.testing.assert_array_equal(np.asarray(by_ffi, np.float64), np.asarray(by_callback, np.float64))
    S = scipy_sparse.coo_matrix((np.asarray(vals, np.float64), (np.asarray(rows), np.asarray(cols))), (m, n)).tocsr()
    reference = (S.T if transpose else S) @ np.asarray(B, np.float64)
    tolerance = 3e-2 if dtype in HALVES else 1e-5
    np.testing.assert_allclose(np.asarray(by_ffi, np.float64), reference, rtol=tolerance, atol=tolerance * 4)


@needs_ffi
@pytest.mark.parametrize("index_dtype", [jnp.int32, jnp.int64, jnp.uint8, jnp.int16])  # the narrow ones: callback
def test_any_integer_indices(monkeypatch, index_dtype):
    rng = np.random.default_rng(5)
    U, V = jnp.asarray(rng.standard_normal((9, 4))), jnp.asarray(rng.standard_normal((7, 4)))
    rows, cols = (jnp.asarray(x, index_dtype) for x in entries(9, 7, 25, 5, "shuffled"))
    by_ffi, by_callback = both_paths(monkeypatch, lj.sampled_product, U, V, rows, cols)
    np.testing.assert_array_equal(by_ffi, by_callback)
    np.testing.assert_allclose(by_ffi, (U[rows] * V[cols]).sum(1), rtol=1e-12)


@needs_ffi
def test_no_entries(monkeypatch):
    U, V = jnp.ones((3, 2)), jnp.ones((4, 2))
    empty = jnp.zeros(0, jnp.int32)
    by_ffi, by_callback = both_paths(monkeypatch, lj.sampled_product, U, V, empty, empty)
    assert by_ffi.shape == by_callback.shape == (0,)
    B = jnp.full((4, 2), 7.0)
    by_ffi, by_callback = both_paths(monkeypatch, lambda v, B: lj.sparse_times_dense(empty, empty, v, B, 3),
                                     jnp.zeros(0), B)
    np.testing.assert_array_equal(by_ffi, np.zeros((3, 2)))
    np.testing.assert_array_equal(by_callback, np.zeros((3, 2)))


BAD_INDICES = [
    ("sampled_product", "rows", 4, 7, "sampled_product: rows[4] = 7 is out of range [0, 7)"),
    ("sampled_product", "cols", 2, -1, "sampled_product: cols[2] = -1 is out of range [0, 6)"),
    ("sparse_times_dense", "rows", 3, 9, "sparse_times_dense: rows[3] = 9 is out of range [0, 7)"),
    ("sparse_times_dense", "cols", 5, 6, "sparse_times_dense: cols[5] = 6 is out of range [0, 6)"),
    ("sparse_times_dense_T", "cols", 1, 6, "sparse_times_dense: cols[1] = 6 is out of range [0, 6)"),
    ("sparse_times_dense_T", "rows", 0, 70, "sparse_times_dense: rows[0] = 70 is out of range [0, 7)"),
]


@pytest.mark.parametrize("path", ["ffi", "callback"])
@pytest.mark.parametrize("function, name, k, value, message", BAD_INDICES)
def test_out_of_range_index_names_it(monkeypatch, path, function, name, k, value, message):
    """An index outside its dimension is the IndexError text of lowrank_hpc.ops on either path (in
    a JaxRuntimeError: XLA reports the kernel's error), never a read outside the arrays."""
    if path == "ffi" and not lj._FFI:
        pytest.skip("this build has no JAX FFI handlers")
    monkeypatch.setattr(lj, "_FFI", lj._FFI and path == "ffi")
    rng = np.random.default_rng(0)
    m, n, nnz = 7, 6, 10
    U, V = jnp.asarray(rng.standard_normal((m, 3))), jnp.asarray(rng.standard_normal((n, 3)))
    indices = {"rows": np.arange(nnz) % m, "cols": np.arange(nnz) % n}
    indices[name][k] = value
    rows, cols = jnp.asarray(indices["rows"], jnp.int32), jnp.asarray(indices["cols"], jnp.int32)
    vals = jnp.ones(nnz)
    call = {"sampled_product": lambda: lj.sampled_product(U, V, rows, cols),
            "sparse_times_dense": lambda: lj.sparse_times_dense(rows, cols, vals, V, m),
            "sparse_times_dense_T": lambda: lj.sparse_times_dense(rows, cols, vals, U, n, transpose=True)}[function]
    with pytest.raises(jax.errors.JaxRuntimeError, match=message.replace("[", r"\[").replace(")", r"\)")):
        jax.block_until_ready(jax.jit(call)())


@needs_ffi
def test_vmap_and_grad_through_the_handlers(monkeypatch):
    """vmap (the stacked elements in one handler call) and reverse-mode gradients (products of the
    same kernels) give the callback path's values (one callback per element)."""
    rng = np.random.default_rng(3)
    U = jnp.asarray(rng.standard_normal((3, 8, 5)))  # a batch of 3 factor pairs
    V = jnp.asarray(rng.standard_normal((3, 6, 5)))
    rows, cols = (jnp.asarray(x) for x in entries(8, 6, 20, 3, "shuffled"))
    batched = jax.vmap(lambda U, V: lj.sampled_product(U, V, rows, cols))
    by_ffi, by_callback = both_paths(monkeypatch, batched, U, V)
    np.testing.assert_array_equal(by_ffi, by_callback)
    np.testing.assert_allclose(by_ffi, (U[:, rows] * V[:, cols]).sum(-1), rtol=1e-12)

    def loss(U, V):
        return (lj.sampled_product(U, V, rows, cols) ** 2).sum()

    by_ffi, by_callback = both_paths(monkeypatch, jax.grad(loss, argnums=(0, 1)), U[0], V[0])
    reference = jax.grad(lambda U, V: (((U[rows] * V[cols]).sum(1)) ** 2).sum(), argnums=(0, 1))(U[0], V[0])
    for a, b, c in zip(by_ffi, by_callback, reference):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-12)


def _jax_gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.float16])
def test_gpu_handlers_match_the_cpu_handlers(dtype):
    """On a JAX GPU the CUDA module's handlers run on XLA's stream (no callback in the program)
    and give the CPU handlers' values; a bad index is the same error."""
    device = _jax_gpu()
    if device is None:
        pytest.skip("this jax has no GPU backend (pip install jax[cuda13])")
    assert "cuda" in lj._FFI_PLATFORMS, "the CUDA module has no JAX FFI handlers (built without jaxlib?)"
    rng = np.random.default_rng(11)
    m, n, r, nnz = 300, 200, 40, 5000
    U, V = jnp.asarray(rng.standard_normal((m, r)), dtype), jnp.asarray(rng.standard_normal((n, r)), dtype)
    rows, cols = (jnp.asarray(x, jnp.int32) for x in entries(m, n, nnz, 11, "shuffled"))
    vals = jnp.asarray(rng.standard_normal(nnz), dtype)
    calls = [lambda U, V, v, r_, c_: lj.sampled_product(U, V, r_, c_),
             lambda U, V, v, r_, c_: lj.sparse_times_dense(r_, c_, v, V, m),
             lambda U, V, v, r_, c_: lj.sparse_times_dense(r_, c_, v, U, n, transpose=True)]
    tolerance = {jnp.float32: 1e-5, jnp.float64: 1e-12, jnp.float16: 2e-3}[dtype]
    on_gpu = [jax.device_put(x, device) for x in (U, V, vals, rows, cols)]
    on_cpu = [jax.device_put(x, jax.devices("cpu")[0]) for x in (U, V, vals, rows, cols)]
    for call in calls:
        text = jax.jit(call).lower(*on_gpu).as_text()
        assert "lowrank_hpc_" in text and "callback" not in text
        by_gpu = np.asarray(jax.jit(call)(*on_gpu), np.float64)
        by_cpu = np.asarray(jax.jit(call)(*on_cpu), np.float64)
        np.testing.assert_allclose(by_gpu, by_cpu, rtol=tolerance, atol=tolerance * np.abs(by_cpu).max())
    bad = jax.device_put(np.where(np.arange(nnz) == 7, m, np.asarray(rows)).astype(np.int32), device)
    with pytest.raises(jax.errors.JaxRuntimeError, match=rf"sampled_product: rows\[7\] = {m} is out of range"):
        jax.block_until_ready(jax.jit(lj.sampled_product)(on_gpu[0], on_gpu[1], bad, on_gpu[4]))


@needs_ffi
@pytest.mark.parametrize("r, dtype", [(5, jnp.float64), (130, jnp.float32), (8, jnp.bfloat16)])  # 130: the row order
def test_vmap_is_one_batched_call(monkeypatch, r, dtype):
    """vmap over factors and patterns (two nested levels) runs the handler once on the stacked
    problems (the kernels' batch with offsets), with each element's values bit for bit those of
    the callback path, which runs the elements one by one."""
    rng = np.random.default_rng(r)
    outer, inner, m, n, nnz = 2, 3, 9, 7, 40
    U = jnp.asarray(rng.standard_normal((outer, inner, m, r)), dtype)
    V = jnp.asarray(rng.standard_normal((outer, inner, n, r)), dtype)
    patterns = [entries(m, n, nnz, seed, "shuffled") for seed in range(outer * inner)]
    rows = jnp.asarray(np.stack([p[0] for p in patterns]).reshape(outer, inner, nnz), jnp.int32)
    cols = jnp.asarray(np.stack([p[1] for p in patterns]).reshape(outer, inner, nnz), jnp.int32)
    vals = jnp.asarray(rng.standard_normal((outer, inner, nnz)), dtype)
    batched_sddmm = jax.vmap(jax.vmap(lj.sampled_product))
    text = jax.jit(batched_sddmm).lower(U, V, rows, cols).as_text()
    assert text.count("lowrank_hpc_sampled_product") == 1 and "while" not in text
    by_ffi, by_callback = both_paths(monkeypatch, batched_sddmm, U, V, rows, cols)
    np.testing.assert_array_equal(np.asarray(by_ffi, np.float64), np.asarray(by_callback, np.float64))
    for transpose, dense, size in ((False, V, m), (True, U, n)):
        batched_spmm = jax.vmap(jax.vmap(lambda r_, c_, v, B, t=transpose, s=size:
                                         lj.sparse_times_dense(r_, c_, v, B, s, transpose=t)))
        by_ffi, by_callback = both_paths(monkeypatch, batched_spmm, rows, cols, vals, dense)
        assert by_ffi.shape == (outer, inner, size, r)
        np.testing.assert_array_equal(np.asarray(by_ffi, np.float64), np.asarray(by_callback, np.float64))


@needs_ffi
def test_vmap_shared_pattern_and_its_errors():
    """A pattern shared by the vmapped elements (broadcast to each), and a bad index in one element
    named with its position in that element."""
    rng = np.random.default_rng(2)
    U, V = jnp.asarray(rng.standard_normal((4, 6, 3))), jnp.asarray(rng.standard_normal((4, 5, 3)))
    rows, cols = (jnp.asarray(x, jnp.int32) for x in entries(6, 5, 12, 2, "shuffled"))
    shared = jax.jit(jax.vmap(lambda U, V: lj.sampled_product(U, V, rows, cols)))(U, V)
    np.testing.assert_allclose(shared, (U[:, rows] * V[:, cols]).sum(-1), rtol=1e-13)
    stacked = jnp.stack([rows] * 4).at[2, 9].set(6)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"sampled_product: rows\[9\] \(vmapped element 2\) = 6 is out of range \[0, 6\)"):
        jax.block_until_ready(jax.jit(jax.vmap(lj.sampled_product))(U, V, stacked, jnp.stack([cols] * 4)))


@needs_ffi
def test_vmap_reads_shared_operands_in_place(monkeypatch):
    """Operands vmap does not batch (a factor shared by every element, one pattern for all) are
    read in place, never copied per element, and every mix of batched and shared operands gives
    the callback path's values."""
    rng = np.random.default_rng(8)
    size, m, n, r, nnz = 5, 40, 30, 6, 50
    U = jnp.asarray(rng.standard_normal((size, m, r)))
    V = jnp.asarray(rng.standard_normal((size, n, r)))
    rows = jnp.asarray(rng.integers(0, m, (size, nnz)), jnp.int32)
    cols = jnp.asarray(rng.integers(0, n, (size, nnz)), jnp.int32)
    vals = jnp.asarray(rng.standard_normal((size, nnz)))
    U0, V0 = jnp.asarray(U[0]), jnp.asarray(V[0])
    over_patterns = jax.vmap(lambda r_, c_: lj.sampled_product(U0, V0, r_, c_))
    call = [line for line in jax.jit(over_patterns).lower(rows, cols).as_text().splitlines()
            if "custom_call @lowrank_hpc_sampled_product" in line]
    # U reaches the handler as (1, m, r), never broadcast to one copy per element
    assert len(call) == 1 and f"tensor<1x{m}x{r}x" in call[0] and f"tensor<{size}x{m}x{r}x" not in call[0]
    cases = [(over_patterns, (rows, cols)),
             (jax.vmap(lambda U_: lj.sampled_product(U_, V[0], rows[0], cols[0])), (U,)),
             (jax.vmap(lambda U_, c_: lj.sampled_product(U_, V[1], rows[1], c_)), (U, cols)),
             (jax.vmap(lambda v, B: lj.sparse_times_dense(rows[0], cols[0], v, B, m)), (vals, V)),
             (jax.vmap(lambda r_, v: lj.sparse_times_dense(r_, cols[2], v, V[2], m)), (rows, vals)),
             (jax.vmap(lambda c_, v: lj.sparse_times_dense(rows[3], c_, v, U[3], n, transpose=True)), (cols, vals))]
    for function, args in cases:
        by_ffi, by_callback = both_paths(monkeypatch, function, *args)
        np.testing.assert_array_equal(by_ffi, by_callback)


TOP_K_CASES = [("row", 4), ("global", 37)]


@needs_ffi
@pytest.mark.parametrize("mode, k", TOP_K_CASES)
def test_xla_calls_the_top_k_handler_on_the_cpu(mode, k):
    """float32/float64 top-k runs the CPU module's handler (no host callback); 16-bit factors the
    callback (the handler takes what the host BLAS multiplies)."""
    U, V = jnp.ones((6, 3)), jnp.ones((8, 3))
    select = jax.jit(lambda U, V: lj.kernel_product(U, V, "tanh", k, top_k_mode=mode))
    text = select.lower(U, V).as_text()
    assert f"lowrank_hpc_top_k_{'rows' if mode == 'row' else 'global'}" in text and "callback" not in text
    text = select.lower(U.astype(jnp.bfloat16), V.astype(jnp.bfloat16)).as_text()
    assert "lowrank_hpc_top_k" not in text and "callback" in text


@needs_ffi
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("kernel", ["identity", "relu", "exp", "tanh"])
@pytest.mark.parametrize("mode, k", TOP_K_CASES + [("row", 150), ("global", 20_000)])
@pytest.mark.parametrize("order", ["magnitude", "position"])
def test_top_k_matches_callback_and_numpy(monkeypatch, dtype, kernel, mode, k, order):
    """The handler's entries and values are the callback's bit for bit (both the tiled products
    on one BLAS thread), and in float64 with few kept the entries are numpy's float64 ranking
    (Gaussian factors: no two of the best within rounding; relu's exact zeros left to the
    callback comparison)."""
    rng = np.random.default_rng(k)
    # Several tiles and blocks, and rows enough that ops takes its tiles (8 an OpenMP thread) on
    # any machine: its numpy GEMM for fewer may differ in the last bit (the module's docstring).
    m, n, r = max(190, 8 * (os.cpu_count() or 1) + 3), 151, 7
    U = jnp.asarray(rng.standard_normal((m, r)) * 0.3, dtype)
    V = jnp.asarray(rng.standard_normal((n, r)) * 0.3, dtype)
    select = lambda U, V: tuple(lj.kernel_product(U, V, kernel, k, top_k_mode=mode, top_k_order=order))
    by_ffi, by_callback = both_paths(monkeypatch, select, U, V)
    for got, expected in zip(by_ffi, by_callback):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    if dtype != jnp.float64 or k > 40 or kernel == "relu":
        return
    K = np.asarray(U, np.float64) @ np.asarray(V, np.float64).T
    K = {"identity": K, "relu": np.maximum(K, 0), "exp": np.exp(K), "tanh": np.tanh(K)}[kernel]
    if mode == "row":
        expected = np.argsort(-np.abs(K), axis=1, kind="stable")[:, :k]
        got = np.asarray(by_ffi[1])
        if order == "position":
            expected = np.sort(expected, axis=1)
        np.testing.assert_array_equal(got, expected)
    else:
        flat = np.argsort(-np.abs(K).reshape(-1), kind="stable")[:k]
        got = np.asarray(by_ffi[1]).astype(np.int64) * n + np.asarray(by_ffi[2])
        np.testing.assert_array_equal(got, flat if order == "magnitude" else np.sort(flat))


@needs_ffi
@pytest.mark.parametrize("mode", ["row", "global"])
def test_top_k_overflow_through_the_handler(monkeypatch, mode):
    """exp overflowing float32 is ops.kernel_product's FloatingPointError text, its count filled
    in, in XLA's error: the same as the callback's."""
    rng = np.random.default_rng(5)
    U = jnp.asarray(rng.standard_normal((50, 4)), jnp.float32).at[3, 0].set(100.0)
    V = jnp.asarray(rng.standard_normal((40, 4)), jnp.float32).at[2, 0].set(100.0)
    overflowed = int(np.sum(np.asarray(U, np.float64) @ np.asarray(V, np.float64).T > np.log(np.finfo(np.float32).max)))
    message = rf"kernel_product: exponential kernel overflowed: {overflowed} entries of exp\(U V\^T\) are inf in float32"
    for ffi in (True, False):
        monkeypatch.setattr(lj, "_FFI", ffi)
        with pytest.raises(jax.errors.JaxRuntimeError, match=message):
            jax.block_until_ready(jax.jit(lambda U, V: lj.kernel_product(U, V, "exp", 3, top_k_mode=mode))(U, V))


@pytest.fixture
def top_k_configuration():
    """The CPU module's top-k configuration, put back as lowrank_hpc.jax set it after the test."""
    module = lowrank_hpc._backend.cpu_kernels()
    yield module
    module.jax_ffi_configure_top_k(lowrank_hpc._backend.tile_gemm_address(np.float32),
                                   lowrank_hpc._backend.tile_gemm_address(np.float64),
                                   list(lowrank_hpc._backend.openblas_thread_controls()))


@needs_ffi
@pytest.mark.parametrize("mode, k", TOP_K_CASES)
def test_top_k_handler_without_blas_thread_controls_or_gemm(monkeypatch, top_k_configuration, mode, k):
    """Where threadpoolctl finds no OpenBLAS the handler gets no thread controls and still runs
    (exact GEMMs here: half-integer factors, the same entries whatever the BLAS threads do);
    without a GEMM it refuses with a message, never a call through a null address."""
    rng = np.random.default_rng(6)
    U = jnp.asarray(rng.integers(-3, 4, (30, 3)) * 0.5, jnp.float64)
    V = jnp.asarray(rng.integers(-3, 4, (20, 3)) * 0.5, jnp.float64)
    select = lambda U, V: tuple(lj.kernel_product(U, V, "tanh", k, top_k_mode=mode))
    top_k_configuration.jax_ffi_configure_top_k(lowrank_hpc._backend.tile_gemm_address(np.float32),
                                                lowrank_hpc._backend.tile_gemm_address(np.float64), [])
    by_ffi, by_callback = both_paths(monkeypatch, select, U, V)
    for got, expected in zip(by_ffi, by_callback):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    top_k_configuration.jax_ffi_configure_top_k(0, 0, [])
    with pytest.raises(jax.errors.JaxRuntimeError, match="kernel_product: no host GEMM"):
        jax.block_until_ready(jax.jit(lambda U, V: select(U, V))(U, V))


@needs_ffi
def test_top_k_handlers_put_the_blas_threads_back():
    """OpenBLAS runs on one thread inside the handlers (as in ops' scope) and on as many as before
    once they end, after a single call and after a vmap of many."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
              if info["user_api"] == "blas"]
    rng = np.random.default_rng(7)
    U = jnp.asarray(rng.standard_normal((4, 60, 5)), jnp.float32)
    V = jnp.asarray(rng.standard_normal((4, 50, 5)), jnp.float32)
    for mode, k in TOP_K_CASES:
        jax.block_until_ready(jax.jit(lambda U, V: lj.kernel_product(U, V, "tanh", k, top_k_mode=mode))(U[0], V[0]))
        jax.block_until_ready(jax.jit(jax.vmap(lambda U, V: lj.kernel_product(U, V, "tanh", k, top_k_mode=mode),
                                               in_axes=(0, None)))(U, V[0]))
    after = [(info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info()
             if info["user_api"] == "blas"]
    assert after == before
