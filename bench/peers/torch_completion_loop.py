"""Peer: a matrix-completion gradient loop hand-written in torch.sparse (CPU, MKL), as a careful
torch user writes it: no autograd, the CSR pattern and its transpose built once.

Runs in bench/.venvs/torch. Usage: ``python torch_completion_loop.py PROBLEM.npz THREADS``;
prints one JSON object {"seconds_per_iter": [...], "losses": [...], "version", "threads"}.

The .npz (bench_completion_loop.py) holds ``shape``, row-sorted distinct ``rows``, ``cols``,
``vals`` (float32), the start ``U0``, ``V0``, ``step`` and ``iters``. Each iteration is the
iteration of lowrank_hpc.recover.factored_gd(method="gd") at a fixed step:
z = P(U V^T) - y (``sampled_addmm`` on the pattern), loss 1/2 ||z||^2, then
U <- U - step Z V and V <- V - step Z^T U with Z the CSR matrix of z (``torch.sparse.mm``; Z^T
from the transposed pattern, built once, and z permuted into its order). Times each iteration;
the losses are of the iterates each iteration starts from.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main() -> None:
    data = np.load(sys.argv[1])
    torch.set_num_threads(int(sys.argv[2]))
    m, n = (int(x) for x in data["shape"])
    rows, cols = data["rows"].astype(np.int64), data["cols"].astype(np.int64)
    crow = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=m))]))
    col = torch.from_numpy(cols)
    order_t = np.argsort(cols, kind="stable")  # the transposed pattern: entries by column
    crow_t = torch.from_numpy(np.concatenate([[0], np.cumsum(np.bincount(cols, minlength=n))]))
    col_t, perm_t = torch.from_numpy(rows[order_t]), torch.from_numpy(order_t)
    y = torch.from_numpy(data["vals"].astype(np.float32))
    pattern = torch.sparse_csr_tensor(crow, col, torch.ones_like(y), (m, n))
    step, iters = float(data["step"]), int(data["iters"])
    U, V = torch.from_numpy(data["U0"].copy()), torch.from_numpy(data["V0"].copy())
    seconds, losses = [], []
    for _ in range(iters):
        start = time.perf_counter()
        z = torch.sparse.sampled_addmm(pattern, U, V.T, beta=0.0).values() - y
        losses.append(0.5 * float(z.double().square().sum()))
        Z = torch.sparse_csr_tensor(crow, col, z, (m, n))
        Z_t = torch.sparse_csr_tensor(crow_t, col_t, z[perm_t], (n, m))
        grad_u, grad_v = torch.sparse.mm(Z, V), torch.sparse.mm(Z_t, U)
        U, V = U - step * grad_u, V - step * grad_v
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds_per_iter": seconds, "losses": losses, "version": torch.__version__,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
