"""Gradient methods on the factors: minimize 1/2 ||A(U V^T) - y||^2 (or 1/4 ||A(U U^T) - y||^2).

The methods whose behaviour the recent theory explains, on one code path:
gradient descent from small random init (Stoger & Soltanolkotabi 2021; Ye & Du 2021),
alternating GD (Ward & Kolda 2023), ScaledGD (Tong, Ma & Chi 2021), ScaledGD(lambda) for the
over-parameterized case (Xu, Shen, Chi & Ma 2023), and GD with a one-step rebalancing that
removes the init-scale dependence of over-parameterized asymmetric GD (Xiong, Ding & Du 2023).
"""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import numpy as np

from .. import _checks
from .._arrays import Call, resolve, sum_of_squares
from .._backend import CONSTANTS
from ._driver import (LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start,
                      run_loop)
from ._measures import relative_change
from ._operator_math import (adjoint_products, adjoint_times, adjoint_transpose_times, operator_scale,
                             spectral_norm, spectral_source, top_singular_triplets)
from ._result import RecoveryResult
from ..sensing._base import SensingOperator

METHODS = ("gd", "alternating", "scaled", "scaled_damped", "gd_rebalanced")
_ASYMMETRIC_ONLY = ("alternating", "gd_rebalanced")
# A step is accepted when the loss does not grow by more than this relative amount.
# Step control, as the batched kernel's (lowrank_hpc/core/constants.hpp): a step whose loss grows
# by more than this relative amount (or is not finite) is halved, at most this often an iteration.
_GROWTH_ALLOWED: float = CONSTANTS["step_growth_allowed"]
_MAX_HALVINGS_PER_STEP: int = CONSTANTS["max_step_halvings"]
# A stuck iterate (no step decreases the loss) counts as stationary only when the previous
# iteration already changed X by less than this (about 16 sqrt(eps) of the dtype: a minimum at
# working precision); after a larger change, or at the first iteration, it is "no_progress".
PRECISION_CHANGE = {np.dtype(np.float32): 16 * float(np.sqrt(np.finfo(np.float32).eps)),
                    np.dtype(np.float64): 16 * float(np.sqrt(np.finfo(np.float64).eps))}


def robust_norm(xp: Any, x: Any) -> float:
    """||x||_2 in float64, scaled so that values near the float range neither overflow nor underflow."""
    x = x.astype(np.float64)
    scale = float(xp.max(xp.abs(x))) if x.size else 0.0
    if scale == 0 or not np.isfinite(scale):
        return scale
    return scale * float(xp.linalg.norm(x / scale))


def stalled_reason(previous: Optional[float], dtype: Any) -> str:
    """The reason of an iteration that did not move the factors (no step decreased the loss, or
    the step was too small to change them): "stationary" after a previous change below the
    working precision, else "no_progress". (An accepted step that leaves the factors unchanged
    after a tiny change is left to the tolerance test, so tol=0 still runs to max_iter.)"""
    tiny = previous is not None and np.isfinite(previous) and previous < PRECISION_CHANGE[np.dtype(dtype)]
    return "stationary" if tiny else "no_progress"


@dataclass
class _Problem:
    call: Call
    op: Any
    y: Any
    xp: Any
    symmetric: bool
    method: str
    step: float
    damping: float
    rebalance_at: float
    y_norm: float

    def residual(self, U: Any, V: Any) -> Any:
        if self.internal:  # the solver validated its operands once: no per-call checks (or syncs)
            return self.op._forward_factored(self.call, U, U if self.symmetric else V) - self.y
        return self.op.forward_factored(U, None if self.symmetric else V) - self.y

    def adjoint_product(self, z: Any, B: Any, transpose: bool = False) -> Any:
        """A*(z) @ B, or A*(z)^T @ B with ``transpose``: the alternating method's half-steps."""
        if self.internal:
            return self.op._adjoint_times(self.call, z, B, transpose)
        return (adjoint_transpose_times if transpose else adjoint_times)(self.op, z, B)

    def loss(self, residual: Any) -> float:
        return (0.25 if self.symmetric else 0.5) * sum_of_squares(self.xp, residual)

    @functools.cached_property
    def internal(self) -> bool:
        """Whether the operator is one of the library's, its public methods not overridden: then
        the loop calls its solver methods (no per-call checks: the solver validated its operands
        once; entry sampling fuses the residual and the loss into one kernel)."""
        return library_operator(self.op)

    def evaluate(self, U: Any, V: Any) -> tuple[Any, float]:
        """(residual, loss) at (U, V), in one pass where the operator can."""
        if self.internal:
            z, total = self.op._solver_residual(self.call, U, U if self.symmetric else V, self.y)
            return z, (0.25 if self.symmetric else 0.5) * total
        z = self.residual(U, V)
        return z, self.loss(z)

    def gradients(self, U: Any, V: Any, z: Any) -> tuple[Any, Any]:
        """(grad_U, grad_V) of the loss at (U, V) with residual z (grad_V is None when symmetric)."""
        partner = U if self.symmetric else V
        if self.internal:
            g_u, g_v = self.op._solver_adjoint_products(self.call, z, partner, U)
        else:
            g_u, g_v = adjoint_products(self.op, z, partner, U)
        return (0.5 * (g_u + g_v), None) if self.symmetric else (g_u, g_v)

    def precondition(self, grad: Any, partner: Any) -> Any:
        """ScaledGD: grad (P^T P)^-1, or (P^T P + lambda I)^-1 for the damped variant."""
        if self.method not in ("scaled", "scaled_damped"):
            return grad
        gram = partner.T @ partner
        if self.method == "scaled_damped":
            gram = gram + self.damping * self.xp.eye(gram.shape[0], dtype=gram.dtype)
        try:
            solved = self.xp.linalg.solve(gram, grad.T).T  # gram is symmetric: (gram^-1 grad^T)^T
        except np.linalg.LinAlgError:
            solved = None
        # numpy raises for a singular Gram; CuPy returns NaN instead (a sync to test, GPU only).
        if solved is None or (self.xp is not np and not bool(self.xp.isfinite(solved).all())):
            # A singular Gram: the symmetric spectral start leaves zero the columns of A*(y)'s
            # negative eigenvalues (a rank above A*(y)'s does so too). The pseudo-inverse keeps
            # those columns zero: ScaledGD at the rank the start found, not a LinAlgError.
            solved = grad @ self.xp.linalg.pinv(gram)
        return solved


def library_operator(op: Any) -> bool:
    """Whether op is one of the library's sensing operators with its public methods as the
    library wrote them (a subclass overriding them keeps its own order and calls)."""
    kind = type(op)
    return isinstance(op, SensingOperator) and all(
        getattr(kind, name) is getattr(SensingOperator, name)
        for name in ("forward_factored", "adjoint_times", "adjoint_transpose_times"))


def _rebalance(xp: Any, U: Any, V: Any) -> tuple[Any, Any]:
    """U <- c U (U^T U)^{-1/2}, V <- V (U^T U)^{1/2} / c, with c^2 = ||U V^T||_2: keeps U V^T and
    gives every column direction of U the same scale, so the small directions that over-
    parameterized GD shrinks only at rate alpha^2 now shrink at the rate of the large ones."""
    eigenvalues, vectors = xp.linalg.eigh(U.T @ U)
    floor = float(eigenvalues.max()) * np.finfo(U.dtype).eps
    eigenvalues = xp.maximum(eigenvalues, floor)
    root = (vectors * xp.sqrt(eigenvalues)) @ vectors.T
    inverse_root = (vectors / xp.sqrt(eigenvalues)) @ vectors.T
    q_u, r_u = xp.linalg.qr(U)
    q_v, r_v = xp.linalg.qr(V)
    scale = float(np.sqrt(float(xp.linalg.norm(r_u @ r_v.T, 2))))
    return scale * (U @ inverse_root), (V @ root) / scale


def quiet(function: Callable) -> Callable:
    """``function`` run without numpy's overflow/invalid/divide warnings: the solvers test the
    loss and factors for NaN/inf themselves and report it as stop_reason "diverged" (or halve
    the step), so the warnings numpy would print from inside them carry nothing more."""
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return function(*args, **kwargs)
    return run


def _finite(xp: Any, *arrays: Any) -> bool:
    return all(bool(xp.isfinite(a).all()) for a in arrays if a is not None)


def _take_step(problem: _Problem, U: Any, V: Any, z: Any, step: float) -> tuple[Any, Any, Any, float]:
    """(U', V', residual at them, loss at them); the residual is None and the loss infinite
    when a step overflowed the factors (the caller then halves the step)."""
    try:
        return _step(problem, U, V, z, step)
    except FloatingPointError:  # a user operator's public method found its result overflowed: as above
        return U, V, None, np.inf


def _step(problem: _Problem, U: Any, V: Any, z: Any, step: float) -> tuple[Any, Any, Any, float]:
    xp = problem.xp
    if problem.method == "alternating":
        U_new = U - step * problem.adjoint_product(z, V)
        if not _finite(xp, U_new):
            return U_new, V, None, np.inf
        z_mid = problem.residual(U_new, V)
        V_new = V - step * problem.adjoint_product(z_mid, U_new, transpose=True)
        if not _finite(xp, V_new):
            return U_new, V_new, None, np.inf
        return (U_new, V_new, *problem.evaluate(U_new, V_new))
    grad_u, grad_v = problem.gradients(U, V, z)
    # Kernels take row-major factors; the preconditioned gradient may come back transposed.
    U_new = xp.ascontiguousarray(U - step * problem.precondition(grad_u, U if problem.symmetric else V))
    V_new = U_new if problem.symmetric else xp.ascontiguousarray(V - step * problem.precondition(grad_v, U))
    if not _finite(xp, U_new, None if problem.symmetric else V_new):
        return U_new, V_new, None, np.inf
    return (U_new, V_new, *problem.evaluate(U_new, V_new))


def _initial_factors(problem: _Problem, init: Any, init_scale: float, rank: int, seed: int,
                     scale: float, dtype: Any, spectral: tuple[Any, bool]) -> tuple[Any, Any]:
    """(U0, V0) (V0 None when symmetric); ``spectral``: ``spectral_source(op, y)``, the operator
    whose adjoint a spectral start decomposes and whether it estimates M itself."""
    xp, (n1, n2) = problem.xp, problem.op.shape
    if isinstance(init, str) and init == "small":
        # Host generator, then moved: the same seed gives the same start on CPU and GPU.
        rng = np.random.default_rng(seed)
        U = init_scale * rng.standard_normal((n1, rank)) / np.sqrt(n1)
        if problem.symmetric:
            return xp.asarray(U.astype(dtype)), None
        # Xiong, Ding & Du start V three times smaller: the imbalance drives the linear rate.
        V = (init_scale / 3.0) * rng.standard_normal((n2, rank)) / np.sqrt(n2)
        return xp.asarray(U.astype(dtype)), xp.asarray(V.astype(dtype))
    if isinstance(init, str) and init == "spectral":
        # The matrix decomposed: A*(y) / scale (A*(y) ~ scale * M), or the operator's corrected
        # (A*(y) - shift I) / gain, an estimate of M itself (symmetric rank-one: its trace term).
        source, estimates_m = spectral
        divisor = 1.0 if estimates_m else scale
        left, sigma, right = top_singular_triplets(source, problem.y, rank, xp, seed=seed)
        sigma = sigma / divisor
        if problem.symmetric:
            # Top eigenpairs of the symmetric part, keeping the positive ones.
            gram = left.T @ (0.5 * (adjoint_times(source, problem.y, left) +
                                    adjoint_transpose_times(source, problem.y, left))) / divisor
            eigenvalues, vectors = xp.linalg.eigh(gram)
            U = (left @ vectors) * xp.sqrt(xp.maximum(eigenvalues, 0))
            return xp.ascontiguousarray(U.astype(dtype)), None
        root = xp.sqrt(sigma)
        return (xp.ascontiguousarray((left * root).astype(dtype)),
                xp.ascontiguousarray((right * root).astype(dtype)))
    raise ValueError(f"factored_gd: init must be 'small', 'spectral' or arrays, got {init!r}")


def resolve_init(function: str, init: Any, method: str) -> Any:
    """init=None: "spectral" for method "scaled", "small" for the others. ScaledGD's analysis
    starts near the solution (Tong, Ma & Chi 2021): from a small start its preconditioner
    (V^T V)^-1 is huge, and the loss-decrease test halves the step until it no longer moves
    (a 40 x 30 rank-2 completion: relative error 0.9997 after 3,000 iterations), so an
    explicit "small" with "scaled" warns; "scaled_damped" (ScaledGD(lambda)) is the one for
    small starts."""
    if init is None:
        return "spectral" if method == "scaled" else "small"
    if isinstance(init, str) and init == "small" and method == "scaled":
        warnings.warn(f"{function}: method 'scaled' from init='small' barely moves (its (V^T V)^-1 preconditioner "
                      "is huge at a small start, so the step is halved until the loss stops rising); use "
                      "init='spectral' (the default for 'scaled') or method='scaled_damped'", RuntimeWarning,
                      stacklevel=3)
    return init


def _check_init_arrays(init: Any, problem: _Problem, rank: int, dtype: Any) -> tuple[Any, Any]:
    n1, n2 = problem.op.shape
    pair = init if isinstance(init, (tuple, list)) else (init, None)
    if len(pair) != 2 or (pair[1] is None) != problem.symmetric:
        raise ValueError("factored_gd: init arrays are (U0, V0) for asymmetric problems and U0 for symmetric ones")
    U0, V0 = pair
    call = resolve("factored_gd", init_U=U0, init_V=V0, y=problem.y)
    U0 = call.float_array("init U", U0, (2,))
    if U0.shape != (n1, rank):
        raise ValueError(f"factored_gd: init U has shape {tuple(U0.shape)}, expected ({n1}, {rank})")
    if V0 is not None:
        V0 = call.float_array("init V", V0, (2,))
        if V0.shape != (n2, rank):
            raise ValueError(f"factored_gd: init V has shape {tuple(V0.shape)}, expected ({n2}, {rank})")
    if U0.dtype != dtype:
        raise TypeError(f"factored_gd: init arrays are {U0.dtype} but y is {dtype}")
    return U0.copy(), (None if V0 is None else V0.copy())


def _check_operator(op: Any, function: str = "factored_gd") -> None:
    missing = [name for name in ("shape", "num_measurements", "forward_factored", "adjoint") if not hasattr(op, name)]
    if missing:
        raise TypeError(f"{function}: op must be a sensing operator (lowrank_hpc.sensing); "
                        f"{type(op).__name__} lacks {', '.join(missing)}")


def sensing_measurements(function: str, op: Any, y: Any) -> tuple[Call, Any]:
    """(call, y) for a solver of ``op``'s measurements ``y``: op checked to be a sensing
    operator, y a float vector of op.num_measurements values on its backend."""
    _check_operator(op, function)
    _checks.required(function, y=y)
    call = resolve(function, y=y)
    y = call.float_array("y", y, (1,))
    if y.shape[0] != op.num_measurements:
        raise ValueError(f"{function}: y has length {y.shape[0]} but the operator makes "
                         f"{op.num_measurements} measurements")
    return call, y


@_checks.constrained(**LOOP_CONSTRAINTS, symmetric=_checks.flag, init_scale=_checks.positive_float,
                     step=_checks.optional(_checks.positive_float), damping=_checks.optional(_checks.nonnegative_float),
                     seed=_checks.seed_argument, rebalance_at=_checks.positive_float)
def factored_gd(op: Any, y: Any, rank: int, *, symmetric: bool = False, method: str = "gd",
                init: Union[str, Any, None] = None, init_scale: float = 1e-3, step: Optional[float] = None,
                damping: Optional[float] = None, max_iter: int = 1000, tol: float = 1e-6,
                seed: Optional[int] = None, callback: Optional[Callable[[int, dict], Any]] = None,
                progress: bool = False, checkpoint: Optional[str] = None, checkpoint_every: int = 100,
                time_limit: Optional[float] = None, rebalance_at: float = 1e-2) -> RecoveryResult:
    """Recover a low-rank matrix from linear measurements y = A(M) by gradient methods on factors.

    Minimizes 1/2 ||A(U V^T) - y||^2 over U (n1, rank), V (n2, rank), or 1/4 ||A(U U^T) - y||^2
    over U (n, rank) when ``symmetric`` (M positive semidefinite). ``rank`` may exceed the true
    rank (over-parameterized).

    Parameters
    ----------
    op : a sensing operator (``lowrank_hpc.sensing``) of shape (n1, n2).
    y : (op.num_measurements,) float32/float64 measurements, numpy (CPU) or CUDA array (GPU).
    rank : width of the factors, an int >= 1. It may exceed min(n1, n2) (over-parameterized
        factors), except with method "scaled" (which inverts the rank x rank V^T V) and
        init "spectral" (the top-rank singular vectors of A*(y)).
    method : "gd" (simultaneous steps on U and V), "alternating" (U, then V with the new U),
        "scaled" (ScaledGD: gradients times (V^T V)^-1 and (U^T U)^-1), "scaled_damped"
        (ScaledGD(lambda): (V^T V + lambda I)^-1), "gd_rebalanced" (GD plus one rebalancing
        step U <- c U (U^T U)^{-1/2}, V <- V (U^T U)^{1/2} / c, once the relative residual falls
        below ``rebalance_at``). "alternating" and "gd_rebalanced" are asymmetric only.
    init : "small" (U0 = init_scale * G / sqrt(n1), V0 = init_scale / 3 * G' / sqrt(n2), G, G' iid
        N(0, 1); the smaller V0 follows Xiong, Ding & Du), "spectral" (top-rank SVD of A*(y),
        rescaled by the operator's scale, split as L S^1/2, R S^1/2; when symmetric, U0 = Q L^1/2
        over the top-rank eigenpairs (by |lambda|) of its symmetric part, negative lambda set to
        0; an operator whose A*(y) has an identity term removes it first, see
        ``SensingOperator.spectral_correction``: symmetric rank-one sensing takes
        (A*(y) - tr I) / 2 with tr = sum(y) / sqrt(m), as E[A*(A(M))] = 2 M + tr(M) I), or arrays
        (U0, V0) (U0 alone when symmetric). None (default): "spectral" for method "scaled"
        (ScaledGD needs a start near the solution; "small" with it warns: the step shrinks until
        it cannot move), "small" for the others.
    step : step size. None picks it from the data: with s = E||A(X)||^2/||X||_F^2 (1 for
        isotropic Gaussian sensing, the sampling rate for completion, estimated by three
        random probes) and sigma = ||A*(y)||_2 (so sigma / s estimates ||M||_2; for an operator
        with a ``spectral_correction``, the norm of its corrected (A*(y) - shift I) / gain:
        symmetric rank-one sensing's A*(y) holds tr(M) I, which made the step 2-4x too small), the step is
        0.5 / sigma for "gd", "alternating" and "gd_rebalanced", and 0.5 / s for the scaled
        methods. A step that would increase the loss (or make it NaN/inf) is halved and
        retried; the result reports the final step and the number of halvings.
    damping : lambda of "scaled_damped"; None uses 1e-2 * sigma / s (1% of ||M||_2 estimated).
    max_iter, tol : stop after max_iter iterations ("max_iter"; max_iter=0 returns the start),
        or when ||A(X) - y|| / ||y|| < tol ("converged"), or when the relative change of X
        falls below 1e-3 * tol ("stationary"). The run also stops, with converged=False, when
        the loss is NaN or inf ("diverged": data beyond the float range of a squared loss, e.g.
        values near 1e160 in float64) or when an iteration cannot move the factors
        ("no_progress": every step of the halving sequence, 50 halvings, increases the loss,
        or the step is too small to change them, as a ``step`` far too large or too small
        gives). Such a stall right after a change of X below 16 sqrt(eps) of the dtype is a
        minimum at working precision: "stationary".
    seed : None (fresh entropy: a seed is drawn for this call) or an int in [0, 2**64): seeds
        the random init and the step/spectral estimates; an int makes the run reproducible.
        ``result.info["seed"]`` is the seed used (the drawn one for None).
    callback : called as callback(iteration, {"loss", "relative_change", "U", "V"}) each iteration.
    progress : show a tqdm bar with the current loss.
    checkpoint, checkpoint_every : write the state to this .npz atomically every
        ``checkpoint_every`` iterations and at the end; a call with an existing checkpoint of
        the same problem and settings resumes from it and ends with the same result (also
        with seed=None: the checkpoint stores the seed drawn and a seed=None call reuses it).
        The checkpoint's directory must exist (checked before the first iteration).
    time_limit : seconds after which the solve stops ("time_limit"), read after each
        iteration (so a positive limit runs at least one); 0 returns the start.

    Returns
    -------
    RecoveryResult with U (n1, rank), V (n2, rank) (V is U and X = U U^T when symmetric),
    converged a bool, stop_reason a str (see :class:`RecoveryResult`), info["seed"].

    Raises
    ------
    TypeError for a non-int rank or seed, None for y, dtypes; ValueError for shapes and bad
    settings; CheckpointError for an unusable checkpoint file or directory,
    CheckpointMismatchError for a checkpoint of another problem.
    """
    call, y = sensing_measurements("factored_gd", op, y)
    n1, n2 = op.shape
    rank = _checks.integer("factored_gd", "rank", rank)
    if rank < 1:
        raise ValueError(f"factored_gd: rank must be an integer >= 1, got {rank}")
    if method not in METHODS:
        raise ValueError(f"factored_gd: unknown method {method!r}; choose one of {METHODS}")
    init = resolve_init("factored_gd", init, method)
    if rank > min(n1, n2) and (method == "scaled" or (isinstance(init, str) and init == "spectral")):
        what = "method 'scaled' (it inverts the rank x rank V^T V)" if method == "scaled" else "init='spectral'"
        raise ValueError(f"factored_gd: rank {rank} exceeds min{tuple(op.shape)} = {min(n1, n2)}, which {what} "
                         "cannot take; over-parameterized factors need another method or init")
    if symmetric and n1 != n2:
        raise ValueError(f"factored_gd: symmetric recovery needs a square operator, got shape {op.shape}")
    if symmetric and method in _ASYMMETRIC_ONLY:
        raise ValueError(f"factored_gd: method {method!r} is for asymmetric problems (symmetric=False)")
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress,
                            checkpoint=checkpoint, checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=f"factored_gd[{method}]")
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    step_given, damping_given = step, damping

    xp, dtype = call.xp, y.dtype
    # The digest below reads the caller's operator and y; everything else may take the operator's
    # solver order.
    given_op, given_y = op, y
    if library_operator(op):
        op, y = op._solver_order(call, y)
    y_norm = robust_norm(xp, y)
    if y_norm == 0:
        raise ValueError("factored_gd: y is all zeros; the solution is U V^T = 0")
    # The data-driven estimates cost a few operator passes: made only when a default needs them.
    scaled = method in ("scaled", "scaled_damped")
    needs_sigma = (step is None and not scaled) or (method == "scaled_damped" and damping is None)
    spectral = isinstance(init, str) and init == "spectral"
    needs_scale = (step is None and scaled) or (method == "scaled_damped" and damping is None) or spectral
    scale = quiet(operator_scale)(op, dtype, xp, seed=seed_value) if needs_scale else None
    # The adjoint the start and sigma read: op's, or its corrected one (symmetric rank-one's trace term).
    source = spectral_source(op, y) if spectral or needs_sigma else (op, False)
    sigma = quiet(spectral_norm)(source[0], y, xp, seed=seed_value) if needs_sigma else None
    if step is None:
        step = 0.5 / scale if scaled else 0.5 / sigma
    if damping is None:
        damping = 1e-2 * sigma / scale if method == "scaled_damped" else 0.0
    problem = _Problem(call=call, op=op, y=y, xp=xp, symmetric=symmetric, method=method, step=float(step),
                       damping=float(damping), rebalance_at=rebalance_at, y_norm=y_norm)

    if isinstance(init, str):
        U, V = quiet(_initial_factors)(problem, init, init_scale, rank, seed_value, scale, dtype, source)
    else:
        U, V = _check_init_arrays(init, problem, rank, dtype)
    if symmetric:
        V = U
    # The settings and the data (a random start is a function of them and the seed; a drawn seed
    # enters as "drawn", its value being saved in the checkpoint and reused on resume).
    given = () if isinstance(init, str) else (U, V)
    digest = fingerprint("factored_gd", method, symmetric, rank, init if isinstance(init, str) else "arrays",
                         init_scale, step_given, damping_given, tol, seed_key, rebalance_at, op.shape,
                         type(given_op).__name__, getattr(given_op, "seed", None), given_y, *given)
    fresh = LoopState(arrays={"U": U, "V": V}, scalars={"step": problem.step, "halvings": 0.0, "rebalanced": 0.0},
                      seed=seed_value)
    state = resume_or_start(settings, digest, xp, fresh)
    residual_cache: dict[str, Any] = {}

    @quiet
    def advance(state: LoopState) -> tuple[float, float]:
        U, V = state.arrays["U"], state.arrays["V"]
        # The residual and loss at (U, V): the previous iteration's, or computed here (the first
        # iteration, a resumed run).
        z, loss = residual_cache.pop("z", None) or problem.evaluate(U, V)
        step_now = state.scalars["step"]
        for _ in range(_MAX_HALVINGS_PER_STEP):
            U_new, V_new, z_new, loss_new = _take_step(problem, U, V, z, step_now)
            if np.isfinite(loss_new) and loss_new <= loss * (1 + _GROWTH_ALLOWED):
                break
            step_now *= 0.5
            state.scalars["halvings"] += 1
        else:
            residual_cache["z"] = (z, loss)
            residual_cache["stuck"] = True
            return loss, 0.0
        if (problem.method == "gd_rebalanced" and not state.scalars["rebalanced"]
                and np.sqrt(loss_new / (0.25 if symmetric else 0.5)) / y_norm < problem.rebalance_at):
            U_new, V_new = _rebalance(xp, U_new, V_new)
            state.scalars["rebalanced"] = float(state.iteration + 1)
        state.scalars["step"] = step_now
        change = float(relative_change(call, U[None], V[None], U_new[None], V_new[None])[0])
        state.arrays["U"], state.arrays["V"] = U_new, (U_new if symmetric else V_new)
        residual_cache["z"] = (z_new, loss_new)
        return loss_new, change

    weight = 0.25 if symmetric else 0.5

    @quiet
    def stop_reason(state: LoopState) -> Optional[str]:
        stuck = residual_cache.pop("stuck", False)
        if not np.isfinite(state.loss[-1]):
            return "diverged"
        if np.sqrt(state.loss[-1] / weight) / y_norm < tol:
            return "converged"
        change = state.relative_change[-1]
        if stuck or change == 0:
            previous = state.relative_change[-2] if len(state.relative_change) > 1 else None
            reason = stalled_reason(previous, dtype)
            if stuck or reason == "no_progress":
                return reason
        if change < 1e-3 * tol:
            return "stationary"
        return None

    state, reason, seconds = run_loop(settings, state, advance, digest, stop_reason)
    U, V = state.arrays["U"], state.arrays["V"]
    return RecoveryResult(
        U=call.wrap(U), V=call.wrap(V), X=call.wrap(U @ U.T) if symmetric else None,
        history={"loss": np.asarray(state.loss), "relative_change": np.asarray(state.relative_change)},
        n_iter=state.iteration, converged=reason in ("converged", "stationary"), stop_reason=reason,
        seconds=seconds, backend=call.backend, step=state.scalars["step"],
        step_halvings=int(state.scalars["halvings"]),
        info={"operator_scale": scale, "spectral_norm_adjoint_y": sigma, "damping": problem.damping,
              "rebalanced_at_iteration": int(state.scalars["rebalanced"]) or None, "seed": state.seed})
