"""The input boundary (lowrank_hpc._arrays, estimators._convert): index dtypes to uint64 and the
values no int64 holds, and pandas' nullable dtypes (Float64/Float32 with pd.NA, Int64/UInt64)."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from lowrank_hpc import ops
from lowrank_hpc._arrays import for_backend
from lowrank_hpc.estimators import NMF, MatrixCompletion
from lowrank_hpc.sensing import EntrySampling

pd = pytest.importorskip("pandas")

INTEGER_DTYPES = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
BEYOND = 2**63 + 5  # a uint64 value no int64 holds


@pytest.fixture
def factors():
    rng = np.random.default_rng(7)
    m, n, r = 9, 7, 3
    U, V = rng.standard_normal((m, r)), rng.standard_normal((n, r))
    rows, cols = rng.integers(0, m, 40), rng.integers(0, n, 40)
    return U, V, rows, cols


def _matrix_with_missing(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((12, 3)) @ rng.standard_normal((3, 10)) + 2.0
    X[rng.random(X.shape) < 0.3] = np.nan
    return X


# ---------------------------------------------------------------------- integer index dtypes
@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_every_integer_dtype_gives_the_int64_result(factors, dtype):
    U, V, rows, cols = factors
    expected = ops.sampled_product(U, V, rows, cols)
    assert np.array_equal(expected, np.einsum("kr,kr->k", U[rows], V[cols]))
    got = ops.sampled_product(U, V, rows.astype(dtype), cols.astype(dtype))
    np.testing.assert_array_equal(got, expected)
    # strided (every other entry of a longer array) too
    wide_r, wide_c = np.repeat(rows, 2).astype(dtype), np.repeat(cols, 2).astype(dtype)
    np.testing.assert_array_equal(ops.sampled_product(U, V, wide_r[::2], wide_c[::2]), expected)


@pytest.mark.parametrize("dtype", INTEGER_DTYPES)
def test_every_integer_dtype_out_of_range_is_an_index_error(factors, dtype):
    U, V, rows, cols = factors
    bad = rows.astype(dtype)
    bad[4] = 9  # m = 9: one past the end, representable in every dtype
    with pytest.raises(IndexError, match=r"sampled_product: rows\[4\] = 9 is out of range \[0, 9\)"):
        ops.sampled_product(U, V, bad, cols.astype(dtype))


def test_uint64_beyond_int64_is_the_index_error_of_an_index_out_of_range(factors):
    U, V, rows, cols = factors
    big = rows.astype(np.uint64)
    big[3] = BEYOND
    with pytest.raises(IndexError, match=rf"sampled_product: rows\[3\] = {BEYOND} is out of range \[0, "):
        ops.sampled_product(U, V, big, cols)
    big_cols = cols.astype(np.uint64)
    big_cols[0] = np.uint64(2**64 - 1)
    with pytest.raises(IndexError, match=rf"cols\[0\] = {2**64 - 1} is out of range"):
        ops.sampled_product(U, V, rows.astype(np.uint64), big_cols)
    with pytest.raises(IndexError, match=rf"EntrySampling: rows\[0\] = {BEYOND} is out of range"):
        EntrySampling(np.array([BEYOND, 1], dtype=np.uint64), np.array([0, 1]), (4, 4))
    # in range values of uint64 just above what int32 holds are still out of range of a 9 x 7 matrix
    with pytest.raises(IndexError, match=r"rows\[0\] = 4294967296 is out of range \[0, 9\)"):
        ops.sampled_product(U, V, np.array([2**32], dtype=np.uint64), np.array([0], dtype=np.uint64))


def test_uint64_beyond_int64_names_the_shape_where_the_boundary_knows_it():
    rows = np.array([0, 1, BEYOND], dtype=np.uint64)
    with pytest.raises(IndexError, match=rf"MatrixCompletion.fit: rows\[2\] = {BEYOND} is out of range \[0, 4\)"):
        MatrixCompletion(rank=1).fit(rows, np.array([0, 1, 2]), np.ones(3), shape=(4, 3))
    with pytest.raises(IndexError, match=rf"cols\[1\] = {BEYOND} is out of range \[0, 3\)"):
        MatrixCompletion(rank=1).fit(np.array([0, 1]), np.array([0, BEYOND], dtype=np.uint64), np.ones(2),
                                     shape=(4, 3))
    assert for_backend("f", "cpu").index_array("rows", np.arange(3, dtype=np.uint64)).dtype == np.int64
    with pytest.raises(IndexError, match=rf"f: offsets\[1\] = {BEYOND} is out of range \[0, 10\)"):
        for_backend("f", "cpu").index_array("offsets", np.array([0, BEYOND], dtype=np.uint64), bound=10)


def test_uint64_that_fits_is_converted_once():
    x = np.arange(1 << 20, dtype=np.uint64)[::-1].copy()
    call = for_backend("f", "cpu")
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = call.index_array("rows", x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.dtype == np.int64 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, x.astype(np.int64))
    assert peak < 1.25 * x.nbytes, f"{peak} bytes allocated for one {x.nbytes}-byte conversion"
    kept = np.arange(10, dtype=np.int64)
    assert call.index_array("rows", kept) is kept  # int64 and int32 are not copied at all


# ---------------------------------------------------------------------- pandas nullable dtypes
@pytest.mark.parametrize("nullable, numpy_dtype", [("Float64", np.float64), ("Float32", np.float32)])
def test_matrix_completion_on_a_nullable_float_frame_is_the_nan_frame_fit(nullable, numpy_dtype):
    X = _matrix_with_missing().astype(numpy_dtype)
    plain = pd.DataFrame(X)
    frame = plain.astype(nullable)
    assert frame.isna().to_numpy().sum() == np.isnan(X).sum() > 0
    assert frame.iloc[:, 0].hasnans and frame.iloc[:, 0].dtype == nullable
    expected = MatrixCompletion(rank=3, random_state=0).fit(plain)
    got = MatrixCompletion(rank=3, random_state=0).fit(frame)
    assert got.U_.dtype == expected.U_.dtype == numpy_dtype
    np.testing.assert_array_equal(got.U_, expected.U_)
    np.testing.assert_array_equal(got.V_, expected.V_)
    assert got.train_rmse_ == expected.train_rmse_
    np.testing.assert_array_equal(got.predict(np.array([0, 5]), np.array([1, 9])),
                                  expected.predict(np.array([0, 5]), np.array([1, 9])))


def test_matrix_completion_on_a_frame_mixing_nullable_and_numpy_columns():
    X = _matrix_with_missing(5)
    plain = pd.DataFrame(X, columns=[f"c{j}" for j in range(X.shape[1])])
    plain["c7"] = np.where(np.isnan(X[:, 7]), np.nan, np.round(X[:, 7] * 10))
    plain["c3"] = plain["c3"].astype(np.float32).astype(np.float64)  # what Float32 holds
    mixed = plain.astype({"c0": "Float64", "c3": "Float32", "c7": "Int64"})  # Int64 with pd.NA beside them
    assert mixed["c7"].isna().any() and (mixed.dtypes == np.float64).any()
    expected = MatrixCompletion(rank=2, random_state=1).fit(plain)
    got = MatrixCompletion(rank=2, random_state=1).fit(mixed)
    np.testing.assert_array_equal(got.U_, expected.U_)
    np.testing.assert_array_equal(got.V_, expected.V_)
    assert list(got.feature_names_in_) == list(plain.columns)


def test_nullable_integer_indices_and_float_values():
    X = _matrix_with_missing()
    rows, cols = np.nonzero(~np.isnan(X))
    vals = X[rows, cols]
    expected = MatrixCompletion(rank=3, random_state=0).fit(rows, cols, vals, shape=X.shape)
    for index_dtype in ("Int64", "Int32", "UInt64", "UInt8"):
        got = MatrixCompletion(rank=3, random_state=0).fit(pd.Series(rows, dtype=index_dtype),
                                                           pd.Series(cols, dtype=index_dtype),
                                                           pd.Series(vals, dtype="Float64"), shape=X.shape)
        np.testing.assert_array_equal(got.U_, expected.U_)
        np.testing.assert_array_equal(got.V_, expected.V_)
        query = pd.Series([0, 11], dtype=index_dtype), pd.Series([3, 9], dtype=index_dtype)
        np.testing.assert_array_equal(got.predict(*query), expected.predict(np.array([0, 11]), np.array([3, 9])))


def test_missing_index_is_a_value_error_naming_the_argument(factors):
    U, V, rows, cols = factors
    with_na = pd.Series(rows, dtype="Int64")
    with_na[5] = pd.NA
    with pytest.raises(ValueError, match=r"sampled_product: rows holds 1 missing value\(s\) \(pd.NA\), the first at "
                                         r"position 5"):
        ops.sampled_product(U, V, with_na, cols)
    with pytest.raises(ValueError, match=r"sampled_product: cols holds 1 missing"):
        ops.sampled_product(U, V, rows, with_na.rename("cols"))
    with pytest.raises(ValueError, match=r"EntrySampling: rows holds 1 missing"):
        EntrySampling(with_na, cols, (9, 7))
    with pytest.raises(ValueError, match=r"MatrixCompletion.fit: X holds 1 missing value"):
        MatrixCompletion(rank=1).fit(with_na, cols, np.ones(40), shape=(9, 7))
    with pytest.raises(ValueError, match=r"MatrixCompletion.fit: cols holds 1 missing value"):
        MatrixCompletion(rank=1).fit(rows, with_na, np.ones(40), shape=(9, 9))
    # without pd.NA, the same Int64 series is the int64 array
    np.testing.assert_array_equal(ops.sampled_product(U, V, pd.Series(rows, dtype="Int64"), cols),
                                  ops.sampled_product(U, V, rows, cols))


def test_missing_values_where_nan_is_refused_are_reported_as_nan(factors):
    U, V, rows, cols = factors
    vals = pd.Series(np.arange(40, dtype=float), dtype="Float64")
    vals[2] = pd.NA
    with pytest.raises(ValueError, match=r"vals contains 1 NaN/inf value"):
        ops.sparse_times_dense(rows, cols, vals, V[:, :2], 9)
    with pytest.raises(ValueError, match=r"vals contains 1 NaN/inf value"):
        MatrixCompletion(rank=1).fit(rows, cols, vals, shape=(9, 7))
    vals[2] = 2.0
    np.testing.assert_array_equal(ops.sparse_times_dense(rows, cols, vals, V[:, :2], 9),
                                  ops.sparse_times_dense(rows, cols, np.arange(40.0), V[:, :2], 9))


def test_nmf_on_a_nullable_float_frame_is_the_nan_frame_fit():
    rng = np.random.default_rng(11)
    X = rng.random((10, 6))
    X[rng.random(X.shape) < 0.2] = np.nan
    plain = pd.DataFrame(X)
    expected = NMF(n_components=2, random_state=0, max_iter=300).fit(plain)
    got = NMF(n_components=2, random_state=0, max_iter=300).fit(plain.astype("Float64"))
    np.testing.assert_array_equal(got.components_, expected.components_)
    np.testing.assert_array_equal(got.transform(plain.fillna(0.5).astype("Float64")),
                                  expected.transform(plain.fillna(0.5)))


def test_distributed_als_takes_a_nullable_frame():
    distributed = pytest.importorskip("lowrank_hpc.distributed")
    X = _matrix_with_missing()
    rows, cols = np.nonzero(~np.isnan(X))
    plain = pd.DataFrame({"row": rows, "col": cols, "value": X[rows, cols]})
    nullable = plain.astype({"row": "Int64", "col": "UInt32", "value": "Float64"})
    fit = lambda frame: distributed.DistributedALS(rank=2, max_iter=3, seed=0).fit(frame, shape=X.shape)
    expected, got = fit(plain), fit(nullable)
    np.testing.assert_array_equal(got.U_, expected.U_)
    np.testing.assert_array_equal(got.V_, expected.V_)
    missing = nullable.copy()
    missing.loc[4, "row"] = pd.NA
    with pytest.raises(ValueError, match=r"DistributedALS: column 'row' holds 1 missing value\(s\) \(pd.NA\), the "
                                         r"first at position 4"):
        fit(missing)
    huge = plain.astype({"row": "UInt64"})
    huge.loc[0, "row"] = BEYOND
    with pytest.raises(IndexError, match=rf"{BEYOND} is out of range"):
        fit(huge)


def test_pandas_is_not_imported_by_the_boundary():
    code = ("import sys, numpy as np\n"
            "from lowrank_hpc.estimators import MatrixCompletion\n"
            "from lowrank_hpc import ops\n"
            "X = np.arange(12.0).reshape(4, 3); X[0, 0] = np.nan\n"
            "MatrixCompletion(rank=1).fit(X)\n"
            "ops.sampled_product(np.ones((3, 1)), np.ones((3, 1)), np.array([0], np.uint64), np.array([2], np.uint8))\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)
