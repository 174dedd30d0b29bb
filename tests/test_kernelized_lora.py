"""KernelizedLoRA (the SNELL adapter) against a plain-torch transcription of its definition:
D = scale * f(A B^T), keep the top_k entries by |D| (per step), y = x W^T + b + x D_kept^T.
Skipped without torch (optional extra)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

from lowrank_hpc.torch import KernelizedLoRA  # noqa: E402

KERNELS = {"identity": lambda x: x, "relu": torch.relu, "exponential": torch.exp, "tanh": torch.tanh,
           "piecewise_linear": lambda x: torch.clamp(x, -1, 1)}


def make(kernel="piecewise_linear", mode="global", keep=0.3, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.Linear(9, 7).to(dtype)
    adapter = KernelizedLoRA(base, rank=3, kernel=kernel, keep=keep, top_k_mode=mode, scale=scale,
                             init_scale=0.5, generator=generator)
    x = torch.randn(4, 5, 9, generator=generator, dtype=dtype)
    return adapter, x


def reference_forward(adapter, x):
    """The definition in plain torch, dense: mask = top-k of |D| (globally or per row)."""
    D = adapter.scale * KERNELS[adapter.kernel](adapter.A @ adapter.B.T)
    if adapter.top_k_mode == "global":
        keep = torch.zeros(D.numel(), dtype=torch.bool)
        keep[torch.topk(D.abs().reshape(-1), adapter.top_k).indices] = True
        keep = keep.reshape(D.shape)
    else:
        keep = torch.zeros_like(D, dtype=torch.bool).scatter(1, torch.topk(D.abs(), adapter.top_k, dim=1).indices,
                                                                True)
    W = adapter.base.weight + torch.where(keep, D, torch.zeros_like(D))
    return torch.nn.functional.linear(x, W, adapter.base.bias), keep


@pytest.mark.parametrize("mode", ["global", "row"])
@pytest.mark.parametrize("kernel", ["piecewise_linear", "tanh", "relu", "exponential"])
def test_forward_and_gradients_equal_the_plain_torch_definition(kernel, mode):
    adapter, x = make(kernel, mode, scale=0.7 if kernel != "exponential" else 0.01)
    y = adapter(x)
    (grad_A, grad_B) = torch.autograd.grad((y * y).sum(), (adapter.A, adapter.B))
    expected, keep = reference_forward(adapter, x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    ref_A, ref_B = torch.autograd.grad((expected * expected).sum(), (adapter.A, adapter.B))
    torch.testing.assert_close(grad_A, ref_A, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_B, ref_B, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(adapter.delta_weight() != 0, keep & (adapter.delta_weight() != 0))


def test_gradients_reach_only_the_adapter_and_match_gradcheck():
    adapter, x = make()
    assert [name for name, p in adapter.named_parameters() if p.requires_grad] == ["A", "B"]
    x.requires_grad_(True)
    adapter(x).square().sum().backward()
    assert adapter.base.weight.grad is None and adapter.base.bias.grad is None
    assert adapter.A.grad.abs().sum() > 0 and adapter.B.grad.abs().sum() > 0
    A, B = (p.detach().clone().requires_grad_(True) for p in (adapter.A, adapter.B))
    x = x[:1, :2].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda A, B, x: torch.func.functional_call(adapter, {"A": A, "B": B}, (x,)), (A, B, x))


@pytest.mark.parametrize("mode", ["global", "row"])
def test_the_kept_count_holds_at_every_step_and_the_selection_moves(mode):
    adapter, x = make(mode=mode, keep=0.25)
    target = torch.randn(4, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.5)
    per_step = adapter.top_k if mode == "global" else adapter.top_k * 7
    assert adapter.top_k == (round(0.25 * 63) if mode == "global" else round(0.25 * 9))
    selections = []
    for _ in range(6):
        delta = adapter.delta_weight().detach()
        assert int((delta != 0).sum()) == per_step
        if mode == "row":
            assert ((delta != 0).sum(1) == adapter.top_k).all()
        _, keep = reference_forward(adapter, x)
        torch.testing.assert_close(delta != 0, keep)
        selections.append(keep)
        optimizer.zero_grad()
        (adapter(x) - target).square().mean().backward()
        optimizer.step()
    assert any(not torch.equal(selections[0], s) for s in selections[1:]), "the competition never changed"


def test_merge_unmerge_round_trip_is_exact():
    adapter, x = make(kernel="tanh")
    weight = adapter.base.weight.detach().clone()
    before = adapter(x).detach()
    adapter.merge()
    assert adapter.merged
    torch.testing.assert_close(adapter.base.weight, weight + adapter.delta_weight().detach(), rtol=0, atol=0)
    torch.testing.assert_close(adapter(x), before, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="already merged"):
        adapter.merge()
    adapter.unmerge()
    assert torch.equal(adapter.base.weight, weight)
    assert torch.equal(adapter(x).detach(), before)
    with pytest.raises(RuntimeError, match="not merged"):
        adapter.unmerge()


def test_float32_and_argument_errors():
    adapter, x = make(dtype=torch.float32)
    expected, _ = reference_forward(adapter, x)
    torch.testing.assert_close(adapter(x), expected, rtol=1e-5, atol=1e-5)
    base = torch.nn.Linear(4, 3)
    with pytest.raises(TypeError, match="base must be an nn.Linear"):
        KernelizedLoRA(torch.nn.Conv1d(1, 1, 1))
    with pytest.raises(ValueError, match="keep must be a fraction in"):
        KernelizedLoRA(base, keep=1.5)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        KernelizedLoRA(base, rank=0)
    with pytest.raises(ValueError, match="unknown kernel 'rbf'"):
        KernelizedLoRA(base, kernel="rbf")
    with pytest.raises(ValueError, match="top_k_mode must be 'global' or 'row'"):
        KernelizedLoRA(base, top_k_mode="col")
    # NaN or inf scales gave NaN/inf outputs with no error; "2" was taken by float().
    for bad, error, match in ((float("nan"), ValueError, "scale must be a finite number, got nan"),
                              (float("inf"), ValueError, "scale must be a finite number, got inf"),
                              ("2", TypeError, "scale must be a number, got str")):
        with pytest.raises(error, match=match):
            KernelizedLoRA(base, scale=bad)
    with pytest.raises(ValueError, match="init_scale must be a finite number >= 0, got nan"):
        KernelizedLoRA(base, init_scale=float("nan"))


def test_state_dict_of_a_merged_adapter_loads_as_the_same_function():
    adapter, x = make(kernel="tanh")
    unmerged_weight = adapter.base.weight.detach().clone()
    before = adapter(x).detach()
    unmerged_state = {key: value.clone() for key, value in adapter.state_dict().items()}
    # Unmerged round trip: unchanged keys, the same function bit for bit.
    fresh = make(kernel="tanh", seed=1)[0]
    fresh.load_state_dict(unmerged_state)
    assert torch.equal(fresh(x).detach(), before)

    adapter.merge()
    merged_weight = adapter.base.weight.detach().clone()
    state = adapter.state_dict()
    assert list(state) == list(unmerged_state)  # same keys: strict loading of old and new checkpoints
    for key in state:  # base.weight is the weight unmerge() restores, bit for bit
        assert torch.equal(state[key], unmerged_state[key]), key
    assert state["base.weight"].data_ptr() != adapter.base.weight.data_ptr()  # a copy, not the merged weight
    nested = torch.nn.Sequential(adapter).state_dict()
    assert torch.equal(nested["0.base.weight"], unmerged_weight)

    loaded = make(kernel="tanh", seed=2)[0]
    loaded.load_state_dict(state)
    assert not loaded.merged
    assert torch.equal(loaded(x).detach(), before)  # the update counted once, not twice
    expected, _ = reference_forward(loaded, x)
    torch.testing.assert_close(loaded(x), expected, rtol=1e-12, atol=1e-12)
    loaded.merge()
    assert torch.equal(loaded.base.weight, merged_weight)

    # Into a merged module: unmerged, loaded, merged again with the loaded A and B.
    target = make(kernel="tanh", seed=3)[0]
    target.merge()
    target.load_state_dict(state)
    assert target.merged
    assert torch.equal(target.base.weight, merged_weight)
    torch.testing.assert_close(target(x), before, rtol=1e-12, atol=1e-12)
    target.unmerge()
    assert torch.equal(target.base.weight, unmerged_weight)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_unmerge_after_a_dtype_change_restores_the_converted_original_weight(dtype):
    adapter, x = make(dtype=torch.float32)
    unmerged_weight = adapter.base.weight.detach().clone()
    adapter.merge()
    adapter.to(dtype)
    assert adapter.base.weight.dtype == dtype
    # The state_dict's unmerged weight follows the conversion too.
    assert torch.equal(adapter.state_dict()["base.weight"], unmerged_weight.to(dtype))
    adapter.unmerge()
    assert torch.equal(adapter.base.weight, unmerged_weight.to(dtype))  # as unmerging before .to() gives
    expected, _ = reference_forward(adapter, x.to(dtype))
    tolerance = 1e-12 if dtype == torch.float64 else 5e-2
    torch.testing.assert_close(adapter(x.to(dtype)), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("shape", [(0, 9), (2, 0, 9)])
def test_an_empty_batch_gives_the_base_output_and_zero_gradients(shape):
    adapter, _ = make()
    x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
    y = adapter(x)
    assert y.shape == shape[:-1] + (7,)
    assert torch.equal(y, adapter.base(x))
    grad_A, grad_B, grad_x = torch.autograd.grad(y.sum(), (adapter.A, adapter.B, x))
    assert torch.equal(grad_A, torch.zeros_like(adapter.A)) and torch.equal(grad_B, torch.zeros_like(adapter.B))
    assert grad_x.shape == shape


@pytest.mark.parametrize("mode", ["global", "row"])
def test_torch_func_grad_through_the_adapter(mode):
    """torch.func.grad over torch.func.functional_call of the adapter (how functorch-style trainers
    take gradients) equals loss.backward()'s for A and B."""
    adapter, x = make(kernel="tanh", mode=mode)
    params = {name: p.detach() for name, p in adapter.named_parameters() if p.requires_grad}

    def loss(params):
        return torch.func.functional_call(adapter, params, (x,)).square().sum()

    by_func = torch.func.grad(loss)(params)
    adapter(x).square().sum().backward()
    assert set(by_func) == {"A", "B"}
    torch.testing.assert_close(by_func["A"], adapter.A.grad)
    torch.testing.assert_close(by_func["B"], adapter.B.grad)
