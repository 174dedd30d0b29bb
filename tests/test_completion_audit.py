"""Audit of the completion solvers against independent float64 references: DistributedALS
against recover.als, ALS / implicit-ALS half-steps against per-row numpy solves."""
from __future__ import annotations

import numpy as np
import pytest

from lowrank_hpc import _backend
from lowrank_hpc.distributed import DistributedALS
from lowrank_hpc.recover import als


def ridge_rows(keys, others, vals, F, n_key, reg):
    """Each row's ridge solution (F_S^T F_S + reg I)^-1 F_S^T v_S in float64 (numpy's solve)."""
    out = np.zeros((n_key, F.shape[1]))
    for i in range(n_key):
        mine = keys == i
        G = F[others[mine]].T @ F[others[mine]] + reg * np.eye(F.shape[1])
        out[i] = np.linalg.solve(G, F[others[mine]].T @ vals[mine])
    return out


def entries(m=120, n=100, observed=0.8, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = np.nonzero(rng.random((m, n)) < observed)
    return rows, cols, rng.standard_normal(rows.size)


@pytest.mark.skipif(_backend.HAS_CUDA, reason="backend='auto' solves on the GPU here, whose kernel takes CG at this rank")
def test_distributed_als_auto_runs_the_exact_solver_recover_als_runs_on_the_cpu():
    # float64 at rank 80: the exact row system (r^2 + r numbers) exceeds the CUDA kernel's shared
    # memory, but a CPU-only run takes exact solves in recover.als; DistributedALS ran CG there.
    m, n, rank, reg = 120, 100, 80, 0.1
    rows, cols, vals = entries(m, n)
    V0 = np.random.default_rng(1).standard_normal((n, rank))
    U1 = ridge_rows(rows, cols, vals, V0, m, reg)
    V1 = ridge_rows(cols, rows, vals, U1, n, reg)
    alone = als(rows, cols, vals, (m, n), rank, reg, init=V0, max_iter=1, tol=0)
    fitted = DistributedALS(rank, reg, max_iter=1, tol=0, n_shards=2).fit(rows, cols, vals, shape=(m, n), init=V0)
    assert alone.info["solver"] == fitted.result_.info["solver"] == "cholesky"
    np.testing.assert_allclose(fitted.U_, U1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fitted.V_, V1, rtol=0, atol=1e-8)
    np.testing.assert_allclose(fitted.result_.history["loss"], alone.history["loss"], rtol=1e-12)


@pytest.mark.parametrize("pattern", ["one_row", "one_row_float32", "two_blocks"])
def test_observed_spectral_norm_when_the_krylov_space_is_exhausted(pattern):
    # 400 x 300 takes the Lanczos path (above the dense SVD's size). With one observed row, A v_1
    # spans A's range, the second step's u is exactly 0, and the last beta was dropped: 0.71
    # instead of 13.6; soft_impute's default reg (norm / 50) came out 19x too small.
    from lowrank_hpc.recover import observed_spectral_norm, soft_impute
    rng = np.random.default_rng(3)
    m, n = 400, 300
    mask = np.zeros((m, n), dtype=bool)
    mask[0, :200] = True
    if pattern == "two_blocks":
        mask[5, 250:] = True
    rows, cols = np.nonzero(mask)
    vals = rng.standard_normal(rows.size).astype(np.float32 if pattern.endswith("float32") else np.float64)
    dense = np.zeros((m, n))
    dense[rows, cols] = vals
    expected = np.linalg.svd(dense, compute_uv=False)[0]
    assert observed_spectral_norm(rows, cols, vals, (m, n)) == pytest.approx(expected, rel=1e-12)
    fitted = soft_impute(rows, cols, vals, (m, n), 1, max_iter=0, seed=0)
    assert fitted.info["reg"] == pytest.approx(expected / 50, rel=1e-12)


@pytest.mark.parametrize("m", [2, 3])
def test_observed_spectral_norm_of_a_wide_matrix_that_runs_out_of_steps(m):
    """With m rows the bidiagonalisation has m steps; the last one's beta counts too (it was
    dropped: 2 x 2,200,000 gave 8.78 for 9.05). 2,200,000 columns take the Lanczos path."""
    from lowrank_hpc.recover import observed_spectral_norm
    rng = np.random.default_rng(1)
    n, k = 2_200_000, 200
    cols = rng.choice(n, k, replace=False)
    rows, vals = rng.integers(0, m, k), rng.standard_normal(k)
    compact = np.zeros((m, k))  # the observed columns alone: the same singular values
    compact[rows, np.arange(k)] = vals
    expected = np.linalg.svd(compact, compute_uv=False)[0]
    assert observed_spectral_norm(rows, cols, vals, (m, n), seed=0) == pytest.approx(expected, rel=1e-12)


def test_batched_factored_gd_takes_offsets_as_a_list_like_batched_als():
    from lowrank_hpc.recover import batched_factored_gd, factored_gd
    from lowrank_hpc.sensing import EntrySampling
    rng = np.random.default_rng(4)
    m, n, batch = 12, 10, 3
    parts = [np.nonzero(rng.random((m, n)) < 0.6) for _ in range(batch)]
    rows = np.concatenate([p[0] for p in parts])
    cols = np.concatenate([p[1] for p in parts])
    vals = rng.standard_normal(rows.size)
    offsets = [0] + list(np.cumsum([p[0].size for p in parts]))
    result = batched_factored_gd(rows, cols, vals, offsets, (m, n), 2, step=0.05, max_iter=20, tol=0, seed=9)
    for b in range(batch):
        s = slice(offsets[b], offsets[b + 1])
        one = factored_gd(EntrySampling(rows[s], cols[s], (m, n)), vals[s], 2, step=0.05, max_iter=20, tol=0,
                          seed=9 + b)
        np.testing.assert_array_equal(result.U[b], one.U)
        np.testing.assert_array_equal(result.V[b], one.V)
