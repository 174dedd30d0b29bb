"""The Boolean matrix factorization estimator (:class:`BooleanMF`, Elbmf)."""
from __future__ import annotations

import time
from typing import Any, Optional

import numpy as np

from .. import _checks
from ..recover import elbmf as _elbmf
from ..recover._driver import LoopSettings
from ..recover.boolean_product import binarize, boolean_product, reconstruction_scores
from ._base import _backend_scope, _Estimator, _seed
from ._convert import _binary_matrix, _side


class BooleanMF(_Estimator):
    """Boolean matrix factorization X ~ W o H (OR of ANDs) of a 0/1 matrix by Elbmf (Dalleiger &
    Vreeken, NeurIPS 2022): real factors under the elastic-binary regularizer, minima at 0 and 1,
    advanced by proximal alternating (PALM / iPALM) steps whose l2 weight grows until the factors
    are binary, then rounded at 0.5 (:func:`lowrank_hpc.recover.boolean_mf`).

    Rows of X are samples (users, documents, genes), columns features (items, words, conditions).

    Parameters
    ----------
    n_components : k >= 1, the number of Boolean factors (tiles).
    l1, l2 : the regularizer's weights kappa and lambda (>= 0); l1 stays, l2 grows.
    reg_growth : c >= 1, iteration t uses lambda * c^t.
    inertia : 0 for PALM, in (0, 1) for inertial PALM (extrapolation weight beta).
    max_iter, tol : at most max_iter iterations; stop once the loss ||X - U V||_F^2 of the
        relaxed factors changes by less than tol (absolute).
    nonnegative : the non-negative prox (factors stay >= 0).
    backend : "auto" (numpy/scipy -> CPU, CUDA arrays / cupyx sparse -> GPU), "cpu" or "cuda".
    random_state : None, an int >= 0, or a numpy RandomState/Generator: seeds the Uniform[0, 1)
        start of the factors (an int makes fits reproducible).
    verbose : show a progress bar (tqdm) with the loss.
    time_limit : None, or seconds after which fit stops (a positive limit runs >= 1 iteration).

    Attributes
    ----------
    W_ : (n_samples, k) bool, H_ : (k, n_features) bool, the rounded factors, numpy or CuPy
        (the side of the fit). components_ : H_.
    n_iter_ : iterations run. converged_ : whether the tolerance was met.
    loss_curve_ : (n_iter_,) float64 numpy, ||X - U V||_F^2 of the relaxed factors per iteration.
    n_features_in_ : n_features. result_ : the :class:`lowrank_hpc.recover.RecoveryResult`
        (relaxed factors U (n, k), V (m, k)).
    """

    def __init__(self, n_components: int = 10, l1: float = _elbmf.DEFAULT_L1, l2: float = _elbmf.DEFAULT_L2,
                 reg_growth: float = _elbmf.DEFAULT_REG_GROWTH, inertia: float = 0.0,
                 max_iter: int = _elbmf.DEFAULT_MAX_ITER, tol: float = _elbmf.DEFAULT_TOL, nonnegative: bool = True,
                 backend: str = "auto", random_state: Any = None, verbose: bool = False,
                 time_limit: Optional[float] = None):
        self.n_components = n_components
        self.l1 = l1
        self.l2 = l2
        self.reg_growth = reg_growth
        self.inertia = inertia
        self.max_iter = max_iter
        self.tol = tol
        self.nonnegative = nonnegative
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.time_limit = time_limit

    def _settings(self, function: str) -> dict[str, Any]:
        """The hyper-parameters checked by the solver's declared constraints (one table)."""
        checked = {}
        for name in ("n_components", "l1", "l2", "reg_growth", "inertia", "max_iter", "tol", "nonnegative",
                     "time_limit"):
            checked[name] = _elbmf.BMF_CONSTRAINTS[name](function, name, getattr(self, name))
        _checks.flag(function, "verbose", self.verbose)
        _checks.one_of("auto", "cpu", "cuda")(function, "backend", self.backend)
        return checked

    def _side_of(self, X: Any) -> str:
        if self.backend == "auto" and type(X).__module__.startswith("cupyx"):
            return "cuda"
        return _side(self.backend, X)

    def fit(self, X: Any, y: Any = None) -> "BooleanMF":
        """Fit W_ and H_ to a 0/1 matrix.

        Parameters
        ----------
        X : (n_samples, n_features) 0/1 matrix: dense of any real or bool dtype (numpy, a list, a
            CUDA array), or scipy.sparse / cupyx.scipy.sparse with ones stored (never densified).
        y : ignored.

        Returns
        -------
        self, with W_, H_, components_, n_iter_, converged_, loss_curve_, n_features_in_, result_.

        Raises
        ------
        ValueError for entries other than 0/1 (the first one is named), NaN, an empty X or a bad
        hyper-parameter (named); TypeError for non-numeric X or mistyped hyper-parameters.
        """
        function = f"{type(self).__name__}.fit"
        settings = self._settings(function)
        seed = _seed(function, self.random_state)
        side = self._side_of(X)
        matrix = _binary_matrix(function, "X", X, side)
        _elbmf.check_has_ones(matrix, "X")
        with _backend_scope(self.backend):
            result = _elbmf.boolean_mf(matrix, settings["n_components"], l1=settings["l1"], l2=settings["l2"],
                                       reg_growth=settings["reg_growth"], inertia=settings["inertia"],
                                       nonnegative=settings["nonnegative"], max_iter=settings["max_iter"],
                                       tol=settings["tol"], seed=seed, progress=bool(self.verbose),
                                       time_limit=settings["time_limit"])
        self._fold_in_seed = seed
        self._matrix = matrix  # the fitted X as reconstruction_scores reads it (not pickled: see __getstate__)
        self._scores = None
        self.W_, self.H_ = result.info["W"], result.info["H"]
        self.components_ = self.H_
        self.n_iter_ = result.n_iter
        self.converged_ = bool(result.converged)
        self.loss_curve_ = np.asarray(result.history["loss"], dtype=np.float64)
        self.n_features_in_ = matrix.shape[1]
        self.result_ = result
        return self

    def transform(self, X: Any) -> Any:
        """Boolean row factors of new rows with H_ fixed: X (n_samples, n_features_in_) 0/1 ->
        (n_samples, k) bool on the fit's side. The rows' relaxed factors start from a seeded
        Uniform[0, 1) draw and take the same U half-steps as fit (V fixed at the fitted relaxed
        factor, same schedule, max_iter and tol), then are rounded at 0.5."""
        function = f"{type(self).__name__}.transform"
        self._check_fitted("transform")
        settings = self._settings(function)
        matrix = _binary_matrix(function, "X", X, self.result_.backend)
        if matrix.shape[1] != self.n_features_in_:
            raise ValueError(f"{function}: X has {matrix.shape[1]} features, but {type(self).__name__} is "
                             f"expecting {self.n_features_in_} features as input")
        # The fitted factors' k, not n_components: set_params after fit must not change the fold-in's shapes.
        k, xp = int(self.result_.V.shape[1]), matrix.call.xp
        U0, _ = _elbmf.initial_factors(self._fold_in_seed, 1, matrix.shape[0], 1, k, matrix.dtype, xp, False)
        Vt = xp.asarray(self.result_.V, dtype=matrix.dtype)[None]
        loop = LoopSettings(max_iter=settings["max_iter"], tol=settings["tol"], time_limit=settings["time_limit"],
                            description=function)
        result = _elbmf.solve(matrix, k, U0, xp.ascontiguousarray(Vt), l1=settings["l1"], l2=settings["l2"],
                              reg_growth=settings["reg_growth"], inertia=settings["inertia"],
                              nonnegative=settings["nonnegative"], settings=loop, digest="", batched=False,
                              started=time.perf_counter(), seed=self._fold_in_seed, update_v=False)
        return binarize(result.U)

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """fit(X) and the fitted (n_samples, k) bool W_."""
        return self.fit(X).W_

    def reconstruct(self) -> Any:
        """The Boolean product W_ o H_: (n_samples, n_features_in_) bool, formed on each call."""
        self._check_fitted("reconstruct")
        return boolean_product(self.W_, self.H_)

    def reconstruction_scores(self) -> dict[str, float]:
        """Recall, precision and F1 of W_ o H_ against the ones of the fitted X (with the counts
        behind them); a sparse X is read through its ones, never densified. A pickled or copied
        model does not carry X: it returns the scores computed when it was pickled."""
        self._check_fitted("reconstruction_scores")
        if self.__dict__.get("_matrix") is None:
            return dict(self._scores)
        return reconstruction_scores(self._matrix, self.W_, self.H_)

    def __getstate__(self) -> dict[str, Any]:
        """The attributes without the fitted X's wrapper (it holds a module, which pickle and
        deepcopy refuse); its reconstruction scores are computed once and kept instead."""
        state = dict(self.__dict__)
        matrix = state.pop("_matrix", None)
        if matrix is not None:
            state["_scores"] = reconstruction_scores(matrix, self.W_, self.H_)
        return state

    def __sklearn_tags__(self):
        """scikit-learn's tags: 0/1 input, dense or sparse, no target; transform gives bool
        factors whatever X's dtype (so no dtype is preserved)."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=[]), input_tags=InputTags(sparse=True))
