"""Guess & Check against gradient descent on matrix completion (Alexander, Slutzky, Ran-Milo and
Cohen, NeurIPS 2025): draw deep factorizations W = W_d ... W_1 from a Gaussian prior, keep those
that fit the observed entries, and compare their error on the hidden entries with GD's.

    python examples/guess_and_check.py            # seconds: 2^16 draws per setting
    python examples/guess_and_check.py --paper    # 2^20 draws per setting, widths to 32, depths to 6

The paper's effects (deeper: better; wider: worse) need many accepted draws to rise above the
noise of the mean test MSE: tol = 0.1 accepts about 3% of the draws here (tol = 0.01: 0.005%,
10-20 of 2^18, where the effect does not show). BENCHMARKS.md records the --paper table.
"""
import sys

import numpy as np

import lowrank_hpc as lr

paper = "--paper" in sys.argv[1:]
draws = 2 ** 20 if paper else 2 ** 16
widths = (2, 4, 8, 16, 32) if paper else (2, 8)
depths = (2, 3, 4, 6) if paper else (2, 6)
tol = 0.1

rng = np.random.default_rng(0)
n = 3
W = np.outer(rng.standard_normal(n), rng.standard_normal(n))
W /= np.sqrt(np.mean(W ** 2) * n)                     # entries of variance 1/n, the prior's scale
flat = rng.permutation(n * n)
train_at, test_at = flat[:6], flat[6:]                # 6 observed entries, 3 hidden
train = (train_at // n, train_at % n, W.flat[train_at])
test = (test_at // n, test_at % n, W.flat[test_at])

print(f"rank-1 {n} x {n} matrix, {train_at.size} observed entries, {draws} draws per setting, tol {tol}")
print("width depth  accepted  G&C test MSE (+- s.e.)   GD test MSE   zero guess   draws/s")
for depth in depths:
    for width in widths:
        result = lr.research.guess_and_check(train, (n, n), width=width, depth=depth, n_samples=draws, tol=tol,
                                             test=test, batch_size=2 ** 15, seed=1, compare_gd=depth == 2)
        gd = f"{result.gd_test_loss:12.4f}" if result.gd_test_loss is not None else " " * 12
        error = result.test_loss.std() / np.sqrt(max(result.n_accepted, 1))
        print(f"{width:5d} {depth:5d} {result.n_accepted:9d} {result.test_loss_mean:13.4f} +- {error:.4f}  {gd}  "
              f"{result.baseline_test_loss:11.4f} {result.samples_per_second:9.3g}")
