"""Boolean matrix factorization (Elbmf) benchmark: lowrank_hpc.recover.boolean_mf against a
straightforward numpy implementation of shared/specs/elbmf.md, the peer a user would write.

    PYTHONPATH=python python bench/bench_boolean_mf.py            # both cases
    PYTHONPATH=python python bench/bench_boolean_mf.py --quick    # smaller, for a smoke run

Both run the same algorithm (PALM, the spec's defaults kappa 0.01, lambda 0.02, c 1.02,
non-negative prox) from the same seeded Uniform[0, 1) start in float64, so they follow the same
iterates: the row reports the wall time of each to its final loss, the iterations and both final
losses (which must agree to 1e-6 relative for the row to count). A second row runs ours in
float32 (A is exact in float32, the factors round differently), against the same peer run.
One timed run each: a run is hundreds of iterations, long against the timer's resolution.

- dense: 2,000 x 1,500 overlapping tiles (k = 10) with 1% of the bits flipped, k = 10, run to the
  spec's stopping rule (|loss change| < 1e-8, at most 3,000 iterations). The peer forms the loss
  as a user would, ||A - U V||_F^2 of the dense matrices.
- sparse: 50,000 x 5,000 at 1% density (ten 1,000 x 250 tiles plus 0.05% random ones) as
  scipy.sparse CSR, k = 10, a fixed 300 iterations (tol 0) so the peer's run stays in minutes.
  The peer cannot form U V (2 GB): it uses scipy's sparse products and the Gram expansion
  |A| - 2 <A V^T, U> + <U^T U, V V^T> for the loss (one more sparse product per iteration).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, machine_line  # noqa: E402

import lowrank_hpc  # noqa: E402
from lowrank_hpc.recover import boolean_mf  # noqa: E402

KAPPA, LAMBDA, GROWTH = 0.01, 0.02, 1.02


# ---------------------------------------------------------------------- the peer: numpy, as the spec reads
def prox(x, k, l):
    y = np.where(x <= 0.5, (x - k * np.sign(x)) / (1 + l), (x - k * np.sign(x - 1) + l) / (1 + l))
    return np.maximum(y, 0)


def numpy_elbmf(A, U, V, max_iter, tol):
    """PALM for 1/2 ||A - U V||^2 + R(U) + R(V), U (n, k), V (k, m); A dense or scipy.sparse."""
    sparse = scipy.sparse.issparse(A)
    At = A.T.tocsr() if sparse else A.T
    ones = A.sum() if sparse else None
    last = np.inf
    losses = []
    for t in range(max_iter):
        lam = LAMBDA * GROWTH ** t
        VVt = V @ V.T
        step = 1 / (1.1 * max(np.linalg.norm(VVt), 1e-4))
        U = prox(U - step * (U @ VVt - A @ V.T), KAPPA * step, lam * step)
        UtU = U.T @ U
        step = 1 / (1.1 * max(np.linalg.norm(UtU), 1e-4))
        V = prox(V.T - step * (V.T @ UtU - At @ U), KAPPA * step, lam * step).T
        if sparse:
            loss = ones - 2 * np.sum(U * (A @ V.T)) + np.sum(UtU * (V @ V.T))
        else:
            loss = np.linalg.norm(A - U @ V) ** 2
        losses.append(loss)
        if abs(last - loss) < tol:
            break
        last = loss
    return U, V, np.asarray(losses)


# ---------------------------------------------------------------------- data
def dense_tiles(n, m, k, noise, seed=0):
    rng = np.random.default_rng(seed)
    W = np.zeros((n, k), dtype=bool)
    H = np.zeros((k, m), dtype=bool)
    for c in range(k):
        W[rng.choice(n, size=int(rng.integers(n // 10, n // 5)), replace=False), c] = True
        H[c, rng.choice(m, size=int(rng.integers(m // 10, m // 5)), replace=False)] = True
    clean = (W.astype(np.float32) @ H.astype(np.float32)) > 0.5
    return (clean ^ (rng.random((n, m)) < noise)).astype(np.float64)


def sparse_tiles(n, m, k, tile_rows, tile_cols, noise, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for _ in range(k):
        r = rng.choice(n, size=tile_rows, replace=False)
        c = rng.choice(m, size=tile_cols, replace=False)
        rows.append(np.repeat(r, tile_cols))
        cols.append(np.tile(c, tile_rows))
    extra = int(noise * n * m)
    rows.append(rng.integers(0, n, extra))
    cols.append(rng.integers(0, m, extra))
    A = scipy.sparse.csr_matrix((np.ones(sum(map(len, rows))), (np.concatenate(rows), np.concatenate(cols))),
                                shape=(n, m))
    A.data[:] = 1.0  # overlapping tiles: a position is one, however many tiles cover it
    return A


# ---------------------------------------------------------------------- one case
def compare(kernel: str, case: str, A, k: int, max_iter: int, tol: float) -> list[Row]:
    """Rows for ours in float64 (the same iterates as the peer) and in float32 (A is exact in
    float32; the iterates differ by rounding, so its final loss is reported, not required to agree)."""
    rng = np.random.default_rng(0)
    U0, V0 = rng.random((A.shape[0], k)), rng.random((k, A.shape[1]))
    start = time.perf_counter()
    _, _, losses = numpy_elbmf(A, U0.copy(), V0.copy(), max_iter, tol)
    peer_s = time.perf_counter() - start
    final_peer = float(losses[-1])
    # The peer with its BLAS on one thread (as ours runs it), timed over a few iterations: how
    # much of the gap is numpy's threads contending with the machine's load.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        start = time.perf_counter()
        numpy_elbmf(A, U0.copy(), V0.copy(), 20, 0.0)
        single_ms = (time.perf_counter() - start) / 20 * 1e3
    rows = []
    for dtype in (np.float64, np.float32):
        start = time.perf_counter()
        ours = boolean_mf(A, k, init=(U0, V0), max_iter=max_iter, tol=tol, dtype=dtype)
        ours_s = time.perf_counter() - start
        final_ours = float(ours.history["loss"][-1])
        agree = abs(final_ours - final_peer) <= 1e-6 * abs(final_peer)
        verdict = "agree to 1e-6" if agree else f"differ by {abs(final_ours - final_peer) / final_peer:.1e} relative"
        note = (f"ours {np.dtype(dtype).name}: {ours.n_iter} its ours, {len(losses)} its numpy ({ours.stop_reason}); "
                f"final loss ours {final_ours:.9g}, numpy {final_peer:.9g} ({verdict}); per iteration ours "
                f"{ours_s / ours.n_iter * 1e3:.2f} ms, numpy {peer_s / len(losses) * 1e3:.2f} ms (with BLAS on one thread "
                f"{single_ms:.2f} ms over 20 its)")
        row = Row(kernel, f"{case}, ours {np.dtype(dtype).name}", ours_s, "numpy transcription of the spec (float64)",
                  peer_s, note)
        print(row.markdown(), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems")
    args = parser.parse_args()
    dense_shape, sparse_shape, tile = ((500, 400), (5000, 1000), (100, 50)) if args.quick else \
        ((2000, 1500), (50_000, 5_000), (1000, 250))
    started = time.perf_counter()
    print(f"Machine: {machine_line(lowrank_hpc.info()['openmp_threads'])}, 1-minute load average "
          f"{os.getloadavg()[0]:.1f} at the start. numpy {np.__version__}, scipy {scipy.__version__}, "
          f"lowrank_hpc {lowrank_hpc.__version__}.")
    print("Command: `PYTHONPATH=python python bench/bench_boolean_mf.py" + (" --quick`" if args.quick else "`"))
    print()
    print(HEADER)
    A = dense_tiles(*dense_shape, 10, 0.01)
    compare("boolean_mf, dense", f"{dense_shape[0]}x{dense_shape[1]} tiles k=10, 1% flips, to tol 1e-8",
            A, 10, 3000, 1e-8)
    S = sparse_tiles(*sparse_shape, 10, *tile, 0.0005)
    density = S.nnz / (S.shape[0] * S.shape[1])
    compare("boolean_mf, sparse CSR", f"{sparse_shape[0]}x{sparse_shape[1]} {density:.2%} dense k=10, 300 its", S, 10, 300, 0.0)
    print(f"\nWhole run {time.perf_counter() - started:.0f} s, 1-minute load average "
          f"{os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
