"""Audit of lowrank_hpc.torch and lowrank_hpc.optim: each test pins a defect found there, against
an independent reference (plain torch, or the published Adafactor formulas in numpy)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from lowrank_hpc import torch as lt  # noqa: E402
from lowrank_hpc.optim import adafactor_step  # noqa: E402
from lowrank_hpc.torch import KernelizedLoRA  # noqa: E402


def _adafactor_first_step_at(p, g, t):
    """torch.optim.Adafactor's step t from zero moments (float64 numpy): R = w rowmean(G^2),
    C = w colmean(G^2), w = t^-0.8; U = G / sqrt(max(R C / max(mean R, eps), eps^2))."""
    p, g = p.astype(np.float64), g.astype(np.float64)
    eps1, w = float(np.finfo(np.float32).eps), t ** -0.8
    R = w * (g * g).mean(axis=1, keepdims=True)
    C = w * (g * g).mean(axis=0, keepdims=True)
    U = g / np.sqrt(np.maximum(R @ C / max(R.mean(), eps1), eps1 * eps1))
    alpha = max(1e-3, math.sqrt((p * p).mean())) * min(1e-2, 1 / math.sqrt(t))
    return p - alpha / max(1.0, math.sqrt((U * U).mean())) * U


@pytest.mark.parametrize("step", [np.array([1, 4]), np.array([1, 4], dtype=np.uint8), np.array(3, dtype=np.int32)])
def test_adafactor_step_takes_numpy_steps(step):
    # A numpy array of per-parameter steps was a batch of one entry: "step has 1 entries for
    # 2 parameters" (a 0-d array: "step must be an int").
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal((2, 5, 4)).astype(np.float32)
    g = rng.standard_normal((2, 5, 4)).astype(np.float32)
    params = [p0[0].copy(), p0[1].copy()]
    adafactor_step(params, [g[0], g[1]], [np.zeros(5, np.float32) for _ in range(2)],
                   [np.zeros(4, np.float32) for _ in range(2)], step)
    steps = np.broadcast_to(step.reshape(-1), (2,))
    for b in range(2):
        np.testing.assert_allclose(params[b], _adafactor_first_step_at(p0[b], g[b], int(steps[b])), rtol=0, atol=2e-6)
    with pytest.raises(ValueError, match=r"step must be an int or a 1-D array of one per parameter, got shape \(2, 1\)"):
        adafactor_step(params, [g[0], g[1]], [np.zeros(5, np.float32) for _ in range(2)],
                       [np.zeros(4, np.float32) for _ in range(2)], np.array([[1], [4]]))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.uint8, torch.uint16, torch.uint32, torch.uint64])
def test_index_tensors_of_any_integer_dtype(dtype):
    # Narrow integer index tensors were a TypeError where numpy's (ops.*) are taken.
    gen = torch.Generator().manual_seed(0)
    U = torch.randn(7, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    V = torch.randn(6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    rows, cols = torch.tensor([0, 6, 3, 3, 1]), torch.tensor([5, 0, 2, 2, 4])
    got = lt.sampled_product(U, V, rows.to(dtype), cols.to(dtype))
    want = (U[rows] * V[cols]).sum(1)
    torch.testing.assert_close(got, want)
    weights = torch.arange(1.0, 6.0, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((got * weights).sum(), (U, V)),
                               torch.autograd.grad((want * weights).sum(), (U, V)))
    vals = torch.randn(5, generator=gen, dtype=torch.float64)
    B = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    S = torch.zeros(7, 6, dtype=torch.float64).index_put((rows, cols), vals, accumulate=True)
    torch.testing.assert_close(lt.sparse_times_dense(rows.to(dtype), cols.to(dtype), vals, B, 7), S @ B)
    torch.testing.assert_close(lt.sparse_times_dense(rows.to(dtype), cols.to(dtype), vals, S @ B, 6, transpose=True),
                               S.T @ (S @ B))


def test_kernel_product_top_k_numpy_integer():
    # top_k=np.int64(2) was a TypeError here, where ops.kernel_product (and n_rows) take it.
    gen = torch.Generator().manual_seed(1)
    U, V = torch.randn(5, 3, generator=gen), torch.randn(4, 3, generator=gen)
    values, indices = lt.kernel_product(U, V, "tanh", np.int64(2))
    want = torch.tanh(U @ V.T).abs().topk(2, dim=1)
    torch.testing.assert_close(indices, want.indices)
    torch.testing.assert_close(values.abs(), want.values)
    values, rows, cols = lt.kernel_product(U, V, "tanh", np.int32(3), top_k_mode="global")
    flat = torch.tanh(U @ V.T).abs().flatten().topk(3)
    torch.testing.assert_close(rows * 4 + cols, flat.indices)
    with pytest.raises(TypeError, match="kernel_product: top_k must be an int, got float 2.0"):
        lt.kernel_product(U, V, "tanh", 2.0)


def test_lora_load_assign_into_merged_module_leaves_the_source_alone():
    # load_state_dict(..., assign=True) into a merged adapter took the loaded weight tensor and
    # merged into it in place: the state_dict's tensor, and the module it came from, changed.
    torch.manual_seed(0)
    source = KernelizedLoRA(torch.nn.Linear(6, 4), 2, kernel="tanh", keep=0.5, init_scale=0.5)
    weight = source.base.weight.detach().clone()
    state = source.state_dict()
    target = KernelizedLoRA(torch.nn.Linear(6, 4), 2, kernel="tanh", keep=0.5)
    target.merge()
    target.load_state_dict(state, assign=True)
    assert target.merged
    assert torch.equal(source.base.weight, weight) and torch.equal(state["base.weight"], weight)
    # plain-torch reference: the kept half of tanh(A B^T) by magnitude, added to the weight
    D = torch.tanh(source.A @ source.B.T).detach()
    kept = torch.zeros(D.numel(), dtype=torch.bool)
    kept[D.abs().flatten().topk(12).indices] = True
    x = torch.randn(3, 6)
    want = x @ (weight + D * kept.view_as(D)).T + source.base.bias.detach()
    torch.testing.assert_close(target(x), want)
    torch.testing.assert_close(source(x), want)
    target.unmerge()
    assert torch.equal(target.base.weight, weight)


def test_uint64_index_tensors_beyond_int64_are_an_index_error():
    """A uint64 index above int64's range indexes nothing: the core's IndexError, naming it."""
    U, V = torch.ones(3, 2, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64)
    rows = torch.tensor([0, 2**63 + 3], dtype=torch.uint64)
    with pytest.raises(IndexError, match=r"sampled_product: rows\[1\] = 9223372036854775811 is out of range"):
        lt.sampled_product(U, V, rows, torch.tensor([1, 3]))
    with pytest.raises(IndexError, match=r"sparse_times_dense: rows\[1\] = 9223372036854775811 is out of range"):
        lt.sparse_times_dense(rows, torch.tensor([1, 3]), torch.ones(2, dtype=torch.float64), V, 3)


def test_uint64_index_tensors_under_vmap_and_compile():
    """uint64 indices under torch.func.vmap and torch.compile(fullgraph=True): the eager path's
    range test read a value to branch on, which both refused ("data-dependent control flow");
    the other narrow dtypes worked. Out of range there is still the core's IndexError."""
    U, V = torch.randn(7, 3, dtype=torch.float64), torch.randn(13, 3, dtype=torch.float64)
    rows = torch.tensor([[0, 6], [1, 2]], dtype=torch.uint64)
    cols = torch.tensor([[12, 0], [3, 3]], dtype=torch.uint64)
    batched = torch.func.vmap(lt.sampled_product, in_dims=(None, None, 0, 0))(U, V, rows, cols)
    expected = torch.stack([(U[r.long()] * V[c.long()]).sum(1) for r, c in zip(rows, cols)])
    torch.testing.assert_close(batched, expected, rtol=1e-15, atol=0)
    compiled = torch.compile(lt.sampled_product, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(U, V, rows[0], cols[0]), expected[0], rtol=1e-15, atol=0)
    beyond = torch.tensor([[0, 2**63 + 3]], dtype=torch.uint64)
    with pytest.raises(IndexError, match=r"sampled_product: rows\[1\] = -9223372036854775805 is out of range"):
        torch.func.vmap(lt.sampled_product, in_dims=(None, None, 0, 0))(U, V, beyond, cols[:1])


def test_top_k_options_are_checked_without_top_k():
    """A misspelt top_k_mode or top_k_order with top_k=None returned the dense product, silently."""
    U, V = torch.ones(3, 2), torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"top_k_mode must be one of \('row', 'global'\), got 'col'"):
        lt.kernel_product(U, V, "tanh", top_k_mode="col")
    with pytest.raises(ValueError, match=r"top_k_order must be one of \('magnitude', 'position'\), got 'xx'"):
        lt.kernel_product(U, V, "tanh", top_k_order="xx")
