"""Mixture matrix completion benchmark: lowrank_hpc.MixtureCompletion against a straightforward
numpy implementation of the same algorithm (the peer a user would write), in the same run.

    PYTHONPATH=python python bench/bench_mixture.py            # the small case
    PYTHONPATH=python python bench/bench_mixture.py --large    # and the large one (the peer takes many minutes)

Both run recover/mixture_completion.py's algorithm with the same settings (the defaults: 8
restarts, 200 annealing steps at decay 0.96, hard rounds of 2 ALS sweeps, the row/column repair) from the same random
factors, in float64. The peer's ALS is what a numpy user writes: per-row normal equations
gathered with np.bincount (r^2 + r of them) and solved by a batched np.linalg.solve, a loop over
the restarts x components, predictions by an einsum over gathered factor rows. The repair
(host numpy in both, small r x r solves) is the same function in both, so the ratio measures the
rest. One timed run each (a run is seconds). Each row reports both wall times, the ratio, and
both final results (assignment accuracy and worst component error up to permutation), which
must both reach the planted truth for the row to count.

- small: the test's problem, 300 x 300, K = 2 components of rank 3, 40% observed.
- large: 1,000 x 1,000, K = 2 of rank 5, 15% observed (150,000 entries).
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, machine_line  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc.recover.mixture_completion import (DEFAULT_ANNEAL_DECAY, DEFAULT_ANNEAL_ITER,  # noqa: E402
                                                    DEFAULT_INNER_ITER, DEFAULT_REPAIR_ROUNDS,
                                                    DEFAULT_REPAIR_TRIALS, DEFAULT_RESTARTS, _repair)

REG = 1e-6


# ---------------------------------------------------------------------- the peer: numpy
def numpy_als_sweep(rows, cols, vals, shape, V, reg):
    """One ALS iteration (U given V, then V given U) by per-row normal equations."""
    def side(keys, others, n_key, F):
        r = F.shape[1]
        Fg = F[others]
        gram = np.empty((n_key, r, r))
        for a in range(r):
            for b in range(a, r):
                gram[:, a, b] = gram[:, b, a] = np.bincount(keys, weights=Fg[:, a] * Fg[:, b], minlength=n_key)
        rhs = np.stack([np.bincount(keys, weights=Fg[:, a] * vals, minlength=n_key) for a in range(r)], axis=1)
        gram[:, np.arange(r), np.arange(r)] += reg
        return np.linalg.solve(gram, rhs[..., None])[..., 0]

    U = side(rows, cols, shape[0], V)
    return U, side(cols, rows, shape[1], U)


def numpy_mixture(rows, cols, vals, shape, K, rank, seed, restarts=DEFAULT_RESTARTS, anneal_iter=DEFAULT_ANNEAL_ITER,
                  decay=DEFAULT_ANNEAL_DECAY, max_iter=50, inner=DEFAULT_INNER_ITER, trials=DEFAULT_REPAIR_TRIALS,
                  rounds=DEFAULT_REPAIR_ROUNDS):
    rng = np.random.default_rng(seed)
    (n1, n2), R = shape, restarts
    scale = np.sqrt(np.sqrt(np.mean(vals ** 2)) / np.sqrt(rank))
    U = (scale * rng.standard_normal((R * K, n1, rank))).reshape(R, K, n1, rank)
    V = (scale * rng.standard_normal((R * K, n2, rank))).reshape(R, K, n2, rank)

    def predict(U, V):
        return np.einsum("abic,abic->abi", U[:, :, rows], V[:, :, cols])

    def refit(U, V, labels, sweeps):
        for a in range(U.shape[0]):
            for k in range(K):
                mine = labels[a] == k
                for _ in range(sweeps):
                    U[a, k], V[a, k] = numpy_als_sweep(rows[mine], cols[mine], vals[mine], shape, V[a, k], REG)
        return U, V

    prediction = predict(U, V)
    scale = ((prediction - vals) ** 2).mean(axis=(1, 2))[:, None, None]
    for _ in range(anneal_iter):
        residual = (prediction - vals) ** 2
        logits = -residual / (2 * scale)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        targets = weights * vals + (1 - weights) * prediction
        for a in range(R):
            for k in range(K):
                U[a, k], V[a, k] = numpy_als_sweep(rows, cols, targets[a, k], shape, V[a, k], REG)
        prediction = predict(U, V)
        scale = scale * decay

    def hard(U, V, labels):
        previous = None
        for _ in range(max_iter):
            U, V = refit(U, V, labels, inner)
            residual = (predict(U, V) - vals) ** 2
            new = residual.argmin(axis=1)
            objective = 0.5 * residual.min(axis=1).sum(axis=1)
            settled = (new == labels).all(axis=1)
            if previous is not None:
                settled |= np.abs(previous - objective) <= 1e-9 * previous
            previous, labels = objective, new
            best = int(np.argmin(objective))
            if settled.all() or (settled[best] and np.all(np.delete(objective, best) > objective[best])):
                break
        return U, V, labels, objective

    U, V, labels, objective = hard(U, V, ((prediction - vals) ** 2).argmin(axis=1))
    best = int(np.argmin(objective))
    U, V, labels = U[best:best + 1].copy(), V[best:best + 1].copy(), labels[best:best + 1].copy()
    for _ in range(rounds):
        count = _repair(rows, cols, vals, labels[0], U[0], V[0], trials, rng, REG)
        count += _repair(cols, rows, vals, labels[0], V[0], U[0], trials, rng, REG)
        if count == 0:
            break
        U, V, labels, _ = hard(U, V, labels)
    return U[0], V[0], labels[0]


# ---------------------------------------------------------------------- problem and measures
def planted(seed, n1, n2, rank, K, fraction):
    rng = np.random.default_rng(seed)
    factors = [(rng.standard_normal((n1, rank)), rng.standard_normal((n2, rank))) for _ in range(K)]
    nnz = int(fraction * n1 * n2)
    cells = rng.choice(n1 * n2, nnz, replace=False)
    rows, cols = cells // n2, cells % n2
    labels = rng.integers(0, K, nnz)
    vals = np.empty(nnz)
    for k, (A, B) in enumerate(factors):
        mine = labels == k
        vals[mine] = np.einsum("ij,ij->i", A[rows[mine]], B[cols[mine]])
    return rows, cols, vals, labels, factors


def quality(U, V, labels, true_labels, factors):
    """(accuracy, worst relative component error) under the best permutation."""
    best = (0.0, np.inf)
    for perm in itertools.permutations(range(len(factors))):
        accuracy = float(np.mean(np.asarray(perm)[true_labels] == labels))
        error = 0.0
        for k, (A, B) in enumerate(factors):
            truth = A @ B.T
            error = max(error, np.linalg.norm(U[perm[k]] @ V[perm[k]].T - truth) / np.linalg.norm(truth))
        if accuracy > best[0]:
            best = (accuracy, error)
    return best


def run_case(name, n1, n2, rank, K, fraction, seed=0):
    rows, cols, vals, true_labels, factors = planted(seed, n1, n2, rank, K, fraction)
    start = time.perf_counter()
    # The solver's seed differs from the problem's: the same stream would start it at the planted factors.
    model = lr.MixtureCompletion(n_components=K, rank=rank, random_state=seed + 1000).fit(rows, cols, vals,
                                                                                         shape=(n1, n2))
    ours_s = time.perf_counter() - start
    ours = quality(model.U_, model.V_, model.labels_, true_labels, factors)
    start = time.perf_counter()
    U, V, labels = numpy_mixture(rows, cols, vals, (n1, n2), K, rank, seed + 1000)
    peer_s = time.perf_counter() - start
    peer = quality(U, V, labels, true_labels, factors)
    note = (f"accuracy / worst error: ours {ours[0]:.4f} / {ours[1]:.1e}, numpy {peer[0]:.4f} / {peer[1]:.1e}")
    case = f"{name}: {n1} x {n2}, K = {K}, rank {rank}, {fraction:.0%} observed ({vals.shape[0]:,} entries)"
    return Row("MixtureCompletion.fit", case, ours_s, "numpy, same algorithm", peer_s, note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="also the large case")
    args = parser.parse_args()
    threads = lr.info().get("openmp_threads", os.cpu_count())
    print(f"Machine: {machine_line(threads)}; load average {os.getloadavg()[0]:.2f}")
    cases = [("small", 300, 300, 3, 2, 0.4)] + ([] if not args.large else [("large", 1000, 1000, 5, 2, 0.15)])
    rows = [run_case(*case) for case in cases]
    print(HEADER)
    for row in rows:
        print(row.markdown())
    for row in rows:
        print(f"{row.case}: {row.speedup:.2f}x faster than numpy ({row.ours_s:.2f} s vs {row.peer_s:.2f} s)")


if __name__ == "__main__":
    main()
