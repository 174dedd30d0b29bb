"""The core's own tanh and exp (cpp/include/lowrank_hpc/ops/elementary.hpp) in ulp.

kernel_product's "tanh" and "exponential" call arithmetic formulas, not libm, so the CPU vector
loops and the device run the same code. Their documented accuracy is checked here against a
reference rounded from extended precision, over a sweep of float32 bit patterns (every 997th, both
signs, subnormals to saturation) and of float64 arguments.
"""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc.ops import apply_kernel

# Measured maxima (exhaustive float32; 4e7 random float64): tanh 2.50 / 2.51 ulp, exp 1.05 /
# 0.95. The bounds leave half an ulp for a device that contracts a*b+c.
BOUND_ULP = {("tanh", np.float32): 3.0, ("tanh", np.float64): 3.0,
             ("exponential", np.float32): 1.6, ("exponential", np.float64): 1.6}
MEAN_ULP = {("tanh", np.float32): 0.12, ("tanh", np.float64): 0.5,
            ("exponential", np.float32): 0.1, ("exponential", np.float64): 0.2}
# Largest argument whose result is finite (exp) or not yet rounded to 1 (tanh), as bit patterns.
LAST_ARGUMENT = {("tanh", np.float32): np.float32(9.1), ("tanh", np.float64): np.float64(19.1),
                 ("exponential", np.float32): np.float32(88.72), ("exponential", np.float64): np.float64(709.78)}


def _extended_reference(kernel: str, x: np.ndarray) -> tuple[np.ndarray, float]:
    """f(x) in long double where it carries more bits than float64, and its own error in ulp."""
    function = np.tanh if kernel == "tanh" else np.exp
    if x.dtype == np.float32:
        return function(x.astype(np.float64)), 0.0
    if np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant:
        return function(x.astype(np.longdouble)), 0.0
    # Platforms whose long double is float64 (aarch64 macOS, Windows): libm's own error, <= 2 ulp.
    return function(x), 2.0


def _arguments(kernel: str, dtype: type) -> np.ndarray:
    if dtype == np.float32:
        top = np.float32(LAST_ARGUMENT[(kernel, dtype)]).view(np.uint32)
        positive = np.arange(0, int(top), 997, dtype=np.uint32).view(np.float32)
    else:
        rng = np.random.default_rng(2026)
        last = float(LAST_ARGUMENT[(kernel, dtype)])
        positive = np.concatenate([rng.uniform(0, last, 300_000), 2.0 ** rng.uniform(-1074, np.log2(last), 300_000),
                                   np.array([0.0, 5e-324, 1e-300, 0.5 * np.log(2), 1.0])])
    negative = -positive
    if kernel == "exponential":
        # exp's lower end: down to where it rounds to 0 (float32 -104, float64 -745).
        negative = negative * (104.0 / 88.72 if dtype == np.float32 else 745.0 / 709.78)
    return np.concatenate([positive, negative]).astype(dtype)


def _ulp_error(got: np.ndarray, reference: np.ndarray, dtype: type) -> np.ndarray:
    rounded = reference.astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    ulp = np.maximum(np.spacing(np.abs(rounded)), tiny).astype(reference.dtype)
    return np.abs(got.astype(reference.dtype) - reference) / ulp


@pytest.mark.parametrize("kernel", ["tanh", "exponential"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_kernel_function_within_its_documented_ulp(backend, kernel, dtype):
    x = _arguments(kernel, dtype)
    got = backend.get(apply_kernel(backend.put(x), kernel))
    reference, reference_error = _extended_reference(kernel, x)
    error = _ulp_error(got, reference, dtype)
    worst = int(np.argmax(error))
    assert error[worst] <= BOUND_ULP[(kernel, dtype)] + reference_error, (
        f"{kernel}({x[worst]!r}) = {got[worst]!r}, reference {reference[worst]!r}: {error[worst]:.2f} ulp")
    # The mean moves first when a coefficient or a degree is lost (measured: tanh 0.080 / 0.386,
    # exp 0.064 / 0.141 ulp).
    assert np.mean(error) <= MEAN_ULP[(kernel, dtype)] + reference_error


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_tanh_is_odd_and_keeps_signed_zero(backend, dtype):
    x = _arguments("tanh", dtype)[: 1 << 16]
    positive = backend.get(apply_kernel(backend.put(np.abs(x)), "tanh"))
    negative = backend.get(apply_kernel(backend.put(-np.abs(x)), "tanh"))
    np.testing.assert_array_equal(negative, -positive)
    zeros = backend.get(apply_kernel(backend.put(np.array([0.0, -0.0], dtype=dtype)), "tanh"))
    assert np.array_equal(np.signbit(zeros), [False, True]) and not zeros.any()
    # Saturated: exactly +-1 beyond the last argument that rounds below 1, up to the largest finite.
    big = np.array([30.0, np.finfo(dtype).max], dtype=dtype)
    np.testing.assert_array_equal(backend.get(apply_kernel(backend.put(np.concatenate([big, -big])), "tanh")),
                                  np.array([1, 1, -1, -1], dtype=dtype))
