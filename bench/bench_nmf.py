"""NMF against scikit-learn's NMF: time to reach scikit-learn's final loss, in the same run.

For each case scikit-learn's ``NMF`` runs to its own stopping rule (default tol, the case's
max_iter); its wall time and final ||X - W H||_F are the peer's. Ours then runs from the same
start (the same random_state gives scikit-learn's initialisation) and the clock stops at the
first iteration whose error is <= scikit-learn's final one (the per-iteration loss is read by a
callback whose own time is not counted; the initialisation is). ``sweeps=1`` is scikit-learn's
iteration on our kernels (the same iterates); ``sweeps="auto"`` (accelerated HALS, Gillis &
Glineur) repeats the cheap coordinate sweep per GEMM pair while it still moves the rows.

    python bench/bench_nmf.py [--quick] [--cases dense,sparse,...]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc._arrays import for_backend  # noqa: E402
from lowrank_hpc.recover import nmf as solvers  # noqa: E402


def dense_planted(n, m, k, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, k)) @ rng.random((k, m)) + 0.1 * rng.random((n, m))


def cases(quick: bool):
    from sklearn.datasets import load_digits

    digits = load_digits().data
    scale = 2 if quick else 1
    sparse = sp.random(20000 // scale, 5000 // scale, density=0.01, format="csr",
                       random_state=np.random.RandomState(0), data_rvs=lambda s: np.random.RandomState(1).rand(s) * 5)
    from lowrank_hpc.datasets import load_camera, load_china

    china, camera = load_china(), load_camera()
    planted = dense_planted(4000 // scale, 1000 // scale, 30)
    return {
        "digits": ("digits 1797 x 64, k = 10, cd", digits, dict(n_components=10, solver="cd", max_iter=200)),
        "china": ("china photo 427 x 640, k = 20, cd", china, dict(n_components=20, solver="cd", max_iter=200)),
        "camera32": ("camera photo float32 512 x 512, k = 30, cd", camera.astype(np.float32),
                     dict(n_components=30, solver="cd", max_iter=200)),
        "dense": (f"planted dense {planted.shape[0]} x {planted.shape[1]}, k = 30, cd", planted,
                  dict(n_components=30, solver="cd", max_iter=200)),
        "sparse": (f"sparse {sparse.shape[0]} x {sparse.shape[1]}, 1% nonzero, k = 20, cd", sparse,
                   dict(n_components=20, solver="cd", max_iter=200)),
        "mu": ("china photo 427 x 640, k = 20, mu frobenius", china, dict(n_components=20, solver="mu", max_iter=200)),
        "mu_kl_sparse": (f"sparse {sparse.shape[0]} x {sparse.shape[1]}, 1% nonzero, k = 20, mu kullback-leibler",
                         sparse, dict(n_components=20, solver="mu", beta_loss="kullback-leibler", max_iter=100,
                                      init="nndsvda")),
    }


def sklearn_run(X, params, one_thread=False):
    import contextlib

    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), (threadpool_limits(1, "blas") if one_thread else contextlib.nullcontext()):
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        model = NMF(random_state=0, **params).fit(X)
        seconds = time.perf_counter() - start
    return seconds, float(model.reconstruction_err_), int(model.n_iter_)


def ours_to_target(X, params, target, sweeps):
    """Seconds (initialisation included, callback excluded) until the error <= target, and the
    iterations it took (None if max_iter ran out first)."""
    beta = solvers.beta_value(params.get("beta_loss", "frobenius"))
    excluded = [0.0]
    reached = {}
    start = time.perf_counter()
    call = for_backend("bench", "cpu")
    data = solvers.NmfData(call, X if sp.issparse(X) else np.ascontiguousarray(X))
    W, H = solvers.initialize(data, params["n_components"], params.get("init"), 0, fast=sweeps == "auto")
    W, Ht = np.ascontiguousarray(W), np.ascontiguousarray(H.T)

    def callback(iteration, info):
        entered = time.perf_counter()
        loss = info["loss"]
        if not np.isfinite(loss):
            loss = solvers.beta_divergence(data, info["W"], info["Ht"], beta)
        if "t" not in reached and np.sqrt(2 * max(loss, 0)) <= target * (1 + 1e-12):
            reached["t"] = entered - start - excluded[0]
            reached["n"] = iteration
            raise StopIteration
        excluded[0] += time.perf_counter() - entered

    try:
        solvers.fit(data, W, Ht, solver=params["solver"], beta=beta, tol=0.0, max_iter=params["max_iter"] * 3,
                    penalty=solvers.Penalty(), sweeps=sweeps, callback=callback)
    except StopIteration:
        pass
    return reached.get("t", float("nan")), reached.get("n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="half-size problems")
    parser.add_argument("--cases", default="digits,china,camera32,dense,sparse,mu,mu_kl_sparse")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    table = cases(args.quick)
    print("| case | scikit-learn (s) | sklearn, 1 BLAS thread (s) | its iterations | error | ours sweeps=1 (s) | "
          "iters | ratio | ratio to 1-thread sklearn | ours sweeps=auto (s) | iters | ratio | ratio to 1-thread sklearn | "
          "load average (1 min) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        label, X, params = table[name]
        peer = min((sklearn_run(X, params) for _ in range(args.repeats)), key=lambda r: r[0])
        single = min(sklearn_run(X, params, one_thread=True)[0] for _ in range(args.repeats))
        seconds, target, iterations = peer
        row = [label, f"{seconds:.3f}", f"{single:.3f}", str(iterations), f"{target:.6g}"]
        for sweeps in (1, "auto"):
            if params.get("beta_loss", "frobenius") != "frobenius" and sweeps != 1:
                row += ["-", "-", "-", "-"]
                continue
            ours = min((ours_to_target(X, params, target, sweeps) for _ in range(args.repeats)), key=lambda r: r[0])
            row += [f"{ours[0]:.3f}", str(ours[1]), f"{seconds / ours[0]:.2f}x", f"{single / ours[0]:.2f}x"]
        row.append(f"{os.getloadavg()[0]:.1f}")  # other work on the machine skews every figure
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
