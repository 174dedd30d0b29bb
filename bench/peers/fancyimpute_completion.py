"""Peer: fancyimpute's SoftImpute or IterativeSVD on a matrix completion problem.

Runs in bench/.venvs/fancyimpute (fancyimpute 0.7 needs scikit-learn < 1.6). Usage:
``python fancyimpute_completion.py PROBLEM.npz SOLVER RANK MAX_ITERS`` with SOLVER SoftImpute or
IterativeSVD; prints one JSON object {"seconds", "test_rmse", "settings", "version"}.

The .npz holds ``shape``, the observed ``rows``, ``cols``, ``vals`` and the held-out
``test_rows``, ``test_cols``, ``test_vals``. fancyimpute takes a dense matrix with NaN where an
entry is missing; building it is the caller's data preparation and is not timed, so
``seconds`` is the solver's fit_transform alone. One run (each takes minutes at full size).
"""
from __future__ import annotations

import json
import sys
import time

import fancyimpute
import numpy as np
import sklearn


def main() -> None:
    data = np.load(sys.argv[1])
    solver_name, rank, max_iters = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if solver_name == "SoftImpute":
        # Default shrinkage (largest singular value of the zero-filled matrix / 50), SVDs
        # truncated at the true rank: the setting the fancyimpute README shows, sped up.
        settings = {"max_rank": rank, "max_iters": max_iters}
        solver = fancyimpute.SoftImpute(verbose=False, **settings)
    elif solver_name == "IterativeSVD":
        # Randomized truncated SVDs instead of the default ARPACK: several times faster on a dense
        # 5,000 x 5,000 matrix and as accurate for a rank-10 target.
        settings = {"rank": rank, "max_iters": max_iters, "svd_algorithm": "randomized"}
        solver = fancyimpute.IterativeSVD(verbose=False, **settings)
    else:
        raise SystemExit(f"unknown solver {solver_name!r}")
    X = np.full(tuple(data["shape"]), np.nan)
    X[data["rows"], data["cols"]] = data["vals"]
    start = time.perf_counter()
    completed = solver.fit_transform(X)
    seconds = time.perf_counter() - start
    error = completed[data["test_rows"], data["test_cols"]] - data["test_vals"]
    print(json.dumps({"seconds": seconds, "test_rmse": float(np.sqrt(np.mean(error ** 2))), "settings": settings,
                      "version": f"fancyimpute {fancyimpute.__version__}, scikit-learn {sklearn.__version__}"}))


if __name__ == "__main__":
    main()
