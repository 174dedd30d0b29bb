"""Peer: plain PyTorch (CPU) gradient descent on factors, written the way researchers write it.

Runs in bench/.venvs/torch. Usage: ``python torch_gd.py PROBLEM.npz REPEATS``; prints one JSON
object: {"seconds", "seconds_per_iter", "final_loss", "test_rmse", "threads", "version"}.

The .npz (written by bench_solvers.py, the same data lowrank_hpc runs on) holds ``kind``
("sensing" or "completion"), the start ``U0``, ``V0``, ``step``, ``iters`` and:
- sensing: the dense operator ``A`` (m, n1*n2), ``y`` and the truth ``M`` (test RMSE = RMS of
  U V^T - M over all entries);
- completion: ``rows``, ``cols``, ``vals`` (observed) and ``test_rows``, ``test_cols``,
  ``test_vals`` (held out).
Loss 1/2 ||A(U V^T) - y||^2, gradient by autograd, plain SGD step on U and V together: the same
iteration as lowrank_hpc.recover.factored_gd(method="gd") with a fixed step.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def main() -> None:
    data = np.load(sys.argv[1])
    repeats = int(sys.argv[2])
    kind, step, iters = str(data["kind"]), float(data["step"]), int(data["iters"])
    if kind == "sensing":
        A, y = torch.from_numpy(data["A"]), torch.from_numpy(data["y"])

        def loss_of(U, V):
            return 0.5 * ((A @ (U @ V.T).reshape(-1) - y) ** 2).sum()
    else:
        rows, cols = torch.from_numpy(data["rows"]).long(), torch.from_numpy(data["cols"]).long()
        vals = torch.from_numpy(data["vals"])

        def loss_of(U, V):
            return 0.5 * (((U[rows] * V[cols]).sum(dim=1) - vals) ** 2).sum()

    def solve():
        U = torch.from_numpy(data["U0"]).clone().requires_grad_(True)
        V = torch.from_numpy(data["V0"]).clone().requires_grad_(True)
        optimizer = torch.optim.SGD([U, V], lr=step)
        for _ in range(iters):
            optimizer.zero_grad()
            loss = loss_of(U, V)
            loss.backward()
            optimizer.step()
        return U.detach().numpy(), V.detach().numpy()

    best = float("inf")
    for attempt in range(repeats + 1):  # the first run warms up (allocator, threads); not counted
        start = time.perf_counter()
        U, V = solve()
        if attempt:
            best = min(best, time.perf_counter() - start)
    U64, V64 = U.astype(np.float64), V.astype(np.float64)
    if kind == "sensing":
        error = U64 @ V64.T - data["M"]
    else:
        error = np.einsum("kr,kr->k", U64[data["test_rows"]], V64[data["test_cols"]]) - data["test_vals"]
    with torch.no_grad():
        final_loss = float(loss_of(torch.from_numpy(U), torch.from_numpy(V)))
    print(json.dumps({"seconds": best, "seconds_per_iter": best / iters, "final_loss": final_loss,
                      "test_rmse": float(np.sqrt(np.mean(error ** 2))), "threads": torch.get_num_threads(),
                      "version": torch.__version__}))


if __name__ == "__main__":
    main()
