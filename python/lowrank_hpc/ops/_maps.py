"""The element-wise map and the row/column reductions of both backends (the launchers of
``cpp/bindings/common/maps.cpp``), called by name with a functor's parameters: a new
element-wise kernel is a functor in ``lowrank_hpc/ops/maps.hpp`` and one public function here
in ``ops/`` that checks its arguments and calls :func:`elementwise` or :func:`reduction`."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .._arrays import Call


def elementwise(call: Call, op: str, x: Any, params: Sequence[float] = (), out: Optional[Any] = None,
                dtype: Optional[Any] = None):
    """(out, nonfinite): out = f(x) for the map ``op`` on validated x (out may be x itself, or
    memory disjoint from it: a partial overlap is a ValueError), and the device status word
    counting its NaN/inf results (read it with ``call.read``). dtype: the result's, x's by
    default; float16 or bfloat16 for float32 x rounds each f(x) once in the same pass, and a
    finite f(x) beyond that format's range counts as inf."""
    dtype = x.dtype if dtype is None else dtype
    out = call.xp.empty(x.shape, dtype=dtype) if out is None else call.output_array(
        "out", out, x.shape, dtype, inputs={"x": x}, in_place=("x",))
    nonfinite = call.status(0)
    # Both C-contiguous, so 1-D views: an element-wise map of any number of dimensions (the
    # bindings' arrays hold at most 4).
    call.module.map(op, x.reshape(-1), out.reshape(-1), [float(p) for p in params], nonfinite, call.stream())
    return out, nonfinite


def reduction(call: Call, op: str, x: Any, axis: int, params: Sequence[float] = ()):
    """sum of f(x) over ``axis`` of a validated 2-D x, summed in double: (rows,) for axis 1,
    (cols,) for axis 0."""
    out = call.xp.empty(x.shape[0] if axis == 1 else x.shape[1], dtype=x.dtype)
    call.module.reduce(op, x, axis, out, [float(p) for p in params], call.stream())
    return out
