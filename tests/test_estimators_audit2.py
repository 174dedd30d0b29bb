"""Second audit of the estimators, the readers and the model file: each test reproduces a defect a
user hit (silent wrong answers first) and checks real numbers against an independent reference."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import lowrank_hpc as lr
from lowrank_hpc.cli import load_model, read_ratings
from lowrank_hpc.cli.model_file import CompletionModel, _lookup


def ratings_problem(seed=0, shape=(12, 9), fraction=0.6):
    """Integer ratings 1-5 (a rank-2 signal around 3) on a seeded fraction of a small matrix."""
    rng = np.random.default_rng(seed)
    M = np.clip(np.round(3 + rng.normal(size=(shape[0], 2)) @ rng.normal(size=(shape[1], 2)).T * 0.6), 1, 5)
    rows, cols = np.nonzero(rng.random(shape) < fraction)
    return rows, cols, M[rows, cols], shape


# ---------------------------------------------------------------------------- readers
def test_fully_quoted_numeric_csv_keeps_its_first_line(tmp_path):
    """'"1","10","4"' was taken for a header by the fast numeric path (its quoted tokens are not
    numbers before the csv module unquotes them), so the first rating was silently dropped."""
    path = tmp_path / "quoted.csv"
    path.write_text('"1","10","4"\n"2","10","3"\n"1","20","5"\n')
    data = read_ratings(str(path))
    assert not data.header
    got = {(data.row_ids[r].item(), data.col_ids[c].item()): v for r, c, v in zip(data.rows, data.cols, data.vals)}
    assert got == {(1, 10): 4.0, (2, 10): 3.0, (1, 20): 5.0}
    # A quoted header is still a header.
    path.write_text('"user","item","rating"\n"1","10","4"\n')
    data = read_ratings(str(path))
    assert data.header and data.nnz == 1 and data.vals.tolist() == [4.0]


# ---------------------------------------------------------------------------- model file
def fitted_model():
    rows, cols, vals, shape = ratings_problem()
    estimator = lr.MatrixCompletion(rank=2, method="als", reg=0.1, random_state=0).fit(rows, cols, vals, shape=shape)
    return estimator, rows, cols


@pytest.mark.parametrize("kind", ["object_str", "object_int", "float"])
def test_model_file_round_trips_ids_given_as_pandas_gives_them(tmp_path, kind):
    """Ids as pandas hands them over: object arrays (str or int), or floats (an int column with a
    NaN somewhere upstream). Object ids were pickled by save and load_model refused the file it
    had written; float ids were kept as floats and predict_ids([1.0]) compared "1.0" with them as
    text, so every pair got the bias-only prediction, silently."""
    estimator, rows, cols = fitted_model()
    n1, n2 = estimator.shape_
    row_ids = {"object_str": np.array([f"u{i:02d}" for i in range(n1)], dtype=object),
               "object_int": np.array([10 * i + 1 for i in range(n1)], dtype=object),
               "float": np.arange(1, n1 + 1, dtype=np.float64)}[kind]
    col_ids = np.arange(n2) + 100
    model = CompletionModel.from_estimator(estimator, row_ids, col_ids, rows, cols, center=estimator.center_)
    path = str(tmp_path / "model.npz")
    model.save(path)
    loaded = load_model(path)
    assert loaded.row_ids.tolist() == [x.item() if hasattr(x, "item") else x for x in row_ids]
    want = estimator.intercept_ + estimator.row_bias_[[0, 3]] + estimator.col_bias_[[1, 2]] + \
        (estimator.U_[[0, 3]] * estimator.V_[[1, 2]]).sum(axis=1)
    np.testing.assert_allclose(loaded.predict_ids(row_ids[[0, 3]], col_ids[[1, 2]]), want, rtol=1e-12)


def test_model_file_refuses_ids_it_cannot_store():
    estimator, rows, cols = fitted_model()
    n1, n2 = estimator.shape_
    with pytest.raises(ValueError, match=r"row_ids must hold integers in \[-2\*\*63, 2\*\*64\) or strings"):
        CompletionModel.from_estimator(estimator, np.arange(n1) + 0.5, np.arange(n2), rows, cols)


def test_lookup_of_uint64_ids_beyond_int64_does_not_wrap_onto_negative_ids():
    """2**63 + 5 as uint64 was cast to int64 (-2**63 + 5) and matched that id."""
    known = np.array([-2**63 + 5, 7], dtype=np.int64)
    assert _lookup(known, np.array([2**63 + 5, 7], dtype=np.uint64)).tolist() == [-1, 1]


def test_ids_above_int64_are_stored_as_uint64_and_found_again():
    """Ids in [2**63, 2**64) (pandas' object or float columns) are kept as uint64 and matched by
    uint64, int and text queries; ids outside [-2**63, 2**64), fractions and mixed signs beyond
    int64 are refused naming the argument (before: int64 wrap-around or OverflowError)."""
    from lowrank_hpc.cli.model_file import _id_array
    big = _id_array("row_ids", np.array([1, 2**63 + 5], dtype=object))
    assert big.dtype == np.uint64 and big.tolist() == [1, 2**63 + 5]
    assert _id_array("row_ids", np.array([1e19, 1.5e19])).tolist() == [10**19, 15 * 10**18]
    assert _id_array("row_ids", np.array([3.0, -2.0])).dtype == np.int64
    assert _lookup(big, np.array([2**63 + 5, 1], dtype=np.uint64)).tolist() == [1, 0]
    assert _lookup(big, ["9223372036854775813", "1.0", "-1", "x"]).tolist() == [1, 0, -1, -1]
    assert _lookup(big, np.array([1, -1])).tolist() == [0, -1]
    for bad in (np.array([2**64], dtype=object), np.array([-1, 2**63], dtype=object), np.array([2e19]),
                np.array([1, "a"], dtype=object)):
        with pytest.raises(ValueError, match="row_ids must hold integers"):
            _id_array("row_ids", bad)


# ---------------------------------------------------------------------------- NMF
def test_nmf_score_does_not_change_when_the_returned_w_is_normalised_in_place():
    """score used the very array fit_transform returned: W /= W.sum(1) changed the fitted model."""
    rng = np.random.default_rng(0)
    X = rng.random((30, 20))
    held = np.where(rng.random(X.shape) < 0.2, X, np.nan)
    nmf = lr.NMF(n_components=3, init="random", random_state=0)
    W = nmf.fit_transform(X)
    observed = ~np.isnan(held)
    want = -np.mean((held - W @ nmf.components_)[observed] ** 2)
    W /= W.sum(axis=1, keepdims=True)
    assert nmf.score(held) == pytest.approx(want, rel=1e-12)


def test_nmf_inverse_transform_names_a_w_of_the_wrong_width():
    nmf = lr.NMF(n_components=2, init="random", random_state=0).fit(np.random.default_rng(0).random((10, 6)))
    with pytest.raises(ValueError, match=r"NMF.inverse_transform: X must be W of shape \(n_samples, 2\)"):
        nmf.inverse_transform(np.ones((3, 6)))


def test_dataframe_columns_are_checked_not_taken_by_position():
    """scikit-learn's NMF refuses a DataFrame whose columns are reordered; ours transformed it
    by position, silently mixing the features. MatrixCompletion.predict(X) did the same."""
    pd = pytest.importorskip("pandas")
    sklearn_nmf = pytest.importorskip("sklearn.decomposition")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.random((30, 6)), columns=[f"f{i}" for i in range(6)])
    ours = lr.NMF(n_components=3, init="random", random_state=0).fit(frame)
    theirs = sklearn_nmf.NMF(n_components=3, init="random", random_state=0).fit(frame)
    np.testing.assert_array_equal(ours.feature_names_in_, theirs.feature_names_in_)
    np.testing.assert_allclose(ours.transform(frame), theirs.transform(frame), rtol=1e-10, atol=1e-12)
    reordered = frame[frame.columns[::-1]]
    with pytest.raises(ValueError, match="The feature names should match those that were passed during fit"):
        theirs.transform(reordered)
    with pytest.raises(ValueError, match="NMF.transform: The feature names should match.*another order"):
        ours.transform(reordered)
    with pytest.raises(ValueError, match="unseen at fit time: \\['g'\\]"):
        ours.transform(frame.rename(columns={"f0": "g"}))
    ours.fit(frame.to_numpy())  # a refit without names forgets them
    assert not hasattr(ours, "feature_names_in_")
    ours.transform(reordered)

    ratings = frame.where(rng.random(frame.shape) < 0.6) * 4 + 1
    completion = lr.MatrixCompletion(rank=2, method="als", reg=0.1, random_state=0).fit(ratings)
    np.testing.assert_allclose(completion.predict(ratings), completion.predict(ratings.to_numpy()), rtol=1e-12)
    with pytest.raises(ValueError, match="MatrixCompletion.predict: The feature names should match"):
        completion.predict(ratings[ratings.columns[::-1]])
    with pytest.raises(ValueError, match="MatrixCompletion.transform: The feature names should match"):
        completion.transform(ratings[ratings.columns[::-1]])
