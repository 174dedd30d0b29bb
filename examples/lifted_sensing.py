"""Lifting turns a spurious local minimum into a strict saddle (Ma, Lavaei and Sojoudi, NeurIPS
2023): perturbed matrix completion of M* = 1 1^T, where plain factored GD from a bad start stays at
x = (1, .., 1, -1, .., -1) and GD on the level-2 lifted problem from a small start finds M*.

    python examples/lifted_sensing.py            # n = 4
    python examples/lifted_sensing.py --paper    # n = 6, levels 1 to 3
"""
import sys

import numpy as np

import lowrank_hpc as lr

paper = "--paper" in sys.argv[1:]
n, eps = (6, 0.2) if paper else (4, 0.2)
levels = (1, 2, 3) if paper else (1, 2)

# Entries within the two diagonal blocks are measured with weight 1, the others with sqrt(eps).
half, matrices = n // 2, []
for i in range(n):
    for j in range(i, n):
        weight = 1.0 if (i < half) == (j < half) else np.sqrt(eps)
        A = np.zeros((n, n))
        A[i, j] = A[j, i] = weight if i == j else weight / np.sqrt(2)
        matrices.append(A)
A = np.array(matrices)
truth = np.ones((n, n))
y = np.einsum("ipq,pq->i", A, truth)
bad = np.r_[np.ones(half), -np.ones(n - half)] + 0.05 * np.random.default_rng(0).standard_normal(n)

print(f"perturbed completion of 1 1^T, n = {n}, eps = {eps}, {len(A)} measurements")
print("level  start   error ||X - M*||_F / n   rank-1 residual   iterations")
for level in levels:
    for name, init in (("bad", bad), ("small", "small")):
        result = lr.recover.lifted_sensing(A, y, level=level, init=init, max_iter=3000, tol=1e-7, seed=0)
        error = np.linalg.norm(result.X - truth) / n
        print(f"{level:5d}  {name:6s} {error:24.2e} {result.info['rank1_residual']:17.1e} {result.n_iter:12d}")
