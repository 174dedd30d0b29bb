"""Host containers with a ``get`` method (pandas DataFrames have one: a column lookup) are host
arrays, not CuPy's: every place that brings input to the host goes through
``_arrays.to_numpy``, which asks for ``__cuda_array_interface__`` / DLPack, not for ``get``."""
from __future__ import annotations

import numpy as np

import lowrank_hpc as lr
from lowrank_hpc import recover
from lowrank_hpc._arrays import to_numpy
from lowrank_hpc.recover._driver import fingerprint


class FrameLike:
    """What a pandas DataFrame shows the library: ``__array__`` and a ``get(key)`` that is not
    CuPy's copy to the host (pandas is not a test dependency)."""

    def __init__(self, values):
        self.values = np.asarray(values)
        self.shape, self.ndim, self.dtype = self.values.shape, self.values.ndim, self.values.dtype

    def __array__(self, dtype=None, copy=None):
        return self.values if dtype is None else self.values.astype(dtype)

    def get(self, key, default=None):  # DataFrame.get(column): needs a key, unlike cupy.ndarray.get()
        return default


def test_to_numpy_takes_frames_lists_and_views_as_host_arrays():
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(to_numpy(FrameLike(a)), a)
    view = a[:, ::2]
    assert np.shares_memory(to_numpy(view), a)  # a numpy view stays a view
    np.testing.assert_array_equal(to_numpy([[1, 2], [3, 4]]), [[1, 2], [3, 4]])


def test_estimators_take_frames_where_they_took_numpy():
    rng = np.random.default_rng(0)
    X = rng.random((20, 10)) > 0.5
    by_frame, by_array = (lr.BooleanMF(n_components=2, random_state=0).fit(x) for x in (FrameLike(X), X))
    np.testing.assert_array_equal(by_frame.W_, by_array.W_)
    np.testing.assert_array_equal(by_array.transform(FrameLike(X)), by_array.transform(X))

    values = rng.random((20, 10))
    mask = rng.random((20, 10)) > 0.2
    fits = [lr.NMF(n_components=2, random_state=0, max_iter=50, tol=0).fit(values, mask=m) for m in (FrameLike(mask), mask)]
    np.testing.assert_array_equal(fits[0].components_, fits[1].components_)
    W0, H0 = rng.random((20, 2)), rng.random((2, 10))
    custom = [lr.NMF(n_components=2, init="custom", max_iter=20, tol=0).fit(values, W=w, H=h)
              for w, h in ((FrameLike(W0), FrameLike(H0)), (W0, H0))]
    np.testing.assert_array_equal(custom[0].components_, custom[1].components_)

    init = (rng.random((20, 2)), rng.random((2, 10)))
    results = [recover.boolean_mf(X, 2, init=i, max_iter=5) for i in ((FrameLike(init[0]), FrameLike(init[1])), init)]
    np.testing.assert_array_equal(results[0].U, results[1].U)


def test_checkpoint_fingerprint_hashes_a_frame_as_its_values():
    a = np.arange(6.0).reshape(2, 3)
    assert str(fingerprint("f", FrameLike(a))) == str(fingerprint("f", a))
    assert str(fingerprint("f", FrameLike(a + 1))) != str(fingerprint("f", a))
