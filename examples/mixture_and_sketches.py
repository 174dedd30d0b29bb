"""Two recovery models beyond plain completion:

1. Mixture matrix completion: every observed entry of a ratings-like matrix comes from one of
   two low-rank matrices (two people sharing an account, two regimes of a sensor), which one
   unknown. ``MixtureCompletion`` finds both matrices and labels each entry.
2. Recovery from decentralized sketches: each column of a low-rank matrix is compressed on its
   own device to L << n1 numbers by its own random matrix; the columns together still recover
   it (``recover.from_column_sketches``).

    python examples/mixture_and_sketches.py
"""
import numpy as np

import lowrank_hpc as lr

rng = np.random.default_rng(0)

# 1. Mixture completion: two rank-2 matrices, 50% of the cells observed, each from one of them.
n1, n2, rank = 120, 100, 2
truths = [rng.standard_normal((n1, rank)) @ rng.standard_normal((rank, n2)) for _ in range(2)]
cells = rng.choice(n1 * n2, n1 * n2 // 2, replace=False)
rows, cols = cells // n2, cells % n2
source = rng.integers(0, 2, cells.shape[0])
vals = np.stack(truths)[source, rows, cols]
model = lr.MixtureCompletion(n_components=2, rank=rank, random_state=1).fit(rows, cols, vals, shape=(n1, n2))
# Components come back in either order: match them to the truth by the labels.
first = 0 if np.mean(model.labels_ == source) > 0.5 else 1
accuracy = np.mean((model.labels_ == source) if first == 0 else (model.labels_ != source))
for k in range(2):
    U, V = model.factors_[k if first == 0 else 1 - k]
    error = np.linalg.norm(U @ V.T - truths[k]) / np.linalg.norm(truths[k])
    print(f"mixture component {k}: relative error {error:.1e}")
print(f"mixture: {accuracy:.1%} of the entries assigned to their source, objective "
      f"{model.objective_history_[0]:.3g} -> {model.objective_history_[-1]:.3g} in {model.n_iter_} steps")

# 2. Column sketches: a rank-2 40 x 30 matrix, each column seen through 20 Gaussian sketches
#    (factored GD needs fewer: see bench/bench_sketch_phase_transition.py).
X = rng.standard_normal((40, 2)) @ rng.standard_normal((2, 30))
op = lr.sensing.ColumnSketch(20, X.shape, seed=7)   # A_j (20 x 40), one per column
y = op.forward(X)                                   # y_j = A_j x_j, 20 numbers per column
for method in lr.recover.SKETCH_METHODS:
    result = lr.recover.from_column_sketches(op, y, rank=2, method=method, seed=0)
    error = np.linalg.norm(result.U @ result.V.T - X) / np.linalg.norm(X)
    print(f"sketches, {method}: relative error {error:.1e} after {result.n_iter} iterations ({result.stop_reason})")
