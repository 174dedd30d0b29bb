"""lowrank_hpc.optim.adafactor_step against a plain numpy transcription of Adafactor's formulas
(Shazeer & Stern 2018, Algorithms 4 and 5, with torch's eps placement and Hugging Face's
momentum), on both backends; 16-bit parameters against a float32 reference rounded once per
step; and the errors users meet."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lowrank_hpc import optim

from conftest import RTOL


# ---------------------------------------------------------------------- the reference
def paper_step(x, g, state, t, *, lr=1e-2, beta2_decay=-0.8, eps1=1e-30, eps2=1e-3, d=1.0, weight_decay=0.0,
               maximize=False, relative_step=True, scale_parameter=True, warmup_init=False, beta1=None):
    """One step in float64, formula by formula. state: {"R", "C"} (factored) or {"v"}, and "m"."""
    x = x.astype(np.float64)
    g = -g.astype(np.float64) if maximize else g.astype(np.float64)
    beta2 = 1.0 - t ** beta2_decay                                   # beta2_t = 1 - t^-0.8
    if relative_step:
        rho = min(1e-6 * t if warmup_init else lr, 1.0 / np.sqrt(t))  # rho_t = min(lr, 1/sqrt(t))
    else:
        rho = lr
    rms_x = np.sqrt(np.mean(x ** 2))
    alpha = max(eps2, rms_x) * rho if scale_parameter else rho        # alpha_t = max(eps2, RMS(X)) rho_t
    if x.ndim >= 2:
        state["R"] = beta2 * state["R"] + (1 - beta2) * np.mean(g ** 2, axis=-1)   # R_t
        state["C"] = beta2 * state["C"] + (1 - beta2) * np.mean(g ** 2, axis=-2)   # C_t
        mean_r = np.maximum(np.mean(state["R"], axis=-1), eps1)[..., None, None]
        v = state["R"][..., :, None] * state["C"][..., None, :] / mean_r            # V_t = R C^T / mean(R)
    else:
        state["v"] = beta2 * state["v"] + (1 - beta2) * g ** 2
        v = state["v"]
    u = g / np.sqrt(np.maximum(v, eps1 ** 2))                         # U_t = G / sqrt(V_t)
    u = u / max(1.0, np.sqrt(np.mean(u ** 2)) / d)                    # clipping: U / max(1, RMS(U) / d)
    x = x * (1 - lr * weight_decay)
    if beta1:
        state["m"] = beta1 * state["m"] + (1 - beta1) * alpha * u     # first moment of the scaled update
        return x - state["m"]
    return x - alpha * u                                              # X_t = X_{t-1} - alpha_t U_t


def fresh_state(shape, with_momentum=False):
    state = {"R": np.zeros(shape[:-1]), "C": np.zeros(shape[:-2] + shape[-1:])} if len(shape) >= 2 else \
        {"v": np.zeros(shape)}
    if with_momentum:
        state["m"] = np.zeros(shape)
    return state


class Arrays:
    """The state of one parameter as adafactor_step takes it, on one backend."""

    def __init__(self, backend, x, state_dtype, with_momentum=False, keepdim=False):
        xp, shape = backend.xp, x.shape
        self.param = backend.put(x.copy())
        if len(shape) >= 2:
            self.row_var = xp.zeros(shape[:-1] + ((1,) if keepdim else ()), dtype=state_dtype)
            self.col_var = xp.zeros(shape[:-2] + ((1,) if keepdim else ()) + shape[-1:], dtype=state_dtype)
        else:
            self.row_var, self.col_var = None, xp.zeros(shape, dtype=state_dtype)
        self.exp_avg = xp.zeros(shape, dtype=state_dtype) if with_momentum else None


OPTION_SETS = {
    "torch_defaults": {},
    "weight_decay_maximize_beta2": dict(weight_decay=0.3, maximize=True, beta2_decay=-0.5, lr=0.05),
    "fixed_step_no_scaling": dict(relative_step=False, scale_parameter=False, lr=3e-3),
    "fixed_step_scaled": dict(relative_step=False, lr=0.02),
    "warmup_init": dict(warmup_init=True),
    "clip_threshold": dict(d=1.5, eps=(1e-12, 1e-2)),
    "momentum": dict(beta1=0.9, lr=0.05),
    "momentum_no_clipping": dict(beta1=0.5, d=np.inf, relative_step=False, lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("shape", [(7,), (9, 6), (3, 5, 4), (2, 2, 33, 17), (70, 600)])
@pytest.mark.parametrize("options", list(OPTION_SETS), ids=list(OPTION_SETS))
def test_steps_match_the_paper_formulas(backend, dtype, rng, shape, options):
    kwargs = dict(OPTION_SETS[options])
    eps1, eps2 = kwargs.pop("eps", (1e-30, 1e-3))
    momentum = kwargs.get("beta1") is not None
    x = rng.standard_normal(shape).astype(dtype)
    arrays = Arrays(backend, x, dtype, momentum)
    state = fresh_state(shape, momentum)
    expected = x.astype(np.float64)
    for t in range(1, 16):
        g = (rng.standard_normal(shape) * rng.uniform(0.1, 3)).astype(dtype)
        optim.adafactor_step(arrays.param, backend.put(g), arrays.row_var, arrays.col_var, t, eps=(eps1, eps2),
                             exp_avg=arrays.exp_avg, **kwargs)
        expected = paper_step(expected, g, state, t, eps1=eps1, eps2=eps2, **kwargs)
    rtol = 20 * RTOL[dtype]  # 15 steps, each rounding in the parameter's precision
    np.testing.assert_allclose(backend.get(arrays.param), expected, rtol=rtol, atol=rtol * np.abs(expected).max())
    if len(shape) >= 2:
        np.testing.assert_allclose(backend.get(arrays.row_var), state["R"], rtol=rtol)
        np.testing.assert_allclose(backend.get(arrays.col_var), state["C"], rtol=rtol)
    else:
        np.testing.assert_allclose(backend.get(arrays.col_var), state["v"], rtol=rtol)
    if momentum:
        np.testing.assert_allclose(backend.get(arrays.exp_avg), state["m"], rtol=rtol,
                                   atol=rtol * np.abs(state["m"]).max())
    assert not np.allclose(backend.get(arrays.param), x)  # the steps moved the parameter


def test_a_batch_in_one_launch_equals_one_call_per_parameter(backend, rng):
    shape = (4, 40, 30)
    xs = [rng.standard_normal(shape).astype(np.float32) * s for s in (0.1, 1.0, 10.0)]
    together = [Arrays(backend, x, np.float32, True) for x in xs]
    alone = [Arrays(backend, x, np.float32, True) for x in xs]
    for t in range(1, 6):
        gs = [backend.put(rng.standard_normal(shape).astype(np.float32)) for _ in xs]
        optim.adafactor_step([a.param for a in together], gs, [a.row_var for a in together],
                             [a.col_var for a in together], [t, t + 3, t], beta1=0.8,
                             exp_avg=[a.exp_avg for a in together])
        for a, g, step in zip(alone, gs, [t, t + 3, t]):
            optim.adafactor_step(a.param, g, a.row_var, a.col_var, step, beta1=0.8, exp_avg=a.exp_avg)
    for a, b in zip(together, alone):  # RMS(X), RMS(U) and the step count are each parameter's own
        for name in ("param", "row_var", "col_var", "exp_avg"):
            np.testing.assert_array_equal(backend.get(getattr(a, name)), backend.get(getattr(b, name)))


def test_torch_shaped_state_and_any_gradient_layout(rng):
    x = rng.standard_normal((3, 20, 12))
    flat, keepdim = numpy_arrays(x, keepdim=False), numpy_arrays(x, keepdim=True)
    g = rng.standard_normal((3, 12, 20)).transpose(0, 2, 1)  # Fortran-like: copied once at entry
    optim.adafactor_step(flat.param, np.ascontiguousarray(g), flat.row_var, flat.col_var, 1)
    optim.adafactor_step(keepdim.param, g, keepdim.row_var, keepdim.col_var, 1)
    np.testing.assert_array_equal(flat.param, keepdim.param)
    np.testing.assert_array_equal(flat.row_var, keepdim.row_var[..., 0])


def numpy_arrays(x, keepdim=False):
    class _Numpy:
        xp = np

        @staticmethod
        def put(a):
            return a
    return Arrays(_Numpy, x, x.dtype, keepdim=keepdim)


# ---------------------------------------------------------------------- 16-bit parameters
def _skip_bfloat16_on_cupy(backend, half):
    if backend.name == "cuda" and half.name == "bfloat16":
        pytest.skip("CuPy has no bfloat16 dtype: on the GPU bfloat16 goes through optim.Adafactor (torch tensors)")


def _half_dtypes():
    out = [np.dtype(np.float16)]
    try:
        import ml_dtypes
        out.append(np.dtype(ml_dtypes.bfloat16))
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("half", _half_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(300,), (24, 40), (2, 17, 65)])
def test_16_bit_parameters_follow_a_float32_reference_rounded_each_step(backend, rng, half, shape):
    _skip_bfloat16_on_cupy(backend, half)
    x = rng.standard_normal(shape).astype(half)
    arrays = Arrays(backend, x, np.float32, True)
    state = fresh_state(shape, True)
    expected = x
    for t in range(1, 11):
        g = rng.standard_normal(shape).astype(half)
        optim.adafactor_step(arrays.param, backend.put(g), arrays.row_var, arrays.col_var, t, beta1=0.9,
                             exp_avg=arrays.exp_avg, lr=0.05, weight_decay=0.1)
        eps1 = float(np.finfo(np.float32).eps)  # eps1 = None: the float32 state's epsilon
        expected = paper_step(expected, g, state, t, beta1=0.9, lr=0.05, weight_decay=0.1, eps1=eps1).astype(half)
    got = backend.get(arrays.param)
    assert got.dtype == half
    ulp = float(np.finfo(half).eps)
    # Rounded once per step like the reference: at most an ulp apart where a tie broke otherwise.
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    assert np.all(diff <= 2 * ulp * np.maximum(np.abs(expected.astype(np.float64)), 1e-3))
    assert np.mean(diff == 0) > 0.95
    np.testing.assert_allclose(backend.get(arrays.exp_avg), state["m"], rtol=1e-2, atol=1e-2 * np.abs(state["m"]).max())


@pytest.mark.parametrize("half", _half_dtypes(), ids=lambda d: d.name)
def test_16_bit_rounding_is_to_nearest_even_for_every_value(backend, half):
    _skip_bfloat16_on_cupy(backend, half)
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = bits.view(half)
    x = x[np.isfinite(x.astype(np.float32))]
    arrays = Arrays(backend, x, np.float32)
    # A zero gradient leaves only the decay: X = round(float32(X) * (1 - lr wd)), once.
    optim.adafactor_step(arrays.param, backend.put(np.zeros_like(x)), None, arrays.col_var, 1, lr=0.1,
                         weight_decay=0.3)
    expected = (x.astype(np.float32) * np.float32(1 - 0.1 * 0.3)).astype(half)
    np.testing.assert_array_equal(backend.get(arrays.param).view(np.uint16), expected.view(np.uint16))


# ---------------------------------------------------------------------- errors
class NotAnArray:
    """Array-like (numpy converts it) but not an array that can be written in place."""

    def __init__(self, x):
        self.x = x

    def __array__(self, dtype=None, copy=None):
        return self.x


def test_errors_name_the_argument(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    a = numpy_arrays(x)
    g = np.ones_like(x)
    step = optim.adafactor_step
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        step(a.param, g, a.row_var, a.col_var, 1, lr=0.0)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        step(a.param, g, a.row_var, a.col_var, 1, lr=-1e-3, relative_step=False)
    with pytest.raises(TypeError, match="grad is float64 but param is float32"):
        step(a.param, g.astype(np.float64), a.row_var, a.col_var, 1)
    with pytest.raises(ValueError, match=r"grad has shape \(5, 6\), param has \(6, 5\)"):
        step(a.param, g.T.copy(), a.row_var, a.col_var, 1)
    with pytest.raises(ValueError, match=r"row_var has shape \(5,\), expected \(6,\) or \(6, 1\)"):
        step(a.param, g, np.zeros(5, np.float32), a.col_var, 1)
    with pytest.raises(TypeError, match="col_var must be float32, got float64"):
        step(a.param, g, a.row_var, np.zeros(5), 1)
    with pytest.raises(TypeError, match="sparse"):
        import scipy.sparse
        step(a.param, scipy.sparse.csr_matrix(g), a.row_var, a.col_var, 1)
    with pytest.raises(ValueError, match="param must be C-contiguous"):
        step(np.asfortranarray(a.param), g, a.row_var, a.col_var, 1)
    with pytest.raises(TypeError, match="param is written in place and must be a numpy.ndarray"):
        step(NotAnArray(x), g, a.row_var, a.col_var, 1)
    with pytest.raises(ValueError, match="beta1=0.9 needs exp_avg"):
        step(a.param, g, a.row_var, a.col_var, 1, beta1=0.9)
    with pytest.raises(ValueError, match="step must be >= 1"):
        step(a.param, g, a.row_var, a.col_var, 0)
    with pytest.raises(ValueError, match=r"d must be >= 1"):
        step(a.param, g, a.row_var, a.col_var, 1, d=0.5)
    with pytest.raises(ValueError, match="row_var must be None for a vector"):
        step(np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), np.zeros(3, np.float32), 1)
    read_only = a.param.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        step(read_only, g, a.row_var, a.col_var, 1)
    with pytest.raises(TypeError, match="parameters must be float32, float64, bfloat16"):
        step(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int32), a.row_var, a.col_var, 1)
    np.testing.assert_array_equal(a.param, x)  # nothing was stepped


def test_nonfinite_gradients_are_reported_and_leave_those_parameters_untouched(backend, rng):
    xs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(3)]
    arrays = [Arrays(backend, x, np.float32) for x in xs]
    gs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in xs]
    gs[1][2, 3] = np.inf
    with pytest.raises(optim.NonFiniteError, match=r"NaN/inf in the gradient of param\[1\]") as error:
        optim.adafactor_step([a.param for a in arrays], [backend.put(g) for g in gs], [a.row_var for a in arrays],
                             [a.col_var for a in arrays], 1)
    assert error.value.indices == [1] and error.value.kinds == ["grad"]
    np.testing.assert_array_equal(backend.get(arrays[1].param), xs[1])
    assert not backend.get(arrays[1].row_var).any() and not backend.get(arrays[1].col_var).any()
    assert not np.array_equal(backend.get(arrays[0].param), xs[0])  # the finite ones were stepped


def test_the_core_imports_no_torch():
    code = "import lowrank_hpc, lowrank_hpc.optim, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
