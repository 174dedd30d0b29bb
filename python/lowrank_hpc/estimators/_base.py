"""What every estimator shares: the scikit-learn protocol (get_params / set_params / repr from
the ``__init__`` signature), NotFittedError, and the checks of hyper-parameters and random_state."""
from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from typing import Any, Optional

import numpy as np

from .. import _backend, _checks


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``.

    Like scikit-learn's class of the same name it is a ValueError and an AttributeError; when
    scikit-learn is loaded, the error raised is also an instance of
    ``sklearn.exceptions.NotFittedError``, so scikit-learn's tools recognise it.
    """


def _reduce_with_sklearn_base(error: NotFittedError) -> tuple:
    # pickle finds a class by module and name, and those of the class made below are the public
    # NotFittedError's: it is rebuilt by _unpickle_not_fitted instead.
    return _unpickle_not_fitted, (error.args,), error.__dict__ or None


@functools.lru_cache(maxsize=None)
def _with_sklearn_base(sklearn_class: type) -> type:
    return type("NotFittedError", (NotFittedError, sklearn_class),
                {"__module__": "lowrank_hpc.estimators", "__doc__": NotFittedError.__doc__,
                 "__reduce__": _reduce_with_sklearn_base})


def _error_class() -> type:
    """NotFittedError, or while scikit-learn is loaded its subclass that is also scikit-learn's."""
    # Code that catches scikit-learn's class has imported it by then, so looking in sys.modules
    # is enough and the library never imports scikit-learn itself.
    sklearn_exceptions = sys.modules.get("sklearn.exceptions")
    if sklearn_exceptions is None:
        return NotFittedError
    return _with_sklearn_base(sklearn_exceptions.NotFittedError)


def _unpickle_not_fitted(args: tuple) -> NotFittedError:
    """A pickled NotFittedError of scikit-learn's kind, rebuilt by the rule of the process that
    loads it (a plain NotFittedError where scikit-learn is not loaded)."""
    return _error_class()(*args)


def _not_fitted(estimator: Any, method: str) -> NotFittedError:
    return _error_class()(f"This {type(estimator).__name__} instance is not fitted yet; call fit before {method}")


# ---------------------------------------------------------------------- hyper-parameter checks
def _check_int(function: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{function}: {name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_nonnegative(function: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
            np.isfinite(value) and value >= 0):
        raise ValueError(f"{function}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_choice(function: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{function}: {name} must be one of {choices}, got {value!r}")
    return value


def _seed(function: str, random_state: Any) -> int:
    """An int seed from scikit-learn's random_state: None (fresh entropy), an int in [0, 2**64)
    (the solvers' seeds are 64-bit keys), a numpy RandomState or Generator (one draw from it, so
    repeated fits differ as in scikit-learn). Errors name ``function`` and random_state."""
    if random_state is None:
        return _checks.draw_seed()
    if (isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool)
            and 0 <= random_state < _checks.SEED_LIMIT):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    raise ValueError(f"{function}: random_state must be None, an integer in [0, 2**64), a numpy RandomState or "
                     f"Generator, got {random_state!r}")


def _backend_scope(backend: str):
    """use_backend(backend) for "cpu"/"cuda" (raises if CUDA is unavailable), nothing for "auto"."""
    return contextlib.nullcontext() if backend == "auto" else _backend.use_backend(backend)


# ---------------------------------------------------------------------- shared estimator protocol
class _Estimator:
    """get_params / set_params / repr from the ``__init__`` signature, as scikit-learn's BaseEstimator."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p.name for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters as {name: value} (``deep`` is accepted for scikit-learn; nothing nests)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "_Estimator":
        """Set hyper-parameters by name (validated by the next ``fit``); returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {type(self).__name__}; "
                                 f"valid parameters are {valid}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{name}={value!r}" for name, value in self.get_params().items()
                   if not _is_default(value, defaults[name])]
        return f"{type(self).__name__}({', '.join(changed)})"

    def _check_fitted(self, method: str) -> None:
        if "result_" not in vars(self):
            raise _not_fitted(self, method)

    def _set_feature_names(self, X: Any) -> None:
        """feature_names_in_ from a DataFrame X's str column names (scikit-learn's rule); none otherwise."""
        names = _feature_names(X)
        if names is None:
            vars(self).pop("feature_names_in_", None)
        else:
            self.feature_names_in_ = names

    def _check_feature_names(self, function: str, X: Any) -> None:
        """ValueError when X's column names differ from those of the fit (both DataFrames), as
        scikit-learn raises: the columns would otherwise be taken by position, silently mis-mapped."""
        fitted, names = vars(self).get("feature_names_in_"), _feature_names(X)
        if fitted is None or names is None or (names.shape == fitted.shape and (names == fitted).all()):
            return
        fitted_set, given_set = set(fitted), set(names)
        unseen = [name for name in names if name not in fitted_set]
        missing = [name for name in fitted if name not in given_set]
        detail = (f"names unseen at fit time: {unseen[:5]}" if unseen else
                  f"names seen at fit time, yet now missing: {missing[:5]}" if missing else
                  "names are in another order than in fit")
        raise ValueError(f"{function}: The feature names should match those that were passed during fit; "
                         f"X's column {detail}")

    def _xp(self) -> Any:
        return _backend.cupy_module() if self.result_.backend == "cuda" else np


def _feature_names(X: Any) -> Optional[np.ndarray]:
    """The column names of a DataFrame X as an object array when every one is a str, else None."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    names = np.asarray(list(columns), dtype=object)
    return names if names.size and all(isinstance(name, str) for name in names) else None


def _is_default(value: Any, default: Any) -> bool:
    # Arrays (init) are never "default"; comparing them with == would be element-wise.
    return value is default or (type(value) is type(default) and isinstance(value, (str, int, float))
                                and value == default)


NotFittedError.__module__ = "lowrank_hpc.estimators"  # its public home
