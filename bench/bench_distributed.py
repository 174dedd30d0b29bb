"""lowrank_hpc.distributed on 1 and 2 local Dask workers: a batch of 10,000 small completion
problems (solve_batch) and one 20,000 x 20,000 rank-20 completion at 1% observed
(DistributedALS), against one process and against Spark MLlib's ALS on the same completion.

    bash bench/setup_peers.sh                                   # once: Spark's venv (needs Java 17+)
    PYTHONPATH=python python bench/bench_distributed.py         # full sizes, appends to BENCHMARKS.md
    PYTHONPATH=python python bench/bench_distributed.py --quick # small sizes, prints only

Every Dask worker is its own process with one task thread and one OpenMP thread (Dask's
nanny sets OMP_NUM_THREADS=1), so "1 worker" is one core and "2 workers" two: scaling
efficiency = t(1 worker) / (2 t(2 workers)). The one-process rows run the same solvers with
both cores (OpenMP). Spark runs local[1] and local[2] (one ALS block per side and core) through
bench/peers/spark_als.py, timed around fit() after a warm-up fit, as in bench_solvers.py.
Every configuration checks its factors against the one-process solve (the same bits expected).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import machine_line, run_peer  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc.distributed import DistributedALS, solve_batch  # noqa: E402


def load() -> str:
    return "load average " + " / ".join(f"{x:.1f}" for x in os.getloadavg())


def timed(fn, repeats: int, warm=None):
    """(best seconds of ``repeats`` calls after a warm-up (``warm``, else one call of fn), the last result)."""
    result = (warm or fn)()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


# ---------------------------------------------------------------- the batch
def batch_problems(count: int, shape: tuple[int, int], rank: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((count, shape[0], rank)) @ rng.standard_normal((count, rank, shape[1]))
    return np.where(rng.random(X.shape) < 0.5, X, np.nan)


def case_batch(args, clusters) -> list[str]:
    count, shape, rank, iters = (1000, (40, 30), 3, 10) if args.quick else (10_000, (40, 30), 3, 20)
    S = batch_problems(count, shape, rank, seed=1)
    settings = dict(reg=0.01, max_iter=iters, tol=0.0, seed=0)
    b, i, j = np.nonzero(~np.isnan(S))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(b, minlength=count))])
    case = f"{count:,} problems {shape[0]}x{shape[1]}, rank {rank}, 50% seen, ALS {iters} its"
    one_s, whole = timed(lambda: lr.recover.batched_als(i, j, S[b, i, j], offsets, shape, rank, 0.01, seed=0,
                                                         max_iter=iters, tol=0.0), args.repeats)
    lines = [f"| solve_batch | {case} | one process: batched_als, 2 OpenMP threads | {one_s:.3f} | - | - | "
             f"kernel {whole.info['kernel']} |"]
    local_s, local = timed(lambda: solve_batch(S, rank, **settings), args.repeats)
    chunks = len({r.info["chunk"] for r in local})
    lines.append(f"| solve_batch | {case} | client=None: {chunks} chunks in this process, 2 threads | {local_s:.3f} "
                 f"| - | - | {_same_batch(local, whole)} |")
    single = None
    for workers, client in clusters:
        seconds, results = timed(lambda: solve_batch(S, rank, client=client, **settings), args.repeats)
        single = seconds if workers == 1 else single
        efficiency = f"{single / (workers * seconds):.0%}" if single else "-"
        lines.append(f"| solve_batch | {case} | Dask LocalCluster, {workers} worker{'s' if workers > 1 else ''} x 1 "
                     f"thread | {seconds:.3f} | {single / seconds:.2f}x | {efficiency} | "
                     f"{_same_batch(results, whole)}; {load()} |")
    return lines


def _same_batch(results, whole) -> str:
    same = all(np.array_equal(r.U, whole.U[k]) and np.array_equal(r.V, whole.V[k]) for k, r in enumerate(results))
    return "same bits as batched_als over the batch" if same else "DIFFERS from batched_als"


# ---------------------------------------------------------------- the big completion
def big_completion(n: int, rank: int, fraction: float, seed: int, n_test: int):
    """n x n rank-``rank`` (unit-variance entries), ``fraction`` of it observed (sorted by row),
    and n_test other entries held out."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n, rank)) / rank ** 0.25
    V = rng.standard_normal((n, rank)) / rank ** 0.25
    want = int(fraction * n * n)
    flat = np.unique(rng.integers(0, n * n, int(1.02 * (want + n_test)), dtype=np.int64))
    flat = rng.permutation(flat)[:want + n_test]
    observed, test = np.sort(flat[:want]), flat[want:]

    def values(f):
        r, c = np.divmod(f, n)
        out = np.empty(f.shape[0])
        for s in range(0, f.shape[0], 1 << 20):
            out[s:s + (1 << 20)] = np.einsum("kr,kr->k", U[r[s:s + (1 << 20)]], V[c[s:s + (1 << 20)]])
        return r.astype(np.int32), c.astype(np.int32), out

    return values(observed), values(test)


def rmse(U, V, test) -> float:
    rows, cols, vals = test
    return float(np.sqrt(np.mean((np.einsum("kr,kr->k", U[rows], V[cols]) - vals) ** 2)))


def case_big(args, clusters, workdir: Path) -> list[str]:
    n, rank, fraction, iters = (4000, 10, 0.01, 3) if args.quick else (20_000, 20, 0.01, args.iterations)
    reg = 0.05
    (rows, cols, vals), test = big_completion(n, rank, fraction, seed=2, n_test=100_000)
    case = f"{n:,}x{n:,} rank {rank}, {vals.shape[0] / n / n:.0%} seen ({vals.shape[0]:,}), ALS-WR reg {reg}, {iters} its"
    settings = dict(reg_scaling="count", max_iter=iters, tol=0.0, seed=0)
    small = (rows[:10_000] % 1000, cols[:10_000] % 1000, vals[:10_000])
    one_s, whole = timed(lambda: lr.recover.als(rows, cols, vals, (n, n), rank, reg, **settings), args.big_repeats,
                         warm=lambda: lr.recover.als(*small, (1000, 1000), rank, reg, **settings))
    lines = [f"| DistributedALS | {case} | one process: recover.als, 2 OpenMP threads | {one_s:.2f} | - | - | "
             f"test RMSE {rmse(whole.U, whole.V, test):.4g}; kernel {whole.info['kernel']} |"]
    single = None
    for workers, client in clusters:
        model = DistributedALS(rank, reg, client=client, **settings)
        seconds, fitted = timed(lambda: model.fit(rows, cols, vals, shape=(n, n)), args.big_repeats,
                                warm=lambda: model.fit(*small, shape=(1000, 1000)))  # the workers' imports
        result = fitted.result_
        same = np.allclose(result.U, whole.U, rtol=1e-8, atol=1e-10) and np.allclose(result.V, whole.V, rtol=1e-8,
                                                                                      atol=1e-10)
        single = seconds if workers == 1 else single
        lines.append(f"| DistributedALS | {case} | Dask LocalCluster, {workers} worker{'s' if workers > 1 else ''} x 1 "
                     f"thread | {seconds:.2f} | {single / seconds:.2f}x | {single / (workers * seconds):.0%} | "
                     f"test RMSE {rmse(result.U, result.V, test):.4g}; "
                     f"{'= recover.als to 1e-8' if same else 'DIFFERS from recover.als'}; includes splitting and "
                     f"scattering the entries; {load()} |")
    if args.no_spark:
        return lines
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = workdir / "big.parquet"
    pq.write_table(pa.table({"row": rows, "col": cols, "value": vals}), parquet)
    problem = workdir / "big.npz"
    np.savez(problem, shape=np.array((n, n)), rows=rows[:0], cols=cols[:0], vals=vals[:0], parquet=str(parquet),
             test_rows=test[0], test_cols=test[1], test_vals=test[2])
    spark_one = None
    for cores in (1, 2):
        peer, reason = run_peer("spark", "spark_als.py", problem, rank, reg, iters, 0, args.spark_repeats, cores)
        if peer is None:
            lines.append(f"| Spark MLlib ALS | {case} | local[{cores}] | - | - | - | not measured: {reason} |")
            continue
        spark_one = peer["seconds"] if cores == 1 else spark_one
        scale = (f"{spark_one / peer['seconds']:.2f}x | {spark_one / (cores * peer['seconds']):.0%}" if spark_one
                 else "- | -")
        lines.append(f"| Spark MLlib ALS | {case} | {peer['version']} local[{cores}], {cores} block(s) per side | "
                     f"{peer['seconds']:.2f} | {scale} | test RMSE {peer['test_rmse']:.4g}; fit() only, best of "
                     f"{args.spark_repeats} after a warm-up (session start and DataFrame build "
                     f"{peer['startup_seconds']:.0f} s not counted); {load()} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each batch configuration")
    parser.add_argument("--big-repeats", type=int, default=1, help="timed runs of each big-completion configuration")
    parser.add_argument("--spark-repeats", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5, help="ALS iterations of the big completion")
    parser.add_argument("--no-spark", action="store_true")
    parser.add_argument("--only", choices=("batch", "big"), default=None)
    parser.add_argument("--output", default=str(BENCH.parent / "BENCHMARKS.md"))
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    started = load()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        clusters, opened = [], []
        for workers in (1, 2):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
            client = Client(cluster)
            opened += [client, cluster]
            clusters.append((workers, client))
        try:
            if args.only in (None, "batch"):
                lines += case_batch(args, clusters)
            if args.only in (None, "big"):
                lines += case_big(args, clusters, Path(tmp))
        finally:
            for thing in opened:
                thing.close()
    import dask

    text = "\n".join([
        f"### bench_distributed.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"Machine: {machine_line(lr.info()['openmp_threads'], 'shared')}; {started} at the start, {load()} at the "
        f"end. numpy {np.__version__}, dask {dask.__version__}, lowrank_hpc {lr.__version__}.",
        f"Command: `PYTHONPATH=python python bench/bench_distributed.py{' --quick' if args.quick else ''}`", "",
        "| solver | case | configuration | seconds | speedup vs 1 worker | scaling efficiency | note |",
        "|---|---|---|---|---|---|---|", *lines, ""])
    print(text)
    if not args.quick:
        with open(args.output, "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
