"""lowrank_hpc against the strongest peers (issue 10): torch.sparse and scipy on the core kernels,
ALS on the MovieLens-20M-shaped problem beside implicit, and ALS against Spark MLlib.

    bash bench/setup_peers.sh                                     # once: bench/.venvs/{torch,implicit,spark}
    PYTHONPATH=python python bench/bench_peers.py                 # every section, full sizes (long: see below)
    PYTHONPATH=python python bench/bench_peers.py --quick         # tiny sizes, a minute or two
    PYTHONPATH=python python bench/bench_peers.py --sections kernels --kernel-nnz 1000000
    PYTHONPATH=python bench/.venvs/torch/bin/python bench/bench_peers.py --sections kernels --torch in-process
    PYTHONPATH=python python bench/bench_peers.py --sections als --als-ranks 32,64 --als-solvers cg

kernels: float32, distinct random positions, ENTRIES_PER_ROW per row on average in an N x N
pattern (nnz 1e6: 10,000 x 10,000; 1e7: 100,000 x 100,000), each rank with new seeded factors.
Each caller order (row-sorted; the same entries shuffled) is a problem of its own. SpMM: ours
``SparsePattern.times_dense`` (pattern built once from the caller's COO, which keeps its order)
and ``sparse_times_dense`` (nothing prepared: it sorts a random order on every call); torch
``torch.sparse.mm`` and scipy ``CSR @ dense``, both on a CSR matrix built once, the caller's values
permuted into CSR order inside every timed call when the caller's order is not CSR order. SDDMM:
ours ``SparsePattern.sampled_product`` (the same pattern: entries taken in row order, results
written in the caller's order) and ``ops.sampled_product`` on the caller's arrays (nothing
prepared: entries in the caller's order); torch
``torch.sparse.sampled_addmm`` on the CSR pattern, its values gathered back into the caller's
order inside the timing; numpy's gather-einsum (in 16 MiB blocks) as the second peer. No side
checks for NaN (ours: check_finite=False). torch runs in bench/.venvs/torch as a server
(bench/peers/torch_sparse_server.py) so that the runs alternate: ours, torch, scipy, ours, ...;
there each side's factors are its own copy, so every run starts after the other side's pass
over other memory (cold caches). With ``--torch in-process`` (run by bench/.venvs/torch's
python, which imports lowrank_hpc from PYTHONPATH) torch's factors are ours, shared without a
copy, so each run finds the factors as the previous one left them (warm caches: a loop), and
both OpenMP runtimes wait passively (OMP_WAIT_POLICY=passive unless set).
Every row is the median of --repeats runs per side after a warm-up, with min-max. Before timing,
every side's result is checked against ours (an order-sensitive checksum).

als: 138,493 x 26,744 (MovieLens-20M's shape) with 20,000,000 distinct pairs of power-law row and
column degrees (``distinct_power_law_pairs``), half-star ratings from a rank-8 model plus noise,
float32. Each (rank, solver) runs ``recover.als(..., max_iter=--als-iterations, tol=0)`` in a
fresh process: seconds per iteration between the iterations' callbacks (the first, which holds
the setup, apart), the Cholesky-ALS flop rate 2 nnz r^2 + (m + n) r^3 / 3 per iteration as a
fraction of numpy's float32 GEMM rate measured in this run, the loss, and the peak resident
memory above the input (VmHWM minus the resident size once the input is loaded). Beside it
the implicit-feedback objective: ours (``als(feedback="implicit")``) against implicit's ALS
(bench/peers/implicit_als.py), CG against CG and exact against Cholesky, whole fit / iterations
on both sides, the objective of both computed here by bench_implicit_als.objective.

spark: explicit ALS-WR (reg_scaling="count", Spark's regParam) on the same shape with --spark-nnz
distinct entries (20,000 more held out for test RMSE), seconds per fit of --spark-iterations
iterations: ours median of --spark-repeats runs (half before Spark's process, half after) against
Spark's fit() (bench/peers/spark_als.py: session start and DataFrame build not counted).

The markdown section goes to stdout at the end; progress lines go to stderr as rows finish.
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy
import scipy.sparse as sp

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import (PeerServer, PeerUnavailable, best_time, interleaved, load_average, machine_line,  # noqa: E402
                     median, median_range, run_peer, timed)

SECTIONS = ("kernels", "als", "spark")
ENTRIES_PER_ROW = 100  # kernel patterns: N x N with N = nnz / 100
ML20M_SHAPE = (138_493, 26_744)
# Power-law weights (i + offset)^-exponent over rows (users) and columns (items), with ids then
# shuffled: 20M distinct pairs give row degrees 31-5,658 (median 86) and column degrees
# 93-45,942 (median 260), MovieLens-20M's 20-9,254 and 1-67,310 in spirit (its items are
# more skewed in the tail).
ROW_EXPONENT, ROW_OFFSET = 0.7, 65.0
COL_EXPONENT, COL_OFFSET = 1.0, 45.0
EXPLICIT_REG = 0.1
IMPLICIT_REG, IMPLICIT_ALPHA = 0.01, 1.0
SPARK_TEST_ENTRIES = 20_000
CHECK_TOLERANCE = 1e-5  # of the sum of |result|: a wrong order is off by ~1/sqrt(size), rounding far less
LOSS_TOLERANCE = 1e-3  # issue 10: CG's loss within 0.1% of the exact solver's

FULL = dict(kernel_nnz="1000000,10000000", kernel_ranks="1,8,16,32,64,128,256",
            als_shape=",".join(map(str, ML20M_SHAPE)),
            als_nnz=20_000_000, als_ranks="32,64,128,256", spark_nnz=2_000_000, spark_ranks="32,128",
            spark_iterations=5, spark_repeats=2, gemm_size=4096)
QUICK = dict(kernel_nnz="100000", kernel_ranks="1,8,16,32,64,128,256", als_shape="13849,2674", als_nnz=200_000,
             als_ranks="16,32", spark_nnz=20_000, spark_ranks="8", spark_iterations=2, spark_repeats=1,
             gemm_size=1024)


def library():
    """lowrank_hpc, imported once main has set OMP_NUM_THREADS (OpenMP reads it when the module loads)."""
    import lowrank_hpc

    return lowrank_hpc


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def csv_ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


# ---------------------------------------------------------------- kernels
def kernel_problems(workdir: Path, nnz: int, seed: int) -> dict[str, Path]:
    """The same nnz distinct positions in the two orders a caller may hold them: row-sorted
    (bench_cpu_levels.problem_file) and shuffled."""
    from bench_cpu_levels import problem_file

    size = max(nnz // ENTRIES_PER_ROW, 1)
    paths = {"row-sorted": problem_file(workdir / f"sorted_{nnz}.npz", size, nnz, seed)}
    data = np.load(paths["row-sorted"])
    shuffle = np.random.default_rng(seed + 1).permutation(data["rows"].shape[0])
    paths["random"] = workdir / f"random_{nnz}.npz"
    np.savez(paths["random"], shape=data["shape"], rows=data["rows"][shuffle], cols=data["cols"][shuffle],
             vals=data["vals"][shuffle])
    return paths


class CallerProblem:
    """One problem in the caller's order, with what each side prepares once, outside any timing:
    our SparsePattern, and scipy's CSR matrix with the caller-to-CSR permutation of the values."""

    def __init__(self, path: Path):
        data = np.load(path)
        self.m, self.n = (int(x) for x in data["shape"])
        self.rows, self.cols, self.vals = data["rows"], data["cols"], data["vals"]
        self.nnz = int(self.rows.shape[0])
        self.pattern = library().ops.SparsePattern(self.rows, self.cols, (self.m, self.n))
        keys = self.rows.astype(np.int64) * self.n + self.cols
        self.perm = None if np.all(keys[1:] > keys[:-1]) else np.argsort(keys, kind="stable")
        order = slice(None) if self.perm is None else self.perm
        indptr = np.concatenate([[0], np.cumsum(np.bincount(self.rows, minlength=self.m))]).astype(np.int32)
        self.csr = sp.csr_matrix((self.vals[order], self.cols[order].astype(np.int32), indptr), shape=(self.m, self.n))

    def factors(self, rank: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """U (m, r), V (n, r): the draws the torch server makes from the same seed."""
        rng = np.random.default_rng(seed)
        return (rng.standard_normal((self.m, rank), dtype=np.float32),
                rng.standard_normal((self.n, rank), dtype=np.float32))

    def scipy_spmm(self, V: np.ndarray) -> np.ndarray:
        if self.perm is not None:  # the caller's new values into the CSR matrix's order
            np.take(self.vals, self.perm, out=self.csr.data)
        return self.csr @ V


def numpy_sddmm(U: np.ndarray, V: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The gather-einsum a numpy user writes, in blocks so the gathered rows stay at 16 MiB."""
    out = np.empty(rows.shape[0], dtype=U.dtype)
    step = max(1, (1 << 22) // U.shape[1])
    for start in range(0, rows.shape[0], step):
        block = slice(start, start + step)
        out[block] = np.einsum("kr,kr->k", U[rows[block]], V[cols[block]])
    return out


def checksum(result: np.ndarray) -> tuple[float, float]:
    """(sum of result.ravel()[k] cos(k), sum of |result|) in float64: the torch server's reduction."""
    flat = np.asarray(result, dtype=np.float64).ravel()
    return float(flat @ np.cos(np.arange(flat.shape[0]))), float(np.abs(flat).sum())


def agrees(ours: tuple[float, float], theirs: tuple[float, float]) -> bool:
    return abs(ours[0] - theirs[0]) <= CHECK_TOLERANCE * max(ours[1], theirs[1])


def kernel_sides(kernel: str, problem: CallerProblem, U, V, server, peers: list[str]) -> dict[str, Callable]:
    """name -> a call returning its result (the torch server's entry is its kernel name)."""
    lr = library()
    if kernel == "spmm":
        sides = {"ours SparsePattern.times_dense": lambda: problem.pattern.times_dense(problem.vals, V,
                                                                                       check_finite=False),
                 "ours sparse_times_dense": lambda: lr.ops.sparse_times_dense(problem.rows, problem.cols,
                                                                              problem.vals, V, problem.m,
                                                                              check_finite=False)}
        secondary = ("scipy CSR @ dense", lambda: problem.scipy_spmm(V))
    else:
        sides = {"ours SparsePattern.sampled_product": lambda: problem.pattern.sampled_product(U, V,
                                                                                               check_finite=False),
                 "ours sampled_product": lambda: lr.ops.sampled_product(U, V, problem.rows, problem.cols,
                                                                        check_finite=False)}
        secondary = ("numpy gather-einsum", lambda: numpy_sddmm(U, V, problem.rows, problem.cols))
    if server is not None:
        sides["torch"] = kernel
    if "scipy" in peers:
        sides[secondary[0]] = secondary[1]
    return sides


def check_sides(sides: dict[str, Any], server) -> list[str]:
    """Names of the sides whose result differs from the first (ours)."""
    sums = {name: checksum(side()) if callable(side) else tuple(server.ask(op="check", kernel=side).values())
            for name, side in sides.items()}
    reference = next(iter(sums.values()))
    return [name for name, value in sums.items() if not agrees(reference, value)]


def time_sides(sides: dict[str, Any], server, repeats: int) -> dict[str, list[float]]:
    runs = {name: timed(side) if callable(side) else (lambda k=side: server.ask(op="time", kernel=k)["seconds"])
            for name, side in sides.items()}
    return interleaved(runs, repeats)


def effective_gbs(kernel: str, nnz: int, m: int, r: int, seconds: float) -> float:
    """Bytes a pass names (an index, a value and each factor row per entry, the output), counted
    whether they come from DRAM or cache: 'effective', not DRAM traffic."""
    if kernel == "spmm":
        return (nnz * (4 + 4 + 4 * r) + 4 * m * r) / seconds / 1e9
    return nnz * (4 + 4 + 4 + 8 * r) / seconds / 1e9


def kernel_rows(kernel: str, order: str, problem: CallerProblem, r: int, times: dict, wrong: list[str]) -> list[str]:
    ours_names = [name for name in times if name.startswith("ours")]
    torch_t, other = times.get("torch"), next((n for n in times if n != "torch" and n not in ours_names), None)
    lines = []
    for name in ours_names:
        ours = median(times[name])
        cells = [kernel.upper(), order, f"{problem.nnz:,}", str(r), name[5:], median_range(times[name])]
        cells += [median_range(torch_t), f"{median(torch_t) / ours:.2f}x"] if torch_t else ["-", "-"]
        cells += ([f"{other}: {median_range(times[other])}", f"{median(times[other]) / ours:.2f}x"] if other
                  else ["-", "-"])
        cells += [f"{effective_gbs(kernel, problem.nnz, problem.m, r, ours):.1f}",
                  "RESULTS DIFFER: " + ", ".join(wrong) if wrong else "results agree"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


class InProcessTorch:
    """torch_sparse_server.py's requests answered in this process (``--torch in-process``, run
    from bench/.venvs/torch's python): torch's factors are ours (torch.from_numpy, no copy), so
    each side finds in the caches what the other just read, as in a loop that calls both. The
    server, in its own process, reads its own copies: each side's run follows the other's
    pass over different memory."""

    def __init__(self, threads: int):
        sys.path.insert(0, str(BENCH / "peers"))
        import torch
        import torch_sparse_server

        self._torch, self._server, self._state = torch, torch_sparse_server, {}
        torch.set_num_threads(threads)
        self.hello = {"version": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                      "mkl": torch.backends.mkl.is_available(), "threads": torch.get_num_threads()}

    def share(self, U: np.ndarray, V: np.ndarray) -> None:
        self._server.share(self._state, self._torch.from_numpy(U), self._torch.from_numpy(V))

    def ask(self, op: str, **request: Any) -> dict:
        return self._server.OPS[op](self._state, request)

    def close(self) -> None:
        self._state.clear()


def section_kernels(args, workdir: Path) -> tuple[list[str], str]:
    peers = args.kernel_peers.split(",")
    server, why = None, ""
    if "torch" in peers and args.torch == "in-process":
        try:
            server = InProcessTorch(args.threads)
        except ImportError as error:
            why = f"torch not importable here ({error}): run this from bench/.venvs/torch/bin/python"
    elif "torch" in peers:
        try:
            server = PeerServer("torch", "torch_sparse_server.py", args.threads)
        except PeerUnavailable as error:
            why = str(error)
    try:
        lines = kernel_table(args, workdir, server)
    finally:
        if server is not None:
            server.close()
    hello = server.hello if server else None
    waiting = f", OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '')}" if args.torch == "in-process" else ""
    torch_line = (f"torch {hello['version']} (CPU capability {hello['capability']}, MKL {hello['mkl']}, "
                  f"{hello['threads']} threads, {args.torch}{waiting})" if hello
                  else f"torch not measured: {why or 'not asked for'}")
    return lines, torch_line


def kernel_table(args, workdir: Path, server) -> list[str]:
    lines = ["| kernel | caller order | nnz | r | ours | ours ms | torch.sparse ms | torch / ours | second peer ms "
             "| peer / ours | ours effective GB/s | check |", "|" + "---|" * 12]
    for nnz in csv_ints(args.kernel_nnz):
        for order, path in kernel_problems(workdir, nnz, args.seed).items():
            problem = CallerProblem(path)
            if server is not None:
                server.ask(op="load", path=str(path))
            for r in csv_ints(args.kernel_ranks):
                U, V = problem.factors(r, seed=args.seed + r)
                if isinstance(server, InProcessTorch):
                    server.share(U, V)
                elif server is not None:
                    server.ask(op="factors", rank=r, seed=args.seed + r)
                for kernel in ("spmm", "sddmm"):
                    sides = kernel_sides(kernel, problem, U, V, server, args.kernel_peers.split(","))
                    wrong = check_sides(sides, server)
                    rows = kernel_rows(kernel, order, problem, r, time_sides(sides, server, args.repeats), wrong)
                    progress("\n".join(rows))
                    lines += rows
            del problem  # the 1e7 arrays freed before the next order's are built
    return lines


# ---------------------------------------------------------------- the ALS problem
def power_law_indices(rng: np.random.Generator, count: int, exponent: float, offset: float, size: int) -> np.ndarray:
    """``size`` draws from 0..count-1 with density ~ (i + offset)^-exponent: a continuous power
    law on [0, count) floored, its inverse CDF in closed form (3x faster than searching a CDF)."""
    u = rng.random(size)
    if exponent == 1.0:
        x = offset * np.exp(u * np.log((count + offset) / offset))
    else:
        power = 1.0 - exponent
        low, high = offset ** power, (count + offset) ** power
        x = (low + u * (high - low)) ** (1.0 / power)
    return np.minimum((x - offset).astype(np.int64), count - 1)


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    keys = np.sort(keys)  # sort + mask: 4x faster than np.unique on 20M int64 here
    return keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if keys.shape[0] else keys


def contained(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    if not sorted_keys.shape[0]:
        return np.zeros(keys.shape[0], dtype=bool)
    where = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.shape[0] - 1)
    return sorted_keys[where] == keys


def distinct_power_law_pairs(m: int, n: int, nnz: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int32 of nnz DISTINCT pairs, row-sorted, with power-law row and column degrees
    (ROW_/COL_EXPONENT), deterministic from seed. Pairs are drawn from the product of the two
    laws; repeats are dropped and the shortfall drawn again (scaled by the last round's yield),
    the surplus of the last round dropped at random. 20M pairs: three rounds, 8 s on the 2-core VM."""
    rng = np.random.default_rng(seed)
    keys, yield_ = np.zeros(0, dtype=np.int64), 1.0
    while keys.shape[0] < nnz:
        deficit = nnz - keys.shape[0]
        draw = int(deficit / yield_ * 1.05) + 1000
        new = sorted_unique(power_law_indices(rng, m, ROW_EXPONENT, ROW_OFFSET, draw) * n
                            + power_law_indices(rng, n, COL_EXPONENT, COL_OFFSET, draw))
        new = new[~contained(keys, new)]
        yield_ = max(new.shape[0] / draw, 0.01)
        if new.shape[0] > deficit:
            new = np.sort(rng.choice(new, deficit, replace=False))
        keys = np.sort(np.concatenate([keys, new]), kind="stable")  # timsort: a linear merge of two runs
    # Heavy rows and columns spread over the ids, as users and items are, then row-sorted again.
    relabelled = np.sort(rng.permutation(m)[keys // n] * n + rng.permutation(n)[keys % n])
    return (relabelled // n).astype(np.int32), (relabelled % n).astype(np.int32)


def half_star_ratings(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], seed: int) -> np.ndarray:
    """0.5-5.0 in half stars: 3.5 + a rank-8 model + noise, rounded, float32 (so losses mean something)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((shape[0], 8), dtype=np.float32)
    B = rng.standard_normal((shape[1], 8), dtype=np.float32)
    signal = library().ops.sampled_product(A, B, rows, cols) / np.float32(np.sqrt(8.0))
    noisy = 3.5 + 0.9 * signal + 0.5 * rng.standard_normal(rows.shape[0], dtype=np.float32)
    return (np.clip(np.round(2 * noisy), 1, 10) / 2).astype(np.float32)


def als_problem(workdir: Path, shape: tuple[int, int], nnz: int, seed: int) -> dict[str, Any]:
    """The ALS problem written once: .npy files (our fresh processes load them without a transient
    copy, so the peak memory above the input is ALS's own) and the .npz implicit's peer reads."""
    start = time.perf_counter()
    rows, cols = distinct_power_law_pairs(*shape, nnz, seed)
    vals = half_star_ratings(rows, cols, shape, seed + 1)
    directory = workdir / "als"
    directory.mkdir(exist_ok=True)
    for name, array in (("rows", rows), ("cols", cols), ("vals", vals), ("shape", np.array(shape))):
        np.save(directory / f"{name}.npy", array)
    np.savez(directory / "problem.npz", shape=np.array(shape), rows=rows, cols=cols, vals=vals)
    row_degrees, col_degrees = np.bincount(rows, minlength=shape[0]), np.bincount(cols, minlength=shape[1])
    return dict(directory=directory, rows=rows, cols=cols, vals=vals, shape=shape, nnz=int(rows.shape[0]),
                seconds=time.perf_counter() - start,
                degrees=(f"row degrees {row_degrees.min()}-{row_degrees.max()} (median {np.median(row_degrees):.0f}), "
                         f"column degrees {col_degrees.min()}-{col_degrees.max()} "
                         f"(median {np.median(col_degrees):.0f})"))


# ---------------------------------------------------------------- one ALS run in a fresh process
def resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    """This process image's peak resident size (VmHWM). Not ru_maxrss: Linux carries that across
    exec from the forked parent, so a child of a parent holding the problem reported the parent's
    size (sessions 8-10 printed 551 MiB above the input for a run whose own peak was 218 MiB)."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_als_case(case: dict) -> dict:
    """The body of ``--als-case``: one als() call on the saved problem, timed per iteration."""
    directory = Path(case["directory"])
    rows, cols, vals = (np.load(directory / f"{name}.npy") for name in ("rows", "cols", "vals"))
    shape = tuple(int(x) for x in np.load(directory / "shape.npy"))
    from lowrank_hpc.recover import als

    importlib.import_module("lowrank_hpc.recover.implicit_als")  # als imports it lazily: before the baseline

    before = resident_bytes()
    stamps: list[float] = []
    start = time.perf_counter()
    result = als(rows, cols, vals, shape, case["rank"], case["reg"], solver=case["solver"], feedback=case["feedback"],
                 alpha=case["alpha"], max_iter=case["iterations"], tol=0.0, seed=0,
                 callback=lambda iteration, state: stamps.append(time.perf_counter()))
    whole = time.perf_counter() - start
    peak = peak_resident_bytes()
    if case.get("factors"):
        np.savez(case["factors"], U=result.U, V=result.V)
    return {"first_s": stamps[0] - start, "steady_s": list(np.diff(stamps)), "whole_s": whole,
            "loss": float(result.history["loss"][-1]), "peak_above_input": peak - before,
            "input_bytes": rows.nbytes + cols.nbytes + vals.nbytes, "solver": result.info.get("solver", case["solver"]),
            "kernel": result.info.get("kernel", "-")}


def als_in_fresh_process(problem: dict, rank: int, solver: str, feedback: str, iterations: int,
                         factors: Path | None = None) -> tuple[dict | None, str]:
    """run_als_case in a new interpreter (so VmHWM is this run's peak): (its dict, "") or (None, why)."""
    implicit = feedback == "implicit"
    case = dict(directory=str(problem["directory"]), rank=rank, solver=solver, feedback=feedback,
                iterations=iterations, reg=IMPLICIT_REG if implicit else EXPLICIT_REG,
                alpha=IMPLICIT_ALPHA, factors=str(factors) if factors else None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "python"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--als-case", json.dumps(case)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        return None, (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


# ---------------------------------------------------------------- als
def gemm_rate(size: int, threads: int) -> float:
    """float32 flop/s of numpy's matmul on ``threads`` BLAS threads: 2 size^3 per product, best of 3."""
    from threadpoolctl import threadpool_limits  # numpy's BLAS read OMP_NUM_THREADS before main set it

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(limits=threads, user_api="blas"):
        return 2.0 * size ** 3 / best_time(lambda: a @ b, repeats=3)


def cholesky_flops(nnz: int, shape: tuple[int, int], r: int) -> float:
    """Per ALS iteration: each entry's r x r rank-one update twice, one r^3 / 3 Cholesky per row and column."""
    return 2.0 * nnz * r * r + (shape[0] + shape[1]) * r ** 3 / 3.0


def steady_seconds(run: dict) -> float:
    """Seconds per iteration between callbacks (setup excluded); the whole call with one iteration."""
    return median(run["steady_s"]) if run["steady_s"] else run["whole_s"]


def memory_cell(run: dict) -> str:
    mib = 1 << 20
    return (f"{run['peak_above_input'] / mib:,.0f} MiB = {run['peak_above_input'] / run['input_bytes']:.2f}x "
            f"input ({run['input_bytes'] / mib:,.0f} MiB)")


def loss_versus_exact(run: dict, solver: str, losses: dict[str, float]) -> str:
    if solver == "cholesky" or "cholesky" not in losses:
        return "-"
    change = run["loss"] / losses["cholesky"] - 1
    return f"{change:+.3%} ({'within' if abs(change) <= LOSS_TOLERANCE else 'MISSES'} 0.1%)"


def explicit_rows(args, problem: dict) -> list[str]:
    """One row per (rank, solver); "of GEMM" against the mean of numpy's GEMM rate measured just
    before and just after that run (this VM's rate moved from 198 to 321 GFLOP/s between runs
    minutes apart, while ALS's time did not: one reading for the whole table misstated it)."""
    lines = ["| r | solver | s/iter (median of iterations 2..N) | first iteration incl. setup (s) | whole call / N (s) "
             "| Cholesky-flop rate | GEMM before / after (GFLOP/s) | of GEMM | loss after N | vs cholesky loss "
             "| peak above input |", "|" + "---|" * 11]
    for r in csv_ints(args.als_ranks):
        losses: dict[str, float] = {}
        for solver in args.als_solvers.split(","):
            gemm_before = gemm_rate(args.gemm_size, args.threads)
            run, why = als_in_fresh_process(problem, r, solver, "explicit", args.als_iterations)
            if run is None:
                lines.append(f"| {r} | {solver} | not measured: {why} |" + " |" * 8)
                continue
            gemm_after = gemm_rate(args.gemm_size, args.threads)
            gemm = 0.5 * (gemm_before + gemm_after)
            losses[solver] = run["loss"]
            rate = cholesky_flops(problem["nnz"], problem["shape"], r) / steady_seconds(run)
            cells = [str(r), f"{run['solver']} ({run['kernel']})", f"{steady_seconds(run):.2f}",
                     f"{run['first_s']:.2f}", f"{run['whole_s'] / args.als_iterations:.2f}",
                     f"{rate / 1e9:.1f} GFLOP/s", f"{gemm_before / 1e9:.0f} / {gemm_after / 1e9:.0f}",
                     f"{rate / gemm:.0%}", f"{run['loss']:.6g}", loss_versus_exact(run, solver, losses),
                     memory_cell(run)]
            lines.append("| " + " | ".join(cells) + " |")
            progress(lines[-1])
    return lines


def implicit_pair(args, problem: dict, r: int, ours_solver: str, peer_solver: str, workdir: Path) -> str:
    """One row: ours implicit ALS against implicit's, alternated --als-repeats times; whole fit / iterations."""
    from bench_implicit_als import objective

    ours_runs, peer_times, peer, why = [], [], None, ""
    ours_factors, peer_factors = workdir / f"ours_{r}_{ours_solver}.npz", workdir / f"implicit_{r}_{peer_solver}.npz"
    for _ in range(args.als_repeats):
        run, ours_why = als_in_fresh_process(problem, r, ours_solver, "implicit", args.als_iterations, ours_factors)
        if run is None:
            return f"| {r} | ours {ours_solver} | not measured: {ours_why} |" + " |" * 7
        ours_runs.append(run)
        peer, why = run_peer("implicit", "implicit_als.py", problem["directory"] / "problem.npz", r,
                             args.als_iterations, peer_solver, IMPLICIT_REG, IMPLICIT_ALPHA, peer_factors)
        if peer is not None:
            peer_times.append(peer["seconds"] / peer["iterations"])
    ours_s = [run["whole_s"] / args.als_iterations for run in ours_runs]
    data = (problem["rows"], problem["cols"], problem["vals"])
    saved = np.load(ours_factors)
    ours_loss = objective(*data, saved["U"], saved["V"], IMPLICIT_ALPHA, IMPLICIT_REG)
    cells = [str(r), f"ours {ours_solver}", median_range(ours_s, 1, 2),
             f"{median([steady_seconds(run) for run in ours_runs]):.2f}"]
    if not peer_times:
        cells += [f"implicit {peer_solver}: not measured: {why}", "-", "-", f"{ours_loss:.6g}", "-"]
    else:
        saved = np.load(peer_factors)
        peer_loss = objective(*data, saved["user_factors"], saved["item_factors"], IMPLICIT_ALPHA, IMPLICIT_REG)
        cells += [f"implicit {peer['version']} {peer_solver}", median_range(peer_times, 1, 2),
                  f"{median(peer_times) / median(ours_s):.2f}x", f"{ours_loss:.6g}",
                  f"{peer_loss:.6g} ({ours_loss / peer_loss - 1:+.2%})"]
    return "| " + " | ".join(cells + [memory_cell(ours_runs[-1])]) + " |"


def implicit_rows(args, problem: dict, workdir: Path) -> list[str]:
    from bench_implicit_als import SOLVER_PAIRS  # (ours, implicit's): ("cg", "cg"), ("exact", "cholesky")

    ours_name = {"exact": "cholesky", "cg": "cg"}  # als(feedback="implicit") calls its exact solver "cholesky"
    lines = ["| r | ours | ours s/iter (whole fit / N) | ours s/iter (iterations 2..N) | peer | peer s/iter "
             "(whole fit / N) | peer / ours | objective ours | objective peer | ours peak above input |",
             "|" + "---|" * 10]
    for r in csv_ints(args.als_ranks):
        for ours_solver, peer_solver in SOLVER_PAIRS:
            if ours_name[ours_solver] in args.als_solvers.split(","):
                lines.append(implicit_pair(args, problem, r, ours_name[ours_solver], peer_solver, workdir))
                progress(lines[-1])
    return lines


def section_als(args, workdir: Path) -> list[str]:
    shape = tuple(csv_ints(args.als_shape))
    gemm_before = gemm_rate(args.gemm_size, args.threads)
    problem = als_problem(workdir, shape, args.als_nnz, args.seed)
    progress(f"als problem: {problem['nnz']:,} distinct pairs in {problem['seconds']:.1f} s; {problem['degrees']}")
    feedback = args.als_feedback.split(",")
    explicit = explicit_rows(args, problem) if "explicit" in feedback else []
    implicit = implicit_rows(args, problem, workdir) if "implicit" in feedback else []
    gemm_after = gemm_rate(args.gemm_size, args.threads)
    text = [f"**ALS.** {shape[0]:,} x {shape[1]:,}, {problem['nnz']:,} distinct pairs ({problem['degrees']}; "
            f"generated in {problem['seconds']:.0f} s), half-star ratings, float32, {args.als_iterations} iterations "
            f"from seed 0, each run in a fresh process. numpy float32 GEMM ({args.gemm_size}^3): "
            f"{gemm_before / 1e9:.0f} GFLOP/s before the runs, {gemm_after / 1e9:.0f} after; each row's fraction uses "
            f"the mean of the rates measured just before and after it. Peak above input: VmHWM minus the resident "
            f"size once the input is loaded."]
    if explicit:
        text += ["", f"Explicit ALS, reg {EXPLICIT_REG}; Cholesky-flop rate = (2 nnz r^2 + (m + n) r^3 / 3) / "
                 "(s/iter), for CG too (the work the exact solver would do).", "", *explicit]
    if implicit:
        text += ["", f"Implicit feedback (Hu, Koren, Volinsky), alpha {IMPLICIT_ALPHA}, reg {IMPLICIT_REG}: ours "
                 "als(feedback='implicit') against implicit's CPU ALS (its OpenMP threads, BLAS on one thread); "
                 f"{args.als_repeats} run(s) per side alternated, median (min-max); ours a fresh process (first-call "
                 "costs in the whole fit), implicit's fit after its 1-iteration warm-up fit; the objective of both "
                 "computed here in float64 (bench_implicit_als.objective).", "", *implicit]
    return text


# ---------------------------------------------------------------- spark
def spark_problem(workdir: Path, args) -> tuple[Path, dict]:
    """--spark-nnz training entries plus SPARK_TEST_ENTRIES held out, all distinct, on the ALS
    shape; the training entries in Parquet for Spark (it reads them there, as bench_distributed does)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shape = tuple(csv_ints(args.als_shape))
    rows, cols = distinct_power_law_pairs(*shape, args.spark_nnz + SPARK_TEST_ENTRIES, args.seed + 2)
    vals = half_star_ratings(rows, cols, shape, args.seed + 3)
    test = np.zeros(rows.shape[0], dtype=bool)
    test[np.random.default_rng(args.seed + 4).choice(rows.shape[0], SPARK_TEST_ENTRIES, replace=False)] = True
    train = dict(rows=rows[~test], cols=cols[~test], vals=vals[~test], shape=shape,
                 test=(rows[test], cols[test], vals[test]))
    parquet = workdir / "spark_train.parquet"
    pq.write_table(pa.table({"row": train["rows"], "col": train["cols"], "value": train["vals"]}), parquet)
    path = workdir / "spark.npz"
    np.savez(path, shape=np.array(shape), rows=rows[:0], cols=cols[:0], vals=vals[:0], parquet=str(parquet),
             test_rows=rows[test], test_cols=cols[test], test_vals=vals[test])
    return path, train


def ours_alswr(args, train: dict, r: int, solver: str, runs: int, iterations: int = 0) -> tuple[list[float], float]:
    """(seconds of ``runs`` fits of ``iterations`` (default --spark-iterations), test RMSE of the
    last): als with Spark's ALS-WR weighting."""
    lr = library()
    times, result = [], None
    if runs == 0:
        return times, float("nan")
    for _ in range(runs):
        start = time.perf_counter()
        result = lr.recover.als(train["rows"], train["cols"], train["vals"], train["shape"], r, EXPLICIT_REG,
                                reg_scaling="count", solver=solver, max_iter=iterations or args.spark_iterations,
                                tol=0.0, seed=0)
        times.append(time.perf_counter() - start)
    rows, cols, vals = train["test"]
    error = lr.ops.sampled_product(result.U, result.V, rows, cols) - vals
    return times, float(np.sqrt(np.mean(error.astype(np.float64) ** 2)))


def spark_cells(peer: dict | None, why: str, ours: list[float], rmse: float) -> list[str]:
    if peer is None:
        return [f"not measured: {why}", "-", f"{rmse:.4f} / -"]
    spark = peer["all_seconds"]
    return [median_range(spark, 1, 2), f"{median(spark) / median(ours):.2f}x", f"{rmse:.4f} / {peer['test_rmse']:.4f}"]


def section_spark(args, workdir: Path) -> list[str]:
    missing = ("java not found on PATH" if shutil.which("java") is None else
               "pyarrow (to hand Spark the entries as Parquet) not installed" if not importlib.util.find_spec("pyarrow")
               else "")
    if missing:
        return [f"**ALS against Spark MLlib.** not measured: {missing}"]
    path, train = spark_problem(workdir, args)
    solvers = args.als_solvers.split(",")
    lines = ["| r | ours | ours s per fit | Spark s per fit | Spark / ours | test RMSE ours / Spark |",
             "|" + "---|" * 6]
    peer = None
    for r in csv_ints(args.spark_ranks):
        ours_alswr(args, train, r, solvers[0], 1, iterations=1)  # warm-up (Spark has its own)
        before = {solver: ours_alswr(args, train, r, solver, (args.spark_repeats + 1) // 2) for solver in solvers}
        peer, why = run_peer("spark", "spark_als.py", path, r, EXPLICIT_REG, args.spark_iterations, 0,
                             args.spark_repeats, args.threads)
        after = {solver: ours_alswr(args, train, r, solver, args.spark_repeats // 2) for solver in solvers}
        for solver in solvers:
            ours = before[solver][0] + after[solver][0]
            rmse = (after[solver] if after[solver][0] else before[solver])[1]
            lines.append("| " + " | ".join([str(r), solver, median_range(ours, 1, 2),
                                            *spark_cells(peer, why, ours, rmse)]) + " |")
            progress(lines[-1])
    startup = (f"; Spark's session start and DataFrame build ({peer['startup_seconds']:.0f} s, last rank) not counted"
               if peer else "")
    return [f"**ALS against Spark MLlib.** {train['shape'][0]:,} x {train['shape'][1]:,}, "
            f"{train['rows'].shape[0]:,} distinct training entries (+{SPARK_TEST_ENTRIES:,} held out), ALS-WR "
            f"(ours reg_scaling='count', Spark regParam) reg {EXPLICIT_REG}, {args.spark_iterations} iterations per "
            f"fit; Spark {peer['version'] if peer else ''} local[{args.threads}] with {args.threads} blocks per side, "
            f"fit() after a warm-up fit, median (min-max) of {args.spark_repeats}; ours the same count, half before "
            f"Spark's process and half after{startup}.", "", *lines]


# ---------------------------------------------------------------- report
def resolve_defaults(args) -> None:
    """Unset size options take the --quick or the full default."""
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: kernels, als, spark")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a check that every section runs)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="OpenMP threads for ours, torch's threads, Spark's local[N] (default: all cores)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per side and kernel row (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernel-nnz", help="comma-separated (pattern N x N with N = nnz / 100)")
    parser.add_argument("--kernel-ranks")
    parser.add_argument("--kernel-peers", default="torch,scipy", help="torch and/or scipy (numpy for SDDMM)")
    parser.add_argument("--torch", choices=("server", "in-process"), default="server",
                        help="torch in its venv's process (default), or in this one (run with that venv's python)")
    parser.add_argument("--als-shape", help="m,n (default MovieLens-20M's 138493,26744)")
    parser.add_argument("--als-nnz", type=int)
    parser.add_argument("--als-ranks")
    parser.add_argument("--als-iterations", type=int, default=2)
    parser.add_argument("--als-solvers", default="cholesky,cg", help="cholesky and/or cg (also for spark)")
    parser.add_argument("--als-feedback", default="explicit,implicit", help="explicit and/or implicit")
    parser.add_argument("--als-repeats", type=int, default=1, help="runs per side of each implicit-feedback row")
    parser.add_argument("--spark-nnz", type=int)
    parser.add_argument("--spark-ranks")
    parser.add_argument("--spark-iterations", type=int, help="Spark's maxIter = our max_iter")
    parser.add_argument("--spark-repeats", type=int)
    parser.add_argument("--gemm-size", type=int)
    parser.add_argument("--als-case", help=argparse.SUPPRESS)  # internal: one ALS run (als_in_fresh_process)
    args = parser.parse_args(argv)
    resolve_defaults(args)
    if args.als_iterations < 1 or args.repeats < 1 or args.spark_repeats < 1:
        parser.error("--als-iterations, --repeats and --spark-repeats take at least 1")
    return args


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    except OSError:
        return ""


def header(args, started: str, load_start: str, seconds: float, peer_lines: list[str]) -> list[str]:
    lr = library()
    info = lr.info()
    cpu = cpu_model()
    return [f"### bench_peers.py, {started}",
            f"Machine: {machine_line(info['openmp_threads'], cpu)}; CPU level that ran: {info['cpu_level']} (built: "
            f"{', '.join(info['cpu_levels_built'])}); load average {load_start} at the start, {load_average()} at "
            f"the end; whole run {seconds:.0f} s. numpy {np.__version__}, scipy {scipy.__version__}, lowrank_hpc "
            f"{lr.__version__}{''.join('; ' + line for line in peer_lines)}.",
            f"Command: `PYTHONPATH=python {'bench/.venvs/torch/bin/' if args.torch == 'in-process' else ''}python "
            "bench/bench_peers.py"
            + "".join(" " + shlex.quote(a) for a in sys.argv[1:]) + "`", ""]


def kernels_text(args, lines: list[str]) -> list[str]:
    shapes = ", ".join(f"nnz {nnz:,}: {max(nnz // ENTRIES_PER_ROW, 1):,} x {max(nnz // ENTRIES_PER_ROW, 1):,}"
                       for nnz in csv_ints(args.kernel_nnz))
    return [f"**Kernels.** float32, distinct random positions ({shapes}), {args.threads} threads for ours and torch "
            "(scipy's CSR product and numpy's einsum are single-threaded); ms, median (min-max) of "
            f"{args.repeats} runs per side, the sides alternated in one loop after a warm-up, each round starting "
            "one side later; ratios are the peer's median / ours (> 1: ours faster). Random order: ours "
            "SparsePattern built once from the caller's "
            "COO (keeps its order: times_dense, and sampled_product taking the entries in row order), or nothing "
            "prepared (sparse_times_dense sorts each call, or at r <= 8 adds in place without a sort; "
            "sampled_product takes the caller's order); "
            "torch and scipy hold a CSR matrix built once, SpMM permutes the caller's values into CSR order inside "
            "the timing, torch's SDDMM gathers its values back to the caller's order inside the timing. Effective "
            "GB/s counts an index, a value and each factor row per entry plus the output, cache hits included "
            "(not DRAM traffic). "
            + ("torch in this process on our factors (no copy): each run finds them in the caches as the previous "
               "one left them; both OpenMP runtimes wait passively." if args.torch == "in-process" else
               "torch in its own process on its own copy of the factors: each run follows the other side's pass "
               "over other memory."), "", *lines]


def main() -> None:
    args = parse_args(sys.argv[1:])
    if args.als_case:  # a child of als_in_fresh_process: its environment is already set
        print(json.dumps(run_als_case(json.loads(args.als_case))))
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before lowrank_hpc loads OpenMP; inherited by the peers
    if args.torch == "in-process":
        # Two OpenMP runtimes in one process (torch's own libgomp and ours): each one's idle
        # workers spin while the other works. Passive waiting stops that (1e6 entries, r = 8:
        # runs of one side spread over 1-5 ms with spinning, within 10% without).
        os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    started, load_start, clock = (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                                  load_average(), time.perf_counter())
    sections = args.sections.split(",")
    body, peer_lines = [], []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        if "kernels" in sections:
            lines, torch_line = section_kernels(args, workdir)
            body += kernels_text(args, lines) + [""]
            peer_lines.append(torch_line)
        if "als" in sections:
            body += section_als(args, workdir) + [""]
        if "spark" in sections:
            body += section_spark(args, workdir) + [""]
    print("\n".join(header(args, started, load_start, time.perf_counter() - clock, peer_lines) + body))


if __name__ == "__main__":
    main()
