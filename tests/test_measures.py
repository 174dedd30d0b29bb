"""The solvers' per-iteration measures (lowrank_hpc.recover._measures): the relative change's
float64 Gram blocks from the CPU module's register tiles (change_grams_left / change_grams_right)
against numpy's float64 products, at every built level, for any thread count."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

import reference
from lowrank_hpc import _cpu_isa
from lowrank_hpc._arrays import resolve
from lowrank_hpc.recover import _measures as measures

LEVEL_MODULES = [importlib.import_module(f"lowrank_hpc.{_cpu_isa.MODULES[level]}")
                 for level in _cpu_isa.built_levels() if level in _cpu_isa.processor_levels()]


def _factor_pair(rng, rows: int, k: int, dtype):
    """Rows before and after a small update (the difference is what the Grams must keep)."""
    before = rng.standard_normal((rows, k)).astype(dtype)
    after = (before + 1e-3 * rng.standard_normal((rows, k))).astype(dtype)
    return before, after


def _expected_blocks(before, after):
    x0, x1 = before.astype(np.float64), after.astype(np.float64)
    d = x1 - x0
    return [d.T @ d, d.T @ x0, x0.T @ x0], [x1.T @ x1, x1.T @ d, d.T @ d, x0.T @ x0]


@pytest.mark.parametrize("module", LEVEL_MODULES, ids=lambda m: m.CPU_LEVEL)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows, k", [(1, 1), (7, 3), (40, 8), (333, 13), (700, 64), (90, 100), (65, 257)])
def test_change_grams_are_the_float64_products(module, dtype, rows, k):
    """Every block of two problems against numpy's float64 product (k below, at and above the
    tile widths, with remainders); the added blocks land in the right slots, the others stay
    untouched."""
    rng = np.random.default_rng(rows * 1000 + k)
    pairs = [_factor_pair(rng, rows, k, dtype) for _ in range(2)]
    before, after = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    left, right = np.zeros((2, 3, k, k)), np.zeros((2, 4, k, k))
    module.change_grams_left(before, after, True, left)
    module.change_grams_right(before, after, True, True, right)
    for b in range(2):
        left_expected, right_expected = _expected_blocks(before[b], after[b])
        for block, expected in zip(left[b], left_expected):
            np.testing.assert_allclose(block, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
        for block, expected in zip(right[b], right_expected):
            np.testing.assert_allclose(block, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
        # Symmetric blocks are mirrored, so exactly symmetric.
        for block in (left[b, 0], left[b, 2], right[b, 0], right[b, 2], right[b, 3]):
            np.testing.assert_array_equal(block, block.T)
    twice = left.copy()
    module.change_grams_left(before, after, True, twice)  # added into out
    np.testing.assert_array_equal(twice, 2 * left)
    # Without the optional Grams: the same numbers in the other slots, nothing in theirs.
    partial_left = np.zeros((2, 3, k, k))
    module.change_grams_left(before, after, False, partial_left)
    np.testing.assert_array_equal(partial_left[:, :2], left[:, :2])
    assert not partial_left[:, 2].any()
    partial_right = np.zeros((2, 4, k, k))
    module.change_grams_right(before, after, False, False, partial_right)
    np.testing.assert_array_equal(partial_right[:, 1:3], right[:, 1:3])
    assert not partial_right[:, 0].any() and not partial_right[:, 3].any()


def test_change_grams_give_the_same_bits_for_any_thread_count():
    """The threads split the Gram's rows, each entry sums the factor rows in order."""
    module = LEVEL_MODULES[-1]
    before, after = (x[None] for x in _factor_pair(np.random.default_rng(3), 5000, 72, np.float32))
    results = []
    previous = module.max_threads()
    try:
        for threads in (1, 2, 3):
            module.set_num_threads(threads)
            left, right = np.zeros((1, 3, 72, 72)), np.zeros((1, 4, 72, 72))
            module.change_grams_left(before, after, True, left)
            module.change_grams_right(before, after, True, True, right)
            results.append((left, right))
    finally:
        module.set_num_threads(previous)
    for left, right in results[1:]:
        np.testing.assert_array_equal(left, results[0][0])
        np.testing.assert_array_equal(right, results[0][1])


def test_change_grams_of_no_rows_add_nothing():
    module = LEVEL_MODULES[-1]
    left = np.ones((2, 3, 4, 4))
    module.change_grams_left(np.zeros((2, 0, 4)), np.zeros((2, 0, 4)), True, left)
    np.testing.assert_array_equal(left, 1.0)


@pytest.mark.parametrize("bad, message", [
    (dict(after=np.zeros((1, 9, 4))), "after"),
    (dict(after=np.zeros((1, 10, 4), dtype=np.float32)), "after"),
    (dict(before=np.zeros((1, 10, 4), dtype=np.int64)), "before"),
    (dict(before=np.zeros((10, 4))), "before"),
    (dict(out=np.zeros((1, 3, 4, 5))), "out"),
    (dict(out=np.zeros((2, 3, 4, 4))), "out"),
    (dict(out=np.zeros((1, 3, 4, 4), dtype=np.float32)), "out"),
    (dict(out=np.zeros((1, 3, 4, 4))[:, :, :, ::-1]), "out"),
])
def test_change_grams_reject_mismatched_arrays_by_name(bad, message):
    module = LEVEL_MODULES[-1]
    arrays = dict(before=np.zeros((1, 10, 4)), after=np.zeros((1, 10, 4)), out=np.zeros((1, 3, 4, 4)))
    arrays.update(bad)
    with pytest.raises(ValueError, match=message):
        module.change_grams_left(arrays["before"], arrays["after"], True, arrays["out"])


def test_relative_change_from_the_tiles_is_the_reference_on_strided_problems(monkeypatch):
    """relative_change over three problems (each problem's rows a strided slice of the batch):
    the tiled Grams give the float64 reference's ratio, and the numpy GEMM path (the GPU's) the same
    to rounding."""
    rng = np.random.default_rng(11)
    U0, V0 = rng.standard_normal((3, 300, 6)).astype(np.float32), rng.standard_normal((3, 200, 6)).astype(np.float32)
    U1 = (U0 + 0.01 * rng.standard_normal(U0.shape)).astype(np.float32)
    V1 = (V0 + 0.01 * rng.standard_normal(V0.shape)).astype(np.float32)
    call = resolve("test", U=U0)
    assert measures.ChangeGrams(call, 3, 6)._tiled  # the CPU module's tiles, not numpy's GEMM
    monkeypatch.setattr(measures, "_FLOAT64_BLOCK", 6 * 3 * 64)  # several blocks of rows
    tiled = measures.relative_change(call, U0, V0, U1, V1)
    for b in range(3):
        expected = reference.relative_change(U0[b], V0[b], U1[b], V1[b])
        np.testing.assert_allclose(tiled[b], expected, rtol=1e-10)
    original = measures.ChangeGrams.__init__

    def numpy_products(self, *args):
        original(self, *args)
        self._tiled = False

    monkeypatch.setattr(measures.ChangeGrams, "__init__", numpy_products)
    np.testing.assert_allclose(measures.relative_change(call, U0, V0, U1, V1), tiled, rtol=1e-12)


def test_relative_change_of_nan_or_inf_factors_is_nan_never_no_change():
    """A NaN/inf in the new factors makes the change NaN (a solver reading 0 would call it
    stationary); the clamp of a rounding-negative sum to 0 still gives 0 for equal factors."""
    rng = np.random.default_rng(12)
    U0, V0 = rng.standard_normal((2, 30, 3)), rng.standard_normal((2, 20, 3))
    call = resolve("test", U=U0)
    for bad in (np.nan, np.inf):
        U1 = U0.copy()
        U1[1, 4, 2] = bad
        change = measures.relative_change(call, U0, V0, U1, V0)
        assert change[0] == 0.0 and np.isnan(change[1])
    np.testing.assert_array_equal(measures.relative_change(call, U0, V0, U0, V0), [0.0, 0.0])
