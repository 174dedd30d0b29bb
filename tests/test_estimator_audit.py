"""What the estimator audit found, pinned: every fitted estimator pickles and deep-copies to an
equal model, predict on empty indices gives an empty array, every estimator has scikit-learn
tags, and errors about random_state and repeated coordinates speak of what the user passed."""
from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import scipy.sparse

import lowrank_hpc as lr
from lowrank_hpc.sensing import EntrySampling


def _data():
    rng = np.random.default_rng(0)
    M = rng.random((30, 3)) @ rng.random((3, 20))
    return M, np.where(rng.random(M.shape) < 0.6, M, np.nan), M > np.median(M)


def _sensing_fit():
    M, X, _ = _data()
    rows, cols = np.nonzero(~np.isnan(X))
    return lr.MatrixSensing(rank=3, random_state=0).fit(EntrySampling(rows, cols, M.shape), M[rows, cols])


# name -> (fit, what the fitted model computes: the outputs that must survive the round trip)
FITS = {
    "MatrixCompletion": (lambda: lr.MatrixCompletion(rank=3, random_state=0).fit(_data()[1]),
                         lambda m: [m.predict(_data()[1]), m.predict([0, 29], [19, 0]), m.transform(_data()[1])]),
    "MatrixCompletion implicit": (
        lambda: lr.MatrixCompletion(rank=3, method="als", feedback="implicit", random_state=0).fit(_data()[0]),
        lambda m: [m.predict([0, 29], [19, 0]), m.transform(_data()[0])]),
    "NMF": (lambda: lr.NMF(n_components=3, random_state=0).fit(_data()[0]), lambda m: [m.transform(_data()[0])]),
    "BooleanMF": (lambda: lr.BooleanMF(n_components=3, random_state=0).fit(_data()[2]),
                  lambda m: [m.transform(_data()[2]), m.reconstruct(), m.reconstruction_scores()]),
    "EBMF": (lambda: lr.EBMF(max_factors=3, random_state=0).fit(_data()[0]), lambda m: [m.reconstruct()]),
    "MixtureCompletion": (lambda: lr.MixtureCompletion(rank=2, random_state=0).fit(_data()[1]),
                          lambda m: [m.predict([0, 29], [19, 0]), m.assign([0], [0], [0.5])]),
    "MatrixSensing": (_sensing_fit, lambda m: [m.recovered_matrix()]),
}
# Not carried by a copy: BooleanMF's wrapper of the fitted X (it holds a module; the copy keeps
# its reconstruction scores instead, compared through reconstruction_scores()).
NOT_COPIED = {"_matrix", "_scores"}


def assert_same(a, b, where="model"):
    """a and b hold equal values: arrays (dtype, shape and entries, NaN equal to NaN), dicts,
    sequences and objects attribute by attribute."""
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float):
        assert a == b or (math.isnan(a) and math.isnan(b)), (where, a, b)
    elif hasattr(a, "__dict__") and not callable(a):
        assert_same(vars(a), vars(b), where)
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("name", list(FITS))
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_fitted_estimators_round_trip_with_equal_attributes(name, how):
    fit, outputs = FITS[name]
    model = fit()
    again = pickle.loads(pickle.dumps(model)) if how == "pickle" else copy.deepcopy(model)
    assert again is not model
    attributes = {key: value for key, value in vars(model).items() if key not in NOT_COPIED}
    copied = {key: value for key, value in vars(again).items() if key not in NOT_COPIED}
    assert_same(attributes, copied)
    assert any(key.endswith("_") for key in attributes)  # fitted attributes were compared, not only params
    assert_same(outputs(model), outputs(again))
    # The copy is a model of its own: it pickles again and refits.
    assert_same(outputs(pickle.loads(pickle.dumps(again))), outputs(model))


def test_boolean_mf_copy_keeps_the_reconstruction_scores_of_the_fitted_x():
    M, _, B = _data()
    model = lr.BooleanMF(n_components=3, random_state=0).fit(B)
    scores = model.reconstruction_scores()
    product = model.reconstruct()
    true_positives = int((product & B).sum())  # against the fitted X, counted by numpy
    assert scores["true_positives"] == true_positives and scores["actual_ones"] == int(B.sum())
    assert scores["predicted_ones"] == int(product.sum())
    again = pickle.loads(pickle.dumps(model))
    assert again.reconstruction_scores() == scores
    # A refit of the copy scores its new X, not the kept scores.
    other = ~B
    again.fit(other)
    assert again.reconstruction_scores()["actual_ones"] == int(other.sum())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_on_empty_indices_is_an_empty_float_array(dtype):
    _, X, _ = _data()
    completion = lr.MatrixCompletion(rank=3, random_state=0).fit(X.astype(dtype))
    for rows, cols in (([], []), (np.zeros(0, np.int32), np.zeros(0, np.int32)), (np.zeros(0, np.uint64),) * 2):
        predicted = completion.predict(rows, cols)
        assert isinstance(predicted, np.ndarray) and predicted.shape == (0,) and predicted.dtype == dtype
    mixture = lr.MixtureCompletion(n_components=2, rank=2, random_state=0).fit(X.astype(dtype))
    every = mixture.predict([], [])
    assert every.shape == (2, 0) and every.dtype == dtype
    one = mixture.predict(np.zeros(0, np.int64), np.zeros(0, np.int64), component=1)
    assert one.shape == (0,) and one.dtype == dtype
    # Non-empty predictions are unchanged, and mismatched or bad arguments still fail.
    np.testing.assert_array_equal(mixture.predict([3], [4])[:, 0], [mixture.predict([3], [4], component=k)[0]
                                                                      for k in range(2)])
    with pytest.raises(ValueError, match="rows has shape"):
        completion.predict([], [0])
    with pytest.raises(ValueError, match="component must be an integer"):
        mixture.predict([], [], component=2)


def test_every_estimator_has_sklearn_tags():
    utils = pytest.importorskip("sklearn.utils")
    tags = {name: utils.get_tags(Estimator()) for name, Estimator in (
        ("MatrixCompletion", lr.MatrixCompletion), ("NMF", lr.NMF), ("BooleanMF", lr.BooleanMF),
        ("EBMF", lr.EBMF), ("MixtureCompletion", lr.MixtureCompletion), ("MatrixSensing", lr.MatrixSensing))}
    # NaN marks missing entries for the completion estimators (and NMF); EBMF needs every entry.
    assert {name for name, tag in tags.items() if tag.input_tags.allow_nan} == {
        "MatrixCompletion", "NMF", "MixtureCompletion"}
    assert {name for name, tag in tags.items() if tag.input_tags.sparse} == {"NMF", "BooleanMF"}
    assert {name for name, tag in tags.items() if tag.target_tags.required} == {"MatrixSensing"}
    # Transformer tags only where transform folds in new rows.
    assert {name for name, tag in tags.items() if tag.transformer_tags is not None} == {
        "MatrixCompletion", "NMF", "BooleanMF"}
    assert tags["BooleanMF"].transformer_tags.preserves_dtype == []  # transform gives bool factors
    assert all(tag.estimator_type is None for tag in tags.values())


@pytest.mark.parametrize("name", ["MatrixCompletion", "BooleanMF", "EBMF", "MixtureCompletion", "MatrixSensing"])
@pytest.mark.parametrize("seed", [2**64, 2**70])
def test_random_state_out_of_range_is_named_by_the_estimator(name, seed):
    M, X, B = _data()
    rows, cols = np.nonzero(~np.isnan(X))
    fits = {"MatrixCompletion": lambda e: e.fit(X), "BooleanMF": lambda e: e.fit(B), "EBMF": lambda e: e.fit(M),
            "MixtureCompletion": lambda e: e.fit(X),
            "MatrixSensing": lambda e: e.fit(EntrySampling(rows, cols, M.shape), M[rows, cols])}
    estimator = getattr(lr, name)(random_state=seed)
    with pytest.raises(ValueError) as error:
        fits[name](estimator)
    message = str(error.value)
    assert message.startswith(f"{name}") and "random_state must be None, an integer in [0, 2**64)" in message
    assert str(seed) in message
    # The largest valid seed fits.
    fits[name](getattr(lr, name)(random_state=np.uint64(2**64 - 1)))


@pytest.mark.parametrize("reg", ["auto", 1.0])
def test_soft_impute_repeated_coordinates_are_counted_in_the_users_data(reg):
    rng = np.random.default_rng(0)
    M = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 30))
    rows, cols = np.nonzero(rng.random(M.shape) < 0.5)
    # Pair 0 three times (2 repeats), pairs 1-3 twice (3 repeats): 5 entries repeat an earlier pair.
    extra = np.array([0, 0, 1, 2, 3])
    rows, cols = np.r_[rows, rows[extra]], np.r_[cols, cols[extra]]
    expected = len(rows) - len(set(zip(rows.tolist(), cols.tolist())))
    assert expected == 5
    order = rng.permutation(len(rows))  # in any order
    with pytest.raises(ValueError, match=r"^MatrixCompletion\.fit: rows and cols repeat 5 coordinate\(s\)"):
        lr.MatrixCompletion(rank=3, reg=reg, random_state=0).fit(rows[order], cols[order], M[rows, cols][order],
                                                                 shape=M.shape)
    # ALS takes repeated pairs (each is one more observation): no error.
    lr.MatrixCompletion(rank=3, method="als", reg=reg, max_iter=5, random_state=0).fit(rows, cols, M[rows, cols],
                                                                                        shape=M.shape)


def test_boolean_mf_on_cuda_without_it_says_why_for_sparse_x_too():
    """A sparse X asked onto the GPU reports the backend's absence (BackendUnavailableError, which
    the CLI prints as one line), not cupyx's ImportError."""
    from lowrank_hpc import _backend

    try:
        _backend.cuda_module()
        pytest.skip("this machine has the CUDA backend")
    except lr.BackendUnavailableError:
        pass
    X = scipy.sparse.csr_matrix(np.random.default_rng(0).random((10, 8)) < 0.3)
    for given in (X, X.toarray()):
        with pytest.raises(lr.BackendUnavailableError, match="the CUDA backend is not available"):
            lr.BooleanMF(n_components=2, backend="cuda").fit(given)


def test_matrix_sensing_score_refuses_nan_measurements_as_fit_does():
    rng = np.random.default_rng(3)
    M = rng.standard_normal((12, 2)) @ rng.standard_normal((2, 10))
    op = lr.sensing.GaussianSensing(150, (12, 10), seed=0)
    y = op.forward(M)
    model = lr.MatrixSensing(rank=2, max_iter=50, random_state=0).fit(op, y)
    assert np.isfinite(model.score(op, y))
    y[3] = np.nan
    with pytest.raises(ValueError, match="MatrixSensing.score: y contains NaN/inf"):
        model.score(op, y)


def test_ebmf_covariates_that_are_not_numbers_are_named():
    from lowrank_hpc.research import ebmf

    Y = np.random.default_rng(0).standard_normal((6, 5))
    with pytest.raises(TypeError, match="row_covariates must hold real numbers"):
        ebmf(Y, row_covariates=["a", "b", "c", "d", "e", "f"])


def test_fit_with_none_data_names_the_argument():
    """fit(op, None) and fit(None) said "y must have 1 dimension(s), got shape ()"."""
    op = lr.sensing.GaussianSensing(10, (3, 4), seed=1)
    with pytest.raises(TypeError, match="MatrixSensing.fit: y is None"):
        lr.MatrixSensing(rank=1).fit(op, None)
    with pytest.raises(TypeError, match="MixtureCompletion.fit: X is None"):
        lr.MixtureCompletion().fit(None)
