"""The kernels as torch custom operators (namespace ``lowrank_hpc``): real implementations on
the core's kernels, fake ones for ``torch.compile``, and autograd formulas written with the
same operators (so second derivatives work too). The dense products' GEMMs, forward and
backward, are torch's (on the CPU too: numpy's BLAS threads would spin beside torch's).

Tensors reach the kernels without copies: CPU tensors as numpy views of their storage, CUDA
tensors as CuPy views through DLPack (the kernel runs on torch's current stream). Results come
back the same way (``torch.from_numpy`` / ``torch.from_dlpack``).

Low precision: every operator also takes float16 and bfloat16 tensors (read and summed in
float32, each output rounded once to the input's format; the dense products' backward GEMMs,
and lowrank_product's forward one, are torch's in the tensors' dtype, which sum in float32 and
round once too). CPU
bfloat16 tensors travel as ``ml_dtypes.bfloat16`` numpy views (ml_dtypes is in the torch extra);
CuPy has no bfloat16, so CUDA bfloat16 tensors are refused with a TypeError.
"""
from __future__ import annotations

from typing import Any, Callable, ContextManager, Optional, Sequence

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad

from .. import _backend, ops
from ..ops import _factors

_FLOATS = (torch.float32, torch.float64)
_HALVES = (torch.float16, torch.bfloat16)
_INDICES = (torch.int32, torch.int64)
_ALIASES = {"exp": "exponential"}


# -- checks shared by the real and the fake implementations (errors name the argument) ------------

def _check_float(function: str, name: str, x: torch.Tensor, ndims: Sequence[int], like: Optional[tuple] = None):
    if x.dtype not in _FLOATS and x.dtype not in _HALVES:
        raise TypeError(f"{function}: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}")
    if x.dtype == torch.bfloat16 and x.device.type == "cuda":
        raise TypeError(f"{function}: {name} is a CUDA bfloat16 tensor; CuPy has no bfloat16, so on the GPU the "
                        "kernels take float16, float32 or float64 (bfloat16 works on the CPU)")
    if x.dim() not in ndims:
        wanted = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{function}: {name} must have {wanted} dimensions, got shape {tuple(x.shape)}")
    if like is not None:
        other_name, other = like
        if x.dtype != other.dtype:
            raise TypeError(f"{function}: {name} is {x.dtype} but {other_name} is {other.dtype}; pass both in "
                            "one precision")
        _check_device(function, name, x, other_name, other)


def _check_device(function: str, name: str, x: torch.Tensor, other_name: str, other: torch.Tensor) -> None:
    if x.device != other.device:
        raise ValueError(f"{function}: {name} is on {x.device} but {other_name} is on {other.device}; move both "
                         "to one device")
    if x.device.type not in ("cpu", "cuda", "meta"):
        raise ValueError(f"{function}: {name} is on {x.device}; the kernels take CPU or CUDA tensors")


def _check_indices(function: str, rows: torch.Tensor, cols: torch.Tensor, like: tuple) -> None:
    for name, x in (("rows", rows), ("cols", cols)):
        if x.dtype not in _INDICES:
            raise TypeError(f"{function}: {name} must be an int32 or int64 tensor, got {x.dtype}")
        if x.dim() != 1:
            raise ValueError(f"{function}: {name} must be 1-D, got shape {tuple(x.shape)}")
        _check_device(function, name, x, *like)
    if rows.shape[0] != cols.shape[0]:
        raise ValueError(f"{function}: rows has length {rows.shape[0]} but cols has {cols.shape[0]}")


def _check_pair(function: str, U: torch.Tensor, V: torch.Tensor, ndims: Sequence[int] = (2,)) -> None:
    _check_float(function, "U", U, ndims)
    _check_float(function, "V", V, ndims, like=("U", U))
    if U.dim() != V.dim() or U.shape[:-2] != V.shape[:-2] or U.shape[-1] != V.shape[-1]:
        raise ValueError(f"{function}: U has shape {tuple(U.shape)} and V has shape {tuple(V.shape)}; expected "
                         "(..., m, r) and (..., n, r) with the same batch and rank r")


def kernel_name(function: str, kernel: str) -> str:
    name = _ALIASES.get(kernel, kernel)
    if name not in ops.KERNELS:
        raise ValueError(f"{function}: unknown kernel {kernel!r}; valid kernels are {', '.join(ops.KERNELS)} "
                         "(or 'exp' for 'exponential')")
    return name


# -- tensors to arrays and back, without copies ----------------------------------------------------

def _array(x: torch.Tensor) -> Any:
    """A numpy (CPU) or CuPy (CUDA) view of the tensor's memory (CPU bfloat16: an
    ``ml_dtypes.bfloat16`` view, as numpy has no bfloat16 of its own)."""
    x = x.detach()
    if x.device.type == "cuda":
        return _backend.cupy_module().from_dlpack(x)
    if not x.is_contiguous():
        # The kernels take C-contiguous arrays: torch's blocked copy of a transposed view
        # (512 x 1024 float32: 0.26 ms) where numpy's ascontiguousarray took 1.5 ms.
        x = x.contiguous()
    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view(_bfloat16())
    return x.numpy()


def _bfloat16() -> np.dtype:
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError("bfloat16 tensors need ml_dtypes (pip install 'lowrank_hpc[torch]' or ml_dtypes): "
                        "numpy has no bfloat16 of its own") from None
    return np.dtype(ml_dtypes.bfloat16)


def _tensor(a: Any) -> torch.Tensor:
    if isinstance(a, np.ndarray):
        if a.dtype.name == "bfloat16":  # the bits, viewed back as torch's bfloat16 (no copy)
            return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(a)
    return torch.from_dlpack(a)


def _torch_gemm(a: np.ndarray, b: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """a @ b of host arrays by torch's GEMM, on views of the same memory (no copies). 16-bit
    factors multiply in their format: torch's CPU GEMMs sum them in float32 and round once (for
    bfloat16 on AMX / AVX512-BF16 hardware: 0.49 against 2.6 ms upcast + float32 GEMM + rounding,
    2000 x 2000 at r = 32)."""
    product = torch.matmul(_tensor(a), _tensor(b), out=None if out is None else _tensor(out))
    return out if out is not None else _array(product)


def _scope(x: torch.Tensor) -> ContextManager:
    """Where a kernel of x's device runs. CUDA: torch's current stream of the device as CuPy's
    (ordered after the autograd work that produced the inputs). CPU: torch's GEMM for the dense
    products instead of numpy's, whose BLAS threads would spin beside torch's."""
    if x.device.type != "cuda":
        return _backend.host_gemm(_torch_gemm, takes_halves=True)
    stream = torch.cuda.current_stream(x.device)
    return _backend.external_stream(stream.cuda_stream, x.device.index)


# -- sampled_product: vals[k] = <U[rows[k]], V[cols[k]]> -------------------------------------------

@torch.library.custom_op("lowrank_hpc::sampled_product", mutates_args=())
def sampled_product_op(U: torch.Tensor, V: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    _check_sampled(U, V, rows, cols)
    with _scope(U):
        return _tensor(ops.sampled_product(_array(U), _array(V), _array(rows), _array(cols), check_finite=False))


def _check_sampled(U, V, rows, cols):
    _check_pair("sampled_product", U, V)
    _check_indices("sampled_product", rows, cols, ("U", U))


@sampled_product_op.register_fake
def _(U, V, rows, cols):
    _check_sampled(U, V, rows, cols)
    return U.new_empty(rows.shape[0])


def _sampled_setup(ctx, inputs, output):
    U, V, rows, cols = inputs
    ctx.save_for_backward(U, V, rows, cols)


def _sampled_backward(ctx, grad):
    U, V, rows, cols = ctx.saved_tensors
    grad_U = grad_V = None
    if ctx.needs_input_grad[0]:
        grad_U = sparse_times_dense_fn(rows, cols, grad, V, U.shape[0], False)
    if ctx.needs_input_grad[1]:
        grad_V = sparse_times_dense_fn(rows, cols, grad, U, V.shape[0], True)
    return grad_U, grad_V, None, None


sampled_product_op.register_autograd(_sampled_backward, setup_context=_sampled_setup)


# -- sparse_times_dense: S @ B (S^T @ B with transpose) for S given by coordinates -----------------

@torch.library.custom_op("lowrank_hpc::sparse_times_dense", mutates_args=())
def sparse_times_dense_op(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, B: torch.Tensor,
                          n_rows: int, transpose: bool) -> torch.Tensor:
    _check_spmm(rows, cols, vals, B, n_rows)
    with _scope(B):
        out = ops.sparse_times_dense(_array(rows), _array(cols), _array(vals), _array(B), n_rows,
                                     transpose=transpose, check_finite=False)
    return _tensor(out)


def _check_spmm(rows, cols, vals, B, n_rows):
    function = "sparse_times_dense"
    _check_float(function, "vals", vals, (1,))
    _check_float(function, "B", B, (2,), like=("vals", vals))
    _check_indices(function, rows, cols, ("vals", vals))
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"{function}: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    if n_rows < 1:
        raise ValueError(f"{function}: n_rows must be >= 1, got {n_rows}")


@sparse_times_dense_op.register_fake
def _(rows, cols, vals, B, n_rows, transpose):
    _check_spmm(rows, cols, vals, B, n_rows)
    return B.new_empty((n_rows, B.shape[1]))


def _spmm_setup(ctx, inputs, output):
    rows, cols, vals, B, n_rows, transpose = inputs
    ctx.transpose = transpose
    ctx.save_for_backward(rows, cols, vals, B)


def _spmm_backward(ctx, grad):
    rows, cols, vals, B = ctx.saved_tensors
    # Entry k adds vals[k] B[cols[k]] to row rows[k] of the result (the other way round with
    # transpose): d vals[k] = <grad[rows[k]], B[cols[k]]>, d B = S^T grad (S grad with transpose).
    out_index, in_index = (cols, rows) if ctx.transpose else (rows, cols)
    grad = grad.contiguous()  # once for both products (a transposed grad, as KernelizedLoRA's, was copied twice)
    grad_vals = grad_B = None
    if ctx.needs_input_grad[2]:
        grad_vals = sampled_product_fn(grad, B, out_index, in_index)
    if ctx.needs_input_grad[3]:
        grad_B = sparse_times_dense_fn(rows, cols, vals, grad, B.shape[0], not ctx.transpose)
    return None, None, grad_vals, grad_B, None, None


sparse_times_dense_op.register_autograd(_spmm_backward, setup_context=_spmm_setup)


# -- lowrank_product: U @ V^T ----------------------------------------------------------------------

@torch.library.custom_op("lowrank_hpc::lowrank_product", mutates_args=())
def lowrank_product_op(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    _check_pair("lowrank_product", U, V, (2, 3))
    with _scope(U):
        return _tensor(ops.lowrank_product(_array(U), _array(V), check_finite=False))


@lowrank_product_op.register_fake
def _(U, V):
    _check_pair("lowrank_product", U, V, (2, 3))
    return U.new_empty(U.shape[:-1] + V.shape[-2:-1])


def _pair_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _gemm_backward(ctx, grad_product, U, V):
    """(d U, d V) of U V^T given d(U V^T): grad V and grad^T U, by torch's GEMM (dense GEMM is
    the vendor BLAS's job; torch's takes the transposed grad without copying it)."""
    grad_U = grad_V = None
    if ctx.needs_input_grad[0]:
        grad_U = torch.matmul(grad_product, V)
    if ctx.needs_input_grad[1]:
        grad_V = torch.matmul(grad_product.transpose(-1, -2), U)
    return grad_U, grad_V


def _lowrank_backward(ctx, grad):
    U, V = ctx.saved_tensors
    return _gemm_backward(ctx, grad, U, V)


lowrank_product_op.register_autograd(_lowrank_backward, setup_context=_pair_setup)


# -- kernel_product: f(U V^T), dense or its top-k ---------------------------------------------------

def kernel_backward(kernel: str, grad: torch.Tensor, values: torch.Tensor,
                    inner: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:
    """grad * f'(x) from y = f(x), for every kernel of the core (no need to keep x = <U_i, V_j>),
    by torch's own fused (and differentiable) backward of each f: one pass over the m x n
    gradient where ``grad * (1 - y * y)`` took three. ``inner`` gives x (float32) at values'
    positions, for the one case y cannot tell: piecewise_linear in float16/bfloat16, whose
    rounding takes an x just inside (-1, 1) to y = +-1 (bfloat16 0.998 -> 1.0). relu in float16
    gives an x in (0, 3e-8), rounded to y = +0, the slope 0, as torch's relu of the rounded
    float16 product does: telling it would cost a third GEMM in every backward."""
    if kernel == "identity":
        return grad
    if kernel == "relu":
        return torch.ops.aten.threshold_backward(grad, values, 0)  # y > 0 exactly where x > 0
    if kernel == "exponential":
        return grad * values
    if kernel == "tanh":
        return torch.ops.aten.tanh_backward(grad, values)  # grad (1 - y^2)
    if values.dtype in _HALVES and inner is not None:
        x = inner()
        return grad * ((x > -1) & (x < 1)).to(grad.dtype)
    # piecewise_linear: y = x clamped to [-1, 1], so -1 < y < 1 exactly where -1 < x < 1
    return torch.ops.aten.hardtanh_backward(grad, values, -1.0, 1.0)


@torch.library.custom_op("lowrank_hpc::kernel_product", mutates_args=())
def kernel_product_op(U: torch.Tensor, V: torch.Tensor, kernel: str) -> torch.Tensor:
    _check_pair("kernel_product", U, V, (2, 3))
    kernel = kernel_name("kernel_product", kernel)
    with _scope(U):
        return _tensor(ops.kernel_product(_array(U), _array(V), kernel, check_finite=False))


@kernel_product_op.register_fake
def _(U, V, kernel):
    _check_pair("kernel_product", U, V, (2, 3))
    kernel_name("kernel_product", kernel)
    return U.new_empty(U.shape[:-1] + V.shape[-2:-1])


def _kernel_setup(ctx, inputs, output):
    U, V, kernel = inputs
    ctx.kernel = kernel_name("kernel_product", kernel)
    ctx.save_for_backward(U, V, output)


def _kernel_backward(ctx, grad):
    U, V, output = ctx.saved_tensors
    weighted = kernel_backward(ctx.kernel, grad, output,
                               lambda: torch.matmul(U.float(), V.float().transpose(-1, -2)))  # the forward's x
    grad_U, grad_V = _gemm_backward(ctx, weighted, U, V)
    return grad_U, grad_V, None


kernel_product_op.register_autograd(_kernel_backward, setup_context=_kernel_setup)


def _check_top_k(function: str, U, V, kernel: str, k: int, mode: str, order: str) -> None:
    _check_pair(function, U, V, (2, 3))
    kernel_name(function, kernel)
    if order not in ops.TOP_K_ORDERS:
        raise ValueError(f"{function}: top_k_order must be one of {ops.TOP_K_ORDERS}, got {order!r}")
    limit = V.shape[-2] if mode == "row" else U.shape[-2] * V.shape[-2]  # a row's entries, or a problem's
    if not 1 <= k <= limit:
        raise ValueError(f"{function}: top_k must satisfy 1 <= top_k <= {limit} in {mode} mode, got {k}")


@torch.library.custom_op("lowrank_hpc::kernel_top_k_rows", mutates_args=())
def kernel_top_k_rows_op(U: torch.Tensor, V: torch.Tensor, kernel: str, k: int,
                         order: str = "magnitude") -> tuple[torch.Tensor, torch.Tensor]:
    _check_top_k("kernel_product", U, V, kernel, k, "row", order)
    with _scope(U):
        result = ops.kernel_product(_array(U), _array(V), kernel_name("kernel_product", kernel), k,
                                    top_k_mode="row", top_k_order=order, check_finite=False)
    return _tensor(result.values), _tensor(result.indices)


@kernel_top_k_rows_op.register_fake
def _(U, V, kernel, k, order="magnitude"):
    _check_top_k("kernel_product", U, V, kernel, k, "row", order)
    return U.new_empty(U.shape[:-1] + (k,)), U.new_empty(U.shape[:-1] + (k,), dtype=torch.int64)


@torch.library.custom_op("lowrank_hpc::kernel_top_k_global", mutates_args=())
def kernel_top_k_global_op(U: torch.Tensor, V: torch.Tensor, kernel: str, k: int,
                           order: str = "magnitude") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_top_k("kernel_product", U, V, kernel, k, "global", order)
    with _scope(U):
        result = ops.kernel_product(_array(U), _array(V), kernel_name("kernel_product", kernel), k,
                                    top_k_mode="global", top_k_order=order, check_finite=False)
    return _tensor(result.values), _tensor(result.rows), _tensor(result.cols)


@kernel_top_k_global_op.register_fake
def _(U, V, kernel, k, order="magnitude"):
    _check_top_k("kernel_product", U, V, kernel, k, "global", order)
    shape = U.shape[:-2] + (k,)
    return U.new_empty(shape), U.new_empty(shape, dtype=torch.int64), U.new_empty(shape, dtype=torch.int64)


def _top_k_setup(ctx, inputs, output):
    U, V, kernel = inputs[:3]
    ctx.kernel = kernel_name("kernel_product", kernel)
    ctx.save_for_backward(U, V, *output)
    ctx.mark_non_differentiable(*output[1:])


def _selected_backward(ctx, grad_values, values, rows, cols, U, V):
    """(d U, d V) of the selected values f(<U[rows[k]], V[cols[k]]>): the sampled product's
    adjoint, weighted by f' (the selection itself is piecewise constant). U (m, r), V (n, r) and
    the selection's tensors of one problem, or of a batch (U (b, m, r), V (b, n, r), each
    problem's indices its own), which runs as one block-diagonal problem."""
    if U.dim() == 3:  # problem p's rows and columns moved by p m and p n
        batch, (m, r), n = U.shape[0], U.shape[1:], V.shape[1]
        rows = _moved(rows.reshape(batch, -1), 0, batch, m, True)
        cols = _moved(cols.reshape(batch, -1), 0, batch, n, True)
        grad_U, grad_V, _, _ = _selected_backward(ctx, grad_values.reshape(-1), values.reshape(-1), rows, cols,
                                                  U.reshape(batch * m, r), V.reshape(batch * n, r))
        return (None if grad_U is None else grad_U.reshape(U.shape),
                None if grad_V is None else grad_V.reshape(V.shape), None, None)
    weights = kernel_backward(ctx.kernel, grad_values, values,
                              lambda: sampled_product_fn(U.float(), V.float(), rows, cols))
    grad_U = grad_V = None
    if ctx.needs_input_grad[0]:
        grad_U = sparse_times_dense_fn(rows, cols, weights, V, U.shape[0], False)
    if ctx.needs_input_grad[1]:
        grad_V = sparse_times_dense_fn(rows, cols, weights, U, V.shape[0], True)
    return grad_U, grad_V, None, None


def _top_k_rows_backward(ctx, grad_values, grad_indices):
    U, V, values, indices = ctx.saved_tensors
    m, k = indices.shape[-2:]
    rows = torch.arange(m, device=U.device).repeat_interleave(k).expand(*indices.shape[:-2], m * k)
    return _selected_backward(ctx, grad_values.reshape(-1), values.reshape(-1), rows.reshape(-1), indices.reshape(-1),
                              U, V) + (None,)


def _top_k_global_backward(ctx, grad_values, grad_rows, grad_cols):
    U, V, values, rows, cols = ctx.saved_tensors
    return _selected_backward(ctx, grad_values, values, rows, cols, U, V) + (None,)


kernel_top_k_rows_op.register_autograd(_top_k_rows_backward, setup_context=_top_k_setup)
kernel_top_k_global_op.register_autograd(_top_k_global_backward, setup_context=_top_k_setup)


# -- the same operators for torch.func and forward mode ----------------------------------------------
# torch.func's transforms (grad, jacrev, vmap of a grad) take an autograd.Function with a
# setup_context staticmethod, which the Function torch's register_autograd generates for a custom
# operator lacks (pytorch issue 168393), and forward mode (torch.func.jvp, jacfwd, hessian,
# torch.autograd.forward_ad) needs a jvp formula, which register_autograd cannot take. Under a
# transform or a forward-mode level each operator runs inside such a Function, with its own setup,
# backward and jvp formulas (which call these in turn); elsewhere the operator itself, which
# torch.compile traces (dynamo warns on an autograd.Function in torch 2.13).

def _transformable(op, setup: Callable, formula: Callable, vmap_rule: Optional[Callable],
                   tangent: Callable) -> Callable:
    """op as a torch.func-ready autograd.Function: ``tangent(inputs, outputs, tangents)`` gives
    the outputs' tangents (None: none) from the inputs' (None where an input has none)."""
    class Function(torch.autograd.Function):
        @staticmethod
        def forward(*args):
            return op(*args)

        @staticmethod
        def setup_context(ctx, inputs, output):
            setup(ctx, inputs, output)
            outputs = output if isinstance(output, tuple) else (output,)
            everything = tuple(inputs) + outputs
            ctx.forward_layout = [None if isinstance(x, torch.Tensor) else x for x in everything]
            ctx.forward_inputs = len(inputs)
            ctx.save_for_forward(*(x for x in everything if isinstance(x, torch.Tensor)))

        @staticmethod
        def backward(ctx, *grads):
            return formula(ctx, *grads)

        @staticmethod
        def jvp(ctx, *tangents):
            saved = iter(ctx.saved_tensors)
            everything = [next(saved) if x is None else x for x in ctx.forward_layout]
            return tangent(everything[:ctx.forward_inputs], everything[ctx.forward_inputs:], tangents)

    if vmap_rule is None:
        Function.generate_vmap_rule = True  # vmap of the forward: torch's per-element fallback over the operator
    else:
        Function.vmap = staticmethod(vmap_rule)
    Function.__name__ = Function.__qualname__ = op._name.split("::")[-1] + "_function"

    def call(*args):
        if _forward_ad._current_level >= 0:  # forward mode, which the operator alone lacks
            # Under torch.compile, run eagerly (a graph break): dynamo cannot trace the Function.
            return _eager_apply(Function, *args) if torch.compiler.is_compiling() else Function.apply(*args)
        if not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None:
            return Function.apply(*args)
        return op(*args)

    return call


def _eager_apply(function, *args):
    return function.apply(*args)


try:  # torch.compile calls it eagerly (a graph break; fullgraph=True refuses, naming the reason)
    _eager_apply = torch.compiler.disable(_eager_apply, reason="lowrank_hpc.torch's forward mode runs its operators' "
                                          "autograd.Function eagerly (dynamo cannot trace it)")
except TypeError:  # a torch whose disable takes no reason
    _eager_apply = torch.compiler.disable(_eager_apply)


def _bilinear_tangent(product: Callable, a, b, da, db):
    """d product(a, b) = product(da, b) + product(a, db), None for a missing tangent."""
    terms = [t for t in (None if da is None else product(da, b), None if db is None else product(a, db))
             if t is not None]
    return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _sampled_tangent(inputs, outputs, tangents):
    U, V, rows, cols = inputs
    return _bilinear_tangent(lambda U_, V_: sampled_product_fn(U_, V_, rows, cols), U, V, *tangents[:2])


def _spmm_tangent(inputs, outputs, tangents):
    rows, cols, vals, B, n_rows, transpose = inputs
    return _bilinear_tangent(lambda v, B_: sparse_times_dense_fn(rows, cols, v, B_, n_rows, transpose), vals, B,
                             *tangents[2:4])


def _gemm_tangent(U, V, dU, dV):
    """d (U V^T) = dU V^T + U dV^T, by torch's GEMM."""
    return _bilinear_tangent(lambda a, b: torch.matmul(a, b.transpose(-1, -2)), U, V, dU, dV)


def _lowrank_tangent(inputs, outputs, tangents):
    return _gemm_tangent(*inputs, *tangents[:2])


def _kernel_tangent(inputs, outputs, tangents):
    U, V, kernel = inputs
    moved = _gemm_tangent(U, V, *tangents[:2])
    if moved is None:
        return None
    return kernel_backward(kernel_name("kernel_product", kernel), moved, outputs[0],
                           lambda: torch.matmul(U.float(), V.float().transpose(-1, -2)))  # the forward's x


def _selected_tangent(kernel: str, U, V, dU, dV, values, rows, cols):
    """The selected values' tangent: f'(x) (dU[rows] . V[cols] + U[rows] . dV[cols]), the
    selection held fixed (as in _selected_backward; a batch as one block-diagonal problem)."""
    if U.dim() == 3:  # problem p's rows and columns moved by p m and p n
        batch, (m, r), n = U.shape[0], U.shape[1:], V.shape[1]
        rows = _moved(rows.reshape(batch, -1), 0, batch, m, True)
        cols = _moved(cols.reshape(batch, -1), 0, batch, n, True)
        U, V = U.reshape(batch * m, r), V.reshape(batch * n, r)
        dU, dV = (None if d is None else d.reshape(x.shape) for d, x in ((dU, U), (dV, V)))
    moved = _bilinear_tangent(lambda U_, V_: sampled_product_fn(U_, V_, rows, cols), U, V, dU, dV)
    if moved is None:
        return None
    flat = values.reshape(-1)
    return kernel_backward(kernel_name("kernel_product", kernel), moved, flat,
                           lambda: sampled_product_fn(U.float(), V.float(), rows, cols)).reshape(values.shape)


def _top_k_rows_tangent(inputs, outputs, tangents):
    U, V, kernel = inputs[:3]
    values, indices = outputs
    m, k = indices.shape[-2:]
    rows = torch.arange(m, device=U.device).repeat_interleave(k).expand(*indices.shape[:-2], m * k)
    return _selected_tangent(kernel, U, V, *tangents[:2], values, rows.reshape(-1), indices.reshape(-1)), None


def _top_k_global_tangent(inputs, outputs, tangents):
    U, V, kernel = inputs[:3]
    values, rows, cols = outputs
    return _selected_tangent(kernel, U, V, *tangents[:2], values, rows.reshape(-1), cols.reshape(-1)), None, None


# vmap of the sparse products: the elements as one problem with block-diagonal structure, one
# kernel call instead of one per element. An index into a batched operand (or the result's rows)
# moves by b times its bound; one into a shared operand stays (the operand is read in place, never
# copied per element). Every index is range-checked first, as the operator would, so a bad one is
# named as given and never lands in another element's block.

def _stacked(x: torch.Tensor, dim: Optional[int], size: int) -> torch.Tensor:
    """x with the vmapped dimension first (a broadcast view where x is not batched)."""
    return x.unsqueeze(0).expand(size, *x.shape) if dim is None else x.movedim(dim, 0)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """x's values without the wrappers of outer torch.func levels (their vmapped dimensions moved
    first), where the data-dependent test of the range check is allowed."""
    while torch._C._functorch.is_functorch_wrapped_tensor(x):
        bdim = torch._C._functorch.maybe_get_bdim(x)
        x = torch._C._functorch.get_unwrapped(x)
        if bdim >= 0:
            x = x.movedim(bdim, 0)
    return x


def _check_range(function: str, name: str, indices: torch.Tensor, bound: int) -> None:
    """IndexError for the first index outside [0, bound), named by its position in its element."""
    plain = _plain(indices)
    bad = (plain < 0) | (plain >= bound)
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise IndexError(f"{function}: {name}[{where[-1]}] = {int(plain[where])} is out of range [0, {bound}) "
                         f"(vmapped element {where[-2]})")


def _moved(indices: torch.Tensor, dim: Optional[int], size: int, bound: int, shift: bool) -> torch.Tensor:
    """The elements' (nnz,) indices as the stacked problem's (size * nnz,): + b * bound with shift."""
    stacked = _stacked(indices, dim, size).to(torch.int64)
    if shift:
        stacked = stacked + torch.arange(size, device=indices.device, dtype=torch.int64).unsqueeze(1) * bound
    return stacked.reshape(-1)


def _vmap_sampled(info, in_dims, U, V, rows, cols):
    size = info.batch_size
    U_dim, V_dim, rows_dim, cols_dim = in_dims
    Us, Vs, rows_s, cols_s = (_stacked(x, d, size) for x, d in zip((U, V, rows, cols), in_dims))
    if size == 0:
        return Us.new_empty((0, rows_s.shape[-1])), 0
    _check_sampled(Us[0], Vs[0], rows_s[0], cols_s[0])  # each element's shapes, as the operator checks them
    m, n, nnz = Us.shape[1], Vs.shape[1], rows_s.shape[-1]
    _check_range("sampled_product", "rows", rows_s, m)
    _check_range("sampled_product", "cols", cols_s, n)
    U_flat = U if U_dim is None else Us.reshape(size * m, Us.shape[-1])
    V_flat = V if V_dim is None else Vs.reshape(size * n, Vs.shape[-1])
    out = sampled_product_fn(U_flat, V_flat, _moved(rows, rows_dim, size, m, U_dim is not None),
                             _moved(cols, cols_dim, size, n, V_dim is not None))
    return out.reshape(size, nnz), 0


def _vmap_spmm(info, in_dims, rows, cols, vals, B, n_rows, transpose):
    size = info.batch_size
    rows_dim, cols_dim, vals_dim, B_dim = in_dims[:4]
    rows_s, cols_s, vals_s, Bs = (_stacked(x, d, size) for x, d in zip((rows, cols, vals, B), in_dims[:4]))
    n_other, r = Bs.shape[-2], Bs.shape[-1]
    if size == 0:
        return Bs.new_empty((0, n_rows, r)), 0
    _check_spmm(rows_s[0], cols_s[0], vals_s[0], Bs[0], n_rows)  # each element's shapes, as the operator checks them
    row_bound, col_bound = (n_other, n_rows) if transpose else (n_rows, n_other)
    _check_range("sparse_times_dense", "rows", rows_s, row_bound)
    _check_range("sparse_times_dense", "cols", cols_s, col_bound)
    # Each element's result rows are its own (the keys always move); B's rows move where B is batched.
    keys_shift, others_shift = True, B_dim is not None
    row_shift, col_shift = (others_shift, keys_shift) if transpose else (keys_shift, others_shift)
    out = sparse_times_dense_fn(_moved(rows, rows_dim, size, row_bound, row_shift),
                                _moved(cols, cols_dim, size, col_bound, col_shift), vals_s.reshape(-1),
                                B if B_dim is None else Bs.reshape(size * n_other, r), size * n_rows, transpose)
    return out.reshape(size, n_rows, r), 0


# vmap of the dense products: f(U V^T) with f element-wise (identity for lowrank_product) is row
# by row and column by column, so the elements stack into one call. Both factors batched: one
# batched (3-D) product. Only U batched: the elements' rows as one factor (B*m rows) against the
# shared V, read in place. Only V batched: the shared U against the elements' rows of V (B*n), a
# product (m, B*n) that is the result with the vmapped dimension in the middle (no copy back).
# 3-D elements (their own batch b) with one factor shared: the same within each of the b problems,
# (b, B*m, r) against (b, n, r) in place (the batched factor is moved, never the shared one copied).

def _stacked_pair(U: torch.Tensor, V: torch.Tensor, U_dim: Optional[int], V_dim: Optional[int], size: int):
    """(Us, Vs, U1, V1): both factors with the vmapped dimension first (``_stacked``) and one
    element of each (a shared factor itself; with no elements an empty tensor of an element's
    shape, dtype and device), the element for the operator's own checks."""
    Us, Vs = _stacked(U, U_dim, size), _stacked(V, V_dim, size)

    def element(x, dim, stacked):
        if dim is None:
            return x
        return stacked[0] if size else stacked.new_empty(stacked.shape[1:])

    return Us, Vs, element(U, U_dim, Us), element(V, V_dim, Vs)


def _vmap_pair(function: str, product: Callable, size: int, U: torch.Tensor, V: torch.Tensor,
               U_dim: Optional[int], V_dim: Optional[int]) -> tuple[torch.Tensor, int]:
    """vmap of ``product(U, V)`` = f(U V^T), f element-wise: elements U (..., m, r), V (..., n, r)
    (2-D, or 3-D with their own batch) at in_dims U_dim, V_dim (None: shared), as one call.
    Returns (result, out_dim): the elements' (..., m, n) results with the vmapped dimension at out_dim."""
    Us, Vs, U1, V1 = _stacked_pair(U, V, U_dim, V_dim, size)
    _check_pair(function, U1, V1, (2, 3))  # each element's shapes, as the operator checks them
    (m, r), n, lead = U1.shape[-2:], V1.shape[-2], U1.shape[:-2]  # lead: the elements' own batch, if any
    if size == 0:
        return Us.new_empty((0, *lead, m, n)), 0
    if U_dim is not None and V_dim is not None:
        out = product(Us.reshape(-1, m, r), Vs.reshape(-1, n, r))  # vmapped and own batch as one
        return out.reshape(size, *lead, m, n), 0
    if V_dim is None:  # (..., B*m, r) against V in place: (..., B*m, n), the elements one after another
        out = product(U.movedim(U_dim, len(lead)).reshape(*lead, size * m, r), V)
        return out.reshape(*lead, size, m, n), len(lead)
    # U in place against (..., B*n, r): (..., m, B*n), whose columns are the elements' one after another
    out = product(U, V.movedim(V_dim, len(lead)).reshape(*lead, size * n, r))
    return out.reshape(*lead, m, size, n), len(lead) + 1


def _vmap_lowrank(info, in_dims, U, V):
    return _vmap_pair("lowrank_product", lowrank_product_fn, info.batch_size, U, V, *in_dims)


def _vmap_kernel(info, in_dims, U, V, kernel):
    kernel_name("kernel_product", kernel)  # checked with no elements too
    return _vmap_pair("kernel_product", lambda U_, V_: kernel_product_fn(U_, V_, kernel), info.batch_size, U, V,
                      *in_dims[:2])


def _by_element(function: Callable, size: int, operands: Sequence[torch.Tensor], static: tuple):
    """``function`` on each element of the stacked operands, its tuple of results stacked (out
    dims 0): torch's per-element fallback, without its performance warning."""
    results = [function(*(x[b] for x in operands), *static) for b in range(size)]
    return tuple(torch.stack(parts) for parts in zip(*results)), (0,) * len(results[0])


def _broadcast_is_small(shared: torch.Tensor, batched: torch.Tensor, size: int) -> bool:
    """Whether ``size`` copies of ``shared`` (one element's factor) are small beside ``batched`` (the
    other factor, its ``size`` elements stacked): ops' rule for a top-k factor no stacking of rows
    reads in place (the operator makes its inputs contiguous; the broadcast's gradient is as large)."""
    return _factors.broadcast_copy_is_small(size * shared.numel() * shared.element_size(),
                                            batched.numel() * batched.element_size())


def _vmap_top_k_rows(info, in_dims, U, V, kernel, k, order):
    """Row top-k is row by row. V shared: the elements' rows in one call against V in place,
    (B*m, r) against (n, r), or for 3-D elements (b, B*m, r) against (b, n, r), the result's
    vmapped dimension after b. Otherwise one batched call (B*b, m, r) against (B*b, n, r), a shared
    U broadcast to the elements (stacking V's rows would select across elements), or a loop over
    the elements where that copy is large (``_broadcast_is_small``). Returns ((values, indices),
    out_dims): each element's (..., m, k) values (the factors' dtype) and int64 column indices."""
    size = info.batch_size
    U_dim, V_dim = in_dims[:2]
    Us, Vs, U1, V1 = _stacked_pair(U, V, U_dim, V_dim, size)
    _check_top_k("kernel_product", U1, V1, kernel, k, "row", order)
    lead, (m, r), n = U1.shape[:-2], U1.shape[-2:], V1.shape[-2]  # lead: the elements' own batch, if any
    shape = (size, *lead, m, k)
    if size == 0:
        return (Us.new_empty(shape), Us.new_empty(shape, dtype=torch.int64)), (0, 0)
    if V_dim is None:  # (..., B*m, k): the elements' rows one after another within each own-batch entry
        stacked_rows = U.movedim(U_dim, len(lead)).reshape(*lead, size * m, r)
        values, indices = kernel_top_k_rows_fn(stacked_rows, V, kernel, k, order)
        return (values.reshape(*lead, size, m, k), indices.reshape(*lead, size, m, k)), (len(lead),) * 2
    if U_dim is None and not _broadcast_is_small(U1, Vs, size):
        return _by_element(kernel_top_k_rows_fn, size, (Us, Vs), (kernel, k, order))
    values, indices = kernel_top_k_rows_fn(Us.reshape(-1, m, r), Vs.reshape(-1, n, r), kernel, k, order)
    return (values.reshape(shape), indices.reshape(shape)), (0, 0)


def _vmap_top_k_global(info, in_dims, U, V, kernel, k, order):
    """Each element's top-k is over its whole m x n (stacking rows or columns into one problem
    would select across elements): one batched call (B*b, m, r) against (B*b, n, r), a shared
    factor broadcast to the elements, or a loop over the elements where that copy is large
    (``_broadcast_is_small``). Returns ((values, rows, cols), (0, 0, 0)): each element's (..., k)
    values (the factors' dtype) and int64 positions."""
    size = info.batch_size
    U_dim, V_dim = in_dims[:2]
    Us, Vs, U1, V1 = _stacked_pair(U, V, U_dim, V_dim, size)
    _check_top_k("kernel_product", U1, V1, kernel, k, "global", order)
    lead, (m, r), n = U1.shape[:-2], U1.shape[-2:], V1.shape[-2]
    shape = (size, *lead, k)
    if size == 0:
        return (Us.new_empty(shape), *(Us.new_empty(shape, dtype=torch.int64) for _ in range(2))), (0, 0, 0)
    if U_dim is None or V_dim is None:
        shared, batched = (U1, Vs) if U_dim is None else (V1, Us)
        if not _broadcast_is_small(shared, batched, size):
            return _by_element(kernel_top_k_global_fn, size, (Us, Vs), (kernel, k, order))
    parts = kernel_top_k_global_fn(Us.reshape(-1, m, r), Vs.reshape(-1, n, r), kernel, k, order)
    return tuple(x.reshape(shape) for x in parts), (0, 0, 0)


sampled_product_fn = _transformable(sampled_product_op, _sampled_setup, _sampled_backward, _vmap_sampled,
                                    _sampled_tangent)
sparse_times_dense_fn = _transformable(sparse_times_dense_op, _spmm_setup, _spmm_backward, _vmap_spmm, _spmm_tangent)
lowrank_product_fn = _transformable(lowrank_product_op, _pair_setup, _lowrank_backward, _vmap_lowrank,
                                    _lowrank_tangent)
kernel_product_fn = _transformable(kernel_product_op, _kernel_setup, _kernel_backward, _vmap_kernel, _kernel_tangent)
kernel_top_k_rows_fn = _transformable(kernel_top_k_rows_op, _top_k_setup, _top_k_rows_backward, _vmap_top_k_rows,
                                      _top_k_rows_tangent)
kernel_top_k_global_fn = _transformable(kernel_top_k_global_op, _top_k_setup, _top_k_global_backward,
                                        _vmap_top_k_global, _top_k_global_tangent)
