"""ALS benchmark: batched_als against a Python loop over als, and one large completion problem.

    python bench/bench_als.py            # B = 10,000 problems of 30 x 30, and 5000 x 5000 rank 10
    python bench/bench_als.py --quick    # B = 1,000 and 1000 x 1000

Batched: B problems of 30 x 30, rank 2, 50% observed, 10 iterations each (tol=0 so every
problem runs all 10), float64. The loop is timed on a subset of the problems and extrapolated
linearly to B (every problem costs the same: same shape, same iterations).
Large: one 5000 x 5000 rank-10 problem with 2% observed, seconds per ALS iteration (setup and
loss included, averaged over 5 iterations) against a vectorised numpy iteration (rows padded
to their largest count, batched matmul Grams, numpy.linalg.solve), checked to agree.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, best_time  # noqa: E402

from lowrank_hpc.recover import als, batched_als  # noqa: E402


def batched_problems(batch: int, m: int, n: int, rank: int, fraction: float, seed: int = 0):
    """Concatenated (rows, cols, vals, offsets) of ``batch`` noisy rank-``rank`` problems."""
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((batch, m, rank)) @ rng.standard_normal((batch, n, rank)).transpose(0, 2, 1)
    problem, rows, cols = np.nonzero(rng.random((batch, m, n)) < fraction)
    vals = M[problem, rows, cols] + 0.01 * rng.standard_normal(rows.shape[0])
    offsets = np.concatenate([[0], np.cumsum(np.bincount(problem, minlength=batch))]).astype(np.int64)
    return rows.astype(np.int32), cols.astype(np.int32), vals, offsets


def bench_batched(quick: bool) -> list[Row]:
    batch, subset, iterations = (1000, 100, 10) if quick else (10_000, 300, 10)
    rows, cols, vals, offsets = batched_problems(batch, 30, 30, 2, 0.5)
    settings = dict(reg=0.1, max_iter=iterations, tol=0.0)
    ours = best_time(lambda: batched_als(rows, cols, vals, offsets, (30, 30), 2, seed=0, **settings), repeats=3)
    pieces = [(rows[offsets[b]:offsets[b + 1]], cols[offsets[b]:offsets[b + 1]], vals[offsets[b]:offsets[b + 1]])
              for b in range(subset)]

    def loop():
        for b, (r, c, v) in enumerate(pieces):
            als(r, c, v, (30, 30), 2, seed=(0, b), **settings)

    peer = best_time(loop, repeats=2) * batch / subset
    result = batched_als(rows, cols, vals, offsets, (30, 30), 2, seed=0, **settings)
    check = als(*pieces[0], (30, 30), 2, seed=(0, 0), **settings)
    assert np.allclose(result.U[0], check.U) and np.allclose(result.V[0], check.V)
    note = f"{iterations} iterations per problem; loop timed on {subset} problems, extrapolated linearly to {batch}"
    return [Row("batched_als", f"B={batch} 30x30 r=2 50% obs f64", ours, "python loop over als", peer, note)]


def numpy_half_step(keys, others, vals, F, n_key: int, reg: float):
    """Rows of the regularised normal equations solved by padded batched numpy (the peer)."""
    order = np.argsort(keys, kind="stable")
    key = keys[order]
    counts = np.bincount(key, minlength=n_key)
    position = np.arange(key.shape[0]) - np.repeat(np.cumsum(counts) - counts, counts)
    A = np.zeros((n_key, counts.max(), F.shape[1]))
    y = np.zeros((n_key, counts.max(), 1))
    A[key, position] = F[others[order]]
    y[key, position, 0] = vals[order]
    At = A.transpose(0, 2, 1)
    return np.linalg.solve(At @ A + reg * np.eye(F.shape[1]), At @ y)[..., 0]


def bench_large(quick: bool) -> list[Row]:
    size, rank, fraction, iterations = (1000, 10, 0.02, 5) if quick else (5000, 10, 0.02, 5)
    rng = np.random.default_rng(1)
    nnz = int(size * size * fraction)
    rows = rng.integers(0, size, nnz).astype(np.int32)
    cols = rng.integers(0, size, nnz).astype(np.int32)
    vals = np.einsum("kr,kr->k", rng.standard_normal((size, rank))[rows], rng.standard_normal((size, rank))[cols])
    V0 = rng.standard_normal((size, rank)) / np.sqrt(rank)
    ours = best_time(lambda: als(rows, cols, vals, (size, size), rank, reg=0.1, init=V0, max_iter=iterations,
                                 tol=0.0), repeats=2) / iterations

    def peer_iteration():
        U = numpy_half_step(rows, cols, vals, V0, size, 0.1)
        return U, numpy_half_step(cols, rows, vals, U, size, 0.1)

    peer = best_time(peer_iteration, repeats=2)
    one = als(rows, cols, vals, (size, size), rank, reg=0.1, init=V0, max_iter=1)
    U_peer, V_peer = peer_iteration()
    assert np.allclose(one.U, U_peer, rtol=1e-8, atol=1e-8) and np.allclose(one.V, V_peer, rtol=1e-8, atol=1e-8)
    note = f"seconds per iteration, averaged over {iterations} (CSR build and loss included); nnz={nnz:.0e}"
    return [Row("als", f"{size}x{size} r={rank} {fraction:.0%} obs f64", ours, "numpy padded batched solve", peer,
                note)]


def run(quick: bool = False) -> list[Row]:
    """The ALS rows of the benchmark table (printed; bench_solvers.py records the batched case)."""
    return bench_batched(quick) + bench_large(quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = run(quick=args.quick)
    print("\n".join([f"Command: `python bench/bench_als.py{' --quick' if args.quick else ''}`", "", HEADER,
                     *[row.markdown() for row in rows], "", f"({time.perf_counter() - started:.0f} s in all)"]))


if __name__ == "__main__":
    main()
