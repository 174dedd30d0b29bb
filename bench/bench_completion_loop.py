"""factored_gd on entry sampling against the completion loop a careful torch user hand-writes
(issue 10): the same iteration, start and fixed step on the same data, seconds per iteration.

    bash bench/setup_peers.sh                                       # once: bench/.venvs/torch
    PYTHONPATH=python python bench/bench_completion_loop.py         # 20,000 x 20,000, 8M entries, r = 20
    PYTHONPATH=python python bench/bench_completion_loop.py --size 2000 --nnz 200000 --iters 5   # quick
    PYTHONPATH=python python bench/bench_completion_loop.py --shuffled   # ours given the entries shuffled

Data: an N x N matrix of rank r (Gaussian factors scaled to unit entries) plus 1% noise, observed
at nnz distinct row-sorted positions, float32. Ours: ``recover.factored_gd(EntrySampling(...), y,
r, method="gd", init=(U0, V0), step=step, tol=0)`` with the step factored_gd picks itself (0.5 /
||A*(y)||_2), timed between its callbacks (every iteration: one sampled product, the loss in
float64, two sparse-times-dense products, the factor updates and their finiteness checks; the
step is never halved here, so no extra pass). torch (bench/peers/torch_completion_loop.py):
``sampled_addmm`` for the residual, its float64 loss, two ``torch.sparse.mm`` with the CSR pattern
and its transpose built once. Medians over the iterations after the first (which holds each
side's setup); the loss each side reaches after the same iterations, to show the iterates agree.
With --shuffled ours is given the same entries in a random order (factored_gd then sorts them
once, before its first iteration: ours' setup, printed beside) and torch its CSR pattern as before
(a torch user sorts once too, outside this timing).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import machine_line, median, run_peer  # noqa: E402


def problem(size: int, nnz: int, rank: int, seed: int) -> dict:
    import lowrank_hpc as lr

    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, size * size, int(nnz * 1.01), dtype=np.int64))
    keys = np.sort(rng.choice(keys, min(nnz, keys.shape[0]), replace=False))
    rows, cols = (keys // size).astype(np.int32), (keys % size).astype(np.int32)
    A = (rng.standard_normal((size, rank)) / rank ** 0.25).astype(np.float32)
    B = (rng.standard_normal((size, rank)) / rank ** 0.25).astype(np.float32)
    vals = lr.ops.sampled_product(A, B, rows, cols)
    vals += np.float32(0.01) * rng.standard_normal(vals.shape[0], dtype=np.float32)
    start = np.random.default_rng(seed + 1)
    U0 = (1e-3 * start.standard_normal((size, rank)) / np.sqrt(size)).astype(np.float32)
    V0 = (1e-3 / 3 * start.standard_normal((size, rank)) / np.sqrt(size)).astype(np.float32)
    return dict(shape=np.array([size, size]), rows=rows, cols=cols, vals=vals, U0=U0, V0=V0)


def ours(data: dict, rank: int, iters: int, shuffled: bool = False) -> tuple[list[float], list[float], float, float]:
    """(seconds per iteration, loss after each, step, seconds from a fresh operator to the first
    iteration's end) of factored_gd at its own step; with shuffled, on the entries in a random order."""
    import lowrank_hpc as lr

    shape = tuple(int(x) for x in data["shape"])
    order = np.random.default_rng(1).permutation(data["rows"].shape[0]) if shuffled else slice(None)
    rows, cols, vals = data["rows"][order], data["cols"][order], data["vals"][order]
    init = (data["U0"], data["V0"])
    step = lr.recover.factored_gd(lr.sensing.EntrySampling(rows, cols, shape), vals, rank, method="gd", init=init,
                                  max_iter=1, tol=0).step
    stamps, losses = [], []

    def callback(iteration: int, info: dict) -> None:
        stamps.append(time.perf_counter())
        losses.append(float(info["loss"]))

    start = time.perf_counter()
    op = lr.sensing.EntrySampling(rows, cols, shape)  # fresh: its sort and patterns inside the setup
    result = lr.recover.factored_gd(op, vals, rank, method="gd", init=init, step=step, max_iter=iters, tol=0,
                                    callback=callback)
    assert result.n_iter == iters and result.step == step, "the step was halved: the sides would differ"
    return list(np.diff(stamps)), losses, step, stamps[0] - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=8_000_000)
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shuffled", action="store_true", help="give ours the entries in a random order")
    args = parser.parse_args()
    import lowrank_hpc as lr

    data = problem(args.size, args.nnz, args.rank, args.seed)
    seconds, losses, step, setup = ours(data, args.rank, args.iters, args.shuffled)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "problem.npz"
        np.savez(path, step=step, iters=args.iters + 1, **data)
        peer, why = run_peer("torch", "torch_completion_loop.py", path, args.threads)
    nnz = data["rows"].shape[0]
    print(f"### bench_completion_loop.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"Machine: {machine_line(lr.info()['openmp_threads'], '')}; CPU level {lr.info()['cpu_level']}. "
          f"Command: `PYTHONPATH=python python bench/bench_completion_loop.py --size {args.size} --nnz {args.nnz} "
          f"--rank {args.rank} --iters {args.iters}{' --shuffled' if args.shuffled else ''}`\n")
    print(f"{args.size:,} x {args.size:,}, {nnz:,} entries ({'shuffled' if args.shuffled else 'row-sorted'} for "
          f"ours), r = {args.rank}, float32, step {step:.4g}, {args.iters} iterations (median of the last "
          f"{args.iters - 1}, ms per iteration):\n")
    print("| side | ms per iteration (median, min-max) | loss after the iterations | torch / ours |")
    print("|---|---|---|---|")
    ours_ms = median(seconds) * 1e3
    print(f"| ours factored_gd (setup to the first iteration's end: {setup:.2f} s) | {ours_ms:.1f} "
          f"({min(seconds) * 1e3:.1f}-{max(seconds) * 1e3:.1f}) | {losses[-1]:.6g} | - |")
    if peer is None:
        print(f"| torch | not measured: {why} | - | - |")
        return
    theirs = peer["seconds_per_iter"][1:]  # the first holds the transpose's first use
    peer_ms = median(theirs) * 1e3
    print(f"| torch {peer['version']} hand-written loop ({peer['threads']} threads) | {peer_ms:.1f} "
          f"({min(theirs) * 1e3:.1f}-{max(theirs) * 1e3:.1f}) | {peer['losses'][-1]:.6g} | {peer_ms / ours_ms:.2f}x |")


if __name__ == "__main__":
    main()
