"""One NMF cd iteration taken apart, ours against scikit-learn's pieces, in the same run.

scikit-learn's ``_fit_coordinate_descent`` iteration is, per factor: the Gram (k x k) and the
product with X (numpy/scipy, one BLAS thread here), then ``_update_cdnmf_fast`` (Cython, one
thread). Ours (``recover.nmf._CD``) is the same GEMMs on one BLAS thread, the library's CSR
kernel for sparse X (OpenMP), and ``hals_sweep`` (OpenMP, SIMD lanes of rows). Each piece is
timed best-of-N; the last rows are whole iterations (sweeps=1, scikit-learn's iterates) as the
two solvers run them.

    python bench/bench_nmf_iteration.py [--quick] [--cases dense,sparse,...]
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))
sys.path.insert(0, os.path.dirname(__file__))
import lowrank_hpc as lr  # noqa: E402
from _timing import best_time  # noqa: E402
from bench_nmf import cases  # noqa: E402
from lowrank_hpc._arrays import for_backend  # noqa: E402
from lowrank_hpc.recover import nmf as solvers  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="half-size problems")
    parser.add_argument("--cases", default="digits,china,camera32,dense,sparse")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from sklearn.decomposition._cdnmf_fast import _update_cdnmf_fast
    from sklearn.decomposition._nmf import _update_coordinate_descent
    from threadpoolctl import threadpool_limits

    table = cases(args.quick)
    module = lr._backend.cpu_module()
    print("| case | piece | scikit-learn, 1 BLAS thread (ms) | ours (ms) | ratio |")
    print("|---|---|---|---|---|")
    for name in args.cases.split(","):
        label, X, params = table[name]
        k = params["n_components"]
        with threadpool_limits(1, "blas"):
            data = solvers.NmfData(for_backend("bench", "cpu"), X if sp.issparse(X) else np.ascontiguousarray(X))
            W, H = solvers.initialize(data, k, None, 0)
            Ht = np.ascontiguousarray(H.T)
            order = np.arange(k, dtype=np.int64)
            violations = np.empty(max(data.shape))
            rows = []

            def piece(what, theirs, ours):
                t_theirs = best_time(theirs, args.repeats) * 1e3
                t_ours = best_time(ours, args.repeats) * 1e3
                rows.append((what, t_theirs, t_ours))

            piece("X H^T", lambda: X @ Ht, lambda: data.times(Ht))
            piece("X^T W", lambda: X.T @ W, lambda: data.transpose_times(W))
            gram, cross = Ht.T @ Ht, data.times(Ht)
            W1, W2 = W.copy(), W.copy()
            piece("one sweep of W (n rows)", lambda: _update_cdnmf_fast(W1, gram, cross, order.astype(np.intp)),
                  lambda: module.hals_sweep(W2, gram, cross, order, 0.0, 0.0, 1, 0.0, violations[:W.shape[0]]))
            W3 = W.copy()
            piece("ten sweeps of W (inner_tol > 0: the sweeps='auto' path)",
                  lambda: [_update_cdnmf_fast(W1, gram, cross, order.astype(np.intp)) for _ in range(10)],
                  lambda: module.hals_sweep(W3, gram, cross, order, 0.0, 0.0, 10, 1e-300, violations[:W.shape[0]]))

            Ws, Hts = W.copy(), Ht.copy()  # scikit-learn's loop keeps W and Ht = H.T in C order

            def theirs_iteration():
                _update_coordinate_descent(X, Ws, Hts, 0.0, 0.0, False, None)
                _update_coordinate_descent(X.T, Hts, Ws, 0.0, 0.0, False, None)

            method = solvers._CD(data, k, solvers.Penalty(), True, False, None, 1)
            Wi, Hti = W.copy(), Ht.copy()
            piece("whole iteration, sweeps=1 (sklearn: its two _update_coordinate_descent)", theirs_iteration,
                  lambda: method.iterate(Wi, Hti))
        for what, t_theirs, t_ours in rows:
            print(f"| {label} | {what} | {t_theirs:.2f} | {t_ours:.2f} | {t_theirs / t_ours:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
