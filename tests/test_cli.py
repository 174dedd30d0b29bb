"""The ``lowrank-hpc`` command line, run as a user runs it: ``python -m lowrank_hpc`` in a subprocess.

Every error a user can cause must be one line ``lowrank-hpc: error: ...`` on stderr with exit
status 1 (data) or 2 (usage), never a traceback; every --json report must be valid JSON
without NaN.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lowrank_hpc
from lowrank_hpc.cli import load_model

PYTHON_DIR = str(Path(lowrank_hpc.__file__).resolve().parents[1])
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([PYTHON_DIR, os.environ.get("PYTHONPATH", "")]))


def cli(*args, cwd=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lowrank_hpc", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def strict_json(text):
    """json.loads that fails on NaN and Infinity, which are not JSON."""
    def refuse(constant):
        raise ValueError(f"{constant} in the JSON report")
    return json.loads(text, parse_constant=refuse)


def fails(result, code, *fragments):
    """The run failed with ``code`` and one line ``lowrank-hpc: error: ...`` holding the fragments."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code, (result.returncode, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("lowrank-hpc: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    """A 60 x 50 rank-2 ratings table with string ids, a header and a timestamp column."""
    folder = tmp_path_factory.mktemp("ratings")
    rng = np.random.default_rng(0)
    M = 3 + rng.standard_normal((60, 2)) @ rng.standard_normal((2, 50))
    rows, cols = np.nonzero(rng.random((60, 50)) < 0.5)
    path = folder / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n"
                    + "".join(f"u{i},item{j},{float(M[i, j])!r},97830{i}\n" for i, j in zip(rows, cols)))
    return path


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


FAST = ("--method", "als", "--reg", "0.1", "--center", "none", "--rank", "2", "--max-iter", "20")


# ---------------------------------------------------------------------- working runs
def test_complete_string_ids_json_model_and_predictions(ratings, tmp_path):
    pairs = write(tmp_path, "pairs.csv", "row,col\nu1,item2\nu3,item4\nnewcomer,item2\n")
    model = tmp_path / "model.npz"
    predictions = tmp_path / "predictions.csv"
    run = cli("complete", ratings, "--rank", "2", "--json", "--output", model, "--predict", pairs,
              "--predictions-out", predictions)
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)
    assert report["rows"] == 60 and report["cols"] == 50 and report["header"] is True
    assert report["test_rmse"] < 0.5 * report["mean_predictor_rmse"]
    assert report["method"] == "soft_impute"  # what the default "auto" ran on 60 x 50 entries
    assert "1 id(s) of the --predict pairs are not in the data (row newcomer)" in run.stderr
    lines = predictions.read_text().splitlines()
    assert lines[0] == "row,col,prediction" and [line.split(",")[:2] for line in lines[1:]] == [
        ["u1", "item2"], ["u3", "item4"], ["newcomer", "item2"]]
    loaded = load_model(str(model))
    assert loaded.method == "soft_impute"  # the solver that ran, not "auto"
    assert float(lines[1].split(",")[2]) == pytest.approx(loaded.predict_ids(["u1"], ["item2"])[0], rel=1e-12)


@pytest.mark.parametrize("debias, refit_rank", [("yes", 2), ("no", None)])
def test_debias_refits_the_fixed_penalty_fit_and_reports_its_rank(ratings, debias, refit_rank):
    # 1,500 entries hold too few out for "auto" to offer the refit; "yes" refits the rank-2 fit.
    run = cli("complete", ratings, "--rank", "2", "--reg", "1.0", "--debias", debias, "--json")
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)
    assert report["refit_rank"] == refit_rank
    plain = strict_json(cli("complete", ratings, "--rank", "2", "--reg", "1.0", "--debias", "no", "--json").stdout)
    if refit_rank:  # least squares on the penalty's directions: closer to the training entries
        assert report["train_rmse"] < plain["train_rmse"]


def test_human_report_and_recommendations_to_stdout(ratings):
    run = cli("complete", ratings, *FAST, "--recommend", "3")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "row,col,score,rank" and len(lines) == 1 + 60 * 3
    seen = {tuple(line.split(",")[:2]) for line in ratings.read_text().splitlines()[1:]}
    assert not seen & {tuple(line.split(",")[:2]) for line in lines[1:]}
    assert "RMSE: train" in run.stderr  # the report moves to stderr when stdout holds the CSV


def test_movielens_style_one_based_and_huge_ids(tmp_path):
    """1-based ids make no empty row 0; an id of 10**12 is a label, not a size."""
    rng = np.random.default_rng(1)
    lines = [f"{i}::{10**12 + j}::{rng.integers(1, 6)}::978300760" for i in range(1, 21) for j in range(15)
             if rng.random() < 0.7]
    path = write(tmp_path, "ratings.dat", "\n".join(lines) + "\n")
    run = cli("complete", path, "--rank", "2", "--json", "--recommend", "1", "--recommendations-out",
              tmp_path / "rec.csv")
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)
    assert (report["rows"], report["cols"]) == (20, 15)
    recommended = tmp_path.joinpath("rec.csv").read_text().splitlines()[1:]
    assert {line.split(",")[0] for line in recommended} <= {str(i) for i in range(1, 21)}
    assert all(int(line.split(",")[1]) >= 10**12 for line in recommended)


def test_negative_ids_are_labels(tmp_path):
    path = write(tmp_path, "r.csv", "".join(f"{-i},{j},{i + j}\n" for i in range(6) for j in range(5)))
    run = cli("complete", path, "--rank", "1", "--test-fraction", "0", "--json")
    assert run.returncode == 0, run.stderr
    assert strict_json(run.stdout)["rows"] == 6


def test_one_line_file_fits_and_reports_null_test_rmse(tmp_path):
    path = write(tmp_path, "one.csv", "7,9,4.5\n")
    run = cli("complete", path, "--rank", "1", "--json")
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)  # no NaN: there is no held-out entry to measure
    assert report["entries"] == 1 and report["test_entries"] == 0 and report["test_rmse"] is None
    fails(cli("complete", path, "--rank", "2"), 2, "--rank 2 is larger than the data allows", "--rank 1 or less")
    fails(cli("complete", path, "--rank", "1", "--test-fraction", "0.9"), 1, "too few entries to fit")


def test_matrix_market_and_npz_inputs(tmp_path):
    import scipy.io
    import scipy.sparse

    rng = np.random.default_rng(2)
    dense = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 20))
    mask = rng.random(dense.shape) < 0.6
    scipy.io.mmwrite(str(tmp_path / "m.mtx"), scipy.sparse.coo_matrix(np.where(mask, dense, 0)))
    run = cli("complete", tmp_path / "m.mtx", *FAST, "--json")
    assert run.returncode == 0, run.stderr
    assert strict_json(run.stdout)["format"] == "mtx"
    rows, cols = np.nonzero(mask)
    np.savez(tmp_path / "e.npz", rows=rows, cols=cols, vals=dense[mask], shape=np.array(dense.shape))
    run = cli("complete", "--input", tmp_path / "e.npz", *FAST, "--json")  # --input: the old spelling
    assert run.returncode == 0, run.stderr
    assert strict_json(run.stdout)["rows"] == 30


# ---------------------------------------------------------------------- data errors (exit 1)
@pytest.mark.parametrize("line, fragment", [
    ("u9,item1,abc", "line 4: the value 'abc' is not a number"),
    ("u9,item1,nan", "line 4: the value 'nan' is not a finite number"),
    ("3.5,item1,2", "line 4: the row id '3.5' is a number but not an integer"),
    ("u9,item1", "line 4: 2 field(s) where line 2 has 3 (short row)"),
    ("u9,item1,2,7", "line 4: 4 field(s) where line 2 has 3 (long row)"),
])
def test_bad_rows_name_their_line(tmp_path, line, fragment):
    path = write(tmp_path, "r.csv", f"user,item,rating\nu1,item1,1\nu2,item2,2\n{line}\nu3,item3,3\n")
    fails(cli("complete", path), 1, str(path), fragment)


def test_unusable_inputs(tmp_path):
    fails(cli("complete", tmp_path / "absent.csv"), 1, "absent.csv: no such file")
    fails(cli("complete", tmp_path), 1, "is a directory")
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 40)
    fails(cli("complete", blob), 1, "looks like a binary file")
    fails(cli("complete", write(tmp_path, "empty.csv", "")), 1, "is empty")
    if importlib.util.find_spec("pandas") is None:
        fails(cli("complete", write(tmp_path, "r.parquet", "PAR1")), 1, "needs pandas and pyarrow")


def test_unwritable_output_fails_before_reading_or_fitting(ratings, tmp_path):
    """The output is checked first: a file whose last line is bad, and a fit that would run long,
    still fail at once on the output."""
    bad_tail = write(tmp_path, "r.csv", ratings.read_text() + "u1,item1,oops\n")
    target = tmp_path / "missing_dir" / "model.npz"
    started = time.monotonic()
    message = fails(cli("complete", bad_tail, "--output", target, "--max-iter", "100000", "--tol", "0"), 1)
    assert "--output" in message and "does not exist" in message and time.monotonic() - started < 30
    fails(cli("complete", ratings, "--output", tmp_path), 1, "is a directory")
    fails(cli("complete", ratings, "--plot", tmp_path / "nowhere" / "p.png"), 1)


# ---------------------------------------------------------------------- usage errors (exit 2)
def test_usage_errors(ratings):
    fails(cli("complete", ratings, "--rank", "0"), 2, "--rank", "got 0")
    fails(cli("complete", ratings, "--rank", "51"), 2, "--rank 51 is larger than the data allows", "50")
    fails(cli("complete", ratings, "--max-iter", "0"), 2, "--max-iter", "must be an integer >= 1")
    fails(cli("complete", ratings, "--method", "magic"), 2, "invalid choice: 'magic'")
    fails(cli("complete", ratings, "--center", "sideways"), 2, "--center")
    fails(cli("complete", ratings, "--reg", "-1"), 2, "--reg")
    fails(cli("complete", ratings, "--test-fraction", "1.5"), 2, "--test-fraction must be in [0, 1)")
    fails(cli("complete", ratings, "--frobnicate"), 2, "unrecognized arguments: --frobnicate")
    fails(cli("complete", ratings, "--rank", "auto", "--method", "als"), 2,
          "--rank auto needs --method auto or soft_impute")
    # Options that make the default method ALS say so, instead of suggesting --method auto.
    fails(cli("complete", ratings, "--rank", "auto", "--feedback", "implicit"), 2,
          "--rank auto is set by soft-impute's penalty; --feedback implicit runs implicit ALS")
    fails(cli("complete", ratings, "--rank", "auto", "--reg-scaling", "count"), 2,
          "--reg-scaling count runs ALS, which takes an integer --rank")
    fails(cli("complete", ratings, "--debias", "yes", "--method", "gd"), 2, "--debias yes")
    fails(cli("complete", ratings, "--debias", "maybe"), 2, "--debias")
    fails(cli("complete"), 2, "lowrank-hpc demo")
    fails(cli(), 2, "choose a command")


def test_plot(ratings, tmp_path):
    run = cli("complete", ratings, *FAST, "--plot", tmp_path / "loss.png")
    if importlib.util.find_spec("matplotlib") is None:
        fails(run, 1, "--plot needs matplotlib")
    else:
        assert run.returncode == 0, run.stderr
        assert tmp_path.joinpath("loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_trace_predicts_with_the_offsets(ratings):
    """--plot's test RMSE per iteration is the model then: offsets + U V^T (the completion fit gives
    every solver's U, V alike: tests/test_auto_method.py)."""
    from lowrank_hpc import MatrixCompletion
    from lowrank_hpc.cli import complete, readers
    from lowrank_hpc.recover.offsets import Offsets

    data = readers.read_ratings(str(ratings))
    train, test = complete.split(data.nnz, 0.2, 0)
    for method in ("als", "soft_impute"):
        trace = complete._Trace(data, test, record_test=True)
        estimator = MatrixCompletion(rank=2, method=method, center="both", random_state=0, callback=trace.callback)
        estimator.fit(data.rows[train], data.cols[train], data.vals[train], shape=data.shape)
        assert trace.iterations[0] == 1 and trace.resumed_at() is None
        assert len(trace.test_rmse) == len(trace.loss) == len(trace.iterations) > 1
        U, V = estimator.U_, estimator.V_
        offsets = Offsets(estimator.intercept_, estimator.row_bias_, estimator.col_bias_)
        info = {"U": U, "V": V, "offsets": offsets}
        expected = estimator.predict(data.rows[test], data.cols[test])
        np.testing.assert_allclose(trace._predicted(info), expected, rtol=1e-12, atol=1e-12)


def test_ctrl_c_stops_cleanly_and_the_rerun_resumes(tmp_path):
    """SIGINT mid-fit: exit 130, one line on stderr, the checkpoint kept; the rerun resumes from it
    (reg auto and centering included) and ends at the model of an uninterrupted run."""
    rng = np.random.default_rng(3)
    n = 300
    M = rng.standard_normal((n, 5)) @ rng.standard_normal((5, n)) + 0.5 * rng.standard_normal((n, n))
    rows, cols = np.nonzero(rng.random((n, n)) < 0.3)
    np.savez(tmp_path / "data.npz", rows=rows, cols=cols, vals=M[rows, cols])
    checkpoint = tmp_path / "state.npz"
    command = ["complete", tmp_path / "data.npz", "--method", "als", "--reg", "auto", "--center", "both",
               "--rank", "20", "--tol", "0", "--max-iter", "1000", "--json"]
    child = subprocess.Popen([sys.executable, "-m", "lowrank_hpc", *map(str, command), "--checkpoint",
                              str(checkpoint)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not checkpoint.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, child.communicate()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert err.strip().splitlines() == [f"lowrank-hpc: interrupted; the checkpoint {checkpoint} is kept: rerun the "
                                        "same command to resume"]
    assert checkpoint.exists()
    with np.load(checkpoint) as saved:
        stopped_at = int(saved["iteration"])
    assert 10 <= stopped_at < 1000

    resumed = cli(*command, "--checkpoint", checkpoint, "--output", tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert strict_json(resumed.stdout)["resumed_at_iteration"] == stopped_at
    whole = cli(*command, "--output", tmp_path / "whole.npz")
    assert whole.returncode == 0, whole.stderr
    assert strict_json(whole.stdout)["resumed_at_iteration"] is None
    a, b = load_model(str(tmp_path / "resumed.npz")), load_model(str(tmp_path / "whole.npz"))
    every = np.indices((n, n)).reshape(2, -1)
    np.testing.assert_allclose(a.predict_indices(*every), b.predict_indices(*every), rtol=0, atol=1e-12)
    assert a.reg == b.reg


# ---------------------------------------------------------------------- demo and info
def test_demo_writes_a_picture_and_a_table(tmp_path):
    run = cli("demo", "--json", cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)
    assert report["rmse_hidden"] < 0.5 * report["rmse_mean_predictor"]
    picture = tmp_path / "lowrank_hpc_demo.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    run = cli("demo", "--no-picture", "--method", "als", "--rank", "5", cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "RMSE hidden" in run.stdout and "picture:" not in run.stdout
    fails(cli("demo", "--picture", tmp_path / "no" / "p.png"), 1, "--picture")


def test_info_is_json():
    run = cli("info", "--compact")
    assert run.returncode == 0 and strict_json(run.stdout)["version"] == lowrank_hpc.__version__


def test_implicit_feedback_interaction_log(tmp_path):
    """An interaction log (one line per play, repeats included) of 3 user groups that each play
    their group's items: repeats add up, held-out plays rank near the top of their rows, and the
    recommendations stay in the user's group."""
    rng = np.random.default_rng(3)
    lines = ["user,item,plays"]
    for user in range(90):
        liked = [item for item in range(60) if item % 3 == user % 3 and rng.random() < 0.5]
        for item in liked:
            lines += [f"user{user},song{item},1"] * int(rng.integers(1, 4))
    log = write(tmp_path, "plays.csv", "\n".join(lines) + "\n")
    recommendations, model = tmp_path / "recommendations.csv", tmp_path / "model.npz"
    run = cli("complete", log, "--feedback", "implicit", "--alpha", "5", "--rank", "3", "--reg", "0.1",
              "--max-iter", "10", "--json", "--recommend", "2", "--recommendations-out", recommendations,
              "--output", model)
    assert run.returncode == 0, run.stderr
    report = strict_json(run.stdout)
    assert report["feedback"] == "implicit" and report["alpha"] == 5.0 and report["method"] == "als"
    # The implicit fit has no offsets: reported and saved as center "none", with zero biases.
    assert report["center"] == "none"
    saved = load_model(model)
    assert saved.center == "none" and saved.intercept == 0.0 and not saved.row_bias.any() and not saved.col_bias.any()
    # Every held-out pair is a play (preference 1), which a constant predicts exactly: no RMSE.
    assert report["test_rmse"] is None and report["mean_predictor_rmse"] is None
    assert report["test_interactions"] == report["test_entries"] == round(0.1 * report["entries"])
    assert report["duplicates_summed"] == len(lines) - 1 - report["entries"] > 0
    assert report["duplicates_averaged"] == 0
    assert report["test_mean_percentile_rank"] < 0.15  # random scores: about 0.5
    for line in recommendations.read_text().splitlines()[1:]:
        user, item = line.split(",")[:2]
        assert int(user[4:]) % 3 == int(item[4:]) % 3, line
    human = cli("complete", log, "--feedback", "implicit", "--rank", "3", "--max-iter", "3")
    assert human.returncode == 0, human.stderr
    assert "repeated pairs added up" in human.stdout and "held-out interactions rank at" in human.stdout
    assert "center none" in human.stdout and "No RMSE" in human.stdout and "RMSE: train" not in human.stdout


def test_implicit_feedback_usage_errors(ratings):
    fails(cli("complete", ratings, "--feedback", "implicit", "--method", "soft_impute"), 2, "--feedback implicit")
    fails(cli("complete", ratings, "--feedback", "implicit", "--alpha", "-1"), 2, "--alpha")


@pytest.mark.parametrize("numbers", [1 << 24, 140, 20, 1])
def test_mean_percentile_rank_against_a_loop(numbers, monkeypatch):
    """Hu-Koren-Volinsky's expected percentile ranking, blocked over rows and pairs, against the
    definition looped pair by pair (trained columns are not candidates, a tie counts half: rows
    0-4 have zero factors, as a row with no training entry gets, and V two equal rows)."""
    from lowrank_hpc.cli import report
    monkeypatch.setattr(report, "_RANK_NUMBERS", numbers)
    rng = np.random.default_rng(0)
    U, V = rng.standard_normal((30, 3)), rng.standard_normal((20, 3))
    U[:5] = 0
    V[7] = V[3]
    keys = rng.permutation(600)[:140]
    rows, cols = keys // 20, keys % 20
    scores = U @ V.T
    trained = set(zip(rows[:100].tolist(), cols[:100].tolist()))
    expected = 0.0
    for u, i in zip(rows[100:], cols[100:]):
        candidates = [j for j in range(20) if (u, j) not in trained and j != i]
        expected += sum((scores[u, j] > scores[u, i]) + 0.5 * (scores[u, j] == scores[u, i])
                        for j in candidates) / max(len(candidates), 1)
    got = report.mean_percentile_rank(U, V, rows[:100], cols[:100], rows[100:], cols[100:])
    assert got == pytest.approx(expected / 40, rel=1e-12)
    assert report.mean_percentile_rank(U, V, rows, cols, rows[:0], cols[:0]) is None
    # All scores equal (zero factors: a diverged fit's, or no training entry): 0.5, not a perfect 0.
    assert report.mean_percentile_rank(0 * U, V, rows[:100], cols[:100], rows[100:], cols[100:]) == 0.5
    assert report.mean_percentile_rank(np.nan * U, V, rows[:100], cols[:100], rows[100:], cols[100:]) == 0.5


def test_reg_with_a_method_that_takes_no_penalty_is_a_usage_error(tmp_path, capsys):
    """--reg given with a gradient method (which fits without a penalty) was dropped silently,
    the report saying reg 0; now it is a usage error (exit 2) that says why."""
    from lowrank_hpc.cli.main import main as cli_main

    source = tmp_path / "r.csv"
    source.write_text("".join(f"{i},{j},{(i * j) % 5 + 1}\n" for i in range(8) for j in range(6) if (i + j) % 3))
    assert cli_main(["complete", str(source), "--method", "gd", "--reg", "0.01", "--rank", "2"]) == 2
    assert "--reg is the penalty of --method auto, als and soft_impute; --method gd fits without one" in \
        capsys.readouterr().err
