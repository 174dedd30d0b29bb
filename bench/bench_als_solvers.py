"""ALS row solvers: exact (Cholesky of each row's normal equations) against conjugate gradients.

    PYTHONPATH=python python bench/bench_als_solvers.py                       # 60,000 x 12,000, 2M entries
    PYTHONPATH=python python bench/bench_als_solvers.py --shape 20000,5000 --nnz 500000 --ranks 16,64

Distinct random positions (float32 N(0, 1) values, int32 indices), ``als(..., solver=S,
max_iter=N, tol=0, seed=0)`` for S in cholesky and cg (the default 5 steps), after a one-iteration warm-up:
seconds per iteration (the whole call over N) and the loss after N iterations. Both start from
the same seeded V.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc.recover import als  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="60000,12000")
    parser.add_argument("--nnz", type=int, default=2_000_000)
    parser.add_argument("--ranks", default="32,64,128")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--solvers", default="cholesky,cg", help="cholesky and/or cg")
    args = parser.parse_args()
    solvers = args.solvers.split(",")
    m, n = (int(x) for x in args.shape.split(","))
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, m * n, args.nnz, dtype=np.int64))
    rows, cols = (keys // n).astype(np.int32), (keys % n).astype(np.int32)
    vals = rng.standard_normal(keys.shape[0], dtype=np.float32)
    print(f"### bench_als_solvers.py, {datetime.date.today().isoformat()}")
    threads = lr.info()["openmp_threads"]
    print(f"Machine: {machine_line(threads)}, CPU level {lr.info()['cpu_level']}, 1-minute load average "
          f"{os.getloadavg()[0]:.1f} at the start.")
    print(f"Command: `PYTHONPATH=python python bench/bench_als_solvers.py --shape {args.shape} --nnz {args.nnz} "
          f"--ranks {args.ranks} --iterations {args.iterations} --solvers {args.solvers}`")
    print(f"{m:,} x {n:,}, {keys.shape[0]:,} distinct entries, float32, reg 0.1; seconds per iteration and the loss "
          f"after {args.iterations} iterations.\n")
    print("| r | cholesky (s/iter) | cg (s/iter) | cholesky / cg | loss cholesky | loss cg |\n|---|---|---|---|---|---|")
    for r in (int(x) for x in args.ranks.split(",")):
        measured = {}
        for solver in solvers:
            als(rows, cols, vals, (m, n), r, solver=solver, max_iter=1, seed=0)
            start = time.perf_counter()
            result = als(rows, cols, vals, (m, n), r, solver=solver, max_iter=args.iterations, tol=0.0, seed=0)
            measured[solver] = ((time.perf_counter() - start) / args.iterations, float(result.history["loss"][-1]))
        (exact_s, exact_loss), (cg_s, cg_loss) = (measured.get(name, (np.nan, np.nan)) for name in ("cholesky", "cg"))
        cells = [f"{exact_s:.2f}", f"{cg_s:.2f}", f"{exact_s / cg_s:.1f}x", f"{exact_loss:.1f}", f"{cg_loss:.1f}"]
        print("| " + " | ".join([str(r)] + [cell if "nan" not in cell else "-" for cell in cells]) + " |",
              flush=True)


if __name__ == "__main__":
    main()
