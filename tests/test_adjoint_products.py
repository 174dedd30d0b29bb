"""adjoint_times / adjoint_transpose_times of every operator against the formed adjoint."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import RTOL, rel_error
from lowrank_hpc.sensing import ColumnSketch, EntrySampling, GaussianSensing, RankOneSensing


def _operators(rng):
    rows = rng.integers(0, 7, 60)
    cols = rng.integers(0, 5, 60)
    return {
        "gaussian": GaussianSensing(40, (7, 5), seed=1),
        "rank_one": RankOneSensing(40, (7, 5), seed=2),
        "rank_one_symmetric": RankOneSensing(40, (7, 7), seed=2, symmetric=True),
        "entry_sampling": EntrySampling(rows, cols, (7, 5)),
        "column_sketch": ColumnSketch(3, (7, 5), seed=4),
    }


@pytest.mark.parametrize("name", ["gaussian", "rank_one", "rank_one_symmetric", "entry_sampling", "column_sketch"])
def test_adjoint_products_equal_formed_adjoint(backend, dtype, rng, name):
    op = _operators(rng)[name]
    n1, n2 = op.shape
    y = rng.standard_normal(op.num_measurements).astype(dtype)
    B2, B1 = rng.standard_normal((n2, 3)).astype(dtype), rng.standard_normal((n1, 3)).astype(dtype)
    G = op.adjoint(y).astype(np.float64)
    got = backend.get(op.adjoint_times(backend.put(y), backend.put(B2)))
    got_t = backend.get(op.adjoint_transpose_times(backend.put(y), backend.put(B1)))
    assert got.shape == (n1, 3) and got_t.shape == (n2, 3) and got.dtype == dtype
    assert rel_error(got, G @ B2) < 10 * RTOL[dtype]
    assert rel_error(got_t, G.T @ B1) < 10 * RTOL[dtype]


def test_adjoint_products_bad_inputs(rng):
    op = GaussianSensing(40, (7, 5), seed=1)
    with pytest.raises(ValueError, match=r"B has shape \(7, 3\), expected \(5, k\)"):
        op.adjoint_times(np.ones(40), np.ones((7, 3)))
    with pytest.raises(ValueError, match=r"y has shape \(39,\), expected \(40,\)"):
        op.adjoint_transpose_times(np.ones(39), np.ones((7, 3)))
    with pytest.raises(TypeError, match="B is float32 but y is float64"):
        op.adjoint_times(np.ones(40), np.ones((5, 3), dtype=np.float32))


@pytest.mark.parametrize("name", ["gaussian", "rank_one", "entry_sampling", "column_sketch"])
def test_forward_factored_takes_a_batch(rng, name):
    op = _operators(rng)[name]
    n1, n2 = op.shape
    U, V = rng.standard_normal((3, n1, 2)), rng.standard_normal((3, n2, 2))
    got = op.forward_factored(U, V)
    assert got.shape == (3, op.num_measurements)
    for b in range(3):
        assert rel_error(got[b], op.forward(U[b] @ V[b].T)) < 1e-12
    with pytest.raises(ValueError, match=r"expected \(batch, 7, r\)"):
        op.forward_factored(U, V[:2])
