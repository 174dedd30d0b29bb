"""Over-parameterization and small init, as executable checks at the papers' sizes.

1. Xiong, Ding & Du 2023 ("How over-parameterization slows down gradient descent in matrix
   sensing"): asymmetric factorization (A = I), n = 50, r = 3, width k = 5 > r, step 0.1,
   F0 = alpha G, G0 = alpha/3 G' (G iid N(0, 1)): plain GD stalls for small alpha, exact width
   r and GD with one rebalancing step (``factored_gd(method="gd_rebalanced")``) reach 1e-10 in a
   number of iterations independent of alpha. Spec's independent numbers (iterations to 1e-10,
   plain / rebalanced): alpha 1e-1: 709 / 885; 1e-2: plain stalls at 1.8e-4 after 6000 / 832;
   1e-3: plain stalls at 1.7e-5 / 790.
2. Stoger & Soltanolkotabi 2021: symmetric Gaussian sensing, n = 50, r = 5, M unit nuclear
   norm, m = 3 n r = 750, width r' = n, U0 = sqrt(alpha) I, 5000 steps of 0.5: the error is set
   by alpha (spec: 3.7e-2 at alpha = 1e-3, 3.1e-3 at alpha = 1e-6), as it is at width r.

    python examples/overparameterization.py [--quick] [--plot curves.png]

--quick runs fewer iterations (what tests/test_examples.py runs); --plot draws the convergence
curves (relative error against iteration) with matplotlib.
"""
import argparse

import numpy as np

import lowrank_hpc as lr
from lowrank_hpc.sensing import EntrySampling, GaussianSensing

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
parser.add_argument("--plot", metavar="PATH", help="write the convergence curves to this image")
args = parser.parse_args()


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def error_curve(M, symmetric=False):
    """A callback recording ||X_t - M||_F / ||M||_F, and the list it fills."""
    errors = []

    def record(iteration, state):
        U, V = state["U"], state["V"]
        errors.append(relative(U @ (U if symmetric else V).T, M))
    return record, errors


curves = {}
# ---- 1. Xiong, Ding & Du: the slowdown and its one-step fix --------------------------------
n, r, k = 50, 3, 5
steps = 1000 if args.quick else 6000
rng = np.random.default_rng(1)
M = rng.standard_normal((n, r)) @ rng.standard_normal((r, n)) / n
rows, cols = np.divmod(np.arange(n * n, dtype=np.int64), n)
op = EntrySampling(rows, cols, (n, n))  # every entry: A = I
y = op.forward(M)
print(f"Xiong-Ding-Du, factorization n={n}, r={r}, width k={k}, step 0.1, {steps} steps; iterations to 1e-10:")
for alpha in (1e-1, 1e-2, 1e-3):
    line = []
    for label, method, width in (("plain k", "gd", k), ("rebalanced k", "gd_rebalanced", k), ("exact r", "gd", r)):
        start = np.random.default_rng(0)
        init = (alpha * start.standard_normal((n, width)), (alpha / 3) * start.standard_normal((n, width)))
        record, errors = error_curve(M)
        result = lr.recover.factored_gd(op, y, width, method=method, init=init, step=0.1, max_iter=steps, tol=1e-10,
                                        seed=0, callback=record)
        curves[f"XDD {label}, alpha={alpha:g}"] = errors
        outcome = f"{result.n_iter}" if result.converged else f"stalls at {errors[-1]:.1e} after {result.n_iter}"
        line.append(f"{label}: {outcome}")
    print(f"  alpha={alpha:g}: " + "; ".join(line))

# ---- 2. Stoger & Soltanolkotabi: the error follows alpha, not the width ---------------------
n, r = 50, 5
steps = 500 if args.quick else 5000
Z = np.random.default_rng(0).standard_normal((n, r))
M = Z @ Z.T
M /= np.trace(M)
op = GaussianSensing(3 * n * r, (n, n), seed=1, symmetric=True)
y = op.forward(M)
print(f"Stoger-Soltanolkotabi, n={n}, r={r}, m={3 * n * r}, step 0.5, {steps} steps; relative error "
      "(spec at width n: 3.7e-2 at 1e-3, 3.1e-3 at 1e-6):")
for width in (r, n):
    line = []
    for alpha in (1e-3, 1e-6):
        record, errors = error_curve(M, symmetric=True)
        result = lr.recover.factored_gd(op, y, width, symmetric=True, init=np.sqrt(alpha) * np.eye(n)[:, :width],
                                        step=0.5, max_iter=steps, tol=0.0, seed=0, callback=record)
        curves[f"SS width {width}, alpha={alpha:g}"] = errors
        line.append(f"alpha={alpha:g}: {relative(result.X, M):.2e}")
    print(f"  width {width}: " + ", ".join(line))

if args.plot:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, errors in curves.items():
        axis = axes[0] if name.startswith("XDD") else axes[1]
        axis.semilogy(np.arange(1, len(errors) + 1), errors, label=name[4:] if name.startswith("XDD") else name[3:])
    axes[0].set_title("asymmetric factorization, k = 5 > r = 3 (Xiong, Ding & Du)")
    axes[1].set_title("symmetric sensing from small init (Stoger & Soltanolkotabi)")
    for axis in axes:
        axis.set_xlabel("iteration")
        axis.set_ylabel("||X - M||_F / ||M||_F")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(args.plot, dpi=120)
    print(f"curves written to {args.plot}")
