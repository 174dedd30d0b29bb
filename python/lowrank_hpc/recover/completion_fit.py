"""Completion on real data: offsets fitted with the factors, and the regularization chosen on held-out entries.

This is what :class:`lowrank_hpc.MatrixCompletion` runs. Real matrices are not exactly low rank,
so an unregularized or arbitrarily regularized fit overfits or over-shrinks them; the penalty
that predicts unseen entries best is found by holding out a seeded share of the observed ones
and walking a decreasing, warm-started path of penalties (the standard way soft-impute and ALS
are tuned), then refitting on every entry at the chosen point.

The penalty shrinks every direction it keeps, the signal's with the noise's: at the penalty that
silences the noise, the signal comes out too small. So each path point also offers its leading k
directions with their singular values refitted by least squares on the entries (the
post-processing of Mazumder, Hastie and Tibshirani 2010, "soft-impute+", with k chosen too), and
the held-out entries decide between them and the penalized fit.

The penalty lambda is on one scale for ALS and soft-impute: min 1/2 ||P_Omega(X - U V^T)||^2 +
lambda/2 (||U||^2 + ||V||^2), whose minimum over the factors is lambda times the nuclear norm;
lambda_max, the largest singular value of the observed matrix, gives the zero solution. A path
point is a fraction of lambda_max, so the chosen fraction carries over from the training part to
all the entries (whose lambda_max is larger).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import scipy.linalg

from .._arrays import to_numpy
from .._backend import array_module, single_threaded_blas
from ..ops import sampled_product
from ..sensing import EntrySampling
from ._measures import row_blocks
from ._result import RecoveryResult
from ._thin_svd import product_svd
from .als import als
from .factored_gd import factored_gd
from .offsets import Offsets, fit_offsets, initial_offsets
from .soft_impute import observed_spectral_norm, soft_impute

PENALIZED_METHODS = ("als", "soft_impute")
# The path: lambda_max * PATH_RATIO**k for k = 0..PATH_LENGTH (down to lambda_max / 4096); k = 0
# is the offsets-only model (the low-rank part is zero for lambda >= lambda_max), so pure noise can pick it.
PATH_RATIO = 0.5
PATH_LENGTH = 12
# Sweeps per path point, each warm-started from the previous one. 5 ranked small penalties too
# well: not yet fitted to their noise, they looked best, and the final fit, run to tol, overfit
# (1,000 x 800 power-law ratings: held-out 0.679 against 0.678 for offsets alone, predictions
# -4 to 9 on a 1-5 scale). 20 chose as 100 did on the bundled and 8 synthetic sets (10 did not on
# digits, whose offsets move with the factors: 0.2241 against 0.2209), at 0.45x 100's time.
PATH_MAX_ITER = 20
PATH_TOL = 1e-4  # the path only ranks penalties: a looser tolerance than the final fit's
PATH_PATIENCE = 2  # stop the path after this many points worse than the best
VALIDATION_FRACTION = 0.1
# The refitted candidates add up to rank choices a point: on fewer held-out entries than this the
# choice fits their noise (2,000 ratings of 800 x 600, 200 held out: 2 of 24 seeds 1.015-1.041x
# the offsets alone, none without them); from 1,000 they won or tied on every set measured.
DEBIAS_MIN_VALIDATION = 1000
MIN_VALIDATION = 20  # fewer held-out entries than this cannot rank penalties: no path
TINY_DATA_FRACTION = 0.5  # lambda / lambda_max when there is no path (fewer than 195 entries)
AUTO_RANK_START = 10  # rank="auto": the first rank bound, doubled while the penalty keeps every direction
FOLD_IN_REG = 0.1  # the ridge of transform() for the gradient methods, which fit without a penalty
# At most this many alternations of the offsets with the factors in the final fit. Block
# coordinate descent settles slowly when the factors can absorb part of the offsets; on the
# real data sets 20 rounds changed the held-out RMSE by under 0.3% at twice the time.
OFFSET_ROUNDS = 3
ROUND_MAX_ITER = 10  # the rounds after the first start next to their solution
OFFSET_ROUND_SWEEPS = 2  # Gauss-Seidel sweeps of the offsets per round
# The offsets-only model (lambda >= lambda_max) sweeps its offsets to this relative change, or 10
# roundings of the values' dtype if larger (a sweep costs two passes over the entries, far below one solve).
OFFSET_ONLY_TOL = 1e-10
OFFSET_ONLY_MAX_SWEEPS = 1000
# method="auto": ALS on large sparse matrices (at least AUTO_METHOD_ALS_MIN_ENTRIES observed, under
# AUTO_METHOD_ALS_BELOW of the matrix), soft-impute otherwise. Soft-impute's step sees a low-rank
# direction through its observed share only, so on large sparse matrices it creeps: 138,000 x
# 27,000 with 0.12% observed, lambda_max / 2, its objective after 300 sweeps was 2.0% above ALS's
# after 20 (2.4% above its 100), and the default fit's held-out RMSE 0.6737 against ALS's 0.6411
# (0.24% observed: 0.6115 against 0.6024 at 2.1x the time; 0.53%, MovieLens-20M's density:
# 0.5832 against 0.5818 at 1.6x; power-law ratings, 0.19%: 0.6315 against 0.6167 at 1.7x). On
# smaller or denser ones soft-impute won or they were within 0.6% (20,000 x 5,000: 340,000 drawn
# power-law ratings, 0.6844 against 0.6883; 0.9% and 2.25% observed, ALS 0.06-0.6% lower; 2,000
# of 800 x 600, seed 4: ALS's fit 1.008x the offsets alone; the bundled sets, 30% observed or
# more: ALS 0.02-1.1% higher).
AUTO_METHOD_ALS_BELOW = 0.01
AUTO_METHOD_ALS_MIN_ENTRIES = 1_000_000


def auto_method(nnz: int, shape: tuple[int, int], rank: Any = 20) -> str:
    """The solver method="auto" runs for ``nnz`` observed entries of an (n1, n2) matrix: "als"
    from AUTO_METHOD_ALS_MIN_ENTRIES entries when they are under AUTO_METHOD_ALS_BELOW of the
    matrix, else "soft_impute" (also whenever ``rank`` is "auto", which only soft-impute's
    penalty can set)."""
    if isinstance(rank, str) or nnz < AUTO_METHOD_ALS_MIN_ENTRIES:
        return "soft_impute"
    return "als" if nnz < AUTO_METHOD_ALS_BELOW * shape[0] * shape[1] else "soft_impute"


# The function that runs method="als": recover.als, or within ``als_solver(f)`` another with its
# call (lowrank-hpc complete --scheduler passes DistributedALS(client).als).
_ALS_SOLVER: contextvars.ContextVar[Optional[Callable[..., RecoveryResult]]] = contextvars.ContextVar(
    "als_solver", default=None)


@contextlib.contextmanager
def als_solver(solver: Callable[..., RecoveryResult]):
    """Within the block, the completion fits of this thread solve ALS with ``solver`` (a function
    taking recover.als's arguments), e.g. ``DistributedALS(client=client).als`` for a cluster."""
    token = _ALS_SOLVER.set(solver)
    try:
        yield solver
    finally:
        _ALS_SOLVER.reset(token)


@dataclass
class CompletionSettings:
    method: str
    rank: int
    reg: Any  # a float >= 0, or "auto"
    reg_scaling: str
    center: str
    bias_reg: float
    max_iter: int
    tol: float
    init: Any
    seed: int
    progress: bool = False
    checkpoint: Optional[str] = None
    callback: Optional[Callable[[int, dict[str, Any]], Any]] = None
    debias: Any = "auto"  # "auto", True or False: see MatrixCompletion
    # The last entries' EntrySampling, (rows, cols, operator): a fit's path points and rounds
    # solve on the same entries, and its pattern and sorted copy are built once for them.
    operator: Optional[tuple[Any, Any, EntrySampling]] = field(default=None, repr=False, compare=False)


@dataclass
class PathPoint:
    """One penalty of the path: its lambda / lambda_max, the solver's reg, the held-out RMSE
    (of the refit of the leading ``refit_rank`` directions where that was better, else of the
    penalized fit)."""

    fraction: float
    reg: float
    validation_rmse: float
    n_iter: int
    rank: int
    effective_rank: Optional[int] = None  # soft-impute: the directions the penalty leaves
    refit_rank: Optional[int] = None  # the leading directions refitted (_refit_candidates), or None


@dataclass
class CompletionFit:
    """Factors U (n1, rank), V (n2, rank), offsets, the reg used on all entries, the path."""

    result: RecoveryResult
    offsets: Offsets
    reg: float
    path: list[PathPoint] = field(default_factory=list)
    n_iter: int = 0  # over every round
    converged: bool = False  # the last solve met tol and the offsets settled


def _rmse(xp: Any, errors: Any) -> float:
    return float(xp.sqrt(xp.mean(errors.astype(np.float64) ** 2)))


def _penalty_scale(settings: CompletionSettings, nnz: int, shape: tuple[int, int]) -> float:
    """The solver's reg per unit of lambda: 1, or 1 / (mean observations per row and column)
    for ALS's reg_scaling="count", whose penalty of a row is reg times its count."""
    if settings.method == "als" and settings.reg_scaling == "count":
        return (shape[0] + shape[1]) / (2.0 * nnz)
    return 1.0


def _solve(settings: CompletionSettings, rows, cols, vals, shape, rank: int, reg: float, warm: Any, max_iter: int,
           tol: float, **loop: Any) -> RecoveryResult:
    """One solve of the low-rank part; ``warm`` is the previous result of the same method or None;
    ``loop`` holds the final solve's progress, checkpoint and callback (and soft-impute's start offsets)."""
    method = settings.method
    if method == "als":
        init = warm.V if warm is not None else settings.init
        return (_ALS_SOLVER.get() or als)(rows, cols, vals, shape, rank, reg, reg_scaling=settings.reg_scaling, max_iter=max_iter,
                   tol=tol, seed=settings.seed, init=None if init is None else init.astype(vals.dtype, copy=False),
                   **loop)
    if method == "soft_impute":  # fits the offsets with the factors, after every sweep
        return soft_impute(rows, cols, vals, shape, rank, reg, max_iter=max_iter, tol=tol, seed=settings.seed,
                           init=warm, center=settings.center, bias_reg=settings.bias_reg, **loop)
    init = (warm.U, warm.V) if warm is not None else settings.init
    return factored_gd(_entry_sampling(settings, rows, cols, shape), vals, rank, method=method, init=init,
                       max_iter=max_iter, tol=tol, seed=settings.seed, **loop)


def _entry_sampling(settings: CompletionSettings, rows, cols, shape) -> EntrySampling:
    """The fit's operator for these entries: the last one made when rows and cols are the same
    arrays, else a new one, which replaces it (the path's entries are not needed again)."""
    held = settings.operator
    if held is None or held[0] is not rows or held[1] is not cols:
        held = settings.operator = (rows, cols, EntrySampling(rows, cols, shape))
    return held[2]


def _initial_offsets(settings: CompletionSettings, rows, cols, vals, shape) -> Offsets:
    return initial_offsets(rows, cols, vals, shape, settings.center, settings.bias_reg)


def _validation_split(settings: CompletionSettings, nnz: int, xp: Any) -> Optional[tuple[Any, Any]]:
    """Seeded (train, validation) entry positions, or None when too few entries are held out."""
    held_out = int(round(VALIDATION_FRACTION * nnz))
    if held_out < MIN_VALIDATION or nnz - held_out < MIN_VALIDATION:
        return None
    order = np.random.default_rng(settings.seed).permutation(nnz)
    return xp.asarray(np.sort(order[held_out:])), xp.asarray(np.sort(order[:held_out]))


def _walk_path(settings: CompletionSettings, rows, cols, vals, shape) -> tuple[list[PathPoint], Any, int]:
    """The held-out RMSE along lambda_max * PATH_RATIO**k (k = 0: the offsets alone); returns the
    path, the best point's result (None for k = 0) and the rank bound. With rank="auto"
    (soft-impute) the bound starts at AUTO_RANK_START and doubles, and the path is walked again,
    while the best point uses every direction."""
    xp = array_module(vals)
    split = _validation_split(settings, rows.shape[0], xp)
    rank = settings.rank if settings.rank != "auto" else min(AUTO_RANK_START, min(shape))
    if split is None:
        return [], None, rank
    train, held = split
    fit_rows, fit_cols, fit_vals = rows[train], cols[train], vals[train]
    offsets = _initial_offsets(settings, fit_rows, fit_cols, fit_vals, shape)
    residual = fit_vals - offsets.at(fit_rows, fit_cols)
    held_rows, held_cols, held_vals = rows[held], cols[held], vals[held]
    lambda_max = observed_spectral_norm(fit_rows, fit_cols, residual, shape, seed=settings.seed)
    # Soft-impute's path fits the offsets with the factors, as its final fit does: at a small
    # penalty the factors absorb the offsets, which then shrink to nothing, and on sparse data
    # (2,000 ratings of 767 x 603) that final fit lost to the offsets alone (held-out 0.90
    # against 0.82) while the path, fitting the residual of fixed offsets, ranked it best. The
    # other solvers alternate the offsets with whole solves in the final fit (a few rounds): their
    # path fits the residual of the offsets fitted alone. (Refitting ALS's offsets after each
    # point's solve mended its 1.01-1.07x the offsets on 11 of those 24 seeds, but on planted
    # rank-3 matrices with offsets chose penalties up to 1.14x the best one's RMSE: not taken.)
    joint = _fits_offsets(settings)
    if not joint:
        settings = dataclasses.replace(settings, center="none")
    scale = _penalty_scale(settings, fit_rows.shape[0], shape)
    # k = 0, lambda_max: the zero low-rank part is the solution there, taken for granted (a solve
    # only decays to it), so the point is the offsets alone; it is a candidate, not part of the walk.
    best = _rmse(xp, offsets.at(held_rows, held_cols) - held_vals)
    path: list[PathPoint] = [PathPoint(1.0, lambda_max * scale, best, 0, rank, 0)]
    best_result, best_rank, warm = None, rank, None
    sweeps, tol = min(settings.max_iter, PATH_MAX_ITER), max(settings.tol, PATH_TOL)
    refits = settings.debias is True or (settings.debias == "auto" and held_rows.shape[0] >= DEBIAS_MIN_VALIDATION)
    while True:
        walked: list[PathPoint] = []
        walk_best, holds_best = np.inf, False
        for k in range(1, PATH_LENGTH + 1):
            fraction = PATH_RATIO ** k
            reg = fraction * lambda_max * scale
            if joint:  # the offsets start where the previous point left them
                start = offsets if warm is None else _result_offsets(warm, offsets)
                warm = _solve(settings, fit_rows, fit_cols, fit_vals, shape, rank, reg, warm, sweeps, tol, offsets=start)
            else:
                warm = _solve(settings, fit_rows, fit_cols, residual, shape, rank, reg, warm, sweeps, tol)
            point_offsets = _result_offsets(warm, offsets) if joint else offsets
            predicted = sampled_product(warm.U, warm.V, held_rows, held_cols) + point_offsets.at(held_rows, held_cols)
            error = _rmse(xp, predicted - held_vals)
            refit_rank = None
            if refits:
                refit_k, refit_error = _refit_candidates(xp, warm.U, warm.V, (fit_rows, fit_cols, fit_vals),
                                                         (held_rows, held_cols, held_vals), point_offsets)
                if refit_k is not None and (refit_error < error or settings.debias is True):
                    error, refit_rank = refit_error, refit_k
            walked.append(PathPoint(fraction, reg, error, warm.n_iter, rank, warm.info.get("effective_rank"),
                                    refit_rank))
            walk_best = min(walk_best, error)
            if error < best:
                best, best_result, best_rank, holds_best = error, warm, rank, True
            elif sum(point.validation_rmse > walk_best for point in walked[-PATH_PATIENCE:]) == PATH_PATIENCE:
                break
        path += walked
        # rank="auto": when a point of this walk kept every direction the bound allows and this
        # walk holds the best point so far, walk again with twice the bound.
        binding = any(point.effective_rank == rank for point in walked)
        if settings.rank != "auto" or not holds_best or not binding or rank == min(shape):
            return path, best_result, best_rank
        rank, warm = min(2 * rank, min(shape)), None


def fit_completion(settings: CompletionSettings, rows, cols, vals, shape: tuple[int, int]) -> CompletionFit:
    """Offsets and factors for the observed entries; see :func:`_fit_completion`. Its dense work is
    tall-skinny (n x rank), so the host BLAS runs on one thread beside the OpenMP kernels."""
    with single_threaded_blas():
        return _fit_completion(settings, rows, cols, vals, shape)


def _fit_completion(settings: CompletionSettings, rows, cols, vals, shape: tuple[int, int]) -> CompletionFit:
    """Offsets and factors for the observed entries (rows, cols, vals) of an (n1, n2) matrix.

    With reg="auto" (ALS and soft-impute) the penalty is the path point of least held-out RMSE;
    the final fit starts from that point's factors (the point lambda_max is the offsets-only
    model: no solve, zero factors, :func:`_offsets_only`), and without a path (too few entries)
    it is lambda_max * TINY_DATA_FRACTION. The offsets (center "global" or "both") are
    fitted jointly with the factors: soft-impute updates them after every sweep; for the other
    solvers they are alternated with whole solves (:func:`_alternate`). The final solve (for
    the others its first round, the long one) shows progress, calls the callback and writes the
    checkpoint; its input is a deterministic function of the data and settings, so a rerun
    resumes it.
    """
    path, warm, rank, chosen = [], None, settings.rank, None
    if settings.method in PENALIZED_METHODS and settings.reg == "auto":
        path, warm, rank = _walk_path(settings, rows, cols, vals, shape)
    elif rank == "auto":
        rank = min(AUTO_RANK_START, min(shape))
    offsets = _initial_offsets(settings, rows, cols, vals, shape)
    if settings.method not in PENALIZED_METHODS:
        reg = 0.0  # the gradient methods fit without a penalty
    elif settings.reg != "auto":
        reg = float(settings.reg)
    else:
        lambda_max = observed_spectral_norm(rows, cols, vals - offsets.at(rows, cols), shape, seed=settings.seed)
        chosen = min(path, key=lambda point: point.validation_rmse) if path else None
        # No path: on 150 noisy entries (audit's mc_small) lambda_max / 2 beat mean and offsets-only, / 50 overfit.
        fraction = chosen.fraction if chosen is not None else TINY_DATA_FRACTION
        reg = fraction * lambda_max * _penalty_scale(settings, rows.shape[0], shape)
        if fraction >= 1:  # the offsets-only model: no solve (one at lambda_max only decays to zero)
            result, offsets, converged = _offsets_only(settings, rows, cols, vals, shape, rank, reg, offsets)
            return CompletionFit(result=result, offsets=offsets, reg=reg, path=path, n_iter=0, converged=converged)
    loop: dict[str, Any] = {"progress": settings.progress, "checkpoint": settings.checkpoint}
    if settings.callback is not None:
        loop["callback"] = _with_offsets(settings.callback, offsets)
    if _fits_offsets(settings):  # from the offsets fitted alone, not fitted again inside
        result = _solve(settings, rows, cols, vals, shape, rank, reg, warm, settings.max_iter, settings.tol,
                        offsets=offsets, **loop)
        offsets = _result_offsets(result, offsets)
        n_iter, converged = result.n_iter, bool(result.converged)
    else:
        result, n_iter, converged, offsets = _alternate(settings, rows, cols, vals, shape, rank, reg, warm, offsets,
                                                        loop)
    refit_rank = chosen.refit_rank if chosen is not None else (None if settings.debias is not True else rank)
    if refit_rank is not None:
        result = _refitted(result, rows, cols, vals - offsets.at(rows, cols), refit_rank)
    return CompletionFit(result=result, offsets=offsets, reg=reg, path=path, n_iter=n_iter, converged=converged)


def _alternate(settings: CompletionSettings, rows, cols, vals, shape, rank: int, reg: float, warm: Any,
               offsets: Offsets, loop: dict[str, Any]) -> tuple[RecoveryResult, int, bool, Offsets]:
    """Solvers without offsets of their own: solves of the factors on vals minus the offsets,
    alternated with the offsets' fit to vals minus the factors (block coordinate descent)."""
    xp = array_module(vals)
    result, n_iter, converged, rounds = None, 0, False, 0
    while rounds < (OFFSET_ROUNDS if settings.center != "none" else 1):
        budget = settings.max_iter - n_iter if rounds == 0 else min(settings.max_iter - n_iter, ROUND_MAX_ITER)
        if rounds > 0 and budget <= 0:
            break  # max_iter counts every round's iterations
        result = _solve(settings, rows, cols, vals - offsets.at(rows, cols), shape, rank, reg, warm, budget,
                        settings.tol, **(loop if rounds == 0 else {}))
        warm, n_iter, rounds = result, n_iter + result.n_iter, rounds + 1
        converged = bool(result.converged)
        if settings.center == "none":
            break
        previous = offsets
        lowrank = sampled_product(result.U, result.V, rows, cols)
        offsets = fit_offsets(rows, cols, vals - lowrank, shape, settings.center, settings.bias_reg, offsets,
                              sweeps=OFFSET_ROUND_SWEEPS)
        # Converged jointly once the offsets settle (relative change at the observed entries
        # below tol) after a solve that met tol; until then the factors chase moving offsets.
        if _relative_difference(xp, offsets.at(rows, cols), previous.at(rows, cols)) < settings.tol:
            break
        converged = False
    return result, n_iter, converged, offsets


def _offsets_only(settings: CompletionSettings, rows, cols, vals, shape, rank: int, reg: float,
                  offsets: Offsets) -> tuple[RecoveryResult, Offsets, bool]:
    """The model of lambda >= lambda_max: zero factors (n1, rank), (n2, rank), and the offsets
    fitted to vals alone, swept on from ``offsets`` until their relative change settles (OFFSET_ONLY_TOL)."""
    xp = array_module(vals)
    started = time.perf_counter()
    tol = max(OFFSET_ONLY_TOL, 10 * float(np.finfo(vals.dtype).eps))
    settled = settings.center == "none"
    for _ in range(OFFSET_ONLY_MAX_SWEEPS if not settled else 0):
        previous = offsets
        offsets = fit_offsets(rows, cols, vals, shape, settings.center, settings.bias_reg, offsets)
        if _relative_difference(xp, offsets.at(rows, cols), previous.at(rows, cols)) < tol:
            settled = True
            break
    U, V = xp.zeros((shape[0], rank), vals.dtype), xp.zeros((shape[1], rank), vals.dtype)
    info: dict[str, Any] = {"reg": reg, "seed": settings.seed, "effective_rank": 0,
                            "singular_values": np.zeros(rank), "offsets": offsets}
    if settings.method == "soft_impute":
        info["factors"] = (U, xp.zeros(rank, vals.dtype), V)
    history = {"loss": np.zeros(0), "relative_change": np.zeros(0)}
    result = RecoveryResult(U=U, V=V, history=history, n_iter=0, converged=settled,
                            stop_reason="converged" if settled else "max_iter",
                            seconds=time.perf_counter() - started, backend="cuda" if xp is not np else "cpu", info=info)
    return result, offsets, settled


def _fits_offsets(settings: CompletionSettings) -> bool:
    """Whether the solver fits the offsets itself, after every sweep (soft-impute), rather than
    in rounds alternated with whole solves."""
    return settings.method == "soft_impute" and settings.center != "none"


def _result_offsets(result: RecoveryResult, default: Offsets) -> Offsets:
    return result.info.get("offsets", default)


def _relative_difference(xp: Any, new: Any, old: Any) -> float:
    scale = float(xp.linalg.norm(old.astype(np.float64)))
    return float(xp.linalg.norm((new - old).astype(np.float64))) / scale if scale > 0 else 0.0


def _with_offsets(callback: Callable[[int, dict[str, Any]], Any], offsets: Offsets) -> Callable:
    """The solver's callback with the offsets in force added to its dict (key "offsets"): those
    of the iterate for a solver that fits them (its state's "intercept", "row_offsets",
    "col_offsets"), else the fixed ``offsets`` of the round. "U" (n1, rank) and "V" (n2, rank)
    are given alike by every solver, U V^T the low-rank part: method="auto" picks the solver by
    the data, so a callback cannot know it (ALS passes batches of one, soft-impute U diag(d) V^T)."""
    def called(iteration: int, info: dict[str, Any]) -> Any:
        live = (Offsets(float(info["intercept"][0]), info["row_offsets"], info["col_offsets"])
                if "intercept" in info else offsets)
        info = dict(info, offsets=live)
        if "U" in info:  # (a cluster's ALS reports the loss alone)
            U, V = info["U"], info["V"]
            if U.ndim == 3:
                U, V = U[0], V[0]
            d = info.pop("d", None)
            info.update(U=U if d is None else U * d[None, :], V=V)
        return callback(iteration, info)

    return called


def _directions(U: Any, V: Any) -> Optional[tuple[Any, Any, Any]]:
    """U V^T = A diag(d) B^T in float64 (A, B orthonormal columns, d descending), the directions
    with d > 1e-6 d_1 only, or None for U V^T = 0."""
    A, d, B = product_svd(array_module(U), U.astype(np.float64), V.astype(np.float64))
    if not float(d[0]) > 0:
        return None
    keep = int((d > d[0] * 1e-6).sum())
    return A[:, :keep], d[:keep], B[:, :keep]


def _design(A: Any, B: Any, rows: Any, cols: Any, block: slice) -> Any:
    """Rows ``block`` of the design X (nnz, k) = A[rows] * B[cols]: entry e's value of each direction."""
    return A[rows[block]] * B[cols[block]]


def _normal_equations(xp: Any, A: Any, B: Any, rows: Any, cols: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """X^T X and X^T target (host, float64) for the design X: the least squares of target by
    sum_l w_l A[:, l] B[:, l]^T at the entries, in blocks of entries."""
    k = A.shape[1]
    gram, rhs = xp.zeros((k, k)), xp.zeros(k)
    for block in row_blocks(rows.shape[0], k):  # (block, k) float64 gathers
        X = _design(A, B, rows, cols, block)
        gram += X.T @ X
        rhs += X.T @ target[block].astype(np.float64)
    return to_numpy(gram), to_numpy(rhs)


# A leading system whose Cholesky pivot falls below this fraction of the largest diagonal entry
# of the Gram has a direction the entries barely see: its weight would be noise (or inf).
REFIT_PIVOT_FLOOR = 1e-10


def _leading_refits(gram: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, int]:
    """(weights, solved): column j - 1 of the (k, k) weights holds the least-squares weights of
    the leading j directions, for j = 1..solved; ``solved`` stops before the first direction the
    entries barely see (REFIT_PIVOT_FLOOR), the columns after it are zero. One Cholesky factor
    serves every j: the leading j x j block of L factors the leading minor."""
    k = gram.shape[0]
    weights = np.zeros((k, k))
    L, info = scipy.linalg.lapack.dpotrf(gram, lower=1, clean=1)
    solved = k if info == 0 else info - 1  # info > 0: the minor of that order is not positive definite
    floor = REFIT_PIVOT_FLOOR * float(np.max(np.diag(gram), initial=0.0))
    below = np.flatnonzero(np.diag(L)[:solved] ** 2 <= floor)
    solved = int(below[0]) if below.size else solved
    if solved == 0:
        return weights, 0
    y = scipy.linalg.solve_triangular(L[:solved, :solved], rhs[:solved], lower=True)
    for j in range(1, solved + 1):
        weights[:j, j - 1] = scipy.linalg.solve_triangular(L[:j, :j].T, y[:j], lower=False)
    return weights, solved


def _refit_candidates(xp: Any, U: Any, V: Any, fit: tuple[Any, Any, Any], held: tuple[Any, Any, Any],
                      offsets: Offsets) -> tuple[Optional[int], float]:
    """(k, held-out RMSE) of the best refit of the leading k directions of U V^T, k = 1 up to
    those the entries see, the weights fitted to the ``fit`` entries minus ``offsets`` (one set of
    normal equations serves every k); (None, inf) where there is none (U V^T = 0)."""
    found = _directions(U, V)
    if found is None:
        return None, float("inf")
    A, _, B = found
    (fit_rows, fit_cols, fit_vals), (held_rows, held_cols, held_vals) = fit, held
    weights, solved = _leading_refits(*_normal_equations(xp, A, B, fit_rows, fit_cols,
                                                         fit_vals - offsets.at(fit_rows, fit_cols)))
    if solved == 0:
        return None, float("inf")
    weights = xp.asarray(weights[:, :solved])
    residual = (held_vals - offsets.at(held_rows, held_cols)).astype(np.float64)
    squares = xp.zeros(solved)
    for block in row_blocks(held_rows.shape[0], solved):
        predicted = _design(A, B, held_rows, held_cols, block) @ weights  # column j - 1: the leading j
        squares += ((predicted - residual[block, None]) ** 2).sum(axis=0)
    errors = np.sqrt(to_numpy(squares) / held_rows.shape[0])
    best = int(np.argmin(errors))
    return best + 1, float(errors[best])


def _refitted(result: RecoveryResult, rows: Any, cols: Any, target: Any, k: int) -> RecoveryResult:
    """The result with U V^T replaced by its leading k directions (fewer where it has fewer, or
    the entries see fewer), their weights refitted by least squares to target at the entries:
    U = A_k diag(sign(w) |w|^1/2), V = B_k diag(|w|^1/2), ordered by |w| descending, zero columns
    up to the rank bound. info: effective_rank, singular_values (|w|) and soft-impute's factors
    follow; refit_rank is set; penalized_V and refit_map (rank x rank) give the refitted row of
    any row u of the penalized fit (u V_pen^T = its prediction) as u @ refit_map, which is how
    rows are folded in (for the penalized U, exactly U)."""
    xp = array_module(target)
    found = _directions(result.U, result.V)
    if found is None:
        return result
    A, d, B = (x[..., :k] for x in found)
    weights, solved = _leading_refits(*_normal_equations(xp, A, B, rows, cols, target))
    if solved == 0:
        return result
    weights = weights[:solved, solved - 1]
    order = np.argsort(-np.abs(weights), kind="stable")  # singular values descending, as the solvers give them
    weights, on_device = weights[order], xp.asarray(order)
    A, d, B = A[:, on_device], d[on_device], B[:, on_device]
    signs, values = np.where(weights < 0, -1.0, 1.0), np.abs(weights)
    rank, dtype = result.U.shape[1], result.U.dtype

    def padded(x: Any, rows: int) -> Any:  # (rows, solved) -> (rows, rank), zeros on the right
        out = xp.zeros((rows, rank), dtype)
        out[:, :solved] = x
        return out

    root = xp.asarray(np.sqrt(values))
    U, V = padded(A * (root * xp.asarray(signs)), result.U.shape[0]), padded(B * root, result.V.shape[0])
    # A_k = U_pen V_pen^T B_k diag(1/d_k), so the refitted U is U_pen times this map.
    refit_map = padded(result.V.astype(np.float64).T @ (B * xp.asarray(signs * np.sqrt(values)) / d), rank)
    singular_values = np.zeros(rank)
    singular_values[:solved] = values
    info = dict(result.info, effective_rank=int(np.count_nonzero(values)), refit_rank=solved,
                singular_values=singular_values, penalized_V=result.V, refit_map=refit_map)
    if "factors" in info:  # soft-impute's SVD form U_s diag(d) V_s^T
        info["factors"] = (padded(A * xp.asarray(signs), U.shape[0]), xp.asarray(singular_values.astype(dtype)),
                           padded(B, V.shape[0]))
    return dataclasses.replace(result, U=U, V=V, info=info)
