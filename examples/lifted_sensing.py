"""Lifting turns a spurious local minimum into a strict saddle (Ma, Lavaei and Sojoudi, NeurIPS
2023): perturbed matrix completion of M* = 1 1^T (off-diagonal-block entries weighted sqrt(eps)),
where plain factored GD from a bad start stays at x = (1, .., 1, -1, .., -1) for eps < 1/3.
For each eps and level: GD on the lifted problem started next to the spurious point (does it
escape?) and from small random starts (how many of the seeds find M*).

    python examples/lifted_sensing.py            # n = 4, levels 1 to 3
    python examples/lifted_sensing.py --paper    # n = 6, levels 1 to 3, more eps and seeds

The level a given eps needs grows as eps -> 0 (the operator's restricted isometry worsens): at
n = 4 the spurious tensor is a strict saddle of the level-2 lifting for eps > 0.168 and of the
level-3 lifting for eps > 0.112 (see lifted_sensing's docstring).
"""
import sys
import time

import numpy as np

import lowrank_hpc as lr

paper = "--paper" in sys.argv[1:]
n = 6 if paper else 4
epsilons = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3) if paper else (0.1, 0.15, 0.2, 0.3)
seeds = range(5 if paper else 3)
levels = (1, 2, 3)


truth = np.ones((n, n))
bad = np.r_[np.ones(n // 2), -np.ones(n - n // 2)] + 0.05 * np.random.default_rng(0).standard_normal(n)
print(f"perturbed completion of 1 1^T, n = {n}; error = ||X - M*||_F / n, success = error < 1e-4")
print("   eps  level  from the bad start: error   from small starts: successes   seconds")
start = time.perf_counter()
for eps in epsilons:
    A, y = lr.recover.perturbed_completion(n, eps)
    for level in levels:
        tic = time.perf_counter()
        escaped = lr.recover.lifted_sensing(A, y, level=level, init=bad, max_iter=3000, tol=1e-7)
        successes = sum(
            np.linalg.norm(lr.recover.lifted_sensing(A, y, level=level, init_scale=1e-3, max_iter=3000, tol=1e-7,
                                                     seed=seed).X - truth) / n < 1e-4
            for seed in seeds)
        error = np.linalg.norm(escaped.X - truth) / n
        print(f"{eps:6.2f}  {level:5d}  {error:26.2e}   {successes:>20d} / {len(seeds)}   "
              f"{time.perf_counter() - tic:7.1f}")
print(f"total {time.perf_counter() - start:.1f} s")
