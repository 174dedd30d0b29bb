"""Empirical Bayes matrix factorization with point-normal priors (EBMF: Wang and Stephens,
"Empirical Bayes matrix factorization", JMLR 2021, the flash algorithm) and its covariate-moderated
variant (cEBMF: Denault, Tayeb, Carbonetto, Willwerscheid and Stephens, "Covariate-moderated
empirical Bayes matrix factorization").

The model (the one implemented; cEBMF's paper allows other prior families and weight models):

    Y = sum_k l_k f_k^T + E,   E_ij ~ N(0, 1 / tau) iid, tau estimated,
    l_ik ~ (1 - pi_ik) delta_0 + pi_ik N(0, sigma_lk^2),   f_jk likewise with its own (pi, sigma),
    EBMF:  pi_ik = pi_k, one weight per factor and side, estimated;
    cEBMF: logit pi_ik = beta_k0 + z_i^T beta_k (z_i the covariates of row i, standardized), a
           logistic regression of the non-zero weight on the covariates, fitted with sigma_k^2.

Inference is variational with q(L, F) = prod_k q(l_k) q(f_k): each update of one factor's l_k is
an empirical Bayes normal-means problem x_i = l_ik + N(0, s^2) with x = R_k E[f_k] / sum E[f_k^2],
s^2 = 1 / (tau sum E[f_k^2]) (R_k the residual without factor k): its prior is fitted by maximum
marginal likelihood (started from the previous fit and kept only if the likelihood does not fall)
and q(l_k) is the exact posterior under it. Each such update, and the closed-form tau update,
maximizes the evidence lower bound (ELBO) in its block, so the ELBO never decreases. Factors are
added greedily (a rank-1 fit of the residual from its leading singular pair, kept only when it
raises the ELBO; a factor whose fitted prior is the point mass at 0 ends the greedy phase), then
all factors are refitted in turn (backfitting) until the ELBO changes by less than ``tol``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from scipy import optimize

from .. import _checks

_LOG_2PI = float(np.log(2.0 * np.pi))
_LOGIT_BOUND = 20.0  # |logit pi| and |beta| bounded: separable covariates would send them to infinity


@dataclass
class PointNormalPrior:
    """A fitted point-normal prior of one side of one factor: weight pi_i = sigmoid(coef[0] +
    z_i^T coef[1:]) on N(0, variance), 1 - pi_i on the point mass at 0 (coef of length 1 for
    EBMF). ``null`` is True when the fit is the point mass itself (the factor side is zero)."""

    coef: np.ndarray
    variance: float
    null: bool = False

    def weights(self, design: np.ndarray) -> np.ndarray:
        """(n,) pi_i for the (n, c) design (intercept column first)."""
        if self.null:
            return np.zeros(design.shape[0])
        return _sigmoid(design @ self.coef)


def _sigmoid(eta: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def point_normal_posterior(x: Any, s2: Any, pi: Any, variance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
    """The normal-means model x_i = theta_i + N(0, s2_i), theta_i ~ (1 - pi_i) delta_0 + pi_i
    N(0, variance): (log marginal density of each x_i, posterior mean E[theta_i], posterior
    second moment E[theta_i^2], posterior probability of theta_i != 0), all (n,) float64.

    x (n,) finite; s2 (n,) or a scalar, finite > 0; pi (n,) or a scalar in [0, 1]; variance a
    finite number > 0. ValueError naming the argument otherwise (they gave NaN results).
    """
    function = "point_normal_posterior"
    x = _finite_vector(function, "x", x)
    for name, value in (("s2", s2), ("pi", pi)):
        array = np.asarray(value, dtype=np.float64)
        if array.ndim > 1 or (array.ndim == 1 and array.shape != x.shape):
            raise ValueError(f"{function}: {name} must be a scalar or of x's shape {x.shape}, got shape {array.shape}")
    s2, pi = np.asarray(s2, dtype=np.float64), np.asarray(pi, dtype=np.float64)
    if not (np.all(np.isfinite(s2)) and np.all(s2 > 0)):
        raise ValueError(f"{function}: s2 must be finite and > 0")
    if not np.all((pi >= 0) & (pi <= 1)):
        raise ValueError(f"{function}: pi must lie in [0, 1]")
    variance = _checks.positive_float(function, "variance", variance)
    return _posterior(x, np.broadcast_to(s2, x.shape), pi, variance)


def _finite_vector(function: str, name: str, value: Any) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{function}: {name} must be 1-D, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{function}: {name} contains NaN/inf")
    return array


def _posterior(x: Any, s2: Any, pi: Any, variance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """point_normal_posterior without the checks: the fit's inner loop, on values it made."""
    x, s2 = np.asarray(x, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    pi = np.broadcast_to(np.asarray(pi, dtype=np.float64), x.shape)
    total = s2 + variance
    log0 = -0.5 * (_LOG_2PI + np.log(s2) + x * x / s2)
    log1 = -0.5 * (_LOG_2PI + np.log(total) + x * x / total)
    with np.errstate(divide="ignore"):
        a, b = np.log1p(-pi) + log0, np.log(pi) + log1
    marginal = np.logaddexp(a, b)
    w = np.exp(b - marginal)
    shrink = variance / total
    mean1, var1 = shrink * x, shrink * s2
    return marginal, w * mean1, w * (mean1 * mean1 + var1), w


def _fit_prior(x: np.ndarray, s2: np.ndarray, design: np.ndarray, previous: Optional[PointNormalPrior]
               ) -> tuple[PointNormalPrior, float]:
    """Maximum marginal likelihood point-normal prior (weights by logistic regression on
    ``design``) for the normal means x ~ N(theta, s2); never worse than ``previous``. Returns the
    prior and its log marginal likelihood."""
    scale = float(np.mean(x * x)) + float(np.mean(s2))
    log_var_bounds = (np.log(scale) - 30.0, np.log(scale) + 10.0)
    lower = np.r_[np.full(design.shape[1], -_LOGIT_BOUND), log_var_bounds[0]]
    upper = np.r_[np.full(design.shape[1], _LOGIT_BOUND), log_var_bounds[1]]

    def negative(theta: np.ndarray) -> tuple[float, np.ndarray]:
        theta = np.clip(theta, lower, upper)
        coef, log_var = theta[:-1], theta[-1]
        variance = float(np.exp(log_var))
        pi = _sigmoid(design @ coef)
        marginal, _, _, w = _posterior(x, s2, pi, variance)
        total = s2 + variance
        d_log_var = variance * 0.5 * (x * x / (total * total) - 1.0 / total)
        gradient = np.concatenate([design.T @ (w - pi), [float(np.sum(w * d_log_var))]])
        return -float(np.sum(marginal)), -gradient

    null_value = float(np.sum(-0.5 * (_LOG_2PI + np.log(s2) + x * x / s2)))
    candidates: list[tuple[float, PointNormalPrior]] = [(null_value, PointNormalPrior(np.zeros(design.shape[1]),
                                                                                          0.0, null=True))]
    if previous is not None and not previous.null:  # warm start: the previous fit
        starts = [np.concatenate([previous.coef, [np.clip(np.log(previous.variance), *log_var_bounds)]])]
    else:
        start = np.zeros(design.shape[1] + 1)
        start[-1] = np.log(max(float(np.mean(x * x)) - float(np.mean(s2)), 1e-3 * scale))
        starts = [start]
    for theta0 in starts:
        value0, _ = negative(theta0)
        candidates.append((-value0, PointNormalPrior(theta0[:-1].copy(), float(np.exp(theta0[-1])))))
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            # BFGS on the box's interior (the parameters are clipped to it inside the objective):
            # scipy's L-BFGS-B costs milliseconds a step, this objective tens of microseconds.
            found = optimize.minimize(negative, theta0, jac=True, method="BFGS",
                                      options={"maxiter": 200, "gtol": 1e-6 * (1.0 + x.size)})
        theta = np.clip(found.x, lower, upper)
        value, _ = negative(theta)
        if np.isfinite(value):
            candidates.append((-value, PointNormalPrior(theta[:-1].copy(), float(np.exp(theta[-1])))))
    if previous is not None:  # the previous prior itself: the update never loses likelihood
        pi = previous.weights(design)
        value = null_value if previous.null else float(np.sum(_posterior(x, s2, pi, previous.variance)[0]))
        candidates.append((value, previous))
    value, prior = max(candidates, key=lambda c: c[0])
    return prior, value


@dataclass
class _Side:
    """q and g of one side (l or f) of one factor."""

    mean: np.ndarray
    second: np.ndarray
    prob: np.ndarray
    prior: Optional[PointNormalPrior] = None
    kl: float = 0.0


@dataclass
class EBMFResult:
    """What :func:`ebmf` returns (float64 numpy).

    L, F : (n, K), (p, K) posterior means. L_var, F_var : posterior variances.
    L_prob, F_prob : posterior probabilities that an entry is non-zero.
    priors_L, priors_F : K fitted :class:`PointNormalPrior` each.
    tau : the fitted noise precision (1 / noise variance). elbo : the final ELBO.
    elbo_history : (steps,) the ELBO after each accepted greedy factor and each backfitting
        update of one factor: non-decreasing, up to rounding (data whose noise is within about
        1e-8 of Y's scale, where tau nears 1e16 / Y^2, has ELBO increments below the ELBO's own
        float64 error). n_factors : K. info : greedy_factors,
        backfit_sweeps, seed (the one used; drawn when None was passed).
    """

    L: np.ndarray
    F: np.ndarray
    L_var: np.ndarray
    F_var: np.ndarray
    L_prob: np.ndarray
    F_prob: np.ndarray
    priors_L: list
    priors_F: list
    tau: float
    elbo: float
    elbo_history: np.ndarray
    n_factors: int
    info: dict = field(default_factory=dict)

    def fitted(self) -> np.ndarray:
        """(n, p) E[L] E[F]^T, the posterior mean of the low-rank part."""
        return self.L @ self.F.T


def _design(function: str, name: str, covariates: Any, rows: int) -> np.ndarray:
    """(rows, 1 + c): an intercept column and the standardized covariates."""
    if covariates is None:
        return np.ones((rows, 1))
    Z = np.asarray(covariates) if not isinstance(covariates, np.ndarray) else covariates
    if Z.dtype.kind not in "iuf":
        raise TypeError(f"{function}: {name} must hold real numbers, got dtype {Z.dtype}")
    Z = Z.astype(np.float64)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2 or Z.shape[0] != rows:
        raise ValueError(f"{function}: {name} must have shape ({rows}, c) (one row per row of Y, or per column "
                         f"for col_covariates), got {Z.shape}")
    if not np.all(np.isfinite(Z)):
        raise ValueError(f"{function}: {name} contains NaN/inf values")
    spread = Z.std(axis=0)
    spread[spread == 0] = 1.0
    return np.hstack([np.ones((rows, 1)), (Z - Z.mean(axis=0)) / spread])


class _Model:
    def __init__(self, Y: np.ndarray, design_l: np.ndarray, design_f: np.ndarray):
        self.Y = Y
        self.n, self.p = Y.shape
        self.y2 = float(np.sum(Y * Y))
        self.design = (design_l, design_f)
        self.l: list[_Side] = []
        self.f: list[_Side] = []
        self.tau = 1.0

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        L = np.column_stack([s.mean for s in self.l]) if self.l else np.zeros((self.n, 0))
        F = np.column_stack([s.mean for s in self.f]) if self.f else np.zeros((self.p, 0))
        return L, F

    def expected_residual2(self) -> float:
        """E_q ||Y - L F^T||_F^2: the means' residual plus, per factor, the variance its
        independent sides add, each summed as such (the expanded form, ||Y||^2 - 2 <Y, L F^T> +
        ..., cancels to noise on nearly noiseless data: tau jumped to 1e301 and the ELBO fell)."""
        L, F = self.means()
        residual = self.Y - L @ F.T
        value = float(np.sum(residual * residual))
        for l, f in zip(self.l, self.f):
            var_l = float(np.sum(np.maximum(l.second - l.mean * l.mean, 0.0)))
            var_f = float(np.sum(np.maximum(f.second - f.mean * f.mean, 0.0)))
            value += float(l.mean @ l.mean) * var_f + var_l * float(f.mean @ f.mean) + var_l * var_f
        return value

    def update_tau(self) -> None:
        self.tau = self.n * self.p / max(self.expected_residual2(), 1e-300)

    def elbo(self) -> float:
        loglik = -0.5 * self.n * self.p * (_LOG_2PI - np.log(self.tau)) - 0.5 * self.tau * self.expected_residual2()
        return float(loglik - sum(s.kl for s in self.l) - sum(s.kl for s in self.f))

    def update(self, k: int, side: int) -> bool:
        """Refit q and g of side 0 (l_k) or 1 (f_k) of factor k; False when it came out zero."""
        mine, other = (self.l, self.f) if side == 0 else (self.f, self.l)
        partner = other[k]
        norm2 = float(np.sum(partner.second))
        if norm2 <= 0:
            return False
        L, F = self.means()
        # R_k^T-or-R_k times the partner's mean, without forming the residual.
        if side == 0:
            product = self.Y @ partner.mean - L @ (F.T @ partner.mean) + L[:, k] * float(F[:, k] @ partner.mean)
        else:
            product = self.Y.T @ partner.mean - F @ (L.T @ partner.mean) + F[:, k] * float(L[:, k] @ partner.mean)
        x = product / norm2
        s2 = np.full(x.shape, 1.0 / (self.tau * norm2))
        prior, loglik = _fit_prior(x, s2, self.design[side], mine[k].prior)
        if prior.null:
            mean = second = prob = np.zeros_like(x)
        else:
            _, mean, second, prob = _posterior(x, s2, prior.weights(self.design[side]), prior.variance)
        expected_log_normal = float(np.sum(-0.5 * (_LOG_2PI + np.log(s2)) - ((x - mean) ** 2 + second - mean * mean)
                                           / (2.0 * s2)))
        mine[k] = _Side(mean=mean, second=second, prob=prob, prior=prior, kl=expected_log_normal - loglik)
        return not prior.null

    def snapshot(self) -> tuple:
        return list(self.l), list(self.f), self.tau

    def restore(self, saved: tuple) -> None:
        self.l, self.f, self.tau = list(saved[0]), list(saved[1]), saved[2]

    def drop(self, k: int) -> None:
        del self.l[k], self.f[k]


def _leading_pair(R: np.ndarray, rng: np.random.Generator, iterations: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(u sqrt(s), v sqrt(s)) for the leading singular triplet (u, s, v) of R, by power iteration
    from a seeded start (O(n p) a step, where a full SVD would be O(n p min(n, p)))."""
    v = rng.standard_normal(R.shape[1])
    v /= np.linalg.norm(v)
    sigma = 0.0
    for _ in range(iterations):
        u = R @ v
        norm = np.linalg.norm(u)
        if norm == 0:
            break
        u /= norm
        v_new = R.T @ u
        sigma_new = float(np.linalg.norm(v_new))
        v = v_new / sigma_new
        if abs(sigma_new - sigma) <= 1e-10 * sigma_new:
            sigma = sigma_new
            break
        sigma = sigma_new
    else:
        u = R @ v / max(sigma, np.finfo(float).tiny)
    if sigma == 0:
        return 1e-3 * rng.standard_normal(R.shape[0]), 1e-3 * rng.standard_normal(R.shape[1])
    root = np.sqrt(sigma)
    return u * root, v * root


@_checks.constrained(max_factors=_checks.positive_int, max_iter=_checks.positive_int, tol=_checks.nonnegative_float,
                     seed=_checks.seed_argument)
def ebmf(Y: Any, max_factors: int = 10, *, row_covariates: Any = None, col_covariates: Any = None,
         max_iter: int = 500, tol: float = 1e-6, seed: Optional[int] = None) -> EBMFResult:
    """Fit EBMF (no covariates) or cEBMF (``row_covariates`` and/or ``col_covariates``) to Y by the
    greedy + backfitting algorithm (Wang & Stephens 2021; Denault et al., cEBMF): see the module
    docstring for the model.

    Parameters
    ----------
    Y : (n, p) array-like of real numbers, fully observed (no NaN).
    max_factors : the most factors the greedy phase adds (it stops earlier when a new factor does
        not raise the ELBO).
    row_covariates : None or (n, c) real covariates of the rows: the prior weight of l_ik is a
        logistic regression on them (cEBMF). col_covariates : None or (p, c') for f_jk.
    max_iter : the most iterations of each rank-1 greedy fit and of backfitting sweeps.
    tol : stop a rank-1 fit or the backfitting when one round raises the ELBO by less than
        tol * (1 + |ELBO|).
    seed : None or an int, seeding the power iteration that finds each greedy factor's start (the
        leading singular pair of the residual): an int makes fits reproducible.

    Returns
    -------
    :class:`EBMFResult`.

    Raises
    ------
    TypeError for non-numeric input; ValueError for shapes, NaN/inf or a constant-zero Y.
    """
    function = "ebmf"
    _checks.required(function, Y=Y)
    if hasattr(Y, "tocoo"):  # np.asarray would wrap it as a 0-d object array: "got dtype object"
        raise TypeError(f"{function}: Y is a sparse matrix; EBMF fits a dense, fully observed one (pass Y.toarray())")
    Y = np.asarray(Y)
    if Y.dtype.kind not in "iuf":
        raise TypeError(f"{function}: Y must hold real numbers, got dtype {Y.dtype}")
    Y = np.array(Y, dtype=np.float64)
    if Y.ndim != 2 or min(Y.shape) < 2:
        raise ValueError(f"{function}: Y must be an (n, p) matrix with n, p >= 2, got shape {Y.shape}")
    if not np.all(np.isfinite(Y)):
        raise ValueError(f"{function}: Y contains NaN/inf values (missing entries are not supported)")
    if not np.any(Y):
        raise ValueError(f"{function}: Y is all zeros; there is nothing to factor")
    seed = _checks.draw_seed() if seed is None else seed
    rng = np.random.default_rng(seed)
    model = _Model(Y, _design(function, "row_covariates", row_covariates, Y.shape[0]),
                   _design(function, "col_covariates", col_covariates, Y.shape[1]))
    model.update_tau()
    history = [model.elbo()]

    def converged(before: float, after: float) -> bool:
        return after - before <= tol * (1.0 + abs(after))

    # Greedy: one rank-1 fit of the residual at a time.
    for _ in range(max_factors):
        saved, before = model.snapshot(), history[-1]
        L, F = model.means()
        residual = Y - L @ F.T
        left, right = _leading_pair(residual, rng)
        sign = 1.0 if right[np.argmax(np.abs(right))] >= 0 else -1.0
        left, right = sign * left, sign * right
        model.l.append(_Side(left, left * left, np.ones_like(left)))
        model.f.append(_Side(right, right * right, np.ones_like(right)))
        k = len(model.l) - 1
        value, alive = -np.inf, True
        for _ in range(max_iter):
            alive = model.update(k, 1) and model.update(k, 0)
            if not alive:
                break
            model.update_tau()
            new = model.elbo()
            done = np.isfinite(value) and converged(value, new)
            value = new
            if done:
                break
        if not alive or not value > before + tol * (1.0 + abs(before)):
            model.restore(saved)
            break
        history.append(value)
    n_greedy = len(model.l)

    # Backfitting: every factor in turn, each of its updates monotone.
    sweeps = 0
    for sweeps in range(1, max_iter + 1 if model.l else 1):
        start = history[-1]
        k = 0
        while k < len(model.l):
            if not (model.update(k, 0) and model.update(k, 1)):
                model.drop(k)  # a zero factor adds nothing to the ELBO; dropping it keeps the value
                model.update_tau()
                history.append(model.elbo())
                continue
            model.update_tau()
            history.append(model.elbo())
            k += 1
        if converged(start, history[-1]) or not model.l:
            break

    L, F = model.means()
    K = len(model.l)
    stack = (lambda sides, attr, rows: np.column_stack([getattr(s, attr) for s in sides]) if sides
             else np.zeros((rows, 0)))
    L2, F2 = stack(model.l, "second", Y.shape[0]), stack(model.f, "second", Y.shape[1])
    return EBMFResult(L=L, F=F, L_var=np.maximum(L2 - L * L, 0.0), F_var=np.maximum(F2 - F * F, 0.0),
                      L_prob=stack(model.l, "prob", Y.shape[0]), F_prob=stack(model.f, "prob", Y.shape[1]),
                      priors_L=[s.prior for s in model.l], priors_F=[s.prior for s in model.f], tau=model.tau,
                      elbo=history[-1], elbo_history=np.asarray(history), n_factors=K,
                      info={"greedy_factors": n_greedy, "backfit_sweeps": sweeps, "seed": seed})
