"""Audit of the public kernels in lowrank_hpc.ops: argument errors that must name the argument
(each paired with the valid call's numbers against an independent reference)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lowrank_hpc import ops
from lowrank_hpc.ops import SparsePattern


def _pattern():
    rng = np.random.default_rng(0)
    rows = np.array([4, 0, 2, 0, 4, 1, 3, 0])  # out of row order, a repeated position (0, 1)
    cols = np.array([1, 1, 0, 1, 2, 2, 0, 3])
    vals = rng.standard_normal(rows.shape[0])
    return rows, cols, vals, SparsePattern(rows, cols, (5, 4))


@pytest.mark.parametrize("transpose", [None, 2, "yes"])
def test_pattern_times_dense_transpose_must_be_a_flag(transpose):
    rows, cols, vals, pattern = _pattern()
    B = np.random.default_rng(1).standard_normal((5, 3))
    S = sp.coo_matrix((vals, (rows, cols)), shape=(5, 4)).tocsr()  # duplicates summed
    np.testing.assert_allclose(pattern.times_dense(vals, B, transpose=True), S.T @ B, rtol=1e-13, atol=1e-13)
    # was: ValueError "this pattern was prepared for the other orientation", naming nothing given
    with pytest.raises(TypeError, match="SparsePattern.times_dense: transpose must be True or False"):
        pattern.times_dense(vals, B, transpose=transpose)


def test_pattern_check_finite_must_be_a_flag():
    rows, cols, vals, pattern = _pattern()
    rng = np.random.default_rng(2)
    U, V = rng.standard_normal((5, 3)), rng.standard_normal((4, 3))
    np.testing.assert_allclose(pattern.sampled_product(U, V), np.einsum("kr,kr->k", U[rows], V[cols]), rtol=1e-13)
    # was: "no" taken as True (any truthy value), unlike ops.sampled_product and sparse_times_dense
    with pytest.raises(TypeError, match="SparsePattern.sampled_product: check_finite must be True or False"):
        pattern.sampled_product(U, V, check_finite="no")
    with pytest.raises(TypeError, match="SparsePattern.times_dense: check_finite must be True or False"):
        pattern.times_dense(vals, V, check_finite="no")


@pytest.mark.parametrize("transpose", [False, True])
def test_pattern_in_csr_order_checks_the_length(transpose):
    rows, cols, vals, pattern = _pattern()
    order = np.argsort(cols if transpose else rows, kind="stable")  # CSR order, ties in input order
    np.testing.assert_array_equal(pattern.in_csr_order(vals, transpose), vals[order])
    # was: a silently shortened (or, for entries already in order, returned as is) array that
    # solver_product then read nnz values from
    for wrong in (vals[:-1], np.concatenate([vals, vals[:1]]), vals[None]):
        with pytest.raises(ValueError, match=r"SparsePattern.in_csr_order: vals has shape .*expected \(8,\)"):
            pattern.in_csr_order(wrong, transpose)
    with pytest.raises(TypeError, match="SparsePattern.in_csr_order: vals must be an array of this pattern's backend, got list"):
        pattern.in_csr_order(list(vals), transpose)  # was AttributeError: 'list' object has no attribute 'shape'


def test_in_csr_order_of_sorted_entries_checks_the_length():
    rows, cols = np.array([0, 0, 1, 3]), np.array([1, 2, 0, 1])  # row order: no permutation kept
    pattern = SparsePattern(rows, cols, (4, 3))
    vals = np.array([1.0, -2.0, 3.0, 0.5])
    B = np.arange(6.0).reshape(3, 2)
    from lowrank_hpc._arrays import resolve

    call = resolve("test", vals=vals, B=B)
    got = pattern.solver_product(call, pattern.in_csr_order(vals), B, in_order=True)
    want = sp.coo_matrix((vals, (rows, cols)), shape=(4, 3)).tocsr() @ B
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="in_csr_order: vals has shape"):
        pattern.in_csr_order(vals[:2])


@pytest.mark.parametrize("dtype", ["foo", 5, object()])
def test_apply_kernel_unknown_dtype_names_the_argument(dtype):
    K = np.array([[-1.5, 0.25], [3.0, -0.0]], dtype=np.float32)
    np.testing.assert_array_equal(ops.apply_kernel(K, "tanh", dtype=np.float16), np.tanh(K).astype(np.float16))
    np.testing.assert_array_equal(ops.apply_kernel(K, "relu", dtype=np.float32), np.maximum(K, 0))
    # was: numpy's "data type 'foo' not understood", naming neither the function nor the argument
    with pytest.raises(TypeError, match="apply_kernel: dtype must be"):
        ops.apply_kernel(K, "relu", dtype=dtype)


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_apply_kernel_keeps_a_16_bit_k_in_its_format(half):
    """A 16-bit K is read in float32 and f(K) rounded once back to K's format, as kernel_product
    treats 16-bit factors (float16 K came back float64, bfloat16 K was refused)."""
    dtype = np.dtype(np.float16) if half == "float16" else np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    unit = 2.0 ** -10 if half == "float16" else 2.0 ** -7  # one ulp at 1
    K = (np.random.default_rng(3).standard_normal((37, 23)) * 2).astype(dtype)
    exact = K.astype(np.float64)
    for kernel, f in (("tanh", np.tanh), ("relu", lambda x: np.maximum(x, 0)), ("exponential", np.exp),
                      ("piecewise_linear", lambda x: np.clip(x, -1, 1))):
        got = ops.apply_kernel(K, kernel)
        assert got.dtype == dtype and got.shape == K.shape
        np.testing.assert_allclose(got.astype(np.float64), f(exact), rtol=unit, atol=0)
    with pytest.raises(TypeError, match=f"apply_kernel: dtype must be None or K's own for {half} K"):
        ops.apply_kernel(K, "tanh", np.float32)
