"""The shared element-wise map and row/column reduction launchers, through the public functions
built on them (soft_threshold, sum_of_squares), against numpy."""
from __future__ import annotations

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc import _backend

from conftest import RTOL


def _soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0)


@pytest.mark.parametrize("shape", [(0,), (7,), (40, 30), (3, 5, 4), (300, 200)])
def test_soft_threshold_matches_numpy(backend, dtype, rng, shape):
    x = rng.standard_normal(shape).astype(dtype)
    got = backend.get(lr.ops.soft_threshold(backend.put(x), 0.5))
    assert got.dtype == dtype and got.shape == x.shape
    np.testing.assert_array_equal(got, _soft(x, dtype(0.5)).astype(dtype))


@pytest.mark.parametrize("shape", [(2, 3, 2, 2, 3), (2, 1, 3, 2, 1, 2, 2), (1,) * 12])
def test_element_wise_maps_take_any_number_of_dimensions(backend, rng, shape):
    """The documented "any shape" beyond the bindings' 4 dimensions (5-D and up raised pybind's
    "incompatible function arguments"), with out=, and NaN still counted."""
    x = rng.standard_normal(shape)
    np.testing.assert_array_equal(backend.get(lr.ops.soft_threshold(backend.put(x), 0.5)), _soft(x, 0.5))
    out = backend.put(np.empty(shape))
    assert lr.ops.soft_threshold(backend.put(x), 0.5, out=out) is out
    np.testing.assert_array_equal(backend.get(out), _soft(x, 0.5))
    np.testing.assert_allclose(backend.get(lr.ops.apply_kernel(backend.put(x), "tanh")), np.tanh(x), rtol=1e-15, atol=0)
    assert backend.get(lr.ops.elastic_binary_prox(backend.put(x), 0.1, 0.2)).shape == shape
    x.reshape(-1)[-1] = np.nan
    with pytest.raises(ValueError, match="K contains 1 NaN/inf"):
        lr.ops.apply_kernel(backend.put(x), "relu")
    with pytest.raises(ValueError, match="x contains 1 NaN/inf"):
        lr.ops.soft_threshold(backend.put(x), 0.5)


def test_soft_threshold_in_place_and_its_errors(backend, rng):
    x = backend.put(rng.standard_normal((6, 4)))
    expected = _soft(backend.get(x), 0.25)
    assert lr.ops.soft_threshold(x, 0.25, out=x) is x
    np.testing.assert_array_equal(backend.get(x), expected)
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0"):
        lr.ops.soft_threshold(x, -1.0)
    with pytest.raises(ValueError, match=r"out has shape \(4, 6\) and dtype float64, expected \(6, 4\)"):
        lr.ops.soft_threshold(x, 0.1, out=backend.xp.empty((4, 6)))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        lr.ops.soft_threshold(x, 0.1, out=backend.xp.empty((4, 6)).T)
    bad = backend.get(x).copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains 1 NaN/inf"):
        lr.ops.soft_threshold(backend.put(bad), 0.1)


def test_soft_threshold_refuses_a_read_only_output(rng):
    x = rng.standard_normal(5)
    out = np.empty(5)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        lr.ops.soft_threshold(x, 0.1, out=out)


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (3, 700), (700, 3), (300, 257)])
@pytest.mark.parametrize("axis", [0, 1])
def test_sum_of_squares_matches_numpy(backend, dtype, rng, shape, axis):
    x = (rng.standard_normal(shape) + 3).astype(dtype)  # not centered: sums grow with the length
    got = backend.get(lr.ops.sum_of_squares(backend.put(x), axis))
    expected = np.einsum("ij,ij->i" if axis == 1 else "ij,ij->j", x.astype(np.float64), x.astype(np.float64))
    assert got.dtype == dtype
    # Each term x^2 is rounded once in the input precision, the sum runs in double.
    np.testing.assert_allclose(got, expected, rtol=2 * RTOL[dtype] if dtype == np.float32 else 1e-13)


def test_sum_of_squares_errors():
    with pytest.raises(ValueError, match=r"axis must be one of \(0, 1\)"):
        lr.ops.sum_of_squares(np.ones((2, 2)), axis=2)
    with pytest.raises(ValueError, match="x must have 2 dimensions"):
        lr.ops.sum_of_squares(np.ones(3))
    # Sums finite in float64 but past float32's 3.4e38 (three squares of 1.1e19 each: 3.6e38):
    # raised, not returned as inf; check_finite=False returns them as they are.
    big = np.full((2, 3), 1.1e19, np.float32)
    big[1, :2] = 0
    with pytest.raises(FloatingPointError, match="sum_of_squares: 1 entries of the result overflowed"):
        lr.ops.sum_of_squares(big)
    assert np.isinf(lr.ops.sum_of_squares(big, check_finite=False)[0])


def test_every_map_is_listed_alike_on_both_modules_and_unknown_ones_are_refused():
    cpu = _backend.cpu_module()
    assert {"soft_threshold": 1, "square": 0}.items() <= cpu.MAPS.items()
    assert {f"kernel_{name}" for name in lr.ops.KERNELS} <= set(cpu.MAPS)
    if _backend.CUDA_BUILT:
        assert _backend._cuda_module.MAPS == cpu.MAPS
    x = np.ones(3)
    with pytest.raises(ValueError, match="op: unknown map 'cube'"):
        cpu.map("cube", x, x, [], np.zeros(1, dtype=np.int64))
    with pytest.raises(ValueError, match="params: map soft_threshold takes 1 parameters, got 0"):
        cpu.map("soft_threshold", x, x, [], np.zeros(1, dtype=np.int64))
    # 16-bit results come from float32 only (float64 would round twice through float32).
    with pytest.raises(ValueError, match="of x's dtype \\(or, for float32 x, float16 or bfloat16\\), got float16"):
        cpu.map("copy", x, np.ones(3, dtype=np.float16), [], np.zeros(1, dtype=np.int64))


def test_zero_dimensional_input_and_out_keep_their_shape(backend):
    # numpy's ascontiguousarray makes 0-d arrays 1-d; the maps promise x's shape, so () stays ().
    x = backend.put(np.array(-3.0))
    for got, expected in ((lr.ops.soft_threshold(x, 1.0), -2.0),
                          (lr.ops.elastic_binary_prox(x, 0.5, 1.0), (-3.0 + 0.5) / 2.0),
                          (lr.ops.apply_kernel(x, "relu"), 0.0),
                          (lr.ops.apply_kernel(backend.put(np.array(2.0)), "exp"), np.exp(2.0))):
        assert got.shape == ()
        np.testing.assert_allclose(backend.get(got), expected, rtol=1e-15)
    out = backend.xp.asarray(np.array(0.0))
    assert lr.ops.soft_threshold(x, 1.0, out=out) is out
    assert out.shape == () and float(backend.get(out)) == -2.0
    assert lr.ops.soft_threshold(x, 0.5, out=x) is x and float(backend.get(x)) == -2.5
