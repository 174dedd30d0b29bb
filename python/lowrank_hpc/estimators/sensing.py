"""The matrix-sensing estimator (:class:`MatrixSensing`)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _backend, _checks
from ..recover import METHODS, factored_gd
from ._base import _backend_scope, _check_choice, _check_int, _check_nonnegative, _Estimator, _seed
from ._convert import _as_float, _rmse, _side

class MatrixSensing(_Estimator):
    """Recover a rank-``rank`` matrix M from linear measurements y = A(M) with
    :func:`lowrank_hpc.recover.factored_gd`.

    ``fit(op, y)`` takes a sensing operator of ``lowrank_hpc.sensing`` instead of a data matrix,
    so scikit-learn's ``check_estimator`` does not apply (its tags say so: it is skipped with a
    warning) and pipelines cannot feed it; get_params, set_params and clone work.

    Parameters
    ----------
    rank, method, symmetric, init, init_scale, step, damping, max_iter, tol : as for
        :func:`lowrank_hpc.recover.factored_gd` (method one of "gd", "alternating", "scaled",
        "scaled_damped", "gd_rebalanced"), except that max_iter must be >= 1 (a fit that
        returns its start is not a fit).
    backend : "auto" (numpy y -> CPU, CUDA y -> GPU), "cpu" or "cuda" (y is moved there).
    random_state : None, an int >= 0, or a numpy RandomState/Generator: seeds the initial
        factors and the step estimates.

    Attributes
    ----------
    U_ : (n1, rank), V_ : (n2, rank) float32/float64 factors (V_ is U_ when symmetric), numpy or
        CuPy, of y's dtype. The (n1, n2) matrix is not stored, since it may not fit where the
        factors do: :meth:`recovered_matrix` forms it.
    shape_ : the operator's (n1, n2). n_iter_, converged_ : as reported by the solver.
    result_ : the :class:`lowrank_hpc.recover.RecoveryResult`.
    """

    def __init__(self, rank: int = 10, method: str = "gd", symmetric: bool = False, init: Any = None,
                 init_scale: float = 1e-3, step: Optional[float] = None, damping: Optional[float] = None,
                 max_iter: int = 1000, tol: float = 1e-6, backend: str = "auto", random_state: Any = None):
        self.rank = rank
        self.method = method
        self.symmetric = symmetric
        self.init = init
        self.init_scale = init_scale
        self.step = step
        self.damping = damping
        self.max_iter = max_iter
        self.tol = tol
        self.backend = backend
        self.random_state = random_state

    def fit(self, op: Any, y: Any) -> "MatrixSensing":
        """Fit the factors to y ~ A(U V^T) (A(U U^T) when symmetric).

        Parameters
        ----------
        op : a ``lowrank_hpc.sensing`` operator of shape (n1, n2).
        y : (op.num_measurements,) finite measurements, float32/float64 (other numbers become float64).

        Returns
        -------
        self, with U_, V_, shape_, n_iter_, converged_, result_.

        Raises
        ------
        ValueError naming a bad hyper-parameter, or for a y of the wrong length or with NaN/inf;
        TypeError when op is not a sensing operator.
        """
        function = f"{type(self).__name__}.fit"
        _check_int(function, "rank", self.rank)
        _check_choice(function, "method", self.method, METHODS)
        if not isinstance(self.symmetric, (bool, np.bool_)):
            raise ValueError(f"{function}: symmetric must be a bool, got {self.symmetric!r}")
        _check_int(function, "max_iter", self.max_iter)
        _check_nonnegative(function, "tol", self.tol)
        _check_choice(function, "backend", self.backend, _backend.BACKENDS)
        seed = _seed(function, self.random_state)
        _checks.required(function, y=y)
        side = _side(self.backend, y)
        y = _as_float(function, "y", y, side, 1)
        with _backend_scope(self.backend):
            result = factored_gd(op, y, self.rank, symmetric=bool(self.symmetric), method=self.method,
                                 init=self.init, init_scale=self.init_scale, step=self.step, damping=self.damping,
                                 max_iter=self.max_iter, tol=self.tol, seed=seed)
        self.U_, self.V_ = result.U, result.V
        self.shape_ = tuple(op.shape)
        self.n_iter_ = result.n_iter
        self.converged_ = bool(result.converged)
        self.result_ = result
        return self

    def _check_operator(self, function: str, op: Any) -> None:
        if tuple(getattr(op, "shape", ())) != self.shape_:
            raise ValueError(f"{function}: op has shape {getattr(op, 'shape', None)}, but the estimator was fitted "
                             f"to shape {self.shape_}")

    def predict(self, op: Any) -> Any:
        """Measurements of the recovered matrix: op.forward_factored(U_, V_), (op.num_measurements,)
        of the factors' dtype and side. ``op`` must have the fitted shape (any measurements)."""
        function = f"{type(self).__name__}.predict"
        self._check_fitted("predict")
        self._check_operator(function, op)
        return op.forward_factored(self.U_, self.V_)

    def score(self, op: Any, y: Any) -> float:
        """Negative RMSE of the measurements, -sqrt(mean((A(U_ V_^T) - y)^2)), a Python float.

        With :class:`lowrank_hpc.sensing.EntrySampling` this is MatrixCompletion's score of the
        same entries. y : (op.num_measurements,) float measurements.
        """
        function = f"{type(self).__name__}.score"
        predicted = self.predict(op)
        y = _as_float(function, "y", y, self.result_.backend, 1)
        if not bool(self._xp().isfinite(y).all()):  # as fit refuses it: a NaN score would hide the cause
            raise ValueError(f"{function}: y contains NaN/inf")
        if y.shape != predicted.shape:
            raise ValueError(f"{function}: y has shape {tuple(y.shape)}, expected {tuple(predicted.shape)}")
        return -_rmse(self._xp(), predicted - y)

    def recovered_matrix(self) -> Any:
        """The (n1, n2) matrix U_ V_^T (U_ U_^T when symmetric), formed on each call."""
        self._check_fitted("recovered_matrix")
        return self.U_ @ self.V_.T

    def __sklearn_tags__(self):
        """scikit-learn's tags: fit takes an operator, not a 2-D X, so check_estimator skips this estimator."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=True),
                    input_tags=InputTags(two_d_array=False))
