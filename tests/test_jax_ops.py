"""lowrank_hpc.jax: values and gradients against jax.numpy transcriptions, check_grads (float64,
reverse mode, orders 1 and 2), jit, and the errors. Skipped without jax (optional extra)."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import lowrank_hpc.jax as lj  # noqa: E402

JNP_KERNELS = {"identity": lambda x: x, "relu": jax.nn.relu, "exponential": jnp.exp, "tanh": jnp.tanh,
               "piecewise_linear": lambda x: jnp.clip(x, -1, 1)}


pytestmark = pytest.mark.usefixtures("jax_x64")


def problem(seed=0, m=7, n=6, r=3, nnz=12):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    rows[1], cols[1] = rows[0], cols[0]  # a repeated position
    return (jnp.asarray(rng.standard_normal((m, r))), jnp.asarray(rng.standard_normal((n, r))), jnp.asarray(rows),
            jnp.asarray(cols), jnp.asarray(rng.standard_normal(nnz)))


def order_free(values):
    """A smooth function of the kept values that does not depend on their order (the sort by
    |f| may swap two entries under check_grads' perturbation)."""
    return (values ** 3).sum() + values.sum()


def cases():
    U, V, rows, cols, vals = problem()
    m, n = U.shape[0], V.shape[0]
    yield ("sampled_product", lambda U, V: lj.sampled_product(U, V, rows, cols),
           lambda U, V: (U[rows] * V[cols]).sum(1), (U, V))
    yield ("sparse_times_dense", lambda v, B: lj.sparse_times_dense(rows, cols, v, B, m),
           lambda v, B: jnp.zeros((m, B.shape[1])).at[rows].add(v[:, None] * B[cols]), (vals, V))
    yield ("sparse_times_dense_T", lambda v, B: lj.sparse_times_dense(rows, cols, v, B, n, transpose=True),
           lambda v, B: jnp.zeros((n, B.shape[1])).at[cols].add(v[:, None] * B[rows]), (vals, U))
    yield "lowrank_product", lj.lowrank_product, lambda U, V: U @ V.T, (U, V)
    for kernel, f in JNP_KERNELS.items():
        scaled = (0.4 * U, V)
        yield f"kernel_{kernel}", lambda U, V, k=kernel: lj.kernel_product(U, V, k), lambda U, V, f=f: f(U @ V.T), scaled

        def rows_top(U, V, k=kernel):
            return order_free(lj.kernel_product(U, V, k, 2).values)

        def rows_reference(U, V, k=kernel, f=f):
            K = f(U @ V.T)
            indices = jnp.argsort(-jnp.abs(jax.lax.stop_gradient(K)), axis=1, stable=True)[:, :2]
            return order_free(jnp.take_along_axis(K, indices, axis=1))

        def global_top(U, V, k=kernel):
            return order_free(lj.kernel_product(U, V, k, 9, top_k_mode="global").values)

        def global_reference(U, V, f=f):
            K = f(U @ V.T).reshape(-1)
            return order_free(K[jnp.argsort(-jnp.abs(jax.lax.stop_gradient(K)), stable=True)[:9]])

        if kernel in ("tanh", "relu"):  # the top-k path is one for every kernel; f' is tested above
            yield f"top_k_rows_{kernel}", rows_top, rows_reference, scaled
            yield f"top_k_global_{kernel}", global_top, global_reference, scaled


CASES = [case[0] for case in cases()]
SECOND_ORDER = ("sampled_product", "sparse_times_dense", "kernel_tanh", "top_k_global_tanh")


@pytest.mark.parametrize("label", CASES)
def test_values_gradients_and_check_grads(label):
    _, ours, plain, args = next(case for case in cases() if case[0] == label)
    np.testing.assert_allclose(ours(*args), plain(*args), rtol=1e-12, atol=1e-12)
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(ours(*a))), argnums=(0, 1))(*args)
    expected = jax.grad(lambda *a: jnp.sum(jnp.sin(plain(*a))), argnums=(0, 1))(*args)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-12)
    check_grads(ours, args, order=2 if label in SECOND_ORDER else 1, modes=["rev"], eps=1e-6)


def test_top_k_indices_and_jit():
    U, V, rows, cols, _ = problem()
    K = np.tanh(np.asarray(U) @ np.asarray(V).T)
    top = lj.kernel_product(U, V, "tanh", 3)
    np.testing.assert_array_equal(top.indices, np.argsort(-np.abs(K), axis=1, kind="stable")[:, :3])
    flat = np.argsort(-np.abs(K).reshape(-1), kind="stable")[:5]
    top = lj.kernel_product(U, V, "tanh", 5, top_k_mode="global")
    np.testing.assert_array_equal(np.asarray(top.rows) * V.shape[0] + np.asarray(top.cols), flat)
    top = lj.kernel_product(U, V, "tanh", 5, top_k_mode="global", top_k_order="position")
    np.testing.assert_array_equal(np.asarray(top.rows) * V.shape[0] + np.asarray(top.cols), np.sort(flat))
    np.testing.assert_allclose(top.values, K.reshape(-1)[np.sort(flat)], rtol=1e-14)

    @jax.jit
    def loss_grad(U, V):
        def loss(U, V):
            return (jnp.sum(lj.sampled_product(U, V, rows, cols) ** 2)
                    + jnp.sum(lj.kernel_product(U, V, "relu", 4, top_k_mode="global").values))
        return jax.grad(loss, argnums=(0, 1))(U, V)

    def reference(U, V):
        K = jax.nn.relu(U @ V.T).reshape(-1)
        kept = jnp.argsort(-jax.lax.stop_gradient(K), stable=True)[:4]
        return jnp.sum(((U[rows] * V[cols]).sum(1)) ** 2) + jnp.sum(K[kept])

    for g, e in zip(loss_grad(U, V), jax.grad(reference, argnums=(0, 1))(U, V)):
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-12)


def test_dense_kernel_product_is_one_xla_computation_and_propagates_nan():
    """The dense products are XLA's alone (f fused into the GEMM's pass; a host callback copied
    the m x n result twice), so NaN/inf propagate there as in jax.numpy and in the sparse
    products; top-k cannot rank them and raises."""
    U, V, rows, cols, vals = problem()
    for kernel in JNP_KERNELS:
        for dtype in (jnp.float32, jnp.bfloat16):
            jaxpr = str(jax.make_jaxpr(lambda U, V, k=kernel: lj.kernel_product(U, V, k))(U.astype(dtype),
                                                                                     V.astype(dtype)))
            assert "callback" not in jaxpr, (kernel, dtype)
    U = U.at[1, 1].set(jnp.nan)
    dense = np.asarray(jax.jit(lambda U, V: lj.kernel_product(U, V, "exp"))(U, V))
    np.testing.assert_array_equal(np.isnan(dense).any(axis=1), np.arange(U.shape[0]) == 1)
    np.testing.assert_allclose(np.delete(dense, 1, axis=0), np.exp(np.delete(np.asarray(U), 1, 0) @ np.asarray(V).T),
                               rtol=1e-14)
    sampled = np.asarray(lj.sampled_product(U, V, rows, cols))
    np.testing.assert_array_equal(np.isnan(sampled), np.asarray(rows) == 1)
    # (eagerly, the FFI handler's error may come as the ValueError jax makes of it: lowrank_hpc.jax's docstring)
    with pytest.raises((FloatingPointError, jax.errors.JaxRuntimeError, ValueError), match="NaN/inf"):
        jax.block_until_ready(lj.kernel_product(U, V, "tanh", 2))
    # f overflowing the format is inf, as jnp.exp gives (float16: exp(x) > 65504 from x = 11.1)
    ones = jnp.ones((2, 1), jnp.float16)
    overflowed = np.asarray(lj.kernel_product(ones * 3.5, ones * 3.5, "exp"))  # exp(12.25)
    assert overflowed.dtype == np.float16 and np.isposinf(overflowed).all()


def test_float32():
    U, V, rows, cols, _ = problem()
    U32, V32 = U.astype(jnp.float32), V.astype(jnp.float32)
    out = lj.sampled_product(U32, V32, rows.astype(jnp.int32), cols.astype(jnp.int32))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, (U[rows] * V[cols]).sum(1), rtol=1e-5, atol=1e-6)


def test_errors_name_the_argument():
    U, V, rows, cols, vals = problem()
    with pytest.raises(TypeError, match="sampled_product: U must be a float32, float64, float16 or bfloat16 array, "
                                        "got int32"):
        lj.sampled_product(U.astype(jnp.int32), V, rows, cols)
    with pytest.raises(TypeError, match="sampled_product: V is bfloat16 but U is float16"):
        lj.sampled_product(U.astype(jnp.float16), V.astype(jnp.bfloat16), rows, cols)
    with pytest.raises(TypeError, match="sampled_product: V is float32 but U is float64"):
        lj.sampled_product(U, V.astype(jnp.float32), rows, cols)
    with pytest.raises(TypeError, match="sampled_product: cols must be an integer array"):
        lj.sampled_product(U, V, rows, cols.astype(jnp.float64))
    with pytest.raises(ValueError, match="sparse_times_dense: vals has length 11 but rows has 12"):
        lj.sparse_times_dense(rows, cols, vals[:11], V, 7)
    with pytest.raises(ValueError, match="kernel_product: unknown kernel 'rbf'"):
        lj.kernel_product(U, V, "rbf")
    with pytest.raises(ValueError, match="kernel_product: top_k_order must be one of"):
        lj.kernel_product(U, V, "relu", 3, top_k_order="value")
    with pytest.raises(ValueError, match=r"top_k must satisfy 1 <= top_k <= 42 in global mode, got 43"):
        lj.kernel_product(U, V, "relu", 43, top_k_mode="global")


def test_empty_index_arrays_give_empty_results_and_zero_gradients():
    U, V, *_ = problem()
    empty = jnp.zeros(0, jnp.int64)
    assert lj.sampled_product(U, V, empty, empty).shape == (0,)
    grad_U, grad_V = jax.grad(lambda U, V: lj.sampled_product(U, V, empty, empty).sum(), argnums=(0, 1))(U, V)
    np.testing.assert_array_equal(grad_U, np.zeros(U.shape))
    np.testing.assert_array_equal(grad_V, np.zeros(V.shape))
    product = lj.sparse_times_dense(empty, empty, jnp.zeros(0), V, 7)
    np.testing.assert_array_equal(product, np.zeros((7, V.shape[1])))


def test_sizes_and_counts_are_checked_not_truncated():
    U, V, rows, cols, vals = problem()
    with pytest.raises(TypeError, match="kernel_product: top_k must be an int, got float 2.5"):
        lj.kernel_product(U, V, "tanh", 2.5)
    with pytest.raises(TypeError, match="kernel_product: top_k must be an int, got bool"):
        lj.kernel_product(U, V, "tanh", True)
    with pytest.raises(TypeError, match="sparse_times_dense: n_rows must be an int, got float 2.9"):
        lj.sparse_times_dense(rows, cols, vals, V, 2.9)
    with pytest.raises(ValueError, match="sparse_times_dense: n_rows must be >= 1, got -1"):
        lj.sparse_times_dense(rows, cols, vals, V, -1)


def test_top_k_options_are_checked_without_top_k():
    """A misspelt top_k_mode or top_k_order with top_k=None returned the dense product, silently."""
    U, V = jnp.ones((3, 2)), jnp.ones((4, 2))
    with pytest.raises(ValueError, match=r"top_k_mode must be one of \('row', 'global'\), got 'col'"):
        lj.kernel_product(U, V, "tanh", top_k_mode="col")
    with pytest.raises(ValueError, match=r"top_k_order must be one of \('magnitude', 'position'\), got 'xx'"):
        lj.kernel_product(U, V, "tanh", top_k_order="xx")
