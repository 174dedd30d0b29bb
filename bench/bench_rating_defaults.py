"""The default ``MatrixCompletion()`` on generated 1-5 ratings that look like real ones: not
exactly low rank, not centered, rounded and clipped, with power-law activity or too sparse for
any low-rank part. The defaults must hold there: never worse than the row and column offsets
fitted alone (the biased baseline, ridge 10 = bias_reg's default), and better where there is
structure to find.

    PYTHONPATH=python python bench/bench_rating_defaults.py            # both families, all seeds
    PYTHONPATH=python python bench/bench_rating_defaults.py --seeds 3  # fewer seeds
    PYTHONPATH=python python bench/bench_rating_defaults.py --large    # 900,000 ratings: the refit's gain
    PYTHONPATH=python python bench/bench_rating_defaults.py --sparse   # 4.5M and 9M: method="auto"'s choice

``--large``: 1,000,000 drawn ratings of 20,000 x 5,000 (uniform: 900,000 training ones; power
law: its distinct pairs), each method at the defaults against ``debias=False`` (the penalized
fit alone), held-out RMSE, the refit's rank and the fit's seconds.

``--sparse``: 5,000,000 and 10,000,000 drawn uniform ratings of 138,000 x 27,000 (MovieLens-20M's
shape; 0.12% and 0.24% observed), soft-impute against ALS at the defaults (the solver
``method="auto"`` picks is marked), held-out RMSE, the penalty fraction chosen, rank_ and seconds.

Ratings: ``lowrank_hpc.datasets.synthetic_ratings`` (round(3.5 + a_i + b_j + (U V^T)_ij + noise
0.5), clipped to 1..5, U, V of rank 5; the first 10% of the drawn entries held out). "power law":
1,000 x 800, the distinct pairs among 200,000 drawn by Pareto(1.2) row activity and Pareto(1.0)
column popularity (53,000-68,000 of them for seeds 0-2). "sparse": 2,000 uniform pairs of
800 x 600 (2.5 a row).
Prints held-out RMSE of ours, method="als", the offsets and the mean, per seed, and how often
ours is worse than the offsets.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import machine_line  # noqa: E402
from bench_real_data import biased_baseline, rmse  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc import datasets  # noqa: E402

OFFSET_RIDGE = 10.0  # MatrixCompletion's bias_reg default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=0, help="seeds per family (default: 3 power law, 24 sparse)")
    parser.add_argument("--large", action="store_true", help="the refit's gain on 900,000 ratings instead")
    parser.add_argument("--sparse", action="store_true", help="method='auto''s choice on 4.5M and 9M ratings instead")
    args = parser.parse_args()
    print(f"Machine: {machine_line(lr.info()['openmp_threads'])}. lowrank_hpc {lr.__version__}.")
    if args.large:
        large()
        return
    if args.sparse:
        sparse()
        return
    print("| family | seed | ours | als | offsets | mean | ours / offsets | ours range | ours (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for family, shape, nnz, power_law, seeds in (("power law", (1000, 800), 100_000, True, 3),
                                                 ("sparse", (800, 600), 2000, False, 24)):
        ratios = []
        for seed in range(args.seeds or seeds):
            train, test = datasets.synthetic_ratings(seed, shape, nnz, power_law=power_law)
            fit = (train.rows, train.cols, train.vals)
            started = time.perf_counter()
            predicted = lr.MatrixCompletion(random_state=0).fit(*fit, shape=shape).predict(test.rows, test.cols)
            seconds = time.perf_counter() - started
            als = lr.MatrixCompletion(method="als", random_state=0).fit(*fit, shape=shape)
            offsets_model = biased_baseline(train, ridge=OFFSET_RIDGE, sweeps=100, refit_mean=True)
            offsets = rmse(offsets_model(test.rows, test.cols), test.vals)
            ratios.append(rmse(predicted, test.vals) / offsets)
            print(f"| {family} | {seed} | {rmse(predicted, test.vals):.4f} | "
                  f"{rmse(als.predict(test.rows, test.cols), test.vals):.4f} | {offsets:.4f} | "
                  f"{rmse(np.full(test.nnz, train.vals.mean()), test.vals):.4f} | {ratios[-1]:.3f} | "
                  f"{predicted.min():.1f} to {predicted.max():.1f} | {seconds:.2f} |", flush=True)
        worse = sum(ratio > 1.001 for ratio in ratios)
        print(f"| {family}: worse than the offsets (> 1.001x) on {worse} of {len(ratios)} seeds, "
              f"ours / offsets {min(ratios):.3f}-{max(ratios):.3f} | | | | | | | | |")


def large() -> None:
    """The defaults against debias=False on 20,000 x 5,000 ratings, both families and methods."""
    print("| family | training ratings | method | debias | held-out RMSE | refit rank | rank_ | fit (s) |")
    print("|---|---|---|---|---|---|---|---|")
    shape = (20_000, 5_000)
    for family, power_law in (("uniform", False), ("power law", True)):
        train, test = datasets.synthetic_ratings(0 if not power_law else 1, shape, 1_000_000, power_law=power_law)
        for method in ("soft_impute", "als"):
            for debias in ("auto", False):
                started = time.perf_counter()
                model = lr.MatrixCompletion(method=method, debias=debias, random_state=0).fit(
                    train.rows, train.cols, train.vals.astype(np.float32), shape=shape)
                seconds = time.perf_counter() - started
                chosen = min(model.path_, key=lambda point: point.validation_rmse)
                print(f"| {family} | {train.nnz:,} | {method} | {debias} | "
                      f"{rmse(model.predict(test.rows, test.cols), test.vals):.4f} | {chosen.refit_rank or '-'} | "
                      f"{model.rank_} | {seconds:.1f} |", flush=True)


def sparse() -> None:
    """Soft-impute against ALS at the defaults on MovieLens-20M-shaped sparse ratings."""
    from lowrank_hpc.recover.completion_fit import auto_method

    print("| training ratings | observed | method | auto picks it | held-out RMSE | lambda / lambda_max | rank_ "
          "| fit (s) |")
    print("|---|---|---|---|---|---|---|---|")
    shape = (138_000, 27_000)
    for drawn in (5_000_000, 10_000_000):
        train, test = datasets.synthetic_ratings(0, shape, drawn, power_law=False)
        picked = auto_method(train.nnz, shape)
        for method in ("soft_impute", "als"):
            started = time.perf_counter()
            model = lr.MatrixCompletion(method=method, random_state=0).fit(train.rows, train.cols, train.vals,
                                                                             shape=shape)
            seconds = time.perf_counter() - started
            chosen = min(model.path_, key=lambda point: point.validation_rmse)
            error = rmse(model.predict(test.rows, test.cols), test.vals)
            print(f"| {train.nnz:,} | {train.nnz / (shape[0] * shape[1]):.2%} | {method} | "
                  f"{'yes' if method == picked else 'no'} | {error:.4f} | {chosen.fraction:g} | {model.rank_} | "
                  f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
