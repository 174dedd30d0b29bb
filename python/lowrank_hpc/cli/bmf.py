"""``lowrank-hpc bmf INPUT``: read the ones of a 0/1 matrix, factor it by BooleanMF (Elbmf),
write the Boolean factors, and print recall, precision and F1 of their Boolean product.

Choices made here: ids are labels (mapped to indices, saved with the factors); a text file's
third column is the 0/1 value (listed zeros are not ones, but their ids are rows and columns),
without one every listed pair is a one; repeated pairs count once; the matrix is fitted sparse
(never densified); the output path is checked before the fit, so an unwritable one fails at once.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np

from .._arrays import to_numpy
from . import readers
from .complete import _progress_bar, check_writable, default_factors_output
from .errors import DataError, UsageError
from .report import json_safe


def run(args: argparse.Namespace) -> int:
    import scipy.sparse

    from .._backend import BackendUnavailableError
    from ..estimators import BooleanMF

    if not (math.isfinite(args.reg_growth) and args.reg_growth >= 1):
        raise UsageError(f"--reg-growth must be a finite number >= 1, got {args.reg_growth:g}")
    if not 0 <= args.inertia < 1:
        raise UsageError(f"--inertia must be in [0, 1), got {args.inertia:g}")
    output = args.output or default_factors_output(args.input, "bmf")
    check_writable(output, "--output")
    estimator = BooleanMF(n_components=args.components, l1=args.l1, l2=args.l2, reg_growth=args.reg_growth,
                          inertia=args.inertia, max_iter=args.max_iter, tol=args.tol, backend=args.backend,
                          random_state=args.seed, verbose=_progress_bar())
    started = time.perf_counter()
    data = readers.read_pairs(args.input, header=args.header, format=None if args.format == "auto" else args.format)
    not_binary = (data.vals != 0) & (data.vals != 1)
    if not_binary.any():  # named by the file's ids here: the estimator only knows matrix indices
        k = int(np.argmax(not_binary))
        raise DataError(f"{args.input}: the entry at (row {data.row_ids[data.rows[k]]}, col "
                        f"{data.col_ids[data.cols[k]]}) is {data.vals[k]:g}; a 0/1 matrix holds 0 or 1")
    matrix = scipy.sparse.csr_matrix((data.vals, (data.rows, data.cols)), shape=data.shape)
    matrix.eliminate_zeros()  # a text value column or an .npz may list zeros: they are not ones
    fit_started = time.perf_counter()
    try:
        estimator.fit(matrix)
        scores = estimator.reconstruction_scores()
    except (ValueError, TypeError, BackendUnavailableError) as error:
        raise DataError(f"the fit failed: {error}") from None
    fit_seconds = time.perf_counter() - fit_started
    W, H = (to_numpy(a) for a in (estimator.W_, estimator.H_))
    np.savez_compressed(output, W=W, H=H, row_ids=data.row_ids, col_ids=data.col_ids,
                        loss=estimator.loss_curve_)
    result = estimator.result_
    report: dict[str, Any] = {
        "input": args.input, "format": data.format, "shape": list(data.shape), "ones": int(matrix.nnz),
        "components": int(args.components), "components_used": int(np.sum(W.any(axis=0) & H.any(axis=1))),
        "recall": scores["recall"], "precision": scores["precision"], "f1": scores["f1"],
        "boolean_error": scores["boolean_error"], "iterations": int(estimator.n_iter_),
        "converged": bool(estimator.converged_), "stop_reason": result.stop_reason, "backend": result.backend,
        "seconds": round(time.perf_counter() - started, 3), "fit_seconds": round(fit_seconds, 3),
        "factors": output}
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        print(_human(report))
    return 0


def _human(report: dict[str, Any]) -> str:
    n, m = report["shape"]
    return "\n".join([
        f"input      {report['input']} ({report['format']}): {n} x {m}, {report['ones']} ones",
        f"factors    k = {report['components']} ({report['components_used']} used), written to {report['factors']}",
        f"fit        {report['iterations']} iterations ({report['stop_reason']}) in {report['fit_seconds']} s "
        f"on {report['backend']}",
        f"recall     {report['recall']:.4f}",
        f"precision  {report['precision']:.4f}",
        f"F1         {report['f1']:.4f}",
        f"errors     {report['boolean_error']} entries differ from the input",
    ])


def add_parser(commands: Any, positive_int: Any, seed: Any, max_iter: Any, nonnegative: Any) -> None:
    """The ``bmf`` subcommand's options (defaults are BooleanMF's)."""
    from ..recover import elbmf

    bmf = commands.add_parser(
        "bmf", help="Boolean matrix factorization of a 0/1 matrix given by its (row, col) ones",
        description="Factor a 0/1 matrix, given as the (row, col) pairs of its ones or as (row, col, 0/1) lines, "
                    "into Boolean factors W, H with BooleanMF (Elbmf); write W, H and the id maps to an .npz and "
                    "print recall, precision and F1 of the Boolean product W o H against the input.",
        epilog="Formats: CSV/TSV/whitespace text (header optional) of row,col pairs, each a one, or of "
               "row,col,value lines whose value is 0 or 1 (a 0 is not a one; columns after the third ignored), .mtx "
               "(Matrix Market coordinate, pattern/integer/real with 0/1 values), .npz (rows, cols[, vals][, shape]). "
               "Exit status: 1 data error, 2 usage error, 130 interrupted.")
    bmf.add_argument("input", metavar="INPUT", help="file of the (row, col) pairs of the ones, or of (row, col, 0/1)")
    bmf.add_argument("--format", choices=("auto", "text", "mtx", "npz"), default="auto",
                     help="input format (default: by the file name, text otherwise)")
    bmf.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                     help="text input: is the first line a header (default: auto-detect)")
    bmf.add_argument("-k", "--components", type=positive_int, default=10,
                     help="number of Boolean factors (default: 10)")
    bmf.add_argument("--l1", type=nonnegative, default=elbmf.DEFAULT_L1,
                     help=f"l1 weight kappa (default: {elbmf.DEFAULT_L1})")
    bmf.add_argument("--l2", type=nonnegative, default=elbmf.DEFAULT_L2,
                     help=f"initial l2 weight lambda (default: {elbmf.DEFAULT_L2})")
    bmf.add_argument("--reg-growth", type=float, default=elbmf.DEFAULT_REG_GROWTH,
                     help=f"factor lambda grows by per iteration, >= 1 (default: {elbmf.DEFAULT_REG_GROWTH})")
    bmf.add_argument("--inertia", type=nonnegative, default=0.0,
                     help="iPALM extrapolation weight in [0, 1); 0 is PALM (default: 0)")
    bmf.add_argument("--max-iter", type=max_iter, default=elbmf.DEFAULT_MAX_ITER,
                     help=f"iteration limit, >= 1 (default: {elbmf.DEFAULT_MAX_ITER})")
    bmf.add_argument("--tol", type=nonnegative, default=elbmf.DEFAULT_TOL,
                     help=f"stop once the loss changes by less (default: {elbmf.DEFAULT_TOL})")
    bmf.add_argument("--seed", type=seed, default=0, help="seed of the starting factors (default: 0)")
    bmf.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto", help="where to fit")
    bmf.add_argument("--output", "-o", metavar="FACTORS.npz",
                     help="where to write W (n, k), H (k, m) bool and row_ids, col_ids (default: "
                          "INPUT's name with .bmf.npz, in the current directory)")
    bmf.add_argument("--json", action="store_true", help="print the report as JSON")


__all__ = ["add_parser", "run"]
