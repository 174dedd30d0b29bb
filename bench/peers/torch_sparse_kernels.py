"""Peer: torch.sparse's SpMM and SDDMM (MKL on x86 CPUs) on a problem saved by bench_cpu_levels.py.

Runs in bench/.venvs/torch. Usage: ``python torch_sparse_kernels.py PROBLEM.npz RANKS REPEATS
THREADS``; prints one JSON object {"spmm": {r: seconds}, "sddmm": {r: seconds}, "version"}.

The problem holds ``shape`` and row-sorted distinct ``rows``, ``cols``, ``vals`` (float32). Each
rank's factors are drawn here (seeded), as the caller draws its own: only times are compared.
SpMM is ``torch.sparse.mm`` of the CSR matrix (built once, not timed) with a dense (n, r) B;
SDDMM is ``torch.sparse.sampled_addmm(S, U, V^T, beta=0)`` on the same CSR pattern (the values
in CSR order, which for row-sorted input is the input order). Best of REPEATS after a warm-up.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    data = np.load(sys.argv[1])
    ranks = [int(r) for r in sys.argv[2].split(",")]
    repeats, threads = int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(threads)
    m, n = (int(x) for x in data["shape"])
    rows = torch.from_numpy(data["rows"].astype(np.int64))
    cols = torch.from_numpy(data["cols"].astype(np.int64))
    vals = torch.from_numpy(data["vals"].astype(np.float32))
    csr = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (m, n)).coalesce().to_sparse_csr()
    rng = np.random.default_rng(1)
    out = {"spmm": {}, "sddmm": {}, "version": torch.__version__}
    for r in ranks:
        U = torch.from_numpy(rng.standard_normal((m, r), dtype=np.float32))
        V = torch.from_numpy(rng.standard_normal((n, r), dtype=np.float32))
        Vt = V.T.contiguous()
        out["spmm"][r] = best(lambda: torch.sparse.mm(csr, V), repeats)
        out["sddmm"][r] = best(lambda: torch.sparse.sampled_addmm(csr, U, Vt, beta=0.0), repeats)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
