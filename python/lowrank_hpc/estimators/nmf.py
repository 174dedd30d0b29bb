"""Non-negative matrix factorization (:class:`NMF`): a drop-in for scikit-learn's
``sklearn.decomposition.NMF`` (1.9) on the library's kernels, with missing entries and the
alternating updates with ReLU decoding of Li, Liang & Risteski as extras."""
from __future__ import annotations

import functools
import math
import numbers
import sys
import warnings
from typing import Any, Optional

import numpy as np

from .._arrays import for_backend, host_array, is_device_array, to_numpy
from .._backend import cupy_module
from ..recover import nmf as _nmf
from ._base import _backend_scope, _Estimator, _not_fitted
from ._convert import _side


class ConvergenceWarning(UserWarning):
    """max_iter iterations ran before the tolerance was met (scikit-learn's warning of the same
    name; when scikit-learn is loaded the warning raised is also an instance of its class)."""


@functools.lru_cache(maxsize=None)
def _with_sklearn_warning(sklearn_class: type) -> type:
    return type("ConvergenceWarning", (ConvergenceWarning, sklearn_class), {"__module__": "lowrank_hpc.estimators"})


def _convergence_warning() -> type:
    exceptions = sys.modules.get("sklearn.exceptions")
    return ConvergenceWarning if exceptions is None else _with_sklearn_warning(exceptions.ConvergenceWarning)


_INITS = ("random", "nndsvd", "nndsvda", "nndsvdar", "custom")
_SOLVERS = ("cd", "mu", "alternating_relu")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class NMF(_Estimator):
    """Non-negative matrix factorization X ~ W H, W (n_samples, k) >= 0, H (k, n_features) >= 0,
    minimising scikit-learn's objective

        beta_div(X, W H) + alpha_W l1_ratio n_features ||W||_1 + alpha_H l1_ratio n_samples ||H||_1
        + 1/2 alpha_W (1 - l1_ratio) n_features ||W||_F^2 + 1/2 alpha_H (1 - l1_ratio) n_samples ||H||_F^2

    with the same constructor arguments, defaults, attributes and methods as
    ``sklearn.decomposition.NMF``: the same random_state gives scikit-learn's initialisation, and
    each solver runs scikit-learn's iteration and stopping rule, on the library's kernels (HALS
    sweep kernel on CPU/OpenMP or CUDA; the vendor GEMM; the sampled-product and sparse kernels
    for sparse X).

    Beyond scikit-learn:

    - missing entries: NaN in a dense X (or ``mask=`` to fit/transform, True where observed)
      are not observed, and every solver minimises the loss over the observed entries only
      (weighted NMF); ``inverse_transform`` gives the completed matrix and :meth:`score` the
      error on held-out entries. inf is an error.
    - ``solver="alternating_relu"``: the alternating updates with ReLU decoding of Li, Liang &
      Risteski (NeurIPS 2016; see :class:`lowrank_hpc.recover.nmf._AlternatingRelu` for the
      update and the constants): weights decoded as max(H^+ x - relu_threshold, 0), features
      moved by relu_step towards the pair-correlation estimate. It needs a start close to the
      planted features (an ``init`` or ``init="custom"``); ``tol`` bounds the relative change of
      H per iteration.
    - ``backend``: "auto" (numpy/scipy -> CPU, CuPy/cupyx -> GPU), "cpu" or "cuda".
    - ``sweeps``: HALS coordinate sweeps per half-step (cd). 1 (the default) is scikit-learn's
      iteration, the same iterates; an int S runs S sweeps per pair of GEMMs; "auto" is
      accelerated HALS (Gillis & Glineur 2012): up to 1 + 0.5 rho sweeps (rho = 1 + the GEMMs'
      cost over one sweep's), stopping once a sweep changes each row by at most 0.1 of the first
      sweep's change, and extrapolates between iterations with restarts (Ang & Gillis 2019: each
      factor's half-step runs against the other's max(F + beta (F - F_previous), 0), beta grown
      while the objective falls and cut after a rise; the factors reported are that
      non-negative pair, and ``loss_curve_`` may rise at a restart). Far fewer GEMMs reach the
      same loss (bench/bench_nmf.py: scikit-learn's loss after 200 iterations in 17-27 on the
      benchmark's images and sparse matrix); scikit-learn's violation stopping rule reads the
      first sweep of each half-step. With solver="mu" and the
      Frobenius loss the same setting repeats each factor's multiplicative update against the
      same products with X (accelerated MU, same authors). "auto" also computes the nndsvd*
      initialisations fast (float32 products, power iterations stopped once the top-k singular
      subspace holds still: scikit-learn's start to ~1e-3 when the top k singular values stand
      clear of the rest, its loss to rounding otherwise; recover.nmf.randomized_svd); 1 or an
      int keep scikit-learn's initialisation exactly.

    Parameters
    ----------
    n_components : int >= 1, None or "auto" (n_features; with init="custom", H's rows).
    init : None, "random", "nndsvd", "nndsvda", "nndsvdar" or "custom" (W and H given to fit).
    solver : "cd" (coordinate descent, Frobenius), "mu" (multiplicative updates) or
        "alternating_relu".
    beta_loss : "frobenius", "kullback-leibler", "itakura-saito" or a number (mu only).
    tol, max_iter, random_state, alpha_W, alpha_H, l1_ratio, verbose, shuffle : as scikit-learn.
    backend, sweeps, relu_threshold, relu_step : see above.

    Attributes
    ----------
    components_ : (n_components_, n_features_in_) H, numpy or CuPy (the side of the fit).
    n_components_, n_features_in_, n_iter_ : ints.
    reconstruction_err_ : float, sqrt(2 beta_div(X, W H)) (||X - W H||_F for Frobenius), over the
        observed entries when some are missing.
    loss_curve_ : (n_iter_,) float64, beta_div after each iteration (NaN where the solver did not
        evaluate it: mu evaluates it every 10 iterations).
    feature_names_in_ : (n_features_in_,) object array of X's column names, only when fit was
        given a DataFrame with str column names; transform and score then refuse a DataFrame
        whose columns differ (scikit-learn's ValueError), instead of taking them by position.
    """

    def __init__(self, n_components: Any = "auto", *, init: Optional[str] = None, solver: str = "cd",
                 beta_loss: Any = "frobenius", tol: float = 1e-4, max_iter: int = 200, random_state: Any = None,
                 alpha_W: float = 0.0, alpha_H: Any = "same", l1_ratio: float = 0.0, verbose: int = 0,
                 shuffle: bool = False, backend: str = "auto", sweeps: Any = 1, relu_threshold: float = 0.0,
                 relu_step: float = 0.5):
        self.n_components = n_components
        self.init = init
        self.solver = solver
        self.beta_loss = beta_loss
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.alpha_W = alpha_W
        self.alpha_H = alpha_H
        self.l1_ratio = l1_ratio
        self.verbose = verbose
        self.shuffle = shuffle
        self.backend = backend
        self.sweeps = sweeps
        self.relu_threshold = relu_threshold
        self.relu_step = relu_step

    # ------------------------------------------------------------------ checks
    def _check_params(self, function: str) -> float:
        def fail(name: str, wanted: str) -> None:
            raise ValueError(f"{function}: the {name!r} parameter of NMF must be {wanted}. Got "
                             f"{getattr(self, name)!r} instead.")

        k = self.n_components
        if not (k is None or (isinstance(k, str) and k == "auto") or (
                isinstance(k, numbers.Integral) and not isinstance(k, bool) and k >= 1)):
            fail("n_components", "an int in the range [1, inf), None or 'auto'")
        if not (self.init is None or (isinstance(self.init, str) and self.init in _INITS)):
            fail("init", f"one of {_INITS} or None")
        if not (isinstance(self.solver, str) and self.solver in _SOLVERS):
            fail("solver", f"one of {_SOLVERS}")
        if not ((isinstance(self.beta_loss, str) and self.beta_loss in _nmf.BETA_NAMES) or (
                _is_real(self.beta_loss) and math.isfinite(self.beta_loss))):
            fail("beta_loss", f"one of {tuple(_nmf.BETA_NAMES)} or a finite real number")
        if not (_is_real(self.tol) and self.tol >= 0):
            fail("tol", "a float in the range [0, inf)")
        if not (isinstance(self.max_iter, numbers.Integral) and not isinstance(self.max_iter, bool)
                and self.max_iter >= 1):
            fail("max_iter", "an int in the range [1, inf)")
        # Finite: inf (or NaN) reached the kernels as NaN penalties (cd: a C++ error naming neither;
        # mu: NaN factors returned with a warning).
        if not (_is_real(self.alpha_W) and 0 <= self.alpha_W < math.inf):
            fail("alpha_W", "a float in the range [0, inf)")
        if not ((isinstance(self.alpha_H, str) and self.alpha_H == "same") or (
                _is_real(self.alpha_H) and 0 <= self.alpha_H < math.inf)):
            fail("alpha_H", "a float in the range [0, inf) or 'same'")
        if not (_is_real(self.l1_ratio) and 0 <= self.l1_ratio <= 1):
            fail("l1_ratio", "a float in the range [0, 1]")
        if not (isinstance(self.verbose, (bool, numbers.Integral))):
            fail("verbose", "an int or a bool")
        if not isinstance(self.shuffle, (bool, np.bool_)):
            fail("shuffle", "a bool")
        # Checked here, as scikit-learn does, also where no draw reads it (init="custom", no shuffle).
        _nmf.rng_of(self.random_state, function)
        if not (isinstance(self.backend, str) and self.backend in ("auto", "cpu", "cuda")):
            fail("backend", "one of ('auto', 'cpu', 'cuda')")
        if not ((isinstance(self.sweeps, str) and self.sweeps == "auto") or (
                isinstance(self.sweeps, numbers.Integral) and not isinstance(self.sweeps, bool) and self.sweeps >= 1)):
            fail("sweeps", "an int in the range [1, inf) or 'auto'")
        if not (_is_real(self.relu_threshold) and self.relu_threshold >= 0):
            fail("relu_threshold", "a float in the range [0, inf)")
        if not (_is_real(self.relu_step) and 0 < self.relu_step <= 1):
            fail("relu_step", "a float in the range (0, 1]")
        beta = _nmf.beta_value(self.beta_loss)
        if self.solver != "mu" and beta != 2:
            raise ValueError(f"{function}: Invalid beta_loss parameter: solver {self.solver!r} does not handle "
                             f"beta_loss = {self.beta_loss!r}")
        if self.solver == "mu" and self.init == "nndsvd":
            warnings.warn("The multiplicative update ('mu') solver cannot update zeros present in the "
                          "initialization, and so leads to poorer results when used jointly with init='nndsvd'. "
                          "You may try init='nndsvda' or init='nndsvdar' instead.", UserWarning, stacklevel=3)
        return beta

    def _side_of(self, X: Any) -> str:
        if self.backend == "auto" and type(X).__module__.startswith("cupyx"):
            return "cuda"
        return _side(self.backend, X)

    def _data(self, function: str, X: Any, mask: Any, side: str, fitted: bool) -> _nmf.NmfData:
        """X validated as scikit-learn validates it (float32/float64 kept, other numbers to float64,
        2-D, not empty, finite apart from NaN, non-negative), with its missing entries."""
        call = for_backend(function, side)
        xp = call.xp
        if X is None:
            raise ValueError(f"{function}: X is None; pass a 2-D array or a scipy.sparse matrix")
        if _nmf.is_sparse(X):
            on_device = type(X).__module__.startswith("cupyx")
            if on_device and side == "cpu":
                X = X.get()
            elif side == "cuda" and not on_device:
                import cupyx.scipy.sparse as device_sparse

                X = device_sparse.csr_matrix(X.tocsr())
            X = X.tocsr()
            if X.dtype.kind == "c":
                raise ValueError(f"{function}: complex data not supported")
            if X.dtype not in (np.float32, np.float64):
                X = X.astype(np.float64)
            if X.ndim != 2:
                raise ValueError(f"{function}: expected a 2-D matrix, got shape {X.shape}")
            values = X.data
            self._check_shape(function, X.shape, fitted)
            self._check_values(function, xp, values, allow_nan=False)
            if mask is not None:  # the observed entries' values, implicit zeros included (read on the host)
                rows, cols = self._mask(function, mask, X.shape, np)
                host = X.get() if type(X).__module__.startswith("cupyx") else X
                vals = np.asarray(host[rows, cols], dtype=X.dtype).ravel()
                if rows.shape[0] == 0:
                    raise ValueError(f"{function}: mask marks no entry of X as observed")
                return _nmf.NmfData(call, observed=(xp.asarray(rows), xp.asarray(cols), xp.asarray(vals)),
                                    shape=X.shape)
            return _nmf.NmfData(call, X)
        if is_device_array(X):
            cupy = cupy_module()
            array = cupy.asarray(X) if hasattr(X, "__cuda_array_interface__") else cupy.from_dlpack(X)
            array = array.get() if side == "cpu" else array
        else:
            try:
                array = host_array(function, "X", X)  # pandas' nullable columns: pd.NA as NaN (missing)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{function}: X cannot be read as a numeric array ({error})") from None
            if side == "cuda":
                array = cupy_module().asarray(array)
        if array.dtype.kind == "c":
            raise ValueError(f"{function}: Complex data not supported")
        if array.dtype.kind not in "biuf":
            array = array.astype(np.float64)  # numpy's TypeError / ValueError for what is not a number
        if array.ndim != 2:
            extra = " Reshape your data either using array.reshape(-1, 1) if your data has a single feature or " \
                    "array.reshape(1, -1) if it contains a single sample." if array.ndim == 1 else ""
            raise ValueError(f"{function}: Expected 2D array, got {array.ndim}D array instead.{extra}")
        self._check_shape(function, array.shape, fitted)
        dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.dtype(np.float64)
        array = xp.ascontiguousarray(array, dtype=dtype)
        missing = xp.isnan(array)
        any_missing = bool(missing.any())
        self._check_values(function, xp, array, allow_nan=True)
        if mask is None and not any_missing:
            return _nmf.NmfData(call, array)
        observed = ~missing
        if mask is not None:
            rows, cols = self._mask(function, mask, array.shape, xp)
            chosen = xp.zeros(array.shape, dtype=bool)
            chosen[rows, cols] = True
            observed &= chosen
        rows, cols = xp.nonzero(observed)
        if rows.shape[0] == 0:
            raise ValueError(f"{function}: X has no observed entry (all values are NaN or masked)")
        return _nmf.NmfData(call, observed=(rows, cols, xp.ascontiguousarray(array[rows, cols])),
                            shape=array.shape)

    def _check_shape(self, function: str, shape: tuple, fitted: bool) -> None:
        n, m = (int(s) for s in shape)
        if m == 0:
            raise ValueError(f"{function}: Found array with 0 feature(s) (shape={(n, m)}) while a minimum of 1 is "
                             "required.")
        if n == 0:
            raise ValueError(f"{function}: Found array with 0 sample(s) (shape={(n, m)}) while a minimum of 1 is "
                             "required.")
        if fitted and m != self.n_features_in_:
            raise ValueError(f"{function}: X has {m} features, but NMF is expecting {self.n_features_in_} features "
                             "as input")

    @staticmethod
    def _check_values(function: str, xp: Any, values: Any, allow_nan: bool) -> None:
        if values.size == 0:
            return
        if bool(xp.isinf(values).any()):
            raise ValueError(f"{function}: Input X contains infinity or a value too large for {values.dtype}; NaN "
                             "marks a missing entry, inf is not allowed")
        if not allow_nan and bool(xp.isnan(values).any()):
            raise ValueError(f"{function}: Input X contains NaN; a sparse X cannot mark missing entries by NaN "
                             "(pass mask= for the observed entries)")
        smallest = xp.nanmin(values) if allow_nan else values.min()
        if bool(smallest < 0):
            raise ValueError(f"{function}: Negative values in data passed to NMF (input X)")

    @staticmethod
    def _mask(function: str, mask: Any, shape: tuple, xp: Any) -> tuple[Any, Any]:
        """(rows, cols) of the observed entries: mask is a boolean (n, m) array (True = observed),
        dense or scipy.sparse."""
        if _nmf.is_sparse(mask):
            coo = mask.tocoo()
            keep = coo.data != 0
            rows, cols, mshape = coo.row[keep], coo.col[keep], coo.shape
        else:
            array = to_numpy(mask) if is_device_array(mask) else host_array(function, "mask", mask, indices=True)
            if array.dtype != bool:
                raise TypeError(f"{function}: mask must be a boolean array (True where X is observed), got dtype "
                                f"{array.dtype}")
            mshape = array.shape
            rows, cols = np.nonzero(array)
        if tuple(mshape) != tuple(shape):
            raise ValueError(f"{function}: mask has shape {tuple(mshape)} but X has shape {tuple(shape)}")
        return xp.asarray(rows, dtype=np.int64), xp.asarray(cols, dtype=np.int64)

    def _penalty(self, n: int, m: int) -> _nmf.Penalty:
        alpha_W = float(self.alpha_W)
        alpha_H = alpha_W if isinstance(self.alpha_H, str) else float(self.alpha_H)
        ratio = float(self.l1_ratio)
        for name, alpha, size, axis in (("alpha_W", alpha_W, m, "columns"), ("alpha_H", alpha_H, n, "rows")):
            if not math.isfinite(size * alpha):  # 1e308 times the data's size
                raise ValueError(f"NMF: {name} = {alpha!r} times the data's {size} {axis} overflows float64; "
                                 "pass a smaller penalty")
        return _nmf.Penalty(l1_W=m * alpha_W * ratio, l1_H=n * alpha_H * ratio, l2_W=m * alpha_W * (1 - ratio),
                            l2_H=n * alpha_H * (1 - ratio))

    @staticmethod
    def _check_factor(function: str, name: str, A: Any, shape: tuple, dtype: Any) -> np.ndarray:
        array = to_numpy(A)
        if array.ndim != 2:
            raise ValueError(f"{function}: {name} must be 2-D, got shape {array.shape}")
        for axis in (0, 1):
            if shape[axis] != "auto" and array.shape[axis] != shape[axis]:
                which = "first" if axis == 0 else "second"
                raise ValueError(f"Array with wrong {which} dimension passed to NMF ({name}). Expected "
                                 f"{shape[axis]}, but got {array.shape[axis]}.")
        if array.dtype.kind not in "biuf" or not np.isfinite(array).all():
            raise ValueError(f"{function}: {name} must hold finite numbers")
        if (array < 0).any():
            raise ValueError(f"Negative values in data passed to NMF ({name})")
        if array.max() == 0:
            raise ValueError(f"Array passed to NMF ({name}) is full of zeros.")
        if array.dtype != dtype:
            raise TypeError(f"{name} should have the same dtype as X. Got {name}.dtype = {array.dtype}.")
        return array

    # ------------------------------------------------------------------ fitting
    def _fit(self, function: str, X: Any, W: Any, H: Any, mask: Any, update_H: bool) -> dict:
        beta = self._check_params(function)
        side = self._side_of(X)
        data = self._data(function, X, mask, side, fitted=not update_H)
        n, m = data.shape
        if beta <= 0:
            smallest = float(data.vals.min()) if data.sparse else float(data.xp.nanmin(data.dense))
            if smallest == 0 or (data.sparse and not data.masked and data.nnz < n * m):
                raise ValueError("When beta_loss <= 0 and X contains zeros, the solver may diverge. Please add "
                                 "small values to X, or use a positive beta_loss.")
        k = self.n_components
        if update_H:
            if self.init == "custom":
                if H is None or W is None:
                    raise ValueError(f"{function}: init='custom' needs W and H")
                shape_k = "auto" if k == "auto" else (m if k is None else k)
                H0 = self._check_factor(function, "input H", H, (shape_k, m), data.dtype)
                W0 = self._check_factor(function, "input W", W, (n, H0.shape[0]), data.dtype)
                k = H0.shape[0]
            else:
                if W is not None or H is not None:
                    warnings.warn("When init!='custom', provided W or H are ignored. Set  init='custom' to use them "
                                  "as initialization.", RuntimeWarning, stacklevel=3)
                k = m if k in (None, "auto") else int(k)
                W0, H0 = _nmf.initialize(data, k, self.init, self.random_state,
                                         fast=isinstance(self.sweeps, str) and self.sweeps == "auto")
        else:
            k = self.n_components_
            H0 = data.call.to_host(self.components_)
            if self.solver == "mu":
                W0 = np.full((n, k), np.sqrt(data.mean / k), dtype=data.dtype)
            else:
                W0 = np.zeros((n, k), dtype=data.dtype)
        xp = data.xp
        W0 = xp.array(np.ascontiguousarray(W0, dtype=data.dtype))
        Ht0 = xp.array(np.ascontiguousarray(np.asarray(H0, dtype=data.dtype).T))
        with _backend_scope(self.backend):
            outcome = _nmf.fit(data, W0, Ht0, solver=self.solver, beta=beta, tol=float(self.tol),
                               max_iter=int(self.max_iter), penalty=self._penalty(n, m), update_H=update_H,
                               shuffle=bool(self.shuffle), random_state=self.random_state, sweeps=self.sweeps if isinstance(self.sweeps, str) else int(self.sweeps),
                               verbose=bool(self.verbose), relu_threshold=float(self.relu_threshold),
                               relu_step=float(self.relu_step), description=function)
        if outcome["n_iter"] == self.max_iter and self.tol > 0 and outcome["stop_reason"] != "converged":
            warnings.warn(f"Maximum number of iterations {self.max_iter} reached. Increase it to improve "
                          "convergence.", _convergence_warning(), stacklevel=3)
        outcome["data"], outcome["beta"] = data, beta
        return outcome

    def fit_transform(self, X: Any, y: Any = None, W: Any = None, H: Any = None, *, mask: Any = None) -> Any:
        """Learn the factorization of X and return W (n_samples, n_components_).

        Parameters
        ----------
        X : (n_samples, n_features) non-negative: dense (numpy, a list, a DataFrame, a CUDA array;
            NaN marks a missing entry) or scipy.sparse / cupyx sparse (stored entries; implicit
            zeros are observed zeros).
        y : ignored.
        W, H : the start with init="custom".
        mask : optional (n_samples, n_features) boolean (dense or sparse), True where X is
            observed; the other entries are missing.
        """
        outcome = self._fit("NMF.fit_transform", X, W, H, mask, update_H=True)
        data, W, Ht = outcome["data"], outcome["W"], outcome["Ht"]
        self.reconstruction_err_ = _nmf.beta_divergence(data, W, Ht, outcome["beta"], square_root=True)
        self.n_components_ = int(Ht.shape[1])
        self.components_ = data.xp.ascontiguousarray(Ht.T)
        self.n_iter_ = int(outcome["n_iter"])
        self.n_features_in_ = data.shape[1]
        self.loss_curve_ = outcome["loss"]
        self._fit_W = W.copy()  # score's W: a caller normalising the returned W in place must not change it
        self._set_feature_names(X)
        return W

    def fit(self, X: Any, y: Any = None, W: Any = None, H: Any = None, *, mask: Any = None) -> "NMF":
        """Learn the factorization of X (see :meth:`fit_transform`); returns self."""
        self.fit_transform(X, W=W, H=H, mask=mask)
        return self

    def _check_fitted(self, method: str) -> None:
        if "components_" not in vars(self):
            raise _not_fitted(self, method)

    def transform(self, X: Any, *, mask: Any = None) -> Any:
        """W (n_samples, n_components_) of X with components_ fixed, by the fit's solver from
        scikit-learn's start (zeros for cd, sqrt(mean(X) / k) for mu); missing entries (NaN or
        ``mask``) are left out of the loss."""
        self._check_fitted("transform")
        self._check_feature_names("NMF.transform", X)
        return self._fit("NMF.transform", X, None, None, mask, update_H=False)["W"]

    def inverse_transform(self, X: Any) -> Any:
        """W @ components_: (n_samples, n_features_in_), the completed matrix (missing entries
        filled by the model)."""
        self._check_fitted("inverse_transform")
        xp = cupy_module() if not isinstance(self.components_, np.ndarray) else np
        W = X if _nmf.is_sparse(X) or is_device_array(X) else host_array("NMF.inverse_transform", "X", X)
        W = W if _nmf.is_sparse(W) else xp.asarray(W)
        if W.ndim != 2 or W.shape[1] != self.n_components_:
            raise ValueError(f"NMF.inverse_transform: X must be W of shape (n_samples, {self.n_components_}) "
                             f"(n_components_), got shape {tuple(W.shape)}")
        return W @ self.components_

    def score(self, X: Any, y: Any = None) -> float:
        """Minus the mean squared error of the fitted W_fit @ components_ on the entries of X that
        are not NaN: X is the fitted matrix's shape holding held-out entries (NaN elsewhere), so
        ``score`` ranks n_components by cross-validation over entries (as R's NNLM does). Greater
        is better, as scikit-learn's scorers expect."""
        self._check_fitted("score")
        self._check_feature_names("NMF.score", X)
        xp = cupy_module() if not isinstance(self.components_, np.ndarray) else np
        if _nmf.is_sparse(X):
            X = X.toarray()
        elif not is_device_array(X):  # pandas' nullable columns: pd.NA is NaN, an entry not scored
            X = host_array("NMF.score", "X", X)
        X = xp.asarray(X, dtype=np.float64)
        if X.ndim == 2:
            self._check_shape("NMF.score", X.shape, fitted=True)
        if X.shape != (self._fit_W.shape[0], self.n_features_in_):
            raise ValueError(f"NMF.score: X has shape {tuple(X.shape)}; held-out entries are scored in the "
                             f"fitted matrix's shape {(self._fit_W.shape[0], self.n_features_in_)}")
        if bool(xp.isinf(X).any()):
            raise ValueError("NMF.score: X contains inf; NaN marks an entry that is not scored")
        held = ~xp.isnan(X)
        if not bool(held.any()):
            raise ValueError("NMF.score: X has no entry to score (all NaN)")
        rows, cols = xp.nonzero(held)
        predicted = (self._fit_W[rows] * self.components_.T[cols]).sum(axis=1)
        return -float(((X[rows, cols] - predicted) ** 2).mean())

    @property
    def _n_features_out(self) -> int:
        return self.components_.shape[0]

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """nmf0, nmf1, ... (scikit-learn's names for the components)."""
        self._check_fitted("get_feature_names_out")
        return np.asarray([f"nmf{i}" for i in range(self.components_.shape[0])], dtype=object)

    def __sklearn_tags__(self):
        """scikit-learn's tags: non-negative input, dense or sparse, NaN allowed (missing), no
        target, float32 and float64 preserved."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type=None, target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=["float64", "float32"]),
                    input_tags=InputTags(sparse=True, positive_only=True, allow_nan=True))
