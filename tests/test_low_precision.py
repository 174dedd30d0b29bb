"""float16/bfloat16 storage with float32 accumulation (issue 16): every kernel against the exact
(float64) result of the same inputs upcast, within the format's one rounding plus float32's
summation error, so a kernel that summed in 16 bits fails; the rounding itself bit for bit
against numpy's/ml_dtypes' casts (to nearest, ties to even); and the dtype errors.

GPU: float16 through CuPy (CuPy has no bfloat16)."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from lowrank_hpc import _backend, ops

import reference

try:
    import ml_dtypes
except ImportError:  # optional: bfloat16 cases skip without it
    ml_dtypes = None

HALVES = [np.dtype(np.float16)] + ([np.dtype(ml_dtypes.bfloat16)] if ml_dtypes is not None else [])
# Unit roundoff (half an ulp, relative) of each format, and float32's.
UNIT = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}
F32_UNIT = 2.0 ** -24


@pytest.fixture(params=HALVES, ids=lambda d: d.name)
def half(request, backend):
    if backend.name == "cuda" and request.param.name == "bfloat16":
        pytest.skip("CuPy has no bfloat16 dtype")
    return request.param


def random_half(rng, shape, half, scale=1.0):
    return (scale * rng.standard_normal(shape)).astype(half)


def assert_one_rounding(got, exact, magnitude, terms, half):
    """|got - exact| <= u |exact| (the one rounding to the format) + terms * 2^-23 * magnitude
    (float32 summation of `terms` products of total size `magnitude`) + the format's smallest
    subnormal step. Summing in the 16-bit format instead errs by ~ sqrt(terms) u magnitude."""
    assert got.dtype == half
    got = np.asarray(got).astype(np.float64)
    tiny = 2.0 ** -24 if half.name == "float16" else 0.0
    bound = UNIT[half.name] * np.abs(exact) + 2 * terms * F32_UNIT * magnitude + tiny
    excess = np.abs(got - exact) - bound
    assert np.all(excess <= 0), f"worst excess {excess.max():.3g} at {np.argmax(excess)}"


def sampled_problem(rng, half, m=40, n=30, r=64, nnz=500):
    U, V = random_half(rng, (m, r), half), random_half(rng, (n, r), half)
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    return U, V, rows, cols


def test_sampled_product_rounds_a_float32_sum_once(backend, half, rng):
    U, V, rows, cols = sampled_problem(rng, half)
    got = backend.get(ops.sampled_product(backend.put(U), backend.put(V), backend.put(rows), backend.put(cols)))
    exact = reference.sampled_product(U, V, rows, cols)
    magnitude = reference.sampled_product(np.abs(U.astype(np.float64)), np.abs(V.astype(np.float64)), rows, cols)
    assert_one_rounding(got, exact, magnitude, U.shape[1], half)
    # The float32 kernel on the upcast inputs, rounded: the same number but where a tie broke otherwise.
    f32 = backend.get(ops.sampled_product(*(backend.put(x.astype(np.float32)) for x in (U, V)), backend.put(rows),
                                          backend.put(cols)))
    assert np.mean(got.view(np.uint16) == f32.astype(half).view(np.uint16)) > 0.95


def test_sampled_product_batched_int32_indices(backend, half, rng):
    U, V = random_half(rng, (3, 12, 20), half), random_half(rng, (3, 9, 20), half)
    offsets = np.array([0, 40, 40, 100])
    rows, cols = rng.integers(0, 12, 100).astype(np.int32), rng.integers(0, 9, 100).astype(np.int32)
    got = backend.get(ops.sampled_product(backend.put(U), backend.put(V), backend.put(rows), backend.put(cols),
                                          offsets=backend.put(offsets)))
    exact = reference.sampled_product(U, V, rows, cols, offsets)
    magnitude = reference.sampled_product(np.abs(U.astype(np.float64)), np.abs(V.astype(np.float64)), rows, cols,
                                          offsets)
    assert_one_rounding(got, exact, magnitude, 20, half)


def test_sixteen_bit_products_round_to_nearest_even(backend, half, rng):
    # r = 1: a 16-bit product is exact in float32 (11 + 11 or 8 + 8 significant bits), so the
    # output is that float32 number rounded once, bit for bit numpy's (ml_dtypes') cast.
    a = random_half(rng, (4000, 1), half, scale=4.0)
    b = random_half(rng, (4000, 1), half, scale=4.0)
    b[:8] = np.array([1, 0.5, 2 ** -10, 2 ** -14, 2 ** -20, 3, -1, 0]).astype(half)[:, None]  # subnormal, ties
    index = np.arange(4000)
    got = backend.get(ops.sampled_product(backend.put(a), backend.put(b), backend.put(index), backend.put(index)))
    expected = (a[:, 0].astype(np.float32) * b[:, 0].astype(np.float32)).astype(half)
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("transpose", [False, True], ids=["S", "S^T"])
def test_sparse_times_dense_rounds_each_row_sum_once(backend, half, rng, transpose):
    m, n, r, nnz = 30, 25, 16, 900
    rows, cols = rng.integers(0, m, nnz), rng.integers(0, n, nnz)
    rows[1], cols[1] = rows[0], cols[0]  # a repeated position adds up
    vals = random_half(rng, nnz, half)
    B = random_half(rng, (m if transpose else n, r), half)
    n_rows = n if transpose else m
    got = backend.get(ops.sparse_times_dense(backend.put(rows), backend.put(cols), backend.put(vals), backend.put(B),
                                             n_rows, transpose=transpose))
    exact = reference.sparse_times_dense(rows, cols, vals, B, n_rows, transpose)
    magnitude = reference.sparse_times_dense(rows, cols, np.abs(vals.astype(np.float64)),
                                             np.abs(B.astype(np.float64)), n_rows, transpose)
    per_row = np.bincount(cols if transpose else rows, minlength=n_rows).max()
    assert_one_rounding(got, exact, magnitude, per_row, half)


def sequential_float32_spmm(rows, cols, vals, B, n_rows):
    """S @ B summed the kernels' way, bit for bit: each output coordinate adds its row's entries'
    float32 products (v * B[col], a multiply then an add) one at a time in input order, then
    rounds once to the 16-bit format."""
    vals32, B32 = vals.astype(np.float32), B.astype(np.float32)
    out = np.zeros((n_rows, B.shape[1]), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    starts = np.searchsorted(rows[order], np.arange(n_rows))
    place = np.empty(rows.size, dtype=np.int64)
    place[order] = np.arange(rows.size) - starts[rows[order]]  # each entry's turn within its row
    for turn in range(int(place.max()) + 1):
        k = np.nonzero(place == turn)[0]  # at most one entry of each row
        out[rows[k]] = out[rows[k]] + vals32[k, None] * B32[cols[k]]
    return out.astype(B.dtype)


@pytest.mark.parametrize("r", [1, 3, 8, 13, 16, 24, 32, 40, 64, 100])
def test_sparse_times_dense_sums_each_row_in_order_at_every_tile_width(backend, half, rng, r):
    # The register tiles of every width (compiled ranks, full tiles, halving tiles, remainders)
    # on 16-bit storage, against the sequential float32 sums: the same bits, on a skewed pattern
    # (one row with a third of the entries, empty rows).
    m, n, nnz = 50, 40, 1500
    rows = np.where(rng.random(nnz) < 0.33, 7, rng.integers(0, m, nnz))
    rows[rows == 11] = 12  # row 11 empty
    cols = rng.integers(0, n, nnz)
    vals, B = random_half(rng, nnz, half), random_half(rng, (n, r), half)
    expected = sequential_float32_spmm(rows, cols, vals, B, m)
    got = backend.get(ops.sparse_times_dense(*(backend.put(x) for x in (rows, cols, vals, B)), m))
    if backend.name == "cuda":  # the device's order is its own: the one-rounding bound
        exact = reference.sparse_times_dense(rows, cols, vals, B, m)
        magnitude = reference.sparse_times_dense(rows, cols, np.abs(vals.astype(np.float64)),
                                                 np.abs(B.astype(np.float64)), m)
        assert_one_rounding(got, exact, magnitude, np.bincount(rows).max(), half)
        return
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))
    pattern = ops.SparsePattern(rows, cols, (m, n))
    np.testing.assert_array_equal(pattern.times_dense(vals, B).view(np.uint16), expected.view(np.uint16))


def test_sparse_pattern_and_batched_operands(backend, half, rng):
    rows, cols = rng.integers(0, 10, 120), rng.integers(0, 8, 120)
    offsets = np.array([0, 70, 120])
    vals, B = random_half(rng, 120, half), random_half(rng, (2, 8, 5), half)
    got = backend.get(ops.sparse_times_dense(*(backend.put(x) for x in (rows, cols, vals, B)), 10,
                                             offsets=backend.put(offsets)))
    exact = reference.sparse_times_dense(rows, cols, vals, B, 10, offsets=offsets)
    magnitude = reference.sparse_times_dense(rows, cols, np.abs(vals.astype(np.float64)),
                                             np.abs(B.astype(np.float64)), 10, offsets=offsets)
    assert_one_rounding(got, exact, magnitude, 120, half)
    pattern = ops.SparsePattern(backend.put(rows[:70]), backend.put(cols[:70]), (10, 8))
    for transpose, operand in ((False, B[0]), (True, random_half(rng, (10, 5), half))):
        got = backend.get(pattern.times_dense(backend.put(vals[:70]), backend.put(operand), transpose=transpose))
        exact = reference.sparse_times_dense(rows[:70], cols[:70], vals[:70], operand, 8 if transpose else 10,
                                             transpose)
        magnitude = reference.sparse_times_dense(rows[:70], cols[:70], np.abs(vals[:70].astype(np.float64)),
                                                 np.abs(operand.astype(np.float64)), 8 if transpose else 10, transpose)
        assert_one_rounding(got, exact, magnitude, 70, half)
    # The pattern's sampled product runs the coordinate kernel for 16-bit factors: the same bits.
    U, V = random_half(rng, (10, 5), half), random_half(rng, (8, 5), half)
    got = backend.get(pattern.sampled_product(backend.put(U), backend.put(V)))
    expected = backend.get(ops.sampled_product(*map(backend.put, (U, V, rows[:70], cols[:70]))))
    np.testing.assert_array_equal(got.view(np.uint16), expected.view(np.uint16))


@pytest.mark.parametrize("batched", [False, True], ids=["2d", "3d"])
def test_lowrank_and_dense_kernel_products(backend, half, rng, batched):
    shape = (2,) if batched else ()
    U, V = random_half(rng, shape + (20, 48), half, 0.3), random_half(rng, shape + (15, 48), half, 0.3)
    U64, V64 = U.astype(np.float64), V.astype(np.float64)
    magnitude = reference.lowrank_product(np.abs(U64), np.abs(V64))
    got = backend.get(ops.lowrank_product(backend.put(U), backend.put(V)))
    assert_one_rounding(got, reference.lowrank_product(U64, V64), magnitude, 48, half)
    for kernel in ops.KERNELS:
        got = backend.get(ops.kernel_product(backend.put(U), backend.put(V), kernel))
        exact = reference.kernel_product(U64, V64, kernel)
        # f is 1-Lipschitz here except exp, whose slope at x is exp(x): the float32 GEMM error scaled.
        slope = np.abs(exact) if kernel == "exponential" else 1.0
        assert_one_rounding(got, exact, magnitude * slope, 48, half)


def test_kernel_top_k_ranks_in_float32_and_rounds_the_values(backend, half, rng):
    U, V = random_half(rng, (16, 24), half, 0.4), random_half(rng, (30, 24), half, 0.4)
    U32, V32 = (backend.put(x.astype(np.float32)) for x in (U, V))
    for kernel in ("tanh", "relu"):
        rows_mode = ops.kernel_product(backend.put(U), backend.put(V), kernel, 4)
        ref = ops.kernel_product(U32, V32, kernel, 4)
        np.testing.assert_array_equal(backend.get(rows_mode.indices), backend.get(ref.indices))
        np.testing.assert_array_equal(backend.get(rows_mode.values).view(np.uint16),
                                      backend.get(ref.values).astype(half).view(np.uint16))
        global_mode = ops.kernel_product(backend.put(U), backend.put(V), kernel, 25, top_k_mode="global")
        ref = ops.kernel_product(U32, V32, kernel, 25, top_k_mode="global")
        for got, want in zip(global_mode[1:], ref[1:]):
            np.testing.assert_array_equal(backend.get(got), backend.get(want))
        assert global_mode.values.dtype == half


def edge_floats(rng, count=400_000):
    """float32 numbers whose rounding to 16 bits is delicate, both signs: random bit patterns
    (every exponent: subnormal, overflowing, inf, NaN), the halfway points between neighbouring
    float16 and bfloat16 numbers (ties go to the even one) and their float32 neighbours, the
    largest finite numbers of each format and the first that overflow, and the subnormals."""
    random_bits = rng.integers(0, 2 ** 32, count, dtype=np.uint64).astype(np.uint32)
    halves = np.arange(0, 2 ** 15, dtype=np.uint32)  # every non-negative float16 and bfloat16 pattern
    f16 = halves.astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)[:0x7c00]
    bf16 = (halves << 16)[:0x7f80]
    # Midpoints: float16's 13 and bfloat16's 16 discarded bits at exactly one half, and one off.
    ties = np.concatenate([f16[1:] - (1 << 12), bf16[1:] - (1 << 15)]).astype(np.uint32)
    special = np.array([0x477fefff, 0x477ff000, 0x477ff001, 0x47800000, 0x7f7fffff, 0x7f7f7fff, 0x7f7f8000,
                        0x387fc000, 0x387fe000, 0x33000000, 0x33000001, 0x32ffffff, 0x00000001, 0x7f800000,
                        0x7fc00000, 0x7f800001, 0x7fbfffff], dtype=np.uint32)
    bits = np.concatenate([random_bits, f16, bf16, ties, ties - 1, ties + 1, special])
    return np.concatenate([bits, bits | np.uint32(0x80000000)]).view(np.float32)


def test_the_rounding_pass_is_the_casts_bit_for_bit(backend, half, rng):
    # The dense products' last pass (map "copy" into the 16-bit format; kernel_product fuses f
    # into it): numpy's/ml_dtypes' cast on every finite and infinite number, at every CPU level
    # (F16C/AVX-512 conversions or the bit code), and the device's quiet NaN (core/half.hpp's
    # to_float16/to_bfloat16: 0x7e00 or the top bits | 0x40, the sign kept) for every NaN.
    from lowrank_hpc import _cpu_isa

    x = edge_floats(rng)
    with np.errstate(all="ignore"):
        expected = x.astype(half).view(np.uint16)
    nan = np.isnan(x)
    sign = (x.view(np.uint32) >> 16).astype(np.uint16) & np.uint16(0x8000)
    if half.name == "float16":
        expected = np.where(nan, sign | np.uint16(0x7e00), expected)
    else:
        expected = np.where(nan, (x.view(np.uint32) >> 16).astype(np.uint16) | np.uint16(0x40), expected)
    top = 0x7c00 if half.name == "float16" else 0x7f80
    nonfinite = int(((expected & top) == top).sum())
    assert nonfinite > 2_000 and nan.sum() > 2_000  # the sweep reaches overflow, inf and NaN
    modules = [_backend.cuda_module()] if backend.name == "cuda" else [
        importlib.import_module(f"lowrank_hpc.{_cpu_isa.MODULES[level]}") for level in _cpu_isa.built_levels()
        if level in _cpu_isa.processor_levels()]
    for module in modules:
        for source in (x, x[:4096 * 3 + 5]):  # whole chunks, and a tail
            out = backend.xp.empty(source.shape, dtype=half)
            count = backend.xp.zeros(1, dtype=np.int64)
            module.map("copy", backend.put(source), out, [], count)
            got = backend.get(out).view(np.uint16)
            want = expected[:source.size]
            mismatch = np.nonzero(got != want)[0]
            assert mismatch.size == 0, (getattr(module, "CPU_LEVEL", "cuda"), [
                (hex(x.view(np.uint32)[i]), hex(got[i]), hex(want[i])) for i in mismatch[:5]])
            assert int(backend.get(count)[0]) == int(((want & top) == top).sum())


def test_dense_products_round_the_float32_results_once(backend, half, rng):
    # lowrank_product and the dense kernel_product of 16-bit factors: the float32 computation of
    # the upcast factors rounded once, bit for bit (the same GEMM on both sides).
    U, V = random_half(rng, (70, 24), half, 0.5), random_half(rng, (5000 // 70 + 3, 24), half, 0.5)
    U32, V32 = (backend.put(x.astype(np.float32)) for x in (U, V))
    got = backend.get(ops.lowrank_product(backend.put(U), backend.put(V)))
    np.testing.assert_array_equal(got.view(np.uint16),
                                  backend.get(ops.lowrank_product(U32, V32)).astype(half).view(np.uint16))
    for kernel in ops.KERNELS:
        got = backend.get(ops.kernel_product(backend.put(U), backend.put(V), kernel))
        want = backend.get(ops.kernel_product(U32, V32, kernel)).astype(half)
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_lowrank_product_beyond_float32_is_inf_not_nan(backend, rng):
    # bfloat16 has float32's range: a product past it is inf in float32, and inf it stays (the
    # rounding pass keeps infinities; the kernels' f would turn them into NaN, to be reported).
    if ml_dtypes is None or backend.name == "cuda":
        pytest.skip("bfloat16 needs ml_dtypes and the CPU")
    U = np.array([[1e20, 0.0], [1.0, 1.0]]).astype(ml_dtypes.bfloat16)
    V = np.array([[1e20, 0.0], [-1e20, 0.0]]).astype(ml_dtypes.bfloat16)
    with np.errstate(over="ignore"):  # numpy's GEMM warns of its own overflow
        got = ops.lowrank_product(U, V).astype(np.float32)
    assert got[0, 0] == np.inf and got[0, 1] == -np.inf and np.isfinite(got[1]).all()


def test_overflow_of_the_format_is_an_error_not_an_inf(backend, rng):
    U = np.full((3, 4), 2.0, dtype=np.float16)  # <u, v> = 16, exp(16) > 65504 (float16's max)
    with pytest.raises(FloatingPointError, match="exponential kernel overflowed: 9 entries .* float16"):
        ops.kernel_product(backend.put(U), backend.put(U), "exp")
    with pytest.raises(FloatingPointError, match="exponential kernel overflowed"):
        ops.kernel_product(backend.put(U), backend.put(U), "exp", 2)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_sparse_products_overflowing_their_dtype_raise_with_check_finite(backend, dtype):
    """Finite inputs whose sums pass the dtype's range (float16: 65504, reached by factors of
    about 60 at r = 20) raise FloatingPointError from every sparse product, instead of returning
    inf; with check_finite=False the inf is returned (the adapters' and solvers' choice)."""
    scale = 60.0 if dtype == "float16" else 2e19
    U = backend.put(np.full((4, 20), scale, dtype=dtype))
    rows, cols = backend.put(np.array([0, 1, 3])), backend.put(np.array([2, 0, 3]))
    vals = backend.put(np.full(3, 20 * scale, dtype=dtype))  # one entry a row: vals * U's 20-fold scale
    pattern = ops.SparsePattern(rows, cols, (4, 4))
    calls = {"sampled_product": lambda c: ops.sampled_product(U, U, rows, cols, check_finite=c),
             "SparsePattern.sampled_product": lambda c: pattern.sampled_product(U, U, check_finite=c),
             "sparse_times_dense": lambda c: ops.sparse_times_dense(rows, cols, vals, U, 4, check_finite=c),
             "SparsePattern.times_dense": lambda c: pattern.times_dense(vals, U, check_finite=c)}
    for name, call in calls.items():
        with pytest.raises(FloatingPointError, match=rf"{name}: \d+ entries of the result overflowed to inf in "
                                                     rf"{dtype}"):
            call(True)
        assert np.isinf(backend.get(call(False)).astype(np.float64)).any(), name
    small = backend.put(np.full((4, 20), 1.0, dtype=dtype))  # and no false alarm below the range
    np.testing.assert_array_equal(backend.get(ops.sampled_product(small, small, rows, cols)), np.full(3, 20.0))


def test_nan_in_16_bit_input_is_reported(backend, half, rng):
    U, V, rows, cols = sampled_problem(rng, half, nnz=20)
    U[3, 5] = np.nan
    with pytest.raises(ValueError, match="sampled_product: U contains 1 NaN/inf"):
        ops.sampled_product(backend.put(U), backend.put(V), backend.put(rows), backend.put(cols))
    vals = random_half(rng, 20, half)
    vals[7] = np.inf
    with pytest.raises(ValueError, match="sparse_times_dense: vals contains 1 NaN/inf"):
        ops.sparse_times_dense(backend.put(rows), backend.put(cols), backend.put(vals), backend.put(V), 40)


def test_dtype_errors_stay_clear(backend, half, rng):
    U, V, rows, cols = sampled_problem(rng, half, nnz=20)
    with pytest.raises(TypeError, match=f"sampled_product: V is float32 but U is {half.name}; pass both in one"):
        ops.sampled_product(backend.put(U), backend.put(V.astype(np.float32)), backend.put(rows), backend.put(cols))
    with pytest.raises(TypeError, match=f"sparse_times_dense: B is float64 but vals is {half.name}"):
        ops.sparse_times_dense(backend.put(rows), backend.put(cols), backend.put(random_half(rng, 20, half)),
                               backend.put(V.astype(np.float64)), 40)
    with pytest.raises(TypeError, match="lowrank_product: U is complex"):
        ops.lowrank_product(backend.put(U.astype(np.complex64)), backend.put(V))
    # The compiled modules name the argument and what they take.
    module = _backend.cuda_module() if backend.name == "cuda" else _backend.cpu_module()
    xp = backend.xp
    U3, V3 = backend.put(U[None]), backend.put(V[None])
    r, c = backend.put(rows), backend.put(cols)
    offsets, status = xp.asarray(np.array([0, 20])), xp.asarray(np.array([20]))
    with pytest.raises(ValueError, match=f"out: expected {half.name}, got float32"):
        module.sampled_product(U3, V3, r, c, offsets, xp.empty(20, dtype=np.float32), status, 0)
    with pytest.raises(ValueError, match=f"V: expected {half.name}, got float64"):
        module.sampled_product(U3, backend.put(V[None].astype(np.float64)), r, c, offsets, xp.empty(20, half),
                               status, 0)
    with pytest.raises(ValueError, match="U: must be float32, float64, float16 or bfloat16, got int32"):
        module.sampled_product(backend.put(np.ones((1, 4, 2), np.int32)), V3, r, c, offsets, xp.empty(20), status, 0)
    # The solvers' kernels stay float32/float64: a 16-bit factor is named, not misread.
    with pytest.raises(ValueError, match=f"U: must be float32 or float64, got {half.name}"):
        module.sampled_squared_residuals(U3, V3, r, c, backend.put(random_half(rng, 20, half)), offsets,
                                         xp.empty(20), status, 0)


class _DeviceArray:
    """A stand-in for a CUDA array: only its __cuda_array_interface__ (never read here)."""

    def __init__(self, typestr, descr=None):
        self.__cuda_array_interface__ = {"shape": (4,), "typestr": typestr, "data": (0, False), "version": 3,
                                         "strides": None}
        if descr is not None:
            self.__cuda_array_interface__["descr"] = descr


@pytest.mark.parametrize("typestr, descr, recognised", [
    ("<f2", None, True), ("<V2", [("bfloat16", "<V2")], True), ("<V2", [("", "<V2")], False), ("<i2", None, False)])
def test_cuda_array_interface_names_the_16_bit_formats(typestr, descr, recognised):
    # The dtype is read before the device is checked: a recognised 16-bit array reaches the
    # device check (the CPU module refuses CUDA memory), an unknown one stops at the dtype.
    count = np.zeros(1, dtype=np.int64)
    message = "x: is on the wrong device" if recognised else "x: must be float32, float64, float16 or bfloat16"
    with pytest.raises(ValueError, match=message):
        _backend.cpu_module().count_nonfinite(_DeviceArray(typestr, descr), count, 0)
