"""The Adafactor step (Shazeer & Stern, 2018) on numpy or CuPy arrays, in place, fused.

torch.optim.Adafactor's variant by default (its defaults and formulas, eps1 flooring the
second-moment estimate), with the paper's and Hugging Face's options: a fixed step size instead
of the relative one, no parameter scaling, warmup init, a clipping threshold, a first moment.
The last two dimensions of a parameter of 2 or more dimensions are factored into a row moment
R (..., n) and a column moment C (..., m); a vector keeps an unfactored moment. One call steps a
batch of parameters of one shape in one launch, with O(n + m) extra memory each.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import numpy as np

from .. import _checks
from .._arrays import Call, resolve

# Parameter dtypes and the dtype of their state (16-bit parameters keep float32 state).
_STATE_DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64),
                 "bfloat16": np.dtype(np.float32), "float16": np.dtype(np.float32)}

ArrayOrBatch = Union[Any, Sequence[Any]]


class NonFiniteError(ValueError):
    """A gradient (or parameter) holds NaN/inf: those parameters and their state were left as they
    were; ``indices`` are their positions in the batch, ``kinds`` say which array was not finite."""

    def __init__(self, message: str, indices: list[int], kinds: list[str]):
        super().__init__(message)
        self.indices = indices
        self.kinds = kinds


def state_dtype(param_dtype: Any) -> np.dtype:
    """The dtype of the state (row_var, col_var, exp_avg) of a parameter of ``param_dtype``:
    float64 for float64, float32 for float32, bfloat16 and float16."""
    name = np.dtype(param_dtype).name
    if name not in _STATE_DTYPES:
        raise TypeError(f"adafactor_step: parameters must be float32, float64, bfloat16 (ml_dtypes) or float16, "
                        f"got {name}")
    return _STATE_DTYPES[name]


def _beta2_decay(function: str, name: str, value: Any) -> float:
    value = _checks.real(function, name, value)
    if not value <= 0:
        raise ValueError(f"{function}: {name} must be <= 0 (1 - beta2_t = t^beta2_decay), got {value!r}")
    return value


def _eps(function: str, name: str, value: Any) -> tuple[Optional[float], float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{function}: {name} must be a pair (eps1 or None, eps2), got {value!r}")
    eps1 = None if value[0] is None else _checks.nonnegative_float(function, f"{name}[0]", value[0])
    return eps1, _checks.nonnegative_float(function, f"{name}[1]", value[1])


def _clip_threshold(function: str, name: str, value: Any) -> float:
    value = _checks.real(function, name, value)
    if not value >= 1:
        raise ValueError(f"{function}: {name} must be >= 1 (inf: no clipping), got {value!r}")
    return value


def _beta1(function: str, name: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    value = _checks.real(function, name, value)
    if not 0 <= value < 1:
        raise ValueError(f"{function}: {name} must be None or in [0, 1), got {value!r}")
    return value


def _as_batch(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _steps(function: str, step: Any, batch: int) -> list[float]:
    if isinstance(step, np.ndarray):  # 1-D: one per parameter, or 0-d: one for all
        if step.ndim > 1:
            raise ValueError(f"{function}: step must be an int or a 1-D array of one per parameter, got shape "
                             f"{step.shape}")
        step = list(step) if step.ndim else step[()]
    steps = _as_batch(step) if isinstance(step, (list, tuple)) else [step] * batch
    if len(steps) != batch:
        raise ValueError(f"{function}: step has {len(steps)} entries for {batch} parameters")
    return [float(_checks.positive_int(function, "step", s)) for s in steps]


def _in_place(call: Call, name: str, x: Any, shapes: Sequence[tuple[int, ...]], dtype: np.dtype):
    """An array written in place: this backend's ndarray, one of ``shapes``, dtype, C-contiguous,
    writable; never converted (a copy would not be the caller's array)."""
    xp = call.xp
    if not isinstance(x, xp.ndarray):
        raise TypeError(f"{call.function}: {name} is written in place and must be a {xp.__name__}.ndarray, got "
                        f"{type(x).__module__}.{type(x).__name__}")
    if tuple(x.shape) not in [tuple(s) for s in shapes]:
        wanted = " or ".join(str(tuple(s)) for s in shapes)
        raise ValueError(f"{call.function}: {name} has shape {tuple(x.shape)}, expected {wanted}")
    if x.dtype != dtype:
        raise TypeError(f"{call.function}: {name} must be {np.dtype(dtype).name}, got {x.dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{call.function}: {name} must be C-contiguous to be written in place")
    if not call.on_device and not x.flags.writeable:
        raise ValueError(f"{call.function}: {name} is read-only")
    return x


def _is_sparse(x: Any) -> bool:
    """scipy/cupyx sparse matrices and arrays (tocsr), torch sparse tensors (their layout)."""
    return hasattr(x, "tocsr") or "sparse" in str(getattr(x, "layout", ""))


def _bits(x: Any, fmt: str):
    """The array the kernel reads: 16-bit floats as their uint16 bits."""
    return x.view(np.uint16) if fmt in ("bfloat16", "float16") else x


def run_step(call: Call, fmt: str, params: list, grads: list, row_vars: list, col_vars: list, exp_avgs: list,
             steps: list[float], *, lr: float, beta2_decay: float, eps1: float, eps2: float, d: float,
             weight_decay: float, beta1: float, maximize: bool, relative_step: bool, scale_parameter: bool,
             warmup_init: bool, names: Sequence[str] = ()) -> None:
    """The launch of validated arrays (one shape, one dtype, C-contiguous, this backend's): the
    shared entry of :func:`adafactor_step` and the torch optimizer. Raises :class:`NonFiniteError`."""
    shape = tuple(params[0].shape)
    factored = len(shape) >= 2
    slices = int(np.prod(shape[:-2], dtype=np.int64)) if factored else 1
    kernel_params = [_bits(p, fmt).reshape(slices, shape[-2], shape[-1]) if factored else _bits(p, fmt)
                     for p in params]
    kernel_grads = [_bits(g, fmt).reshape(slices, shape[-2], shape[-1]) if factored else _bits(g, fmt)
                    for g in grads]
    kernel_rows = [r.reshape(slices, shape[-2]) if factored else None for r in row_vars]
    kernel_cols = [c.reshape(slices, shape[-1]) if factored else c.reshape(-1) for c in col_vars]
    kernel_avgs = [a.reshape(kernel_params[0].shape) for a in exp_avgs] if beta1 else []
    options = call.module.AdafactorOptions(
        lr=lr, beta2_decay=beta2_decay, eps1=eps1, eps2=eps2, d=d, weight_decay=weight_decay, beta1=beta1,
        maximize=maximize, relative_step=relative_step, scale_parameter=scale_parameter, warmup_init=warmup_init)
    status = call.status(*([0] * len(params)))
    call.module.adafactor_step(fmt, kernel_params, kernel_grads, kernel_rows, kernel_cols, kernel_avgs, steps,
                               options, status, call.stream())
    codes = call.read(status)
    bad = [b for b, code in enumerate(codes) if code]
    if bad:
        kinds = ["grad" if codes[b] == 1 else "param" for b in bad]
        shown = ", ".join(("the gradient of " if kind == "grad" else "") + (names[b] if b < len(names) else str(b))
                          for b, kind in zip(bad, kinds))
        raise NonFiniteError(f"{call.function}: NaN/inf in {shown}; those parameters and their state were not "
                             f"updated (the others were): skip the step or lower the learning rate", bad, kinds)


@_checks.constrained(lr=_checks.positive_float, beta2_decay=_beta2_decay, eps=_eps, d=_clip_threshold,
                     weight_decay=_checks.nonnegative_float, maximize=_checks.flag, relative_step=_checks.flag,
                     scale_parameter=_checks.flag, warmup_init=_checks.flag, beta1=_beta1)
def adafactor_step(param: ArrayOrBatch, grad: ArrayOrBatch, row_var: ArrayOrBatch, col_var: ArrayOrBatch,
                   step: Union[int, Sequence[int]], *, lr: float = 1e-2, beta2_decay: float = -0.8,
                   eps: tuple[Optional[float], float] = (None, 1e-3), d: float = 1.0, weight_decay: float = 0.0,
                   maximize: bool = False, relative_step: bool = True, scale_parameter: bool = True,
                   warmup_init: bool = False, beta1: Optional[float] = None,
                   exp_avg: Optional[ArrayOrBatch] = None) -> None:
    """One Adafactor step, in place: param, row_var, col_var (and exp_avg) are updated.

    With the defaults this is torch.optim.Adafactor's step: for step t (from 1),
    w = t^beta2_decay, R = lerp(R, mean(G^2, -1), w), C = lerp(C, mean(G^2, -2), w),
    U = G / sqrt(max(R C^T / max(mean(R), eps1), eps1^2)), rho = min(lr, 1/sqrt(t)),
    alpha = max(eps2, RMS(X)) rho, X = X (1 - lr weight_decay) - alpha / max(1, RMS(U)/d) U.

    Parameters
    ----------
    param : array (numpy, or CuPy on the GPU) of shape (..., n, m) or (m,), float32, float64,
        float16 or bfloat16 (ml_dtypes), C-contiguous and writable; or a list of such arrays of one
        shape and dtype, stepped together in one launch (RMS(X) and RMS(U) are per parameter).
    grad : array(s) of param's shape and dtype, any layout (copied once if not C-contiguous).
        Sparse gradients are refused.
    row_var : (..., n) or torch's (..., n, 1) state array(s), written in place; None for a vector.
    col_var : (..., m) or torch's (..., 1, m) state array(s), written in place; for a vector, its
        unfactored second moment, of param's shape. State is float64 for float64 parameters and
        float32 otherwise (:func:`state_dtype`), zeros before the first step.
    step : the number t >= 1 of this step (the caller counts), or one per parameter.
    lr : > 0. With ``relative_step`` the cap of the relative step size (torch's lr), else the step size.
    beta2_decay : <= 0; the moments' weight of the new G^2 is t^beta2_decay.
    eps : (eps1, eps2): eps1 floors mean(R) and (squared) the estimate, None meaning the machine
        epsilon of the state dtype (torch's for float32 and float64 parameters); eps2 floors RMS(X).
    d : clipping threshold of RMS(U), >= 1 (inf: no clipping).
    weight_decay : >= 0, decoupled: X *= 1 - lr * weight_decay (torch's form).
    maximize : step along +G.
    relative_step : rho_t = min(lr, 1/sqrt(t)) (torch, the paper); False: rho_t = lr (Hugging Face).
    scale_parameter : alpha_t = max(eps2, RMS(X)) rho_t; False: alpha_t = rho_t.
    warmup_init : with relative_step, rho_t = min(1e-6 t, 1/sqrt(t)) (Hugging Face's; lr unused).
    beta1 : None (no first moment, torch) or in [0, 1): exp_avg = beta1 exp_avg + (1 - beta1)
        alpha_t Uclipped, X = X (1 - lr weight_decay) - exp_avg (the paper's and Hugging Face's
        momentum, taken over the scaled, clipped update).
    exp_avg : array(s) of param's shape in the state dtype, written in place; required with beta1.

    Raises
    ------
    TypeError (wrong dtype or array type), ValueError (shapes, layout, options), NonFiniteError
    (a ValueError: NaN/inf in a gradient or parameter; those parameters are left untouched).
    """
    function = "adafactor_step"
    params, grads = _as_batch(param), _as_batch(grad)
    row_vars, col_vars = _as_batch(row_var), _as_batch(col_var)
    batch = len(params)
    if batch == 0:
        raise ValueError(f"{function}: param is an empty list")
    for name, values in (("grad", grads), ("row_var", row_vars), ("col_var", col_vars)):
        if len(values) != batch:
            raise ValueError(f"{function}: {name} has {len(values)} entries for {batch} parameters")
    momentum = beta1 is not None and beta1 != 0.0
    if momentum and exp_avg is None:
        raise ValueError(f"{function}: beta1={beta1} needs exp_avg, the first moment (param's shape, zeros at first)")
    if exp_avg is not None and not momentum:
        raise ValueError(f"{function}: exp_avg is given but beta1 is {beta1}; pass beta1 in (0, 1) to use it")
    exp_avgs = _as_batch(exp_avg) if momentum else []
    if momentum and len(exp_avgs) != batch:
        raise ValueError(f"{function}: exp_avg has {len(exp_avgs)} entries for {batch} parameters")
    steps = _steps(function, step, batch)
    for b, g in enumerate(grads):
        if _is_sparse(g):
            raise TypeError(f"{function}: grad[{b}] is sparse; Adafactor needs every entry of the gradient "
                            "(densify it, e.g. grad.toarray())")
    def label(name: str, b: int) -> str:
        return name if batch == 1 else f"{name}[{b}]"

    arrays = {}
    for name, values in (("param", params), ("grad", grads), ("row_var", row_vars), ("col_var", col_vars),
                         ("exp_avg", exp_avgs)):
        arrays.update({label(name, b): value for b, value in enumerate(values)})
    call = resolve(function, **arrays)
    xp = call.xp
    if not isinstance(params[0], xp.ndarray):
        _in_place(call, label("param", 0), params[0], [()], np.dtype(np.float32))  # raises the TypeError
    shape, dtype = tuple(params[0].shape), params[0].dtype
    fmt = dtype.name
    states = state_dtype(dtype)
    if len(shape) == 0 or 0 in shape:
        raise ValueError(f"{function}: param must have at least 1 dimension and no empty one, got shape {shape}")
    factored = len(shape) >= 2
    row_shapes = [shape[:-1], shape[:-1] + (1,)] if factored else [()]
    col_shapes = [shape[:-2] + shape[-1:], shape[:-2] + (1, shape[-1])] if factored else [shape]
    checked_grads = []
    for b in range(batch):
        _in_place(call, label("param", b), params[b], [shape], dtype)
        g = call._as_backend_array(label("grad", b), grads[b])
        if g.dtype != dtype:
            raise TypeError(f"{function}: {label('grad', b)} is {g.dtype} but param is {dtype}; pass both in one dtype")
        if tuple(g.shape) != shape:
            raise ValueError(f"{function}: {label('grad', b)} has shape {tuple(g.shape)}, param has {shape}")
        checked_grads.append(xp.ascontiguousarray(g))
        if factored:
            _in_place(call, label("row_var", b), row_vars[b], row_shapes, states)
        elif row_vars[b] is not None:
            raise ValueError(f"{function}: {label('row_var', b)} must be None for a vector parameter (its moment is "
                             "col_var, of param's shape)")
        _in_place(call, label("col_var", b), col_vars[b], col_shapes, states)
        if momentum:
            _in_place(call, label("exp_avg", b), exp_avgs[b], [shape], states)
    eps1, eps2 = eps
    run_step(call, fmt, params, checked_grads, row_vars, col_vars, exp_avgs, steps, lr=lr, beta2_decay=beta2_decay,
             eps1=float(np.finfo(states).eps) if eps1 is None else eps1, eps2=eps2, d=d, weight_decay=weight_decay,
             beta1=beta1 if momentum else 0.0, maximize=maximize, relative_step=relative_step,
             scale_parameter=scale_parameter, warmup_init=warmup_init,
             names=[label("param", b) for b in range(batch)])
