"""Implicit-feedback ALS: ``lowrank_hpc.recover.implicit_als`` against ``implicit``'s CPU ALS on
the same matrix and objective (Hu, Koren, Volinsky 2008: confidence 1 + alpha v, preference 1 on
the observed pairs, 0 elsewhere, penalty reg (||X||^2 + ||Y||^2)).

    bash bench/setup_peers.sh                                   # once: bench/.venvs/implicit
    PYTHONPATH=python python bench/bench_implicit_als.py        # 60,000 x 12,000, 2M pairs, r = 32, 64, 128
    PYTHONPATH=python python bench/bench_implicit_als.py --quick

The matrix: rows and columns drawn with power-law (Zipf 1.1) weights, DISTINCT (row, col) pairs
(repeats dropped and redrawn), interaction strengths 1 + Poisson(2); float32 for both sides
(implicit's default). Both solvers of each side: our CG against its CG and our exact row solves
against its Cholesky, each row the median of ``--repeats`` runs (``--exact-repeats`` for the
exact solvers) with the two sides interleaved. Both run ``--iterations`` iterations from their own random start (ours:
0.1 N(0, 1) seeded, 0.01 before session 27; implicit: its random_state 0); the table gives seconds per iteration and
each side's objective after them, computed here in float64 by the same formula, so "at equal
loss" can be read off. implicit runs with its OpenMP threads on every core and BLAS on one
thread (what it asks for); ours with its OpenMP kernels and BLAS on one thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc.recover import implicit_als  # noqa: E402
from _timing import Row, machine_line, report, run_peer  # noqa: E402


def interactions(n_rows: int, n_cols: int, nnz: int, seed: int = 0):
    """(rows, cols, vals) of nnz distinct pairs with power-law row and column degrees."""
    rng = np.random.default_rng(seed)
    row_weights = 1.0 / np.arange(1, n_rows + 1) ** 1.1
    col_weights = 1.0 / np.arange(1, n_cols + 1) ** 1.1
    keys = np.zeros(0, dtype=np.int64)
    while keys.shape[0] < nnz:
        draw = 2 * (nnz - keys.shape[0])
        rows = rng.choice(n_rows, draw, p=row_weights / row_weights.sum())
        cols = rng.choice(n_cols, draw, p=col_weights / col_weights.sum())
        keys = np.unique(np.concatenate([keys, rows.astype(np.int64) * n_cols + cols]))
    keys = rng.permutation(keys)[:nnz]
    keys.sort()
    vals = (1 + rng.poisson(2.0, nnz)).astype(np.float32)
    return (keys // n_cols), (keys % n_cols), vals


def objective(rows, cols, vals, X, Y, alpha: float, reg: float) -> float:
    """The implicit-feedback objective of factors X, Y in float64 (the Y^T Y expansion)."""
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    scores = lr.ops.sampled_product(X, Y, rows, cols)
    confidence = 1.0 + alpha * vals.astype(np.float64)
    return float(np.sum((X.T @ X) * (Y.T @ Y)) + np.sum(confidence * (1.0 - scores) ** 2 - scores ** 2)
                 + reg * (np.sum(X * X) + np.sum(Y * Y)))


# (ours, implicit's) solver pairs: CG against its CG (3 steps each), the exact row solves against
# its Cholesky.
SOLVER_PAIRS = (("cg", "cg"), ("exact", "cholesky"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--ranks", default="32,64,128")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each side per CG row (median)")
    parser.add_argument("--exact-repeats", type=int, default=3, help="runs of each side per exact row (median)")
    parser.add_argument("--solvers", default="cg,exact", help="ours: cg and/or exact")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    shape, nnz = ((6000, 1200), 200_000) if args.quick else ((60_000, 12_000), 2_000_000)
    alpha, reg = 1.0, 0.01
    rows, cols, vals = interactions(*shape, nnz)
    wanted = args.solvers.split(",")
    table = []
    with tempfile.TemporaryDirectory() as scratch:
        problem = Path(scratch) / "problem.npz"
        np.savez(problem, shape=np.array(shape), rows=rows, cols=cols, vals=vals)
        for rank in (int(r) for r in args.ranks.split(",")):
            for ours_solver, peer_solver in (pair for pair in SOLVER_PAIRS if pair[0] in wanted):
                repeats = args.repeats if ours_solver == "cg" else args.exact_repeats
                implicit_als(rows, cols, vals, shape, rank, alpha=alpha, reg=reg, max_iter=1, seed=0,
                             solver=ours_solver)  # warm-up
                ours_times, peer_times, peer = [], [], None
                factors = Path(scratch) / f"implicit_{peer_solver}_{rank}.npz"
                for _ in range(repeats):  # the two sides interleaved, so a slow minute of the VM hits both
                    start = time.perf_counter()
                    ours = implicit_als(rows, cols, vals, shape, rank, alpha=alpha, reg=reg,
                                        max_iter=args.iterations, seed=0, solver=ours_solver)
                    ours_times.append((time.perf_counter() - start) / args.iterations)
                    peer, why = run_peer("implicit", "implicit_als.py", problem, rank, args.iterations, peer_solver,
                                         reg, alpha, factors)
                    if peer is not None:
                        peer_times.append(peer["seconds"] / peer["iterations"])
                ours_s = float(np.median(ours_times))
                ours_loss = objective(rows, cols, vals, ours.U, ours.V, alpha, reg)
                case = f"{shape[0]}x{shape[1]}, {nnz:,} distinct pairs, r={rank}, {args.iterations} its, float32"
                if not peer_times:
                    print(f"implicit {peer_solver}, r = {rank}: not measured ({why}); ours {1e3 * ours_s:.1f} ms per "
                          f"iteration, loss {ours_loss:.6g}", flush=True)
                    continue
                saved = np.load(factors)
                peer_s = float(np.median(peer_times))
                peer_loss = objective(rows, cols, vals, saved["user_factors"], saved["item_factors"], alpha, reg)
                kernel = "implicit_als (cg, 3 steps)" if ours_solver == "cg" else "implicit_als (exact)"
                table.append(Row(kernel, case, ours_s, f"implicit {peer['version']} {peer_solver}", peer_s,
                                 f"per iteration, median of {repeats} (ours {min(ours_times):.3f}-"
                                 f"{max(ours_times):.3f} s, implicit {min(peer_times):.3f}-{max(peer_times):.3f} s); "
                                 f"loss after {args.iterations} its: ours {ours_loss:.6g}, implicit {peer_loss:.6g} "
                                 f"({ours_loss / peer_loss - 1:+.2%})"))
                print(table[-1].markdown(), flush=True)
    load = os.getloadavg()[0]
    report("bench_implicit_als.py", machine_line(2, f"1-minute load {load:.1f}"), f"lowrank_hpc {lr.__version__}",
           "PYTHONPATH=python python bench/bench_implicit_als.py" + (" --quick" if args.quick else ""), table,
           str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"), args.write)


if __name__ == "__main__":
    main()
