"""Peer: Spark MLlib's ALS (explicit feedback) on a matrix completion problem, local[2].

Runs in bench/.venvs/spark (pyspark, Java 17). Usage:
``python spark_als.py PROBLEM.npz RANK REG MAX_ITER SEED REPEATS [CORES]``; prints one JSON object
{"seconds", "all_seconds", "startup_seconds", "test_rmse", "settings", "version"}. CORES (default
2) is the local[CORES] master and the number of user and item blocks. When PROBLEM.npz holds a
"parquet" path, the training entries are read from that Parquet file (columns row, col, value)
instead of being sent from Python (which takes minutes for millions of entries).

Spark's regParam is scaled by each row's/column's number of observations (ALS-WR), which is
lowrank_hpc.recover.als(reg_scaling="count"). ``seconds`` is the best of REPEATS calls of
ALS.fit() after one warm-up fit (the JVM compiles as it goes), timed once the session is up and
the training DataFrame is cached; fit() is eager (it materializes both factor RDDs);
``all_seconds`` lists every timed call. The session start and the DataFrame build are reported
in ``startup_seconds``, not in ``seconds``.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import pyspark
from pyspark.ml.recommendation import ALS
from pyspark.sql import SparkSession


def factor_matrix(frame, n: int, rank: int) -> np.ndarray:
    """Spark's (id, features) factor DataFrame as an (n, rank) array (zero rows for ids never seen)."""
    out = np.zeros((n, rank))
    for row in frame.collect():
        out[row["id"]] = row["features"]
    return out


def main() -> None:
    data = np.load(sys.argv[1])
    rank, reg, max_iter, seed, repeats = (int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                                          int(sys.argv[5]), int(sys.argv[6]))
    cores = int(sys.argv[7]) if len(sys.argv) > 7 else 2
    started = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("bench_solvers")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
             .config("spark.sql.shuffle.partitions", str(cores)).getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if "parquet" in data.files:  # big problems: Spark reads the entries from Parquet (row, col, value)
        train = spark.read.parquet(str(data["parquet"])).repartition(cores).cache()
    else:
        triples = list(zip(data["rows"].tolist(), data["cols"].tolist(), data["vals"].tolist()))
        train = spark.createDataFrame(triples, ["row", "col", "value"]).repartition(cores).cache()
    train.count()
    startup = time.perf_counter() - started
    # One block per side and core of local[cores] (Spark's default is 10).
    settings = {"rank": rank, "regParam": reg, "maxIter": max_iter, "seed": seed, "numUserBlocks": cores,
                "numItemBlocks": cores, "implicitPrefs": False, "nonnegative": False}
    als = ALS(userCol="row", itemCol="col", ratingCol="value", **settings)
    all_seconds = []
    for attempt in range(repeats + 1):
        start = time.perf_counter()
        model = als.fit(train)
        if attempt:
            all_seconds.append(time.perf_counter() - start)
    n1, n2 = (int(s) for s in data["shape"])
    U, V = factor_matrix(model.userFactors, n1, rank), factor_matrix(model.itemFactors, n2, rank)
    error = np.einsum("kr,kr->k", U[data["test_rows"]], V[data["test_cols"]]) - data["test_vals"]
    spark.stop()
    print(json.dumps({"seconds": min(all_seconds), "all_seconds": all_seconds, "startup_seconds": startup,
                      "test_rmse": float(np.sqrt(np.mean(error ** 2))), "settings": settings,
                      "version": f"pyspark {pyspark.__version__}"}))


if __name__ == "__main__":
    main()
