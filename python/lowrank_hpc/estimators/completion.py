"""The matrix-completion estimator (:class:`MatrixCompletion`)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from .. import _backend
from ..ops import sampled_product
from ..recover import METHODS, implicit_als
from ..recover.als import FEEDBACKS, REG_SCALINGS
from ..recover.implicit_als import implicit_fold_in
from ..recover.completion_fit import (FOLD_IN_REG, PENALIZED_METHODS, CompletionSettings, PathPoint, auto_method,
                                      fit_completion)
from ..recover._driver import checkpoint_path
from ..recover.offsets import CENTERS, zero_offsets
from ..recover.soft_impute import check_distinct
from ._base import _backend_scope, _check_choice, _check_int, _check_nonnegative, _Estimator, _seed
from ._convert import _as_float, _check_index_range, _completion_entries, _coordinates, _entries, _rmse, _side

COMPLETION_METHODS = ("auto", "soft_impute", "als") + METHODS
# reg="auto" with feedback="implicit": implicit's default penalty (no held-out RMSE to choose by).
IMPLICIT_REG = 0.01
_SCALED_METHODS = ("scaled", "scaled_damped")
_AUTO_RANK_METHODS = ("auto", "soft_impute")


class MatrixCompletion(_Estimator):
    """Complete a partially observed (n1, n2) matrix with the model mu + a_i + b_j + (U V^T)_ij.

    Rows of the matrix are samples and columns are features: ``fit(X)`` takes a dense X with
    NaN for the missing entries, ``fit(rows, cols, vals, shape=...)`` the observed entries.
    New rows (2-D X with NaN) are folded in by a ridge least squares of their observed entries
    against ``V_`` (and a row offset), row by row, so each row's result does not depend on the others.

    The defaults are chosen for real data, which is neither exactly low rank nor centered:
    nuclear-norm regularized completion (which needs no exact rank: ``rank`` only bounds it)
    with its penalty chosen on a seeded tenth of the observed entries held out (``reg="auto"``),
    and an intercept plus row and column offsets. Soft-impute and ALS minimise that same
    objective (ALS's ridge on the factors is the nuclear norm); ``method="auto"`` solves it by
    ALS on large sparse matrices (1,000,000 observed entries or more, under 1% of the matrix),
    where soft-impute's steps creep (ratings of 138,000 x 27,000, 0.12% observed: held-out RMSE
    0.6411 against 0.6737, in 0.65x the time), and by soft-impute otherwise (on the four bundled
    real data sets ALS's held-out RMSE was 0.02% to 1.1% higher, on planted rank-4 matrices with
    row offsets and noise, 200 x 120, 30% observed, 3.2-3.7% higher). BENCHMARKS.md has the
    figures and times on real data sets.

    Parameters
    ----------
    rank : int >= 1, at most min(n1, n2): width of the factors. For "soft_impute" it is a bound:
        the penalty zeroes the weakest directions, so the fitted rank ``rank_`` may be lower;
        "auto" (soft-impute only) starts the bound at 10 and doubles it while the chosen penalty
        keeps every direction.
    method : "auto" (default): "als" from 1,000,000 observed entries when they are under 1% of
        the n1 x n2 matrix, else "soft_impute" (always with rank="auto"; feedback="implicit":
        "als"); ``method_`` says which ran. "soft_impute" (:func:`lowrank_hpc.recover.soft_impute`), "als"
        (:func:`lowrank_hpc.recover.als`) or a :func:`lowrank_hpc.recover.factored_gd` method on
        :class:`lowrank_hpc.sensing.EntrySampling`: "gd", "alternating", "scaled",
        "scaled_damped", "gd_rebalanced" (these fit without a penalty).
    reg : "auto" or a float >= 0, the penalty lambda of 1/2 ||P_Omega(X - model)||^2 +
        lambda/2 (||U||^2 + ||V||^2) (ALS: per ``reg_scaling``). "auto" walks lambda_max * 2^-k,
        k = 1..12, warm-started (up to 20 sweeps a point, fewer where the point meets the looser
        of tol and 1e-4; soft-impute fits the offsets with the factors there as in its final
        fit), on 90% of the entries, and stops after two points whose held-out RMSE is worse
        than the best so far; it keeps the lambda / lambda_max (and, see ``debias``, the refit)
        of least RMSE on the other 10% (seeded by ``random_state``) and refits on all entries;
        ``path_`` lists the points walked. k = 0 (lambda_max, where U V^T is zero) is a candidate too:
        the offsets alone, so data without low-rank structure get the offsets-only model
        (U_, V_ zeros, ``rank_`` 0, ``n_iter_`` 0: no solve runs). With fewer than 195 observed
        entries (a tenth is under 20) there is no path and lambda = lambda_max / 2. Folding in
        rows uses ``reg_`` as its ridge (0.1 for the gradient methods); after a refit (``debias``)
        against the penalized V, the row then mapped onto the refitted directions.
    reg_scaling : ALS only: "none", or "count" (each row's and column's ridge times its number
        of observations, ALS-WR); with method "auto", "count" runs ALS.
    center : "both" (mu + row and column offsets, default), "global" (mu only) or "none". The
        offsets are ridge regressions of vals minus the low-rank part, fitted jointly with the
        factors: soft-impute updates them after every sweep (the fit is the joint minimiser),
        the other methods alternate them with whole solves (at most 3 rounds).
    bias_reg : float >= 0, the offsets' ridge: each offset is shrunk towards 0 as if it had
        ``bias_reg`` more observations of the mean.
    max_iter, tol : the final solve's iteration limit and tolerance (relative change of the
        low-rank part; gradient methods: relative residual). 1e-3 is fancyimpute's threshold:
        on the real data sets a tighter one changes the held-out RMSE by less than 1e-4.
    init : None picks the method's default start (ALS draws V from ``random_state``, soft-impute
        a random orthonormal V, "scaled" and "scaled_damped" start from "spectral", the other
        gradient methods from "small"); else an (n2, rank) array (ALS's initial V), or "small",
        "spectral" or (U0, V0) arrays for the gradient methods (method "auto" takes None only).
    backend : "auto" (numpy -> CPU, CUDA arrays -> GPU), "cpu" or "cuda" (inputs are moved there
        and the solver runs under :func:`lowrank_hpc.use_backend`).
    random_state : None, an int >= 0, or a numpy RandomState/Generator: seeds the held-out
        split, the initial factors and the solvers' estimates; an int makes fits reproducible.
    verbose : show a progress bar (tqdm) for the final solve.
    checkpoint : None or a .npz path: the final solve saves its state there and a rerun with the
        same data and settings resumes it (the penalty path, being seeded, is walked again).
    callback : None or callback(iteration, info) called after each iteration of the final
        solve; info holds "loss", "relative_change", the factors "U" (n1, rank) and "V" (n2,
        rank) of the iterate's low-rank part U V^T (the same from every method) and the
        "offsets" (an :class:`lowrank_hpc.recover.offsets.Offsets`) in force.
    feedback : "explicit" (default: the values are the matrix's entries) or "implicit": the
        values are interaction counts or strengths >= 0 (a dense X: 0 or NaN for none) and every
        pair is a preference, 1 where the value is > 0, at confidence 1 + alpha * value (Hu,
        Koren and Volinsky 2008; what ``implicit`` and Spark's ``implicitPrefs`` fit). It needs
        method "auto" or "als" (:func:`lowrank_hpc.recover.implicit_als`, CG row solves) and fits no
        offsets (``center`` and ``bias_reg`` are not used; intercept_ and the biases are zeros);
        reg="auto" is implicit's 0.01. predict gives the scores, transform folds a row's
        interactions in by its exact row solve, and score is the negative RMSE of the scores
        against the preferences.
    alpha : implicit feedback's confidence slope, a float >= 0 (default 1.0).
    debias : "auto" (default), True or False. The penalty shrinks the directions it keeps, the
        signal's with the noise's; the refit of Mazumder, Hastie and Tibshirani (2010,
        "soft-impute+") keeps the fit's leading k directions and refits their singular values by
        least squares on the observed entries. "auto": with reg="auto" and at least 1,000
        held-out entries (10,000 observed), each path point also offers that refit, k chosen on
        the held-out entries, and the held-out RMSE decides between it and the penalized fit
        (``path_[i].refit_rank`` says which won); the final fit is refitted at the chosen k
        when the refit won. True: the path ranks the refits alone, and without a path (a fixed
        ``reg``, or under 195 entries) every direction the entries see is refitted; False: never
        (the penalized optimum itself). Explicit feedback with "auto", "soft_impute" or "als" only. It
        costs a pass over the entries of about 2 k^2 flops each per path point. The final solve's callback and checkpoint see the penalized
        factors; ``result_.info["refit_rank"]`` is set when the refit was applied.

    Attributes
    ----------
    U_ : (n1, rank) float32/float64 row factors, V_ : (n2, rank) column factors, numpy or CuPy
        (the backend of the fit), of the dtype of the observed values.
    intercept_ : float mu. row_bias_ : (n1,) a, col_bias_ : (n2,) b, of U_'s dtype and side
        (zeros where ``center`` leaves them out).
    method_ : the solver that ran ("soft_impute", "als", ...: ``method`` with "auto" resolved).
    reg_ : the penalty of the final fit (absolute, the solver's ``reg``). rank_ : the rank of
        U_ V_^T (soft-impute: nonzero singular values; others: ``rank``; after a refit: the
        directions refitted with a nonzero weight; 0 for the offsets-only model that reg="auto"
        may choose).
    path_ : list of :class:`lowrank_hpc.recover.completion_fit.PathPoint` (empty unless reg="auto").
    shape_ : (n1, n2). n_features_in_ : n2.
    n_iter_, converged_ : iterations of the final fit (every round of factors between offset
        updates) and whether it met ``tol`` with the offsets settled.
    train_rmse_ : float, RMSE of the model on the training entries.
    result_ : the :class:`lowrank_hpc.recover.RecoveryResult` of the final solve; after a refit
        its U, V are the refitted factors and its info adds refit_rank, singular_values (the
        refitted |weights|), effective_rank, penalized_V and refit_map (the solve's own U is
        ``U_pen`` with ``U_pen @ refit_map == U``, its history the penalized fit's).
    feature_names_in_ : (n2,) object array of X's column names, only when fit was given a
        DataFrame with str column names; predict(X), transform and score(X) then refuse a
        DataFrame whose columns differ, instead of taking them by position.

    Every method also accepts ``y=None`` by keyword and ignores it, as scikit-learn passes it.
    """

    def __init__(self, rank: Any = 20, method: str = "auto", reg: Any = "auto", reg_scaling: str = "none",
                 center: str = "both", bias_reg: float = 10.0, max_iter: int = 100, tol: float = 1e-3,
                 init: Any = None, backend: str = "auto", random_state: Any = None, verbose: bool = False,
                 checkpoint: Optional[str] = None, callback: Optional[Callable[[int, dict[str, Any]], Any]] = None,
                 feedback: str = "explicit", alpha: float = 1.0, debias: Any = "auto"):
        self.rank = rank
        self.method = method
        self.reg = reg
        self.reg_scaling = reg_scaling
        self.center = center
        self.bias_reg = bias_reg
        self.max_iter = max_iter
        self.tol = tol
        self.init = init
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose
        self.checkpoint = checkpoint
        self.callback = callback
        self.feedback = feedback
        self.alpha = alpha
        self.debias = debias

    def fit(self, X: Any, cols: Any = None, vals: Any = None, *, shape: Optional[tuple[int, int]] = None,
            y: Any = None) -> "MatrixCompletion":
        """Fit the offsets and U_, V_ to the observed entries.

        Parameters
        ----------
        X : either the (n1, n2) matrix, float32/float64 (other numbers become float64), NaN for
            a missing entry; or, 1-D, ``rows`` (nnz,) integer row indices of the observed entries.
        cols : (nnz,) integer column indices with 1-D X; ignored with 2-D X (scikit-learn passes
            its y here).
        vals : (nnz,) finite observed values with 1-D X (float32/float64 kept, else float64).
        shape : (n1, n2), required with 1-D X.
        y : ignored.

        Returns
        -------
        self, with U_, V_, intercept_, row_bias_, col_bias_, method_, reg_, rank_, path_, shape_,
        n_features_in_, n_iter_, converged_, train_rmse_, result_.

        Raises
        ------
        ValueError for a bad hyper-parameter (named), shapes, NaN in vals, inf in X, no observed
        entry, or (method "auto" or "soft_impute") a repeated (row, col) pair, counted in the entries given;
        IndexError for an index outside ``shape``; TypeError for non-numeric input.
        """
        function = f"{type(self).__name__}.fit"
        rank = self._check_params(function)
        seed = _seed(function, self.random_state)
        side = _side(self.backend, X, cols, vals)
        rows, cols, vals, shape = _completion_entries(function, X, cols, vals, shape, side)
        if rank != "auto" and rank > min(shape):
            # The wording names n_samples/n_features, which scikit-learn's checks look for.
            raise ValueError(f"{function}: rank={rank} exceeds min(n_samples, n_features) for a matrix with "
                             f"n_samples = {shape[0]}, n_features = {shape[1]}")
        _check_index_range(function, rows, cols, shape)
        if self.feedback == "implicit":
            self._fit_implicit(rows, cols, vals, shape, rank, seed, side)
            self._set_feature_names(X)  # with the fit's other attributes: a failed refit keeps the last fit's
            return self
        # Counted here: reg="auto" would report the repeats of its 90% split. "auto" checks whichever
        # solver it picks, so that the same entries are taken or refused at any density.
        if self.method in ("auto", "soft_impute"):
            check_distinct(function, rows, cols, shape)
        method = self.method
        if method == "auto":  # reg_scaling="count" is ALS-WR's penalty: ALS
            method = "als" if self.reg_scaling == "count" else auto_method(int(rows.shape[0]), shape, rank)
        init = self.init
        if init is None and method in METHODS:
            init = "spectral" if method in _SCALED_METHODS else "small"
        elif method == "als" and init is not None:
            init = _as_float(function, "init", init, side, 2)
        settings = CompletionSettings(method=method, rank=rank, reg=self.reg, reg_scaling=self.reg_scaling,
                                      center=self.center, bias_reg=float(self.bias_reg), max_iter=self.max_iter,
                                      tol=float(self.tol), init=init, seed=seed, progress=bool(self.verbose),
                                      checkpoint=self.checkpoint, callback=self.callback,
                                      debias=self._debias(function))
        with _backend_scope(self.backend):
            fitted = fit_completion(settings, rows, cols, vals, shape)
            result, offsets = fitted.result, fitted.offsets
            model = sampled_product(result.U, result.V, rows, cols) + offsets.at(rows, cols)
        xp = np if side == "cpu" else _backend.cupy_module()
        # Folding in uses the ridge of this fit, even if set_params changes reg before the next fit.
        fold_in_reg = fitted.reg if method in PENALIZED_METHODS else FOLD_IN_REG
        self._ridge = (fold_in_reg, method == "als" and self.reg_scaling == "count", float(self.bias_reg))
        self.method_ = method
        self.U_, self.V_ = result.U, result.V
        self.center_ = self.center
        self.intercept_ = float(offsets.intercept)
        self.row_bias_, self.col_bias_ = offsets.row, offsets.col
        self.reg_ = float(fitted.reg)
        self.rank_ = int(result.info.get("effective_rank", result.U.shape[1]))
        self.path_: list[PathPoint] = fitted.path
        self.shape_ = shape
        self.n_features_in_ = shape[1]
        self.n_iter_ = fitted.n_iter
        self.converged_ = fitted.converged
        self.train_rmse_ = _rmse(xp, model - vals)
        self._set_feature_names(X)  # a DataFrame's columns, checked against those of predict(X) and transform
        self.result_ = result
        self.feedback_, self.alpha_ = "explicit", None
        return self

    def _fit_implicit(self, rows: Any, cols: Any, vals: Any, shape: tuple[int, int], rank: int, seed: Any,
                      side: str) -> "MatrixCompletion":
        """fit for feedback="implicit": implicit_als on the entries, no offsets."""
        reg = IMPLICIT_REG if isinstance(self.reg, str) else float(self.reg)
        xp = np if side == "cpu" else _backend.cupy_module()
        interactions = vals != 0  # a dense X's zeros are no interaction: no entry to carry (negatives: named below)
        if not bool(interactions.all()):
            rows, cols, vals = rows[interactions], cols[interactions], vals[interactions]
        offsets = zero_offsets(xp, shape, vals.dtype)
        callback = None
        if self.callback is not None:  # the info keys of the explicit fits: factors "U", "V" and the offsets
            def callback(iteration: int, info: dict[str, Any]) -> Any:
                return self.callback(iteration, {**info, "U": info["X"], "V": info["Y"], "offsets": offsets})
        with _backend_scope(self.backend):
            result = implicit_als(rows, cols, vals, shape, rank, reg=reg, alpha=float(self.alpha),
                                  max_iter=self.max_iter, tol=float(self.tol), seed=seed,
                                  progress=bool(self.verbose), checkpoint=self.checkpoint, callback=callback)
        self._ridge = (reg, False, 0.0)
        self.U_, self.V_ = result.U, result.V
        self.center_ = "none"
        self.intercept_ = 0.0
        self.row_bias_, self.col_bias_ = offsets.row, offsets.col
        self.method_, self.reg_, self.rank_, self.path_ = "als", reg, rank, []
        self.shape_, self.n_features_in_ = shape, shape[1]
        self.n_iter_, self.converged_ = result.n_iter, result.converged
        self.feedback_, self.alpha_ = "implicit", float(self.alpha)
        self.train_rmse_ = _rmse(xp, self._predict_entries(rows, cols) - self._targets(vals))
        self.result_ = result
        return self

    def _targets(self, vals: Any) -> Any:
        """What the model predicts for observed values: the values, or (implicit feedback) the
        preferences, 1 where a value is > 0 and 0 elsewhere."""
        return (vals > 0).astype(vals.dtype) if self.feedback_ == "implicit" else vals

    def _debias(self, function: str) -> Any:
        """``debias`` as "auto", True or False (numpy's bools become Python's: the fit tests `is True`)."""
        if isinstance(self.debias, str) and self.debias == "auto":
            return "auto"
        if isinstance(self.debias, (bool, np.bool_)):
            return bool(self.debias)
        raise ValueError(f"{function}: debias must be 'auto', True or False, got {self.debias!r}")

    def _check_params(self, function: str) -> int:
        _check_choice(function, "method", self.method, COMPLETION_METHODS)
        if isinstance(self.rank, str) and self.rank == "auto":
            if self.method not in _AUTO_RANK_METHODS:
                raise ValueError(f"{function}: rank='auto' needs method 'auto' or 'soft_impute' (whose penalty "
                                 f"sets the rank); method {self.method!r} takes an integer rank >= 1")
            rank = "auto"
        else:
            rank = _check_int(function, "rank", self.rank)
        if not (isinstance(self.reg, str) and self.reg == "auto"):
            _check_nonnegative(function, "reg", self.reg)
        _check_choice(function, "reg_scaling", self.reg_scaling, REG_SCALINGS)
        if self.method == "auto" and self.reg_scaling != "none" and rank == "auto":
            raise ValueError(f"{function}: rank='auto' is set by soft-impute's penalty; reg_scaling="
                             f"{self.reg_scaling!r} runs ALS, which takes an integer rank >= 1")
        _check_choice(function, "center", self.center, CENTERS)
        _check_nonnegative(function, "bias_reg", self.bias_reg)
        _check_int(function, "max_iter", self.max_iter)
        _check_nonnegative(function, "tol", self.tol)
        if not isinstance(self.verbose, (bool, np.bool_)):
            raise ValueError(f"{function}: verbose must be a bool, got {self.verbose!r}")
        if self.method == "auto" and self.init is not None:
            raise ValueError(f"{function}: method 'auto' takes init=None (its solver depends on the data); pass "
                             "method='als' with an (n2, rank) init, or a gradient method")
        if isinstance(self.init, str) and (self.method not in METHODS or self.init not in ("small", "spectral")):
            raise ValueError(f"{function}: init {self.init!r} is not valid for method {self.method!r}; "
                             "ALS takes None or an (n2, rank) array, soft-impute None, the gradient methods None, "
                             "'small', 'spectral' or (U0, V0) arrays")
        if self.method == "soft_impute" and self.init is not None:
            raise ValueError(f"{function}: init must be None for method 'soft_impute' (it starts from a random "
                             "orthonormal V and warm-starts along its penalty path)")
        _check_choice(function, "backend", self.backend, _backend.BACKENDS)
        _check_choice(function, "feedback", self.feedback, FEEDBACKS)
        _check_nonnegative(function, "alpha", self.alpha)
        if self.feedback == "implicit" and (self.method not in ("auto", "als") or self.init is not None
                                            or self.reg_scaling != "none" or rank == "auto"):
            raise ValueError(f"{function}: feedback='implicit' fits by implicit ALS from a seeded start: it takes "
                             f"method 'auto' or 'als', an integer rank, init=None and reg_scaling='none' (got method="
                             f"{self.method!r}, rank={self.rank!r}, init={'an array' if self.init is not None else None},"
                             f" reg_scaling={self.reg_scaling!r})")
        debias = self._debias(function)
        if debias is True and (self.method not in ("auto",) + PENALIZED_METHODS or self.feedback == "implicit"):
            raise ValueError(f"{function}: debias=True refits the singular values that a penalty shrank: it takes "
                             f"method 'auto', 'soft_impute' or 'als' with explicit feedback (got "
                             f"method={self.method!r}, feedback={self.feedback!r})")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"{function}: callback must be callable or None, got {self.callback!r}")
        if self.checkpoint is not None:
            checkpoint_path(function, self.checkpoint)
        return rank

    def _new_rows(self, function: str, X: Any) -> Any:
        """2-D X validated against the fit: (n_samples, n_features_in_) float on the factors' side."""
        self._check_fitted(function.split(".")[-1])
        self._check_feature_names(function, X)
        X = _as_float(function, "X", X, self.result_.backend, 2)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"{function}: X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input")
        xp = self._xp()
        if bool(xp.isinf(X).any()):
            raise ValueError(f"{function}: X contains inf; NaN marks a missing entry, inf is not allowed")
        if self.feedback_ == "implicit" and bool((X < 0).any()):
            raise ValueError(f"{function}: X holds interaction strengths for feedback='implicit': they must be >= 0 "
                             "(0 or NaN: no interaction)")
        return X

    def _fold_in(self, X: Any) -> tuple[Any, Any]:
        """Row factors (n_samples, rank) and row offsets (n_samples,) of new rows: the ridge
        solutions of x_i,obs - mu - b_obs ~ V_obs u + a (a only with center="both"),
        penalty reg (times the row's count for reg_scaling "count") on u and bias_reg on a.
        Implicit feedback: each row's exact implicit-ALS solve against V_ (no offsets)."""
        if self.feedback_ == "implicit":
            return self._fold_in_implicit(X)
        xp = self._xp()
        dtype = np.result_type(X.dtype, self.V_.dtype)
        with_offset = self.center_ == "both"
        # A refitted model folds a row in against the penalized V, with the fit's penalty, and
        # maps it onto the refitted directions (recover.completion_fit._refitted: U_ = U_pen @ map).
        refit_map = self.result_.info.get("refit_map")
        V = self.result_.info["penalized_V"] if refit_map is not None else self.V_
        V = V.astype(dtype, copy=False)
        if with_offset:  # the row offset is one more coefficient, on a column of ones
            V = xp.concatenate([V, xp.ones((V.shape[0], 1), dtype)], axis=1)
        X = (X - self.intercept_ - self.col_bias_.astype(dtype, copy=False)).astype(dtype, copy=False)
        n_features, width = V.shape
        observed = ~xp.isnan(X)
        weights = observed.astype(dtype)
        # All the per-row Gram matrices V_obs^T V_obs in one GEMM against the outer products v_j v_j^T.
        outer = (V[:, :, None] * V[:, None, :]).reshape(n_features, width * width)
        gram = (weights @ outer).reshape(-1, width, width)
        reg, count_scaling, bias_reg = self._ridge
        ridge = reg * (weights.sum(axis=1) if count_scaling else xp.ones(X.shape[0], dtype))
        diagonal = xp.arange(width)
        gram[:, diagonal[:self.V_.shape[1]], diagonal[:self.V_.shape[1]]] += ridge[:, None]
        if with_offset:
            gram[:, width - 1, width - 1] += bias_reg
        rhs = xp.where(observed, X, 0) @ V
        # Pseudo-inverse by eigh: a row with fewer observations than rank and reg = 0 gets the
        # minimum-norm solution (a row with none gets zeros) instead of a singular-matrix error.
        eigenvalues, vectors = xp.linalg.eigh(gram)
        keep = eigenvalues > eigenvalues[:, -1:] * (width * np.finfo(dtype).eps)
        inverse = xp.where(keep, 1 / xp.where(keep, eigenvalues, 1), 0)
        projected = xp.einsum("nji,nj->ni", vectors, rhs) * inverse
        solution = xp.einsum("nij,nj->ni", vectors, projected)
        factors, row_offsets = (solution[:, :-1], solution[:, -1]) if with_offset else \
            (solution, xp.zeros(X.shape[0], dtype))
        if refit_map is not None:
            factors = factors @ refit_map.astype(dtype, copy=False)
        return factors, row_offsets

    def _fold_in_implicit(self, X: Any) -> tuple[Any, Any]:
        """Each row x of interaction strengths (NaN as 0) solved against V_ by implicit ALS's
        exact row solve (:func:`lowrank_hpc.recover.implicit_als.implicit_fold_in`); zero offsets."""
        xp = self._xp()
        dtype = np.result_type(X.dtype, self.V_.dtype)
        strengths = xp.where(xp.isnan(X), 0, X).astype(dtype, copy=False)
        rows, cols = xp.nonzero(strengths > 0)
        factors = implicit_fold_in(rows, cols, strengths[rows, cols], X.shape[0],
                                   xp.ascontiguousarray(self.V_.astype(dtype, copy=False)), reg=self._ridge[0],
                                   alpha=self.alpha_)
        return factors, xp.zeros(X.shape[0], dtype)

    def _complete(self, X: Any) -> Any:
        """(n_samples, n_features_in_) fold-in of X: mu + a + b_j + u V_^T."""
        factors, row_offsets = self._fold_in(X)
        return (factors @ self.V_.T.astype(factors.dtype, copy=False) + row_offsets[:, None]
                + self.col_bias_.astype(factors.dtype, copy=False) + self.intercept_)

    def _predict_entries(self, rows: Any, cols: Any) -> Any:
        """(nnz,) mu + a[rows] + b[cols] + (U_ V_^T)[rows, cols]."""
        return sampled_product(self.U_, self.V_, rows, cols) + self.intercept_ + self.row_bias_[rows] + \
            self.col_bias_[cols]

    def transform(self, X: Any, *, y: Any = None) -> Any:
        """Row factors of new rows: (n_samples, n_features_in_) X, NaN for missing ->
        (n_samples, rank) array of the dtype of X and V_ promoted, on the factors' side.

        Each row is folded in on its own by the ridge least squares of its observed entries,
        minus intercept_ and col_bias_, against V_ and (center="both") a row offset: ridge
        ``reg_`` on the factors (times the row's count for ALS with reg_scaling "count"; a
        fixed 0.1 for the gradient methods, which fit without one) and ``bias_reg`` on the
        offset. A row with no observed entry gives zeros.
        """
        X = self._new_rows(f"{type(self).__name__}.transform", X)
        return self._fold_in(X)[0]

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """fit(X).transform(X) for a 2-D X with NaN for missing: (n_samples, rank) row factors.

        These are the rows folded in against the final V_; they are close to, not equal to,
        U_, which ALS solved against the V of the previous iteration.
        """
        return self.fit(X).transform(X)

    def predict(self, X: Any, cols: Any = None, *, y: Any = None) -> Any:
        """Predicted entries.

        ``predict(rows, cols)``: rows, cols (nnz,) integer indices into the fitted (n1, n2)
        matrix -> (nnz,) values of the model there, intercept_ + row_bias_[rows] +
        col_bias_[cols] + (U_ V_^T)[rows, cols]; empty rows, cols give an empty array.
        ``predict(X)``: X (n_samples, n_features_in_), NaN for missing -> the completed
        (n_samples, n_features_in_) matrix intercept_ + a + col_bias_ + transform(X) @ V_^T
        (a the rows' folded-in offsets); observed entries are predicted too (not copied from
        X), so every entry comes from the same model.
        Outputs have the factors' dtype (promoted with X's) and side (numpy or CuPy).
        """
        function = f"{type(self).__name__}.predict"
        self._check_fitted("predict")
        if cols is None:
            return self._complete(self._new_rows(function, X))
        rows, cols = _coordinates(function, X, cols, self.result_.backend)
        _check_index_range(function, rows, cols, self.shape_)
        return self._predict_entries(rows, cols)

    def score(self, X: Any, cols: Any = None, vals: Any = None, *, y: Any = None) -> float:
        """Negative RMSE (higher is better, 0 is exact), a Python float.

        ``score(rows, cols, vals)``: over the given (nnz,) entries of the fitted matrix, e.g.
        held-out ones. ``score(X)``: over the observed (non-NaN) entries of the 2-D X
        (n_samples, n_features_in_), predicted by ``predict(X)``; since those rows are folded in
        from the same entries this measures how well V_ explains new rows, not held-out error.
        """
        function = f"{type(self).__name__}.score"
        self._check_fitted("score")
        xp = self._xp()
        if vals is None:
            X = self._new_rows(function, X)
            observed = ~xp.isnan(X)
            if not bool(observed.any()):
                raise ValueError(f"{function}: X has no observed entry (all values are NaN)")
            errors = (self._complete(X) - self._targets(X))[observed]
            return -_rmse(xp, errors)
        if cols is None:
            raise ValueError(f"{function}: vals needs rows (X) and cols")
        rows, cols, vals = _entries(function, X, cols, vals, self.result_.backend)
        _check_index_range(function, rows, cols, self.shape_)
        return -_rmse(xp, self._predict_entries(rows, cols) - self._targets(vals))

    def __sklearn_tags__(self):
        """scikit-learn's tags: NaN allowed in X (it marks missing entries), dense 2-D float input,
        no target, float32 and float64 preserved by transform. Imports scikit-learn: only it calls this."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=["float64", "float32"]),
                    input_tags=InputTags(allow_nan=True))
