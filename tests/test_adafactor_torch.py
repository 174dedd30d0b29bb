"""lowrank_hpc.optim.Adafactor against torch.optim.Adafactor (the parity reference), its
state_dict round trip and interchange, and its errors. Skipped, with the reason, without torch
(an optional extra: ``pip install lowrank_hpc[test]`` installs it)."""
from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

from lowrank_hpc import _backend, optim  # noqa: E402
from lowrank_hpc.optim import Adafactor  # noqa: E402

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class SmallModel(torch.nn.Module):
    """1-D, 2-D and 3-D parameters (the 3-D one factored over its last two dimensions)."""

    def __init__(self, dtype, device="cpu", seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)

        def draw(*shape, scale):
            return torch.nn.Parameter((torch.randn(*shape, generator=generator) * scale).to(dtype).to(device))

        self.w1 = draw(24, 10, scale=0.3)
        self.b1 = draw(24, scale=0.1)
        self.mix = draw(3, 8, 8, scale=0.3)
        self.w2 = draw(5, 24, scale=0.2)
        self.b2 = draw(5, scale=0.1)

    def forward(self, x):
        h = torch.tanh(x @ self.w1.T + self.b1)                           # (batch, 24)
        h = torch.einsum("bki,kij->bkj", h.view(-1, 3, 8), self.mix)      # (batch, 3, 8)
        return h.reshape(-1, 24) @ self.w2.T + self.b2


def data(dtype, device="cpu", seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 10, generator=generator).to(dtype).to(device)
    y = torch.randn(64, 5, generator=generator).to(dtype).to(device)  # not fitted exactly: gradients stay large
    return x, y


def train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def max_relative_difference(a, b):
    return max(float((p.detach() - q.detach()).abs().max() / q.detach().abs().max())
               for p, q in zip(a.parameters(), b.parameters()))


# lr = 3e-3: at torch's 1e-2 this model reaches the regime where the normalized steps oscillate
# and rounding grows 1e5-fold in 300 steps, in torch's own two implementations alike (see
# test_at_the_default_lr_ours_is_as_close_to_torch_as_torch_is_to_itself).
TORCH_OPTIONS = {
    "defaults_but_lr": dict(lr=3e-3),
    "weight_decay": dict(lr=3e-3, weight_decay=0.05),
    "beta2_decay_eps": dict(lr=3e-3, beta2_decay=-0.6, eps=(1e-20, 1e-2)),
    "clip_threshold": dict(lr=3e-3, d=1.3),
    "maximize": dict(maximize=True, lr=1e-3),
}


@pytest.mark.parametrize("options", list(TORCH_OPTIONS), ids=list(TORCH_OPTIONS))
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_training_matches_torch_adafactor(dtype, options):
    kwargs = TORCH_OPTIONS[options]
    ours, theirs = SmallModel(DTYPES[dtype]), SmallModel(DTYPES[dtype])
    x, y = data(DTYPES[dtype])
    optimizer = Adafactor(ours.parameters(), **kwargs)
    reference = torch.optim.Adafactor(theirs.parameters(), foreach=False, **kwargs)
    for _ in range(3):  # 300 steps
        train(ours, optimizer, x, y, 100)
        train(theirs, reference, x, y, 100)
        assert max_relative_difference(ours, theirs) < (1e-5 if dtype == "float32" else 1e-12)
    assert max_relative_difference(ours, SmallModel(DTYPES[dtype])) > 1e-2  # it trained


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_at_the_default_lr_ours_is_as_close_to_torch_as_torch_is_to_itself(dtype):
    models = [SmallModel(DTYPES[dtype]) for _ in range(3)]
    x, y = data(DTYPES[dtype])
    optimizers = [Adafactor(models[0].parameters()), torch.optim.Adafactor(models[1].parameters(), foreach=False),
                  torch.optim.Adafactor(models[2].parameters(), foreach=True)]
    for model, optimizer in zip(models, optimizers):
        train(model, optimizer, x, y, 300)
    ours, torch_spread = max_relative_difference(models[0], models[1]), max_relative_difference(models[2], models[1])
    assert ours < 3 * torch_spread + (1e-5 if dtype == "float32" else 1e-12)


def test_state_dict_round_trip_and_resume_give_the_uninterrupted_run():
    model = SmallModel(torch.bfloat16)
    x, y = data(torch.bfloat16)
    optimizer = Adafactor(model.parameters(), beta1=0.9, weight_decay=0.01)
    train(model, optimizer, x, y, 20)
    saved_model, saved_state = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(model, optimizer, x, y, 20)

    resumed = SmallModel(torch.bfloat16, seed=5)
    resumed.load_state_dict(saved_model)
    resumed_optimizer = Adafactor(resumed.parameters(), beta1=0.9, weight_decay=0.01)
    resumed_optimizer.load_state_dict(saved_state)
    state = resumed_optimizer.state[resumed.w1]
    assert state["row_var"].dtype == torch.float32 and state["exp_avg"].dtype == torch.float32
    assert float(state["step"]) == 20
    train(resumed, resumed_optimizer, x, y, 20)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    again = resumed_optimizer.state_dict()
    for key in ("row_var", "col_var", "exp_avg"):
        assert torch.equal(again["state"][0][key], optimizer.state_dict()["state"][0][key])


@pytest.mark.parametrize("direction", ["torch_to_ours", "ours_to_torch"])
def test_state_dict_interchanges_with_torch_adafactor(direction):
    first, second = (torch.optim.Adafactor, Adafactor) if direction == "torch_to_ours" else \
        (Adafactor, torch.optim.Adafactor)
    model = SmallModel(torch.float64)
    x, y = data(torch.float64)
    optimizer = first(model.parameters(), lr=5e-3)
    train(model, optimizer, x, y, 15)
    continued = copy.deepcopy(model)
    switched = second(continued.parameters(), lr=5e-3)
    switched.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    train(model, optimizer, x, y, 15)
    train(continued, switched, x, y, 15)
    assert max_relative_difference(model, continued) < 1e-12


def test_16_bit_parameters_keep_float32_state_and_train():
    model = SmallModel(torch.bfloat16)
    x, y = data(torch.bfloat16)
    optimizer = Adafactor(model.parameters(), lr=3e-2, beta1=0.9)
    before = float(torch.nn.functional.mse_loss(model(x).float(), y.float()).detach())
    train(model, optimizer, x, y, 30)
    after = float(torch.nn.functional.mse_loss(model(x).float(), y.float()).detach())
    state = optimizer.state[model.w1]
    assert model.w1.dtype == torch.bfloat16
    assert state["row_var"].dtype == state["col_var"].dtype == state["exp_avg"].dtype == torch.float32
    assert after < 0.9 * before


def test_errors():
    model = SmallModel(torch.float32)
    x, y = data(torch.float32)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        Adafactor(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        Adafactor(model.parameters(), lr=-1.0, relative_step=False)
    optimizer = Adafactor(model.parameters())
    train(model, optimizer, x, y, 1)

    optimizer.state[model.w1]["row_var"] = torch.zeros(10, 1)
    with pytest.raises(ValueError, match=r"state\['row_var'\] of parameter 0 \(shape \(24, 10\)\) has shape \(10, 1\)"):
        optimizer.step()
    optimizer.state[model.w1]["row_var"] = torch.zeros(24, 1)

    before = [p.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    model.b1.grad[3] = float("nan")
    with pytest.raises(optim.NonFiniteError, match=r"NaN/inf in the gradient of parameter 1 \(shape \(24,\)\)") as e:
        optimizer.step()
    assert e.value.indices == [1]
    assert torch.equal(model.b1.detach(), before[1])  # not propagated
    assert float(optimizer.state[model.b1]["step"]) == 1 and float(optimizer.state[model.w1]["step"]) == 2
    assert not torch.equal(model.w1.detach(), before[0])

    embedding = torch.nn.Embedding(10, 4, sparse=True)
    sparse_optimizer = Adafactor(embedding.parameters())
    embedding(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        sparse_optimizer.step()


@pytest.mark.gpu
def test_cuda_tensors_match_cpu_tensors():
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    cpu_model, gpu_model = SmallModel(torch.float32), SmallModel(torch.float32, device="cuda")
    x, y = data(torch.float32)
    cpu_optimizer = Adafactor(cpu_model.parameters(), beta1=0.9)
    gpu_optimizer = Adafactor(gpu_model.parameters(), beta1=0.9)
    train(cpu_model, cpu_optimizer, x, y, 50)
    train(gpu_model, gpu_optimizer, x.cuda(), y.cuda(), 50)
    assert max_relative_difference(gpu_model.cpu(), cpu_model) < 1e-5
    assert _backend.HAS_CUDA


@pytest.mark.parametrize("options", [dict(), dict(lr=3e-2, weight_decay=0.1, maximize=True),
                                     dict(beta2_decay=-0.6, eps=(1e-20, 1e-2), d=1.3)], ids=["defaults", "wd_max", "eps"])
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_a_0d_parameter_steps_as_torch_adafactor_steps_it(dtype, options):
    dtype = DTYPES[dtype]
    generator = torch.Generator().manual_seed(3)
    start = [torch.tensor(1.5, dtype=dtype), torch.randn(4, 3, generator=generator, dtype=dtype)]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    optimizer = Adafactor(ours, **options)
    reference = torch.optim.Adafactor(theirs, foreach=False, **options)
    for _ in range(8):
        grads = [torch.randn(t.shape, generator=generator, dtype=dtype) for t in start]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        optimizer.step()
        reference.step()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-13
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tolerance, atol=tolerance)
    assert optimizer.state[ours[0]]["variance"].shape == ()
    torch.testing.assert_close(optimizer.state[ours[0]]["variance"], reference.state[theirs[0]]["variance"],
                               rtol=tolerance, atol=0)
    assert float(optimizer.state[ours[0]]["step"]) == 8
    assert abs(float(ours[0].detach()) - 1.5) > 1e-3  # it moved


def test_a_0d_parameter_with_beta1_keeps_a_0d_first_moment():
    scalar = torch.nn.Parameter(torch.tensor(1.5))
    optimizer = Adafactor([scalar], beta1=0.9, relative_step=False, scale_parameter=False, lr=0.1)
    scalar.grad = torch.tensor(0.3)
    optimizer.step()
    state = optimizer.state[scalar]
    # Step 1: variance = g^2, exp_avg = (1 - beta1) lr g / sqrt(g^2) = 0.01 (alpha_t U), the step exp_avg.
    assert state["exp_avg"].shape == () and state["variance"].shape == ()
    torch.testing.assert_close(state["variance"], torch.tensor(0.09), rtol=1e-6, atol=0)
    torch.testing.assert_close(state["exp_avg"], torch.tensor(0.01), rtol=1e-5, atol=0)
    torch.testing.assert_close(scalar.detach(), torch.tensor(1.49), rtol=1e-6, atol=0)


GROUP_ERRORS = {
    "lr": (dict(lr=-1.0), ValueError, "lr must be a finite number > 0, got -1.0"),
    "eps_float": (dict(eps=1e-3), ValueError, r"eps must be a pair \(eps1 or None, eps2\), got 0.001"),
    "maximize_str": (dict(maximize="no"), TypeError, "maximize must be True or False, got str 'no'"),
    "beta1": (dict(beta1=1.5), ValueError, r"beta1 must be None or in \[0, 1\), got 1.5"),
    "d": (dict(d=0.5), ValueError, "d must be >= 1"),
    "weight_decay": (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number >= 0"),
}


@pytest.mark.parametrize("case", list(GROUP_ERRORS))
def test_every_parameter_group_is_checked_when_it_is_added(case):
    options, error, message = GROUP_ERRORS[case]
    first, second = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))
    with pytest.raises(error, match=r"^Adafactor: " + message):  # the defaults: the same check and message
        Adafactor([first], **options)
    with pytest.raises(error, match=r"^Adafactor \(parameter group 1\): " + message):
        Adafactor([{"params": [first]}, {"params": [second], **options}])
    optimizer = Adafactor([first])
    with pytest.raises(error, match=r"^Adafactor \(parameter group 1\): " + message):
        optimizer.add_param_group({"params": [second], **options})
    assert len(optimizer.param_groups) == 1  # the rejected group was not added
    saved = optimizer.state_dict()
    saved["param_groups"][0].update(options)
    with pytest.raises(error, match=r"^Adafactor.load_state_dict \(parameter group 0\): " + message):
        Adafactor([first]).load_state_dict(saved)


def test_valid_group_options_are_normalized_and_used():
    first, second = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = Adafactor([first], relative_step=False, scale_parameter=False)
    optimizer.add_param_group({"params": [second], "lr": 1, "eps": [None, 1e-3], "maximize": True})
    group = optimizer.param_groups[1]
    assert isinstance(group["lr"], float) and group["eps"] == (None, 1e-3) and group["relative_step"] is False
    first.grad, second.grad = torch.ones(3), torch.ones(3)
    optimizer.step()
    # Unit gradients: the normalized update is 1; lr 1e-2 descends, lr 1 with maximize ascends.
    torch.testing.assert_close(first.detach(), torch.full((3,), 0.99), rtol=1e-6, atol=0)
    torch.testing.assert_close(second.detach(), torch.full((3,), 2.0), rtol=1e-6, atol=0)
