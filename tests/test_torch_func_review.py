"""lowrank_hpc.torch's vmap rules for the sparse products (_ops._vmap_sampled, _vmap_spmm) where
their review found them wanting (each test failed on that code): shared factors read in place,
a bad index under nested vmap named as given, each element's shapes checked, no elements.
Skipped without torch."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="torch is not installed (optional extra; in the test extra)")

import lowrank_hpc.torch as lt  # noqa: E402
from lowrank_hpc import ops  # noqa: E402

S, M, N, R, NNZ = 3, 7, 6, 2, 5


def _data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    U = torch.randn(S, M, R, generator=generator, dtype=torch.float64)
    V = torch.randn(S, N, R, generator=generator, dtype=torch.float64)
    rows = torch.randint(0, M, (S, NNZ), generator=generator)
    cols = torch.randint(0, N, (S, NNZ), generator=generator)
    vals = torch.randn(S, NNZ, generator=generator, dtype=torch.float64)
    return U, V, rows, cols, vals


def _record(monkeypatch, name, seen, pick):
    original = getattr(ops, name)
    monkeypatch.setattr(ops, name, lambda *a, **k: seen.append(pick(*a)) or original(*a, **k))


def test_vmap_keeps_unbatched_factors_shared(monkeypatch):
    """Factors shared by every vmapped element (in_dims None) reach the kernel once, not copied
    batch_size times (the rule expands and reshapes them: 1,000 index sets over 20,000 x 32
    float32 factors copied 1 GB and ran 30x slower than the per-element fallback it replaced)."""
    U, V, rows, cols, vals = _data()
    seen = []
    _record(monkeypatch, "sampled_product", seen, lambda U_, V_, *rest: (tuple(U_.shape), tuple(V_.shape)))
    _record(monkeypatch, "sparse_times_dense", seen, lambda r_, c_, v_, B_, *rest: tuple(B_.shape))
    got = torch.func.vmap(lambda rw, cl: lt.sampled_product(U[0], V[0], rw, cl))(rows, cols)
    spmm = torch.func.vmap(lambda rw, cl, v: lt.sparse_times_dense(rw, cl, v, V[0], M))(rows, cols, vals)
    monkeypatch.undo()
    for b in range(S):
        torch.testing.assert_close(got[b], lt.sampled_product(U[0], V[0], rows[b], cols[b]))
        torch.testing.assert_close(spmm[b], lt.sparse_times_dense(rows[b], cols[b], vals[b], V[0], M))
    assert seen == [((M, R), (N, R)), (N, R)]


def test_a_bad_index_under_nested_vmap_is_reported_as_given():
    """Under nested vmap the inner level cannot test its indices (no bool() of a batched
    tensor), so it moves a bad one to a sentinel; the outer level then reports the sentinel and
    its flattened position ("rows[7] = 21 is out of range [0, 21)") instead of the user's
    rows[2] = 7 against [0, 7)."""
    U, V, rows, cols, _ = _data()
    U2, V2 = U.expand(2, *U.shape), V.expand(2, *V.shape)
    bad = rows.expand(2, *rows.shape).clone()
    bad[1, 1, 2] = M
    with pytest.raises(IndexError, match=rf"rows\[2\] = {M} is out of range \[0, {M}\)"):
        torch.func.vmap(torch.func.vmap(lt.sampled_product))(U2, V2, bad, cols.expand(2, *cols.shape))


def test_vmap_checks_each_elements_shapes_as_the_operator_does():
    """Per-element shapes the operator refuses (a 3-D U, 2-D coordinates) are flattened into the
    stacked problem and computed instead of refused."""
    U, V, rows, cols, vals = _data()
    with pytest.raises(ValueError, match="sampled_product: U must have 2 dimensions"):
        lt.sampled_product(U[0].unsqueeze(1), V[0], rows[0], cols[0])  # eager: refused
    with pytest.raises(ValueError, match="sampled_product: U must have 2 dimensions"):
        torch.func.vmap(lt.sampled_product)(U.unsqueeze(2), V, rows, cols)
    rows_2d, cols_2d, vals_2d = rows[:, :4].reshape(S, 2, 2), cols[:, :4].reshape(S, 2, 2), vals[:, :4].reshape(S, 2, 2)
    with pytest.raises(ValueError, match="sparse_times_dense: vals must have 1 dimensions"):
        torch.func.vmap(lambda r_, c_, v, B: lt.sparse_times_dense(r_, c_, v, B, M))(rows_2d, cols_2d, vals_2d, V)


def test_vmap_over_no_elements_gives_empty_results():
    """A vmapped dimension of size 0 (torch's own operators return empty results) is refused
    with a message about the user's arguments that is false: "n_rows must be >= 1, got 0" for
    n_rows = 7, "U is empty"."""
    U, V, rows, cols, vals = _data()
    spmm = torch.func.vmap(lambda v: lt.sparse_times_dense(rows[0], cols[0], v, V[0], M))(vals[:0])
    assert spmm.shape == (0, M, R)
    sampled = torch.func.vmap(lambda u: lt.sampled_product(u, V[0], rows[0], cols[0]))(U[:0])
    assert sampled.shape == (0, NNZ)
