"""One gradient step of matrix completion with the core kernels: two sampled products and two
sparse-times-dense calls, never an m x n matrix.

    python examples/completion_gradient.py
"""
import numpy as np

import lowrank_hpc as lr

rng = np.random.default_rng(0)
m, n, true_rank, nnz = 2000, 1500, 5, 100_000
truth_u = rng.standard_normal((m, true_rank))
truth_v = rng.standard_normal((n, true_rank))
rows = rng.integers(0, m, nnz).astype(np.int64)
cols = rng.integers(0, n, nnz).astype(np.int64)
observed = lr.ops.sampled_product(truth_u, truth_v, rows, cols)

pattern = lr.ops.SparsePattern(rows, cols, (m, n))  # sorted once, reused every step
U = 0.1 * rng.standard_normal((m, true_rank))
V = 0.1 * rng.standard_normal((n, true_rank))
step = 0.5 * m * n / nnz / np.linalg.norm(observed) * np.sqrt(nnz / (m * n))
for iteration in range(301):
    residual = lr.ops.sampled_product(U, V, rows, cols) - observed
    grad_u = pattern.times_dense(residual, V)
    grad_v = pattern.times_dense(residual, U, transpose=True)
    U, V = U - step * grad_u, V - step * grad_v
    if iteration % 100 == 0:
        print(f"iteration {iteration:3d}: relative residual {np.linalg.norm(residual) / np.linalg.norm(observed):.3e}")
