"""The empirical Bayes matrix factorization estimator (:class:`EBMF`: EBMF and cEBMF)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..research.ebmf import ebmf as _fit_ebmf
from ._base import _check_int, _check_nonnegative, _Estimator, _seed


class EBMF(_Estimator):
    """Empirical Bayes matrix factorization Y ~ L F^T with point-normal priors on the entries of
    every factor (Wang & Stephens, JMLR 2021), and its covariate-moderated variant cEBMF (Denault
    et al.) when ``fit`` gets covariates: the prior's non-zero weight of each row's (column's)
    loading is a logistic regression on that row's (column's) covariates. Greedy factor addition
    then backfitting; the ELBO never decreases (:func:`lowrank_hpc.research.ebmf`, whose
    docstring states the model).

    Parameters
    ----------
    max_factors : the most factors (the greedy phase stops earlier when a factor adds nothing).
    max_iter : the most iterations of each greedy rank-1 fit and of backfitting sweeps.
    tol : relative ELBO change that ends a fit.
    random_state : None, an int >= 0, or a numpy RandomState/Generator (seeds the greedy starts).

    Attributes
    ----------
    L_ : (n_samples, K) posterior means of the loadings; L_var_ their posterior variances;
        L_prob_ posterior probabilities of being non-zero. F_, F_var_, F_prob_ : (n_features, K)
        the same for the factors. components_ : F_.T (K, n_features).
    noise_variance_ : 1 / tau, the fitted residual variance. elbo_ : the final ELBO;
    elbo_history_ : (steps,) the ELBO after each accepted greedy factor and each backfitting
        update (non-decreasing). n_factors_ : K. priors_L_, priors_F_ : the fitted priors
        (:class:`lowrank_hpc.research.PointNormalPrior`). n_features_in_. result_ : the
        :class:`lowrank_hpc.research.EBMFResult`.
    """

    def __init__(self, max_factors: int = 10, max_iter: int = 500, tol: float = 1e-6, random_state: Any = None):
        self.max_factors = max_factors
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, *, row_covariates: Any = None, col_covariates: Any = None) -> "EBMF":
        """Fit to X (n_samples, n_features), fully observed; ``row_covariates`` (n_samples, c) and
        ``col_covariates`` (n_features, c') moderate the priors (cEBMF). ``y`` is ignored."""
        name = type(self).__name__
        max_factors = _check_int(name, "max_factors", self.max_factors)
        max_iter = _check_int(name, "max_iter", self.max_iter)
        tol = _check_nonnegative(name, "tol", self.tol)
        seed = _seed(name, self.random_state)
        result = _fit_ebmf(X, max_factors, row_covariates=row_covariates, col_covariates=col_covariates,
                           max_iter=max_iter, tol=tol, seed=seed)
        self.result_ = result
        self.L_, self.L_var_, self.L_prob_ = result.L, result.L_var, result.L_prob
        self.F_, self.F_var_, self.F_prob_ = result.F, result.F_var, result.F_prob
        self.components_ = result.F.T
        self.noise_variance_ = 1.0 / result.tau
        self.elbo_, self.elbo_history_ = result.elbo, result.elbo_history
        self.n_factors_ = result.n_factors
        self.priors_L_, self.priors_F_ = result.priors_L, result.priors_F
        self.n_features_in_ = result.F.shape[0]
        return self

    def reconstruct(self) -> np.ndarray:
        """(n_samples, n_features) E[L] E[F]^T, the posterior mean of the low-rank signal."""
        self._check_fitted("reconstruct")
        return self.result_.fitted()

    def fit_transform(self, X: Any, y: Any = None, *, row_covariates: Any = None,
                      col_covariates: Optional[Any] = None) -> np.ndarray:
        """fit, then return L_ (n_samples, K)."""
        return self.fit(X, row_covariates=row_covariates, col_covariates=col_covariates).L_

    def __sklearn_tags__(self):
        """scikit-learn's tags: dense 2-D input, fully observed (no NaN), no target; fit_transform
        but no transform of new rows, so no transformer tags. Imports scikit-learn: only it calls this."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=None,
                    input_tags=InputTags(allow_nan=False))
