"""GPU kernels and ALS against the peers a GPU user has: cuSPARSE through torch and CuPy.

    PYTHONPATH=python python bench/bench_gpu.py                  # nnz 1e7 and 1e8, ALS r 32..256
    PYTHONPATH=python python bench/bench_gpu.py --quick          # small sizes, a check that it runs
    PYTHONPATH=python python bench/bench_gpu.py --sections kernels --nnz 10000000 --ranks 8,32

kernels: float32, distinct random positions (about nnz: drawn, duplicates dropped), nnz / 100
rows and columns, row-sorted and shuffled caller order. SDDMM: ours ``ops.sampled_product`` on
the caller's arrays; torch ``torch.sparse.sampled_addmm`` (cuSPARSE SDDMM) on a CSR pattern built
once, its values gathered back to the caller's order inside the timing when that order is not
CSR order. SpMM: ours ``SparsePattern.times_dense`` (prepared once, as the CSR is) and
``sparse_times_dense`` (nothing prepared: it sorts every call); torch ``torch.sparse.mm`` on CSR
and CuPy's ``csr_matrix @ dense`` (both cuSPARSE SpMM), the caller's values permuted to CSR order
inside the timing when needed. Each row: median of --repeats CUDA-event timings after a warm-up.
Effective bandwidth counts indices, values, output and both factor rows per entry (a factor row
served from L2 counts too, so it may exceed DRAM bandwidth); the copy rate is measured here.

als: ``recover.als`` on the GPU on a MovieLens-20M-shaped problem (138,493 x 26,744, distinct
power-law pairs, bench_peers.distinct_power_law_pairs), seconds per iteration after the first,
each (rank, solver) under a time limit. implicit publishes 0.30 s per iteration on ML-20M at
r = 256 on a GPU.

The markdown table goes to stdout as rows finish.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import lowrank_hpc as lr  # noqa: E402


def cuda_seconds(fn, repeats: int) -> list[float]:
    """Per-call seconds between CUDA events on the current stream, after one warm-up call."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return times


def checked(side: str, fn):
    """fn() then a device sync, so an asynchronous fault names the side that caused it."""
    import cupy

    try:
        result = fn()
        cupy.cuda.Device().synchronize()
        return result
    except Exception as error:
        raise RuntimeError(f"{side}: {type(error).__name__}: {error}") from error


def copy_bandwidth() -> float:
    """Device-to-device copy rate, bytes read plus written per second (1 GiB buffers)."""
    import cupy

    a = cupy.ones(1 << 28, dtype=cupy.float32)
    b = cupy.empty_like(a)
    seconds = statistics.median(cuda_seconds(lambda: b.__setitem__(Ellipsis, a), 5))
    return 2 * a.nbytes / seconds


def row(kernel: str, case: str, ours: list[float], peer_name: str, peer: list[float], note: str = "") -> str:
    ours_s, peer_s = statistics.median(ours), statistics.median(peer)
    return (f"| {kernel} | {case} | {ours_s * 1e3:.3f} ({min(ours) * 1e3:.3f}-{max(ours) * 1e3:.3f}) | {peer_name} | "
            f"{peer_s * 1e3:.3f} ({min(peer) * 1e3:.3f}-{max(peer) * 1e3:.3f}) | {peer_s / ours_s:.2f}x | {note} |")


def kernel_rows(nnz: int, ranks: list[int], repeats: int, bandwidth: float, seed: int,
                chosen_orders: list[str]) -> list[str]:
    import cupy
    import cupyx.scipy.sparse as csp
    import torch

    n = max(nnz // 100, 100)
    rng = cupy.random.default_rng(seed)
    # Distinct pairs: CuPy's csr @ dense sums duplicates in place (its arrays shrink), after which the
    # random-order rows' new values no longer fit its pattern (cuSPARSE then read past the end).
    flat = cupy.unique(rng.integers(0, n * n, nnz, dtype=cupy.int64))
    flat = flat[cupy.argsort(rng.random(flat.size))]
    nnz = int(flat.size)
    rows_random, cols_random = (flat // n).astype(cupy.int32), (flat % n).astype(cupy.int32)
    by_row = cupy.lexsort(cupy.stack([cols_random, rows_random]))
    vals_random = rng.standard_normal(nnz, dtype=cupy.float32)
    orders = {"row-sorted": (rows_random[by_row], cols_random[by_row], vals_random[by_row], None),
              "random order": (rows_random, cols_random, vals_random, by_row)}
    lines = []
    for order, (rows, cols, vals, to_csr) in orders.items():
        if order.split()[0] not in chosen_orders:
            continue
        # The CSR the peers are handed once: caller's entries in CSR order (to_csr maps to it).
        csr_rows = rows if to_csr is None else rows[to_csr]
        csr_cols = cols if to_csr is None else cols[to_csr]
        indptr = cupy.zeros(n + 1, dtype=cupy.int64)
        indptr[1:] = cupy.cumsum(cupy.bincount(csr_rows, minlength=n))
        t_indptr, t_cols = torch.as_tensor(indptr), torch.as_tensor(csr_cols.astype(cupy.int64))
        t_to_csr = None if to_csr is None else torch.as_tensor(to_csr)
        t_vals = torch.as_tensor(vals)
        pattern = lr.ops.SparsePattern(rows, cols, (n, n))
        c_csr = csp.csr_matrix((vals if to_csr is None else vals[to_csr], csr_cols, indptr.astype(cupy.int32)),
                               shape=(n, n))
        c_to_csr = to_csr
        for r in ranks:
            case = f"nnz={nnz:.0e} r={r} {order}"
            U = rng.standard_normal((n, r), dtype=cupy.float32)
            V = rng.standard_normal((n, r), dtype=cupy.float32)
            tU, tV = torch.as_tensor(U), torch.as_tensor(V)
            try:
                # SDDMM
                ours = lambda: lr.ops.sampled_product(U, V, rows, cols, check_finite=False)  # noqa: E731
                ones = torch.sparse_csr_tensor(t_indptr, t_cols, torch.ones(nnz, device="cuda"), size=(n, n))
                inverse = None if t_to_csr is None else torch.empty_like(t_to_csr)
                if inverse is not None:
                    inverse[t_to_csr] = torch.arange(nnz, device="cuda")

                def torch_sddmm():
                    out = torch.sparse.sampled_addmm(ones, tU, tV.T, beta=0.0, alpha=1.0).values()
                    return out if inverse is None else out[inverse]

                mine = checked("ours sampled_product", ours)
                theirs = checked("torch sampled_addmm", torch_sddmm)
                err = float(cupy.abs(mine - cupy.asarray(theirs)).max())
                t_ours, t_peer = cuda_seconds(ours, repeats), cuda_seconds(torch_sddmm, repeats)
                traffic = nnz * (2 * 4 + 4 + 2 * r * 4)
                lines.append(row("SDDMM sampled_product", case, t_ours, "torch sampled_addmm (cuSPARSE)", t_peer,
                                 f"{traffic / statistics.median(t_ours) / 1e9:.0f} GB/s effective = "
                                 f"{traffic / statistics.median(t_ours) / bandwidth:.0%} of copy; max diff {err:.1e}"))
                print(lines[-1], flush=True)
                # SpMM
                prepared = lambda: pattern.times_dense(vals, V, check_finite=False)  # noqa: E731
                one_shot = lambda: lr.ops.sparse_times_dense(rows, cols, vals, V, n, check_finite=False)  # noqa: E731

                def torch_spmm():
                    values = t_vals if t_to_csr is None else t_vals[t_to_csr]
                    return torch.sparse.mm(torch.sparse_csr_tensor(t_indptr, t_cols, values, size=(n, n)), tV)

                def cupy_spmm():
                    if c_to_csr is not None:
                        c_csr.data = vals[c_to_csr]
                    return c_csr @ V

                mine = checked("ours SparsePattern.times_dense", prepared)
                theirs = cupy.asarray(checked("torch.sparse.mm", torch_spmm))
                checked("ours sparse_times_dense", one_shot)
                checked("cupy csr @ dense", cupy_spmm)
                err = float(cupy.abs(mine - theirs).max() / (cupy.abs(theirs).max() + 1e-30))
                t_prep, t_one = cuda_seconds(prepared, repeats), cuda_seconds(one_shot, repeats)
                t_torch, t_cupy = cuda_seconds(torch_spmm, repeats), cuda_seconds(cupy_spmm, repeats)
                traffic = nnz * (4 + 4 + r * 4) + n * r * 4
                note = (f"{traffic / statistics.median(t_prep) / 1e9:.0f} GB/s effective; "
                        f"rel diff {err:.1e}")
                lines.append(row("SpMM SparsePattern.times_dense", case, t_prep, "torch.sparse.mm CSR (cuSPARSE)",
                                 t_torch, note))
                lines.append(row("SpMM SparsePattern.times_dense", case, t_prep, "cupy csr @ dense (cuSPARSE)",
                                 t_cupy, ""))
                lines.append(row("SpMM sparse_times_dense (sorts each call)", case, t_one,
                                 "torch.sparse.mm CSR (cuSPARSE)", t_torch, ""))
                for line in lines[-3:]:
                    print(line, flush=True)
            except Exception as error:  # one failing rank must not hide the others
                lines.append(f"| {case} | failed: {type(error).__name__}: {str(error)[:200]} |")
                print(lines[-1], flush=True)
            del U, V, tU, tV
            cupy.get_default_memory_pool().free_all_blocks()
    return lines


def als_rows(ranks: list[int], solvers: list[str], iterations: int, time_limit: float, quick: bool) -> list[str]:
    import cupy
    from bench_peers import distinct_power_law_pairs, half_star_ratings

    shape, nnz = ((2000, 1000), 50_000) if quick else ((138_493, 26_744), 20_000_000)
    started = time.perf_counter()
    rows, cols = distinct_power_law_pairs(shape[0], shape[1], nnz, 0)
    vals = half_star_ratings(rows, cols, shape, 0)
    print(f"# ALS problem {shape} nnz={rows.shape[0]:,} generated in {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)
    d_rows, d_cols, d_vals = cupy.asarray(rows), cupy.asarray(cols), cupy.asarray(vals)
    lines = []
    for r in ranks:
        for solver in solvers:
            stamps: list[float] = []
            losses: list[float] = []

            def callback(iteration, info):
                cupy.cuda.Device().synchronize()
                stamps.append(time.perf_counter())
                losses.append(float(info.get("loss", float("nan"))))

            try:
                start = time.perf_counter()
                lr.recover.als(d_rows, d_cols, d_vals, shape, r, reg=0.05, solver=solver, max_iter=iterations,
                               tol=0, seed=0, callback=callback, time_limit=time_limit)
                cupy.cuda.Device().synchronize()
                steady = np.diff(stamps) if len(stamps) > 1 else np.array([stamps[0] - start]) if stamps else []
                per_iter = float(np.median(steady)) if len(steady) else float("nan")
                lines.append(f"| ALS {solver} GPU | {shape[0]}x{shape[1]} nnz={rows.shape[0]:.1e} r={r} | "
                             f"{per_iter:.3f} s/iter | first {stamps[0] - start if stamps else float('nan'):.2f} s, "
                             f"{len(stamps)} its, loss {losses[-1] if losses else float('nan'):.5g} | "
                             f"implicit GPU (published, ML-20M r=256): 0.30 s/iter |")
            except Exception as error:
                lines.append(f"| ALS {solver} GPU r={r} | failed: {type(error).__name__}: {str(error)[:300]} |")
            print(lines[-1], flush=True)
            cupy.get_default_memory_pool().free_all_blocks()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", default="kernels,als")
    parser.add_argument("--nnz", default="10000000,100000000")
    parser.add_argument("--ranks", default="1,8,32,128,256")
    parser.add_argument("--als-ranks", default="32,64,128,256")
    parser.add_argument("--als-solvers", default="cg,cholesky")
    parser.add_argument("--als-iterations", type=int, default=4)
    parser.add_argument("--als-time-limit", type=float, default=30.0, help="seconds per (rank, solver)")
    parser.add_argument("--orders", default="row-sorted,random", help="caller orders of the kernel section")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    info = lr.info()
    if not info["cuda"]["available"]:
        sys.exit(f"bench_gpu.py: no CUDA backend ({info['cuda']})")
    bandwidth = copy_bandwidth()
    print(f"{info['cuda']['device']}; device copy {bandwidth / 1e12:.2f} TB/s (read + write); lowrank_hpc "
          f"{lr.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| kernel | case | ours ms (min-max) | peer | peer ms (min-max) | peer/ours | note |")
    print("|---|---|---|---|---|---|---|", flush=True)
    sections = args.sections.split(",")
    if "kernels" in sections:
        nnzs = [10**5] if args.quick else [int(x) for x in args.nnz.split(",")]
        for nnz in nnzs:
            kernel_rows(nnz, [int(x) for x in args.ranks.split(",")], args.repeats, bandwidth, seed=0,
                        chosen_orders=args.orders.split(","))
    if "als" in sections:
        als_rows([int(x) for x in args.als_ranks.split(",")], args.als_solvers.split(","), args.als_iterations,
                 args.als_time_limit, args.quick)


if __name__ == "__main__":
    main()
