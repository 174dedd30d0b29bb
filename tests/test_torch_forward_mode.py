"""lowrank_hpc.torch's forward mode: torch.func.jvp and torch.autograd.forward_ad tangents
against plain torch's, gradcheck with check_forward_ad (float64) on every operator, jacfwd equal
to jacrev, Hessians (forward over reverse) against plain torch's, forward mode of batched (3-D)
and vmapped calls, 16-bit tangents within the format's rounding, and forward mode inside
torch.compile. Skipped without torch."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

import torch.autograd.forward_ad as forward_ad  # noqa: E402

import lowrank_hpc.torch as lt  # noqa: E402
from test_torch_ops import CASES, _cases, leaves, problem  # noqa: E402

# torch.func.jvp's first call imports torch's jvp decompositions, which torch.jit.script (deprecated in 2.13).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def tangents_for(inputs, seed=5):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(x.shape, generator=generator, dtype=x.dtype) for x in inputs)


@pytest.mark.parametrize("label", CASES)
def test_jvp_equals_plain_torch_and_gradcheck_forward(label):
    """Every operator (the sparse products, lowrank_product, each kernel dense and in both top-k
    modes): torch.func.jvp and a forward_ad dual tensor give plain torch's tangent (the top-k
    selection held fixed), and gradcheck's forward-mode check passes."""
    _, ours, plain, inputs = next(case for case in _cases(*problem()) if case[0] == label)
    tangents = tangents_for(inputs)
    value, tangent = torch.func.jvp(ours, inputs, tangents)
    expected_value, expected_tangent = torch.func.jvp(plain, inputs, tangents)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-12, atol=1e-12)
    with forward_ad.dual_level():  # one input's tangent: the other's term is skipped
        dual = ours(forward_ad.make_dual(inputs[0], tangents[0]), inputs[1])
        only_first = forward_ad.unpack_dual(dual).tangent
    expected = torch.func.jvp(lambda a: plain(a, inputs[1]), (inputs[0],), (tangents[0],))[1]
    torch.testing.assert_close(only_first, expected, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(ours, leaves(*inputs), check_forward_ad=True)


@pytest.mark.parametrize("label", ["sampled_product", "sparse_times_dense_T", "kernel_tanh", "top_k_rows_relu",
                                   "top_k_global_exponential"])
def test_jacfwd_equals_jacrev_and_hessians_match_plain_torch(label):
    _, ours, plain, inputs = next(case for case in _cases(*problem()) if case[0] == label)
    for argnum in (0, 1):
        torch.testing.assert_close(torch.func.jacfwd(ours, argnums=argnum)(*inputs),
                                   torch.func.jacrev(ours, argnums=argnum)(*inputs), rtol=1e-12, atol=1e-12)

    def cubed(function):
        return lambda *a: (function(*a) ** 3).sum()

    got = torch.func.hessian(cubed(ours), argnums=(0, 1))(*inputs)
    expected = torch.func.hessian(cubed(plain), argnums=(0, 1))(*inputs)
    for got_row, expected_row in zip(got, expected):
        for g, e in zip(got_row, expected_row):
            torch.testing.assert_close(g, e, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("mode,k", [("row", 2), ("global", 5)])
def test_batched_top_k_and_vmapped_jvp(mode, k):
    """3-D (batched) top-k: each problem's kept values move by its own tangent; and jvp under
    vmap of the sparse products, V and the pattern shared."""
    generator = torch.Generator().manual_seed(3)
    Ub, Vb = (torch.randn(2, size, 3, generator=generator, dtype=torch.float64) for size in (7, 6))
    dUb, dVb = tangents_for((Ub, Vb))
    _, tangent = torch.func.jvp(lambda U, V: lt.kernel_product(U, V, "tanh", k, top_k_mode=mode).values,
                                (Ub, Vb), (dUb, dVb))
    full = torch.func.jvp(lambda U, V: torch.tanh(U @ V.mT), (Ub, Vb), (dUb, dVb))[1]
    kept = lt.kernel_product(Ub, Vb, "tanh", k, top_k_mode=mode)
    if mode == "row":
        expected = full.gather(2, kept.indices)
    else:
        expected = torch.stack([full[b, kept.rows[b], kept.cols[b]] for b in range(2)])
    torch.testing.assert_close(tangent, expected, rtol=1e-12, atol=1e-12)

    U, V, rows, cols, _ = problem()
    Us = torch.randn(4, *U.shape, generator=generator, dtype=torch.float64)
    dUs = torch.randn(Us.shape, generator=generator, dtype=torch.float64)

    def tangent_of(function):
        return torch.func.vmap(lambda U, dU: torch.func.jvp(lambda U: function(U, V, rows, cols), (U,), (dU,))[1])

    torch.testing.assert_close(tangent_of(lt.sampled_product)(Us, dUs),
                               tangent_of(lambda U, V, r, c: (U[r] * V[c]).sum(1))(Us, dUs), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_tangents_within_the_formats_rounding(dtype):
    """Each product term rounded once to the format, their sum once more: within 3 units of the
    format's roundoff of the float64 tangent's magnitude."""
    U, V, rows, cols, _ = problem(m=20, n=30, r=8, nnz=60)
    unit = torch.finfo(dtype).eps / 2
    half = [x.to(dtype) for x in (U, V, 0.5 * U, 0.5 * V)]
    U64, V64, dU64, dV64 = (x.double() for x in half)
    tangent = torch.func.jvp(lambda U, V: lt.sampled_product(U, V, rows, cols), tuple(half[:2]), tuple(half[2:]))[1]
    assert tangent.dtype == dtype
    exact = (dU64[rows] * V64[cols]).sum(1) + (U64[rows] * dV64[cols]).sum(1)
    size = (dU64[rows] * V64[cols]).abs().sum(1) + (U64[rows] * dV64[cols]).abs().sum(1)
    assert bool(((tangent.double() - exact).abs() <= 3 * unit * size + 1e-7).all())
    for kernel in ("tanh", "relu"):
        got = torch.func.jvp(lambda U, V: lt.kernel_product(U, V, kernel), tuple(half[:2]), tuple(half[2:]))[1]
        assert got.dtype == dtype
        x = U64 @ V64.T
        moved = dU64 @ V64.T + U64 @ dV64.T
        slope = 1 - torch.tanh(x) ** 2 if kernel == "tanh" else (x > 0).double()
        size = dU64.abs() @ V64.abs().T + U64.abs() @ dV64.abs().T
        assert bool(((got.double() - slope * moved).abs() <= 4 * unit * size + 1e-7).all())


def test_outside_forward_mode_the_operators_run_directly(monkeypatch):
    """Plain calls (no transform, no forward_ad level) still run the custom operator itself
    (what torch.compile traces), not the autograd.Function."""
    U, V, rows, cols, _ = problem()
    called = []
    real = torch.autograd.Function.apply.__func__
    monkeypatch.setattr(torch.autograd.Function, "apply",
                        classmethod(lambda cls, *a, **k: called.append(cls.__name__) or real(cls, *a, **k)))
    lt.sampled_product(U, V, rows, cols)
    assert called == []
    with forward_ad.dual_level():
        lt.sampled_product(forward_ad.make_dual(U, U), V, rows, cols)
    assert called and set(called) == {"sampled_product_function"}  # the call and its tangent's product


def test_forward_mode_through_torch_compile():
    """Under torch.compile a forward-mode level runs the operators eagerly (a graph break): the
    tangent of plain torch's compiled function, never a missing tangent; fullgraph=True refuses."""
    U, V, rows, cols, _ = problem()

    def loss(U, V):
        return (lt.sampled_product(U, V, rows, cols) ** 2).sum()

    def plain(U, V):
        return (((U[rows] * V[cols]).sum(1)) ** 2).sum()

    compiled = torch.compile(loss, backend="aot_eager")
    dU = torch.ones_like(U)
    with forward_ad.dual_level():
        got = forward_ad.unpack_dual(compiled(forward_ad.make_dual(U, dU), V)).tangent
    torch.testing.assert_close(got, torch.func.jvp(plain, (U, V), (dU, torch.zeros_like(V)))[1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(compiled(U, V), plain(U, V), rtol=1e-12, atol=1e-12)  # no level: the operator, traced

    def same_loss(U, V):  # a code object of its own: dynamo's cache holds loss's graph-broken frames
        return (lt.sampled_product(U, V, rows, cols) ** 2).sum()

    strict = torch.compile(same_loss, backend="aot_eager", fullgraph=True)
    with forward_ad.dual_level(), pytest.raises(Exception, match="forward mode|disable"):
        strict(forward_ad.make_dual(U, dU), V)
