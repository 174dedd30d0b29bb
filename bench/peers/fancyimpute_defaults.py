"""Peer: fancyimpute's SoftImpute with ITS DEFAULTS (only verbose=False) on a completion problem.

Runs in bench/.venvs/fancyimpute (fancyimpute 0.7 needs scikit-learn < 1.6). Usage:
``python fancyimpute_defaults.py PROBLEM.npz [REPEATS]``; prints one JSON object
{"seconds", "test_rmse", "n_test", "settings", "version"}.

This is what a user gets from ``fancyimpute.SoftImpute().fit_transform(X)``: shrinkage value
= (largest singular value of X with the missing entries zero-filled) / 50, no rank limit
(full SVDs), at most 100 iterations, convergence threshold 0.001, initial fill with zeros. The
.npz holds ``shape``, the observed ``rows``, ``cols``, ``vals`` and the held-out
``test_rows``, ``test_cols``, ``test_vals`` (the format of the other peers). fancyimpute takes a
dense matrix with NaN where an entry is missing; building it is not timed, so ``seconds`` is
fit_transform alone: the best of REPEATS (default 3) fits after one warm-up, as ours is timed
(SoftImpute is deterministic: every fit gives the same result).
"""
from __future__ import annotations

import inspect
import json
import sys
import time

import fancyimpute
import numpy as np
import sklearn


def main() -> None:
    data = np.load(sys.argv[1])
    solver = fancyimpute.SoftImpute(verbose=False)
    defaults = {name: p.default for name, p in inspect.signature(fancyimpute.SoftImpute.__init__).parameters.items()
                if name not in ("self", "verbose") and p.default is not inspect.Parameter.empty}
    X = np.full(tuple(int(n) for n in data["shape"]), np.nan)
    X[data["rows"], data["cols"]] = data["vals"]
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    completed = solver.fit_transform(X.copy())  # warm-up: imports and first-call costs
    seconds = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        completed = solver.fit_transform(X.copy())
        seconds = min(seconds, time.perf_counter() - start)
    error = completed[data["test_rows"], data["test_cols"]] - data["test_vals"]
    print(json.dumps({"seconds": seconds, "test_rmse": float(np.sqrt(np.mean(error ** 2))),
                      "n_test": int(error.shape[0]), "settings": {"defaults": True, **{k: repr(v) for k, v in defaults.items()}},
                      "version": f"fancyimpute {fancyimpute.__version__}, scikit-learn {sklearn.__version__}, "
                                 f"numpy {np.__version__}"}))


if __name__ == "__main__":
    main()
