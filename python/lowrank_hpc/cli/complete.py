"""``lowrank-hpc complete INPUT``: read, split, fit, report, save, predict, recommend, plot.

Everything a user can get wrong is checked before the fit where it can be: output paths are
created (and removed) first, so an unwritable one fails at once; matplotlib is looked for; the
--predict file is parsed. The model is fitted on the training split (``--test-fraction 0``
fits on every entry). Choices made here:

- repeated (row, col) pairs are averaged (readers.py; summed with --feedback implicit), so no entry
  is both trained on and held out;
- ``--max-iter 0`` is a usage error (it would return the untrained start);
- ``--rank`` above min(distinct rows, distinct columns) is a usage error naming the bound;
- ``--predict`` pairs with ids the data did not have get the bias-only prediction (the mean,
  plus the bias of the known side), with one warning line on stderr naming them;
- ``--recommend K`` ranks every row's unobserved columns (observed in the whole input, held-out
  entries included) by the model's prediction, biases included;
- when --predict or --recommend writes CSV to stdout, the report goes to stderr.
- ``--scheduler ADDRESS`` (a Dask scheduler's address or scheduler file) runs every ALS solve of
  the fit on that cluster (cli/cluster.py: DistributedALS, the same factors as recover.als);
- the estimator does the rest: ``--checkpoint`` is its ``checkpoint`` (the final solve's first
  round saves its state; a rerun walks the seeded penalty path again and resumes the solve, and
  the report's ``resumed_at_iteration`` says where), the progress bar its ``verbose`` (when
  stderr is a terminal), and --plot's per-iteration trace its ``callback``.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from .._arrays import to_numpy
from . import cluster, readers
from .errors import DataError, UsageError
from .model_file import CompletionModel
from .report import json_safe, mean_percentile_rank, rmse


def run(args: argparse.Namespace) -> int:
    path = args.input or args.input_option
    if args.input and args.input_option:
        raise UsageError("give INPUT once (either as the argument or with --input)")
    if not path:
        raise UsageError("complete needs an INPUT file of observed row,col,value entries; to try the built-in "
                         "example instead, run: lowrank-hpc demo")
    to_stdout = [name for name, given, out in (("--predict", args.predict, args.predictions_out),
                                               ("--recommend", args.recommend, args.recommendations_out))
                 if given and not out]
    if len(to_stdout) == 2:
        raise UsageError("--predict and --recommend both write CSV to stdout; give --predictions-out or "
                         "--recommendations-out")
    if args.predictions_out and not args.predict:
        raise UsageError("--predictions-out needs --predict PAIRS")
    if args.recommendations_out and not args.recommend:
        raise UsageError("--recommendations-out needs --recommend K")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise DataError("--plot needs matplotlib, which is not installed: pip install 'lowrank_hpc[plot]' (or drop "
                        "--plot)")
    cluster.check_options(args)
    estimator = _estimator(args)
    for option, target in (("--output", args.output), ("--predictions-out", args.predictions_out),
                           ("--recommendations-out", args.recommendations_out), ("--plot", args.plot)):
        if target:
            check_writable(target, option)
    if args.checkpoint:
        from ..recover import CheckpointError
        from ..recover._driver import checkpoint_path

        try:
            checkpoint_path("--checkpoint", args.checkpoint)
        except (CheckpointError, TypeError, ValueError) as error:
            raise DataError(str(error)) from None
    if args.predict:
        readers.check_readable(args.predict)
    with cluster.connect(args) as on_cluster:
        return _run(args, path, estimator, to_stdout, on_cluster)


def _run(args: argparse.Namespace, path: str, estimator: Any, to_stdout: list[str],
         on_cluster: Optional[dict[str, Any]]) -> int:
    started = time.perf_counter()
    data = readers.read_ratings(path, header=args.header, format=None if args.format == "auto" else args.format)
    read_seconds = time.perf_counter() - started
    pairs = _read_pairs(args.predict, data) if args.predict else None
    n1, n2 = data.shape
    check_rank_fits(estimator, data.shape, f"{n1} distinct row ids x {n2} distinct column ids")
    implicit = estimator.feedback == "implicit"
    vals = data.summed_vals() if implicit else data.vals  # an interaction log's repeats add up
    if implicit and data.nnz and float(vals.min()) < 0:  # every entry, before the split holds some out
        first = int(np.argmax(vals < 0))
        raise DataError(f"{path}: implicit feedback needs counts >= 0 (0: no interaction); entry (row "
                        f"{data.row_ids[data.rows[first]]}, col {data.col_ids[data.cols[first]]}) is {vals[first]:g}")
    train, test = split(data.nnz, args.test_fraction, args.seed)
    if not train.size:
        raise DataError(f"too few entries to fit: {path} holds {data.nnz} entr{'y' if data.nnz == 1 else 'ies'} and "
                        f"--test-fraction {args.test_fraction} holds out {test.size}; lower --test-fraction")

    # On a cluster the factors stay on the workers during the solve: --plot shows the loss only.
    trace = _Trace(data, test, record_test=bool(args.plot) and on_cluster is None and not implicit)
    trace.stored_loss = _checkpoint_loss(args.checkpoint)
    estimator.set_params(verbose=_progress_bar(), checkpoint=args.checkpoint, callback=trace.callback)
    fit_started = time.perf_counter()
    fit(estimator, data.rows[train], data.cols[train], vals[train], data.shape)
    fit_seconds = time.perf_counter() - fit_started
    result = estimator.result_
    if implicit:  # held-out pairs are interactions (preference 1), which a constant predicts: no RMSE
        test_rmse = baseline = None
    else:
        test_rmse = rmse(_predict(estimator, data.rows[test], data.cols[test]), vals[test])
        baseline = rmse(np.full(test.size, float(np.mean(vals[train]))), vals[test])
    center = str(estimator.center_)  # what the fit used: implicit feedback fits no offsets
    model = CompletionModel.from_estimator(
        estimator, data.row_ids, data.col_ids, data.rows, data.cols, center=center,
        meta={"source": os.path.abspath(path), "format": data.format, "entries": data.nnz,
              "train_entries": int(train.size), "seed": args.seed, "test_fraction": args.test_fraction})

    report: dict[str, Any] = {
        "input": path, "format": data.format, "header": data.header, "entries": data.nnz,
        "feedback": estimator.feedback, "duplicates_averaged": 0 if implicit else data.duplicates,
        "duplicates_summed": data.duplicates if implicit else 0, "shape": [n1, n2], "rows": n1, "cols": n2,
        "train_entries": int(train.size), "test_entries": int(test.size), "method": estimator.method_,
        "rank": model.rank, "reg": model.reg, "reg_chosen_on_path": bool(estimator.path_),
        "refit_rank": result.info.get("refit_rank"),
        "center": center, "backend": result.backend, "iterations": int(estimator.n_iter_),
        "converged": bool(estimator.converged_), "stop_reason": result.stop_reason,
        "seconds": round(time.perf_counter() - started, 3), "read_seconds": round(read_seconds, 3),
        "fit_seconds": round(fit_seconds, 3), "train_rmse": float(estimator.train_rmse_),
        "test_rmse": test_rmse, "mean_predictor_rmse": baseline, "model": None, "checkpoint": args.checkpoint,
        "resumed_at_iteration": trace.resumed_at()}
    if implicit:
        from .model_file import _host

        positive = test[vals[test] > 0]  # held-out interactions (a listed 0 is none)
        report.update(alpha=estimator.alpha_, test_interactions=int(positive.size),
                      test_mean_percentile_rank=mean_percentile_rank(
                          _host(estimator.U_), _host(estimator.V_), data.rows[train], data.cols[train],
                          data.rows[positive], data.cols[positive]))
    if on_cluster is not None:
        report.update(on_cluster)
    if args.output:
        model.save(args.output)
        report["model"] = args.output
    if pairs is not None:
        report["predictions"] = write_predictions(model, pairs, args.predictions_out)
        report["predictions_unknown_ids"] = pairs["unknown"]
    if args.recommend:
        report["recommendations"] = write_recommendations(model, args.recommend, args.recommendations_out)
    if args.plot:
        trace.plot(args.plot, estimator)
        report["plot"] = args.plot
    stream = sys.stderr if to_stdout else sys.stdout
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False), file=stream)
    else:
        print(_human(report), file=stream)
    return 0


# ---------------------------------------------------------------------- steps
_DATA_SUFFIXES = (".gz", ".csv", ".tsv", ".txt", ".dat", ".mtx", ".npz", ".parquet")


def default_factors_output(path: str, kind: str) -> str:
    """INPUT's name without its data extensions plus ``.{kind}.npz``, in the current directory
    (the factor files of the ``bmf`` and ``nmf`` subcommands)."""
    name = os.path.basename(path)
    for suffix in _DATA_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
    return f"{name or 'factors'}.{kind}.npz"


def check_writable(path: str, option: str) -> None:
    """DataError unless ``path`` can be written, found by creating it (and removing it again if
    it did not exist) before any work, so a long fit never ends in a failed save."""
    if os.path.isdir(path):
        raise DataError(f"{option} {path} is a directory; give a file path")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise DataError(f"{option} {path}: the directory {directory} does not exist")
    existed = os.path.exists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as error:
        raise DataError(f"{option} {path} cannot be written ({error.strerror or error})") from None
    if not existed:
        os.unlink(path)


def split(nnz: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) sorted entry indices: round(test_fraction * nnz) entries drawn with the seed."""
    n_test = int(round(test_fraction * nnz))
    order = np.random.default_rng(seed).permutation(nnz)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _estimator(args: argparse.Namespace) -> Any:
    """MatrixCompletion with the options given, the estimator's defaults for the others."""
    from ..estimators import MatrixCompletion
    from ..recover.completion_fit import PENALIZED_METHODS

    # With --scheduler, --backend is the workers' (DistributedALS's); the client's part runs on its CPU.
    params: dict[str, Any] = {"random_state": args.seed,
                              "backend": "cpu" if getattr(args, "scheduler", None) else args.backend}
    for name in ("rank", "method", "reg", "center", "max_iter", "tol", "reg_scaling"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    penalized = args.method in (None, "auto") + PENALIZED_METHODS  # the default is auto: ALS or soft-impute
    if getattr(args, "debias", None) is not None:
        params["debias"] = {"auto": "auto", "yes": True, "no": False}[args.debias]
        if args.debias == "yes" and (not penalized or args.feedback == "implicit"):
            raise UsageError("--debias yes refits what a penalty shrank: it takes --method auto, als or soft_impute "
                             "with explicit feedback")
    if args.reg is not None and not penalized:
        raise UsageError(f"--reg is the penalty of --method auto, als and soft_impute; --method {args.method} fits "
                         "without one: drop --reg")
    if args.feedback == "implicit":
        if args.method not in (None, "auto", "als") or getattr(args, "scheduler", None) or args.center is not None:
            raise UsageError("--feedback implicit fits implicit ALS on this machine, with no offsets: drop --method, "
                             "--center and --scheduler")
        params.update(feedback="implicit", alpha=args.alpha, method="als")
    estimator = MatrixCompletion(**params)
    check_rank(estimator, "--scheduler runs ALS on the cluster" if getattr(args, "scheduler", None) else
               "--feedback implicit runs implicit ALS" if args.feedback == "implicit" else "")
    return estimator


def check_rank_fits(estimator: Any, shape: tuple[int, int], sizes: str) -> None:
    """UsageError when an integer --rank exceeds min(shape), which no rank-r factorization of the
    matrix can reach; ``sizes`` says what the rows and columns are, for the message."""
    rank, bound = estimator.rank, min(shape)
    if isinstance(rank, (int, np.integer)) and rank > bound:
        raise UsageError(f"--rank {rank} is larger than the data allows: min(rows, columns) = {bound} ({sizes}); "
                         f"pass --rank {bound} or less")


def check_rank(estimator: Any, runs_als: str = "") -> None:
    """UsageError for --rank auto with a method whose rank is not set by a penalty; ``runs_als``
    names the option that made the method ALS (--scheduler, --feedback implicit), if one did."""
    if estimator.rank != "auto":
        return
    if estimator.method == "auto" and estimator.reg_scaling != "none":
        runs_als = f"--reg-scaling {estimator.reg_scaling} runs ALS"
    elif estimator.method in ("auto", "soft_impute"):
        return
    if runs_als:
        raise UsageError(f"--rank auto is set by soft-impute's penalty; {runs_als}, which takes an integer --rank")
    raise UsageError(f"--rank auto needs --method auto or soft_impute (its penalty sets the rank); method "
                     f"{estimator.method} takes an integer --rank")


def _progress_bar() -> bool:
    """Show the solver's tqdm bar when stderr is a terminal (and tqdm is there)."""
    return sys.stderr.isatty() and importlib.util.find_spec("tqdm") is not None


def fit(estimator: Any, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int]) -> None:
    """estimator.fit(rows, cols, vals, shape=shape); library errors (bad settings, an unusable
    checkpoint, an unavailable backend) become DataError."""
    from .._backend import BackendUnavailableError

    try:
        estimator.fit(rows, cols, vals, shape=shape)
    except (ValueError, TypeError, IndexError, BackendUnavailableError) as error:
        raise DataError(f"the fit failed: {error}") from None


def _checkpoint_loss(path: Optional[str]) -> Optional[np.ndarray]:
    """The loss history a checkpoint file holds (one entry per iteration run), or None (no file,
    or one the fit will reject)."""
    if not path or not os.path.isfile(path):
        return None
    with contextlib.suppress(Exception):
        with np.load(path, allow_pickle=False) as saved:
            return np.asarray(saved["loss"], dtype=np.float64).reshape(-1)
    return None


def _predict(estimator: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    if rows.size == 0:
        return np.zeros(0)
    predicted = estimator.predict(rows, cols)
    return np.asarray(to_numpy(predicted), dtype=np.float64)


# ---------------------------------------------------------------------- --predict
def _read_pairs(path: str, data: readers.Ratings) -> dict[str, Any]:
    """The (row, col) id tokens of a pairs file, checked like the input's ids, and their indices."""
    from .model_file import _lookup

    def is_header(fields, rest) -> bool:  # a first line of words that are not ids of the data
        return (not any(readers._is_number(token) for token in fields[:2])
                and _lookup(data.row_ids, [fields[0]])[0] < 0 and _lookup(data.col_ids, [fields[1]])[0] < 0)

    columns, numbers, _ = readers.read_text_fields(path, 2, is_header=is_header)
    where = readers.line_locator(path, numbers)
    readers.parse_ids(columns[0], where, "row")  # non-integral numbers as ids are errors here too
    readers.parse_ids(columns[1], where, "column")
    rows, cols = _lookup(data.row_ids, columns[0]), _lookup(data.col_ids, columns[1])
    unknown = sorted({f"row {t}" for t, r in zip(columns[0], rows) if r < 0}
                     | {f"column {t}" for t, c in zip(columns[1], cols) if c < 0})
    return {"row_tokens": columns[0], "col_tokens": columns[1], "rows": rows, "cols": cols, "unknown": len(unknown),
            "unknown_names": unknown}


def write_predictions(model: CompletionModel, pairs: dict[str, Any], out: Optional[str]) -> int:
    """Write row,col,prediction (the ids as the pairs file wrote them); returns the count."""
    if pairs["unknown"]:
        shown = ", ".join(pairs["unknown_names"][:5]) + (", ..." if pairs["unknown"] > 5 else "")
        print(f"lowrank-hpc: warning: {pairs['unknown']} id(s) of the --predict pairs are not in the data "
              f"({shown}); their pairs get the bias-only prediction", file=sys.stderr)
    predictions = model.predict_indices(pairs["rows"], pairs["cols"])
    with _output(out) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(("row", "col", "prediction"))
        writer.writerows(zip(pairs["row_tokens"], pairs["col_tokens"], (repr(float(p)) for p in predictions)))
    return int(predictions.shape[0])


def write_recommendations(model: CompletionModel, k: int, out: Optional[str]) -> int:
    """Write row,col,score,rank: the k best unobserved columns of every row; returns the lines."""
    results = model.recommend(model.row_ids, k, exclude_seen=True)
    lines = 0
    with _output(out) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(("row", "col", "score", "rank"))
        for row_id, (col_ids, scores) in zip(model.row_ids.tolist(), results):
            writer.writerows((row_id, c, repr(float(s)), place)
                             for place, (c, s) in enumerate(zip(col_ids.tolist(), scores), start=1))
            lines += len(scores)
    return lines


@contextlib.contextmanager
def _output(path: Optional[str]):
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    with open(path, "w", newline="", encoding="utf-8") as stream:
        yield stream


# ---------------------------------------------------------------------- --plot
class _Trace:
    """The estimator's callback: per iteration of the final solve's first round (the long solve,
    the one a checkpoint resumes), the iteration number, seconds, loss and, with ``record_test``,
    the test RMSE of the model then: offsets + (U V^T) at the held-out entries."""

    def __init__(self, data: readers.Ratings, test: np.ndarray, record_test: bool = False):
        self.rows, self.cols, self.vals = data.rows[test], data.cols[test], data.vals[test]
        self.record_test = record_test and test.size > 0
        self.start: Optional[float] = None
        self.iterations: list[int] = []
        self.seconds: list[float] = []
        self.loss: list[float] = []
        self.test_rmse: list[float] = []
        self.stored_loss: Optional[np.ndarray] = None  # the checkpoint's history, read before the fit

    def callback(self, iteration: int, info: dict) -> None:
        now = time.perf_counter()
        if self.start is None:
            self.start = now
        self.iterations.append(int(iteration))
        self.seconds.append(now - self.start)
        self.loss.append(float(info["loss"]))
        if self.record_test:
            self.test_rmse.append(rmse(self._predicted(info), self.vals))

    def _predicted(self, info: dict) -> np.ndarray:
        from .model_file import _host

        U, V = _host(info["U"]), _host(info["V"])  # (n, rank) from every solver: U V^T
        offsets = info["offsets"]
        at = offsets.intercept + _host(offsets.row)[self.rows] + _host(offsets.col)[self.cols]
        return at + np.einsum("ij,ij->i", U[self.rows], V[self.cols])

    def resumed_at(self) -> Optional[int]:
        """The iteration the final solve resumed from a checkpoint at, None if it started afresh:
        one before the first iteration run, or (no iteration run: the checkpoint held a finished
        solve) the checkpoint's."""
        if self.iterations:
            return self.iterations[0] - 1 or None
        return None if self.stored_loss is None else self.stored_loss.shape[0] or None

    def plot(self, path: str, estimator: Any) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self.iterations:
            iterations, seconds, loss = np.asarray(self.iterations), np.asarray(self.seconds), np.asarray(self.loss)
        else:  # a resumed solve that had already ended: its history (the checkpoint's), without times
            loss = self.stored_loss if self.stored_loss is not None else np.zeros(0)
            iterations, seconds = np.arange(1, loss.shape[0] + 1), None
        test = np.asarray(self.test_rmse) if len(self.test_rmse) == len(loss) and self.test_rmse else None
        panels = [(iterations, "iteration")] + ([(seconds, "seconds")] if seconds is not None else [])
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        for axis, (x, label) in zip(axes[0], panels):
            axis.plot(x, loss, color="C0", label="training loss")
            axis.set_xlabel(label)
            axis.set_ylabel("training loss", color="C0")
            if loss.size and np.all(loss > 0):
                axis.set_yscale("log")
            if test is not None:
                twin = axis.twinx()
                twin.plot(x, test, color="C1", label="test RMSE")
                twin.set_ylabel("test RMSE (offsets + U V^T)", color="C1")
        figure.suptitle(f"{estimator.method_}, rank {estimator.U_.shape[1]}, center {estimator.center_}: "
                        f"final solve, {loss.shape[0]} iterations")
        figure.tight_layout()
        figure.savefig(path, dpi=100)
        plt.close(figure)


# ---------------------------------------------------------------------- report
def _human(report: dict[str, Any]) -> str:
    def number(value: Any) -> str:
        return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.4g}"

    merged, summed = report["duplicates_averaged"], report["duplicates_summed"]
    lines = [f"{report['input']}: {report['entries']:,} entries, {report['rows']:,} rows x {report['cols']:,} columns"
             + (f" ({merged:,} repeated pairs averaged)" if merged else "")
             + (f" ({summed:,} repeated pairs added up)" if summed else ""),
             f"{report['method']}, rank {report['rank']}, reg {number(report['reg'])}, center {report['center']}: "
             f"{report['iterations']} iterations in {report['fit_seconds']:.3g} s on {report['backend']}"
             + (f" ({report['workers']} Dask workers at {report['scheduler']})" if report.get("scheduler") else "")
             + " "
             f"({report['stop_reason']})",
             f"RMSE: train {number(report['train_rmse'])}, test {number(report['test_rmse'])} "
             f"on {report['test_entries']:,} held-out entries (mean predictor {number(report['mean_predictor_rmse'])})"]
    if report["feedback"] == "implicit":
        lines[2] = (f"implicit feedback, alpha {number(report['alpha'])}: held-out interactions rank at "
                    f"{number(report['test_mean_percentile_rank'])} of their rows' unobserved columns on average "
                    f"(0: first, 0.5: random; {report['test_interactions']:,} held-out interactions). No RMSE: a "
                    "held-out interaction's preference is 1, which a constant predicts exactly")
    if report.get("model"):
        lines.append(f"model saved to {report['model']}")
    if report.get("plot"):
        lines.append(f"plot written to {report['plot']}")
    if report.get("resumed_at_iteration"):
        lines.append(f"resumed the solve at iteration {report['resumed_at_iteration']} from {report['checkpoint']}")
    return "\n".join(lines)
