"""lowrank_hpc's kernels as differentiable JAX functions.

Importing this package imports jax (an optional extra: ``pip install lowrank_hpc[jax]``); the
rest of lowrank_hpc never does. The sparse products run the core's kernels as XLA FFI handlers,
called by XLA on its own buffers, where this build has them (``lowrank_hpc.info()["jax_ffi"]``:
built when the building Python had jaxlib, see README): the CPU module's where XLA runs on the
CPU, the CUDA module's on XLA's stream where it runs on a GPU the module has kernels for (a wait
for the stream or two a call, to read the kernels' out-of-range words). ``kernel_product``'s
top-k has CPU handlers too, for float32/float64 factors where SciPy's BLAS GEMM is found (its
address handed to the CPU module at import, none in the compiled program): the row tiles of
U V^T formed by that GEMM in each OpenMP thread, as lowrank_hpc.ops forms them, with every
pthreads OpenBLAS threadpoolctl finds set to one thread while any handler runs and put back
when the last one ends (the process-wide setting lowrank_hpc.ops' single_threaded_blas scope
changes: such a scope opened in another thread while a handler runs finds 1 and puts 1 back,
leaving OpenBLAS on one thread). Otherwise
they go through ``jax.pure_callback`` (the host arrays XLA hands over go to the CPU
kernels as numpy arrays, the results come back the same way; about 2 ms more a call at 1e6
entries on the CPU). Both work under ``jit`` and ``vmap`` and give the same values (except
top-k where lowrank_hpc.ops forms U V^T by numpy's threaded GEMM instead of its tiles, for
problems of fewer than 8 rows an OpenMP thread: there the last bit may differ, 1 of 120 small
random problems measured, and entries tied within it may swap); under
``vmap`` a handler takes the vmapped elements in one call (operands vmap does not batch are read
in place), the sparse products' callback one element at a time, top-k's callback all of them in
one host call. The dense products are XLA's alone:
``lowrank_product`` its GEMM, a dense ``kernel_product`` its GEMM with f fused into the result's
pass (a host callback's copies of the m x n result made it 2x slower than jax.numpy's).
Derivatives of every mode and order (``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``hessian``)
are made of the same products: sampled_product and sparse_times_dense are JAX primitives,
bilinear, whose tangent is the same product of one tangent and one primal and whose transpose
(reverse mode) is the other product (SDDMM's the SpMMs G V and G^T U, SpMM's an SDDMM and the
transposed SpMM); top-k holds its selection fixed and moves the kept values by f' times the
sampled products of the tangents there, and the dense kernel_product by f' times XLA's GEMMs
(``jax.custom_jvp``: JAX transposes them into reverse mode). 16-bit tangents: the sparse
products' two terms each rounded once to the format and their sum once more; top-k's two kernel
terms summed in float32 and rounded once after f'; the dense kernel_product's two GEMMs each
rounded to the format, their sum once more and its product with f' once more (so that reverse
mode's GEMMs take the weighted gradient in the format, rounded once, as before forward mode).
Static arguments (sizes, flags, kernel names, k) are Python values.
float32/float64 arrays (float64 needs ``jax_enable_x64``), or float16/bfloat16: read and summed
in float32, each output rounded once to the input's format (the dense products: XLA's GEMM with
float32 results, f in float32 and one rounding; their backward GEMMs summed in float32 and
rounded once too). As in jax.numpy, NaN/inf in the inputs propagate to the products, and a
dense ``kernel_product`` whose f overflows (exponential, or a 16-bit result beyond the format's
range) returns inf there (``jax_debug_infs`` finds them; ``lowrank_hpc.ops.kernel_product``
raises FloatingPointError instead); top-k cannot rank NaN/inf and raises. Errors found while
XLA runs a handler or a callback (top-k's NaN/inf, an index out of range) reach the caller as
jax wraps them, with the core's message: a JaxRuntimeError under ``jit`` and, outside it,
usually too (jax runs even eager calls through XLA; a repeated eager call may surface the
handler's ValueError itself).

Not done: the CUDA handlers are compiled but have not run on a GPU yet (tests/test_jax_ffi.py's
gpu test runs them where the machine's jax has a GPU backend); top-k has no GPU handler (a GPU
array goes through the host callback; the dense products are XLA's on any device).
"""
from __future__ import annotations

import functools
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.custom_derivatives import SymbolicZero
from jax.interpreters import ad, batching, mlir

from .. import _backend, _checks, ops
from ..ops import GlobalTopK, TopK, _factors
from ..ops.kernel_product import KERNELS, TOP_K_MODES, TOP_K_ORDERS, default_block_rows, overflow_message
from ..ops.sampled_product import sort_pays

__all__ = ["GlobalTopK", "TopK", "kernel_product", "lowrank_product", "sampled_product", "sparse_times_dense"]

_ALIASES = {"exp": "exponential"}
_HALVES = (jnp.float16, jnp.bfloat16)


def _check_float(function: str, name: str, x, ndims, like=None) -> None:
    if x.dtype not in (jnp.float32, jnp.float64) + _HALVES:
        raise TypeError(f"{function}: {name} must be a float32, float64, float16 or bfloat16 array, got {x.dtype}")
    if x.ndim not in ndims:
        wanted = " or ".join(str(d) for d in ndims)
        raise ValueError(f"{function}: {name} must have {wanted} dimensions, got shape {tuple(x.shape)}")
    if like is not None and x.dtype != like[1].dtype:
        raise TypeError(f"{function}: {name} is {x.dtype} but {like[0]} is {like[1].dtype}; pass both in one precision")


def _check_indices(function: str, rows, cols) -> None:
    for name, x in (("rows", rows), ("cols", cols)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{function}: {name} must be an integer array, got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"{function}: {name} must be 1-D, got shape {tuple(x.shape)}")
    if rows.shape[0] != cols.shape[0]:
        raise ValueError(f"{function}: rows has length {rows.shape[0]} but cols has {cols.shape[0]}")


def _check_nonempty(function: str, name: str, x) -> None:
    """lowrank_hpc.ops' check, made here so both paths (FFI handler, host callback) refuse alike."""
    if x.size == 0:
        raise ValueError(f"{function}: {name} is empty (shape {tuple(x.shape)})")


def _check_pair(function: str, U, V, ndims=(2,)) -> None:
    _check_float(function, "U", U, ndims)
    _check_float(function, "V", V, ndims, like=("U", U))
    _check_nonempty(function, "U", U)
    _check_nonempty(function, "V", V)
    if U.ndim != V.ndim or U.shape[:-2] != V.shape[:-2] or U.shape[-1] != V.shape[-1]:
        raise ValueError(f"{function}: U has shape {tuple(U.shape)} and V has shape {tuple(V.shape)}; expected "
                         "(..., m, r) and (..., n, r) with the same batch and rank r")


def _kernel_name(kernel: str) -> str:
    name = _ALIASES.get(kernel, kernel)
    if name not in ops.KERNELS:
        raise ValueError(f"kernel_product: unknown kernel {kernel!r}; valid kernels are {', '.join(ops.KERNELS)} "
                         "(or 'exp' for 'exponential')")
    return name


def _register_ffi_targets() -> tuple[str, ...]:
    """Register the XLA FFI handlers (built where jaxlib's headers were found) of the CPU module
    and, where its kernels run on this machine's device, the CUDA module, once; the JAX platforms
    ("cpu", "cuda") that have them."""
    if not hasattr(getattr(jax, "ffi", None), "ffi_call"):  # jax < 0.5: jax.extend.ffi, another ffi_call
        return ()
    platforms = []
    for platform, module in (("cpu", _backend.cpu_kernels()), ("CUDA", _backend.cuda_kernels_run_here())):
        handlers = getattr(module, "jax_ffi_handlers", None)
        if handlers is None:
            continue
        for name, capsule in handlers().items():
            jax.ffi.register_ffi_target(f"lowrank_hpc_{name}", capsule, platform=platform)
        if hasattr(module, "jax_ffi_configure_top_k"):  # SciPy's GEMMs first: they load its OpenBLAS
            sgemm, dgemm = _backend.tile_gemm_address(np.float32), _backend.tile_gemm_address(np.float64)
            module.jax_ffi_configure_top_k(sgemm, dgemm, list(_backend.openblas_thread_controls()))
        platforms.append(platform.lower())
    return tuple(platforms)


_FFI_PLATFORMS = _register_ffi_targets()
_FFI = bool(_FFI_PLATFORMS)  # False: every call through the host callback (the tests compare both paths)
_FFI_INDICES = (np.dtype(np.int32), np.dtype(np.int64))


def _host_kernel(name: str, result_shape, callback, arrays, index_slots: tuple[int, int], ffi: bool, **attributes):
    """The kernel `name` on arrays (rows and cols at index_slots): by its FFI handler (where
    ``ffi``) where XLA runs on a platform this build has handlers for and the indices are
    int32/int64 (one dtype, widened to int64 if either is); otherwise by callback(*arrays)."""
    indices = [arrays[i] for i in index_slots]
    if not ffi or any(np.dtype(x.dtype) not in _FFI_INDICES for x in indices):
        return callback(*arrays)
    if indices[0].dtype != indices[1].dtype:
        arrays = list(arrays)
        for i in index_slots:
            arrays[i] = arrays[i].astype(jnp.int64)
    # vmap: the handlers take the leading dimensions as the vmapped elements, unbatched operands with
    # 1 there (read in place, never copied per element: "broadcast_all" copied shared factors).
    ffi = jax.ffi.ffi_call(f"lowrank_hpc_{name}", result_shape, vmap_method="expand_dims")
    branches = {platform: (lambda *a: ffi(*a, **attributes)) for platform in _FFI_PLATFORMS}
    return jax.lax.platform_dependent(*arrays, default=callback, **branches)


def _callback(function, result_shapes, *args, vmap_method: str = "sequential"):
    """function(*numpy arrays) run by XLA on the host; results as ShapeDtypeStructs. Under vmap
    one call per element, or with "expand_dims" one call for them all (function then takes and
    returns the vmapped elements as leading dimensions, 1 where an operand is not batched)."""
    def host(*arrays):
        out = function(*(np.asarray(a) for a in arrays))
        return tuple(np.asarray(o) for o in out) if isinstance(out, tuple) else np.asarray(out)
    return jax.pure_callback(host, result_shapes, *args, vmap_method=vmap_method)


# -- the sparse products as JAX primitives ---------------------------------------------------------
# sampled_product and sparse_times_dense are bilinear: each is a primitive whose derivative rule
# (JVP) is the same product of one tangent and one primal, and whose transpose is the other
# product, so JAX derives forward mode, reverse mode (linearize, then transpose) and every order
# from the kernels alone. Operands carry the vmapped elements as leading dimensions, each the
# elements' count or 1 (shared), as the FFI handlers take them; `ffi` (chosen at bind, so a
# traced program keeps the path it was traced with) says handler or host callback.

def _over_elements(body, arrays, trailing: tuple[int, ...]):
    """body on arrays whose leading dimensions (beyond each one's `trailing` dimensions) are the
    elements, each the count or 1: nested jax.vmap, a shared operand unmapped (read in place)."""
    if arrays[0].ndim == trailing[0]:
        return body(*arrays)
    size = np.broadcast_shapes(*((a.shape[0],) for a in arrays))[0]  # 0 elements: 0, shared operands 1
    axes = [0 if a.shape[0] == size else None for a in arrays]  # a count of 1 everywhere maps all
    inner = [a if axis == 0 else a[0] for a, axis in zip(arrays, axes)]
    return jax.vmap(lambda *x: _over_elements(body, x, trailing), in_axes=axes)(*inner)


def _elements(*shapes_and_trailing) -> tuple[int, ...]:
    """The elements' shape: the leading dimensions broadcast (each the count or 1)."""
    return tuple(np.broadcast_shapes(*(shape[:len(shape) - trailing] for shape, trailing in shapes_and_trailing)))


def _sum_to(x, shape):
    """A cotangent over every element summed over the elements an operand was shared by."""
    shared = tuple(i for i, (a, b) in enumerate(zip(x.shape, shape)) if b == 1 and a != 1)
    return x.sum(axis=shared, keepdims=True) if shared else x


def _batch_rule(primitive):
    """vmap: the vmapped axis moved to the front of every operand (1 where it is not mapped)."""
    def rule(args, dims, **params):
        moved = [jnp.moveaxis(a, d, 0) if d is not None else a[None] for a, d in zip(args, dims)]
        return primitive.bind(*moved, **params), 0
    return rule


def _bilinear_jvp(primitive, slots: tuple[int, int]):
    """d P(a, b) = P(da, b) + P(a, db) for the operands at `slots` (the rest: indices, no tangent)."""
    def jvp(primals, tangents, **params):
        out = primitive.bind(*primals, **params)
        terms = []
        for slot in slots:
            if type(tangents[slot]) is not ad.Zero:
                args = list(primals)
                args[slot] = tangents[slot]
                terms.append(primitive.bind(*args, **params))
        if not terms:  # (JAX skips the rule when every tangent is zero)
            return out, jnp.zeros_like(out)
        return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return jvp


def _define(name: str, impl, abstract_eval, factor_slots: tuple[int, int], transpose):
    """A primitive bilinear in the operands at factor_slots, run by impl (eagerly and, traced, in
    XLA's program)."""
    primitive = Primitive(f"lowrank_hpc_{name}")
    primitive.def_impl(impl)
    primitive.def_abstract_eval(abstract_eval)
    mlir.register_lowering(primitive, mlir.lower_fun(impl, multiple_results=False))
    ad.primitive_jvps[primitive] = _bilinear_jvp(primitive, factor_slots)
    ad.primitive_transposes[primitive] = transpose
    batching.primitive_batchers[primitive] = _batch_rule(primitive)
    return primitive


def _sampled_impl(U, V, rows, cols, *, ffi: bool):
    def one(U, V, rows, cols):
        shape = jax.ShapeDtypeStruct(rows.shape, U.dtype)
        return _host_kernel("sampled_product", shape,
                            lambda *a: _callback(lambda U, V, r, c: ops.sampled_product(U, V, r, c, check_finite=False),
                                                 shape, *a),
                            (U, V, rows, cols), (2, 3), ffi,
                            row_order=sort_pays(U.dtype, U.shape[1], U.shape[0] + V.shape[0]))
    return _over_elements(one, (U, V, rows, cols), (2, 2, 1, 1))


def _sampled_abstract(U, V, rows, cols, *, ffi: bool):
    elements = _elements((U.shape, 2), (V.shape, 2), (rows.shape, 1), (cols.shape, 1))
    return ShapedArray(elements + rows.shape[-1:], U.dtype)


def _spmm_impl(rows, cols, vals, B, *, n_rows: int, transpose: bool, ffi: bool):
    def one(rows, cols, vals, B):
        shape = jax.ShapeDtypeStruct((n_rows, B.shape[1]), B.dtype)
        return _host_kernel("sparse_times_dense", shape,
                            lambda *a: _callback(lambda r, c, v, B: ops.sparse_times_dense(r, c, v, B, n_rows,
                                                                                           transpose=transpose,
                                                                                           check_finite=False),
                                                 shape, *a),
                            (rows, cols, vals, B), (0, 1), ffi, transpose=transpose)
    return _over_elements(one, (rows, cols, vals, B), (1, 1, 1, 2))


def _spmm_abstract(rows, cols, vals, B, *, n_rows: int, transpose: bool, ffi: bool):
    elements = _elements((rows.shape, 1), (cols.shape, 1), (vals.shape, 1), (B.shape, 2))
    return ShapedArray(elements + (n_rows, B.shape[-1]), B.dtype)


def _linear_in(function: str, *operands) -> int:
    """Which operand a transpose is taken in (a product is linear in one operand at a time)."""
    undefined = [i for i, x in enumerate(operands) if ad.is_undefined_primal(x)]
    if len(undefined) != 1:
        raise NotImplementedError(f"lowrank_hpc.jax.{function} is bilinear: it is transposed in one factor at a time")
    return undefined[0]


def _sampled_transpose(cotangent, U, V, rows, cols, *, ffi: bool):
    slot = _linear_in("sampled_product", U, V)
    target = (U, V)[slot]
    if type(cotangent) is ad.Zero:
        return [ad.Zero(target.aval) if i == slot else None for i in range(4)]
    other = (V, U)[slot]
    grad = _spmm_p.bind(rows, cols, cotangent, other, n_rows=target.aval.shape[-2], transpose=slot == 1, ffi=ffi)
    return [_sum_to(grad, target.aval.shape) if i == slot else None for i in range(4)]


def _spmm_transpose(cotangent, rows, cols, vals, B, *, n_rows: int, transpose: bool, ffi: bool):
    slot = _linear_in("sparse_times_dense", vals, B)
    target = (vals, B)[slot]
    if type(cotangent) is ad.Zero:
        return [ad.Zero(target.aval) if i == slot + 2 else None for i in range(4)]
    if slot == 0:  # d vals[k] = <G[out_index[k]], B[in_index[k]]>
        out_index, in_index = (cols, rows) if transpose else (rows, cols)
        grad = _sampled_p.bind(cotangent, B, out_index, in_index, ffi=ffi)
    else:  # d B = S^T G (S G with transpose)
        grad = _spmm_p.bind(rows, cols, vals, cotangent, n_rows=B.aval.shape[-2], transpose=not transpose, ffi=ffi)
    return [_sum_to(grad, target.aval.shape) if i == slot + 2 else None for i in range(4)]


_sampled_p = _define("sampled_product", _sampled_impl, _sampled_abstract, (0, 1), _sampled_transpose)
_spmm_p = _define("sparse_times_dense", _spmm_impl, _spmm_abstract, (2, 3), _spmm_transpose)


def _sampled(U, V, rows, cols):
    return _sampled_p.bind(U, V, rows, cols, ffi=_FFI)


def _spmm(rows, cols, vals, B, n_rows: int, transpose: bool):
    return _spmm_p.bind(rows, cols, vals, B, n_rows=n_rows, transpose=transpose, ffi=_FFI)


def sampled_product(U, V, rows, cols):
    """vals[k] = <U[rows[k]], V[cols[k]]> (SDDMM), differentiable in U (m, r) and V (n, r)."""
    _check_pair("sampled_product", U, V)
    _check_indices("sampled_product", rows, cols)
    return _sampled(U, V, rows, cols)


# -- sparse_times_dense ---------------------------------------------------------------------------

def sparse_times_dense(rows, cols, vals, B, n_rows: int, *, transpose: bool = False):
    """S @ B (S^T @ B with ``transpose``) for S with entries vals[k] at (rows[k], cols[k]),
    differentiable in vals (nnz,) and B (k, r). n_rows and transpose are static."""
    _check_float("sparse_times_dense", "vals", vals, (1,))
    _check_float("sparse_times_dense", "B", B, (2,), like=("vals", vals))
    _check_indices("sparse_times_dense", rows, cols)
    if vals.shape[0] != rows.shape[0]:
        raise ValueError(f"sparse_times_dense: vals has length {vals.shape[0]} but rows has {rows.shape[0]}")
    _check_nonempty("sparse_times_dense", "B", B)
    n_rows = _checks.positive_int("sparse_times_dense", "n_rows", n_rows)  # 2.9 is an error, never 2
    result_bytes = n_rows * B.shape[1] * B.dtype.itemsize
    # XLA aborts the process on a shape whose byte size overflows. Under vmap it sees the stacked
    # (batch, n_rows, r), which this check cannot: XLA aborts there as on jax.numpy's own arrays
    # (vmap of jnp.zeros((2**58, 8)) + x over 4 elements: "overflow in static extent product").
    if result_bytes >= 2**62:
        raise ValueError(f"sparse_times_dense: n_rows = {n_rows} is too large: the ({n_rows}, {B.shape[1]}) "
                         f"result would need {result_bytes:,} bytes")
    return _spmm(rows, cols, vals, B, n_rows, _checks.flag("sparse_times_dense", "transpose", transpose))


# -- lowrank_product and kernel_product -----------------------------------------------------------

def _derivative(kernel: str, values):
    """f'(x) from y = f(x)."""
    if kernel == "identity":
        return jnp.ones_like(values)
    if kernel == "relu":
        return (values > 0).astype(values.dtype)
    if kernel == "exponential":
        return values
    if kernel == "tanh":
        return 1 - values * values
    return (jnp.abs(values) < 1).astype(values.dtype)


def _swap(x):
    return jnp.swapaxes(x, -1, -2)


def _gemm(a, b):
    """a @ b by XLA's GEMM, in the operands' dtype; 16-bit operands are summed in float32 and the
    result left in float32 (the caller rounds once)."""
    if a.dtype in _HALVES:
        return jnp.matmul(a, b, preferred_element_type=jnp.float32)
    return a @ b


def _slope(kernel: str, source, from_x: bool):
    """f'(x) from y = f(x) (source y), or from x itself (from_x: piecewise_linear in 16 bits,
    whose rounding takes an x just inside (-1, 1) to y = +-1); in float32 for 16-bit sources.
    (relu in float16 gives an x in (0, 3e-8), rounded to y = +0, the slope 0, as jax.nn.relu of
    the rounded float16 product does.)"""
    wide = source.astype(jnp.float32) if source.dtype in _HALVES else source
    return (jnp.abs(wide) < 1).astype(wide.dtype) if from_x else _derivative(kernel, wide)


def _slope_times_impl(grad, source, *, kernel: str, from_x: bool, dtype):
    """grad * f'(x) in dtype (16-bit: in float32, rounded once)."""
    slope = _slope(kernel, source, from_x)
    return (grad.astype(slope.dtype) * slope).astype(dtype)


def _slope_times_jvp(primals, tangents, **params):
    """Linear in grad; in the source (second derivatives), d f'/dy: -2y for tanh, 1 for the
    exponential (whose f' is y), 0 for the piecewise-constant slopes."""
    (grad, source), (dgrad, dsource) = primals, tangents
    out = _slope_times_p.bind(grad, source, **params)
    terms = [] if type(dgrad) is ad.Zero else [_slope_times_p.bind(dgrad, source, **params)]
    if type(dsource) is not ad.Zero and params["kernel"] in ("tanh", "exponential") and not params["from_x"]:
        wide = jnp.float32 if source.dtype in _HALVES else source.dtype
        change = grad.astype(wide) * dsource.astype(wide)
        terms.append((change * (-2 * source.astype(wide)) if params["kernel"] == "tanh" else change).astype(out.dtype))
    if not terms:
        return out, jnp.zeros_like(out)
    return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]


def _slope_times_transpose(cotangent, grad, source, **params):
    if ad.is_undefined_primal(source):
        raise NotImplementedError("lowrank_hpc.jax: the kernel's slope is transposed in the gradient only")
    if type(cotangent) is ad.Zero:
        return ad.Zero(grad.aval), None
    return _slope_times_p.bind(cotangent, source, **{**params, "dtype": grad.aval.dtype}), None


def _slope_times_batch(args, dims, **params):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    moved = [jnp.moveaxis(a, d, 0) if d is not None else jnp.broadcast_to(a, (size,) + a.shape)
             for a, d in zip(args, dims)]
    return _slope_times_p.bind(*moved, **params), 0


# grad * f'(x) as a primitive of its own: elementwise, self-adjoint, so a pullback keeps y (the
# output, or x where y cannot tell the slope) and forms f' again, not an m x n f' beside y.
_slope_times_p = Primitive("lowrank_hpc_kernel_slope_times")
_slope_times_p.def_impl(_slope_times_impl)
_slope_times_p.def_abstract_eval(lambda grad, source, *, kernel, from_x, dtype: ShapedArray(grad.shape, dtype))
mlir.register_lowering(_slope_times_p, mlir.lower_fun(_slope_times_impl, multiple_results=False))
ad.primitive_jvps[_slope_times_p] = _slope_times_jvp
ad.primitive_transposes[_slope_times_p] = _slope_times_transpose
batching.primitive_batchers[_slope_times_p] = _slope_times_batch


def _weighted(kernel: str, moved, values, inner):
    """moved * f'(x) in values' dtype for y = f(x) = values; inner() gives x where y cannot tell."""
    from_x = values.dtype in _HALVES and kernel == "piecewise_linear"
    return _slope_times_p.bind(moved, inner() if from_x else values, kernel=kernel, from_x=from_x,
                               dtype=values.dtype)


# kernel_product's f (lowrank_hpc/ops/kernel_functions.hpp) for the dense product, which is XLA's
# alone: dense GEMM is the vendor's job, and XLA fuses f into the GEMM result's pass, where a
# host callback copied the m x n K out and f(K) back (2.4x jnp's forward + backward time).
_FUNCTIONS = {"relu": lambda x: jnp.maximum(x, 0), "exponential": jnp.exp, "tanh": jnp.tanh,
              "piecewise_linear": lambda x: jnp.clip(x, -1, 1)}


def _is_zero(tangent) -> bool:
    return type(tangent) is SymbolicZero


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _kernel_dense(U, V, kernel: str):
    return _FUNCTIONS[kernel](_gemm(U, _swap(V))).astype(U.dtype)  # 16-bit: f in float32, one rounding


def _kernel_dense_jvp(kernel, primals, tangents):
    """d f(U V^T) = f'(x) (dU V^T + U dV^T), f' read from y = f(x): XLA's GEMMs in the factors'
    format, which JAX transposes into reverse mode's G' V and G'^T U (16-bit: G' rounded once to
    the format, as the GEMMs take it)."""
    (U, V), (dU, dV) = primals, tangents
    inner = _gemm(U, _swap(V))
    out = _FUNCTIONS[kernel](inner).astype(U.dtype)
    terms = [dU @ _swap(V)] if not _is_zero(dU) else []
    terms += [U @ _swap(dV)] if not _is_zero(dV) else []
    if not terms:
        return out, jnp.zeros_like(out)
    return out, _weighted(kernel, sum(terms[1:], terms[0]), out, lambda: inner)


_kernel_dense.defjvp(_kernel_dense_jvp, symbolic_zeros=True)


def lowrank_product(U, V):
    """U @ V^T for U (..., m, r), V (..., n, r) (2-D or 3-D), differentiable: XLA's GEMM (16-bit
    factors: summed in float32, rounded once to their format)."""
    _check_pair("lowrank_product", U, V, (2, 3))
    return _gemm(U, _swap(V)).astype(U.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4, 5))
def _top_k(U, V, kernel: str, k: int, mode: str, order: str):
    m = U.shape[0]
    if mode == "row":
        shapes = (jax.ShapeDtypeStruct((m, k), U.dtype), jax.ShapeDtypeStruct((m, k), jnp.int32))
    else:
        shapes = (jax.ShapeDtypeStruct((k,), U.dtype), jax.ShapeDtypeStruct((k,), jnp.int32),
                  jax.ShapeDtypeStruct((k,), jnp.int32))
    # vmap: every element in one host call (a call per element cost about 0.2 ms each).
    def callback(U, V):
        return _callback(functools.partial(_top_k_host, kernel=kernel, k=k, mode=mode, order=order), shapes, U, V,
                         vmap_method="expand_dims")

    # The handlers' GEMM (configured at registration) is SciPy's for float32/float64 factors.
    gemm = _backend.tile_gemm_address(U.dtype) if U.dtype in (jnp.float32, jnp.float64) else 0
    if not _FFI or not gemm or "cpu" not in _FFI_PLATFORMS:
        return callback(U, V)
    code = KERNELS.index(kernel)
    attributes = dict(kernel=code, by_magnitude=order == "magnitude",
                      overflow=overflow_message("kernel_product", code, "{count}", np.dtype(U.dtype)))
    if mode == "global":  # ops.kernel_product's blocks of rows (the handler keeps them within m)
        attributes["block_rows"] = default_block_rows(V.shape[0], np.dtype(U.dtype).itemsize)
    # The CPU module's handler on XLA's CPU (the elements of a vmap in one call); elsewhere the callback.
    ffi = jax.ffi.ffi_call(f"lowrank_hpc_top_k_{'rows' if mode == 'row' else 'global'}", shapes,
                           vmap_method="expand_dims")
    return jax.lax.platform_dependent(U, V, default=callback, cpu=lambda U, V: ffi(U, V, **attributes))


def _broadcast_is_small(U: np.ndarray, V: np.ndarray, lead: tuple) -> bool:
    """Whether one factor is shared by all the elements ``lead`` and its copies per element are
    small beside the other (ops' rule, as lowrank_hpc.torch's vmap applies it)."""
    copies = int(np.prod(lead))
    for shared, batched in ((U, V), (V, U)):
        if shared.size == np.prod(shared.shape[-2:]) and batched.shape[:-2] == lead:
            return _factors.broadcast_copy_is_small(copies * shared.nbytes, batched.nbytes)
    return False  # both partly broadcast (nested vmaps)


def _top_k_host(U: np.ndarray, V: np.ndarray, *, kernel: str, k: int, mode: str, order: str):
    """The top-k of f(U V^T) for U (..., m, r), V (..., n, r) whose leading dimensions (the
    vmapped elements) are equal or 1, by lowrank_hpc.ops on the host; int32 indices. A factor
    shared by the elements is copied per element into one batched call where the copies are small
    (ops' broadcast rule), else read in place by one call per element."""
    lead = np.broadcast_shapes(U.shape[:-2], V.shape[:-2])
    (m, r), n = U.shape[-2:], V.shape[-2]

    def top_k(U, V):
        result = ops.kernel_product(U, V, kernel, k, top_k_mode=mode, top_k_order=order, check_finite=False)
        # int32 indices: JAX without x64 has no int64 (m * n stays below 2**31 here, checked by the caller)
        return (result[0],) + tuple(x.astype(np.int32) for x in result[1:])

    shape = lead + ((m, k) if mode == "row" else (k,))
    if 0 in lead:  # vmap over no elements
        return (np.empty(shape, U.dtype),) + tuple(np.empty(shape, np.int32) for _ in range(1 if mode == "row" else 2))
    if mode == "row" and V.size == n * r:  # V shared: the elements' rows are one matrix's rows
        results = top_k(U.reshape(-1, r), V.reshape(n, r))
    elif U.shape[:-2] == V.shape[:-2] or _broadcast_is_small(U, V, lead):  # one batched call
        Us, Vs = np.broadcast_to(U, lead + (m, r)), np.broadcast_to(V, lead + (n, r))
        results = top_k(Us.reshape(-1, m, r), Vs.reshape(-1, n, r))  # a shared factor copied per element
    else:  # a large shared factor: each element against a view of it
        Us, Vs = np.broadcast_to(U, lead + (m, r)), np.broadcast_to(V, lead + (n, r))
        per_element = [top_k(Us[index], Vs[index]) for index in np.ndindex(*lead)]
        results = tuple(np.stack(parts) for parts in zip(*per_element))
    return tuple(x.reshape(shape) for x in results)


def _top_k_jvp(kernel, k, mode, order, primals, tangents):
    """The selection is held fixed: each kept value f(x) at (i, j) moves by f'(x) (dU[i] . V[j] +
    U[i] . dV[j]), the sampled products at the kept positions (transposed by JAX into reverse
    mode's two sparse products of the weighted cotangent); the indices have no derivative."""
    (U, V), (dU, dV) = primals, tangents
    out = _top_k(U, V, kernel, k, mode, order)
    if mode == "row":
        rows = jnp.repeat(jnp.arange(U.shape[0], dtype=jnp.int32), k)
        cols = out[1].reshape(-1)
    else:
        rows, cols = out[1], out[2]
    terms = [_sampled(dU, V, rows, cols)] if not _is_zero(dU) else []
    terms += [_sampled(U, dV, rows, cols)] if not _is_zero(dV) else []
    values = out[0].reshape(-1)
    if not terms:
        moved = jnp.zeros_like(values)
    else:  # 16-bit: the two terms (each rounded once by its kernel) summed in float32
        wide = jnp.float32 if values.dtype in _HALVES else values.dtype
        moved = _weighted(kernel, sum((t.astype(wide) for t in terms[1:]), terms[0].astype(wide)), values,
                          lambda: (U[rows].astype(jnp.float32) * V[cols].astype(jnp.float32)).sum(-1))
    no_derivative = tuple(np.zeros(x.shape, jax.dtypes.float0) for x in out[1:])
    return out, (moved.reshape(out[0].shape),) + no_derivative


_top_k.defjvp(_top_k_jvp, symbolic_zeros=True)


def kernel_product(U, V, kernel: str = "identity", top_k: Optional[int] = None, *,
                   top_k_mode: str = "row", top_k_order: str = "magnitude") -> Union[jax.Array, TopK, GlobalTopK]:
    """K = f(U V^T) (``lowrank_hpc.ops.kernel_product``), dense or its top-k entries by |f|,
    differentiable in U and V (through the kept entries in top-k mode). Top-k indices are int32.
    kernel, top_k, top_k_mode and top_k_order ("magnitude": best first, or "position") are static."""
    kernel = _kernel_name(kernel)
    # Checked with top_k None too, as ops.kernel_product does: a misspelt mode is never ignored.
    _checks.one_of(*TOP_K_MODES)("kernel_product", "top_k_mode", top_k_mode)
    _checks.one_of(*TOP_K_ORDERS)("kernel_product", "top_k_order", top_k_order)
    if top_k is None:
        _check_pair("kernel_product", U, V, (2, 3))
        return lowrank_product(U, V) if kernel == "identity" else _kernel_dense(U, V, kernel)
    _check_pair("kernel_product", U, V)
    top_k = _checks.integer("kernel_product", "top_k", top_k)  # 2.5 or True is an error, never 2 or 1
    m, n = U.shape[0], V.shape[0]
    limit = n if top_k_mode == "row" else m * n
    if not 1 <= top_k <= limit:
        raise ValueError(f"kernel_product: top_k must satisfy 1 <= top_k <= {limit} in {top_k_mode} mode, got {top_k}")
    if m * n >= 2**31:
        raise ValueError(f"kernel_product: m * n = {m * n} does not fit the int32 indices of the JAX top-k")
    result = _top_k(U, V, kernel, top_k, top_k_mode, top_k_order)
    return TopK(*result) if top_k_mode == "row" else GlobalTopK(*result)
