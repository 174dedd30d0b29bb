"""The quartic approximation of word2vec and its closed-form gradient flow (Karkada, Simon, Bahri
and DeWeese, "Closed-form training dynamics of word2vec", NeurIPS 2025, arXiv 2502.09863).

Skip-gram with negative sampling scores a word pair (i, j) by x_ij = <w_i, w_j> (tied input and
output embeddings, the rows of W, V x d) with the loss -P_ij log s(x_ij) - P_i P_j log s(-x_ij)
(s the logistic function, P_ij the co-occurrence probability, P_i its marginal). Its Taylor
expansion to second order in x (fourth order in W) around the origin is, up to a constant,

    (P_ij + P_i P_j) / 8 * (x_ij - M*_ij)^2,   M*_ij = 2 (P_ij - P_i P_j) / (P_ij + P_i P_j),

and with the pair weights replaced by a constant (the paper's simplification) the loss is the
symmetric factorization L(W) = 1/4 ||W W^T - M*||_F^2, whose gradient flow dW/dt = (M* - W W^T) W
has a closed form: with X = W W^T and M* = Q diag(lambda) Q^T,

    X(t) = e^{M* t} W0 (I + 2 W0^T K(t) W0)^{-1} W0^T e^{M* t},   K(t) = int_0^t e^{2 M* s} ds,

exact for every start W0 (X solves the Riccati equation dX/dt = M* X + X M* - 2 X^2). From a small
start each eigen-direction q_k with lambda_k > 0 grows like a logistic curve with rate 2 lambda_k
and saturates at lambda_k: the directions are learned one at a time, largest eigenvalue first
(the effective rank of the embeddings steps up by one each time), until the d columns are used.
Gradient descent with learning rate eta follows the flow at time t = eta * steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np
from scipy import optimize

from .. import _checks
from .._backend import single_threaded_blas

_FUNCTION = "quartic_word2vec_dynamics"


@dataclass
class Word2VecDynamics:
    """The closed-form trajectory of :func:`quartic_word2vec_dynamics` (all float64 numpy).

    target : (V, V) M*, the symmetric target. eigenvalues : (V,) of M*, descending;
        eigenvectors : (V, V) Q, column k the eigen-direction q_k.
    times : (T,) the times asked for. embeddings : (T, V, d) W(t) with W(t) W(t)^T = X(t)
        (a factor of the closed-form X, so equal to the flow's W up to a rotation of its columns),
        or None when the call passed keep_embeddings=False.
    singular_values : (T, d) of W(t), descending: each rises from the init scale to
        sqrt(lambda_k) at its learning time (the stepwise curves).
    overlaps : (T, d) q_k^T X(t) q_k for the top d eigen-directions (lambda_k when learned).
    loss : (T,) 1/4 ||X(t) - M*||_F^2.
    learning_times : (d,) the time at which q_k^T X(t) q_k first reaches lambda_k / 2, from the
        closed form (inf for a direction with lambda_k <= 0, never learned).
    predicted_learning_times : (d,) log((lambda_k - s_k) / s_k) / (2 lambda_k) with
        s_k = q_k^T X(0) q_k: exact for a start aligned with the eigenvectors, the small-init
        estimate otherwise.
    init : (V, d) the start W0. seed : the seed of a random start (drawn when None was passed).
    """

    target: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    times: np.ndarray
    embeddings: Optional[np.ndarray]
    singular_values: np.ndarray
    overlaps: np.ndarray
    loss: np.ndarray
    learning_times: np.ndarray
    predicted_learning_times: np.ndarray
    init: np.ndarray
    seed: Optional[int] = None

    def gram(self, index: int) -> np.ndarray:
        """(V, V) X(t) = W(t) W(t)^T at ``times[index]``."""
        if self.embeddings is None:
            raise ValueError("Word2VecDynamics.gram: the embeddings were not kept (keep_embeddings=False)")
        W = self.embeddings[index]
        return W @ W.T


def word2vec_target(cooccurrence: Any) -> np.ndarray:
    """(V, V) float64 M*_ij = 2 (P_ij - P_i P_j) / (P_ij + P_i P_j) from a (V, V) symmetric,
    non-negative co-occurrence matrix (counts or probabilities; normalized to P = C / sum C,
    P_i = sum_j P_ij). A word that never occurs (P_i = 0) is a ValueError naming it."""
    C = _square_matrix("word2vec_target", "cooccurrence", cooccurrence)
    if np.any(C < 0):
        raise ValueError("word2vec_target: cooccurrence must be non-negative (counts or probabilities)")
    if not np.allclose(C, C.T, rtol=1e-10, atol=0):
        raise ValueError("word2vec_target: cooccurrence must be symmetric (count pairs in both orders)")
    total = C.sum()
    if total <= 0:
        raise ValueError("word2vec_target: cooccurrence is all zeros")
    P = C / total
    marginal = P.sum(axis=1)
    empty = np.flatnonzero(marginal == 0)
    if empty.size:
        raise ValueError(f"word2vec_target: word {int(empty[0])} never co-occurs (row {int(empty[0])} of "
                         "cooccurrence is zero); drop it from the vocabulary")
    independent = np.outer(marginal, marginal)
    return 2.0 * (P - independent) / (P + independent)


def _square_matrix(function: str, name: str, value: Any) -> np.ndarray:
    _checks.required(function, **{name: value})
    try:
        M = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{function}: {name} must be array-like, got {type(value).__name__} ({error})") from None
    if M.dtype.kind not in "iuf" and M.dtype != object:
        raise TypeError(f"{function}: {name} must hold real numbers, got dtype {M.dtype}")
    M = M.astype(np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{function}: {name} must be a square (V, V) matrix, got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{function}: {name} contains NaN/inf values")
    return M


class _Flow:
    """X(t) in the eigenbasis of M*, in a form that neither overflows nor divides 0 by 0 at any t.

    With E = e^{Lambda t} and B = Q^T W0, Q^T X Q = E B (I + 2 B^T K B)^{-1} B^T E, K = diag(k),
    k_i = (e^{2 lambda_i t} - 1) / (2 lambda_i). Let h_i = (e^{2 lambda_i t} - 1) / lambda_i and
    Psi = diag(sqrt(h)) B = U S V^T (thin SVD): then Q^T X Q = R Psi (I + Psi^T Psi)^{-1} Psi^T R
    = R U diag(s^2 / (1 + s^2)) U^T R with R = diag(e^{lambda t} / sqrt(h)). Psi is scaled by
    e^{-s t}, s = max(lambda_1, 0), before its SVD; R_i = 1 / sqrt((1 - e^{-2 lambda_i t}) / lambda_i)
    is bounded for every t > 0."""

    def __init__(self, eigenvalues: np.ndarray, B: np.ndarray):
        self.lam, self.B = eigenvalues, B
        self.top = max(float(eigenvalues[0]), 0.0)

    def factor(self, t: float) -> np.ndarray:
        """(V, d) F in the eigenbasis with F F^T = Q^T X(t) Q."""
        if t == 0:
            return self.B.copy()
        scaled_h, inverse_r2, decay = self._scales(t)
        psi = np.sqrt(np.maximum(scaled_h, 0.0))[:, None] * self.B
        U, sv, _ = np.linalg.svd(psi, full_matrices=False)
        gain = sv / np.sqrt(decay + sv * sv)
        return (U / np.sqrt(inverse_r2)[:, None]) * gain

    def _scales(self, t: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(h_i e^{-2 s t}, 1 / R_i^2 = h_i e^{-2 lambda_i t}, e^{-2 s t}); h_i e^{-2 s t} below
        1e-250 is flushed to 0 (its square root would reach the SVD as subnormal products, which
        run many times slower, for a contribution far below rounding)."""
        lam, s = self.lam, self.top
        zero = lam == 0
        safe = np.where(zero, 1.0, lam)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):  # np.where's unused branch: inf * 0
            positive = lam > 0
            scaled_h = np.where(positive, (np.exp(2.0 * (lam - s) * t) - np.exp(-2.0 * s * t)) / safe,
                                np.exp(-2.0 * s * t) * np.expm1(2.0 * lam * t) / safe)
            scaled_h = np.where(zero, 2.0 * t * np.exp(-2.0 * s * t), scaled_h)
            inverse_r2 = np.where(zero, 2.0 * t, -np.expm1(-2.0 * lam * t) / safe)
        scaled_h[scaled_h < 1e-250] = 0.0
        return scaled_h, inverse_r2, float(np.exp(-2.0 * s * t))

    def overlap(self, t: float, index: int) -> float:
        return float(self.top_overlaps(t, index + 1)[index])

    def top_overlaps(self, t: float, d: int) -> np.ndarray:
        """(d,) q_k^T X(t) q_k for k < d, the rows of F for the top d directions only.

        The rows below the first ``keep`` (= 2 d) enter F's top rows only through their Gram
        Psi_rest^T Psi_rest, so they are replaced by a (d, d) factor of it (an eigh of the Gram): an
        SVD of (keep + d) x d instead of V x d. Those rows' eigenvalues are below lambda_keep, so
        their Gram's rounding (eps of its norm) stays below the scale of every top-d direction."""
        keep = min(2 * d, self.lam.size)
        if t == 0 or keep + d >= self.lam.size:
            F = self.factor(t)
            return np.einsum("kd,kd->k", F[:d], F[:d])
        scaled_h, inverse_r2, decay = self._scales(t)
        psi = np.sqrt(np.maximum(scaled_h, 0.0))[:, None] * self.B
        rest = psi[keep:]
        values, vectors = np.linalg.eigh(rest.T @ rest)
        compressed = np.sqrt(np.maximum(values, 0.0))[:, None] * vectors.T
        U, sv, _ = np.linalg.svd(np.vstack([psi[:keep], compressed]), full_matrices=False)
        F = (U[:d] / np.sqrt(inverse_r2[:d])[:, None]) * (sv / np.sqrt(decay + sv * sv))
        return np.einsum("kd,kd->k", F, F)


@_checks.constrained(d=_checks.positive_int, init_scale=_checks.positive_float,
                     statistics=_checks.one_of("cooccurrence", "target"), seed=_checks.seed_argument,
                     keep_embeddings=_checks.flag)
def quartic_word2vec_dynamics(M: Any, d: int, *, times: Optional[Any] = None, init: Union[str, Any] = "random",
                              init_scale: float = 1e-6, statistics: str = "cooccurrence",
                              seed: Optional[int] = None, keep_embeddings: bool = True) -> Word2VecDynamics:
    """The closed-form gradient flow of the quartic word2vec loss: the embeddings learn the top
    eigen-directions of M* one at a time (Karkada, Simon, Bahri and DeWeese, NeurIPS 2025).

    Parameters
    ----------
    M : (V, V) array-like of real numbers. statistics="cooccurrence": symmetric non-negative
        co-occurrence counts or probabilities, turned into M* by :func:`word2vec_target`;
        statistics="target": M* itself (symmetric).
    d : embedding dimension, 1 <= d <= V.
    times : (T,) non-negative flow times (gradient descent with learning rate eta reaches time
        eta * steps); None: 200 points from 0 to 1.5 times the last learning time; an int T: T
        such points.
    init : "random" (W0 = init_scale * G / sqrt(d), G iid N(0, 1): the paper's small random start),
        "aligned" (W0 = init_scale * Q_d, the top d eigenvectors: every direction then follows
        the logistic curve exactly), or a (V, d) array W0.
    init_scale : the start's scale (> 0); the learning times grow like log(1 / init_scale^2).
    seed : None (fresh entropy) or an int, seeding the random start.
    keep_embeddings : False leaves ``embeddings`` None (at V = 10,000, d = 200 and 200 times they
        are 3.2 GB and 200 products of 10^4 x 10^4 by 10^4 x 200); the other curves are kept.

    Cost: one eigh of the V x V target, then per time one thin SVD (V x d) and per learning time
    3-6 SVDs of 3d x d; the thin work runs with single-threaded BLAS (on a loaded 2-core machine
    threaded OpenBLAS took a 2,000 x 60 SVD from 4 ms to 0.27 s). Paper size: see BENCHMARKS.md.

    Returns
    -------
    :class:`Word2VecDynamics`: the trajectory (embeddings, singular values, overlaps with the
    eigen-directions, loss) at ``times`` and the learning times of the top d directions.

    Raises
    ------
    TypeError for non-numeric input or a non-int d; ValueError for shapes, NaN/inf, an asymmetric
    M, d > V, negative or non-finite times, a target without a positive eigenvalue.
    """
    if statistics == "cooccurrence":
        target = word2vec_target(_square_matrix(_FUNCTION, "M", M))
    else:
        target = _square_matrix(_FUNCTION, "M", M)
        if not np.allclose(target, target.T, rtol=1e-10, atol=1e-12 * float(np.abs(target).max(initial=0.0))):
            raise ValueError(f"{_FUNCTION}: M must be symmetric (the target M* of a symmetric factorization)")
        target = 0.5 * (target + target.T)
    V = target.shape[0]
    if d > V:
        raise ValueError(f"{_FUNCTION}: d = {d} exceeds the vocabulary size V = {V}")
    eigenvalues, Q = np.linalg.eigh(target)
    eigenvalues, Q = eigenvalues[::-1].copy(), Q[:, ::-1].copy()
    if eigenvalues[0] <= 0:
        raise ValueError(f"{_FUNCTION}: M* has no positive eigenvalue (largest {eigenvalues[0]:.3g}); the flow "
                         "from a small start decays to zero and learns nothing")

    if isinstance(init, str):
        if init == "random":
            seed = _checks.draw_seed() if seed is None else seed
            rng = np.random.default_rng(seed)
            W0 = init_scale * rng.standard_normal((V, d)) / np.sqrt(d)
        elif init == "aligned":
            W0 = init_scale * Q[:, :d]
        else:
            raise ValueError(f"{_FUNCTION}: init must be 'random', 'aligned' or a (V, d) array, got {init!r}")
    else:
        W0 = np.asarray(init, dtype=np.float64)
        if W0.shape != (V, d):
            raise ValueError(f"{_FUNCTION}: init has shape {W0.shape}, expected (V, d) = ({V}, {d})")
        if not np.all(np.isfinite(W0)):
            raise ValueError(f"{_FUNCTION}: init contains NaN/inf values")
    flow = _Flow(eigenvalues, Q.T @ W0)
    with single_threaded_blas():
        return _trajectory(flow, target, eigenvalues, Q, W0, d, times, init, seed, keep_embeddings)


def _trajectory(flow: "_Flow", target: np.ndarray, eigenvalues: np.ndarray, Q: np.ndarray, W0: np.ndarray, d: int,
                times: Any, init: Any, seed: Optional[int], keep_embeddings: bool) -> Word2VecDynamics:
    V = target.shape[0]

    start = np.einsum("kd,kd->k", flow.B[:d], flow.B[:d])  # q_k^T X(0) q_k
    lam = eigenvalues[:d]
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = np.where((lam > 0) & (start < lam) & (start > 0),
                             np.log((lam - start) / start) / (2.0 * lam), np.inf)
    learning_times = _learning_times(flow, lam, predicted)

    if times is None or (isinstance(times, (int, np.integer)) and not isinstance(times, bool)):
        points = 200 if times is None else int(times)
        if points < 1:
            raise ValueError(f"{_FUNCTION}: times as a number of points must be >= 1, got {points}")
        finite = learning_times[np.isfinite(learning_times)]
        horizon = 1.5 * float(finite.max()) if finite.size else 10.0 / eigenvalues[0]
        times = np.linspace(0.0, horizon, points)
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise ValueError(f"{_FUNCTION}: times must be a non-empty 1-D array, got shape {times.shape}")
    if not np.all(np.isfinite(times)) or np.any(times < 0):
        raise ValueError(f"{_FUNCTION}: times must be finite and >= 0")

    T = times.size
    embeddings = np.empty((T, V, d)) if keep_embeddings else None
    singular_values = np.empty((T, d))
    overlaps = np.empty((T, d))
    loss = np.empty(T)
    target_norm2 = float(np.sum(eigenvalues ** 2))
    for i, t in enumerate(times):
        F = flow.factor(float(t))
        if embeddings is not None:
            embeddings[i] = Q @ F
        singular_values[i] = np.linalg.svd(F, compute_uv=False)
        overlaps[i] = np.einsum("kd,kd->k", F[:d], F[:d])
        # ||X - M*||^2 in the eigenbasis: ||F F^T||^2 - 2 tr(F^T diag(lambda) F) + ||lambda||^2.
        gram = F.T @ F
        loss[i] = 0.25 * max(float(np.sum(gram * gram)) - 2.0 * float(np.einsum("vd,v,vd->", F, eigenvalues, F))
                             + target_norm2, 0.0)
    return Word2VecDynamics(target=target, eigenvalues=eigenvalues, eigenvectors=Q, times=times,
                            embeddings=embeddings, singular_values=singular_values, overlaps=overlaps, loss=loss,
                            learning_times=learning_times, predicted_learning_times=predicted, init=W0,
                            seed=seed if isinstance(init, str) and init == "random" else None)


def _logit(t: float, flow: _Flow, d: int, k: int, lam: float) -> float:
    """log(o / (lambda_k - o)) with o = q_k^T X(t) q_k: zero where o = lambda_k / 2 and nearly
    linear in t around it (the logistic curve), so Brent's method needs few evaluations."""
    o = float(flow.top_overlaps(t, d)[k])
    tiny = np.finfo(np.float64).tiny
    return float(np.log(max(o, tiny)) - np.log(max(lam - o, tiny)))


def _learning_times(flow: _Flow, lam: np.ndarray, predicted: np.ndarray, points: int = 64) -> np.ndarray:
    """(d,) the first t with q_k^T X(t) q_k = lambda_k / 2 (inf when lambda_k <= 0 or never
    reached). The overlaps of all d directions come from one closed-form evaluation per time, so
    the crossings are bracketed on a shared grid (extended by doubling until each direction has
    crossed), then each is refined by Brent's method on its bracket, applied to the logit of the
    overlap (3-6 evaluations of the top rows, see _Flow.top_overlaps)."""
    d = lam.size
    half = 0.5 * lam
    times = np.full(d, np.inf)
    pending = lam > 0
    finite = predicted[np.isfinite(predicted) & (predicted > 0)]
    lo, hi = 0.0, 1.25 * float(finite.max()) if finite.size else 1.0 / float(lam[0])
    previous_t, previous = 0.0, None
    for _ in range(60):
        if not pending.any():
            break
        grid = np.linspace(lo, hi, points + 1)[(0 if previous is None else 1):]
        for t in grid:
            values = flow.top_overlaps(float(t), d) - half
            crossed = pending & (values >= 0)
            for k in np.flatnonzero(crossed):
                if previous is None or t == 0:
                    times[k] = float(t)
                else:
                    times[k] = float(optimize.brentq(_logit, previous_t, t, args=(flow, d, int(k), lam[k]),
                                                     xtol=1e-13 * max(t, 1.0), rtol=1e-12))
            pending &= ~crossed
            previous_t, previous = float(t), values
            if not pending.any():
                break
        lo, hi = hi, 2.0 * hi
    return times
