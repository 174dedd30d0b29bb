"""The ``lowrank-hpc`` command line: argument parsing, and the one place user errors become one line.

    lowrank-hpc complete INPUT [options]   complete a file of observed (row, col, value) entries
    lowrank-hpc bmf INPUT [options]        Boolean factors of a 0/1 matrix given by its (row, col) ones
    lowrank-hpc nmf INPUT -k K [options]   non-negative factors W, H of a matrix given by its entries
    lowrank-hpc demo [options]             complete a photograph from 30% of its pixels
    lowrank-hpc info [--compact]           backends, CUDA device, threads and dtypes (JSON)

Exit status: 0 success; 1 a data or file error (a bad line, a missing or unwritable file);
2 a usage error (a missing argument, an option value out of range, a rank the data cannot
hold); 130 interrupted (Ctrl-C). Every error is one line on stderr,
``lowrank-hpc: error: ...``, never a traceback (set LOWRANK_HPC_DEBUG=1 to get one).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, NoReturn, Optional, Sequence

from .errors import DataError, UsageError, UserError

PROG = "lowrank-hpc"


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError so main prints them as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


# ---------------------------------------------------------------------- option types
def _rank(text: str) -> Any:
    if text == "auto":
        return "auto"
    value = _integer(text, "--rank", "an integer >= 1 or 'auto'")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 or 'auto', got {text}")
    return value


def _reg(text: str) -> Any:
    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number >= 0 or 'auto', got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 or 'auto', got {text}")
    return value


def _integer(text: str, name: str, wanted: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text, "", "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _max_iter(text: str) -> int:
    value = _integer(text, "--max-iter", "an integer >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text} (0 iterations would return the "
                                         "untrained starting point)")
    return value


def _seed(text: str) -> int:
    value = _integer(text, "--seed", "an integer >= 0")
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text}")
    return value


def _number(text: str, valid: Any, message: str) -> float:
    """float(text) when valid(value) holds, else argparse's error ``message`` (text not a number fails too)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not valid(value):
        raise argparse.ArgumentTypeError(f"{message}, got {text}")
    return value


def _fraction(text: str) -> float:
    # The whole message, so it reads as the old CLI's: "--test-fraction must be in [0, 1)".
    return _number(text, lambda value: 0 <= value < 1, "--test-fraction must be in [0, 1)")


def _observed(text: str) -> float:
    return _number(text, lambda value: 0 < value < 1, "must be a fraction in (0, 1)")


def _nonnegative(text: str) -> float:
    return _number(text, lambda value: math.isfinite(value) and value >= 0, "must be a finite number >= 0")


def _estimator_default(name: str) -> str:
    """The default of MatrixCompletion's parameter ``name``, for the help text."""
    import inspect

    from ..estimators import MatrixCompletion

    return str(inspect.signature(MatrixCompletion.__init__).parameters[name].default)


def _methods() -> tuple[str, ...]:
    from ..estimators import COMPLETION_METHODS

    return tuple(COMPLETION_METHODS)


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{complete,bmf,nmf,demo,info}")

    complete = commands.add_parser(
        "complete", help="complete a file of observed (row, col, value) entries",
        description="Complete a matrix from a file of observed entries: hold out a seeded test fraction, fit "
                    "MatrixCompletion, report RMSE, and optionally save the model, predict pairs, recommend "
                    "columns and plot the loss. Ids are labels (any integers or text), mapped to indices and "
                    "saved with the model.",
        epilog="Formats: CSV/TSV/';'/'::'/whitespace text (header optional; extra columns ignored), .mtx "
               "(Matrix Market coordinate), .npz (rows, cols, vals[, shape]), .parquet (needs pandas, pyarrow), "
               "text .gz. Repeated (row, col) pairs are averaged (summed with --feedback implicit). Exit status: "
               "1 data error, 2 usage error, 130 interrupted.")
    complete.add_argument("input", nargs="?", metavar="INPUT", help="file of observed entries")
    complete.add_argument("--input", dest="input_option", metavar="INPUT", help=argparse.SUPPRESS)
    complete.add_argument("--format", choices=("auto", "text", "mtx", "npz", "parquet"), default="auto",
                          help="input format (default: by the file name, text otherwise)")
    complete.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                          help="text input: is the first line a header (default: auto-detect)")
    complete.add_argument("--rank", type=_rank, default=None,
                          help="rank of the model, an integer, or 'auto' with --method auto or soft_impute (default: "
                               f"{_estimator_default('rank')})")
    complete.add_argument("--method", choices=_methods(), default=None,
                          help=f"solver (default: {_estimator_default('method')})")
    complete.add_argument("--reg", type=_reg, default=None,
                          help="penalty of als and soft_impute (the gradient methods take none), a number >= 0, "
                               "or 'auto': chosen on a seeded tenth of the training "
                               f"entries (default: {_estimator_default('reg')})")
    complete.add_argument("--center", choices=("none", "global", "both"), default=None,
                          help="model a global mean (global) and row/column biases (both) (default: "
                               f"{_estimator_default('center')})")
    complete.add_argument("--reg-scaling", choices=("none", "count"), default=None, help=argparse.SUPPRESS)
    complete.add_argument("--debias", choices=("auto", "yes", "no"), default=None,
                          help="refit the singular values the penalty shrank (soft-impute+), the leading directions "
                               "kept chosen on the held-out tenth: auto offers it to the penalty path from 1,000 "
                               "held-out entries and keeps it where it predicts them better (default: auto)")
    complete.add_argument("--feedback", choices=("explicit", "implicit"), default="explicit",
                          help="explicit: the values are the matrix's entries (ratings); implicit: they are "
                               "interaction counts or strengths (plays, clicks), repeated pairs add up, and the "
                               "model ranks columns (implicit ALS, as the implicit package and Spark's "
                               "implicitPrefs; implies --method als) (default: explicit)")
    complete.add_argument("--alpha", type=_nonnegative, default=1.0,
                          help="--feedback implicit: confidence 1 + alpha * value (default: 1.0)")
    complete.add_argument("--test-fraction", type=_fraction, default=0.1,
                          help="share of the entries held out to measure RMSE, in [0, 1) (default: 0.1)")
    complete.add_argument("--seed", type=_seed, default=0, help="seed of the split and the solver (default: 0)")
    complete.add_argument("--max-iter", type=_max_iter, default=None,
                          help=f"iteration limit, >= 1 (default: {_estimator_default('max_iter')})")
    complete.add_argument("--tol", type=_nonnegative, default=None, help=f"tolerance (default: {_estimator_default('tol')})")
    complete.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto", help="where to fit")
    complete.add_argument("--output", "-o", metavar="MODEL.npz",
                          help="save the fitted model with its id maps (load with lowrank_hpc.cli.load_model)")
    complete.add_argument("--predict", metavar="PAIRS", help="text file of row,col id pairs to predict")
    complete.add_argument("--predictions-out", metavar="CSV",
                          help="where --predict writes row,col,prediction (default: stdout)")
    complete.add_argument("--recommend", type=_positive_int, metavar="K",
                          help="the K best unobserved columns of every row")
    complete.add_argument("--recommendations-out", metavar="CSV",
                          help="where --recommend writes row,col,score,rank (default: stdout)")
    complete.add_argument("--plot", metavar="PNG", help="plot loss and test RMSE against iteration and time "
                                                        "(needs matplotlib)")
    complete.add_argument("--checkpoint", metavar="FILE.npz",
                          help="save the solve's state there as it runs; rerunning the same command on the same "
                               "data resumes it (Ctrl-C keeps the file)")
    complete.add_argument("--scheduler", metavar="ADDRESS",
                          help="run the ALS solves on a Dask cluster: its scheduler's address (tcp://host:8786) or "
                               "scheduler file (needs lowrank_hpc[dask]; implies --method als; --backend is then the "
                               "workers')")
    complete.add_argument("--json", action="store_true",
                          help="print the report as JSON (on stderr when --predict or --recommend writes its CSV "
                               "to stdout)")

    from . import bmf

    bmf.add_parser(commands, _positive_int, _seed, _max_iter, _nonnegative)
    from . import nmf

    nmf.add_parser(commands, _positive_int, _seed, _max_iter, _nonnegative)

    demo = commands.add_parser(
        "demo", help="complete a photograph from 30%% of its pixels (the built-in example)",
        description="Hide a seeded 70% of the pixels of a grayscale photograph, complete it with the "
                    "default MatrixCompletion, report RMSE on the hidden pixels against a mean predictor, and "
                    "write observed | completed | truth side by side as a PNG.")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the hidden pixels and the solver (default: 0)")
    demo.add_argument("--observed", type=_observed, default=0.3, help="share of pixels shown (default: 0.3)")
    demo.add_argument("--rank", type=_rank, default=None,
                      help="rank, an integer, or 'auto' with --method auto or soft_impute (default: "
                           f"{_estimator_default('rank')})")
    demo.add_argument("--method", choices=_methods(), default=None, help=f"solver (default: {_estimator_default('method')})")
    demo.add_argument("--picture", default="lowrank_hpc_demo.png", metavar="PNG",
                      help="where to write the picture (default: lowrank_hpc_demo.png)")
    demo.add_argument("--no-picture", action="store_true", help="write no picture")
    demo.add_argument("--json", action="store_true", help="print the report as JSON")

    info = commands.add_parser("info", help="backends, CUDA device, threads and dtypes, as JSON")
    info.add_argument("--compact", action="store_true", help="one line of JSON")
    return parser


# ---------------------------------------------------------------------- entry point
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (the console script passes it to sys.exit)."""
    args = None
    try:
        args = build_parser().parse_args(argv)
        return _dispatch(args)
    except UserError as error:
        return _fail(error, error.exit_code)
    except KeyboardInterrupt:
        checkpoint = getattr(args, "checkpoint", None)
        kept = (f"; the checkpoint {checkpoint} is kept: rerun the same command to resume"
                if checkpoint and os.path.exists(checkpoint) else "")
        print(f"{PROG}: interrupted{kept}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lowrank-hpc complete ... | head`: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except MemoryError:
        return _fail(DataError("out of memory; try a smaller --rank or a smaller input"), 1)


def _fail(error: BaseException, code: int) -> int:
    if os.environ.get("LOWRANK_HPC_DEBUG", "") not in ("", "0"):
        raise error
    message = " ".join(str(error).split())  # one line, whatever the message held
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command is None:
        raise UsageError("choose a command: complete (your data), bmf (Boolean factors of a 0/1 matrix), nmf (non-negative factors), demo (the "
                         "built-in example) or info; "
                         f"see {PROG} --help")
    if args.command == "info":
        from .. import info

        print(json.dumps(info(), indent=None if args.compact else 2))
        return 0
    if args.command == "demo":
        from . import demo

        return demo.run(args)
    if args.command == "bmf":
        from . import bmf

        return bmf.run(args)
    if args.command == "nmf":
        from . import nmf

        return nmf.run(args)
    from . import complete

    return complete.run(args)
