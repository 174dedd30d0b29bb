"""Checks of scalar arguments, declared once and shared by every public function.

Each check takes the public function's name (for the message), the argument's name and its
value, and returns the value normalized (a Python int or float) or raises: TypeError when the
value is of the wrong kind (a float or str where an int is meant, None where an array is
meant), ValueError when it is of the right kind but out of range. Python ints and numpy
integers count as integers; bool, float (even 30.0) and str do not, so a size is never
truncated or rounded silently.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Any, Callable, Optional

import numpy as np

SEED_LIMIT = 2**64  # seeds are Philox keys (and numpy seeds): integers in [0, 2**64)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def integer(function: str, name: str, value: Any) -> int:
    """An int of any value (Python or numpy integer); TypeError for anything else."""
    if not _is_int(value):
        raise TypeError(f"{function}: {name} must be an int, got {_shown(value)}")
    return int(value)


# Sizes and counts reach the C++ core as int64: a larger one raised pybind's "incompatible
# function arguments", which names neither the argument nor the limit.
_INT64_MAX = 2**63 - 1


def positive_int(function: str, name: str, value: Any) -> int:
    """An int in [1, 2**63) (a size or a count)."""
    value = integer(function, name, value)
    if value < 1:
        raise ValueError(f"{function}: {name} must be >= 1, got {value}")
    return _int64(function, name, value)


def nonnegative_int(function: str, name: str, value: Any) -> int:
    """An int in [0, 2**63) (an iteration limit, where 0 means "return the start")."""
    value = integer(function, name, value)
    if value < 0:
        raise ValueError(f"{function}: {name} must be >= 0, got {value}")
    return _int64(function, name, value)


def _int64(function: str, name: str, value: int) -> int:
    if value > _INT64_MAX:
        raise ValueError(f"{function}: {name} must be below 2**63 (int64), got {value}")
    return value


def shape_2d(function: str, name: str, value: Any) -> tuple[int, int]:
    """A pair of positive ints (n1, n2) from a tuple, list or 1-D array of two integers."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{function}: {name} must be a pair (n1, n2); {name} must be two positive integers, "
                         f"got {value!r}")
    return positive_int(function, f"{name}[0]", value[0]), positive_int(function, f"{name}[1]", value[1])


def real(function: str, name: str, value: Any) -> float:
    """A real number (int or float, Python or numpy; not bool); TypeError for anything else."""
    if not _is_real(value):
        raise TypeError(f"{function}: {name} must be a number, got {_shown(value)}")
    return float(value)


def nonnegative_float(function: str, name: str, value: Any, *, finite: bool = True) -> float:
    """A number >= 0; finite unless ``finite=False`` (then inf is allowed, NaN never)."""
    value = real(function, name, value)
    if math.isnan(value) or value < 0 or (finite and math.isinf(value)):
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{function}: {name} must be {kind} >= 0, got {value!r}")
    return value


def positive_float(function: str, name: str, value: Any) -> float:
    """A finite number > 0."""
    value = real(function, name, value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{function}: {name} must be a finite number > 0, got {value!r}")
    return value


def fraction(function: str, name: str, value: Any) -> float:
    """A number in (0, 1)."""
    return _below_one(function, name, value, zero=False)


def fraction_or_zero(function: str, name: str, value: Any) -> float:
    """A number in [0, 1)."""
    return _below_one(function, name, value, zero=True)


def _below_one(function: str, name: str, value: Any, *, zero: bool) -> float:
    value = real(function, name, value)
    if not ((0 <= value if zero else 0 < value) and value < 1):  # NaN fails both
        raise ValueError(f"{function}: {name} must be in {'[0, 1)' if zero else '(0, 1)'}, got {value!r}")
    return value


def seed(function: str, value: Any, *, name: str = "seed", optional: bool = True) -> Optional[int]:
    """None or an int in [0, 2**64). None means fresh entropy: see :func:`draw_seed`; where the
    result must be reproducible (``optional=False``) it is refused."""
    wanted = "None or an integer >= 0" if optional else "an integer >= 0"
    if value is None and optional:
        return None
    if value is None or not _is_int(value):
        raise TypeError(f"{function}: {name} must be {wanted}, got {_shown(value)}")
    if not 0 <= int(value) < SEED_LIMIT:
        raise ValueError(f"{function}: {name} must be {wanted} (below 2**64), got {value}")
    return int(value)


def seed_argument(function: str, name: str, value: Any) -> Optional[int]:
    """:func:`seed` in the form of a declared constraint."""
    return seed(function, value, name=name)


def draw_seed() -> int:
    """A fresh seed from the operating system's entropy, in [0, 2**63) (so seed + b stays a valid
    seed for every problem b of a batch). What ``seed=None`` means in every solver; the seed drawn
    is reported in ``result.info["seed"]`` and stored in checkpoints."""
    return int(np.random.SeedSequence().generate_state(2, np.uint64)[0] >> np.uint64(1))


def required(function: str, **arrays: Any) -> None:
    """TypeError naming the first argument that is None where an array is required."""
    for name, value in arrays.items():
        if value is None:
            raise TypeError(f"{function}: {name} is None; pass an array (numpy, or a CUDA array for the GPU)")


# ---------------------------------------------------------------------- declared constraints
# A public function declares the constraints of its scalar arguments once, next to its
# signature (scikit-learn's _parameter_constraints is the model); ``constrained`` runs them once
# per call, before the body, and passes the normalized values on. Each constraint is a check of
# the form check(function, name, value) -> value.
Check = Callable[[str, str, Any], Any]


def optional(check: Check) -> Check:
    """None, or what ``check`` accepts."""
    def none_or(function: str, name: str, value: Any) -> Any:
        return None if value is None else check(function, name, value)
    none_or.__doc__ = f"None or {check.__doc__ or check.__name__}"
    return none_or


def one_of(*choices: Any) -> Check:
    """One of ``choices`` (strings compared exactly)."""
    def choice(function: str, name: str, value: Any) -> Any:
        if isinstance(value, bool) or value not in choices or not isinstance(value, type(choices[0])):
            raise ValueError(f"{function}: {name} must be one of {choices}, got {value!r}")
        return value
    return choice


def flag(function: str, name: str, value: Any) -> bool:
    """True or False (numpy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{function}: {name} must be True or False, got {_shown(value)}")
    return bool(value)


def constrained(**constraints: Check) -> Callable:
    """Decorator: check the named arguments of every call once, on entry, by their constraints;
    the function's ``constraints`` attribute lists them (for documentation and tests). Defaults
    are the function's own and are not checked."""
    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        unknown = set(constraints) - set(signature.parameters)
        assert not unknown, f"{function.__name__}: constraints for unknown parameters {unknown}"
        label = function.__qualname__.replace(".__init__", "")
        # Where each constrained argument arrives: its position when passed positionally (kinds
        # allowing it), else by keyword. No signature.bind per call: small kernels call this often.
        order = list(signature.parameters)
        positional = {name: order.index(name) for name in constraints
                      if signature.parameters[name].kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                             inspect.Parameter.POSITIONAL_OR_KEYWORD)}

        @functools.wraps(function)
        def checked(*args: Any, **kwargs: Any) -> Any:
            for name, check in constraints.items():
                position = positional.get(name, len(args))
                if position < len(args):
                    args = args[:position] + (check(label, name, args[position]),) + args[position + 1:]
                elif name in kwargs:
                    kwargs[name] = check(label, name, kwargs[name])
            return function(*args, **kwargs)

        checked.constraints = constraints
        return checked
    return decorate
