"""The mixture matrix completion estimator (:class:`MixtureCompletion`)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _backend, _checks
from ..ops import sampled_product
from ..recover.mixture_completion import (DEFAULT_ANNEAL_ITER, DEFAULT_REPAIR_TRIALS, DEFAULT_RESTARTS,
                                          mixture_completion)
from ._base import _backend_scope, _check_choice, _check_int, _check_nonnegative, _Estimator, _seed
from ._convert import _check_index_range, _completion_entries, _coordinates, _entries, _rmse, _side


class MixtureCompletion(_Estimator):
    """Mixture matrix completion (Pimentel-Alarcon, NeurIPS 2018): each observed entry of an
    (n1, n2) matrix comes from one of K rank-``rank`` matrices; find the K matrices and which
    one explains each entry (:func:`lowrank_hpc.recover.mixture_completion`: annealed soft
    assignment, then the paper's alternation of nearest-component assignment and refits, then
    a repair of rows or columns stuck in a local minimum; every refit is one
    :func:`lowrank_hpc.recover.batched_als` call across restarts and components).

    ``fit(X)`` takes a dense X with NaN for the unobserved entries, ``fit(rows, cols, vals,
    shape=...)`` the observed entries. n_components=1 is plain completion: the factors of
    ``lowrank_hpc.recover.als(rows, cols, vals, shape, rank, reg, max_iter=max_iter, tol=tol,
    seed=random_state)`` (bit for bit).

    Parameters
    ----------
    n_components : K >= 1. rank : every component's rank, 1 <= rank <= min(n1, n2).
    reg : ALS ridge >= 0 (absolute; 1e-6 suits exactly low-rank data of unit scale).
    restarts : seeded starts run side by side; the one of least objective is kept. The problem
        is nonconvex: on small ones a fit can end in a local minimum that still reports
        ``converged_`` (which means the labels settled). Noiseless planted mixtures of 100 x 80,
        60% seen, K = 2: 2 of 4 at rank 3 and 1 of 4 at rank 2 ended at relative errors near 1
        with the default 8 restarts, and 32 restarts found them; at 120 x 100 and larger, 8
        sufficed. A final objective (``objective_history_[-1]``) far above the noise you expect
        is the sign: raise ``restarts``.
    max_iter : hard-assignment rounds (K = 1: ALS iterations). tol : K = 1: ALS tolerance.
    anneal_iter : soft-assignment steps before the hard rounds (0: none).
    repair_trials : label draws per stuck row or column in the repair (0: no repair).
    backend : "auto" (numpy -> CPU, CUDA arrays -> GPU), "cpu" or "cuda".
    random_state : None, an int >= 0 or a numpy RandomState/Generator.

    Attributes
    ----------
    U_ : (K, n1, rank), V_ : (K, n2, rank): component k is U_[k] @ V_[k].T (numpy or CuPy, the
        dtype of the observed values). factors_ : the K pairs [(U_[0], V_[0]), ...].
    rows_, cols_ : (nnz,) the observed entries' indices, labels_ : (nnz,) int64 the component of
        each (for fit(X): the non-NaN entries in row-major order).
    objective_history_ : (n_iter_,) float64 numpy, half the sum of squared residuals of each
        entry against its nearest component, per step. n_iter_, converged_ (labels stable).
    shape_, n_features_in_ (n2), result_ (:class:`lowrank_hpc.recover.MixtureResult`).
    """

    def __init__(self, n_components: int = 2, rank: int = 3, reg: float = 1e-6,
                 restarts: int = DEFAULT_RESTARTS, max_iter: int = 50, tol: float = 1e-6,
                 anneal_iter: int = DEFAULT_ANNEAL_ITER, repair_trials: int = DEFAULT_REPAIR_TRIALS,
                 backend: str = "auto", random_state: Any = None):
        self.n_components = n_components
        self.rank = rank
        self.reg = reg
        self.restarts = restarts
        self.max_iter = max_iter
        self.tol = tol
        self.anneal_iter = anneal_iter
        self.repair_trials = repair_trials
        self.backend = backend
        self.random_state = random_state

    def _check_params(self, function: str) -> None:
        _check_int(function, "n_components", self.n_components)
        _check_int(function, "rank", self.rank)
        _check_nonnegative(function, "reg", self.reg)
        _check_int(function, "restarts", self.restarts)
        _check_int(function, "max_iter", self.max_iter)
        _check_nonnegative(function, "tol", self.tol)
        for name in ("anneal_iter", "repair_trials"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{function}: {name} must be an integer >= 0, got {value!r}")
        _check_choice(function, "backend", self.backend, _backend.BACKENDS)

    def fit(self, X: Any, cols: Any = None, vals: Any = None, *, shape: Optional[tuple[int, int]] = None,
            y: Any = None) -> "MixtureCompletion":
        """Fit the K components and the labels of the observed entries.

        Parameters
        ----------
        X : the (n1, n2) matrix with NaN for unobserved entries, or (1-D) the rows of the entries.
        cols, vals : (nnz,) with 1-D X. shape : (n1, n2), required with 1-D X. y : ignored.

        Raises
        ------
        ValueError naming n_components (< 1), rank, reg, ... ; for shapes, NaN in vals, inf in X,
        no observed entry; IndexError for an index outside shape; TypeError for non-numeric input.
        """
        function = f"{type(self).__name__}.fit"
        self._check_params(function)
        seed = _seed(function, self.random_state)
        _checks.required(function, X=X)
        side = _side(self.backend, X, cols, vals)
        rows, cols, vals, shape = _completion_entries(function, X, cols, vals, shape, side)
        if self.rank > min(shape):
            raise ValueError(f"{function}: rank={self.rank} exceeds min(n_samples, n_features) = {min(shape)} "
                             f"for shape {shape}")
        _check_index_range(function, rows, cols, shape)
        with _backend_scope(self.backend):
            result = mixture_completion(
                rows, cols, vals, shape, int(self.n_components), int(self.rank), reg=float(self.reg),
                restarts=int(self.restarts), anneal_iter=int(self.anneal_iter), max_iter=int(self.max_iter),
                repair_trials=int(self.repair_trials), tol=float(self.tol), seed=seed)
        self.U_, self.V_ = result.U, result.V
        self.factors_ = result.factors
        self.rows_, self.cols_, self.labels_ = rows, cols, result.labels
        self.objective_history_ = result.history["objective"]
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.shape_ = shape
        self.n_features_in_ = shape[1]
        self.result_ = result
        return self

    def _entries_of_fit(self, function: str, rows: Any, cols: Any):
        rows, cols = _coordinates(function, rows, cols, self.result_.backend)
        _check_index_range(function, rows, cols, self.shape_)
        return rows, cols

    def predict(self, rows: Any, cols: Any, *, component: Optional[int] = None) -> Any:
        """Every component's value at (rows, cols): (K, nnz), or (nnz,) of one ``component``;
        empty rows, cols give (K, 0) (or (0,)), of U_'s dtype."""
        function = f"{type(self).__name__}.predict"
        self._check_fitted("predict")
        rows, cols = self._entries_of_fit(function, rows, cols)
        K = self.U_.shape[0]
        if component is not None:
            if isinstance(component, bool) or not isinstance(component, (int, np.integer)) or not 0 <= component < K:
                raise ValueError(f"{function}: component must be an integer in [0, {K}), got {component!r}")
            return sampled_product(self.U_[component], self.V_[component], rows, cols)
        xp = self._xp()
        nnz = rows.shape[0]
        return sampled_product(self.U_, self.V_, xp.tile(rows, K), xp.tile(cols, K),
                               offsets=xp.arange(K + 1, dtype=np.int64) * nnz).reshape(K, nnz)

    def assign(self, rows: Any, cols: Any, vals: Any) -> Any:
        """The nearest component of each given entry: (nnz,) int64."""
        function = f"{type(self).__name__}.assign"
        self._check_fitted("assign")
        rows, cols, vals = _entries(function, rows, cols, vals, self.result_.backend)
        _check_index_range(function, rows, cols, self.shape_)
        return self._xp().argmin((self.predict(rows, cols) - vals) ** 2, axis=0)

    def score(self, rows: Any, cols: Any, vals: Any) -> float:
        """Negative RMSE of the given entries against their nearest component (0 is exact)."""
        function = f"{type(self).__name__}.score"
        self._check_fitted("score")
        rows, cols, vals = _entries(function, rows, cols, vals, self.result_.backend)
        _check_index_range(function, rows, cols, self.shape_)
        xp = self._xp()
        errors = xp.abs(self.predict(rows, cols) - vals).min(axis=0)
        return -_rmse(xp, errors)

    def __sklearn_tags__(self):
        """scikit-learn's tags: NaN allowed in X (it marks unobserved entries), dense 2-D input, no
        target, no transform. Imports scikit-learn: only it calls this."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), transformer_tags=None,
                    input_tags=InputTags(allow_nan=True))
