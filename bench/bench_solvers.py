"""Solver benchmark: lowrank_hpc's recovery solvers against the peers a user would pick instead,
measured in the same run on the same data.

    bash bench/setup_peers.sh                 # once: the peers' venvs under bench/.venvs/
    PYTHONPATH=python python bench/bench_solvers.py           # full sizes, appends to BENCHMARKS.md
    PYTHONPATH=python python bench/bench_solvers.py --quick   # small sizes, prints only

Cases (each row: our time, the peer's, the ratio, and both test RMSEs in the note):
1. per-iteration GD against plain PyTorch (CPU, autograd + SGD): Gaussian matrix sensing with a
   dense operator matrix, and matrix completion (gather + index_add_ in the backward);
   same start, step and iteration count on both sides.
2. completion to equal test RMSE against fancyimpute's SoftImpute and IterativeSVD: ours is
   ScaledGD (factored_gd(method="scaled", init="spectral")), timed for the iterations it needs
   to match or beat the peer's final test RMSE.
3. Spark MLlib ALS against lowrank_hpc.recover.als(reg_scaling="count") on skimage's moon
   image with half the pixels seen: same rank, regParam, iterations and data.
4. batched solves (B problems of 30 x 30, rank 2) against a Python loop over the
   single-problem solver, timed on a subset and extrapolated linearly to B.

Each peer runs in a subprocess with its own venv's python (bench/peers/*.py), reading the
problem from an .npz this script writes and printing JSON. A peer or a lowrank_hpc function
that is not available is reported in its row as "not measured: <reason>"; nothing crashes.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _timing import VENVS, Row, best_time, machine_line, report, run_peer  # noqa: E402

import lowrank_hpc as lr  # noqa: E402
from lowrank_hpc.sensing import EntrySampling, GaussianSensing  # noqa: E402



@dataclass
class NotMeasured:
    """A table row for a comparison that could not be made, with the reason."""

    kernel: str
    case: str
    peer: str
    reason: str

    def markdown(self) -> str:
        return f"| {self.kernel} | {self.case} | - | {self.peer} | - | - | not measured: {self.reason} |"


def rmse(U: np.ndarray, V: np.ndarray, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> float:
    """Root mean square error of U V^T at the entries (rows, cols) against vals."""
    predicted = np.einsum("kr,kr->k", U[rows].astype(np.float64), V[cols].astype(np.float64))
    return float(np.sqrt(np.mean((predicted - vals) ** 2)))


@dataclass
class Completion:
    """A rank-r completion problem: observed entries, held-out test entries (disjoint)."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    test_rows: np.ndarray
    test_cols: np.ndarray
    test_vals: np.ndarray

    def save(self, path: Path, **extra: Any) -> Path:
        np.savez(path, shape=np.array(self.shape), rows=self.rows, cols=self.cols, vals=self.vals,
                 test_rows=self.test_rows, test_cols=self.test_cols, test_vals=self.test_vals, **extra)
        return path

    def test_rmse(self, U: np.ndarray, V: np.ndarray) -> float:
        return rmse(U, V, self.test_rows, self.test_cols, self.test_vals)


def split_entries(matrix: np.ndarray, n_observed: int, n_test: int, seed: int, dtype) -> Completion:
    """Observe n_observed entries of ``matrix`` and hold out n_test others, uniformly at random;
    observed entries are sorted by row (the order a user's COO data usually has)."""
    n1, n2 = matrix.shape
    chosen = np.random.default_rng(seed).choice(n1 * n2, n_observed + n_test, replace=False)
    observed, test = np.sort(chosen[:n_observed]), chosen[n_observed:]
    rows, cols = (a.astype(np.int32) for a in np.divmod(observed, n2))
    test_rows, test_cols = (a.astype(np.int32) for a in np.divmod(test, n2))
    return Completion((n1, n2), rows, cols, matrix[rows, cols].astype(dtype),
                      test_rows, test_cols, matrix[test_rows, test_cols].astype(np.float64))


def random_low_rank(n1: int, n2: int, rank: int, seed: int) -> np.ndarray:
    """U V^T with iid N(0, 1) factors scaled so the entries have unit variance."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n1, rank)) @ rng.standard_normal((n2, rank)).T / np.sqrt(rank)


def small_init(n1: int, n2: int, rank: int, seed: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A small random start (scale 0.1), handed to both sides so they run the same iterates."""
    rng = np.random.default_rng(seed)
    return ((0.1 * rng.standard_normal((n1, rank)) / np.sqrt(n1)).astype(dtype),
            (0.1 * rng.standard_normal((n2, rank)) / np.sqrt(n2)).astype(dtype))


# ---------------------------------------------------------------- case 1: per-iteration GD vs torch

def time_gd_against_torch(label: str, case: str, op: Any, y: np.ndarray, rank: int, start, iters: int,
                          problem: Path, extra: dict, ours_rmse, note: str) -> list:
    """Our factored_gd(method="gd") and the torch peer from the same start with the same fixed
    step for ``iters`` iterations; per-iteration seconds from the wall time of the whole call
    (with the step given, ours makes no step/scale estimates)."""
    # The step factored_gd would pick itself (0.5 / ||A*(y)||_2), fixed so torch uses it too.
    probe = lr.recover.factored_gd(op, y, rank, init=start, max_iter=1, tol=0.0)
    step = 0.5 / probe.info["spectral_norm_adjoint_y"]

    loop_seconds: list[float] = []  # the solver's own loop time, without its setup

    def ours():
        result = lr.recover.factored_gd(op, y, rank, method="gd", init=start, step=step, max_iter=iters, tol=0.0)
        loop_seconds.append(result.seconds)
        return result

    result = ours()
    assert result.n_iter == iters, result.n_iter
    ours_s = best_time(ours, repeats=5) / iters
    np.savez(problem, U0=start[0], V0=start[1], step=step, iters=iters, **extra)
    peer, reason = run_peer("torch", "torch_gd.py", problem, 5)
    if peer is None:
        return [NotMeasured(label, case, "PyTorch CPU autograd+SGD", reason)]
    ours_loss = float(result.history["loss"][-1])
    return [Row(label, case, ours_s, f"PyTorch {peer['version']} CPU autograd+SGD ({peer['threads']} threads)",
                peer["seconds_per_iter"],
                f"per iteration (wall / {iters} its; loop alone {min(loop_seconds) / iters * 1e3:.2f} ms), "
                f"step {step:.3g} ({result.step_halvings} halvings: extra passes ours pays), best of 5; test RMSE ours {ours_rmse(result):.4g}, "
                f"torch {peer['test_rmse']:.4g}; final loss ours {ours_loss:.6g}, torch {peer['final_loss']:.6g}"
                f"{'; ' + note if note else ''}")]


def case_gd_vs_torch(quick: bool, workdir: Path) -> list:
    rows: list = []
    # Gaussian sensing, n1 = n2 = n, rank 5, m = 5 n r measurements, float32 (torch's default).
    n, rank = (30, 5) if quick else (60, 5)
    m, iters = 5 * n * rank, (100 if quick else 300)
    op, note = GaussianSensing(m, (n, n), 0), ""
    rng = np.random.default_rng(1)
    U_true, V_true = rng.standard_normal((n, rank)) / np.sqrt(rank), rng.standard_normal((n, rank))
    M = U_true @ V_true.T
    y = np.asarray(op.forward_factored(U_true.astype(np.float32), V_true.astype(np.float32)), dtype=np.float32)
    # The torch side gets the operator as the dense matrix, row k = A*(e_k) flattened.
    A = np.stack([np.asarray(op.adjoint(e)).reshape(-1) for e in np.eye(m, dtype=np.float32)]).astype(np.float32)
    rows += time_gd_against_torch(
        "factored_gd gd, sensing", f"Gaussian n={n} r={rank} m={m} f32", op, y, rank,
        small_init(n, n, rank, 2, np.float32), iters, workdir / "sensing.npz",
        {"kind": "sensing", "A": A, "y": y, "M": M},
        lambda res: float(np.sqrt(np.mean((res.U.astype(np.float64) @ res.V.T.astype(np.float64) - M) ** 2))),
        note)

    # Completion 2000 x 2000, rank 10, 5% observed, float32.
    n, rank, fraction = (500, 5, 0.05) if quick else (2000, 10, 0.05)
    iters = 50 if quick else 100
    data = split_entries(random_low_rank(n, n, rank, seed=3), int(fraction * n * n), 100_000 if not quick else 10_000,
                         seed=4, dtype=np.float32)
    op, note = EntrySampling(data.rows, data.cols, data.shape), ""
    rows += time_gd_against_torch(
        "factored_gd gd, completion", f"{n}x{n} r={rank} {fraction:.0%} obs f32", op, data.vals, rank,
        small_init(n, n, rank, 5, np.float32), iters, workdir / "completion.npz",
        {"kind": "completion", "rows": data.rows, "cols": data.cols, "vals": data.vals,
         "test_rows": data.test_rows, "test_cols": data.test_cols, "test_vals": data.test_vals},
        lambda res: data.test_rmse(res.U, res.V), note)
    return rows


# ------------------------------------------------------- case 2: completion to equal RMSE vs fancyimpute

def case_completion_vs_fancyimpute(quick: bool, workdir: Path) -> list:
    """ScaledGD from a spectral start, timed for the iterations it needs to reach each peer's
    final test RMSE (the iteration count is found in a separate run that evaluates the test
    RMSE in a callback, so that evaluation is not timed)."""
    n, rank, fraction = (1000, 5, 0.05) if quick else (5000, 10, 0.02)
    # SoftImpute's default iteration cap; IterativeSVD's default (200) would take ~10 minutes here.
    max_iters = {"SoftImpute": 20 if quick else 100, "IterativeSVD": 10 if quick else 50}
    data = split_entries(random_low_rank(n, n, rank, seed=6), int(fraction * n * n), 100_000, seed=7,
                         dtype=np.float64)
    case = f"{n}x{n} r={rank} {fraction:.0%} obs f64 noiseless"
    problem = data.save(workdir / "fancyimpute.npz")
    op, note = EntrySampling(data.rows, data.cols, data.shape), ""
    settings = dict(method="scaled", init="spectral", seed=0, tol=0.0)
    curve: list[float] = []
    lr.recover.factored_gd(op, data.vals, rank, max_iter=100, **settings,
                           callback=lambda it, state: curve.append(data.test_rmse(state["U"], state["V"])))
    rows: list = []
    for solver, iters in max_iters.items():
        label = "factored_gd scaled, completion to equal test RMSE"
        peer, reason = run_peer("fancyimpute", "fancyimpute_completion.py", problem, solver, rank, iters)
        if peer is None:
            rows.append(NotMeasured(label, case, f"fancyimpute {solver}", reason))
            continue
        target = peer["test_rmse"]
        reached = [k + 1 for k, value in enumerate(curve) if value <= target]
        if not reached:
            rows.append(NotMeasured(label, case, f"{peer['version']} {solver}",
                                    f"ours did not reach test RMSE {target:.3g} in {len(curve)} its "
                                    f"(best {min(curve):.3g}); peer took {peer['seconds']:.1f} s"))
            continue
        k = reached[0]
        ours_s = best_time(lambda: lr.recover.factored_gd(op, data.vals, rank, max_iter=k, **settings), repeats=5)
        final = lr.recover.factored_gd(op, data.vals, rank, max_iter=k, **settings)
        rows.append(Row(label, case, ours_s, f"{peer['version']} {solver} {peer['settings']}", peer["seconds"],
                        f"test RMSE target {target:.4g} (peer final); ours {data.test_rmse(final.U, final.V):.4g} "
                        f"after {k} its incl. spectral init, best of 5; peer: one run, dense NaN matrix build not timed"
                        f"{'; ' + note if note else ''}"))
    return rows


# ------------------------------------------------------------- case 3: Spark MLlib ALS vs our ALS

def moon_image() -> tuple[Optional[np.ndarray], str]:
    """skimage.data.moon() (512 x 512 uint8). scikit-image is a benchmark-only dependency and
    lives in the fancyimpute venv, whose python saves the image for us."""
    python = VENVS / "fancyimpute" / "bin" / "python"
    if not python.exists():
        return None, "scikit-image's venv (fancyimpute) is missing (run bench/setup_peers.sh)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "moon.npy"
        done = subprocess.run([str(python), "-c", "import sys, numpy, skimage.data; "
                               "numpy.save(sys.argv[1], skimage.data.moon())", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"skimage.data.moon() failed: {(done.stderr.strip().splitlines() or [''])[-1][:200]}"
        return np.load(path), ""


def case_spark_als(quick: bool, workdir: Path) -> list:
    rank, reg, iters, repeats = (10, 0.1, 5, 1) if quick else (20, 0.1, 10, 2)
    label, peer_name = "als reg_scaling=count (ALS-WR)", "Spark MLlib ALS local[2]"
    image, reason = moon_image()
    if image is None:
        return [NotMeasured(label, "moon 512x512, half the pixels", peer_name, reason)]
    if quick:
        image = image[::2, ::2]
    pixels = image.astype(np.float64) / 255.0
    n1, n2 = pixels.shape
    data = split_entries(pixels, n1 * n2 // 2, n1 * n2 - n1 * n2 // 2, seed=8, dtype=np.float64)
    case = f"skimage moon {n1}x{n2} /255, 50% seen, r={rank} reg={reg} {iters} its"
    peer, peer_reason = run_peer("spark", "spark_als.py", data.save(workdir / "moon.npz"), rank, reg, iters, 0,
                                 repeats)
    if peer is None:
        return [NotMeasured(label, case, peer_name, peer_reason)]

    def ours():
        return lr.recover.als(data.rows, data.cols, data.vals, data.shape, rank, reg, reg_scaling="count",
                              max_iter=iters, tol=0.0, seed=0)

    result = ours()
    ours_s = best_time(ours, repeats=3)
    return [Row(label, case, ours_s, f"{peer['version']} ALS local[2] {peer['settings']}", peer["seconds"],
                f"test RMSE ours {data.test_rmse(result.U, result.V):.4g}, Spark {peer['test_rmse']:.4g}; "
                f"Spark timed around fit() only, after the session is up "
                f"(startup {peer['startup_seconds']:.1f} s not counted), best of {repeats} after a warm-up")]


# ------------------------------------------------------------ case 4: batched vs a loop over single

@dataclass
class Batch:
    """B completion problems of one shape, concatenated (problem b owns [offsets[b], offsets[b+1]))."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    vals: np.ndarray
    offsets: np.ndarray
    test: tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, cols, vals: the other entries, per problem
    per_problem: int

    def problem(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        part = slice(self.offsets[b], self.offsets[b + 1])
        return self.rows[part], self.cols[part], self.vals[part]

    def test_rmse(self, U: np.ndarray, V: np.ndarray, count: int) -> float:
        """Test RMSE over the first ``count`` problems, with U (count, m, r), V (count, n, r)."""
        t_rows, t_cols, t_vals = (a[:count] for a in self.test)
        problems = np.arange(count)[:, None]
        predicted = np.einsum("bkr,bkr->bk", U[problems, t_rows], V[problems, t_cols])
        return float(np.sqrt(np.mean((predicted - t_vals) ** 2)))


def make_batch(count: int, n: int, rank: int, fraction: float, seed: int) -> Batch:
    rng = np.random.default_rng(seed)
    M = rng.standard_normal((count, n, rank)) @ rng.standard_normal((count, rank, n)) / np.sqrt(rank)
    k = int(fraction * n * n)
    order = np.argsort(rng.random((count, n * n)), axis=1)
    seen, unseen = np.sort(order[:, :k], axis=1), order[:, k:]
    rows, cols = np.divmod(seen, n)
    t_rows, t_cols = np.divmod(unseen, n)
    vals = np.take_along_axis(M.reshape(count, -1), seen, 1)
    t_vals = np.take_along_axis(M.reshape(count, -1), unseen, 1)
    return Batch((n, n), rows.ravel().astype(np.int32), cols.ravel().astype(np.int32), vals.ravel(),
                 np.arange(count + 1, dtype=np.int64) * k, (t_rows, t_cols, t_vals), k)


def case_batched(quick: bool) -> list:
    count, looped = (1000, 50) if quick else (10_000, 300)
    n, rank, fraction = 30, 2, 0.5
    batch = make_batch(count, n, rank, fraction, seed=9)
    case = f"B={count} {n}x{n} r={rank} {fraction:.0%} obs f64"
    entry_sampling, note = EntrySampling, ""
    extrapolation = f"loop timed on {looped} problems, x{count // looped} (linear extrapolation)"
    rows: list = []

    settings = dict(method="scaled", init="spectral", max_iter=200, tol=1e-6, seed=0)
    together = lr.recover.batched_factored_gd(batch.rows, batch.cols, batch.vals, batch.offsets, batch.shape, rank,
                                              **settings)
    ours_s = best_time(lambda: lr.recover.batched_factored_gd(batch.rows, batch.cols, batch.vals, batch.offsets,
                                                              batch.shape, rank, **settings), repeats=2)
    singles: list = []

    def loop():
        singles.clear()
        for b in range(looped):
            r, c, v = batch.problem(b)
            singles.append(lr.recover.factored_gd(entry_sampling(r, c, batch.shape), v, rank, **settings))

    loop_s = best_time(loop, repeats=2) * count / looped
    U, V = np.stack([s.U for s in singles]), np.stack([s.V for s in singles])
    rows.append(Row("batched_factored_gd scaled", case, ours_s, "Python loop over factored_gd", loop_s,
                    f"{extrapolation}; test RMSE (first {looped}) batched "
                    f"{batch.test_rmse(together.U[:looped], together.V[:looped], looped):.3g}, loop "
                    f"{batch.test_rmse(U, V, looped):.3g}; converged {int(np.sum(together.converged))}/{count} "
                    f"batched, {sum(bool(s.converged) for s in singles)}/{looped} loop"
                    f"{'; ' + note if note else ''}"))

    batched_als, als = lr.recover.batched_als, lr.recover.als
    als_settings = dict(max_iter=50, tol=1e-6, seed=0)
    together = batched_als(batch.rows, batch.cols, batch.vals, batch.offsets, batch.shape, rank, **als_settings)
    ours_s = best_time(lambda: batched_als(batch.rows, batch.cols, batch.vals, batch.offsets, batch.shape, rank,
                                           **als_settings), repeats=2)

    def als_loop():  # problem b with the start batched_als gives it: the same results, bit for bit
        singles.clear()
        for b in range(looped):
            singles.append(als(*batch.problem(b), batch.shape, rank, **{**als_settings, "seed": (0, b)}))

    loop_s = best_time(als_loop, repeats=2) * count / looped
    U, V = np.stack([s.U for s in singles]), np.stack([s.V for s in singles])
    assert np.allclose(together.U[:looped], U, rtol=1e-10, atol=1e-12), "batched_als differs from the loop"
    rows.append(Row("batched_als", case, ours_s, "Python loop over als", loop_s,
                    f"{extrapolation}; test RMSE (first {looped}) batched "
                    f"{batch.test_rmse(together.U[:looped], together.V[:looped], looped):.3g}, loop "
                    f"{batch.test_rmse(U, V, looped):.3g}; kernels: batched {together.info['kernel']}, "
                    f"loop {singles[0].info['kernel']}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; do not write BENCHMARKS.md")
    parser.add_argument("--output", default=str(BENCH.parent / "BENCHMARKS.md"))
    args = parser.parse_args()

    started, load_before = time.perf_counter(), os.getloadavg()[0]
    table: list = []
    with tempfile.TemporaryDirectory(prefix="bench_solvers_") as tmp:
        workdir = Path(tmp)
        cases = [lambda: case_gd_vs_torch(args.quick, workdir),
                 lambda: case_completion_vs_fancyimpute(args.quick, workdir),
                 lambda: case_spark_als(args.quick, workdir),
                 lambda: case_batched(args.quick)]
        for case in cases:
            rows = case()
            print("\n".join(row.markdown() for row in rows), flush=True)  # progress: a full run takes minutes
            table += rows

    # The machine may be shared: the load average tells how much the best-of-N timings had to fight.
    load = f"1-minute load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end"
    report("bench_solvers.py", machine_line(lr.info()["openmp_threads"], load),
           f"Python {platform.python_version()}, numpy {np.__version__}, lowrank_hpc {lr.__version__}. Peers in "
           f"their own venvs (bench/setup_peers.sh). Whole run {time.perf_counter() - started:.0f} s.",
           f"PYTHONPATH=python python bench/bench_solvers.py{' --quick' if args.quick else ''}", table, args.output,
           write=not args.quick)

if __name__ == "__main__":
    main()
