"""Fine-tune a small vision model three ways: full fine-tuning, plain LoRA, and SNELL
(lowrank_hpc.torch.KernelizedLoRA: a kernel of the low-rank product, sparsified by competition
at every step), printing accuracy and the memory each keeps for training: trainable parameters
plus Adam's two moment tensors per parameter.

The "pretrained" model is randomly initialised (a conv stem and three linear layers); the task is
synthetic: 10 x 10 images of stripes in one of four orientations with random phase and noise.
Needs torch (pip install lowrank_hpc[torch]). Runs in a few seconds on a CPU.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from lowrank_hpc.torch import KernelizedLoRA

SIZE, CLASSES, RANK = 10, 4, 4


def stripes(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of stripes at 0, 45, 90 or 135 degrees (the label), random frequency and phase."""
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    angle = labels.double() * math.pi / CLASSES
    y, x = torch.meshgrid(torch.arange(SIZE, dtype=torch.float64), torch.arange(SIZE, dtype=torch.float64),
                          indexing="ij")
    frequency = 0.6 + 0.4 * torch.rand(n, 1, 1, generator=generator, dtype=torch.float64)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=generator, dtype=torch.float64)
    coordinate = x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]
    images = torch.sin(frequency * coordinate + phase)
    images = images + 1.5 * torch.randn(images.shape, generator=generator, dtype=torch.float64)
    return images.float()[:, None], labels


def base_model(generator: torch.Generator) -> nn.Sequential:
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 128), nn.ReLU(),
                         nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, CLASSES))


class LoRALinear(nn.Module):
    """Plain LoRA in torch: y = W x + b + scale * (x A^T) B^T with A (r, in), B (out, r) = 0."""

    def __init__(self, base: nn.Linear, rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.base, self.scale = base.requires_grad_(False), scale
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def adapted(model: nn.Sequential, method: str, generator: torch.Generator) -> nn.Sequential:
    """A copy of model for one method: the stem and hidden layers frozen and adapted (LoRA or
    SNELL) or all trainable (full); the classification head is trained in every method."""
    model = copy.deepcopy(model)
    if method == "full":
        return model
    model[0].requires_grad_(False)
    for index in (3, 5):
        if method == "lora":
            model[index] = LoRALinear(model[index], RANK)
        else:
            model[index] = KernelizedLoRA(model[index], RANK, kernel="piecewise_linear", keep=0.3,
                                          init_scale=1e-2, generator=generator)
    return model


def train(model: nn.Module, data, steps: int, lr: float) -> tuple[float, int]:
    """Adam for ``steps`` minibatches; returns test accuracy and the bytes of the training state
    (trainable parameters plus Adam's state)."""
    (x_train, y_train), (x_test, y_test) = data
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr)
    batches = torch.Generator().manual_seed(1)
    for _ in range(steps):
        index = torch.randint(0, x_train.shape[0], (64,), generator=batches)
        loss = nn.functional.cross_entropy(model(x_train[index]), y_train[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        accuracy = float((model(x_test).argmax(1) == y_test).float().mean())
    state = sum(p.numel() * p.element_size() for p in trainable)
    state += sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                 if torch.is_tensor(t) and t.dim() > 0)
    return accuracy, state


def main() -> None:
    torch.set_num_threads(1)  # a tiny model: one thread, no pool spinning against other work
    generator = torch.Generator().manual_seed(0)
    data = stripes(1024, generator), stripes(512, generator)
    model = base_model(generator)
    with torch.no_grad():
        before = float((model(data[1][0]).argmax(1) == data[1][1]).float().mean())
    print(f"random 'pretrained' model: test accuracy {before:.3f} ({sum(p.numel() for p in model.parameters())} "
          "parameters)")
    print(f"{'method':<22}{'trainable':>11}{'params+Adam state':>19}{'vs full':>9}{'accuracy':>10}")
    full_state = None
    for method, label, lr in (("full", "full fine-tuning", 1e-3), ("lora", f"LoRA r={RANK}", 2e-2),
                              ("snell", f"SNELL r={RANK}, keep 30%", 2e-2)):
        tuned = adapted(model, method, generator)
        count = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
        accuracy, state = train(tuned, data, steps=60, lr=lr)
        full_state = full_state or state
        print(f"{label:<22}{count:>11,}{state / 1024:>15.1f} KiB{state / full_state:>9.2f}{accuracy:>10.3f}")
        if method == "snell":
            layers = [tuned[3], tuned[5]]
            for layer in layers:  # deploy: the kept updates folded into the weights, plain layers run
                layer.merge()
            with torch.no_grad():
                merged = float((tuned(data[1][0]).argmax(1) == data[1][1]).float().mean())
            for layer in layers:
                layer.unmerge()
            kept = int((layers[0].delta_weight() != 0).sum())
            print(f"SNELL: {kept:,} of {layers[0].base.weight.numel():,} weights of the first adapted layer "
                  f"updated at this step (indices recomputed, never stored); merged model's accuracy {merged:.3f}")


if __name__ == "__main__":
    main()
