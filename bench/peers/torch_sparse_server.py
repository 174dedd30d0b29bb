"""Peer: torch.sparse's SpMM and SDDMM (MKL on x86 CPUs), kept running so that bench_peers.py can
alternate its calls with ours (ours, torch, ours, torch, ...) in the same run.

Runs in bench/.venvs/torch. Usage: ``python torch_sparse_server.py THREADS``; prints one JSON line
describing itself ({"version", "capability", "mkl", "threads"}), then answers one JSON request
per line of stdin with one JSON line (or {"error": ...}):

- {"op": "load", "path": P}: the problem P.npz (``shape``; ``rows``, ``cols``, ``vals`` float32
  in the CALLER's order: row-sorted or any other). What a torch user with that COO does once,
  outside any timing: the permutation to row-major order (``argsort`` of row * n + col; the
  positions are distinct) and the CSR matrix built from it. {"sorted": whether the caller's
  order already was CSR order}.
- {"op": "factors", "rank": r, "seed": s}: U (m, r) and V (n, r) standard normal float32 drawn
  with ``numpy.random.default_rng(s)`` (U first), the draws the caller makes; V^T made
  contiguous once here (sampled_addmm's mat2), not timed.
- {"op": "time", "kernel": "spmm" | "sddmm"}: one call, {"seconds"}. What is inside the timing:
  spmm is ``torch.sparse.mm(S, V)``; for a caller order that is not CSR order, the caller's values
  permuted into CSR order and a CSR tensor made around them first (``torch.sparse_csr_tensor``,
  no copy of the index arrays). sddmm is ``torch.sparse.sampled_addmm(S, U, V^T, beta=0)``; for
  a caller order that is not CSR order, its values gathered back into the caller's order.
- {"op": "check", "kernel": K}: one call's result reduced to {"weighted", "absolute"}: the sum of
  result.ravel()[k] * cos(k) and of |result|, in float64 (order-sensitive, so a wrong
  permutation shows), for the caller to compare with its own.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch


def load(state: dict, request: dict) -> dict:
    data = np.load(request["path"])
    m, n = (int(x) for x in data["shape"])
    rows, cols = data["rows"].astype(np.int64), data["cols"].astype(np.int64)
    keys = rows * n + cols
    in_order = bool(np.all(keys[1:] > keys[:-1]))
    perm = None if in_order else np.argsort(keys, kind="stable")
    csr_rows, csr_cols = (rows, cols) if in_order else (rows[perm], cols[perm])
    crow = np.concatenate([[0], np.cumsum(np.bincount(csr_rows, minlength=m))])
    vals = torch.from_numpy(data["vals"].astype(np.float32))
    state.clear()
    state.update(size=(m, n), vals=vals, crow=torch.from_numpy(crow), col=torch.from_numpy(csr_cols),
                 perm=None if in_order else torch.from_numpy(perm),
                 inverse=None if in_order else torch.from_numpy(np.argsort(perm)))
    state["csr"] = torch.sparse_csr_tensor(state["crow"], state["col"], vals if in_order else vals[state["perm"]],
                                           state["size"])
    return {"sorted": in_order}


def factors(state: dict, request: dict) -> dict:
    rng = np.random.default_rng(request["seed"])
    (m, n), r = state["size"], request["rank"]
    share(state, torch.from_numpy(rng.standard_normal((m, r), dtype=np.float32)),
          torch.from_numpy(rng.standard_normal((n, r), dtype=np.float32)))
    return {}


def share(state: dict, U: torch.Tensor, V: torch.Tensor) -> None:
    """The factors the kernels use, V^T made contiguous once (sampled_addmm's mat2)."""
    state["U"], state["V"], state["Vt"] = U, V, V.T.contiguous()


def spmm(state: dict) -> torch.Tensor:
    if state["perm"] is None:
        return torch.sparse.mm(state["csr"], state["V"])
    csr = torch.sparse_csr_tensor(state["crow"], state["col"], state["vals"][state["perm"]], state["size"])
    return torch.sparse.mm(csr, state["V"])


def sddmm(state: dict) -> torch.Tensor:
    out = torch.sparse.sampled_addmm(state["csr"], state["U"], state["Vt"], beta=0.0).values()
    return out if state["inverse"] is None else out[state["inverse"]]


KERNELS = {"spmm": spmm, "sddmm": sddmm}


def time_kernel(state: dict, request: dict) -> dict:
    kernel = KERNELS[request["kernel"]]
    start = time.perf_counter()
    kernel(state)
    return {"seconds": time.perf_counter() - start}


def check(state: dict, request: dict) -> dict:
    flat = KERNELS[request["kernel"]](state).numpy().astype(np.float64).ravel()
    return {"weighted": float(flat @ np.cos(np.arange(flat.shape[0]))), "absolute": float(np.abs(flat).sum())}


OPS = {"load": load, "factors": factors, "time": time_kernel, "check": check}


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]))
    print(json.dumps({"version": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                      "mkl": torch.backends.mkl.is_available(), "threads": torch.get_num_threads()}), flush=True)
    state: dict = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = OPS[request["op"]](state, request)
        except Exception as error:  # reported to the caller, which prints "not measured: ..."
            reply = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
