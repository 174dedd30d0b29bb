"""``lowrank-hpc nmf INPUT --components K``: read the (row, col, value) entries of a
non-negative matrix, factor it by NMF, write W and H, and print the reconstruction error.

Choices made here: ids are labels (mapped to indices, saved with the factors); repeated
(row, col) pairs are averaged (as ``complete`` does); entries not listed are zeros (a sparse
matrix of counts, never densified, except for ``--solver alternating_relu``, which takes a dense
matrix) or, with ``--unlisted missing``, not observed (weighted NMF over the listed entries; not
with alternating_relu); the output path is checked before the fit.
"""
from __future__ import annotations

import argparse
import json
import os
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
    from ..estimators import NMF

    if not 0 <= args.l1_ratio <= 1:
        raise UsageError(f"--l1-ratio must be in [0, 1], got {args.l1_ratio:g}")
    if args.solver == "cd" and args.beta_loss != "frobenius":
        raise UsageError(f"--solver cd fits --beta-loss frobenius only; use --solver mu for {args.beta_loss}")
    if args.solver == "alternating_relu" and args.unlisted == "missing":
        raise UsageError("--solver alternating_relu fits a fully known matrix; use --solver cd or mu with "
                         "--unlisted missing")
    output = args.output or default_factors_output(args.input, "nmf")
    check_writable(output, "--output")
    alpha_H = "same" if args.alpha_H is None else args.alpha_H
    estimator = NMF(n_components=args.components, init=None if args.init == "auto" else args.init,
                    solver=args.solver, beta_loss=args.beta_loss, tol=args.tol, max_iter=args.max_iter,
                    random_state=args.seed, alpha_W=args.alpha_W, alpha_H=alpha_H, l1_ratio=args.l1_ratio,
                    backend=args.backend, verbose=_progress_bar())
    started = time.perf_counter()
    data = readers.read_ratings(args.input, header=args.header, format=None if args.format == "auto" else args.format)
    if data.nnz and float(data.vals.min()) < 0:
        first = int(np.argmax(data.vals < 0))
        raise DataError(f"{args.input}: NMF needs non-negative values; entry (row {data.row_ids[data.rows[first]]}, "
                        f"col {data.col_ids[data.cols[first]]}) is {data.vals[first]:g}")
    matrix = scipy.sparse.csr_matrix((data.vals, (data.rows, data.cols)), shape=data.shape)
    if args.components > min(data.shape) and args.init not in ("auto", "random"):
        raise DataError(f"--components {args.components} exceeds min(rows, columns) = {min(data.shape)}, which "
                        f"--init {args.init} needs; use --init random or fewer components")
    if args.solver == "alternating_relu":  # its solver takes dense X only
        _check_dense_fits(data.shape)
        matrix = matrix.toarray()
    fit_started = time.perf_counter()
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.unlisted == "missing":
                mask = scipy.sparse.csr_matrix((np.ones(data.nnz, dtype=bool), (data.rows, data.cols)),
                                               shape=data.shape)
                W = estimator.fit_transform(matrix, mask=mask)
            else:
                W = estimator.fit_transform(matrix)
    except (ValueError, TypeError, BackendUnavailableError) as error:
        raise DataError(f"the fit failed: {error}") from None
    fit_seconds = time.perf_counter() - fit_started
    W, H = (to_numpy(a) for a in (W, estimator.components_))
    np.savez_compressed(output, W=W, H=H, row_ids=data.row_ids, col_ids=data.col_ids,
                        loss=estimator.loss_curve_)
    norm = float(np.sqrt(np.dot(data.vals, data.vals)))
    report: dict[str, Any] = {
        "input": args.input, "format": data.format, "shape": list(data.shape), "entries": data.nnz,
        "unlisted": args.unlisted, "components": int(estimator.n_components_), "solver": args.solver,
        "beta_loss": args.beta_loss, "reconstruction_err": float(estimator.reconstruction_err_),
        "relative_error": float(estimator.reconstruction_err_) / norm if norm > 0 and args.beta_loss == "frobenius"
        else None,
        "iterations": int(estimator.n_iter_), "converged": not any("Maximum number" in str(w.message) for w in caught),
        "seconds": round(time.perf_counter() - started, 3), "fit_seconds": round(fit_seconds, 3), "factors": output}
    if args.json:
        print(json.dumps(json_safe(report), indent=2, allow_nan=False))
    else:
        print(_human(report))
    return 0


def _human(report: dict[str, Any]) -> str:
    n, m = report["shape"]
    relative = "" if report["relative_error"] is None else f" ({report['relative_error']:.4f} of ||X||)"
    return "\n".join([
        f"input      {report['input']} ({report['format']}): {n} x {m}, {report['entries']} entries "
        f"(unlisted: {report['unlisted']})",
        f"factors    k = {report['components']}, W and H written to {report['factors']}",
        f"fit        {report['solver']}, {report['iterations']} iterations"
        f"{'' if report['converged'] else ' (max_iter reached)'} in {report['fit_seconds']} s",
        f"error      {report['reconstruction_err']:.6g}{relative}",
    ])


def _check_dense_fits(shape: tuple[int, int]) -> None:
    """DataError when the dense float64 matrix would take over half the machine's memory (NumPy's
    lazily zeroed pages would let it start, and the solver's first pass would exhaust them)."""
    needed = 8 * shape[0] * shape[1]
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): leave it to the allocator
        return
    if needed > physical // 2:
        raise DataError(f"--solver alternating_relu forms the dense {shape[0]} x {shape[1]} matrix, "
                        f"{needed / 2**30:.3g} GiB of this machine's {physical / 2**30:.3g} GiB; use --solver cd or mu, "
                        "which keep it sparse")


def add_parser(commands: Any, positive_int: Any, seed: Any, max_iter: Any, nonnegative: Any) -> None:
    """The ``nmf`` subcommand's options (defaults are NMF's, as scikit-learn's)."""
    nmf = commands.add_parser(
        "nmf", help="non-negative matrix factorization of a matrix given by its (row, col, value) entries",
        description="Factor a non-negative matrix X ~ W H (W, H >= 0) with NMF (scikit-learn's objective and "
                    "solvers); write W, H and the id maps to an .npz and print the reconstruction error.",
        epilog="Formats: as for `complete` (CSV/TSV/whitespace text of row,col,value lines, MovieLens ::, .mtx, "
               ".npz of rows, cols, vals[, shape], Parquet). Exit status: 1 data error, 2 usage error, "
               "130 interrupted.")
    nmf.add_argument("input", metavar="INPUT", help="file of (row, col, value) entries, values >= 0")
    nmf.add_argument("--format", choices=("auto", "text", "mtx", "npz", "parquet"), default="auto",
                     help="input format (default: by the file name, text otherwise)")
    nmf.add_argument("--header", choices=("auto", "yes", "no"), default="auto",
                     help="text input: is the first line a header (default: auto-detect)")
    nmf.add_argument("-k", "--components", type=positive_int, required=True, help="number of components")
    nmf.add_argument("--solver", choices=("cd", "mu", "alternating_relu"), default="cd",
                     help="cd (coordinate descent), mu (multiplicative updates) or alternating_relu (dense: the "
                          "matrix is formed in memory; not with --unlisted missing) (default: cd)")
    nmf.add_argument("--beta-loss", choices=("frobenius", "kullback-leibler", "itakura-saito"), default="frobenius",
                     help="divergence, with --solver mu (default: frobenius)")
    nmf.add_argument("--init", choices=("auto", "random", "nndsvd", "nndsvda", "nndsvdar"), default="auto",
                     help="start (default: nndsvda when k <= min(rows, columns), else random)")
    nmf.add_argument("--unlisted", choices=("zero", "missing"), default="zero",
                     help="entries not in the file: zeros (a sparse matrix) or missing (fit the listed ones only)")
    nmf.add_argument("--max-iter", type=max_iter, default=200, help="iteration limit, >= 1 (default: 200)")
    nmf.add_argument("--tol", type=nonnegative, default=1e-4, help="stopping tolerance (default: 1e-4)")
    nmf.add_argument("--alpha-W", type=nonnegative, default=0.0, help="penalty weight of W (default: 0)")
    nmf.add_argument("--alpha-H", type=nonnegative, default=None, help="penalty weight of H (default: --alpha-W)")
    nmf.add_argument("--l1-ratio", type=nonnegative, default=0.0, help="l1 share of the penalty, in [0, 1]")
    nmf.add_argument("--seed", type=seed, default=0, help="seed of the start (default: 0)")
    nmf.add_argument("--backend", choices=("auto", "cpu", "cuda"), default="auto", help="where to fit")
    nmf.add_argument("--output", "-o", metavar="FACTORS.npz",
                     help="where to write W (n, k), H (k, m) and row_ids, col_ids (default: INPUT's name with "
                          ".nmf.npz, in the current directory)")
    nmf.add_argument("--json", action="store_true", help="print the report as JSON")


__all__ = ["add_parser", "run"]
