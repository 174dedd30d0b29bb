"""Audit of the command line run as a user runs it: reports checked against numpy on the saved files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


# ---------------------------------------------------------------------- bmf's text value column
def _bmf_report(capsys, source, out):
    from lowrank_hpc.cli.main import main
    assert main(["bmf", str(source), "-k", "1", "-o", str(out), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_bmf_reads_a_text_files_value_column_as_the_npz_reads_vals(tmp_path, capsys):
    # The third column was ignored: every listed pair was a one, so a 0/1 click log's zeros became
    # ones (6 ones where it has 3). Its zeros are dropped as an .npz's are; their ids stay.
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("user,item,clicked\na,x,1\na,y,0\nb,x,0\nb,y,1\nc,x,1\nc,y,0\nd,x,0\n")
    report = _bmf_report(capsys, clicks, tmp_path / "text.npz")
    assert report["ones"] == 3 and report["shape"] == [4, 2]
    same = tmp_path / "clicks.npz"
    np.savez(same, rows=np.array(list("aabbccd")), cols=np.array(list("xyxyxyx")),
             vals=np.array([1, 0, 0, 1, 1, 0, 0]))
    assert _bmf_report(capsys, same, tmp_path / "npz.npz")["ones"] == 3
    with np.load(tmp_path / "text.npz") as saved:
        assert saved["row_ids"].tolist() == ["a", "b", "c", "d"] and saved["col_ids"].tolist() == ["x", "y"]
    pairs = tmp_path / "pairs.csv"  # two columns: every listed pair is a one
    pairs.write_text("user,item\na,x\nb,y\nc,x\n")
    assert _bmf_report(capsys, pairs, tmp_path / "pairs.npz")["ones"] == 3


@pytest.mark.parametrize("lines, fragment", [
    # a 1-5 ratings file was accepted and reported as "4 ones"
    ("user,item,rating\na,x,5\na,y,3\nb,x,2\nb,y,1\n", "line 2: the value '5' is neither 0 nor 1"),
    ("1 1 1\n1 2 0.5\n", "line 2: the value '0.5' is neither 0 nor 1"),
    ("a,x,1\nb,x,1\na,x,0\n", "line 3: (row a, col x) is 0 here and 1 on line 1"),
])
def test_bmf_text_value_other_than_0_or_1_names_its_line(tmp_path, lines, fragment):
    source = tmp_path / "values.txt"
    source.write_text(lines)
    result = cli("bmf", source, "-k", 1, "-o", tmp_path / "f.npz")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and f"{source}, {fragment}" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "f.npz").exists()


# ---------------------------------------------------------------------- empty ids
@pytest.mark.parametrize("lines, fragment", [
    # text ids: every line missing its user was pooled into one phantom user, the id ""
    ("user,item,rating\nu1,i1,3\n,i2,4\nu2,i3,5\n", "line 3: the row id is empty"),
    ("user,item,rating\nu1,i1,3\nu2,,5\n", "line 3: the column id is empty"),
    ('u1,i1,3\n"",i1,2\n', "line 2: the row id is empty"),
    # numeric ids: one empty id turned the whole column into text labels
    ("1,1,3\n2,3,4\n3,,5\n", "line 3: the column id is empty"),
    ("1::1::3\n::2::4\n", "line 2: the row id is empty"),
])
def test_an_empty_id_is_an_error_naming_its_line_and_axis(tmp_path, lines, fragment):
    from lowrank_hpc.cli import DataError, readers
    source = tmp_path / "entries.txt"
    source.write_text(lines)
    with pytest.raises(DataError) as caught:
        readers.read_ratings(str(source))
    assert f"{source}, {fragment}" in str(caught.value)
    with pytest.raises(DataError) as caught:  # bmf's reader: pairs, with or without a value column
        readers.read_pairs(str(source))
    assert f"{source}, {fragment}" in str(caught.value)


# ---------------------------------------------------------------------- demo's rank
def test_demo_rank_beyond_the_image_is_a_usage_error(capsys):
    # It reached the fit and exited 1 ("the fit failed"); complete's --rank 5000 is a usage error (2).
    from lowrank_hpc.cli.main import main
    assert main(["demo", "--rank", "600", "--no-picture"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lowrank-hpc: error: --rank 600 is larger than the data allows")
    assert "pass --rank" in err and "the fit failed" not in err


@pytest.mark.parametrize("seed", ["0", "1"])
def test_implicit_feedback_refuses_a_negative_count_wherever_the_split_puts_it(tmp_path, capsys, seed):
    # Only the training part was checked: with --seed 0 the -1 was held out, dropped from the
    # score and the run exited 0; with --seed 1 the fit failed naming no line or entry.
    from lowrank_hpc.cli.main import main
    source = tmp_path / "plays.csv"
    source.write_text("user,item,plays\nu0,a,1\nu0,b,0\nu1,a,2\nu1,c,-1\nu2,b,3\nu2,c,1\n")
    assert main(["complete", str(source), "--feedback", "implicit", "--rank", "1", "--seed", seed]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "implicit feedback needs counts >= 0" in err and "(row u1, col c) is -1" in err
