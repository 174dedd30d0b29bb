"""kernel_product benchmark: lowrank_hpc against the numpy a user would write, same run.

    python bench/bench_kernel_product.py            # m = n = 4000, r = 32, float32
    python bench/bench_kernel_product.py --quick    # m = n = 1000

Dense: our GEMM (the vendor BLAS) + f in place by the OpenMP element step, against
``np.tanh(U @ V.T)`` and ``np.maximum(U @ V.T, 0)``. Top-k (row mode, k = 16): our blocked
GEMM + fused f/selection, which never forms the dense matrix, against the dense numpy product
followed by ``np.argpartition`` and a sort of the k winners. Top-k with many winners (row
mode, k = n / 4; global mode, k = 16, 1,000 and a tenth of the entries, as a SNELL adapter
keeps), against the peer such a user has: the dense product and ``torch.topk`` (torch's own
GEMM and tanh, its threads set to ours), or numpy's argpartition where torch is missing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import HEADER, Row, best_time  # noqa: E402

import lowrank_hpc as lr  # noqa: E402

TOP_K = 16


def _numpy_top_k_rows(U: np.ndarray, V: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The dense peer: f(U V^T) in full, argpartition per row, then the k winners sorted."""
    K = np.tanh(U @ V.T)
    part = np.argpartition(-np.abs(K), k - 1, axis=1)[:, :k]
    winners = np.take_along_axis(K, part, axis=1)
    order = np.argsort(-np.abs(winners), axis=1, kind="stable")
    return np.take_along_axis(winners, order, axis=1), np.take_along_axis(part, order, axis=1)


def run(quick: bool = False) -> list[Row]:
    """Rows of the kernel_product benchmark (each peer measured in the same run)."""
    size, r = (1000, 32) if quick else (4000, 32)
    repeats = 5 if quick else 3
    rng = np.random.default_rng(3)
    U = (rng.standard_normal((size, r), dtype=np.float32) / r ** 0.25).astype(np.float32)
    V = (rng.standard_normal((size, r), dtype=np.float32) / r ** 0.25).astype(np.float32)
    case = f"{size}x{size} r={r} f32"

    np.testing.assert_allclose(lr.ops.kernel_product(U, V, "tanh"), np.tanh(U @ V.T), rtol=1e-5, atol=1e-6)
    values, _ = lr.ops.kernel_product(U, V, "tanh", TOP_K)
    # Magnitudes only: saturated tanh ties in float32 and argpartition breaks ties arbitrarily.
    np.testing.assert_allclose(np.abs(values), np.abs(_numpy_top_k_rows(U, V, TOP_K)[0]), rtol=1e-5, atol=1e-6)

    rows = []
    for kernel, peer_name, peer in (("tanh", "np.tanh(U @ V.T)", lambda: np.tanh(U @ V.T)),
                                    ("relu", "np.maximum(U @ V.T, 0)", lambda: np.maximum(U @ V.T, 0))):
        ours = best_time(lambda: lr.ops.kernel_product(U, V, kernel), repeats=repeats)
        rows.append(Row(f"kernel_product {kernel}", case, ours, peer_name, best_time(peer, repeats=repeats),
                        "GEMM + f in place (OpenMP), no temporary"))
    ours = best_time(lambda: lr.ops.kernel_product(U, V, "tanh", TOP_K), repeats=repeats)
    peer = best_time(lambda: _numpy_top_k_rows(U, V, TOP_K), repeats=repeats)
    rows.append(Row(f"kernel_product tanh top_k={TOP_K} row", case, ours, "numpy dense + argpartition", peer,
                    "row tiles or blocks: never forms the dense m x n"))
    peer_name, top_k_peer = _many_winners_peer(U, V)
    for mode, k in (("row", size // 4), ("global", TOP_K), ("global", 1000), ("global", size * size // 10)):
        ours_values = lr.ops.kernel_product(U, V, "tanh", k, top_k_mode=mode)[0]
        # Magnitudes only, as above (ties may be broken otherwise by the peer).
        np.testing.assert_allclose(np.sort(np.abs(ours_values), axis=None), np.sort(top_k_peer(mode, k), axis=None),
                                   rtol=1e-5, atol=1e-6)
        ours = best_time(lambda: lr.ops.kernel_product(U, V, "tanh", k, top_k_mode=mode), repeats=repeats)
        peer = best_time(lambda: top_k_peer(mode, k), repeats=repeats)
        rows.append(Row(f"kernel_product tanh top_k={k:,} {mode}", case, ours, peer_name, peer,
                        "row tiles or blocks: never forms the dense m x n"))
    return rows


def _many_winners_peer(U: np.ndarray, V: np.ndarray):
    """(name, call(mode, k) -> the k best |tanh(U V^T)| of each row or of all) by torch.topk on
    the dense product, or by numpy's argpartition without torch."""
    try:
        import torch
    except ImportError:
        def numpy_top_k(mode: str, k: int) -> np.ndarray:
            magnitude = np.abs(np.tanh(U @ V.T))
            if mode == "global":
                magnitude = magnitude.reshape(1, -1)
            return -np.partition(-magnitude, k - 1, axis=1)[:, :k]
        return "numpy dense + partition", numpy_top_k
    import lowrank_hpc

    torch.set_num_threads(lowrank_hpc.info()["openmp_threads"])
    U_t, V_t = torch.from_numpy(U), torch.from_numpy(V)

    def torch_top_k(mode: str, k: int) -> np.ndarray:
        K = torch.tanh(U_t @ V_t.T)
        magnitude = K.abs() if mode == "row" else K.abs().reshape(-1)
        values, indices = torch.topk(magnitude, k, dim=-1)
        K.reshape(-1 if mode == "global" else K.shape[0], *(() if mode == "global" else (-1,))).gather(-1, indices)
        return values.numpy()
    return f"torch {torch.__version__.split('+')[0]} dense + topk", torch_top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="m = n = 1000 instead of 4000")
    args = parser.parse_args()
    print(HEADER)
    for row in run(quick=args.quick):
        print(row.markdown())


if __name__ == "__main__":
    main()
