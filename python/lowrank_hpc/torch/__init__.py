"""lowrank_hpc's kernels inside torch's autograd graphs, and the SNELL adapter.

Importing this package imports torch (an optional extra: ``pip install lowrank_hpc[torch]``);
the rest of lowrank_hpc never does. The kernels are registered as torch custom operators
(``torch.ops.lowrank_hpc.*``) with fake implementations, so ``torch.compile(fullgraph=True)``
traces them, and autograd formulas made of the same operators. float32/float64 tensors (and
float16/bfloat16: summed in float32, each output rounded once to their dtype) on the
CPU or a CUDA device (with lowrank_hpc's CUDA backend) go to the kernels without copies.
Derivatives through ``torch.autograd`` and ``torch.func`` in both modes (grad, jacrev, vmap of a
grad; jvp, jacfwd, hessian, ``torch.autograd.forward_ad``): under a transform or a forward-mode
level each operator runs in an ``autograd.Function`` with the same backward and a jvp made of the
same operators (SDDMM's tangent is two SDDMMs, SpMM's two SpMMs, the dense products' torch's
GEMMs, top-k's f' times the SDDMMs at the kept entries), as torch's ``register_autograd`` alone
supports neither (pytorch issue 168393); inside a ``torch.compile``d function a forward-mode
level runs them eagerly (a graph break, which ``fullgraph=True`` refuses). Under
``vmap`` the sparse and dense products and both top-k take the stacked elements in one call
(shared factors read in place; the stacked rows' GEMM may round an entry an ulp apart from an
element's own call). The one exception, a factor that top-k shares and no stacking reads in place
(row top-k's U, global top-k's U or V): broadcast to the elements in the one call, which copies
it once per element, or run once per element where that copy would pass both 64 MiB and the
batched factor's own size.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _checks
from .._arrays import INDEX_LIMIT
from ..ops import TOP_K_ORDERS, GlobalTopK, TopK
from ..ops.kernel_product import TOP_K_MODES
from ._ops import (kernel_name, kernel_product_fn, kernel_top_k_global_fn, kernel_top_k_rows_fn, lowrank_product_fn,
                   sampled_product_fn, sparse_times_dense_fn)
from .lora import KernelizedLoRA

__all__ = ["GlobalTopK", "KernelizedLoRA", "TopK", "kernel_product", "lowrank_product", "sampled_product",
           "sparse_times_dense"]


# Index dtypes the operators take as int64; int32/int64 go through as they are, the rest (floats)
# reach the operators' TypeError naming the argument.
_WIDENED_INDICES = (torch.int8, torch.int16, torch.uint8, torch.uint16, torch.uint32, torch.uint64)


try:
    from torch._C._functorch import is_functorch_wrapped_tensor as _transformed
except ImportError:  # a torch without it: torch.compile's own test still applies
    def _transformed(_: torch.Tensor) -> bool:
        return False


def _traced(x: torch.Tensor) -> bool:
    """Under torch.compile or a torch.func transform (vmap, grad), where reading a value to branch
    on is refused ("data-dependent control flow")."""
    return torch.compiler.is_compiling() or _transformed(x)


def _index(function: str, name: str, x: torch.Tensor) -> torch.Tensor:
    """Any integer index tensor, as numpy's indices are taken: the others widened to int64 (uint64
    values above int64's range index nothing: the IndexError the core raises for them)."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _WIDENED_INDICES:
        return x
    if x.dtype == torch.uint64:  # torch has few uint64 ops: its int64 view is negative exactly above INDEX_LIMIT
        signed = x.view(torch.int64)
        if _traced(x):  # no data-dependent branch there: the core's range check names the negative view
            return signed
        beyond = signed < 0
        if bool(beyond.any()):
            k = int(torch.argmax(beyond.to(torch.uint8)))
            raise IndexError(f"{function}: {name}[{k}] = {int(signed[k]) + 2**64} is out of range (every index is "
                             f"below 2**63 - 1 = {INDEX_LIMIT})")
        return signed
    return x.to(torch.int64)


def sampled_product(U: torch.Tensor, V: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """vals[k] = <U[rows[k]], V[cols[k]]>: entries of U V^T at (rows, cols) (SDDMM), differentiable
    in U and V.

    U (m, r), V (n, r): float32/float64 (or float16/bfloat16, summed in float32) tensors of one
    dtype and device; rows, cols (nnz,) integer tensors on that device (int32/int64 used as they
    are, other integer dtypes widened to int64).
    Returns (nnz,). IndexError for an index out of range.
    """
    return sampled_product_fn(U, V, _index("sampled_product", "rows", rows), _index("sampled_product", "cols", cols))


def sparse_times_dense(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, B: torch.Tensor, n_rows: int, *,
                       transpose: bool = False) -> torch.Tensor:
    """S @ B (S^T @ B with ``transpose``) for S with entries vals[k] at (rows[k], cols[k])
    (repeated positions add up), differentiable in vals and B.

    vals (nnz,), B (k, r) float32/float64 (or float16/bfloat16, summed in float32) of one dtype
    and device; rows, cols (nnz,) integer tensors (as in ``sampled_product``);
    n_rows: rows of the result. Returns (n_rows, r).
    """
    n_rows = _checks.positive_int("sparse_times_dense", "n_rows", n_rows)  # 2.9 is an error, never 2
    return sparse_times_dense_fn(_index("sparse_times_dense", "rows", rows), _index("sparse_times_dense", "cols", cols),
                                 vals, B, n_rows, _checks.flag("sparse_times_dense", "transpose", transpose))


def lowrank_product(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """U @ V^T for U (..., m, r), V (..., n, r) (2-D, or 3-D batched), differentiable. The
    product is torch's GEMM (the vendor's): NaN/inf in U or V propagate as in ``U @ V.mT``,
    unlike ``kernel_product(U, V)``, whose f counts them and raises."""
    return lowrank_product_fn(U, V)


def kernel_product(U: torch.Tensor, V: torch.Tensor, kernel: str = "identity", top_k: Optional[int] = None, *,
                   top_k_mode: str = "row", top_k_order: str = "magnitude") -> Union[torch.Tensor, TopK, GlobalTopK]:
    """K = f(U V^T) entry-wise (``lowrank_hpc.ops.kernel_product``), dense or its top-k entries by
    |f|, differentiable in U and V (through the kept entries in top-k mode; the selection is
    piecewise constant).

    kernel: one of ``lowrank_hpc.ops.KERNELS`` (or "exp"). top_k None: the dense (..., m, n)
    tensor (2-D or 3-D inputs). top_k with ``top_k_mode="row"``: :class:`TopK` (values (..., m, k),
    indices (..., m, k) int64); ``"global"``: :class:`GlobalTopK` (values, rows, cols of shape
    (..., k): each problem's own top-k). Top-k mode takes 2-D or 3-D (batched) U and V and never
    forms the dense m x n matrix. ``top_k_order``:
    "magnitude" (best first) or "position" (columns ascending in each row; global: row-major).
    A NaN/inf entry of f(U V^T) (an overflow, or NaN/inf in U or V) raises FloatingPointError,
    as ``ops.kernel_product`` does, where the sparse operators here return what they compute.
    """
    kernel = kernel_name("kernel_product", kernel)
    # Checked with top_k None too, as ops.kernel_product does: a misspelt mode is never ignored.
    _checks.one_of(*TOP_K_MODES)("kernel_product", "top_k_mode", top_k_mode)
    _checks.one_of(*TOP_K_ORDERS)("kernel_product", "top_k_order", top_k_order)
    if top_k is None:
        return kernel_product_fn(U, V, kernel)
    top_k = _checks.integer("kernel_product", "top_k", top_k)  # numpy integers too, as ops.kernel_product
    if top_k_mode == "row":
        return TopK(*kernel_top_k_rows_fn(U, V, kernel, top_k, top_k_order))
    return GlobalTopK(*kernel_top_k_global_fn(U, V, kernel, top_k, top_k_order))
