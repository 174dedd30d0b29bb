"""Guess & Check benchmark: draws checked per second by ``research.guess_and_check`` (batched GEMMs
for the deep products, the batched sampled-product kernel for the training entries) against a
numpy transcription that forms every product densely and gathers the entries, in the same run;
a GPU row (backend="cuda", against the same transcription in CuPy) when a device is present.

    python bench/bench_guess_and_check.py            # 4 cases, 2^18 draws each, appends to BENCHMARKS.md
    python bench/bench_guess_and_check.py --quick    # 2^15 draws, prints only
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Row, best_time, machine_line, report  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc import _backend  # noqa: E402
from lowrank_hpc.research.guess_and_check import _draw  # noqa: E402

CASES = [(3, 2, 2), (3, 8, 3), (10, 16, 2), (10, 16, 4)]  # (n, width, depth)


def problem(n: int):
    rng = np.random.default_rng(0)
    W = np.outer(rng.standard_normal(n), rng.standard_normal(n)) / n
    flat = rng.permutation(n * n)[: (2 * n * n) // 3]
    return (flat // n, flat % n, W.flat[flat])


def peer(xp, train, n, width, depth, draws, batch, tol, seed):
    """The dense transcription: draw, multiply out every product, gather, compare."""
    rows, cols, vals = (xp.asarray(a) for a in train)
    generator = np.random.default_rng(seed) if xp is np else xp.random.RandomState(seed)
    accepted = 0
    for _ in range(draws // batch):
        V = generator.standard_normal((batch, n, width)) / np.sqrt(n)
        U = generator.standard_normal((batch, n, width)) / np.sqrt(width)
        for _ in range(depth - 2):
            U = U @ (generator.standard_normal((batch, width, width)) / np.sqrt(width))
        W = U @ V.transpose(0, 2, 1)
        loss = ((W[:, rows, cols] - vals) ** 2).mean(axis=1)
        accepted += int((loss < tol).sum())
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    draws = 2 ** 15 if args.quick else 2 ** 18
    batch = 2 ** 14
    tol = 1e-2
    backends = ["cpu"] + (["cuda"] if _backend.HAS_CUDA else [])
    rows = []
    for backend in backends:
        xp = np if backend == "cpu" else __import__("cupy")
        sync = None if backend == "cpu" else (lambda: xp.cuda.get_current_stream().synchronize())
        for n, width, depth in CASES:
            train = problem(n)

            def ours():
                return lr.research.guess_and_check(train, (n, n), width=width, depth=depth, n_samples=draws,
                                                   batch_size=batch, tol=tol, compare_gd=False, backend=backend,
                                                   seed=1)

            ours_s = best_time(ours, repeats=3, sync=sync)
            peer_s = best_time(lambda: peer(xp, train, n, width, depth, draws, batch, tol, 1), repeats=3, sync=sync)
            peer_name = "numpy dense" if backend == "cpu" else "cupy dense"
            rows.append(Row("guess_and_check", f"{backend} n={n} k={width} d={depth}, {draws} draws", ours_s,
                            peer_name, peer_s, f"{draws / ours_s:.3g} draws/s (peer {draws / peer_s:.3g})"))
            print(rows[-1].markdown(), flush=True)
            # The check alone, on one drawn batch: the batched sampled product against the dense
            # products and a gather (the draw itself, the prior's normals, is the same in both).
            U, V, _ = _draw(xp, np.random.default_rng(2) if xp is np else xp.random.RandomState(2), batch, n, n,
                            width, depth, np.dtype(np.float64))
            r, c, _ = (np.asarray(a) for a in train)
            tiled_r, tiled_c = xp.asarray(np.tile(r, batch)), xp.asarray(np.tile(c, batch))
            offsets = xp.asarray(np.arange(batch + 1, dtype=np.int64) * r.size)
            dr, dc = xp.asarray(r), xp.asarray(c)
            check_s = best_time(lambda: lr.ops.sampled_product(U, V, tiled_r, tiled_c, offsets=offsets,
                                                               check_finite=False), repeats=3, sync=sync)
            dense_s = best_time(lambda: (U @ V.transpose(0, 2, 1))[:, dr, dc], repeats=3, sync=sync)
            rows.append(Row("check (sampled_product)", f"{backend} n={n} k={width} d={depth}, {batch} draws",
                            check_s, f"{peer_name} + gather", dense_s, f"{batch / check_s:.3g} draws/s"))
            print(rows[-1].markdown(), flush=True)
    import os
    report("bench_guess_and_check.py", machine_line(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))),
           f"lowrank_hpc {lr.__version__}, numpy {np.__version__}", "python bench/bench_guess_and_check.py", rows,
           str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"), write=not args.quick)


if __name__ == "__main__":
    main()
