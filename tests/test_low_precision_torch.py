"""float16/bfloat16 tensors through lowrank_hpc.torch: values and gradients against the exact
result of the same (16-bit) inputs within one rounding of the format, the output dtype, and
CPU tensors reaching the kernels without copies. Skipped without torch (optional extra)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")
pytest.importorskip("ml_dtypes", reason="CPU bfloat16 tensors travel as ml_dtypes arrays (torch extra)")

import lowrank_hpc.torch as lt  # noqa: E402
from lowrank_hpc.torch import _ops  # noqa: E402

import reference  # noqa: E402
from test_low_precision import assert_one_rounding  # noqa: E402

HALVES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """The tensor's values as a numpy array of its 16-bit format (a view, through _ops)."""
    return _ops._array(x).copy()


def problem(dtype, m=20, n=15, r=32, nnz=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    U = torch.randn(m, r, generator=generator).to(dtype)
    V = torch.randn(n, r, generator=generator).to(dtype)
    rows = torch.randint(0, m, (nnz,), generator=generator)
    cols = torch.randint(0, n, (nnz,), generator=generator)
    seed_grad = torch.randn(nnz, generator=generator).to(dtype)
    return U, V, rows, cols, seed_grad


def abs64(x: torch.Tensor) -> np.ndarray:
    return np.abs(as_numpy(x).astype(np.float64))


@pytest.mark.parametrize("name", HALVES)
def test_sampled_product_values_and_gradients(name):
    dtype = HALVES[name]
    U, V, rows, cols, g = problem(dtype)
    half = as_numpy(U).dtype
    r_, c_ = rows.numpy(), cols.numpy()
    U_, V_ = U.clone().requires_grad_(True), V.clone().requires_grad_(True)
    out = lt.sampled_product(U_, V_, rows, cols)
    assert out.dtype == dtype
    assert_one_rounding(as_numpy(out.detach()), reference.sampled_product(as_numpy(U), as_numpy(V), r_, c_),
                        reference.sampled_product(abs64(U), abs64(V), r_, c_), 32, half)
    grad_U, grad_V = torch.autograd.grad(out, (U_, V_), g)
    assert grad_U.dtype == grad_V.dtype == dtype
    gn = as_numpy(g)
    for got, other, n_rows, transpose in ((grad_U, V, 20, False), (grad_V, U, 15, True)):
        exact = reference.sparse_times_dense(r_, c_, gn, as_numpy(other), n_rows, transpose)
        magnitude = reference.sparse_times_dense(r_, c_, np.abs(gn.astype(np.float64)), abs64(other), n_rows,
                                                 transpose)
        assert_one_rounding(as_numpy(got), exact, magnitude, 200, half)


@pytest.mark.parametrize("name", HALVES)
def test_sparse_times_dense_values_and_gradients(name):
    dtype = HALVES[name]
    U, V, rows, cols, vals = problem(dtype, seed=1)
    half = as_numpy(U).dtype
    r_, c_ = rows.numpy(), cols.numpy()
    vals_, V_ = vals.clone().requires_grad_(True), V.clone().requires_grad_(True)
    out = lt.sparse_times_dense(rows, cols, vals_, V_, 20)
    assert out.dtype == dtype and out.shape == (20, 32)
    exact = reference.sparse_times_dense(r_, c_, as_numpy(vals), as_numpy(V), 20)
    magnitude = reference.sparse_times_dense(r_, c_, abs64(vals), abs64(V), 20)
    assert_one_rounding(as_numpy(out.detach()), exact, magnitude, 200, half)
    grad_out = torch.randn(20, 32, generator=torch.Generator().manual_seed(2)).to(dtype)
    grad_vals, grad_V = torch.autograd.grad(out, (vals_, V_), grad_out)
    assert grad_vals.dtype == grad_V.dtype == dtype
    go = as_numpy(grad_out)
    assert_one_rounding(as_numpy(grad_vals), reference.sampled_product(go, as_numpy(V), r_, c_),
                        reference.sampled_product(np.abs(go.astype(np.float64)), abs64(V), r_, c_), 32, half)


@pytest.mark.parametrize("name", HALVES)
def test_dense_products_keep_the_dtype_and_differentiate(name):
    dtype = HALVES[name]
    U, V, *_ = problem(dtype, seed=3)
    U, V = U * 0.25, V * 0.25
    half = as_numpy(U).dtype
    U64, V64 = as_numpy(U).astype(np.float64), as_numpy(V).astype(np.float64)
    magnitude = np.abs(U64) @ np.abs(V64).T
    out = lt.lowrank_product(U, V)
    assert_one_rounding(as_numpy(out), U64 @ V64.T, magnitude, 32, half)
    assert torch.equal(out, U @ V.T)  # the bits of torch's own 16-bit product (the route: test_backend)
    U_ = U.clone().requires_grad_(True)
    dense = lt.kernel_product(U_, V, "tanh")
    assert_one_rounding(as_numpy(dense.detach()), np.tanh(U64 @ V64.T), magnitude, 32, half)
    (grad_U,) = torch.autograd.grad(dense.float().sum(), (U_,))
    assert grad_U.dtype == dtype and torch.isfinite(grad_U).all()
    top = lt.kernel_product(U_, V, "relu", 3)
    assert top.values.dtype == dtype
    (grad_top,) = torch.autograd.grad(top.values.float().sum(), (U_,))
    assert grad_top.dtype == dtype and torch.isfinite(grad_top).all()


@pytest.mark.parametrize("name", HALVES)
def test_cpu_tensors_are_viewed_not_copied(name):
    U = torch.randn(5, 3).to(HALVES[name])
    view = _ops._array(U)
    assert view.dtype.name == name and view.ctypes.data == U.data_ptr()
    back = _ops._tensor(view)
    assert back.dtype == HALVES[name] and back.data_ptr() == U.data_ptr()


def test_errors_name_the_dtypes():
    U, V, rows, cols, _ = problem(torch.float16)
    with pytest.raises(TypeError, match="sampled_product: V is torch.bfloat16 but U is torch.float16"):
        lt.sampled_product(U, V.bfloat16(), rows, cols)
    with pytest.raises(TypeError, match="lowrank_product: U must be a float32, float64, float16 or bfloat16 "
                                        "tensor, got torch.int8"):
        lt.lowrank_product(U.to(torch.int8), V.to(torch.int8))


@pytest.mark.parametrize("name, just_below_one", [("bfloat16", 1 - 2.0 ** -8), ("float16", 1 - 2.0 ** -11)])
def test_piecewise_linear_slope_is_read_from_x_not_its_rounding(name, just_below_one):
    """x = 0.5 + 0.5 * v just inside (-1, 1) rounds to y = 1 in the 16-bit format; the slope there
    is 1 (x is inside), so d U = V, in the dense product and in both top-k modes."""
    dtype = HALVES[name]
    V = torch.tensor([[1.0, just_below_one]]).to(dtype)
    for forward in (lambda U: lt.kernel_product(U, V, "piecewise_linear"),
                    lambda U: lt.kernel_product(U, V, "piecewise_linear", 1).values,
                    lambda U: lt.kernel_product(U, V, "piecewise_linear", 1, top_k_mode="global").values):
        U = torch.tensor([[0.5, 0.5]]).to(dtype).requires_grad_(True)
        out = forward(U)
        assert float(out.detach().reshape(-1)[0]) == 1.0  # the rounding the slope must not be read from
        (grad_U,) = torch.autograd.grad(out.float().sum(), (U,))
        assert grad_U.tolist() == V.float().tolist()
    U = torch.tensor([[0.75, 0.75]]).to(dtype).requires_grad_(True)  # x = 1.5 - ..., clamped: slope 0
    (grad_U,) = torch.autograd.grad(lt.kernel_product(U, V, "piecewise_linear").float().sum(), (U,))
    assert grad_U.tolist() == [[0.0, 0.0]]
