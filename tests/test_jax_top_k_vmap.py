"""lowrank_hpc.jax's top-k under vmap, by its XLA FFI handlers and by the host callback: every
element in one call (the "expand_dims" method), equal to the elements' own calls, for every mix
of batched and shared factors, both modes and orders, nested vmap and per-element gradients.
Skipped without jax."""
from __future__ import annotations

import itertools
import tracemalloc

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="jax is not installed (optional extra: pip install lowrank_hpc[jax])")

import jax.numpy as jnp  # noqa: E402

import lowrank_hpc.jax as lj  # noqa: E402
from lowrank_hpc import ops  # noqa: E402

pytestmark = pytest.mark.usefixtures("jax_x64")


@pytest.fixture(autouse=True, params=["ffi", "callback"])
def path(request, monkeypatch):
    """Each test on both paths: the CPU module's top-k handlers (float32/float64 on XLA's CPU), and
    the host callback around lowrank_hpc.ops that other dtypes and devices take."""
    if request.param == "ffi" and not lj._FFI:
        pytest.skip("this build has no JAX FFI handlers")
    monkeypatch.setattr(lj, "_FFI", lj._FFI and request.param == "ffi")
    return request.param

MODES = (("row", 3), ("global", 7))


def factors(seed, batch, m=6, n=5, r=3, dtype=np.float64):
    """Half-integer factors: every GEMM exact (the stacked rows of a vmap with V shared may take
    another GEMM kernel than one element's), so the elements' own calls agree bit for bit."""
    rng = np.random.default_rng(seed)
    return (jnp.asarray((rng.integers(-3, 4, (batch, m, r)) * 0.5).astype(dtype)),
            jnp.asarray((rng.integers(-3, 4, (batch, n, r)) * 0.5).astype(dtype)))


def top_k(U, V, kernel, k, mode, order):
    return tuple(lj.kernel_product(U, V, kernel, k, top_k_mode=mode, top_k_order=order))


@pytest.mark.parametrize("mode,k", MODES)
@pytest.mark.parametrize("order", ["magnitude", "position"])
@pytest.mark.parametrize("axes", [(0, 0), (0, None), (None, 0), (1, 0)])
def test_vmap_equals_each_elements_own_call(mode, k, order, axes):
    Us, Vs = factors(1, 4)
    U_in = jnp.moveaxis(Us, 0, axes[0]) if axes[0] is not None else Us[2]
    V_in = Vs if axes[1] is not None else Vs[1]
    got = jax.vmap(lambda U, V: top_k(U, V, "tanh", k, mode, order), in_axes=axes)(U_in, V_in)
    for b in range(4):
        U = Us[b] if axes[0] is not None else Us[2]
        V = Vs[b] if axes[1] is not None else Vs[1]
        expected = top_k(U, V, "tanh", k, mode, order)
        for g, e in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(g[b]), np.asarray(e))
        K = np.tanh(np.asarray(U) @ np.asarray(V).T)  # and against numpy, independent of the library
        if mode == "row" and order == "magnitude":
            np.testing.assert_array_equal(np.asarray(got[1][b]), np.argsort(-np.abs(K), axis=1, kind="stable")[:, :k])
            np.testing.assert_allclose(np.asarray(got[0][b]), np.take_along_axis(K, np.asarray(got[1][b]), 1),
                                       rtol=1e-14)


def test_vmap_is_one_host_call(monkeypatch, path):
    """The fallback ran one callback per element; removing vmap_method="expand_dims" fails this.
    Inside it one ops call, a small shared U broadcast (ops' rule; a large one: the test below)."""
    if path == "ffi":
        pytest.skip("counts the callback's calls into lowrank_hpc.ops")
    calls = []
    real = ops.kernel_product

    def counted(*args, **kwargs):
        calls.append(np.shape(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "kernel_product", counted)
    Us, Vs = factors(2, 5)
    for mode, k in MODES:
        calls.clear()
        jax.block_until_ready(jax.vmap(lambda U, V: top_k(U, V, "relu", k, mode, "magnitude"))(Us, Vs))
        assert calls == [(5, 6, 3)]
    calls.clear()  # row mode with V shared: the elements' rows as one (batch * m, r) factor
    jax.block_until_ready(jax.vmap(lambda U: top_k(U, Vs[0], "relu", 3, "row", "magnitude"))(Us))
    assert calls == [(30, 3)]
    for mode, k in MODES:  # U shared and small: copied per element into one batched call
        calls.clear()
        got = jax.vmap(lambda V: top_k(Us[0], V, "relu", k, mode, "magnitude"))(Vs)
        assert calls == [(5, 6, 3)]
        for b in range(5):
            for g, e in zip(got, top_k(Us[0], Vs[b], "relu", k, mode, "magnitude")):
                np.testing.assert_array_equal(np.asarray(g[b]), np.asarray(e))


def test_nested_vmap_and_no_elements():
    Us, Vs = factors(3, 6)
    U2, V2 = Us.reshape(2, 3, 6, 3), Vs.reshape(2, 3, 5, 3)
    for mode, k in MODES:
        got = jax.vmap(jax.vmap(lambda U, V: top_k(U, V, "exponential", k, mode, "magnitude")))(U2, V2)
        for a, b in itertools.product(range(2), range(3)):
            expected = top_k(U2[a, b], V2[a, b], "exponential", k, mode, "magnitude")
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(np.asarray(g[a, b]), np.asarray(e))
        got = jax.vmap(lambda U, V: top_k(U, V, "tanh", k, mode, "magnitude"))(Us[:0], Vs[:0])
        assert all(g.shape[0] == 0 for g in got)


def test_per_element_gradients_through_the_vmapped_top_k():
    Us, Vs = factors(4, 3)

    def loss(U, V):
        return jnp.sum(lj.kernel_product(U, V, "tanh", 4, top_k_mode="global").values ** 2)

    got = jax.vmap(jax.grad(loss, argnums=(0, 1)))(Us, Vs)
    for b in range(3):
        K = jnp.tanh(Us[b] @ Vs[b].T).reshape(-1)
        kept = jnp.argsort(-jnp.abs(jax.lax.stop_gradient(K)), stable=True)[:4]
        expected = jax.grad(lambda U, V: jnp.sum(jnp.tanh(U @ V.T).reshape(-1)[kept] ** 2),
                            argnums=(0, 1))(Us[b], Vs[b])
        for g, e in zip(got, expected):
            np.testing.assert_allclose(np.asarray(g[b]), np.asarray(e), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, jnp.bfloat16])
def test_vmap_in_other_precisions(dtype):
    Us, Vs = factors(5, 3, dtype=np.float32)
    Us, Vs = Us.astype(dtype), Vs.astype(dtype)
    got = jax.vmap(lambda U, V: top_k(U, V, "relu", 2, "row", "magnitude"))(Us, Vs)
    assert got[0].dtype == dtype and got[1].dtype == jnp.int32
    for b in range(3):
        for g, e in zip(got, top_k(Us[b], Vs[b], "relu", 2, "row", "magnitude")):
            np.testing.assert_array_equal(np.asarray(g[b]).astype(np.float64), np.asarray(e).astype(np.float64))


@pytest.mark.parametrize("mode,shared", [("global", "V"), ("row", "U")])
def test_a_shared_factor_is_not_copied_per_element(mode, shared, path):
    """The factor vmap does not batch is read in place (a reviewer's case: a broadcast copy made
    100-230 MB of host copies for 32 elements against a shared 3.2 MB factor): the callback's
    host allocations measured; the handler's call reads it as one (1, ...) operand (XLA's and the
    handler's memory is not Python's to measure)."""
    rng = np.random.default_rng(0)
    small = jnp.asarray(rng.standard_normal((32, 8, 16), dtype=np.float32))  # the batched factor
    large = jnp.asarray(rng.standard_normal((50_000, 16), dtype=np.float32))  # the shared one, 3.2 MB
    axes, args = ((0, None), (small, large)) if shared == "V" else ((None, 0), (large, small))
    fn = jax.jit(jax.vmap(lambda u, v: tuple(lj.kernel_product(u, v, "tanh", 2, top_k_mode=mode)), in_axes=axes))
    if path == "ffi":
        call = [line for line in fn.lower(*args).as_text().splitlines() if "custom_call @lowrank_hpc_top_k" in line]
        assert len(call) == 1 and "tensor<1x50000x16xf32>" in call[0] and "tensor<32x50000x16xf32>" not in call[0]
        return
    jax.block_until_ready(fn(*args))  # compiled outside the measurement
    tracemalloc.start()
    try:
        jax.block_until_ready(fn(*args))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result_bytes = sum(x.size * x.dtype.itemsize for x in fn(*args))  # row mode, U shared: 32 x 50,000 x 2 kept
    assert peak < 8 * large.size * large.dtype.itemsize + 4 * result_bytes  # a copy per element: 32x the factor


@pytest.mark.parametrize("m,r,n", [(1, 8, 5), (1, 17, 33), (3, 8, 33), (5, 17, 100)])
def test_row_top_k_with_V_shared_within_rounding_of_each_element(m, r, n):
    """With V shared the elements' rows are one (B*m, r) factor, whose GEMM may round an entry
    differently from one element's (m, r) product by an ulp: equal within that."""
    rng = np.random.default_rng(1)
    U, V = jnp.asarray(rng.standard_normal((6, m, r))), jnp.asarray(rng.standard_normal((n, r)))
    values, _ = jax.vmap(lambda u: tuple(lj.kernel_product(u, V, "identity", 2)))(U)
    exact = -np.sort(-np.abs(np.asarray(U) @ np.asarray(V).T), axis=-1)[..., :2]
    np.testing.assert_allclose(np.abs(np.asarray(values)), exact, rtol=1e-12)
