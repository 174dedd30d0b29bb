"""Completion on real data: the default ``lowrank_hpc.MatrixCompletion()`` against the peers a
user would run with their defaults, on the seeded hold-outs of ``lowrank_hpc.datasets``.

    bash bench/setup_peers.sh                                   # once: the peers' venvs
    PYTHONPATH=python python bench/bench_real_data.py           # all data sets and peers, prints the table
    PYTHONPATH=python python bench/bench_real_data.py --sets camera,digits --peers softimpute
    PYTHONPATH=python python bench/bench_real_data.py --write   # ... and appends it to BENCHMARKS.md

For each data set of ``lowrank_hpc.datasets.NAMES``, ``split(name, seed=0)`` gives train and
test entries (MovieLens sample: 20% of the ratings held out; images: 30% of the pixels seen,
50,000 others held out). Each side fits the train entries and is scored by the RMSE of its
predictions at the test entries:

* ours: ``MatrixCompletion(random_state=0)`` with every other parameter at its default,
  ``fit(rows, cols, vals, shape=shape)`` then ``predict(test.rows, test.cols)``; the time is
  fit + predict, best of ``--repeats`` after one warm-up.
* fancyimpute ``SoftImpute()`` with its defaults (only verbose=False): bench/peers/
  fancyimpute_defaults.py in bench/.venvs/fancyimpute; fit_transform best of ``--repeats`` after a warm-up (the dense NaN matrix
  build is not timed).
* Spark MLlib ALS (local[2], rank 10, 10 iterations = Spark's default maxIter, regParam scaled
  per row/column count as Spark does): bench/peers/spark_als.py in bench/.venvs/spark; best of 2
  fits after a warm-up, JVM start and DataFrame build not timed. regParam 0.1 on the ratings and
  0.01 on the images ([0, 1] pixels): the best of {0.01, 0.1, 1, 3, 10, 30} for the same model
  (``lowrank_hpc.recover.als(reg_scaling="count")``, rank 10) on these splits, so Spark is given
  a tuned regParam (0.1 on the images costs it 2x in RMSE).

For context two baselines computed here: the training mean, and mu + ridge row/column offsets
(``biased_baseline``, ridge 5, 20 alternating sweeps). The speed ratio is peer time / ours (> 1:
ours is faster). A peer whose venv is missing or that fails is reported as "not measured: reason".
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import best_time, machine_line, run_peer  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc import datasets  # noqa: E402

SPARK_RANK, SPARK_ITERS, SPARK_REPEATS = 10, 10, 2
SPARK_REG = {"movielens_sample": 0.1, "camera": 0.01, "digits": 0.01, "china": 0.01}
BASELINE_RIDGE = 5.0


def rmse(predicted: np.ndarray, vals: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(predicted, dtype=np.float64) - vals) ** 2)))


def save_problem(train: datasets.Entries, test: datasets.Entries, path: Path) -> Path:
    """The peers' .npz format (bench/peers/*.py): shape, rows, cols, vals, test_rows, test_cols, test_vals."""
    np.savez(path, shape=np.array(train.shape), rows=train.rows, cols=train.cols, vals=train.vals,
             test_rows=test.rows, test_cols=test.cols, test_vals=test.vals)
    return path


def biased_baseline(train: datasets.Entries, ridge: float = BASELINE_RIDGE, sweeps: int = 20,
                    refit_mean: bool = False):
    """mu + a_i + b_j fitted to the train entries by alternating ridge solves
    (a_i = sum over row i of (x - mu - b_j) / (count_i + ridge), then b likewise; with
    ``refit_mean`` mu then the mean of x - a_i - b_j, as MatrixCompletion's unpenalized mu);
    returns a function (rows, cols) -> predictions."""
    n1, n2 = train.shape
    mu = float(train.vals.mean())
    a, b = np.zeros(n1), np.zeros(n2)
    row_count = np.bincount(train.rows, minlength=n1) + ridge
    col_count = np.bincount(train.cols, minlength=n2) + ridge
    for _ in range(sweeps):
        a = np.bincount(train.rows, train.vals - mu - b[train.cols], minlength=n1) / row_count
        b = np.bincount(train.cols, train.vals - mu - a[train.rows], minlength=n2) / col_count
        if refit_mean:
            mu = float(np.mean(train.vals - a[train.rows] - b[train.cols]))
    return lambda rows, cols: mu + a[rows] + b[cols]


def measure_ours(train: datasets.Entries, test: datasets.Entries, repeats: int) -> dict:
    def run():
        model = lr.MatrixCompletion(random_state=0).fit(train.rows, train.cols, train.vals, shape=train.shape)
        return model, model.predict(test.rows, test.cols)

    model, predicted = run()
    seconds = best_time(run, repeats=repeats)
    return {"seconds": seconds, "test_rmse": rmse(predicted, test.vals), "train_rmse": float(model.train_rmse_),
            "n_iter": int(model.n_iter_), "rank": int(model.rank_), "bound": int(model.U_.shape[1]),
            "reg": float(model.reg_), "path": len(model.path_)}


def one_data_set(name: str, peers: set[str], repeats: int, workdir: Path) -> dict:
    train, test = datasets.split(name, seed=0)
    problem = save_problem(train, test, workdir / f"{name}.npz")
    row: dict[str, Any] = {"name": name, "shape": train.shape, "train": train.nnz, "test": test.nnz,
                           "mean_rmse": rmse(np.full(test.nnz, train.vals.mean()), test.vals),
                           "baseline_rmse": rmse(biased_baseline(train)(test.rows, test.cols), test.vals)}
    try:
        row["ours"] = measure_ours(train, test, repeats)
    except Exception as error:  # report a failure in the table rather than losing the peers' figures
        row["ours_reason"] = f"{type(error).__name__}: {str(error)[:200]}"
    if "softimpute" in peers:
        row["softimpute"], row["softimpute_reason"] = run_peer("fancyimpute", "fancyimpute_defaults.py", problem,
                                                               repeats)
    if "spark" in peers:
        row["spark"], row["spark_reason"] = run_peer("spark", "spark_als.py", problem, SPARK_RANK,
                                                     SPARK_REG[name], SPARK_ITERS, 0, SPARK_REPEATS)
    return row


HEADER = ("| data set | shape | observed (train / test) | mean RMSE | biased baseline RMSE | ours RMSE | ours (s) "
          "| SoftImpute() RMSE | SoftImpute() (s) | SoftImpute / ours | Spark ALS RMSE | Spark ALS (s) "
          "| Spark / ours |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def markdown(row: dict) -> str:
    ours = row.get("ours")
    cells = [row["name"], f"{row['shape'][0]} x {row['shape'][1]}", f"{row['train']:,} / {row['test']:,}",
             f"{row['mean_rmse']:.4f}", f"{row['baseline_rmse']:.4f}"]
    cells += [f"{ours['test_rmse']:.4f}", f"{ours['seconds']:.3f}"] if ours else \
        [f"not measured: {row['ours_reason']}", "-"]
    for peer in ("softimpute", "spark"):
        if f"{peer}_reason" not in row:
            cells += ["-", "-", "-"]
        elif row[peer] is None:
            cells += [f"not measured: {row[peer + '_reason']}", "-", "-"]
        else:
            ratio = f"{row[peer]['seconds'] / ours['seconds']:.1f}x" if ours else "-"
            cells += [f"{row[peer]['test_rmse']:.4f}", f"{row[peer]['seconds']:.3f}", ratio]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(datasets.NAMES),
                        help=f"comma-separated data sets (default: all of {','.join(datasets.NAMES)})")
    parser.add_argument("--peers", default="softimpute,spark",
                        help="comma-separated peers among softimpute,spark (default: both; '' for none)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many timed fits of ours")
    parser.add_argument("--write", action="store_true", help="append the table to BENCHMARKS.md")
    parser.add_argument("--output", default=str(BENCH.parent / "BENCHMARKS.md"))
    args = parser.parse_args()
    names = [n for n in args.sets.split(",") if n]
    peers = {p for p in args.peers.split(",") if p}
    unknown = [n for n in names if n not in datasets.NAMES] + sorted(peers - {"softimpute", "spark"})
    if unknown:
        parser.error(f"unknown data set or peer: {unknown}")

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    rows, details = [], []
    with tempfile.TemporaryDirectory(prefix="bench_real_data_") as tmp:
        print(HEADER, flush=True)
        for name in names:
            row = one_data_set(name, peers, args.repeats, Path(tmp))
            rows.append(row)
            print(markdown(row), flush=True)  # progress: Spark's JVM start takes a while per data set
    for row in rows:
        if row.get("ours"):
            o = row["ours"]
            details.append(f"- {row['name']}: ours rank {o['rank']} (bound {o['bound']}), reg {o['reg']:.4g} chosen "
                           f"over {o['path']} path points, {o['n_iter']} iterations, train RMSE {o['train_rmse']:.4f}")
    versions = {peer: next((r[peer]["version"] for r in rows if r.get(peer)), None) for peer in ("softimpute", "spark")}
    load = f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    text = "\n".join([
        f"### bench_real_data.py, {datetime.date.today().isoformat()}",
        f"Machine: {machine_line(lr.info()['openmp_threads'], load)}. Python {platform.python_version()}, numpy "
        f"{np.__version__}, lowrank_hpc {lr.__version__}; peers: {versions['softimpute'] or 'SoftImpute not run'}; "
        f"{versions['spark'] or 'Spark not run'}. Whole run {time.perf_counter() - started:.0f} s.",
        f"Command: `PYTHONPATH=python python bench/bench_real_data.py{'' if args.sets == ','.join(datasets.NAMES) else ' --sets ' + args.sets}"
        f"{'' if args.peers == 'softimpute,spark' else ' --peers ' + repr(args.peers)}"
        f"{'' if args.repeats == 3 else f' --repeats {args.repeats}'}{' --write' if args.write else ''}`",
        "Test RMSE on split(name, seed=0); times: ours fit + predict best of "
        f"{args.repeats}, SoftImpute() fit_transform best of {args.repeats}, Spark ALS (rank {SPARK_RANK}, regParam "
        f"{', '.join(f'{SPARK_REG[n]} ({n})' for n in names)}, maxIter {SPARK_ITERS}, local[2]) best of {SPARK_REPEATS} fits. Ratio = peer time / ours.",
        "", HEADER, *[markdown(row) for row in rows], "", *details, ""])
    print("\n" + text)
    if args.write:
        with open(args.output, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
