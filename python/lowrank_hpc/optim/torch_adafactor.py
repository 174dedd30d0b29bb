"""lowrank_hpc.optim.Adafactor: a torch.optim.Optimizer running the fused Adafactor kernel.

Imports torch: reached only through ``lowrank_hpc.optim.Adafactor`` (torch is an optional extra).
Tensors go to the kernel without copies: CPU tensors as numpy views, CUDA tensors through
``__cuda_array_interface__``/DLPack as CuPy views, 16-bit ones as their bits.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable, Optional

import torch

from .. import _backend, _checks
from .._arrays import resolve
from .adafactor import (NonFiniteError, _beta1, _beta2_decay, _clip_threshold, _eps, run_step)

_FORMATS = {torch.float32: "float32", torch.float64: "float64", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_STATE_KEYS = ("row_var", "col_var", "variance", "exp_avg")
# Options beyond torch.optim.Adafactor's, with the defaults that keep its behaviour.
_EXTRA_DEFAULTS = {"relative_step": True, "scale_parameter": True, "warmup_init": False, "beta1": None}


def _state_dtype(param: torch.Tensor) -> torch.dtype:
    """float64 state for float64 parameters, float32 for the others (16-bit ones included)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


class Adafactor(torch.optim.Optimizer):
    """Adafactor with factored second moments, one fused kernel launch per group of parameters
    of one device, dtype and shape.

    The defaults and state are torch.optim.Adafactor's: the same steps, and ``state_dict()``
    interchangeable with it (state "step", "row_var" (..., n, 1), "col_var" (..., 1, m),
    "variance" for vectors; "exp_avg" too with beta1). Parameters: float32, float64, bfloat16 or
    float16 tensors, contiguous, on the CPU or a CUDA device; state is float32 (float64 for
    float64 parameters), so 16-bit parameters keep full-precision moments.

    Args:
        params: parameters or parameter groups.
        lr: > 0; the cap of the relative step size (torch's meaning), or the step size when
            ``relative_step=False``.
        beta2_decay, eps, d, weight_decay, maximize: as torch.optim.Adafactor; eps1 = None is the
            machine epsilon of the state dtype.
        foreach: accepted for torch's signature and ignored (the kernel is fused).
        relative_step, scale_parameter, warmup_init, beta1: the paper's and Hugging Face's options
            (see :func:`lowrank_hpc.optim.adafactor_step`).

    ``step()`` raises :class:`lowrank_hpc.optim.NonFiniteError` when a gradient holds NaN/inf; the
    other parameters are stepped, those are left as they were (their step count too).
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0, *,
                 foreach: Optional[bool] = None, maximize: bool = False, relative_step: bool = True,
                 scale_parameter: bool = True, warmup_init: bool = False, beta1: Optional[float] = None) -> None:
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d, weight_decay=weight_decay, foreach=foreach,
                        maximize=maximize, relative_step=relative_step, scale_parameter=scale_parameter,
                        warmup_init=warmup_init, beta1=beta1)
        self._check_options(defaults)
        super().__init__(params, defaults)  # calls add_param_group, which checks each group's options

    def add_param_group(self, param_group: dict) -> None:
        """torch's, after the group's options (its own, or the defaults it inherits) pass the
        defaults' checks; the messages name the group by its index in ``param_groups``."""
        if isinstance(param_group, dict):
            options = {key: param_group.get(key, value) for key, value in self.defaults.items()}
            self._check_options(options, f"Adafactor (parameter group {len(self.param_groups)})")
            param_group.update(options)
        super().add_param_group(param_group)

    @staticmethod
    def _check_options(group: dict, name: str = "Adafactor") -> dict:
        """The group's options checked and normalized (the functional step's checks); errors
        start with ``name``."""
        group["lr"] = _checks.positive_float(name, "lr", group["lr"])
        group["beta2_decay"] = _beta2_decay(name, "beta2_decay", group["beta2_decay"])
        group["eps"] = _eps(name, "eps", group["eps"])
        group["d"] = _clip_threshold(name, "d", group["d"])
        group["weight_decay"] = _checks.nonnegative_float(name, "weight_decay", group["weight_decay"])
        for flag in ("maximize", "relative_step", "scale_parameter", "warmup_init"):
            group[flag] = _checks.flag(name, flag, group[flag])
        group["beta1"] = _beta1(name, "beta1", group["beta1"])
        return group

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # groups saved by torch.optim.Adafactor lack our options
            group.setdefault("foreach", None)
            for key, value in _EXTRA_DEFAULTS.items():
                group.setdefault(key, value)

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, except that moments stay float32 for 16-bit parameters (torch casts every
        floating state tensor to the parameter's dtype on load). Each saved group's options pass
        the constructor's checks first (a group saved by torch.optim.Adafactor gets our extra
        options' defaults), so a bad one fails here, naming the group, not in step()."""
        for index, saved in enumerate(state_dict["param_groups"]):
            options = {**self.defaults, **_EXTRA_DEFAULTS, "foreach": None,
                       **{key: saved[key] for key in self.defaults if key in saved}}
            self._check_options(options, f"Adafactor.load_state_dict (parameter group {index})")
        super().load_state_dict(state_dict)
        saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        for param, saved_id in zip(params, saved_ids):
            saved = state_dict["state"].get(saved_id, {})
            for key in _STATE_KEYS:
                if torch.is_tensor(saved.get(key)):
                    self.state[param][key] = saved[key].to(device=param.device, dtype=_state_dtype(param),
                                                           copy=True)

    def _state_of(self, param: torch.Tensor, group: dict, label: str) -> dict:
        """The parameter's state, created on its first step, checked (shapes) and converted
        (device, dtype, layout) once when loaded from elsewhere."""
        state = self.state[param]
        shape = tuple(param.shape)
        wanted = {}
        if param.dim() >= 2:
            wanted["row_var"] = shape[:-1] + (1,)
            wanted["col_var"] = shape[:-2] + (1, shape[-1])
        else:
            wanted["variance"] = shape
        if group["beta1"]:
            wanted["exp_avg"] = shape
        if "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
        dtype = _state_dtype(param)
        for key, key_shape in wanted.items():
            value = state.get(key)
            if value is None:
                state[key] = torch.zeros(key_shape, dtype=dtype, device=param.device)
                continue
            if tuple(value.shape) != key_shape:
                raise ValueError(f"Adafactor: state['{key}'] of {label} has shape {tuple(value.shape)}, expected "
                                 f"{key_shape} for a parameter of shape {shape}")
            if value.dtype != dtype or value.device != param.device or not value.is_contiguous():
                state[key] = value.to(device=param.device, dtype=dtype, memory_format=torch.contiguous_format)
        return state

    @staticmethod
    def _array(call: Any, name: str, tensor: torch.Tensor) -> Any:
        """A numpy/CuPy view of a tensor's memory (16-bit floats as int16 bits)."""
        tensor = tensor.detach()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.view(torch.int16)
        return call._as_backend_array(name, tensor)

    @staticmethod
    def _stream_of(param: torch.Tensor) -> ContextManager:
        """The kernel runs on torch's current stream of the parameter's device (CuPy's otherwise),
        so it is ordered after the backward pass that made the gradients."""
        if param.device.type != "cuda":
            return contextlib.nullcontext()
        stream = torch.cuda.current_stream(param.device)
        return _backend.external_stream(stream.cuda_stream, param.device.index)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        """One step of every parameter with a gradient; returns the closure's loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        failures: list[tuple] = []
        index = 0
        for group in self.param_groups:
            buckets: dict[tuple, list[tuple[int, str, torch.Tensor]]] = {}
            for param in group["params"]:
                label = f"parameter {index} (shape {tuple(param.shape)})"
                index += 1
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse or grad.layout != torch.strided:
                    raise TypeError(f"Adafactor: the gradient of {label} is sparse ({grad.layout}); Adafactor "
                                    "needs dense gradients")
                if param.dtype not in _FORMATS:
                    raise TypeError(f"Adafactor: {label} is {param.dtype}; float32, float64, bfloat16 and float16 "
                                    "parameters are supported")
                if grad.dtype != param.dtype or grad.shape != param.shape:
                    raise ValueError(f"Adafactor: the gradient of {label} is {grad.dtype} {tuple(grad.shape)}, "
                                     f"expected {param.dtype} {tuple(param.shape)}")
                if param.numel() == 0:
                    continue
                if not param.is_contiguous():
                    raise ValueError(f"Adafactor: {label} is not contiguous; it is updated in place")
                self._state_of(param, group, label)
                key = (param.device, param.dtype, tuple(param.shape))
                buckets.setdefault(key, []).append((index - 1, label, param))
            for (_, dtype, _), members in buckets.items():
                failures += self._step_bucket(group, _FORMATS[dtype], members)
        if failures:
            raise NonFiniteError("Adafactor: NaN/inf in " + "; ".join(text for _, _, text in failures) +
                                 "; those parameters and their state were not updated (the others were)",
                                 [i for i, _, _ in failures], [kind for _, kind, _ in failures])
        return loss

    def _step_bucket(self, group: dict, fmt: str, members: list[tuple[int, str, torch.Tensor]]) -> list[tuple]:
        """One launch for parameters of one device, dtype and shape; the failures as (index,
        "grad" or "param", description)."""
        indices = [i for i, _, _ in members]
        labels = [label for _, label, _ in members]
        params = [param for _, _, param in members]
        call = resolve("Adafactor.step", param=params[0].detach())
        states = [self.state[p] for p in params]
        vector = params[0].dim() < 2  # 0-d too: unfactored, "variance" of its shape (as torch)
        # The kernel steps vectors: a 0-d tensor goes as a 1-element view of the same memory.
        flat = (lambda t: t.view(1)) if params[0].dim() == 0 else (lambda t: t)
        arrays = dict(
            params=[self._array(call, "param", flat(p)) for p in params],
            grads=[self._array(call, "grad", flat(p.grad if p.grad.is_contiguous() else p.grad.contiguous()))
                   for p in params],
            row_vars=[None if vector else self._array(call, "row_var", s["row_var"]) for s in states],
            col_vars=[self._array(call, "col_var", flat(s["variance"]) if vector else s["col_var"]) for s in states],
            exp_avgs=[self._array(call, "exp_avg", flat(s["exp_avg"])) for s in states] if group["beta1"] else [])
        steps = [float(s["step"].item()) + 1.0 for s in states]
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = float(torch.finfo(_state_dtype(params[0])).eps)
        bad: list[int] = []
        kinds: list[str] = []
        try:
            with self._stream_of(params[0]):
                run_step(call, fmt, arrays["params"], arrays["grads"], arrays["row_vars"], arrays["col_vars"],
                         arrays["exp_avgs"], steps, lr=group["lr"], beta2_decay=group["beta2_decay"], eps1=eps1,
                         eps2=eps2, d=group["d"], weight_decay=group["weight_decay"], beta1=group["beta1"] or 0.0,
                         maximize=group["maximize"], relative_step=group["relative_step"],
                         scale_parameter=group["scale_parameter"], warmup_init=group["warmup_init"], names=labels)
        except NonFiniteError as error:
            bad, kinds = error.indices, error.kinds
        for b, state in enumerate(states):
            if b not in bad:
                state["step"] += 1
        return [(indices[b], kind, f"the gradient of {labels[b]}" if kind == "grad" else labels[b])
                for b, kind in zip(bad, kinds)]
