"""Real matrices for completion, with the seeded train/test split the benchmark and tests use.

Real data is approximately low rank, noisy and not centered; these sets measure
:class:`lowrank_hpc.MatrixCompletion` where planted problems cannot. Two ship with the package
(``lowrank_hpc/data/``, see its NOTICE file) and work offline with numpy alone; two are read
from scikit-learn, an optional dependency (part of the ``test`` extras).

==================  ===========  ==========  ========================================================
name                shape        observed    source, licence
==================  ===========  ==========  ========================================================
movielens_sample    (30, 100)    1,501       Apache Spark's ``data/mllib/als/sample_movielens_ratings
                                             .txt`` (copied from the pyspark 4.3.0 wheel), Apache-2.0.
                                             Ratings 1-5 (integers; 941 of them are 1) of 30 users
                                             on 100 movies, ``user::movie::rating::timestamp`` lines,
                                             ids already 0-based; the shape is max id + 1.
camera              (512, 512)   262,144     scikit-image 0.26's ``camera`` image (uint8), "No
                                             copyright restrictions. CC0 by the photographer (Lav
                                             Varshney)" (docstring of ``skimage.data.camera``).
                                             Stored as ``data/camera.npz`` (uint8, 165 KiB), made once
                                             in the benchmark's scikit-image venv by::

                                               bench/.venvs/fancyimpute/bin/python -c "import numpy, skimage.data; numpy.savez_compressed('python/lowrank_hpc/data/camera.npz', camera=skimage.data.camera())"

                                             Values: pixel / 255 in [0, 1].
digits              (1797, 64)   115,008     ``sklearn.datasets.load_digits().data`` (8 x 8 images of
                                             handwritten digits, one per row, values 0-16; the UCI
                                             optical digits test set, CC BY 4.0), divided by 16.
china               (427, 640)   273,280     ``sklearn.datasets.load_sample_image("china.jpg")``
                                             (Flickr photo by danielbuechele, CC BY 2.0, see
                                             scikit-learn's ``datasets/images/README.txt``), the mean
                                             of its RGB channels / 255, in [0, 1]. Reading the JPEG
                                             needs Pillow as well as scikit-learn.
==================  ===========  ==========  ========================================================

Splits (:func:`split`, numpy ``default_rng(seed)``; the benchmark and the tests use seed 0):

* ``movielens_sample``: a seeded 20% of the ratings (300 of 1,501) held out as test, the other
  1,201 are train.
* images (``camera``, ``digits``, ``china``: every entry is known): a seeded 30% of the entries
  observed as train, and 50,000 of the remaining entries (all of them when fewer) held out as
  test, so the test RMSE measures what completion fills in. The two are disjoint.

Both halves are sorted row-major (by row, then column), as a user's COO data usually is.

>>> from lowrank_hpc import datasets
>>> train, test = datasets.split("movielens_sample", seed=0)
>>> train.shape, train.nnz, test.nnz
((30, 100), 1201, 300)
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Callable

import numpy as np

from . import _checks

NAMES = ("movielens_sample", "camera", "digits", "china")

#: Fraction of an image's entries observed as train by :func:`split`.
IMAGE_TRAIN_FRACTION = 0.3
#: Number of an image's remaining entries held out as test by :func:`split` (all when fewer).
IMAGE_TEST_SIZE = 50_000
#: Fraction of the MovieLens sample's ratings held out as test by :func:`split`.
RATINGS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Entries:
    """Observed entries of one (n1, n2) matrix, in COO form.

    rows, cols : (nnz,) int64 indices; vals : (nnz,) float64 values; shape : (n1, n2);
    name : the data set's name (with "/train" or "/test" for the halves of :func:`split`).
    """

    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    shape: tuple[int, int]
    name: str

    @property
    def nnz(self) -> int:
        """Number of entries."""
        return int(self.rows.shape[0])

    def dense(self, fill: float = np.nan) -> np.ndarray:
        """The (n1, n2) float64 matrix with these entries and ``fill`` (NaN by default) elsewhere."""
        out = np.full(self.shape, fill, dtype=np.float64)
        out[self.rows, self.cols] = self.vals
        return out


def _data_file(name: str):
    return resources.files(__package__).joinpath("data", name)


def load_movielens_sample() -> Entries:
    """Apache Spark's MovieLens sample: 1,501 ratings (1-5) of 30 users on 100 movies.

    Returns
    -------
    Entries with shape (30, 100) (max id + 1 on each side), entries in file order.
    """
    text = _data_file("sample_movielens_ratings.txt").read_text(encoding="ascii")
    fields = np.array([line.split("::") for line in text.splitlines() if line.strip()], dtype=np.int64)
    rows, cols = fields[:, 0].copy(), fields[:, 1].copy()
    shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    return Entries(rows, cols, fields[:, 2].astype(np.float64), shape, "movielens_sample")


def load_camera() -> np.ndarray:
    """scikit-image's ``camera`` image (CC0, Lav Varshney): (512, 512) float64 in [0, 1] (uint8 / 255)."""
    with _data_file("camera.npz").open("rb") as handle:
        pixels = np.load(handle)["camera"]
    return pixels.astype(np.float64) / 255.0


def _sklearn_datasets(name: str):
    try:
        import sklearn.datasets
    except ImportError as error:
        raise ImportError(f"lowrank_hpc.datasets: the {name!r} data set is read from scikit-learn, which is not "
                          "installed; pip install scikit-learn (or the test extras: pip install "
                          "'lowrank_hpc[test]')") from error
    return sklearn.datasets


def load_digits() -> np.ndarray:
    """scikit-learn's digits: (1797, 64) float64 in [0, 1] (pixel values 0-16 / 16). Needs scikit-learn."""
    return _sklearn_datasets("digits").load_digits().data.astype(np.float64) / 16.0


def load_china() -> np.ndarray:
    """scikit-learn's ``china.jpg`` in grayscale: (427, 640) float64 in [0, 1], the mean of the RGB
    channels / 255. Needs scikit-learn and Pillow (which scikit-learn uses to read JPEG files)."""
    datasets = _sklearn_datasets("china")
    try:
        import PIL  # noqa: F401  (scikit-learn's own message does not name the package to install)
    except ImportError as error:
        raise ImportError("lowrank_hpc.datasets: the 'china' data set is a JPEG that scikit-learn reads with "
                          "Pillow, which is not installed; pip install pillow") from error
    image = datasets.load_sample_image("china.jpg")
    return image.astype(np.float64).mean(axis=2) / 255.0


_IMAGES: dict[str, Callable[[], np.ndarray]] = {"camera": load_camera, "digits": load_digits, "china": load_china}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"lowrank_hpc.datasets: unknown data set {name!r}; the data sets are {NAMES}")
    return name


def _image_entries(image: np.ndarray, index: np.ndarray, name: str) -> Entries:
    rows, cols = np.divmod(index.astype(np.int64), image.shape[1])
    return Entries(rows, cols, image[rows, cols], tuple(int(n) for n in image.shape), name)


def load(name: str) -> Entries:
    """Every observed entry of the data set ``name`` (one of :data:`NAMES`): all pixels of an image
    (row-major), all ratings of the MovieLens sample (file order)."""
    if _check_name(name) == "movielens_sample":
        return load_movielens_sample()
    image = _IMAGES[name]()
    return _image_entries(image, np.arange(image.size), name)


def split(name: str, seed: int = 0) -> tuple[Entries, Entries]:
    """(train, test): the seeded hold-out of the data set ``name`` that the benchmark measures.

    ``movielens_sample``: ``default_rng(seed)`` permutes the ratings; the first 20% (rounded) are
    test, the rest train. Images: ``default_rng(seed).choice`` draws, without replacement,
    30% of the entries (rounded) as train and then min(50,000, the rest) as test. Both halves
    are sorted row-major; they are disjoint and the same for the same seed (an int >= 0; None,
    fresh entropy elsewhere in the library, is refused: this split is the reproducible one).
    """
    _check_name(name)
    rng = np.random.default_rng(_checks.seed("split", seed, optional=False))  # None: not reproducible
    if name == "movielens_sample":
        entries = load_movielens_sample()
        order = rng.permutation(entries.nnz)
        n_test = int(round(RATINGS_TEST_FRACTION * entries.nnz))
        halves = []
        for part, suffix in ((order[n_test:], "train"), (order[:n_test], "test")):
            part = part[np.lexsort((entries.cols[part], entries.rows[part]))]
            halves.append(Entries(entries.rows[part], entries.cols[part], entries.vals[part], entries.shape,
                                  f"{name}/{suffix}"))
        return halves[0], halves[1]
    image = _IMAGES[name]()
    n_train = int(round(IMAGE_TRAIN_FRACTION * image.size))
    n_test = min(IMAGE_TEST_SIZE, image.size - n_train)
    chosen = rng.choice(image.size, n_train + n_test, replace=False)
    return (_image_entries(image, np.sort(chosen[:n_train]), f"{name}/train"),
            _image_entries(image, np.sort(chosen[n_train:]), f"{name}/test"))


def synthetic_ratings(seed: int, shape: tuple[int, int] = (1000, 800), nnz: int = 100_000, *,
                      power_law: bool = True) -> tuple[Entries, Entries]:
    """(train, test): generated 1-5 ratings that look like real ones, the first 10% of the drawn
    entries held out as test (unsorted, in draw order).

    round(3.5 + a_i + b_j + (U V^T)_ij + noise) clipped to 1..5, with U (n1, 5), V (n2, 5) of
    N(0, 0.4^2) entries, row effects a ~ N(0, 0.4^2), column effects b ~ N(0, 0.5^2), noise
    N(0, 0.5^2): not exactly low rank, not centered, rounded. ``power_law``: distinct pairs drawn
    by Pareto(1.2) row activity and Pareto(1.0) column popularity (up to ``nnz``: repeats are
    dropped); otherwise ``nnz`` uniform distinct pairs. The same seed gives the same entries.
    """
    seed = _checks.seed("synthetic_ratings", seed, optional=False)
    n1, n2 = _checks.shape_2d("synthetic_ratings", "shape", shape)
    nnz = _checks.positive_int("synthetic_ratings", "nnz", nnz)
    if nnz > n1 * n2:
        raise ValueError(f"synthetic_ratings: nnz = {nnz} exceeds the {n1 * n2} entries of shape {(n1, n2)}")
    rng = np.random.default_rng(seed)
    U, V = rng.normal(0, 0.4, (n1, 5)), rng.normal(0, 0.4, (n2, 5))
    a, b = rng.normal(0, 0.4, n1), rng.normal(0, 0.5, n2)
    if power_law:
        activity, popularity = rng.pareto(1.2, n1) + 1, rng.pareto(1.0, n2) + 1
        drawn = np.unique(rng.choice(n1, 2 * nnz, p=activity / activity.sum()) * n2
                          + rng.choice(n2, 2 * nnz, p=popularity / popularity.sum()))
        rng.shuffle(drawn)
        flat = drawn[:nnz]
    else:
        flat = rng.choice(n1 * n2, nnz, replace=False)
    rows, cols = flat // n2, flat % n2
    vals = np.clip(np.round(3.5 + a[rows] + b[cols] + np.sum(U[rows] * V[cols], 1) + rng.normal(0, 0.5, rows.size)),
                   1, 5)
    held = rows.size // 10
    name = f"synthetic_ratings(seed={seed})"
    return (Entries(rows[held:], cols[held:], vals[held:], (n1, n2), f"{name}/train"),
            Entries(rows[:held], cols[:held], vals[:held], (n1, n2), f"{name}/test"))
