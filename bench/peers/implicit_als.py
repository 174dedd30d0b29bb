"""Peer: ``implicit``'s CPU ALS (Hu, Koren, Volinsky 2008) on an implicit-feedback problem.

Runs in bench/.venvs/implicit. Usage:
``python implicit_als.py PROBLEM.npz RANK ITERATIONS SOLVER REG ALPHA OUT.npz`` with SOLVER
"cg" (implicit's default, 3 CG steps) or "cholesky"; prints one JSON object {"seconds",
"iterations", "version", "threads"} and writes the factors (``user_factors``, ``item_factors``)
to OUT.npz. The .npz holds ``shape``, ``rows``, ``cols``, ``vals`` (interaction strengths).

implicit reads its input as the confidence matrix itself (c = data, times its ``alpha``), so
the same objective as lowrank_hpc's ``implicit_als(alpha=ALPHA)`` is given as data = 1 + ALPHA *
vals with implicit's alpha = 1. float32 (implicit's default dtype), its own OpenMP threads (all
cores), BLAS on one thread as implicit asks. ``seconds`` is one fit of ITERATIONS iterations
after a 1-iteration warm-up fit.
"""
from __future__ import annotations

import json
import sys
import time

import implicit
import numpy as np
import scipy.sparse
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits


def main() -> None:
    path, rank, iterations, solver, reg, alpha, out = sys.argv[1:8]
    data = np.load(path)
    shape = tuple(int(n) for n in data["shape"])
    confidence = (1.0 + float(alpha) * data["vals"]).astype(np.float32)
    user_items = scipy.sparse.csr_matrix((confidence, (data["rows"], data["cols"])), shape=shape)

    def model(n_iterations):
        return AlternatingLeastSquares(factors=int(rank), regularization=float(reg), alpha=1.0, dtype=np.float32,
                                       use_cg=solver == "cg", iterations=n_iterations, random_state=0)

    with threadpool_limits(limits=1, user_api="blas"):
        model(1).fit(user_items, show_progress=False)  # warm-up
        fitted = model(int(iterations))
        start = time.perf_counter()
        fitted.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - start
    np.savez(out, user_factors=np.asarray(fitted.user_factors), item_factors=np.asarray(fitted.item_factors))
    import os
    print(json.dumps({"seconds": seconds, "iterations": int(iterations), "version": implicit.__version__,
                      "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
