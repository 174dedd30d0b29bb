"""Audit of the command line run as a user runs it: reports checked against numpy on the saved files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import lowrank_hpc

PYTHON_DIR = str(Path(lowrank_hpc.__file__).resolve().parents[1])
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, os.environ.get("PYTHONPATH", "")]))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lowrank_hpc", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=120)


def _nonnegative_file(folder: Path) -> tuple[Path, np.ndarray]:
    """A 20 x 15 non-negative matrix of rank 3 as 1-based row,col,value lines (every entry listed)."""
    rng = np.random.default_rng(4)
    X = rng.random((20, 3)) @ rng.random((3, 15))
    path = folder / "counts.csv"
    path.write_text("".join(f"{i + 1},{j + 1},{float(X[i, j])!r}\n" for i in range(20) for j in range(15)))
    return path, X


def test_nmf_alternating_relu_fits_and_reports_its_error(tmp_path):
    # The solver takes dense X only; the command passed its sparse matrix, so every
    # `nmf --solver alternating_relu` ended in "the fit failed".
    path, X = _nonnegative_file(tmp_path)
    out = tmp_path / "f.npz"
    result = cli("nmf", path, "-k", 3, "--solver", "alternating_relu", "--max-iter", 50, "--json", "-o", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    saved = np.load(out)
    assert saved["row_ids"].tolist() == list(range(1, 21)) and saved["col_ids"].tolist() == list(range(1, 16))
    error = float(np.linalg.norm(X - saved["W"] @ saved["H"]))
    assert report["shape"] == [20, 15] and report["entries"] == 300
    np.testing.assert_allclose(report["reconstruction_err"], error, rtol=1e-9)
    np.testing.assert_allclose(report["relative_error"], error / np.linalg.norm(X), rtol=1e-9)


def test_nmf_alternating_relu_with_missing_entries_is_a_usage_error(tmp_path):
    path, _ = _nonnegative_file(tmp_path)
    result = cli("nmf", path, "-k", 3, "--solver", "alternating_relu", "--unlisted", "missing", "-o",
                 tmp_path / "f.npz")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("lowrank-hpc: error: --solver alternating_relu") and "Traceback" not in result.stderr



def test_nmf_alternating_relu_refuses_a_dense_matrix_beyond_half_the_memory(tmp_path, capsys, monkeypatch):
    """The dense matrix this solver needs is sized before it is formed: on a machine of 4 MiB,
    1,000 x 1,000 float64 (7.6 MiB) is a one-line error (exit 1), not a process the kernel kills
    mid-fit; cd keeps the matrix sparse and runs."""
    from lowrank_hpc.cli import nmf as nmf_command
    from lowrank_hpc.cli.main import main
    path = tmp_path / "diagonal.csv"
    path.write_text("".join(f"{i},{i},1.5\n" for i in range(1000)))
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1024}
    monkeypatch.setattr(nmf_command.os, "sysconf", lambda name: pages[name])
    args = ["nmf", str(path), "-k", "1", "--output", str(tmp_path / "f.npz"), "--max-iter", "5"]
    assert main(args + ["--solver", "alternating_relu"]) == 1
    assert ("--solver alternating_relu forms the dense 1000 x 1000 matrix, 0.00745 GiB of this machine's "
            "0.00391 GiB; use --solver cd or mu") in capsys.readouterr().err
    assert main(args + ["--solver", "cd"]) == 0
