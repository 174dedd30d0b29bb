"""float16/bfloat16 arrays through lowrank_hpc.jax: values and gradients against the exact
(float64) result of the same 16-bit inputs within one rounding of the format plus float32's
summation error (so a sum in 16 bits fails), the output dtypes, and jit. Skipped without jax."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402

import lowrank_hpc.jax as lj  # noqa: E402

import reference  # noqa: E402
from test_low_precision import F32_UNIT, UNIT, assert_one_rounding  # noqa: E402

HALVES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16}


def f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def problem(dtype, m=40, n=200, r=32, nnz=600, seed=0):
    rng = np.random.default_rng(seed)
    U = jnp.asarray(0.3 * rng.standard_normal((m, r)), dtype)
    V = jnp.asarray(0.3 * rng.standard_normal((n, r)), dtype)
    rows, cols = jnp.asarray(rng.integers(0, m, nnz)), jnp.asarray(rng.integers(0, n, nnz))
    return U, V, rows, cols, rng


def assert_rounded_twice(got, exact, magnitude, terms, half):
    """A product of an operand that was itself rounded once to the format (the backward's
    weighted gradient): that rounding, up to u of each term's size, added to one rounding."""
    got = f64(got)
    tiny = 2.0 ** -24 if half.name == "float16" else 0.0
    bound = UNIT[half.name] * (np.abs(exact) + magnitude) + 2 * terms * F32_UNIT * magnitude + tiny
    excess = np.abs(got - exact) - bound
    assert np.all(excess <= 0), f"worst excess {excess.max():.3g}"


def dense_problem(name, seed):
    """(dtype, U, V, rng, numpy 16-bit dtype, U and V in float64, |U| |V|^T)."""
    dtype = HALVES[name]
    U, V, _, _, rng = problem(dtype, seed=seed)
    U64, V64 = f64(U), f64(V)
    return dtype, U, V, rng, np.asarray(U).dtype, U64, V64, np.abs(U64) @ np.abs(V64).T


def assert_backward_gemms(grad_U, grad_V, weighted, U64, V64, half):
    """d U = G' V and d V = G'^T U for the weighted gradient G' (rounded once to the format)."""
    for got, exact, magnitude, terms in ((grad_U, weighted @ V64, np.abs(weighted) @ np.abs(V64), V64.shape[0]),
                                         (grad_V, weighted.T @ U64, np.abs(weighted).T @ np.abs(U64), U64.shape[0])):
        assert got.dtype == half
        assert_rounded_twice(got, exact, magnitude, terms, half)


@pytest.mark.parametrize("name", HALVES)
def test_sparse_operators_values_and_gradients(name):
    dtype = HALVES[name]
    U, V, rows, cols, rng = problem(dtype)
    half = np.asarray(U).dtype
    r_, c_ = np.asarray(rows), np.asarray(cols)
    out, vjp = jax.vjp(lambda U, V: lj.sampled_product(U, V, rows, cols), U, V)
    assert out.dtype == dtype
    assert_one_rounding(np.asarray(out), reference.sampled_product(f64(U), f64(V), r_, c_),
                        reference.sampled_product(np.abs(f64(U)), np.abs(f64(V)), r_, c_), 32, half)
    g = jnp.asarray(rng.standard_normal(r_.shape[0]), dtype)
    grad_U, grad_V = vjp(g)
    for got, other, n_rows, transpose in ((grad_U, V, 40, False), (grad_V, U, 200, True)):
        assert got.dtype == dtype
        exact = reference.sparse_times_dense(r_, c_, f64(g), f64(other), n_rows, transpose)
        magnitude = reference.sparse_times_dense(r_, c_, np.abs(f64(g)), np.abs(f64(other)), n_rows, transpose)
        assert_one_rounding(np.asarray(got), exact, magnitude, 600, half)

    vals = jnp.asarray(rng.standard_normal(r_.shape[0]), dtype)
    out, vjp = jax.vjp(lambda v, B: lj.sparse_times_dense(rows, cols, v, B, 40), vals, V)
    assert out.dtype == dtype and out.shape == (40, 32)
    assert_one_rounding(np.asarray(out), reference.sparse_times_dense(r_, c_, f64(vals), f64(V), 40),
                        reference.sparse_times_dense(r_, c_, np.abs(f64(vals)), np.abs(f64(V)), 40), 600, half)
    grad_out = jnp.asarray(rng.standard_normal((40, 32)), dtype)
    grad_vals, _ = vjp(grad_out)
    assert_one_rounding(np.asarray(grad_vals), reference.sampled_product(f64(grad_out), f64(V), r_, c_),
                        reference.sampled_product(np.abs(f64(grad_out)), np.abs(f64(V)), r_, c_), 32, half)


@pytest.mark.parametrize("name", HALVES)
def test_dense_products_sum_in_float32_and_round_once(name):
    dtype, U, V, rng, half, U64, V64, magnitude = dense_problem(name, seed=1)
    product = lj.lowrank_product(U, V)
    assert product.dtype == dtype
    assert_one_rounding(np.asarray(product), U64 @ V64.T, magnitude, 32, half)
    assert jnp.array_equal(lj.kernel_product(U, V), product)

    out, vjp = jax.vjp(lambda U, V: lj.kernel_product(U, V, "tanh"), U, V)
    assert out.dtype == dtype
    assert_one_rounding(np.asarray(out), np.tanh(U64 @ V64.T), magnitude, 32, half)
    g = jnp.asarray(rng.standard_normal(out.shape), dtype)
    grad_U, grad_V = vjp(g)
    weighted = f64(g) * (1 - f64(out) ** 2)  # f'(x) from y = f(x), as the backward takes it
    assert_backward_gemms(grad_U, grad_V, weighted, U64, V64, half)


@pytest.mark.parametrize("name", HALVES)
def test_top_k_values_and_gradients_under_jit(name):
    dtype, U, V, _, half, U64, V64, magnitude = dense_problem(name, seed=2)
    exact = np.tanh(U64 @ V64.T)

    @jax.jit
    def values_and_grads(U, V):
        def kept(U, V):
            return lj.kernel_product(U, V, "tanh", 5).values
        values, vjp = jax.vjp(kept, U, V)
        return values, lj.kernel_product(U, V, "tanh", 5).indices, vjp(jnp.ones_like(values))

    values, indices, (grad_U, grad_V) = values_and_grads(U, V)
    indices = np.asarray(indices)
    assert values.dtype == grad_U.dtype == grad_V.dtype == dtype
    taken = np.take_along_axis(exact, indices, axis=1)
    assert_one_rounding(np.asarray(values), taken, np.take_along_axis(magnitude, indices, axis=1), 32, half)
    # kept by |f| in float32: the 5th kept is at least every dropped entry, up to float32's error
    dropped = exact.copy()
    np.put_along_axis(dropped, indices, 0.0, axis=1)
    assert np.all(np.abs(taken).min(1) >= np.abs(dropped).max(1) - 64 * F32_UNIT * magnitude.max())
    weights = np.zeros_like(exact)
    np.put_along_axis(weights, indices, 1 - f64(values) ** 2, axis=1)
    assert_backward_gemms(grad_U, grad_V, weights, U64, V64, half)


def test_apply_kernel_rounds_float32_once_and_refuses_other_pairs():
    from lowrank_hpc import ops

    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    np.testing.assert_array_equal(ops.apply_kernel(x, "identity", np.float16), x.astype(np.float16))
    with pytest.raises(TypeError, match="apply_kernel: dtype must be float16 or bfloat16 for float32 K"):
        ops.apply_kernel(x.astype(np.float64), "tanh", np.float16)
    with pytest.raises(FloatingPointError, match=r"apply_kernel: .* 1 entries of exp\(K\) are inf in float16"):
        ops.apply_kernel(np.float32([1.0, 12.0]), "exponential", np.float16)


@pytest.mark.parametrize("name, just_below_one", [("bfloat16", 1 - 2.0 ** -8), ("float16", 1 - 2.0 ** -11)])
def test_piecewise_linear_slope_is_read_from_x_not_its_rounding(name, just_below_one):
    """As in the torch test: y rounds to 1 while x is inside (-1, 1), so d U = V."""
    dtype = HALVES[name]
    V = jnp.asarray([[1.0, just_below_one]], dtype)
    for forward in (lambda U: lj.kernel_product(U, V, "piecewise_linear"),
                    lambda U: lj.kernel_product(U, V, "piecewise_linear", 1).values,
                    lambda U: lj.kernel_product(U, V, "piecewise_linear", 1, top_k_mode="global").values):
        U = jnp.asarray([[0.5, 0.5]], dtype)
        assert float(forward(U).reshape(-1)[0]) == 1.0
        grad_U = jax.grad(lambda U, f=forward: f(U).astype(jnp.float32).sum())(U)
        np.testing.assert_array_equal(np.asarray(grad_U, np.float32), np.asarray(V, np.float32))
    grad_U = jax.grad(lambda U: lj.kernel_product(U, V, "piecewise_linear").astype(jnp.float32).sum())(
        jnp.asarray([[0.75, 0.75]], dtype))
    np.testing.assert_array_equal(np.asarray(grad_U, np.float32), [[0.0, 0.0]])
