"""Adafactor benchmark: one step of lowrank_hpc's fused kernel against torch.optim.Adafactor
(foreach off, torch's default, and on), measured in the same run on the same tensors.

    python bench/bench_adafactor.py            # 4096x4096 and 100 x 1024x1024 float32, appends to BENCHMARKS.md
    python bench/bench_adafactor.py --quick    # small sizes, prints only

Rows: ``adafactor_step`` on numpy arrays (a list of parameters is one launch) and the
``lowrank_hpc.optim.Adafactor`` optimizer on torch tensors, each against torch's two paths.
Bandwidth: 12 bytes per float32 entry are compulsory (read G and X, write X); the kernel makes
three passes over G and two over X (24 bytes per entry), of which caches catch a part.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import Row, best_time, machine_line, report, stream_bandwidth  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc import optim  # noqa: E402


def bench_case(torch, label: str, count: int, n: int, m: int, bandwidth: float, repeats: int) -> list[Row]:
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((n, m), dtype=np.float32) for _ in range(count)]
    grads = [rng.standard_normal((n, m), dtype=np.float32) for _ in range(count)]
    rows_state = [np.zeros(n, np.float32) for _ in range(count)]
    cols_state = [np.zeros(m, np.float32) for _ in range(count)]
    step = [0]

    def ours_functional():
        step[0] += 1
        optim.adafactor_step(params, grads, rows_state, cols_state, step[0])

    ours_s = best_time(ours_functional, repeats=repeats)
    entries = count * n * m
    compulsory = 12 * entries
    note = (f"{compulsory / ours_s / 1e9:.1f} GB/s compulsory (12 B/entry) = {compulsory / ours_s / bandwidth:.0%} "
            f"of copy bandwidth {bandwidth / 1e9:.1f} GB/s; passes made: {24 * entries / ours_s / 1e9:.1f} GB/s")
    rows: list[Row] = []
    if torch is None:
        rows.append(Row("adafactor_step (numpy)", label, ours_s, "torch.optim.Adafactor", float("nan"),
                        "torch not installed: peer not measured; " + note))
        return rows

    tensors = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
    for tensor, grad in zip(tensors, grads):
        tensor.grad = torch.from_numpy(grad)
    peers = {}
    for foreach in (False, True):
        reference = torch.optim.Adafactor(tensors, foreach=foreach)
        peers[foreach] = best_time(reference.step, repeats=repeats)
        del reference
    ours_optimizer = optim.Adafactor(tensors)
    ours_optimizer_s = best_time(ours_optimizer.step, repeats=repeats)
    for foreach in (False, True):
        name = f"torch {torch.__version__} Adafactor foreach={foreach}"
        rows.append(Row("adafactor_step (numpy)", label, ours_s, name, peers[foreach], note))
        rows.append(Row("optim.Adafactor (torch tensors)", label, ours_optimizer_s, name, peers[foreach],
                        f"{compulsory / ours_optimizer_s / 1e9:.1f} GB/s compulsory"))
    return rows


def state_memory_line(torch, n: int, m: int) -> str:
    """Bytes of optimizer state for one n x m float32 parameter: ours, torch's Adafactor, Adam."""
    if torch is None:
        return (f"State per {n}x{m} float32 parameter: Adafactor 4 (n + m) = {4 * (n + m)} B, "
                f"Adam 8 n m = {8 * n * m} B.")
    sizes = {}
    for name, make in (("lowrank_hpc Adafactor", lambda p: optim.Adafactor([p])),
                       ("torch Adafactor", lambda p: torch.optim.Adafactor([p])),
                       ("torch Adam", lambda p: torch.optim.Adam([p]))):
        param = torch.nn.Parameter(torch.zeros(n, m))
        param.grad = torch.ones(n, m)
        optimizer = make(param)
        optimizer.step()
        sizes[name] = sum(v.numel() * v.element_size() for v in optimizer.state[param].values() if torch.is_tensor(v))
    return (f"State per {n}x{m} float32 parameter (bytes, measured after one step, `step` counter included): " +
            ", ".join(f"{name} {size:,}" for name, size in sizes.items()) +
            f"; Adam / Adafactor = {sizes['torch Adam'] / sizes['lowrank_hpc Adafactor']:.0f}x.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parents[1] / "BENCHMARKS.md"))
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    threads = lr._backend.cpu_module().max_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    bandwidth = stream_bandwidth()
    cases = [("1 x 512x512 f32", 1, 512, 512), ("10 x 256x256 f32", 10, 256, 256)] if args.quick else \
        [("1 x 4096x4096 f32", 1, 4096, 4096), ("100 x 1024x1024 f32", 100, 1024, 1024)]
    rows = []
    for label, count, n, m in cases:
        rows += bench_case(torch, label, count, n, m, bandwidth, repeats=3 if args.quick else 5)
    versions = f"numpy {np.__version__}, lowrank_hpc {lr.__version__}" + \
        (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch is not None else "")
    versions += ". " + state_memory_line(torch, 4096, 4096)
    report("bench_adafactor.py", machine_line(threads), versions,
           "python bench/bench_adafactor.py" + (" --quick" if args.quick else ""), rows, args.output,
           write=not args.quick)


if __name__ == "__main__":
    main()
