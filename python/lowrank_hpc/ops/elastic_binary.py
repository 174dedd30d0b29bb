"""Elastic-binary proximal steps (Elbmf, Dalleiger & Vreeken 2022): the proximal operator of the
bimodal elastic net whose minima sit at 0 and 1, and the fused PALM / iPALM half-step of Boolean
matrix factorization (the functors of lowrank_hpc/ops/elastic_binary.hpp, on either backend)."""
from __future__ import annotations

from typing import Any, Optional

from .. import _checks
from .._arrays import Call, resolve
from ._maps import elementwise


@_checks.constrained(l1=_checks.nonnegative_float, l2=_checks.nonnegative_float, nonnegative=_checks.flag,
                     check_finite=_checks.flag)
def elastic_binary_prox(x: Any, l1: float, l2: float, *, nonnegative: bool = False, out: Optional[Any] = None,
                        check_finite: bool = True) -> Any:
    """The elastic-binary proximal operator, entry-wise (as the Elbmf reference implements it):

        (x - l1 sign(x)) / (1 + l2)               for x <= 1/2
        (x - l1 sign(x - 1) + l2) / (1 + l2)      for x > 1/2

    the elastic-net step towards 0 below 1/2 and towards 1 above; ``nonnegative`` clamps the
    result at 0. In a proximal gradient step l1 and l2 are the regularizer's weights times the step.

    Parameters
    ----------
    x : float32/float64 array of any shape and layout (numpy, a list, or a CUDA array).
    l1, l2 : finite numbers >= 0.
    nonnegative : clamp at 0 (the variant for factors that must stay in [0, 1]).
    out : optional array to write into (x's shape and dtype, C-contiguous, writable; may be x itself,
        any other overlap with x is a ValueError).
    check_finite : raise ValueError if x holds NaN/inf.

    Returns
    -------
    Array of x's shape and dtype (``out`` when given).
    """
    call = resolve("elastic_binary_prox", x=x, out=out)
    x = call.float_array("x", x, range(0, 33), check_finite=check_finite, allow_empty=True)
    result, _ = elementwise(call, "elastic_binary_prox", x, [l1, l2, 1.0 if nonnegative else 0.0], out=out)
    return call.wrap(result)


def half_step(call: Call, U, U_prev, gram, cross, kappa: float, lam: float, inertia: float, nonnegative: bool,
              out, active=None, gram_out=None) -> None:
    """The kernel call for a solver loop whose (batch, n, k) operands were validated once;
    gram_out (batch, k, k), if given, receives out^T out from the same pass."""
    call.module.elastic_binary_half_step(U, U_prev, gram, cross, kappa, lam, inertia, nonnegative, active, out,
                                         gram_out, call.stream())


@_checks.constrained(l1=_checks.nonnegative_float, l2=_checks.nonnegative_float,
                     inertia=_checks.fraction_or_zero, nonnegative=_checks.flag)
def elastic_binary_half_step(U: Any, U_prev: Any, gram: Any, cross: Any, l1: float, l2: float, *,
                             inertia: float = 0.0, nonnegative: bool = False, out: Optional[Any] = None) -> Any:
    """One PALM (inertia 0) or iPALM half-step of Elbmf for the factor U, fused in one pass:

        Y = U + inertia (U - U_prev)
        L = max(||gram||_F, 1e-4);  step = 1 / (1.1 L), or 2 (1 - inertia) / ((1 + 2 inertia) L)
        out = elastic_binary_prox(Y - step (Y @ gram - cross); l1 step, l2 step)

    with gram = V V^T and cross = A V^T formed by the caller's GEMM (the objective is
    1/2 ||A - U V||_F^2 plus the elastic-binary regularizer with weights l1 and l2).

    Parameters
    ----------
    U, U_prev : (n, k) or (batch, n, k) float32/float64, the factor and its previous iterate
        (U_prev is read only when inertia > 0; pass U itself for PALM).
    gram : (k, k) or (batch, k, k), cross : (n, k) or (batch, n, k), of U's dtype.
    l1, l2 : the regularizer's weights (kappa, lambda_t), finite, >= 0.
    inertia : iPALM's extrapolation weight in [0, 1).
    nonnegative : the non-negative prox.
    out : optional (U's shape and dtype, C-contiguous) array to write into, sharing no memory
        with U, U_prev, gram or cross (ValueError).

    Returns
    -------
    The next iterate, U's shape and dtype, on U's backend.
    """
    call = resolve("elastic_binary_half_step", U=U, U_prev=U_prev, gram=gram, cross=cross, out=out)
    U = call.float_array("U", U, (2, 3))
    batched = U.ndim == 3
    U3 = U if batched else U[None]
    batch, n, k = U3.shape
    shapes = {"U_prev": (batch, n, k), "gram": (batch, k, k), "cross": (batch, n, k)}
    operands = []
    for name, value in (("U_prev", U_prev), ("gram", gram), ("cross", cross)):
        array = call.float_array(name, value, (3,) if batched else (2,))
        array3 = array if batched else array[None]
        if tuple(array3.shape) != shapes[name]:
            want = shapes[name] if batched else shapes[name][1:]
            raise ValueError(f"elastic_binary_half_step: {name} has shape {tuple(array.shape)}, expected {want} "
                             f"for U of shape {tuple(U.shape)}")
        operands.append(array3)
    # The kernel reads every input while it writes out, so out may overlap none of them (not even in place).
    inputs = dict(zip(("U", "U_prev", "gram", "cross"), (U3, *operands)))
    result = call.xp.empty_like(U) if out is None else call.output_array("out", out, tuple(U.shape), U.dtype,
                                                                         inputs=inputs)
    result3 = result if batched else result.reshape(1, n, k)
    half_step(call, U3, operands[0], operands[1], operands[2], l1, l2, inertia, nonnegative, result3)
    return call.wrap(result)


__all__ = ["elastic_binary_half_step", "elastic_binary_prox"]
