"""Lifted matrix sensing over symmetric rank-1 tensors (Ma, Lavaei and Sojoudi, "Algorithmic
regularization in tensor optimization: towards a lifted approach in matrix sensing", NeurIPS 2023;
the lifting: Ma, Molybog, Lavaei and Sojoudi, "Over-parametrization via lifting for low-rank matrix
sensing: conversion of spurious solutions to strict saddle points", ICML 2023).

Symmetric rank-1 sensing asks for x in R^n with <A_i, x x^T> = y_i (i = 1..m). Its Burer-Monteiro
loss 1/4 sum_i (<A_i, x x^T> - y_i)^2 can have spurious local minima. The level-l lifting measures
the l-th tensor power: for every multi-index I = (i_1, ..., i_l),

    <A_I, W W^T> = y_I,   A_I = A_{i_1} (x) ... (x) A_{i_l} (n^l x n^l),   y_I = y_{i_1} ... y_{i_l},

over W in R^{n^l x k} (k columns of order-l tensors w_c), whose solutions include
W = x^{(x) l} (the symmetric rank-1 tensor) for every solution x. Spurious solutions x^ of the
original problem stay critical points x^^{(x) l} of the lifted loss but turn into strict saddles
(for l large enough against the operator's restricted isometry), and gradient descent on W from
a small start stays close to symmetric rank-1 tensors (the implicit regularization of the NeurIPS
paper), so it escapes to a global solution. x is then read off W's leading tensor component.

Which level: the level that converts a spurious minimum grows as the operator's restricted isometry
worsens. Measured on the papers' perturbed completion of 1 1^T (n = 4, off-diagonal-block entries
weighted sqrt(eps); plain GD has the spurious minimum x = (1, 1, -1, -1) scaled for eps < 1/3): the
smallest eigenvalue of the lifted Hessian at the spurious tensor turns negative for eps > 0.168 at
level 2, eps > 0.112 at level 3 and between 0.07 and 0.1 at level 4 (at eps = 0.1: +1.62, +1.31,
-4.38 at levels 2, 3, 4). Below its threshold a level keeps the spurious minimum (GD started there
stays); from a small start GD often avoids its basin anyway (eps = 0.05: 6 of 10 seeds at level 2,
7 of 10 at level 3, but also 7 of 10 for plain GD from a small start).

Cost: the lifted operator is applied mode by mode (one GEMM with the stacked (m n, n) matrix of the
A_i per mode), O(k (m n)^l) memory and work per iteration: small n, m and l only (the papers'
sizes: n <= 10, l <= 4). Level 1 is plain factored gradient descent on x x^T.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Union

import numpy as np

from .. import _checks
from .._arrays import for_backend
from ._driver import (LOOP_CONSTRAINTS, LoopSettings, LoopState, fingerprint, resolve_seed, resume_or_start,
                      run_loop)
from ._result import RecoveryResult
from .factored_gd import stalled_reason

_FUNCTION = "lifted_sensing"
_MAX_ELEMENTS = 2 ** 27  # (m n)^l k numbers of the lifted operator applied to W: 1 GiB in float64
_MAX_HALVINGS = 50


def _matrices(op: Any) -> np.ndarray:
    """(m, n, n) float64 symmetric sensing matrices from a square sensing operator or an array."""
    if hasattr(op, "to_dense") and hasattr(op, "shape") and hasattr(op, "num_measurements"):
        n1, n2 = op.shape
        if n1 != n2:
            raise ValueError(f"{_FUNCTION}: op must be square (symmetric sensing), got shape {tuple(op.shape)}")
        A = np.asarray(op.to_dense(np.float64)).reshape(op.num_measurements, n1, n2)
    else:
        _checks.required(_FUNCTION, op=op)
        A = np.asarray(op)
        if A.dtype.kind not in "iuf":
            raise TypeError(f"{_FUNCTION}: op must be a sensing operator or an (m, n, n) array of real matrices, "
                            f"got {type(op).__name__} of dtype {A.dtype}")
        A = A.astype(np.float64)
        if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] == 0:
            raise ValueError(f"{_FUNCTION}: op as an array must have shape (m, n, n), got {A.shape}")
    if not np.all(np.isfinite(A)):
        raise ValueError(f"{_FUNCTION}: op's matrices contain NaN/inf")
    return 0.5 * (A + A.transpose(0, 2, 1))  # <A, x x^T> only sees the symmetric part


class _Lifted:
    """The level-l operator on W (n^l, k) given the (m, n, n) matrices."""

    def __init__(self, A: np.ndarray, y: np.ndarray, level: int, xp: Any = np):
        self.m, self.n = A.shape[0], A.shape[1]
        self.level, self.xp = level, xp
        self.stacked = xp.asarray(A.reshape(self.m * self.n, self.n))  # rows (i, p), columns q
        target = y
        for _ in range(level - 1):
            target = np.multiply.outer(target, y)
        self.target = xp.asarray(target.reshape(-1))  # y_I, I in row-major order of (i_1, ..., i_l)

    def applied(self, W: np.ndarray) -> np.ndarray:
        """(k, m^l, n^l) Z with Z[c, I, p] = ((A_{i_1} (x) ... (x) A_{i_l}) w_c)[p]."""
        k, n, m, level = W.shape[1], self.n, self.m, self.level
        T = W.T.reshape((k,) + (n,) * level)
        for _ in range(level):  # contract the first tensor mode, append the (i, p) mode at the end
            T = self.xp.tensordot(T, self.stacked, axes=([1], [1]))
        T = T.reshape((k,) + (m, n) * level)
        order = (0,) + tuple(1 + 2 * j for j in range(level)) + tuple(2 + 2 * j for j in range(level))
        return T.transpose(order).reshape(k, m ** level, n ** level)

    def residual(self, W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(<A_I, W W^T> - y_I over I, Z)."""
        Z = self.applied(W)
        return self.xp.einsum("cip,pc->i", Z, W) - self.target, Z

    def gradient(self, residual: Any, Z: Any) -> Any:
        """d/dW of 1/4 ||residual||^2: sum_I r_I A_I w_c for every column c (A_I symmetric)."""
        return self.xp.einsum("i,cip->pc", residual, Z)


def leading_vector(W: np.ndarray, n: int, level: int) -> tuple[np.ndarray, float]:
    """(x, rank-1 residual): x with x^{(x) l} the best symmetric rank-1 fit of the leading component of
    W W^T (up to the sign, which W W^T does not see), and ||W W^T - x^{(x) l} (x^{(x) l})^T||_F /
    ||W W^T||_F, how far W is from a symmetric rank-1 tensor."""
    left, values, _ = np.linalg.svd(W, full_matrices=False)
    w = left[:, 0] * values[0]
    unfolded = w.reshape(n, n ** (level - 1))
    u_left, sigma, _ = np.linalg.svd(unfolded, full_matrices=False)
    u = u_left[:, 0]
    power = u
    for _ in range(level - 1):
        power = np.multiply.outer(power, u).reshape(-1)
    # The norm of w's projection on u^{(x) l} fixes ||x||^l; x^{(x) l} (x^{(x) l})^T only needs |.|.
    projection = abs(float(power @ w))
    x = projection ** (1.0 / level) * u
    lifted = projection * power
    gram = W @ W.T
    scale = float(np.linalg.norm(gram))
    residual = float(np.linalg.norm(gram - np.outer(lifted, lifted))) / scale if scale > 0 else 0.0
    return x, residual


def symmetrize(W: Any, n: int, level: int) -> Any:
    """(n^l, k) W with each column replaced by the average of its tensor over all l! orders of its
    modes: the projection onto symmetric tensors, which gradient descent on the lifted loss keeps
    (y_I and A_I are symmetric under permutations of I, so the gradient at a symmetric W is symmetric)."""
    k = W.shape[1]
    T = W.T.reshape((k,) + (n,) * level)
    orders = list(itertools.permutations(range(1, level + 1)))
    total = sum(T.transpose((0,) + order) for order in orders) / len(orders)
    return total.reshape(k, -1).T.copy()  # C-contiguous, numpy or CuPy alike


def _lift(x: np.ndarray, level: int) -> np.ndarray:
    power = x
    for _ in range(level - 1):
        power = np.multiply.outer(power, x).reshape(-1)
    return power


@_checks.constrained(n=_checks.positive_int, eps=_checks.nonnegative_float)
def perturbed_completion(n: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The papers' example: perturbed completion of M* = 1 1^T (n x n). Every entry (i, j),
    i <= j, is one symmetric sensing matrix, weight 1 within the two diagonal blocks (rows and
    columns both below n // 2, or both at or above it) and sqrt(eps) across them (off the
    diagonal split between (i, j) and (j, i) as weight / sqrt(2)). x = (1, .., 1, -1, .., -1)
    fits both blocks: a spurious local minimum of plain factored GD for eps < 1/3.

    Returns (A, y): A (n (n + 1) / 2, n, n) float64 and y = <A_i, M*> (float64)."""
    half, matrices = n // 2, []
    for i in range(n):
        for j in range(i, n):
            weight = 1.0 if (i < half) == (j < half) else np.sqrt(eps)
            A = np.zeros((n, n))
            A[i, j] = A[j, i] = weight if i == j else weight / np.sqrt(2)
            matrices.append(A)
    A = np.array(matrices)
    return A, A.sum(axis=(1, 2))


@_checks.constrained(**LOOP_CONSTRAINTS, level=_checks.positive_int, width=_checks.positive_int,
                     init_scale=_checks.positive_float, step=_checks.optional(_checks.positive_float),
                     seed=_checks.seed_argument, backend=_checks.one_of("cpu", "cuda"))
def lifted_sensing(op: Any, y: Any, *, level: int = 2, width: int = 1, init: Union[str, Any] = "small",
                   init_scale: float = 1e-3, step: Optional[float] = None, max_iter: int = 5000, tol: float = 1e-6,
                   seed: Optional[int] = None, callback: Optional[Callable[[int, dict], Any]] = None,
                   progress: bool = False, checkpoint: Optional[str] = None, checkpoint_every: int = 100,
                   time_limit: Optional[float] = None, backend: str = "cpu") -> RecoveryResult:
    """Recover x x^T from y_i = <A_i, x x^T> by gradient descent on the level-l lifted problem
    (Ma, Lavaei & Sojoudi, NeurIPS 2023): minimize 1/4 sum_I (<A_I, W W^T> - y_I)^2 over
    W (n^l, width), then read x off W's leading symmetric rank-1 tensor component.

    Parameters
    ----------
    op : a square sensing operator (``lowrank_hpc.sensing``, read through ``to_dense``) or an
        (m, n, n) array of real sensing matrices A_i (only their symmetric parts matter).
    y : (m,) real measurements.
    level : l >= 1, the tensor order (1: plain factored GD on x x^T).
    width : k >= 1 columns of W (the lifted problem's Burer-Monteiro rank; 1 in the papers).
    init : "small" (W0 = init_scale * S / ||S||_F, S an iid Gaussian (n^l, width) array with each
        column symmetrized as a tensor), or an (n,) array x0, lifted
        to x0^{(x) l} (its k columns equal), or an (n^l, width) array W0.
    init_scale : the small start's scale. step : gradient step; None: 0.5 / ||A*(y)||_2^l (the
        growth rate of the small start's leading direction); a step that raises the loss is halved
        (at most 50 times an iteration) and the halvings are reported.
    max_iter, tol : stop after max_iter iterations, or when ||lifted residual|| / ||y^{(x) l}|| < tol
        ("converged"), or when an iteration changes W by less than 1e-3 tol relatively
        ("stationary", also where a spurious minimum holds the iterate).
    seed : None (fresh entropy) or an int seeding the small start.
    callback, progress, checkpoint, checkpoint_every, time_limit : as in
        :func:`lowrank_hpc.recover.factored_gd`.
    backend : "cpu" (numpy) or "cuda" (the lifted operator's contractions, the iterate and its
        gradient live on the GPU through CuPy, cuBLAS doing the GEMMs; the start is drawn on the
        host, so both backends start from the same W0; the result comes back as numpy).

    Returns
    -------
    RecoveryResult with U = V = x (n, 1), X = x x^T (n, n), history (lifted loss, relative change),
    info: "tensor" (the final W, (n^l, width)), "level", "rank1_residual" (the distance of W W^T from
    the symmetric rank-1 x^{(x) l} (x^{(x) l})^T, relative), "measurement_residual"
    (||A(x x^T) - y|| / ||y||, the original problem's), "seed"; numpy arrays on either backend.

    Raises
    ------
    TypeError for non-numeric input or non-int sizes; ValueError for shapes, NaN/inf, y all zero,
    or a lifted problem beyond 2**27 numbers per iteration; BackendUnavailableError for
    backend="cuda" without a GPU.
    """
    call = for_backend(_FUNCTION, backend)
    xp = call.xp
    A = _matrices(op)
    m, n = A.shape[0], A.shape[1]
    _checks.required(_FUNCTION, y=y)
    y = np.asarray(y)
    if y.dtype.kind not in "iuf":
        raise TypeError(f"{_FUNCTION}: y must hold real numbers, got dtype {y.dtype}")
    y = y.astype(np.float64)
    if y.shape != (m,):
        raise ValueError(f"{_FUNCTION}: y has shape {y.shape} but op has {m} measurements")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{_FUNCTION}: y contains NaN/inf")
    if not np.any(y):
        raise ValueError(f"{_FUNCTION}: y is all zeros; the solution is x = 0")
    size = width * (m * n) ** level
    if size > _MAX_ELEMENTS:
        raise ValueError(f"{_FUNCTION}: the level-{level} lifting of {m} measurements of {n} x {n} matrices needs "
                         f"{size:.3g} numbers per iteration (width {width} x (m n)^l), above {_MAX_ELEMENTS}; "
                         "lower the level, the width, m or n")
    settings = LoopSettings(max_iter=max_iter, tol=tol, callback=callback, progress=progress, checkpoint=checkpoint,
                            checkpoint_every=checkpoint_every, time_limit=time_limit,
                            description=f"lifted_sensing[l={level}]")
    seed_value, seed_key = resolve_seed(seed, settings.checkpoint)
    problem = _Lifted(A, y, level, xp)
    N = n ** level
    if isinstance(init, str):
        if init != "small":
            raise ValueError(f"{_FUNCTION}: init must be 'small', an (n,) vector or an (n^l, width) array, "
                             f"got {init!r}")
        rng = np.random.default_rng(seed_value)
        W0 = symmetrize(rng.standard_normal((N, width)), n, level)
        W0 *= init_scale / np.linalg.norm(W0)
    else:
        W0 = np.asarray(init)
        if W0.dtype.kind not in "iuf":
            raise TypeError(f"{_FUNCTION}: init must hold real numbers, got dtype {W0.dtype}")
        W0 = W0.astype(np.float64)
        if W0.shape == (n,):
            W0 = np.repeat(_lift(W0, level)[:, None], width, axis=1) / np.sqrt(width)
        elif W0.shape != (N, width):
            raise ValueError(f"{_FUNCTION}: init has shape {W0.shape}; expected ({n},) or (n^l, width) = "
                             f"({N}, {width})")
        if not np.all(np.isfinite(W0)):
            raise ValueError(f"{_FUNCTION}: init contains NaN/inf")
    if step is None:
        sigma = float(np.abs(np.linalg.eigvalsh(np.tensordot(y, A, axes=1))).max())
        step = 0.5 / sigma ** level
    target_norm = float(xp.linalg.norm(problem.target))
    digest = fingerprint(_FUNCTION, level, width, init if isinstance(init, str) else "arrays", init_scale, step, tol,
                         seed_key, A, y, *(() if isinstance(init, str) else (W0,)))
    fresh = LoopState(arrays={"W": xp.asarray(W0)}, scalars={"step": float(step), "halvings": 0.0}, seed=seed_value)
    state = resume_or_start(settings, digest, xp, fresh)
    cache: dict[str, Any] = {}
    start_host = call.to_host(state.arrays["W"])
    symmetric = level > 1 and bool(np.allclose(symmetrize(start_host, n, level), start_host, rtol=1e-12,
                                               atol=1e-300))

    def advance(state: LoopState) -> tuple[float, float]:
        W = state.arrays["W"]
        if "r" not in cache:
            cache["r"], cache["Z"] = problem.residual(W)
        r, Z = cache.pop("r"), cache.pop("Z")
        loss = 0.25 * float(r @ r)
        grad = problem.gradient(r, Z)
        step_now = state.scalars["step"]
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(_MAX_HALVINGS):
                W_new = symmetrize(W - step_now * grad, n, level) if symmetric else W - step_now * grad
                r_new, Z_new = problem.residual(W_new)
                loss_new = 0.25 * float(r_new @ r_new)
                if np.isfinite(loss_new) and loss_new <= loss * (1 + 1e-12):
                    break
                step_now *= 0.5
                state.scalars["halvings"] += 1
            else:
                cache["r"], cache["Z"], cache["stuck"] = r, Z, True
                return loss, 0.0
        state.scalars["step"] = step_now
        cache["r"], cache["Z"] = r_new, Z_new
        norm = float(xp.linalg.norm(W))
        change = float(xp.linalg.norm(W_new - W)) / norm if norm > 0 else float("inf")
        state.arrays["W"] = W_new
        return loss_new, change

    def stop_reason(state: LoopState) -> Optional[str]:
        loss = state.loss[-1]
        stuck = cache.pop("stuck", False)
        if not np.isfinite(loss):
            return "diverged"
        if np.sqrt(4.0 * loss) / target_norm < tol:
            return "converged"
        if stuck:  # no step of the halving sequence lowered the loss: as factored_gd says it
            previous = state.relative_change[-2] if len(state.relative_change) > 1 else None
            return stalled_reason(previous, np.float64)  # W is float64
        if state.relative_change[-1] < 1e-3 * tol:
            return "stationary"
        return None

    state, reason, seconds = run_loop(settings, state, advance, digest, stop_reason)
    W = call.to_host(state.arrays["W"])
    x, rank1 = leading_vector(W, n, level)
    measured = np.einsum("ipq,p,q->i", A, x, x)
    U = x[:, None]
    return RecoveryResult(
        U=U, V=U, X=np.outer(x, x),
        history={"loss": np.asarray(state.loss), "relative_change": np.asarray(state.relative_change)},
        n_iter=state.iteration, converged=reason in ("converged", "stationary"), stop_reason=reason, seconds=seconds,
        backend=call.backend, step=state.scalars["step"], step_halvings=int(state.scalars["halvings"]),
        info={"tensor": W, "level": level, "rank1_residual": rank1,
              "measurement_residual": float(np.linalg.norm(measured - y) / np.linalg.norm(y)), "seed": state.seed})
