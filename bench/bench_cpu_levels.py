"""The CPU backend's instruction-set levels against each other and against torch.sparse (MKL).

    PYTHONPATH=python python bench/bench_cpu_levels.py                  # nnz 4e6 in 100k x 100k, r = 8, 32, 128
    PYTHONPATH=python python bench/bench_cpu_levels.py --nnz 400000 --shape 20000 --ranks 8,20,64

One problem (distinct random positions, sorted by row, float32) is saved once; for each level
this machine runs (lowrank_hpc._cpu_isa: baseline, avx2, avx512) a subprocess with
LOWRANK_HPC_CPU_LEVEL set times ``SparsePattern.times_dense`` (SpMM, the pattern built once) and
``ops.sampled_product`` (SDDMM) at each rank, best of --repeats after a warm-up; torch's
``torch.sparse.mm`` on CSR and ``torch.sparse.sampled_addmm`` run on the same problem in
bench/.venvs/torch (bench/peers/torch_sparse_kernels.py), with the same thread count. Prints a
markdown table of milliseconds and of torch's time / ours (> 1: ours is faster).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import machine_line, run_peer  # noqa: E402

from lowrank_hpc import _cpu_isa  # noqa: E402

# Run at one level in a subprocess: {"spmm": {r: s}, "sddmm": {r: s}} as JSON.
LEVEL_SCRIPT = """
import json, sys, numpy as np
sys.path.insert(0, {bench!r})
from _timing import best_time
import lowrank_hpc as lr
data = np.load({problem!r})
m, n = (int(x) for x in data["shape"])
rows, cols, vals = data["rows"], data["cols"], data["vals"]
pattern = lr.ops.SparsePattern(rows, cols, (m, n))
rng = np.random.default_rng(1)
out = {{"level": lr.info()["cpu_level"], "spmm": {{}}, "sddmm": {{}}}}
for r in {ranks!r}:
    U = rng.standard_normal((m, r), dtype=np.float32)
    V = rng.standard_normal((n, r), dtype=np.float32)
    out["spmm"][r] = best_time(lambda: pattern.times_dense(vals, V, check_finite=False), repeats={repeats})
    out["sddmm"][r] = best_time(lambda: lr.ops.sampled_product(U, V, rows, cols), repeats={repeats})
print(json.dumps(out))
"""


def problem_file(path: Path, size: int, nnz: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, size * size, int(nnz * 1.01), dtype=np.int64))[:nnz]
    rng.shuffle(keys)
    keys.sort()  # row-sorted, as both sides' fast paths want
    np.savez(path, shape=np.array([size, size]), rows=(keys // size).astype(np.int32),
             cols=(keys % size).astype(np.int32), vals=rng.standard_normal(keys.shape[0], dtype=np.float32))
    return path


def run_level(level: str, problem: Path, ranks: list[int], repeats: int) -> dict:
    env = {**os.environ, _cpu_isa.ENVIRONMENT_VARIABLE: level}
    script = LEVEL_SCRIPT.format(bench=str(BENCH), problem=str(problem), ranks=ranks, repeats=repeats)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, default=100_000, help="rows = columns of the square pattern")
    parser.add_argument("--nnz", type=int, default=4_000_000)
    parser.add_argument("--ranks", default="8,32,128")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]
    levels = [level for level in _cpu_isa.built_levels() if level in _cpu_isa.processor_levels()]
    threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as workdir:
        problem = problem_file(Path(workdir) / "problem.npz", args.shape, args.nnz)
        results = {level: run_level(level, problem, ranks, args.repeats) for level in levels}
        torch_result, torch_reason = run_peer("torch", "torch_sparse_kernels.py", problem, ",".join(map(str, ranks)),
                                              args.repeats, threads)
    print(f"### bench_cpu_levels.py, {datetime.date.today().isoformat()}")
    print(f"Machine: {machine_line(threads)}, 1-minute load average {os.getloadavg()[0]:.1f} at the end. "
          f"Levels run here: {', '.join(levels)}; torch {torch_result['version'] if torch_result else torch_reason}.")
    print(f"Command: `PYTHONPATH=python python bench/bench_cpu_levels.py --shape {args.shape} --nnz {args.nnz} "
          f"--ranks {args.ranks} --repeats {args.repeats}`")
    print(f"float32, {args.nnz:,} distinct row-sorted entries in {args.shape:,} x {args.shape:,}; milliseconds, "
          "best of the repeats; in brackets torch's time / ours.\n")
    header = ["kernel", "r", *levels, "torch.sparse"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for kernel in ("spmm", "sddmm"):
        for r in ranks:
            peer = torch_result[kernel][str(r)] if torch_result else None
            cells = []
            for level in levels:
                ours = results[level][kernel][str(r)]
                cells.append(f"{ours * 1e3:.1f}" + (f" ({peer / ours:.2f}x)" if peer else ""))
            print(f"| {kernel} | {r} | " + " | ".join(cells) + (f" | {peer * 1e3:.1f} |" if peer else " | - |"))


if __name__ == "__main__":
    main()
