"""lowrank_hpc.datasets: the shipped and scikit-learn data sets, and the benchmark's seeded split."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import datasets

# name: (shape, entries of load(name), train entries, test entries of split(name))
EXPECTED = {
    "movielens_sample": ((30, 100), 1501, 1201, 300),
    "camera": ((512, 512), 512 * 512, 78643, 50_000),
    "digits": ((1797, 64), 1797 * 64, 34502, 50_000),
    "china": ((427, 640), 427 * 640, 81984, 50_000),
}


SUM_OF_CAMERA_PIXELS = 33_832_495  # int(skimage.data.camera().astype("int64").sum()), scikit-image 0.26


def check_entries(entries: datasets.Entries, shape: tuple[int, int], nnz: int) -> None:
    assert entries.shape == shape
    assert entries.nnz == nnz
    for array, dtype in ((entries.rows, np.int64), (entries.cols, np.int64), (entries.vals, np.float64)):
        assert array.dtype == dtype and array.shape == (nnz,)
    assert 0 <= entries.rows.min() and entries.rows.max() < shape[0]
    assert 0 <= entries.cols.min() and entries.cols.max() < shape[1]
    assert np.all(np.isfinite(entries.vals))


def linear(entries: datasets.Entries) -> np.ndarray:
    return entries.rows * entries.shape[1] + entries.cols


def test_names():
    assert datasets.NAMES == tuple(EXPECTED)


@pytest.mark.parametrize("name", datasets.NAMES)
def test_load(name):
    shape, nnz, _, _ = EXPECTED[name]
    entries = datasets.load(name)
    check_entries(entries, shape, nnz)
    assert entries.name == name
    assert np.unique(linear(entries)).size == nnz  # no entry twice


@pytest.mark.parametrize("name", datasets.NAMES)
def test_split_is_disjoint_sorted_and_deterministic(name):
    shape, nnz, n_train, n_test = EXPECTED[name]
    train, test = datasets.split(name, seed=0)
    check_entries(train, shape, n_train)
    check_entries(test, shape, n_test)
    assert (train.name, test.name) == (f"{name}/train", f"{name}/test")
    assert np.intersect1d(linear(train), linear(test)).size == 0
    for half in (train, test):
        assert np.all(np.diff(linear(half)) > 0)  # row-major, no duplicates
    # The values are those of the full data set at the same coordinates.
    full = datasets.load(name).dense()
    np.testing.assert_array_equal(train.vals, full[train.rows, train.cols])
    np.testing.assert_array_equal(test.vals, full[test.rows, test.cols])

    again_train, again_test = datasets.split(name, seed=0)
    for a, b in ((train, again_train), (test, again_test)):
        for field in ("rows", "cols", "vals"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other_train, _ = datasets.split(name, seed=1)
    assert other_train.nnz == n_train and not np.array_equal(linear(other_train), linear(train))


def test_movielens_sample_ratings():
    entries = datasets.load_movielens_sample()
    assert set(np.unique(entries.vals)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.bincount(entries.vals.astype(int))[1:].tolist() == [941, 207, 179, 99, 75]
    # The first line of the file is 0::2::3::1424380312.
    assert (entries.rows[0], entries.cols[0], entries.vals[0]) == (0, 2, 3.0)
    train, test = datasets.split("movielens_sample")
    assert np.array_equal(np.sort(np.concatenate([linear(train), linear(test)])), np.sort(linear(entries)))


@pytest.mark.parametrize("loader, shape", [(datasets.load_camera, (512, 512)), (datasets.load_digits, (1797, 64)),
                                           (datasets.load_china, (427, 640))])
def test_images_in_unit_interval(loader, shape):
    image = loader()
    assert image.shape == shape and image.dtype == np.float64
    assert image.min() == 0.0 and image.max() == 1.0
    assert 0.2 < image.mean() < 0.8


def test_camera_pixels_are_the_shipped_uint8():
    image = datasets.load_camera()
    np.testing.assert_array_equal(np.round(image * 255), np.round(image * 255).astype(np.uint8))
    assert int(np.round(image * 255).sum()) == SUM_OF_CAMERA_PIXELS  # skimage.data.camera().sum()


def test_digits_and_china_values():
    np.testing.assert_array_equal(np.unique(datasets.load_digits() * 16), np.arange(17.0))
    china = datasets.load_china()
    # The mean of three uint8 channels / 255: china * 3 * 255 is a whole number.
    np.testing.assert_allclose(china * 765, np.round(china * 765), atol=1e-9)


def test_entries_dense():
    train, _ = datasets.split("movielens_sample")
    dense = train.dense()
    assert dense.shape == train.shape and np.isnan(dense).sum() == 30 * 100 - train.nnz
    np.testing.assert_array_equal(dense[train.rows, train.cols], train.vals)
    assert train.dense(0.0).sum() == train.vals.sum()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'mnist'.*movielens_sample"):
        datasets.load("mnist")
    with pytest.raises(ValueError, match="unknown data set"):
        datasets.split("mnist")


def test_missing_scikit_learn_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)  # makes `import sklearn` raise ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load("digits")
    # The shipped sets need nothing but numpy.
    assert datasets.load("camera").nnz == 512 * 512
    assert datasets.load("movielens_sample").nnz == 1501


def test_missing_pillow_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        datasets.load_china()
