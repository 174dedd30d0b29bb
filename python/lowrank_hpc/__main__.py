"""Command line.

    python -m lowrank_hpc info                 backends, CUDA device, threads and dtypes (JSON)
    python -m lowrank_hpc complete             complete the built-in demo problem and report RMSE
    python -m lowrank_hpc complete --input ratings.csv --rank 20 --output model.npz

``complete`` reads observed entries from a .npz (arrays rows, cols, vals and optionally shape)
or a CSV/TSV of ``row,col,value`` lines (0-based indices; a header line is skipped), holds out
a seeded test fraction, fits, prints a JSON report and optionally saves U and V.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

import numpy as np

DEMO_SHAPE = (2000, 1500)
DEMO_RANK = 10
DEMO_FRACTION = 0.05


def _demo_problem(seed: int):
    """A seeded rank-10 2000 x 1500 matrix with 5% of its entries observed."""
    rng = np.random.default_rng(seed)
    m, n = DEMO_SHAPE
    left = rng.standard_normal((m, DEMO_RANK))
    right = rng.standard_normal((n, DEMO_RANK)) / np.sqrt(DEMO_RANK)
    nnz = int(DEMO_FRACTION * m * n)
    flat = rng.choice(m * n, size=nnz, replace=False)
    rows, cols = (a.astype(np.int64) for a in np.divmod(np.sort(flat), n))
    vals = np.einsum("kr,kr->k", left[rows], right[cols])
    return rows, cols, vals, DEMO_SHAPE


def _read_entries(path: str):
    if path.endswith(".npz"):
        with np.load(path) as data:
            missing = [key for key in ("rows", "cols", "vals") if key not in data]
            if missing:
                raise SystemExit(f"{path}: missing arrays {missing}; expected rows, cols, vals (and optionally shape)")
            rows, cols, vals = (np.ascontiguousarray(data[key]) for key in ("rows", "cols", "vals"))
            shape = tuple(int(s) for s in data["shape"]) if "shape" in data else None
    else:
        delimiter = "\t" if path.endswith((".tsv", ".tab")) else ","
        table = np.genfromtxt(path, delimiter=delimiter, dtype=np.float64, invalid_raise=True)
        table = table[~np.isnan(table).any(axis=1)] if table.ndim == 2 else table
        if table.ndim != 2 or table.shape[1] < 3 or table.shape[0] == 0:
            raise SystemExit(f"{path}: expected lines of row,col,value (numbers, 0-based indices)")
        rows, cols = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        vals, shape = np.ascontiguousarray(table[:, 2]), None
    if shape is None:
        shape = (int(rows.max()) + 1, int(cols.max()) + 1)
    return rows.astype(np.int64), cols.astype(np.int64), vals.astype(np.float64), shape


def _complete(args: argparse.Namespace) -> int:
    from . import ops, recover
    from .sensing import EntrySampling

    rows, cols, vals, shape = _read_entries(args.input) if args.input else _demo_problem(args.seed)
    rng = np.random.default_rng(args.seed)
    test = rng.random(rows.shape[0]) < args.test_fraction
    train = ~test
    fit_rows, fit_cols, fit_vals = (np.ascontiguousarray(a[train]) for a in (rows, cols, vals))
    start = time.perf_counter()
    if args.method == "als":
        result = recover.als(fit_rows, fit_cols, fit_vals, shape, args.rank, args.reg, reg_scaling=args.reg_scaling,
                             max_iter=args.max_iter, tol=args.tol, seed=args.seed, progress=args.progress)
    else:
        result = recover.factored_gd(EntrySampling(fit_rows, fit_cols, shape), fit_vals, args.rank,
                                     method=args.method, init="spectral", max_iter=args.max_iter, tol=args.tol,
                                     seed=args.seed, progress=args.progress)
    seconds = time.perf_counter() - start

    def rmse(mask) -> Optional[float]:
        if not mask.any():
            return None
        r, c = np.ascontiguousarray(rows[mask]), np.ascontiguousarray(cols[mask])
        predicted = ops.sampled_product(result.U, result.V, r, c)
        return float(np.sqrt(np.mean((predicted - vals[mask]) ** 2)))

    report = {"input": args.input or f"demo: rank-{DEMO_RANK} {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]}, "
                                      f"{DEMO_FRACTION:.0%} observed",
              "shape": list(shape), "observed": int(rows.shape[0]), "method": args.method, "rank": args.rank,
              "train_rmse": rmse(train), "test_rmse": rmse(test), "iterations": result.n_iter,
              "converged": bool(result.converged), "stop_reason": result.stop_reason, "seconds": round(seconds, 3),
              "backend": result.backend}
    print(json.dumps(report, indent=2))
    if args.output:
        np.savez(args.output, U=result.U, V=result.V, shape=np.asarray(shape))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="lowrank_hpc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("info", help="backends, CUDA device, threads and dtypes, as JSON")
    show.add_argument("--compact", action="store_true", help="one line of JSON")
    complete = commands.add_parser("complete", help="matrix completion of observed entries (default: a demo)")
    complete.add_argument("--input", help=".npz (rows, cols, vals[, shape]) or CSV/TSV of row,col,value")
    complete.add_argument("--rank", type=int, default=DEMO_RANK)
    complete.add_argument("--method", default="als",
                          choices=["als", "gd", "alternating", "scaled", "scaled_damped", "gd_rebalanced"])
    complete.add_argument("--reg", type=float, default=1e-3, help="ALS ridge penalty")
    complete.add_argument("--reg-scaling", default="none", choices=["none", "count"])
    complete.add_argument("--max-iter", type=int, default=50)
    complete.add_argument("--tol", type=float, default=1e-6)
    complete.add_argument("--test-fraction", type=float, default=0.1, help="held-out share of the entries")
    complete.add_argument("--seed", type=int, default=0)
    complete.add_argument("--progress", action="store_true", help="show a progress bar")
    complete.add_argument("--output", help="save U, V and shape to this .npz")
    args = parser.parse_args(argv)
    if args.command == "info":
        from . import info

        print(json.dumps(info(), indent=None if args.compact else 2))
        return 0
    if not 0 <= args.test_fraction < 1:
        parser.error("--test-fraction must be in [0, 1)")
    return _complete(args)


if __name__ == "__main__":
    sys.exit(main())
