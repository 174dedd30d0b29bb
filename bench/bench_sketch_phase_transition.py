"""Phase transition of recovery from column sketches (Srinivasa, Lee, Junge and Romberg 2019):
the probability that lowrank_hpc.recover.from_column_sketches recovers a rank-r X (n1 x n2)
from L sketches per column, over seeded trials, for a grid of L and r, by both methods.

    PYTHONPATH=python python bench/bench_sketch_phase_transition.py                 # the full grid, a few minutes
    PYTHONPATH=python python bench/bench_sketch_phase_transition.py --quick         # a smoke run
    PYTHONPATH=python python bench/bench_sketch_phase_transition.py --png out.png   # where the figure goes

X = G H^T with G (n1, r), H (n2, r) iid N(0, 1); every column its own Gaussian A_j (L x n1,
N(0, 1/L)); success = relative Frobenius error below 1e-3. The figure (matplotlib, the ``plot``
extra) shades the success rate on the (r, L) grid per method and draws two lines: L = r (each
column needs r sketches to fix its r coefficients) and L = r (n1 + n2 - r) / n2 (the total
measurements equal the degrees of freedom of a rank-r matrix: nothing can succeed below it).

What the paper proves: recovery (by its mixed-norm relaxation) to relative error epsilon from
O(r (d1 + d2) log^6(d1 + d2) / epsilon^2) measurements in total, uniformly over incoherent
rank-r matrices, i.e. L ~ c r (d1 + d2) / d2 * polylog per column with an unspecified constant:
a sufficient condition, linear in r, not a predicted location. The script prints, per method
and rank, the smallest L whose success rate reaches 50% and the ratio c = L_50 / r, next to the
degrees-of-freedom floor, so the measured constant can be read against the paper's linear-in-r
scaling.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np

import lowrank_hpc as lr
from lowrank_hpc.sensing import ColumnSketch

SUCCESS = 1e-3


def trial(n1, n2, rank, L, seed, method):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n1, rank)) @ rng.standard_normal((rank, n2))
    op = ColumnSketch(L, (n1, n2), seed=seed + 7919)
    y = op.forward(X)
    max_iter = 1500 if method == "factored_gd" else 1000
    result = lr.recover.from_column_sketches(op, y, rank, method=method, max_iter=max_iter, tol=1e-8, seed=seed)
    return np.linalg.norm(result.U @ result.V.T - X) / np.linalg.norm(X) < SUCCESS


def sweep(n1, n2, ranks, lengths, trials, method):
    rates = np.full((len(lengths), len(ranks)), np.nan)
    for b, rank in enumerate(ranks):
        for a, L in enumerate(lengths):
            if L < rank:
                rates[a, b] = 0.0  # below r sketches per column nothing is identifiable (and rank > L is refused)
                continue
            # Above a length where every trial succeeded twice in a row the rate stays 1: skip the rest.
            if a >= 2 and rates[a - 1, b] == 1.0 and rates[a - 2, b] == 1.0:
                rates[a, b] = 1.0
                continue
            rates[a, b] = np.mean([trial(n1, n2, rank, L, 1000 * rank + 31 * L + t, method) for t in range(trials)])
    return rates


def transition(rates, ranks, lengths):
    """Per rank, the smallest L with success rate >= 0.5 (None if none)."""
    out = []
    for b in range(len(ranks)):
        hits = [lengths[a] for a in range(len(lengths)) if rates[a, b] >= 0.5]
        out.append(hits[0] if hits else None)
    return out


def draw(path, n1, n2, ranks, lengths, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.2), squeeze=False)
    r_line = np.linspace(ranks[0] - 0.5, ranks[-1] + 0.5, 50)
    for ax, (method, rates) in zip(axes[0], results.items()):
        image = ax.imshow(rates, origin="lower", aspect="auto", cmap="gray", vmin=0, vmax=1,
                  extent=(ranks[0] - 0.5, ranks[-1] + 0.5, lengths[0] - 0.5 * (lengths[1] - lengths[0]),
                          lengths[-1] + 0.5 * (lengths[1] - lengths[0])))
        ax.plot(r_line, r_line, "r--", label="L = r")
        ax.plot(r_line, r_line * (n1 + n2 - r_line) / n2, "c-", label="L n2 = r (n1 + n2 - r)")
        found = [(L50, r) for L50, r in zip(transition(rates, ranks, lengths), ranks) if L50 is not None]
        if found:
            c = float(np.median([L50 / r for L50, r in found]))
            ax.plot(r_line, c * r_line, "y:", linewidth=2, label=f"L = {c:.1f} r (50% success, median)")
        ax.set_xlabel("rank r")
        ax.set_ylabel("sketches per column L")
        ax.set_title(f"{method}: success rate ({n1} x {n2})")
        ax.set_ylim(lengths[0] - 0.5, lengths[-1] + 0.5)
        ax.legend(loc="upper left", fontsize=8)
        fig.colorbar(image, ax=ax, label="success rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small grid (smoke run)")
    parser.add_argument("--png", default="sketch_phase_transition.png", help="where the figure is written")
    parser.add_argument("--trials", type=int, default=None)
    args = parser.parse_args()
    if args.quick:
        n1, n2, ranks, lengths, trials = 30, 25, [1, 2], list(range(2, 17, 2)), args.trials or 2
    else:
        n1, n2, ranks, lengths, trials = 40, 30, [1, 2, 3, 4], list(range(2, 34, 2)), args.trials or 4
    print(f"{n1} x {n2}, ranks {ranks}, L in {lengths[0]}..{lengths[-1]} step {lengths[1] - lengths[0]}, "
          f"{trials} trials, success = relative error < {SUCCESS:g}; load average {os.getloadavg()[0]:.2f}")
    results, seconds = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in lr.recover.SKETCH_METHODS:
            start = time.perf_counter()
            results[method] = sweep(n1, n2, ranks, lengths, trials, method)
            seconds[method] = time.perf_counter() - start
    floor = [r * (n1 + n2 - r) / n2 for r in ranks]
    print("\n| method | r | L at 50% success | c = L_50 / r | DOF floor r (n1 + n2 - r) / n2 | L_50 / floor |")
    print("|---|---|---|---|---|---|")
    for method, rates in results.items():
        for rank, L50, low in zip(ranks, transition(rates, ranks, lengths), floor):
            if L50 is None:
                shown = ("> " + str(lengths[-1]), "-", "-")
            else:
                shown = (L50, f"{L50 / rank:.1f}", f"{L50 / low:.2f}")
            print(f"| {method} | {rank} | {shown[0]} | {shown[1]} | {low:.1f} | {shown[2]} |")
    for method, rates in results.items():
        print(f"\n{method} success rate ({seconds[method]:.0f} s), rows L, columns r = {ranks}:")
        for L, row in zip(lengths, rates):
            print(f"  L = {L:3d}: " + " ".join(f"{v:4.2f}" for v in row))
    try:
        draw(args.png, n1, n2, ranks, lengths, results)
        print(f"\nfigure: {args.png}")
    except ImportError:
        print("\nmatplotlib is not installed (pip install 'lowrank_hpc[plot]'): no figure", file=sys.stderr)


if __name__ == "__main__":
    main()
