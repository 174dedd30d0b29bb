"""Arrays that share memory: an ``out`` overlapping an input (allowed only as the identical array
of an in-place map, otherwise a ValueError naming both), and a SparsePattern whose caller reuses
its index buffers after construction (the pattern is a snapshot). Results against numpy."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import ops


def _soft(x, t):
    return np.sign(x) * np.maximum(np.abs(x) - t, 0)


def _elastic(x, l1, l2):
    """The elastic-binary prox's closed form (Elbmf), in float64."""
    low = (x - l1 * np.sign(x)) / (1 + l2)
    high = (x - l1 * np.sign(x - 1) + l2) / (1 + l2)
    return np.where(x <= 0.5, low, high)


MAPS = {
    "soft_threshold": (lambda x, out: ops.soft_threshold(x, 0.5, out=out), lambda x: _soft(x, 0.5)),
    "elastic_binary_prox": (lambda x, out: ops.elastic_binary_prox(x, 0.1, 0.2, out=out),
                            lambda x: _elastic(x, 0.1, 0.2)),
}


@pytest.mark.parametrize("name", list(MAPS))
def test_map_out_overlapping_x_is_refused_and_in_place_or_disjoint_out_is_exact(backend, rng, name):
    call, reference = MAPS[name]
    values = rng.standard_normal(10) * 2
    base = backend.put(values.copy())
    for x, out in ((base[:-1], base[1:]), (base[1:], base[:-1]), (base[:6], base[4:])):
        with pytest.raises(ValueError, match="out shares memory with x; out must be exactly x"):
            call(x, out)
        np.testing.assert_array_equal(backend.get(base), values)  # refused before anything was written
    # Disjoint halves of one buffer: allowed, x intact.
    call(base[:5], base[5:])
    np.testing.assert_allclose(backend.get(base[5:]), reference(values[:5]), rtol=1e-15, atol=1e-15)
    np.testing.assert_array_equal(backend.get(base[:5]), values[:5])
    # Exactly x: in place.
    x = backend.put(values.copy())
    assert call(x, x) is x
    np.testing.assert_allclose(backend.get(x), reference(values), rtol=1e-15, atol=1e-15)


def _half_step(U, gram, cross, l1, l2):
    """PALM's half-step (inertia 0) as Elbmf writes it, in float64."""
    step = 1 / (1.1 * max(np.linalg.norm(gram), 1e-4))
    return _elastic(U - step * (U @ gram - cross), l1 * step, l2 * step)


@pytest.mark.parametrize("target", ["U", "U_prev", "gram", "cross", "cross, shifted"])
def test_half_step_out_sharing_any_input_is_refused(backend, rng, target):
    n = k = 3  # gram and cross have U's shape: each could be passed as out
    arrays = {name: rng.random((n, k)) for name in ("U", "gram", "cross")}
    arrays["U_prev"] = arrays["U"].copy()
    expected = _half_step(arrays["U"], arrays["gram"], arrays["cross"], 0.1, 0.2)
    given = {name: backend.put(a.copy()) for name, a in arrays.items()}
    if target == "cross, shifted":  # out overlaps cross without being it
        buffer = backend.put(np.concatenate([arrays["cross"].ravel(), np.zeros(3)]))
        given["cross"], out, target = buffer[:n * k].reshape(n, k), buffer[3:].reshape(n, k), "cross"
    else:
        out = given[target]
    with pytest.raises(ValueError, match=f"out shares memory with {target}; out must be a separate array"):
        ops.elastic_binary_half_step(given["U"], given["U_prev"], given["gram"], given["cross"], 0.1, 0.2, out=out)
    for name, a in arrays.items():
        np.testing.assert_array_equal(backend.get(given[name]), a)
    separate = backend.xp.empty((n, k))
    got = ops.elastic_binary_half_step(given["U"], given["U_prev"], given["gram"], given["cross"], 0.1, 0.2,
                                       out=separate)
    assert got is separate
    np.testing.assert_allclose(backend.get(got), expected, rtol=1e-12, atol=1e-12)


def _pattern_reference(rows, cols, shape, U, V, vals, B, Bt):
    """(sampled product, S @ B, S^T @ Bt) of the pattern (rows, cols) in numpy."""
    S = np.zeros(shape)
    np.add.at(S, (rows, cols), vals)
    return np.einsum("kr,kr->k", U[rows], V[cols]), S @ B, S.T @ Bt


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("r", [2, 64])  # the coordinate kernel and the row-ordered one (float32 r >= 64)
def test_sparse_pattern_is_a_snapshot_of_the_callers_indices(backend, rng, order, r):
    m, n, nnz = 7, 5, 20
    flat = np.sort(rng.choice(m * n, nnz, replace=False))
    if order == "shuffled":
        flat = rng.permutation(flat)
    rows, cols = backend.put(flat // n), backend.put(flat % n)  # int64, C-contiguous: kept as given
    built_rows, built_cols = backend.get(rows).copy(), backend.get(cols).copy()
    pattern = ops.SparsePattern(rows, cols, (m, n))
    rows[:] = backend.put(np.full(nnz, m - 1))  # the caller reuses its buffers
    cols[:] = backend.put(np.zeros(nnz, dtype=np.int64))
    U, V = rng.standard_normal((m, r)).astype(np.float32), rng.standard_normal((n, r)).astype(np.float32)
    vals, B, Bt = rng.standard_normal(nnz), rng.standard_normal((n, 3)), rng.standard_normal((m, 3))
    sampled, SB, StBt = _pattern_reference(built_rows, built_cols, (m, n), U.astype(np.float64),
                                           V.astype(np.float64), vals, B, Bt)
    np.testing.assert_allclose(backend.get(pattern.sampled_product(backend.put(U), backend.put(V))), sampled,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(backend.get(pattern.times_dense(backend.put(vals), backend.put(B))), SB, rtol=1e-12)
    np.testing.assert_allclose(backend.get(pattern.times_dense(backend.put(vals), backend.put(Bt), transpose=True)),
                               StBt, rtol=1e-12)
    indptr, indices = (backend.get(a) for a in pattern.csr_arrays())
    by_row = np.argsort(built_rows, kind="stable")
    np.testing.assert_array_equal(indices, built_cols[by_row])
    np.testing.assert_array_equal(indptr, np.searchsorted(built_rows[by_row], np.arange(m + 1)))


def test_sparse_pattern_keeps_its_offsets(backend, rng):
    # Out of row order, so short factor rows take the coordinate kernel, which reads the offsets.
    rows, cols = backend.put(np.array([1, 0, 2, 0])), backend.put(np.array([1, 0, 2, 2]))
    offsets = backend.put(np.array([0, 2, 4]))  # int64: kept as given
    pattern = ops.SparsePattern(rows, cols, (3, 3), offsets=offsets)
    offsets[1] = 3  # the caller reuses its buffer
    U, V = rng.standard_normal((2, 3, 2)), rng.standard_normal((2, 3, 2))
    r, c = backend.get(rows), backend.get(cols)
    expected = np.concatenate([np.einsum("kr,kr->k", U[b, r[s]], V[b, c[s]])
                               for b, s in ((0, slice(0, 2)), (1, slice(2, 4)))])
    np.testing.assert_allclose(backend.get(pattern.sampled_product(backend.put(U), backend.put(V))), expected,
                               rtol=1e-12)


def test_sparse_pattern_copy_false_keeps_the_callers_arrays(backend):
    """copy=False (the solvers' internal patterns, whose index arrays are their own): no copy of
    int64 input, and the same products as the snapshot."""
    rows, cols = backend.put(np.array([2, 0, 1, 0])), backend.put(np.array([1, 0, 2, 2]))
    kept, snapshot = ops.SparsePattern(rows, cols, (3, 3), copy=False), ops.SparsePattern(rows, cols, (3, 3))
    xp = backend.xp
    assert xp.shares_memory(kept.rows, rows) and xp.shares_memory(kept.cols, cols)
    assert not xp.may_share_memory(snapshot.rows, rows) and not xp.may_share_memory(snapshot.cols, cols)
    vals, B = backend.put(np.arange(1.0, 5.0)), backend.put(np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(backend.get(kept.times_dense(vals, B)), backend.get(snapshot.times_dense(vals, B)))
