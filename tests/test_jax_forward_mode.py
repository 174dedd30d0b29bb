"""lowrank_hpc.jax's forward-mode derivatives (jvp, jacfwd, hessian) on both paths (the XLA FFI
handlers and the host callback): tangents against jax.numpy transcriptions, jacfwd equal to
jacrev, Hessians against jnp's, check_grads in both modes to order 2, forward mode under vmap
with shared operands, reverse mode of a vmapped call with a shared factor (its cotangent summed
over the elements), vmap over no elements, 16-bit tangents within the format's rounding, and
the memory a held pullback of the dense product keeps. Skipped without jax."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import lowrank_hpc.jax as lj  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")

from test_jax_ops import JNP_KERNELS as KERNELS, SECOND_ORDER, cases  # noqa: E402
from test_jax_ops import problem as ops_problem  # noqa: E402


@pytest.fixture(autouse=True, params=["ffi", "callback"])
def path(request, monkeypatch):
    if request.param == "ffi" and not lj._FFI:
        pytest.skip("this build has no JAX FFI handlers")
    monkeypatch.setattr(lj, "_FFI", lj._FFI and request.param == "ffi")
    return request.param


def problem(seed=0, m=7, n=6, r=3, nnz=15):
    """test_jax_ops' problem (a repeated position) and a generator for tangents."""
    return (*ops_problem(seed, m, n, r, nnz), np.random.default_rng(seed + 1000))


def sampled_reference(U, V, rows, cols):
    return (U[rows] * V[cols]).sum(-1)


def spmm_reference(rows, cols, vals, B, n_rows, transpose=False):
    out, inner = (cols, rows) if transpose else (rows, cols)
    return jnp.zeros((n_rows, B.shape[1]), B.dtype).at[out].add(vals[:, None] * B[inner])


CASES = [case[0] for case in cases()]


@pytest.mark.parametrize("label", CASES)
def test_jvp_matches_jnp_and_jacfwd_equals_jacrev(label):
    _, ours, plain, args = next(case for case in cases() if case[0] == label)
    rng = np.random.default_rng(11)
    tangents = tuple(jnp.asarray(rng.standard_normal(a.shape)) for a in args)
    value, tangent = jax.jvp(ours, args, tangents)
    expected_value, expected_tangent = jax.jvp(plain, args, tangents)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tangent, expected_tangent, rtol=1e-12, atol=1e-12)
    # one argument's tangent at a time (the other a symbolic zero)
    for i in range(2):
        only = jax.jvp(lambda a: ours(*(a if j == i else args[j] for j in range(2))), (args[i],), (tangents[i],))[1]
        exact = jax.jvp(lambda a: plain(*(a if j == i else args[j] for j in range(2))), (args[i],), (tangents[i],))[1]
        np.testing.assert_allclose(only, exact, rtol=1e-12, atol=1e-12)
    for i in range(2):
        np.testing.assert_allclose(jax.jacfwd(ours, argnums=i)(*args), jax.jacrev(ours, argnums=i)(*args),
                                   rtol=1e-12, atol=1e-12)
    check_grads(ours, args, order=2 if label in SECOND_ORDER else 1, modes=["fwd", "rev"], eps=1e-6)


@pytest.mark.parametrize("kernel", ["tanh", "relu", "identity"])
@pytest.mark.parametrize("mode,k", [("row", 2), ("global", 9)])
def test_top_k_jvp_holds_the_selection(kernel, mode, k):
    """The kept values' tangent is f'(x) (dU_i . V_j + U_i . dV_j) at the kept (i, j); the
    indices' tangents are float0 zeros."""
    U, V, _, _, _, rng = problem(1)
    U = 0.4 * U
    dU, dV = jnp.asarray(rng.standard_normal(U.shape)), jnp.asarray(rng.standard_normal(V.shape))
    value, tangent = jax.jvp(lambda U, V: tuple(lj.kernel_product(U, V, kernel, k, top_k_mode=mode)), (U, V), (dU, dV))
    f = KERNELS[kernel]
    x, dx = U @ V.T, dU @ V.T + U @ dV.T
    slope = jax.jvp(f, (x,), (dx,))[1]
    if mode == "row":
        kept = np.asarray(value[1])
        np.testing.assert_allclose(tangent[0], np.take_along_axis(np.asarray(slope), kept, axis=1), rtol=1e-12,
                                   atol=1e-12)
    else:
        np.testing.assert_allclose(tangent[0], np.asarray(slope)[np.asarray(value[1]), np.asarray(value[2])],
                                   rtol=1e-12, atol=1e-12)
    assert all(t.dtype == jax.dtypes.float0 for t in tangent[1:])

    def order_free(U, V):
        return (lj.kernel_product(U, V, kernel, k, top_k_mode=mode).values ** 3).sum()
    for forward, reverse in zip(jax.jacfwd(order_free, argnums=(0, 1))(U, V),
                                jax.jacrev(order_free, argnums=(0, 1))(U, V)):
        np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)
    if kernel == "tanh":
        check_grads(order_free, (U, V), order=2, modes=["fwd", "rev"], eps=1e-6)


def test_hessian_of_a_completion_loss_matches_jnp():
    """hessian = jacfwd(jacrev): forward mode over the reverse-mode products."""
    U, V, rows, cols, vals, _ = problem(2, m=5, n=4, r=2, nnz=9)

    def loss(U, V, product):
        return 0.5 * ((product(U, V, rows, cols) - vals) ** 2).sum() + 0.1 * (U ** 2).sum() * (V ** 2).sum()

    ours = jax.hessian(lambda U, V: loss(U, V, lj.sampled_product), argnums=(0, 1))(U, V)
    plain = jax.hessian(lambda U, V: loss(U, V, sampled_reference), argnums=(0, 1))(U, V)
    for got_row, expected_row in zip(ours, plain):
        for got, expected in zip(got_row, expected_row):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)


def test_forward_and_reverse_mode_under_vmap_with_shared_operands():
    """vmap over U with V and the pattern shared, over the patterns with the factors shared:
    jvp of the vmapped call, vmap of jvp, and the gradient of a vmapped loss in the shared V
    (each element's cotangent summed)."""
    U, V, rows, cols, vals, rng = problem(3)
    Us = jnp.asarray(rng.standard_normal((4,) + U.shape))
    dUs = jnp.asarray(rng.standard_normal(Us.shape))
    dV = jnp.asarray(rng.standard_normal(V.shape))
    batched = jax.vmap(lambda U, V: lj.sampled_product(U, V, rows, cols), in_axes=(0, None))
    expected = jax.vmap(lambda U, V: sampled_reference(U, V, rows, cols), in_axes=(0, None))
    got = jax.jvp(batched, (Us, V), (dUs, dV))
    want = jax.jvp(expected, (Us, V), (dUs, dV))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    per_element = jax.vmap(lambda U, dU: jax.jvp(lambda U, V: lj.sampled_product(U, V, rows, cols), (U, V),
                                                 (dU, dV))[1])(Us, dUs)
    np.testing.assert_allclose(per_element, want[1], rtol=1e-12, atol=1e-12)
    grad_V = jax.grad(lambda V: (batched(Us, V) ** 2).sum())(V)
    np.testing.assert_allclose(grad_V, jax.grad(lambda V: (expected(Us, V) ** 2).sum())(V), rtol=1e-12, atol=1e-12)

    patterns = jnp.asarray(np.stack([rng.permutation(np.asarray(rows)) for _ in range(3)]))
    by_pattern = jax.vmap(lambda r, v, B: lj.sparse_times_dense(r, cols, v, B, U.shape[0]), in_axes=(0, None, None))
    expected = jax.vmap(lambda r, v, B: spmm_reference(r, cols, v, B, U.shape[0]), in_axes=(0, None, None))
    dvals = jnp.asarray(rng.standard_normal(vals.shape))
    got = jax.jvp(by_pattern, (patterns, vals, V), (np.zeros(patterns.shape, jax.dtypes.float0), dvals, dV))
    want = jax.jvp(expected, (patterns, vals, V), (np.zeros(patterns.shape, jax.dtypes.float0), dvals, dV))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    grads = jax.grad(lambda v, B: (by_pattern(patterns, v, B) ** 2).sum(), argnums=(0, 1))(vals, V)
    wanted = jax.grad(lambda v, B: (expected(patterns, v, B) ** 2).sum(), argnums=(0, 1))(vals, V)
    for g, w in zip(grads, wanted):
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_jvp_under_jit_is_the_kernels_not_a_dense_product():
    """A forward-mode tangent is two more sampled products (no m x n array in the program)."""
    U, V, rows, cols, _, _ = problem(4, m=300, n=200, r=4, nnz=50)
    jitted = jax.jit(lambda U, V, dU, dV: jax.jvp(lambda U, V: lj.sampled_product(U, V, rows, cols), (U, V), (dU, dV)))
    text = str(jax.make_jaxpr(jitted)(U, V, U, V))
    assert text.count("lowrank_hpc_sampled_product") == 3, text
    assert "300,200" not in text.replace(" ", "")
    value, tangent = jitted(U, V, 2 * U, -V)
    np.testing.assert_allclose(tangent, sampled_reference(2 * U, V, rows, cols) - sampled_reference(U, V, rows, cols),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_16_bit_tangents_within_the_formats_rounding(dtype):
    """Each product term rounded once to the format, their sum once more: within 3 units of the
    format's roundoff of the float64 tangent's magnitude."""
    U, V, rows, cols, vals, rng = problem(5, m=20, n=30, r=8, nnz=60)
    unit = float(jnp.finfo(dtype).eps) / 2
    half = [x.astype(dtype) for x in (U, V, 0.5 * U, 0.5 * V)]
    U64, V64, dU64, dV64 = (np.asarray(x, np.float64) for x in half)
    tangent = jax.jvp(lambda U, V: lj.sampled_product(U, V, rows, cols), tuple(half[:2]), tuple(half[2:]))[1]
    assert tangent.dtype == dtype
    r_, c_ = np.asarray(rows), np.asarray(cols)
    exact = (dU64[r_] * V64[c_]).sum(1) + (U64[r_] * dV64[c_]).sum(1)
    size = (np.abs(dU64[r_] * V64[c_]).sum(1) + np.abs(U64[r_] * dV64[c_]).sum(1))
    assert np.all(np.abs(np.asarray(tangent, np.float64) - exact) <= 3 * unit * size + 1e-7)
    for kernel in ("tanh", "relu"):
        got = jax.jvp(lambda U, V: lj.kernel_product(U, V, kernel), tuple(half[:2]), tuple(half[2:]))[1]
        assert got.dtype == dtype
        x = U64 @ V64.T
        dx = dU64 @ V64.T + U64 @ dV64.T
        slope = 1 - np.tanh(x) ** 2 if kernel == "tanh" else (x > 0).astype(float)
        size = np.abs(dU64) @ np.abs(V64).T + np.abs(U64) @ np.abs(dV64).T
        assert np.all(np.abs(np.asarray(got, np.float64) - slope * dx) <= 4 * unit * size + 1e-7)


def test_vmap_over_no_elements():
    """vmap over 0 elements (the shared operands' count 1): empty results, zero gradients and
    empty tangents, as jax.numpy gives."""
    _, V, rows, cols, vals, _ = problem(6)
    none = jnp.zeros((0, 7, 3))
    assert jax.vmap(lambda U: lj.sampled_product(U, V, rows, cols))(none).shape == (0, rows.shape[0])
    assert jax.jit(jax.vmap(lambda v: lj.sparse_times_dense(rows, cols, v, V, 7)))(
        jnp.zeros((0,) + vals.shape)).shape == (0, 7, 3)
    grad = jax.grad(lambda V: jax.vmap(lambda U: lj.kernel_product(U, V, "tanh", 2).values)(none).sum())(V)
    np.testing.assert_array_equal(grad, np.zeros(V.shape))
    _, tangent = jax.jvp(jax.vmap(lambda U: lj.sampled_product(U, V, rows, cols)), (none,), (none,))
    assert tangent.shape == (0, rows.shape[0])
    nested = jax.vmap(jax.vmap(lambda U: lj.sampled_product(U, V, rows, cols)))(jnp.zeros((1, 0, 7, 3)))
    assert nested.shape == (1, 0, rows.shape[0])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kernel", ["tanh", "relu", "exponential"])
def test_a_held_pullback_of_the_dense_product_keeps_only_its_output(dtype, kernel):
    """jax.vjp of the dense kernel_product holds the m x n output and no m x n f' beside it (f' is
    formed again from the output when the pullback runs)."""
    import gc

    rng = np.random.default_rng(7)
    U = jnp.asarray(0.3 * rng.standard_normal((600, 4)), dtype)
    V = jnp.asarray(0.3 * rng.standard_normal((500, 4)), dtype)
    gc.collect()
    before = sum(x.nbytes for x in jax.live_arrays())
    out, pullback = jax.vjp(lambda U, V: lj.kernel_product(U, V, kernel), U, V)
    jax.block_until_ready(out)
    gc.collect()
    held = sum(x.nbytes for x in jax.live_arrays()) - before
    assert held < out.nbytes + 4 * (U.nbytes + V.nbytes), (held, out.nbytes)
    grad_U, _ = pullback(jnp.ones_like(out))
    y = np.asarray(out, np.float64)  # f' read from y, as the pullback reads it
    slope = {"tanh": 1 - y ** 2, "relu": (y > 0) * 1.0, "exponential": y}[kernel]
    V64 = np.asarray(V, np.float64)
    # the weighted gradient and the GEMM's result rounded once each, its float32 sum of 500 terms
    bound = 3 * float(jnp.finfo(dtype).eps) / 2 + 500 * 2.0 ** -24
    assert np.all(np.abs(np.asarray(grad_U, np.float64) - slope @ V64) <= bound * (np.abs(slope) @ np.abs(V64)))
