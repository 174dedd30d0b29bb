"""Same-run A/B timings of one checkout against another (a refactor must not cost speed).

    PYTHONPATH=python python bench/bench_revisions.py                 # this checkout
    PYTHONPATH=/path/to/other/checkout/python python bench/bench_revisions.py   # the other one

Run the two alternately, twice each, on a quiet machine: this shared 2-core VM moves by 30% run
to run, and only a difference that repeats in both pairs is one. Prints one line per case (best
of k, milliseconds): the per-call overhead of a tiny kernel call, the large CSR products, and
whole solver runs (the ALS "rows" kernel, factored_gd on completion). Only public API is used,
so any revision of lowrank_hpc runs it.
"""
from __future__ import annotations

import time

import numpy as np

import lowrank_hpc as lr
from lowrank_hpc.sensing import EntrySampling


def best(f, k: int) -> float:
    times = []
    for _ in range(k):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def main() -> None:
    rng = np.random.default_rng(0)
    cases: list[tuple[str, float]] = []
    small = rng.standard_normal((50, 4))
    r, c = rng.integers(0, 50, 10), rng.integers(0, 50, 10)
    cases.append(("sampled_product, 10 entries (call overhead)", best(lambda: lr.ops.sampled_product(small, small, r, c), 2000)))

    m, n, rank, nnz = 100_000, 20_000, 32, 10**7
    rows = rng.integers(0, m, nnz).astype(np.int32)
    cols = rng.integers(0, n, nnz).astype(np.int32)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    vals = rng.standard_normal(nnz, dtype=np.float32)
    U = rng.standard_normal((m, rank), dtype=np.float32)
    V = rng.standard_normal((n, rank), dtype=np.float32)
    pattern = lr.ops.SparsePattern(rows, cols, (m, n))
    cases.append(("SparsePattern.times_dense, nnz 1e7 r 32", best(lambda: pattern.times_dense(vals, V), 9)))
    cases.append(("SparsePattern.times_dense transpose", best(lambda: pattern.times_dense(vals, U, transpose=True), 9)))
    cases.append(("sampled_product, nnz 1e7 r 32", best(lambda: lr.ops.sampled_product(U, V, rows, cols), 5)))

    size = 512
    M = rng.random((size, 20)) @ rng.random((20, size))
    flat = np.flatnonzero(rng.random(size * size) < 0.5)
    r2, c2, v2 = flat // size, flat % size, M.ravel()[flat]
    cases.append(("als 512x512 r 20, 10 its (rows kernel)", best(
        lambda: lr.recover.als(r2, c2, v2, (size, size), 20, 0.1, reg_scaling="count", max_iter=10, tol=0.0, seed=0), 5)))

    size, rank = 2000, 10
    A, B = rng.standard_normal((size, rank)), rng.standard_normal((size, rank))
    flat = rng.choice(size * size, int(0.05 * size * size), replace=False)
    r3, c3 = flat // size, flat % size
    y = np.einsum("kr,kr->k", A[r3], B[c3]).astype(np.float32)
    op = EntrySampling(r3, c3, (size, size))
    cases.append(("factored_gd gd completion 2000^2 r 10, per it", best(
        lambda: lr.recover.factored_gd(op, y, rank, max_iter=30, tol=0.0, seed=0, step=0.01), 3) / 30))
    for name, ms in cases:
        print(f"{name:55s} {ms:10.3f} ms")


if __name__ == "__main__":
    main()
