"""Kernelized low-rank product K = f(U V^T), dense or reduced to its top-k entries.

Element-wise kernels f raise the rank of a merged low-rank update. The GEMM runs in the vendor
BLAS (on the CPU SciPy's, called on row tiles from each OpenMP thread, or numpy's; cuBLAS through
CuPy on the GPU); f runs in place in our OpenMP/CUDA element-wise step, fused on the CPU with the
top-k selection so that mode never forms the dense m x n matrix.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Union

import numpy as np

from .. import _checks
from .._arrays import Call, is_half, resolve
from .._backend import CONSTANTS, host_gemm_is_set, matmul, single_threaded_blas, tile_gemm_address
from ._factors import factor_pair
from ._maps import elementwise

# The codes of lowrank_hpc::ops::KernelFunction (kernel_functions.hpp), by name, from the core.
_KERNEL_CODES: dict[str, int] = CONSTANTS["kernel_functions"]
KERNELS = tuple(sorted(_KERNEL_CODES, key=_KERNEL_CODES.__getitem__))
_ALIASES = {"exp": "exponential"}
TOP_K_MODES = ("row", "global")
# Order of the kept entries: best first, or by position (column; row-major flat index), the CSR
# order a sparse product of the kept entries wants.
TOP_K_ORDERS = ("magnitude", "position")
_BLOCK_BYTES = 64 << 20  # a row block of U V^T stays within this unless block_rows is given
# A batch of problems of at most this many entries selects each one's global top-k as one row of
# a shared block (the row selection; larger problems keep the per-problem merge of block offers).
_GROUPED_GLOBAL_MAX_ENTRIES = 1 << 16


class TopK(NamedTuple):
    """Per-row top-k of f(U V^T): ``values`` (..., m, k) in the inputs' dtype and ``indices``
    (..., m, k) int64 column indices, each row best first (larger |f|, ties to the smaller column)."""

    values: Any
    indices: Any


class GlobalTopK(NamedTuple):
    """Global top-k of f(U V^T): ``values``, ``rows``, ``cols`` of shape (..., k) (int64 indices),
    best first (larger |f|, ties to the smaller flat index rows * n + cols)."""

    values: Any
    rows: Any
    cols: Any


def _kernel_code(kernel: Any, function: str = "kernel_product") -> int:
    name = _ALIASES.get(kernel, kernel) if isinstance(kernel, str) else kernel
    if name not in KERNELS:
        raise ValueError(f"{function}: unknown kernel {kernel!r}; valid kernels are "
                         f"{', '.join(KERNELS)} (or 'exp' for 'exponential')")
    return _KERNEL_CODES[name]


def _finfo_max(dtype) -> float:
    if np.dtype(dtype).name == "bfloat16":  # numpy's finfo does not know ml_dtypes' type
        return 3.3895313892515355e38  # (2 - 2^-7) 2^127
    return float(np.finfo(dtype).max)


def default_block_rows(n: int, itemsize: int) -> int:
    """Rows of U V^T a top-k forms at a time unless told: a block of at most _BLOCK_BYTES."""
    return max(1, _BLOCK_BYTES // (n * itemsize))


def overflow_message(function: str, code: int, bad: Union[int, str], dtype: Any) -> str:
    """The FloatingPointError text for ``bad`` NaN/inf values of kernel ``code`` (a KERNELS index)
    in ``dtype`` (lowrank_hpc.jax's top-k handlers fill in a count given here as "{count}")."""
    on_K = function == "apply_kernel"  # given K itself: its words, not U and V it never saw
    x, above, scale = ("K", "entries of K", "K") if on_K else ("U V^T", "inner products", "U or V")
    fix = f"scale {scale} down" + ("" if np.dtype(dtype) == np.float64 else " or use float64")
    if KERNELS[code] == "exponential":
        limit = float(np.log(_finfo_max(dtype)))
        return (f"{function}: exponential kernel overflowed: {bad} entries of exp({x}) are inf in {dtype} ({above} "
                f"above {limit:.1f}); {fix}")
    product, f = ("f(K)", KERNELS[code]) if on_K else ("U @ V^T", "f")
    return (f"{function}: {product} overflowed: {bad} entries of {f}({x}) are NaN/inf in {dtype}; {fix}"
            + ("" if on_K else " (with check_finite=False, NaN/inf in U or V also end up here)"))


def _raise_overflow(call: Call, code: int, bad: int, dtype: Any = None) -> None:
    raise FloatingPointError(overflow_message(call.function, code, bad, call.float_dtype if dtype is None else dtype))


def _gemm(xp, a, b, out=None):
    """a @ b by the vendor BLAS, quiet on overflow: the element step counts NaN/inf and raises."""
    with np.errstate(over="ignore", invalid="ignore"):
        return matmul(xp, a, b, out=out)


# The tiles are the only work the tiled path splits: it needs this many rows a thread at least
# (10 users against 100,000 items keep numpy's threaded GEMM).
_TILE_ROWS_A_THREAD = 8


def _tile_gemm(call: Call, U3, V3) -> int:
    """The host GEMM address for the CPU module's tiled products (each OpenMP thread forms row
    tiles of U V^T with the BLAS on one thread and maps or selects them while in cache), or 0 for
    the blocked path: device arrays, a framework's GEMM scope (lowrank_hpc.torch's), extents
    beyond the BLAS's 32-bit integers, or no such GEMM (lowrank_hpc._backend.tile_gemm_address).
    After numpy's threaded GEMM, its pool spun against the kernels' threads: the blocked row
    top-k took 1.0-2.9x longer (4000 x 4000, k = 16, r = 8-256), the dense map up to 2.2x."""
    if call.xp is not np or not hasattr(call.module, "kernel_product_tiles") or host_gemm_is_set():
        return 0
    if max(U3.shape[1], U3.shape[2], V3.shape[1]) >= 2**31:
        return 0
    if U3.shape[0] * U3.shape[1] < _TILE_ROWS_A_THREAD * call.module.max_threads():
        return 0
    return tile_gemm_address(U3.dtype)


def _tiled_product(call: Call, U3, V3, code: int, out, nonfinite, gemm: int) -> None:
    """out (batch, m, n) = f(U V^T) by the CPU module's tiled product (BLAS on one thread in each
    OpenMP thread); nonfinite[0] += the NaN/inf count."""
    with single_threaded_blas():
        call.module.kernel_product_tiles(np.ascontiguousarray(U3), np.ascontiguousarray(V3), code, out, nonfinite,
                                         gemm)


def _tiled_dense(call: Call, U3, V3, code: int, gemm: int):
    """f(U V^T) (batch, m, n) by the CPU module's tiled product; FloatingPointError for NaN/inf."""
    out = np.empty((U3.shape[0], U3.shape[1], V3.shape[1]), dtype=U3.dtype)
    nonfinite = call.status(0)
    _tiled_product(call, U3, V3, code, out, nonfinite, gemm)
    bad = call.read(nonfinite)[0]
    if bad:
        _raise_overflow(call, code, bad)
    return out


def _in_position_order(xp, values, indices):
    """(values, indices) of each selection (last axis) reordered by ascending index (distinct
    within a selection: no tie to break)."""
    order = xp.argsort(indices, axis=-1)
    return xp.take_along_axis(values, order, axis=-1), xp.take_along_axis(indices, order, axis=-1)


def _stable_argsort(xp, a, axis: int = -1):
    # CuPy sorts are always stable (and take no kind); numpy must be asked for it.
    return np.argsort(a, axis=axis, kind="stable") if xp is np else xp.argsort(a, axis=axis)


class _Selection:
    """Runs the row-block loop of the top-k mode: block GEMM, f in place, per-row top-kk."""

    def __init__(self, call: Call, U3, V3, code: int, kk: int, block_rows: int):
        self.call, self.U3, self.V3, self.code, self.kk = call, U3, V3, code, kk
        n = V3.shape[1]
        self.block_rows = block_rows
        self.buffer = call.xp.empty((block_rows, n), dtype=U3.dtype)  # reused by every block
        self.nonfinite = call.status(0)  # summed over the blocks, read once at the end
        self.tile_gemm = _tile_gemm(call, U3, V3)  # the tiled products' GEMM, or 0: the blocked path
        # The CPU module fuses f and the selection in one pass over a block still in cache.
        self.fused = hasattr(call.module, "kernel_topk_rows")

    def blocks(self, b: int):
        """Yield (first row, values, indices) of each row block of problem b."""
        xp, m = self.call.xp, self.U3.shape[1]
        for start in range(0, m, self.block_rows):
            stop = min(start + self.block_rows, m)
            block = self.buffer[:stop - start]
            _gemm(xp, self.U3[b, start:stop], self.V3[b].T, out=block)
            yield (start,) + self._select(block)

    def problem_groups(self, batch: int, problems_per_block: int, whole: bool = False):
        """Yield (first, last, values, indices): the selection of the rows of problems
        first..last-1, formed as one block; with ``whole``, of each problem's m x n as one row
        (its top-kk by flat index)."""
        m, n = self.U3.shape[1], self.V3.shape[1]
        for first in range(0, batch, problems_per_block):
            last = min(first + problems_per_block, batch)
            block = self.buffer[:(last - first) * m]
            _gemm(self.call.xp, self.U3[first:last], self.V3[first:last].transpose(0, 2, 1),
                  out=block.reshape(last - first, m, n))
            yield (first, last) + self._select(block.reshape(last - first, m * n) if whole else block)

    def dense_blocks(self, b: int):
        """Yield (first row, block) of f(U V^T) for problem b, f applied in place (no selection)."""
        xp, m = self.call.xp, self.U3.shape[1]
        for start in range(0, m, self.block_rows):
            stop = min(start + self.block_rows, m)
            block = self.buffer[:stop - start]
            _gemm(xp, self.U3[b, start:stop], self.V3[b].T, out=block)
            self.call.module.map(f"kernel_{KERNELS[self.code]}", block, block, [], self.nonfinite, self.call.stream())
            yield start, block

    def _select(self, block):
        call, xp = self.call, self.call.xp
        if self.fused:
            values = xp.empty((block.shape[0], self.kk), dtype=block.dtype)
            indices = xp.empty((block.shape[0], self.kk), dtype=np.int64)
            call.module.kernel_topk_rows(block, self.code, values, indices, self.nonfinite)
            return values, indices
        call.module.map(f"kernel_{KERNELS[self.code]}", block, block, [], self.nonfinite, call.stream())
        indices = _stable_argsort(xp, -xp.abs(block), axis=1)[:, :self.kk]
        return xp.take_along_axis(block, indices, axis=1), indices

    def check(self) -> None:
        bad = self.call.read(self.nonfinite)[0]
        if bad:
            _raise_overflow(self.call, self.code, bad)


def _top_k_rows(selection: _Selection, batch: int, m: int, problems_per_block: int):
    xp, dtype = selection.call.xp, selection.U3.dtype
    values = xp.empty((batch, m, selection.kk), dtype=dtype)
    indices = xp.empty((batch, m, selection.kk), dtype=xp.int64)
    if selection.tile_gemm:  # every problem's row tiles in one call, no block buffer
        with single_threaded_blas():
            selection.call.module.kernel_topk_rows_of_products(
                np.ascontiguousarray(selection.U3), np.ascontiguousarray(selection.V3), selection.code, values,
                indices, selection.nonfinite, selection.tile_gemm)
        return values, indices
    if problems_per_block > 1:
        for first, last, group_values, group_indices in selection.problem_groups(batch, problems_per_block):
            values[first:last] = group_values.reshape(last - first, m, -1)
            indices[first:last] = group_indices.reshape(last - first, m, -1)
        return values, indices
    for b in range(batch):
        for start, block_values, block_indices in selection.blocks(b):
            stop = start + block_values.shape[0]
            values[b, start:stop] = block_values
            indices[b, start:stop] = block_indices
    return values, indices


def _top_k_global_grouped(selection: _Selection, batch: int, n: int, problems_per_block: int, by_magnitude: bool):
    """Global top-k of small problems, several to a block, each one's whole m x n a row of it:
    the row selection ranks by magnitude with ties to the smaller flat index, the global rule."""
    xp = selection.call.xp
    values = xp.empty((batch, selection.kk), dtype=selection.U3.dtype)
    flat = xp.empty((batch, selection.kk), dtype=xp.int64)
    for first, last, group_values, group_flat in selection.problem_groups(batch, problems_per_block, whole=True):
        values[first:last], flat[first:last] = group_values, group_flat
    if not by_magnitude:  # row-major: flat indices ascending
        values, flat = _in_position_order(xp, values, flat)
    return values, flat // n, flat % n


def _top_k_global_tiled(selection: _Selection, batch: int, n: int, k: int, by_magnitude: bool):
    """The CPU module's global top-k over its tiled products: _top_k_global's loop, whole blocks
    competing, in one call (each block of rows formed tile by tile in the selection's buffer, its
    best k merged with the running best). With the tiled product (no BLAS pool spinning beside the
    selection) whole blocks won every case measured against the rows' offers (float32; float64
    lost 4-27% in 5 of 6). The same entries as the loop's, as fast (BENCHMARKS.md, session 35)."""
    values = np.empty((batch, k), dtype=selection.U3.dtype)
    flat = np.empty((batch, k), dtype=np.int64)
    with single_threaded_blas():
        selection.call.module.kernel_topk_global_of_products(
            np.ascontiguousarray(selection.U3), np.ascontiguousarray(selection.V3), selection.code,
            selection.buffer, by_magnitude, values, flat, selection.nonfinite, selection.tile_gemm)
    return values, flat // n, flat % n


def _top_k_global(selection: _Selection, batch: int, n: int, k: int, by_magnitude: bool):
    if selection.tile_gemm:
        return _top_k_global_tiled(selection, batch, n, k, by_magnitude)
    # Any entry of the global top-k is in its row's top-min(k, n), and in its block's top-k, so
    # each block offers only those, merged with the running best k: memory O(block + k). On the
    # blocked path that paid only where the rows offer a small part of themselves (k <= n / 512:
    # f and the selection skip most chunks; 1.06-1.61x in 10 of 12 cases, not where tanh
    # saturates); from n / 256 the block's entries competing directly won (4096 x 4096, exp:
    # k = 100 36.6 against 99.8 ms, k = 1,000 33.3 against 844.5: a row offering k of its n costs
    # O(n log k), and the offers are sorted).
    # Everything stays in flat order (blocks come in row order, so a block's entries follow the
    # running best): the tie rule is then "first found", and only the final k are sorted best
    # first, if asked.
    xp = selection.call.xp
    values = xp.empty((batch, k), dtype=selection.U3.dtype)
    flat = xp.empty((batch, k), dtype=xp.int64)
    whole_rows = 512 * min(k, n) > n
    for b in range(batch):
        best_values = best_flat = None
        if whole_rows:  # a block's flat indices are a range: only its first is passed
            offers = ((block.reshape(-1), start * n) for start, block in selection.dense_blocks(b))
        else:
            offers = ((block_values.reshape(-1),
                       (xp.arange(start, start + block_values.shape[0], dtype=xp.int64)[:, None] * n
                        + block_indices).reshape(-1))
                      for start, block_values, block_indices in selection.blocks(b))
        for offered_values, offered_flat in offers:
            if not whole_rows:  # each row's offers come best first: put them in flat order
                by_flat = xp.argsort(offered_flat)  # flat indices are unique: no tie to break here
                offered_values, offered_flat = offered_values[by_flat], offered_flat[by_flat]
            block_values, block_flat = _kept(selection.call, offered_values, offered_flat, k)
            if best_values is None:
                best_values, best_flat = block_values, block_flat
            else:
                best_values, best_flat = _kept(selection.call, xp.concatenate([best_values, block_values]),
                                               xp.concatenate([best_flat, block_flat]), k)
        if by_magnitude:
            order = _by_magnitude(selection.call, best_values)  # ties keep flat order: the smaller first
            best_values, best_flat = best_values[order], best_flat[order]
        values[b], flat[b] = best_values, best_flat
    return values, flat // n, flat % n


def _by_magnitude(call: Call, values):
    """Positions of 1-D ``values`` by descending magnitude, ties (and NaN, last) in position
    order. The CPU module radix-sorts (400,000 float32: 3 ms against numpy's 43 ms stable
    argsort of -|values|, most of a SNELL-sized global top-k)."""
    if hasattr(call.module, "order_by_magnitude"):
        order = np.empty(values.shape[0], dtype=np.int64)
        call.module.order_by_magnitude(values, order)
        return order
    return _stable_argsort(call.xp, -call.xp.abs(values))


def _kept(call: Call, values, flat, k: int):
    """The (at most) k entries of largest |values|, in their given order, ties to the earlier;
    ``flat``: their flat indices, or an int, the first of a range. The CPU module selects them
    (``select_top_magnitudes``: a SNELL-sized block of 1,048,576 float32, k = 104,858, in 1.1 ms
    against 10 ms for numpy's masks and partition); elsewhere, or with NaN, a partition finds
    the k-th magnitude. Both bound it from the same sample (_sample_positions). Returns new
    arrays: ``values`` may be a reused buffer."""
    xp = call.xp
    if values.shape[0] <= k:
        if isinstance(flat, int):
            flat = xp.arange(flat, flat + values.shape[0], dtype=xp.int64)
        return values.copy(), flat.copy()
    if (hasattr(call.module, "select_top_magnitudes") and values.dtype in (np.float32, np.float64)
            and values.flags.c_contiguous):
        positions = np.empty(k, dtype=np.int64)
        sample = _sample_positions(np, values.shape[0]) if _samples(values.shape[0]) else _NO_SAMPLE
        if call.module.select_top_magnitudes(values, sample, positions) == k:  # -1: NaN, left to the path below
            return values[positions], positions + flat if isinstance(flat, int) else flat[positions]
    magnitude = xp.abs(values)
    threshold = _kth_largest(xp, magnitude, k)
    if threshold == threshold:
        keep = magnitude >= threshold
        extra = int(xp.count_nonzero(keep)) - k  # ties at the threshold beyond the k: the last ones go
        if extra > 0:
            keep[xp.flatnonzero(magnitude == threshold)[-extra:]] = False
    else:  # NaN magnitudes (an overflow, raised by the caller)
        keep = xp.zeros(magnitude.shape[0], dtype=bool)
        keep[:k] = True
    kept_flat = xp.flatnonzero(keep) + flat if isinstance(flat, int) else flat[keep]
    return values[keep], kept_flat


_SAMPLE = 16384  # magnitudes the bounds of the k-th largest are read from
_NO_SAMPLE = np.zeros(0, dtype=np.int64)


def _samples(size: int) -> bool:
    """Whether a selection from ``size`` magnitudes bounds its k-th from a sample first."""
    return size >= 8 * _SAMPLE


@functools.lru_cache(maxsize=8)  # one per size: a SNELL layer selects from the same size at every step
def _host_sample_positions(size: int) -> np.ndarray:
    step = size // _SAMPLE
    stretch = np.arange(_SAMPLE, dtype=np.uint64)
    hashed = (stretch + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)  # modulo 2^64
    positions = (stretch * np.uint64(step) + (hashed >> np.uint64(32)) % np.uint64(step)).astype(np.int64)
    positions.flags.writeable = False
    return positions


def _sample_positions(xp, size: int):
    """Where a selection from ``size`` magnitudes reads its sample: one position in each of
    _SAMPLE equal stretches, at an offset from a Fibonacci hash of the stretch's number. A plain
    stride dividing the row length sampled a few columns of the matrix, whose norms need not be
    the whole's (16 of SNELL's 1,024: the bounds missed, and all 2^20 keys were selected from)."""
    positions = _host_sample_positions(size)
    return positions if xp is np else xp.asarray(positions)


def _kth_largest(xp, magnitude, k: int):
    """The k-th largest of ``magnitude`` (1 <= k <= its size). A partition of every entry costs
    most of a large global top-k (25 of 66 ms at 2000 x 2000, k = 400,000); here only the entries
    at or above a bound set from a sample (_sample_positions) are partitioned, when they are at
    least k: then every entry >= the answer is among them, so it is exact. Otherwise (a bound
    too high, NaN) all of them are, as before."""
    size = magnitude.shape[0]
    if _samples(size) and 2 * k <= size:
        sample = xp.sort(magnitude[_sample_positions(xp, size)])
        expected = k / size * sample.shape[0]  # sample entries above the answer, on average
        position = sample.shape[0] - int(expected + 4 * expected ** 0.5 + 8)  # 4 sigma below
        if position > 0:
            candidates = magnitude[magnitude >= sample[position]]
            if candidates.shape[0] >= k:
                return xp.partition(candidates, candidates.shape[0] - k)[candidates.shape[0] - k]
    return xp.partition(magnitude, size - k)[size - k]


def _kernel_rounded(call: Call, code: int, half, values, kernel: Optional[int] = None):
    """f(values) for the kernel code ``kernel`` (None: values as they are) in float32, rounded
    once to the 16-bit format ``half`` (None: left in place, in values' dtype), in one pass; an
    entry NaN/inf in float32 or beyond the format's range is the overflow error, never a silent
    inf."""
    if half is None and kernel is None:
        return values
    op = "copy" if kernel is None else f"kernel_{KERNELS[kernel]}"
    out, nonfinite = elementwise(call, op, values, out=values if half is None else None, dtype=half)
    bad = call.read(nonfinite)[0]
    if bad:
        _raise_overflow(call, code, bad)
    return out


def apply_kernel(K: Any, kernel: str, dtype: Any = None) -> Any:
    """f(K) entry-wise, a new array: kernel_product's element step, for a caller whose own GEMM
    (a framework's, or blocks of a product too large to hold twice) formed K = U V^T.

    K: float32/float64 array of any shape (numpy or a CUDA array), or float16/bfloat16
    (``ml_dtypes.bfloat16`` in numpy): read in float32 and f(K) rounded once back to K's format.
    dtype: None (K's), or float16 / bfloat16 for float32 K: f(K) rounded once to that format
    in the same pass, as kernel_product does for 16-bit factors. Raises ValueError if K holds
    NaN/inf, FloatingPointError as kernel_product does when f(K) overflows (exponential) or
    leaves the 16-bit format's range."""
    call = resolve("apply_kernel", K=K)
    code = _kernel_code(kernel, "apply_kernel")
    K = call.float_array("K", K, range(65), allow_empty=True, halves=True)  # any number of dimensions
    try:
        dtype = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):  # numpy's own words name no argument
        raise TypeError(f"apply_kernel: dtype must be None, float16 or bfloat16, got {dtype!r}") from None
    if is_half(K.dtype):  # 16-bit K: f in float32 (one upcast copy), the result in K's format
        if dtype is not None and dtype != K.dtype:
            raise TypeError(f"apply_kernel: dtype must be None or K's own for {K.dtype} K, got {dtype}")
        K, dtype = K.astype(np.float32), K.dtype
    if dtype is not None and dtype != K.dtype:
        if not (is_half(dtype) and K.dtype == np.float32):
            raise TypeError(f"apply_kernel: dtype must be float16 or bfloat16 for float32 K (or K's own), got "
                            f"{dtype} for {K.dtype} K")
    else:
        dtype = None
    out, nonfinite = elementwise(call, f"kernel_{KERNELS[code]}", K, dtype=dtype)
    bad = call.read(nonfinite)[0]
    if bad:
        _raise_overflow(call, code, bad, dtype)
    return call.wrap(out)


@_checks.constrained(top_k=_checks.optional(_checks.integer), top_k_mode=_checks.one_of(*TOP_K_MODES),
                     top_k_order=_checks.one_of(*TOP_K_ORDERS), block_rows=_checks.optional(_checks.positive_int),
                     check_finite=_checks.flag)
def kernel_product(U: Any, V: Any, kernel: str = "identity", top_k: Optional[int] = None, *,
                   top_k_mode: str = "row", top_k_order: str = "magnitude", block_rows: Optional[int] = None,
                   check_finite: bool = True) -> Any:
    """K = f(U V^T), entry-wise K[i, j] = f(<U_i, V_j>), dense or reduced to its top-k entries.

    Parameters
    ----------
    U : (m, r) or (batch, m, r) float32/float64 array, any layout (numpy, or a CUDA array).
        float16/bfloat16 factors (``ml_dtypes.bfloat16`` in numpy) are computed in float32 (the
        GEMM, f and the ranking; the factors are upcast once, a copy) and the values rounded
        once to the input's format; an entry that overflows that format raises as below.
    V : (n, r) or (batch, n, r) array of the same dtype, batching and array type.
    kernel : one of ``KERNELS``: "identity", "relu" (max(x, 0)), "exponential" (alias "exp"),
        "tanh", "piecewise_linear" (hard tanh: x clamped to [-1, 1]).
    top_k : None for the dense result; else keep the top_k entries by |f(x)|: per row
        (1 <= top_k <= n) or over the whole matrix (1 <= top_k <= m * n) per ``top_k_mode``.
    top_k_mode : "row" or "global".
    top_k_order : the order of the kept entries: "magnitude" (larger |f| first, ties to the
        smaller column (row mode) or flat index (global)) or "position" (ascending column in each
        row; global: row-major, rows then columns ascending: the CSR order a sparse product of the
        kept entries wants, and no sort of them by magnitude).
    block_rows : rows of U V^T formed at a time in top-k mode (in row mode, several problems'
        rows together where each has fewer); default: as many as fit 64 MiB. On the CPU, float32/
        float64 numpy factors take tiles instead in dense and row modes: each OpenMP thread forms
        about 1 MiB of rows with SciPy's BLAS (one BLAS thread) and applies f, or selects, while
        they are in its cache (block_rows is then not used in those modes; a thread's tile is
        at most 16 MiB); the global mode forms its blocks so too. Device arrays, a framework
        adapter's GEMM (lowrank_hpc.torch) and too few rows for every thread (8 a thread) take
        numpy's GEMM. The two BLAS builds (SciPy's, numpy's) may round an inner product
        differently in its last bit, and the path goes by size: a batch and its problems' own
        calls can then differ by that much (exact inputs never do).
    check_finite : raise ValueError if U or V holds NaN/inf.

    Returns
    -------
    top_k None: (m, n) or (batch, m, n) array of the inputs' dtype.
    "row": :class:`TopK` (values (..., m, top_k), indices (..., m, top_k) int64 columns).
    "global": :class:`GlobalTopK` (values, rows, cols, each (..., top_k); int64 indices).
    Ordering: per ``top_k_order``.
    The top-k mode never forms the dense m x n matrix.

    Raises
    ------
    ValueError for an unknown kernel or mode, top_k or block_rows out of range, shapes, layout,
    NaN/inf input; TypeError for dtypes and mixed array types; FloatingPointError when f(U V^T)
    overflows (exponential of a large inner product, or the GEMM itself): never a silent inf.
    """
    call = resolve("kernel_product", U=U, V=V)
    code = _kernel_code(kernel)
    U3, V3, batched = factor_pair(call, U, V, check_finite=check_finite, halves=True)
    half = U3.dtype if is_half(U3.dtype) else None
    if half is not None:  # float32 throughout, rounded once at the end
        U3, V3 = U3.astype(np.float32), V3.astype(np.float32)
    batch, m, _ = U3.shape
    n = V3.shape[1]
    if top_k is None:
        gemm = _tile_gemm(call, U3, V3)
        if gemm:  # f applied to each row tile in cache, then the 16-bit rounding (if any) in one pass
            out = _kernel_rounded(call, code, half, _tiled_dense(call, U3, V3, code, gemm))
        else:
            out = _kernel_rounded(call, code, half, _gemm(call.xp, U3, V3.transpose(0, 2, 1)), kernel=code)
        return call.wrap(out if batched else out[0])

    limit = n if top_k_mode == "row" else m * n
    if not 1 <= top_k <= limit:
        bound = f"n = {n}" if top_k_mode == "row" else f"m * n = {m} * {n} = {m * n}"
        raise ValueError(f"kernel_product: top_k must satisfy 1 <= top_k <= {bound} in {top_k_mode} mode, got {top_k}")
    if block_rows is None:
        block_rows = default_block_rows(n, U3.dtype.itemsize)
    # Problems smaller than a block share one (a GEMM and a selection for many of them, where
    # 1,000 problems of 30 x 30 made 1,000 of each): in row mode, and in global mode for a batch
    # of small problems (each one's whole m x n a row of the block).
    grouped_global = top_k_mode == "global" and batch > 1 and m * n <= _GROUPED_GLOBAL_MAX_ENTRIES
    problems_per_block = (max(1, min(batch, block_rows // m)) if top_k_mode == "row" or grouped_global else 1)
    grouped_global = grouped_global and problems_per_block > 1
    selection = _Selection(call, U3, V3, code, top_k if grouped_global else min(top_k, n),
                           problems_per_block * m if problems_per_block > 1 else min(block_rows, m))
    if top_k_mode == "row":
        values, indices = _top_k_rows(selection, batch, m, problems_per_block)
        selection.check()
        if top_k_order == "position":
            values, indices = _in_position_order(call.xp, values, indices)
        values = _kernel_rounded(call, code, half, values)
        result = TopK(*(call.wrap(x if batched else x[0]) for x in (values, indices)))
    else:
        by_magnitude = top_k_order == "magnitude"
        values, rows, cols = (_top_k_global_grouped(selection, batch, n, problems_per_block, by_magnitude)
                              if grouped_global else _top_k_global(selection, batch, n, top_k, by_magnitude))
        selection.check()
        values = _kernel_rounded(call, code, half, values)
        result = GlobalTopK(*(call.wrap(x if batched else x[0]) for x in (values, rows, cols)))
    return result
