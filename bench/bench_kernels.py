"""Kernel benchmark: lowrank_hpc against the peer a user would write, measured in the same run.

    python bench/bench_kernels.py            # full size (nnz = 1e7, r = 32, float32), appends to BENCHMARKS.md
    python bench/bench_kernels.py --quick    # small sizes, prints only

Peers: the numpy gather-einsum for sampled_product, scipy.sparse CSR @ dense for
sparse_times_dense, numpy for the dense kernels. With --gpu (and CuPy), the same kernels on the
GPU against CuPy (cuBLAS, cupyx.scipy.sparse).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Row, best_time, machine_line, report, stream_bandwidth  # noqa: E402

import lowrank_hpc as lr  # noqa: E402


def coo_problem(m: int, n: int, r: int, nnz: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((m, r), dtype=np.float32)
    V = rng.standard_normal((n, r), dtype=np.float32)
    rows = rng.integers(0, m, nnz).astype(np.int32)
    cols = rng.integers(0, n, nnz).astype(np.int32)
    return U, V, rows, cols


def bench_sampled_product(U, V, rows, cols, bandwidth: float) -> list[Row]:
    nnz, r = rows.shape[0], U.shape[1]
    ours = best_time(lambda: lr.ops.sampled_product(U, V, rows, cols))
    peer = best_time(lambda: np.einsum("kr,kr->k", U[rows], V[cols]), repeats=2)
    assert np.allclose(lr.ops.sampled_product(U, V, rows, cols)[:1000],
                       np.einsum("kr,kr->k", U[rows[:1000]], V[cols[:1000]]), rtol=1e-4, atol=1e-4)
    # Compulsory traffic: two indices and one value per entry, plus both factor rows.
    traffic = nnz * (2 * rows.itemsize + U.itemsize + 2 * r * U.itemsize)
    note = (f"{traffic / ours / 1e9:.1f} GB/s incl. factor rows = {traffic / ours / bandwidth:.0%} of copy "
            f"bandwidth {bandwidth / 1e9:.1f} GB/s")
    return [Row("sampled_product", f"nnz={nnz:.0e} r={r} f32", ours, "numpy gather-einsum", peer, note)]


def bench_sparse_times_dense(U, V, rows, cols, bandwidth: float) -> list[Row]:
    nnz, m, n, r = rows.shape[0], U.shape[0], V.shape[0], U.shape[1]
    vals = np.random.default_rng(1).standard_normal(nnz, dtype=np.float32)
    by_row = np.lexsort((cols, rows))
    srows, scols, svals = rows[by_row], cols[by_row], vals[by_row]
    S = sp.csr_matrix((vals, (rows, cols)), shape=(m, n))
    St = S.T.tocsr()
    csr_peer = best_time(lambda: S @ V, repeats=3)
    csr_peer_t = best_time(lambda: St @ U, repeats=3)
    coo_peer = best_time(lambda: sp.coo_matrix((vals, (rows, cols)), shape=(m, n)).tocsr() @ V, repeats=3)
    one_shot = best_time(lambda: lr.ops.sparse_times_dense(rows, cols, vals, V, m), repeats=3)
    one_shot_sorted = best_time(lambda: lr.ops.sparse_times_dense(srows, scols, svals, V, m), repeats=3)
    pattern = lr.ops.SparsePattern(rows, cols, (m, n))
    sorted_pattern = lr.ops.SparsePattern(srows, scols, (m, n))
    prepared = best_time(lambda: pattern.times_dense(vals, V), repeats=3)
    prepared_sorted = best_time(lambda: sorted_pattern.times_dense(svals, V), repeats=3)
    prepared_sorted_t = best_time(lambda: sorted_pattern.times_dense(svals, U, transpose=True), repeats=3)
    np.testing.assert_allclose(pattern.times_dense(vals, V), S @ V, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(sorted_pattern.times_dense(svals, U, transpose=True), St @ U, rtol=1e-3, atol=1e-3)
    # Compulsory traffic of a CSR product: an index and a value per entry, the B row it scales
    # (cache hits when B fits in cache, so this may exceed the copy bandwidth), the output.
    traffic = nnz * (rows.itemsize + vals.itemsize + r * V.itemsize) + m * r * V.itemsize
    case = f"nnz={nnz:.0e} r={r} f32"

    def note(seconds: float, extra: str = "") -> str:
        return f"{traffic / seconds / 1e9:.1f} GB/s = {traffic / seconds / bandwidth:.0%} of copy bandwidth{extra}"

    return [
        Row("sparse_times_dense, random order", case, one_shot, "scipy COO->CSR @ dense", coo_peer,
            note(one_shot, "; both sort")),
        Row("sparse_times_dense, random order", case, one_shot, "scipy CSR @ dense", csr_peer,
            note(one_shot, "; we sort, scipy was handed CSR")),
        Row("sparse_times_dense, row-sorted", case, one_shot_sorted, "scipy CSR @ dense", csr_peer,
            note(one_shot_sorted)),
        Row("SparsePattern.times_dense, random order", case, prepared, "scipy CSR @ dense", csr_peer,
            note(prepared, "; values gathered through the permutation")),
        Row("SparsePattern.times_dense, row-sorted", case, prepared_sorted, "scipy CSR @ dense", csr_peer,
            note(prepared_sorted)),
        Row("SparsePattern.times_dense transpose, row-sorted", case, prepared_sorted_t, "scipy CSR(S^T) @ dense",
            csr_peer_t, note(prepared_sorted_t, "; column order through the permutation")),
    ]


def bench_lowrank_product(quick: bool) -> list[Row]:
    size = 500 if quick else 4000
    rng = np.random.default_rng(2)
    U = rng.standard_normal((size, 32), dtype=np.float32)
    V = rng.standard_normal((size, 32), dtype=np.float32)
    ours = best_time(lambda: lr.ops.lowrank_product(U, V), repeats=3)
    peer = best_time(lambda: U @ V.T, repeats=3)
    return [Row("lowrank_product", f"{size}x{size} r=32 f32", ours, "numpy U @ V.T", peer,
                "both are the vendor BLAS; the ratio is our validation overhead")]


def bench_gpu(U, V, rows, cols) -> list[Row]:
    import cupy
    import cupyx.scipy.sparse as csp

    sync = cupy.cuda.Device().synchronize
    Ud, Vd, rd, cd = map(cupy.asarray, (U, V, rows, cols))
    m, r, nnz = U.shape[0], U.shape[1], rows.shape[0]
    case = f"nnz={nnz:.0e} r={r} f32 GPU"
    ours = best_time(lambda: lr.ops.sampled_product(Ud, Vd, rd, cd), sync=sync)
    peer = best_time(lambda: cupy.einsum("kr,kr->k", Ud[rd], Vd[cd]), sync=sync)
    vals = cupy.asarray(np.random.default_rng(1).standard_normal(nnz, dtype=np.float32))
    S = csp.csr_matrix((vals, (rd, cd)), shape=(m, V.shape[0]))
    spmm = best_time(lambda: lr.ops.sparse_times_dense(rd, cd, vals, Vd, m), sync=sync)
    spmm_peer = best_time(lambda: S @ Vd, sync=sync)
    gemm = best_time(lambda: lr.ops.lowrank_product(Ud[:8192], Vd[:8192]), sync=sync)
    gemm_peer = best_time(lambda: Ud[:8192] @ Vd[:8192].T, sync=sync)
    return [Row("sampled_product", case, ours, "cupy gather-einsum", peer),
            Row("sparse_times_dense (radix sort + CSR, no atomics)", case, spmm, "cupyx CSR @ dense", spmm_peer),
            Row("lowrank_product", "8192x8192 r=32 f32 GPU", gemm, "cupy (cuBLAS)", gemm_peer)]


def extra_benchmarks(quick: bool) -> list[Row]:
    """The sensing and kernel_product benchmarks, each also runnable on its own."""
    rows: list[Row] = []
    for module_name in ("bench_kernel_product", "bench_sensing"):
        if not (Path(__file__).resolve().parent / f"{module_name}.py").exists():
            continue
        module = __import__(module_name)
        rows += module.run(quick=quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; do not write BENCHMARKS.md")
    parser.add_argument("--gpu", action="store_true", help="also run the GPU kernels against CuPy")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent.parent / "BENCHMARKS.md"))
    args = parser.parse_args()

    nnz = 10**5 if args.quick else 10**7
    m, n, r = (2000, 1000, 32) if args.quick else (100_000, 20_000, 32)
    bandwidth = stream_bandwidth()
    U, V, rows, cols = coo_problem(m, n, r, nnz)
    table = bench_sampled_product(U, V, rows, cols, bandwidth)
    table += bench_sparse_times_dense(U, V, rows, cols, bandwidth)
    table += bench_lowrank_product(args.quick)
    table += extra_benchmarks(args.quick)
    if args.gpu:
        table += bench_gpu(U, V, rows, cols)

    info = lr.info()
    gpu = f"GPU {info['cuda']['device']}" if args.gpu and info["cuda"]["available"] else ""
    flag = " --gpu" if args.gpu else ""
    report(f"bench_kernels.py{flag}", machine_line(info["openmp_threads"], gpu),
           f"numpy {np.__version__}, lowrank_hpc {lr.__version__}.", f"python bench/bench_kernels.py{flag}", table,
           args.output, write=not args.quick)

if __name__ == "__main__":
    main()
