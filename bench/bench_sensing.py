"""Sensing operators against a hand-written dense numpy operator, in one run on this machine.

GaussianSensing forward/adjoint (matrix-free and cached) vs ``M @ x`` / ``M.T @ y`` with a dense
float32 numpy matrix M, and RankOneSensing.forward_factored vs forming U V^T and applying its dense
matrix. Run: ``PYTHONPATH=python python bench/bench_sensing.py [--quick]``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, best_time  # noqa: E402

from lowrank_hpc.sensing import GaussianSensing, RankOneSensing  # noqa: E402

DTYPE = np.float32
PEER = "numpy dense"


def _gaussian_rows(n: int, m: int, modes: tuple[str, ...], repeats: int) -> list[Row]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, n)).astype(DTYPE)
    y = rng.standard_normal(m).astype(DTYPE)
    dense = GaussianSensing(m, (n, n), 1).to_dense(DTYPE)
    x_vec = X.ravel()
    peer_forward = best_time(lambda: dense @ x_vec, repeats)
    peer_adjoint = best_time(lambda: dense.T @ y, repeats)
    case = f"{n}x{n}, m={m}, float32"
    rows = []
    notes = {"cached": "dense copy, what mode='auto' picks under the memory budget",
             "matrix_free": f"regenerates all {m * n * n:.1e} Philox entries per call: O(m + n1 n2) memory, "
                            "for operators that do not fit"}
    for mode in modes:
        op = GaussianSensing(m, (n, n), 1, mode=mode)
        rows.append(Row(f"GaussianSensing.forward ({mode})", case, best_time(lambda: op.forward(X), repeats),
                        PEER, peer_forward, notes[mode]))
        rows.append(Row(f"GaussianSensing.adjoint ({mode})", case, best_time(lambda: op.adjoint(y), repeats),
                        PEER, peer_adjoint, notes[mode]))
    return rows


def _rank_one_rows(n: int, m: int, r: int, repeats: int) -> list[Row]:
    rng = np.random.default_rng(1)
    U = rng.standard_normal((n, r)).astype(DTYPE)
    V = rng.standard_normal((n, r)).astype(DTYPE)
    op = RankOneSensing(m, (n, n), 1)
    dense = op.to_dense(DTYPE)
    ours = best_time(lambda: op.forward_factored(U, V), repeats)
    peer = best_time(lambda: dense @ (U @ V.T).ravel(), repeats)
    return [Row("RankOneSensing.forward_factored", f"{n}x{n}, m={m}, r={r}, float32", ours, "numpy dense U V^T", peer,
                "no n1 x n2 matrix")]


def run(quick: bool = False) -> list[Row]:
    """Benchmark rows; ``quick`` shrinks the large case and the repeats."""
    repeats = 2 if quick else 5
    rows = _gaussian_rows(30, 300, ("matrix_free", "cached"), repeats)
    if quick:
        rows += _gaussian_rows(60, 1000, ("matrix_free", "cached"), repeats)
        rows += _rank_one_rows(60, 1000, 5, repeats)
    else:
        rows += _gaussian_rows(100, 2000, ("cached",), repeats)
        rows += _gaussian_rows(100, 2000, ("matrix_free",), 1)
        rows += _rank_one_rows(100, 2000, 5, repeats)
    return rows


if __name__ == "__main__":
    print(HEADER)
    for row in run(quick="--quick" in sys.argv[1:]):
        print(row.markdown())
