"""lowrank_hpc.torch's vmap rules for the dense products (_ops._vmap_lowrank, _vmap_kernel,
_vmap_top_k_rows, _vmap_top_k_global): values against plain torch and against loops of the
operator, every in_dims combination, 2-D and 3-D elements, no elements, two levels of vmap,
per-sample gradients, one kernel call per vmap (a shared factor read in place, or for top-k
broadcast to one batched call; the per-element loop where that copy is large), and the
operator's own errors. Skipped without torch."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

import lowrank_hpc.torch as lt  # noqa: E402
from lowrank_hpc import ops  # noqa: E402
from lowrank_hpc.ops import _factors as factor_rules  # noqa: E402
from lowrank_hpc.torch import _ops  # noqa: E402

B, OWN, M, N, R = 5, 2, 4, 3, 2  # vmapped elements, an element's own batch (3-D elements), its shape
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-13)}
# Plain-torch transcriptions of the kernels, the references.
TORCH_KERNELS = {"identity": lambda x: x, "relu": torch.relu, "exponential": torch.exp, "tanh": torch.tanh,
                 "piecewise_linear": lambda x: torch.clamp(x, -1, 1)}
# (in_dims of U, of V): None is a factor shared by every element.
IN_DIMS = [(0, 0), (1, 1), (0, 1), (0, None), (1, None), (None, 0), (None, 1)]


def _operand(shape, dim, size, dtype, generator):
    """A factor of element shape ``shape`` with ``size`` elements stacked at dim (None: one element)."""
    if dim is None:
        return torch.randn(*shape, generator=generator, dtype=dtype)
    return torch.randn(size, *shape, generator=generator, dtype=dtype).movedim(0, dim)


def _factors(dims, own=(), size=B, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    U = _operand((*own, M, R), dims[0], size, dtype, generator) * scale
    V = _operand((*own, N, R), dims[1], size, dtype, generator) * scale
    return U, V


def _element(x, dim, b):
    return x if dim is None else x.select(dim, b)


def _dense(U, V, kernel="identity"):
    return TORCH_KERNELS[kernel](U @ V.transpose(-1, -2))


def _record(monkeypatch, *names):
    """Each call of the core's ``ops.<name>`` (the operators' kernels) as (name, args, result)."""
    calls = []
    for name in names:
        original = getattr(ops, name)

        def recorded(*args, _name=name, _original=original, **kwargs):
            result = _original(*args, **kwargs)
            calls.append((_name, args, result))
            return result

        monkeypatch.setattr(ops, name, recorded)
    return calls


def _address(array) -> int:
    return array.__array_interface__["data"][0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("own", [(), (OWN,)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("dims", IN_DIMS, ids=str)
def test_lowrank_product_under_vmap_is_one_call_equal_to_plain_torch(monkeypatch, dims, own, dtype):
    U, V = _factors(dims, own, dtype=dtype)
    calls = _record(monkeypatch, "lowrank_product")
    got = torch.func.vmap(lt.lowrank_product, in_dims=dims)(U, V)
    monkeypatch.undo()
    assert len(calls) == 1  # all B elements in one kernel call (the fallback made B)
    expected = torch.stack([_element(U, dims[0], b) @ _element(V, dims[1], b).transpose(-1, -2) for b in range(B)])
    assert got.shape == (B, *own, M, N) and got.dtype == dtype
    torch.testing.assert_close(got, expected, **TOL[dtype])
    torch.testing.assert_close(got, torch.func.vmap(_dense, in_dims=dims)(U, V), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("own", [(), (OWN,)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("dims", [(0, 0), (1, None), (None, 1)], ids=str)
@pytest.mark.parametrize("kernel", ops.KERNELS)
def test_kernel_product_under_vmap_is_one_call_equal_to_plain_torch(monkeypatch, kernel, dims, own, dtype):
    assert set(TORCH_KERNELS) == set(ops.KERNELS)  # a new kernel needs its reference here
    U, V = _factors(dims, own, dtype=dtype, seed=1)
    calls = _record(monkeypatch, "kernel_product")
    got = torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, kernel), in_dims=dims)(U, V)
    monkeypatch.undo()
    assert len(calls) == 1
    expected = torch.stack([_dense(_element(U, dims[0], b), _element(V, dims[1], b), kernel) for b in range(B)])
    assert got.shape == (B, *own, M, N)
    torch.testing.assert_close(got, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype, unit_roundoff", [(torch.float16, 2.0**-11), (torch.bfloat16, 2.0**-8)], ids=str)
def test_low_precision_under_vmap_is_rounded_once(dtype, unit_roundoff):
    """float16/bfloat16 elements: summed in float32 and rounded once, as without vmap (within two
    units of the format's roundoff of the float64 product of the same 16-bit factors)."""
    U, V = _factors((0, None), dtype=dtype, seed=2)
    U64, V64 = U.double(), V.double()
    tolerance = dict(rtol=2 * unit_roundoff, atol=1e-6)
    product = torch.func.vmap(lt.lowrank_product, in_dims=(0, None))(U, V)
    assert product.dtype == dtype
    torch.testing.assert_close(product.double(), _dense(U64, V64), **tolerance)
    tanh = torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "tanh"), in_dims=(None, 0))(V, U)  # V shared
    assert tanh.dtype == dtype
    torch.testing.assert_close(tanh.double(), _dense(V64, U64, "tanh"), **tolerance)


def test_a_shared_factor_is_read_in_place_and_the_result_not_copied(monkeypatch):
    """U batched, V shared: one 2-D call on the elements' rows (B*m, r) with V's own memory (the
    rule must not expand V to B copies). V batched, U shared: U's memory, and the vmapped result
    is the kernel's (m, B*n) output itself (out dim 1), not a copy."""
    U, V = _factors((0, None))
    calls = _record(monkeypatch, "lowrank_product", "kernel_product")
    torch.func.vmap(lt.lowrank_product, in_dims=(0, None))(U, V)
    torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "relu"), in_dims=(0, None))(U, V)
    torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "tanh", 2), in_dims=(0, None))(U, V)
    for name, (U_in, V_in, *_), _ in calls:
        assert U_in.shape == (B * M, R) and V_in.shape == (N, R), name
        assert _address(V_in) == V.data_ptr(), name
    assert [name for name, _, _ in calls] == ["lowrank_product", "kernel_product", "kernel_product"]
    calls.clear()
    U3, V3 = _factors((1, None), (OWN,))  # 3-D elements: the elements' rows within each own-batch entry
    got = torch.func.vmap(lt.lowrank_product, in_dims=(1, None))(U3, V3)
    rows = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2)), in_dims=(1, None))(U3, V3)
    for _, (U_in, V_in, *_), _ in calls:
        assert U_in.shape == (OWN, B * M, R) and V_in.shape == (OWN, N, R) and _address(V_in) == V3.data_ptr()
    assert len(calls) == 2
    torch.testing.assert_close(got, _dense(U3.movedim(1, 0), V3), **TOL[torch.float64])
    for b in range(B):
        expected = lt.kernel_product(U3[:, b], V3, "tanh", 2)
        assert torch.equal(rows[0][b], expected.values) and torch.equal(rows[1][b], expected.indices)
    calls.clear()
    V_batched = _factors((None, 0))[1]
    U_shared = U[0]
    got = torch.func.vmap(lt.lowrank_product, in_dims=(None, 0))(U_shared, V_batched)
    ((_, (U_in, V_in), result),) = calls
    assert U_in.shape == (M, R) and V_in.shape == (B * N, R) and _address(U_in) == U_shared.data_ptr()
    assert got.data_ptr() == _address(result)
    torch.testing.assert_close(got, _dense(U_shared, V_batched), **TOL[torch.float64])


@pytest.mark.parametrize("order", ops.TOP_K_ORDERS)
@pytest.mark.parametrize("dims", IN_DIMS, ids=str)
def test_top_k_rows_under_vmap_equals_each_element_exactly(monkeypatch, dims, order):
    """Row top-k is row by row: with V shared one call over the elements' rows, with both batched
    one batched call, with only V batched one batched call on U broadcast. Half-integer factors
    make every GEMM exact (and tie many entries): each element's values and indices bit for bit,
    whichever GEMM kernel the stacked rows take."""
    U, V = (torch.round(x * 2) / 2 for x in _factors(dims, dtype=torch.float32, seed=3, scale=2.0))
    calls = _record(monkeypatch, "kernel_product")
    values, indices = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2, top_k_order=order)),
                                      in_dims=dims)(U, V)
    monkeypatch.undo()
    assert len(calls) == 1
    assert values.shape == indices.shape == (B, M, 2) and indices.dtype == torch.int64
    for b in range(B):
        expected = lt.kernel_product(_element(U, dims[0], b), _element(V, dims[1], b), "tanh", 2, top_k_order=order)
        assert torch.equal(values[b], expected.values) and torch.equal(indices[b], expected.indices)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("m,r,n", [(1, 8, 5), (1, 17, 33), (3, 8, 33), (5, 17, 100)])
def test_top_k_rows_with_V_shared_within_rounding_of_each_element(dtype, m, r, n):
    """The stacked rows (B*m, r) may take another GEMM kernel than an element's (m, r) (one row
    per sample, edge tiles): the values agree within the product's rounding, not bit for bit
    (a reviewer's shapes; 1 ulp seen here)."""
    generator = torch.Generator().manual_seed(0)
    U = torch.randn(6, m, r, generator=generator, dtype=dtype)
    V = torch.randn(n, r, generator=generator, dtype=dtype)
    values, _ = torch.func.vmap(lambda u: tuple(lt.kernel_product(u, V, "identity", 2)))(U)
    for b in range(6):
        exact = (U[b].double() @ V.double().T).abs().topk(2, dim=-1).values
        torch.testing.assert_close(values[b].abs().double(), exact, **TOL[dtype])


@pytest.mark.parametrize("dims", [(0, 0), (1, 0), (1, None), (None, 1)], ids=str)
def test_top_k_global_under_vmap_equals_each_element_exactly(monkeypatch, dims):
    """One batched call, a shared factor broadcast to the elements."""
    U, V = (torch.round(x * 2) / 2 for x in _factors(dims, dtype=torch.float32, seed=4, scale=2.0))
    calls = _record(monkeypatch, "kernel_product")
    got = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "relu", 5, top_k_mode="global")),
                          in_dims=dims)(U, V)
    monkeypatch.undo()
    assert len(calls) == 1
    assert [x.shape for x in got] == [(B, 5)] * 3
    for b in range(B):
        expected = lt.kernel_product(_element(U, dims[0], b), _element(V, dims[1], b), "relu", 5, top_k_mode="global")
        for part, want in zip(got, expected):
            assert torch.equal(part[b], want)


# Top-k with a shared factor, (mode, in_dims): row top-k's U and global top-k's U or V broadcast
# to one batched call; row top-k's V read in place (3-D elements too: (b, B*m, r) against V).
SHARED_TOP_K = [("row", (None, 0)), ("row", (None, 1)), ("row", (1, None)), ("global", (None, 1)),
                ("global", (0, None))]


def _top_k(mode, kernel="tanh", order="magnitude"):
    k = 2 if mode == "row" else 5
    return lambda U_, V_: tuple(lt.kernel_product(U_, V_, kernel, k, top_k_mode=mode, top_k_order=order))


def _no_loop(*args):
    raise AssertionError("the per-element loop ran where the vmap rule should make one call")


def _quarter_factors(dims, own=(), dtype=torch.float64, seed=0):
    """Factors of multiples of 1/4 (|x| about 1/2): exact products in float32 too (so the batched call
    and each element's own call select the same entries, ties included), tanh not saturated."""
    return tuple(torch.round(x * 4) / 4 for x in _factors(dims, own, dtype=dtype, seed=seed, scale=0.5))


def _looped(top_k, U, V, dims):
    """Each element's own call: its results, its gradients of sum(values^2) wrt (U, V), and those
    summed as autograd through vmap sums them (a shared factor's over the elements)."""
    results, per_element = [], []
    summed = [torch.zeros_like(U), torch.zeros_like(V)]
    for b in range(B):
        u, v = (_element(x, d, b).clone().requires_grad_() for x, d in zip((U, V), dims))
        results.append(top_k(u, v))
        per_element.append(torch.autograd.grad(results[-1][0].square().sum(), (u, v)))
        for total, grad, d in zip(summed, per_element[-1], dims):
            if d is None:
                total += grad
            else:
                total.select(d, b).copy_(grad)
    return results, per_element, summed


@pytest.mark.parametrize("kernel", ["tanh", "relu"])
@pytest.mark.parametrize("order", ops.TOP_K_ORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("own", [(), (OWN,)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("mode,dims", SHARED_TOP_K, ids=str)
def test_top_k_with_a_shared_factor_under_vmap_is_one_call_equal_to_a_loop(monkeypatch, mode, dims, own, dtype,
                                                                           order, kernel):
    """One kernel call (the per-element loop made to fail), each element's values and indices bit
    for bit, and the gradients of both factors (the shared one summed over the elements by the
    broadcast's backward) through torch.autograd and per sample through vmap(grad) equal to each
    element's own call's."""
    U, V = _quarter_factors(dims, own, dtype, seed=10)
    top_k = _top_k(mode, kernel, order)
    monkeypatch.setattr(_ops, "_by_element", _no_loop)
    calls = _record(monkeypatch, "kernel_product")
    leaves = [x.clone().requires_grad_() for x in (U, V)]
    got = torch.func.vmap(top_k, in_dims=dims)(*leaves)
    assert len(calls) == 1
    grads = torch.autograd.grad(got[0].square().sum(), leaves)
    per_sample = torch.func.vmap(torch.func.grad(lambda U_, V_: top_k(U_, V_)[0].square().sum(), argnums=(0, 1)),
                                 in_dims=dims)(U, V)
    monkeypatch.undo()
    k = 2 if mode == "row" else 5
    assert [x.shape for x in got] == [(B, *own, M, k) if mode == "row" else (B, *own, k)] * len(got)
    results, per_element, summed = _looped(top_k, U, V, dims)
    for b in range(B):
        for part, want in zip(got, results[b]):
            assert torch.equal(part[b], want)
        for per, want in zip(per_sample, per_element[b]):
            torch.testing.assert_close(per[b], want, **TOL[dtype])
    for grad, want in zip(grads, summed):
        torch.testing.assert_close(grad, want, **TOL[dtype])


def test_a_broadcast_copy_is_bounded_by_the_limit_or_the_batched_factor():
    """_broadcast_is_small at its edges (meta tensors: shapes only, no memory): B copies of the
    shared factor up to BROADCAST_COPY_LIMIT bytes, or up to the batched factor's own bytes."""
    rows = factor_rules.BROADCAST_COPY_LIMIT // (4 * R)  # a float32 (rows, R) factor of the limit's bytes
    shared = torch.empty(rows, R, device="meta")
    small = torch.empty(2, 1, R, device="meta")
    assert _ops._broadcast_is_small(shared, small, 1)
    assert not _ops._broadcast_is_small(shared, small, 2)
    assert _ops._broadcast_is_small(shared, torch.empty(2, rows, R, device="meta"), 2)
    assert not _ops._broadcast_is_small(shared, torch.empty(2, rows - 1, R, device="meta"), 2)
    assert not _ops._broadcast_is_small(shared.double(), torch.empty(2, 1, R, dtype=torch.float64, device="meta"), 1)


@pytest.mark.parametrize("own", [(), (OWN,)], ids=["2-D", "3-D"])
@pytest.mark.parametrize("mode,dims,swap,looped", [("row", (None, 0), False, True), ("global", (None, 1), False, True),
                                                   ("global", (0, None), True, True),
                                                   ("global", (0, None), False, False)], ids=str)
def test_a_large_broadcast_copy_runs_the_loop_with_the_same_results(monkeypatch, mode, dims, swap, looped, own):
    """BROADCAST_COPY_LIMIT 0: a shared factor larger than the batched one (U's M = 4 rows against
    V's N = 3; swap: V of 4 rows shared, U of 3 batched) goes back to the loop, one kernel call per
    element, with the one call's results and gradients; one no larger stays one call."""
    U, V = _quarter_factors(dims[::-1] if swap else dims, own, seed=11)
    if swap:
        U, V = V, U
    top_k = _top_k(mode)
    monkeypatch.setattr(factor_rules, "BROADCAST_COPY_LIMIT", 0)
    calls = _record(monkeypatch, "kernel_product")
    leaves = [x.clone().requires_grad_() for x in (U, V)]
    got = torch.func.vmap(top_k, in_dims=dims)(*leaves)
    grads = torch.autograd.grad(got[0].square().sum(), leaves)
    monkeypatch.undo()
    assert len(calls) == (B if looped else 1)
    results, _, summed = _looped(top_k, U, V, dims)
    one_call = torch.func.vmap(top_k, in_dims=dims)(U, V)
    for b in range(B):
        for part, want, other in zip(got, results[b], one_call):
            assert torch.equal(part[b], want) and torch.equal(other[b], want)
    for grad, want in zip(grads, summed):
        torch.testing.assert_close(grad, want, **TOL[torch.float64])


@pytest.mark.parametrize("dims", [(0, 0), (0, None), (None, 0)], ids=str)
def test_no_elements_and_one_element(dims):
    """B = 0: empty results of the elements' result shape (the kernels refuse empty factors);
    B = 1: the single element's results."""
    for own in ((), (OWN,)):
        U, V = _factors(dims, own, size=0)
        assert torch.func.vmap(lt.lowrank_product, in_dims=dims)(U, V).shape == (0, *own, M, N)
        assert torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "exp"), in_dims=dims)(U, V).shape == \
            (0, *own, M, N)
        U, V = _factors(dims, own, size=1)
        U1, V1 = _element(U, dims[0], 0), _element(V, dims[1], 0)
        torch.testing.assert_close(torch.func.vmap(lt.lowrank_product, in_dims=dims)(U, V)[0], _dense(U1, V1),
                                   **TOL[torch.float64])
        torch.testing.assert_close(torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "exp"), in_dims=dims)(U, V),
                                   _dense(U1, V1, "exponential").unsqueeze(0), **TOL[torch.float64])
    for own in ((), (OWN,)):  # 3-D elements with V shared: the rows stacked against V in place
        U, V = _factors(dims, own, size=0)
        rows = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2)), in_dims=dims)(U, V)
        assert [(x.shape, x.dtype) for x in rows] == [((0, *own, M, 2), torch.float64), ((0, *own, M, 2), torch.int64)]
        top = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 3, top_k_mode="global")),
                              in_dims=dims)(U, V)
        assert [(x.shape, x.dtype) for x in top] == [((0, *own, 3), torch.float64)] + [((0, *own, 3), torch.int64)] * 2
    U, V = _factors(dims, size=1)
    U1, V1 = _element(U, dims[0], 0), _element(V, dims[1], 0)
    for mode, k in (("row", 2), ("global", 3)):
        got = torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", k, top_k_mode=mode)),
                              in_dims=dims)(U, V)
        for part, want in zip(got, lt.kernel_product(U1, V1, "tanh", k, top_k_mode=mode)):
            assert torch.equal(part[0], want)


def test_two_levels_of_vmap_are_one_call(monkeypatch):
    """vmap of vmap: the inner rule's one call is the outer level's operator call, whose rule makes
    it one kernel call for all outer x inner elements, whichever factor each level batches."""
    generator = torch.Generator().manual_seed(5)
    outer, inner = 3, B
    U = torch.randn(outer, inner, M, R, generator=generator, dtype=torch.float64)
    V = torch.randn(outer, inner, N, R, generator=generator, dtype=torch.float64)
    calls = _record(monkeypatch, "lowrank_product", "kernel_product")
    both = torch.func.vmap(torch.func.vmap(lt.lowrank_product))(U, V)
    # inner level batches U only, outer level V only: result[i, j] = U[0, j] @ V[i, 0]^T
    crossed = torch.func.vmap(torch.func.vmap(lambda U_, V_: lt.kernel_product(U_, V_, "tanh"), in_dims=(0, None)),
                              in_dims=(None, 0))(U[0], V[:, 0])
    rows = torch.func.vmap(torch.func.vmap(lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2)),
                                           in_dims=(0, None)), in_dims=(0, None))(U, V[0, 0])
    monkeypatch.undo()
    assert [name for name, _, _ in calls] == ["lowrank_product", "kernel_product", "kernel_product"]
    for i in range(outer):
        for j in range(inner):
            torch.testing.assert_close(both[i, j], _dense(U[i, j], V[i, j]), **TOL[torch.float64])
            torch.testing.assert_close(crossed[i, j], _dense(U[0, j], V[i, 0], "tanh"), **TOL[torch.float64])
            expected = lt.kernel_product(U[i, j], V[0, 0], "tanh", 2)
            assert torch.equal(rows[0][i, j], expected.values) and torch.equal(rows[1][i, j], expected.indices)


def _losses():
    weights = torch.linspace(-1, 1, M * N, dtype=torch.float64).reshape(M, N)
    return {
        "lowrank_product": lambda U, V: (lt.lowrank_product(U, V) * weights).square().sum(),
        "kernel_tanh": lambda U, V: (lt.kernel_product(U, V, "tanh") * weights).sum(),
        "kernel_exponential": lambda U, V: (lt.kernel_product(U, V, "exp") * weights).sum(),
        "top_k_rows": lambda U, V: lt.kernel_product(U, V, "tanh", 2).values.square().sum(),
        "top_k_global": lambda U, V: lt.kernel_product(U, V, "relu", 5, top_k_mode="global").values.square().sum(),
    }


@pytest.mark.parametrize("dims", [(0, 0), (0, None), (None, 1)], ids=str)
@pytest.mark.parametrize("case", list(_losses()))
def test_per_sample_gradients_by_vmap_of_grad_equal_a_loop_of_autograd(case, dims):
    loss = _losses()[case]
    U, V = _factors(dims, seed=6)
    per_sample = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=dims)(U, V)
    for b in range(B):
        U1, V1 = (_element(x, d, b).detach().clone().requires_grad_(True) for x, d in zip((U, V), dims))
        expected = torch.autograd.grad(loss(U1, V1), (U1, V1))
        torch.testing.assert_close(per_sample[0][b], expected[0], **TOL[torch.float64])
        torch.testing.assert_close(per_sample[1][b], expected[1], **TOL[torch.float64])


@pytest.mark.parametrize("dims", [(0, 0), (1, None), (None, 0)], ids=str)
def test_grad_of_a_vmapped_function_equals_plain_torch_autograd(dims):
    """torch.func.grad through the rules (each call of the rule is recorded by autograd) against
    torch.autograd of the same math in plain torch, for the dense products and the row top-k."""
    U, V = _factors(dims, (OWN,), seed=7)

    def dense(product):
        return lambda U_, V_: torch.func.vmap(product, in_dims=dims)(U_, V_).sin().sum()

    def plain(U_, V_):  # the same loss in plain torch: the elements' products stacked
        elements = [(_element(U_, dims[0], b), _element(V_, dims[1], b)) for b in range(B)]
        return (torch.stack([_dense(u, v) for u, v in elements]).sin().sum()
                + torch.stack([_dense(u, v, "tanh") for u, v in elements]).sin().sum())

    def ours(U_, V_):
        return (dense(lt.lowrank_product)(U_, V_)
                + dense(lambda u, v: lt.kernel_product(u, v, "tanh"))(U_, V_))

    got = torch.func.grad(ours, argnums=(0, 1))(U, V)
    leaves = [x.detach().clone().requires_grad_(True) for x in (U, V)]
    expected = torch.autograd.grad(plain(*leaves), leaves)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    # row top-k (2-D elements): against a loop of the operator under torch.autograd
    U2, V2 = _factors(dims, seed=8)

    def top_k(U_, V_):
        values = torch.func.vmap(lambda u, v: lt.kernel_product(u, v, "tanh", 2).values, in_dims=dims)(U_, V_)
        return values.square().sum()

    got = torch.func.grad(top_k, argnums=(0, 1))(U2, V2)
    leaves = [x.detach().clone().requires_grad_(True) for x in (U2, V2)]
    looped = sum(lt.kernel_product(_element(leaves[0], dims[0], b), _element(leaves[1], dims[1], b), "tanh", 2)
                 .values.square().sum() for b in range(B))
    for a, b in zip(got, torch.autograd.grad(looped, leaves)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def _message(call):
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    return type(caught.value), str(caught.value)


@pytest.mark.parametrize("size", [B, 0])
@pytest.mark.parametrize("dims", [(0, 0), (0, None), (None, 0)], ids=str)
def test_a_wrong_shape_under_vmap_raises_the_operators_error(dims, size):
    """Each element's shapes are checked as the operator checks them, before the elements are
    flattened into one problem (which would take a wrong rank or a 3-D element with a 2-D one)."""
    generator = torch.Generator().manual_seed(9)
    cases = [((M, R), (N, R + 1)), ((OWN, M, R), (N, R)), ((OWN, M, R), (OWN + 1, N, R)), ((M,), (N, R))]
    for shape_U, shape_V in cases:
        U, V = (_operand(s, d, size, torch.float64, generator) for s, d in zip((shape_U, shape_V), dims))
        U1, V1 = torch.zeros(shape_U, dtype=torch.float64), torch.zeros(shape_V, dtype=torch.float64)
        products = [lt.lowrank_product, lambda U_, V_: lt.kernel_product(U_, V_, "tanh")]
        if len(shape_U) == len(shape_V) == 2:
            products += [lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2)),
                         lambda U_, V_: tuple(lt.kernel_product(U_, V_, "tanh", 2, top_k_mode="global"))]
        for product in products:
            eager = _message(lambda: product(U1, V1))
            assert _message(lambda: torch.func.vmap(product, in_dims=dims)(U, V)) == eager, (shape_U, shape_V)
    U, V = _factors(dims, size=size)
    for mode, k in (("row", N + 1), ("global", M * N + 1)):
        def top_k(U_, V_):
            return tuple(lt.kernel_product(U_, V_, "tanh", k, top_k_mode=mode))

        eager = _message(lambda: top_k(_element(U, dims[0], 0) if size else torch.zeros(M, R, dtype=torch.float64),
                                       torch.zeros(N, R, dtype=torch.float64)))
        assert _message(lambda: torch.func.vmap(top_k, in_dims=dims)(U, V)) == eager
    assert _message(lambda: torch.func.vmap(lt.lowrank_product, in_dims=dims)(U.float(), V)) == \
        _message(lambda: lt.lowrank_product(torch.zeros(M, R), torch.zeros(N, R, dtype=torch.float64)))


def _half_integers(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, shape, generator=generator).to(torch.float64) / 2


@pytest.mark.parametrize("mode,k", [("row", 2), ("global", 5)])
@pytest.mark.parametrize("order", ops.TOP_K_ORDERS)
def test_top_k_of_a_batch_is_each_problems_own_with_its_gradients(mode, k, order):
    """The top-k operators take a batch (b, m, r), (b, n, r): each problem's own selection (values
    and indices bit for bit on exact half-integer products) and gradients (the block-diagonal
    backward) equal to each problem's own call."""
    U, V = _half_integers((3, M, R), 5), _half_integers((3, N, R), 6)
    U.requires_grad_()
    V.requires_grad_()
    got = lt.kernel_product(U, V, "tanh", k, top_k_mode=mode, top_k_order=order)
    assert all(x.shape == ((3, M, k) if mode == "row" else (3, k)) for x in got)
    grads = torch.autograd.grad((got.values ** 2).sum(), (U, V))
    for b in range(3):
        own = lt.kernel_product(U[b], V[b], "tanh", k, top_k_mode=mode, top_k_order=order)
        for part, want in zip(got, own):
            assert torch.equal(part[b], want)
        own_grads = torch.autograd.grad((own.values ** 2).sum(), (U, V))
        torch.testing.assert_close(grads[0][b], own_grads[0][b], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(grads[1][b], own_grads[1][b], rtol=1e-12, atol=1e-13)
    distinct = (torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True),  # no near-ties: gradcheck's steps
                torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(lambda U_, V_: lt.kernel_product(U_, V_, "tanh", k, top_k_mode=mode).values,
                                    distinct)
    op = torch.ops.lowrank_hpc.kernel_top_k_rows if mode == "row" else torch.ops.lowrank_hpc.kernel_top_k_global
    assert set(torch.library.opcheck(op, (U, V, "relu", k)).values()) == {"SUCCESS"}


def test_a_batch_of_mismatched_problems_is_refused():
    U, V = torch.randn(3, M, R), torch.randn(2, N, R)
    with pytest.raises(ValueError, match=r"kernel_product: U has shape \(3, 4, 2\) and V has shape \(2, 3, 2\)"):
        lt.kernel_product(U, V, "relu", 2)
    with pytest.raises(ValueError, match=r"top_k must satisfy 1 <= top_k <= 12 in global mode, got 13"):
        lt.kernel_product(U, V[:1].expand(3, N, R), "relu", 13, top_k_mode="global")


@pytest.mark.parametrize("mode,k", [("row", 2), ("global", 4)])
def test_per_sample_gradients_through_top_k_with_both_factors_batched(monkeypatch, mode, k):
    """vmap(grad) over an ensemble (both factors batched): one kernel call for the selection,
    and each element's gradients equal to a loop of torch.autograd.grad."""
    U, V = _half_integers((B, M, R), 7), _half_integers((B, N, R), 8)

    def loss(U_, V_):
        return (lt.kernel_product(U_, V_, "tanh", k, top_k_mode=mode).values ** 2).sum()

    calls = _record(monkeypatch, "kernel_product")
    got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)))(U, V)
    monkeypatch.undo()
    assert len(calls) == 1
    for b in range(B):
        u, v = U[b].clone().requires_grad_(), V[b].clone().requires_grad_()
        expected = torch.autograd.grad(loss(u, v), (u, v))
        torch.testing.assert_close(got[0][b], expected[0], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got[1][b], expected[1], rtol=1e-12, atol=1e-13)
