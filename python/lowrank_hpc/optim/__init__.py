"""Optimizers on the core's kernels: the Adafactor step on arrays, and a torch optimizer over it.

:func:`adafactor_step` needs numpy (or CuPy) only. :class:`Adafactor` is a
``torch.optim.Optimizer``; torch is an optional extra, imported only when ``Adafactor`` is
first looked up here.
"""
from __future__ import annotations

from typing import Any

from .adafactor import NonFiniteError, adafactor_step, state_dtype

__all__ = ["Adafactor", "NonFiniteError", "adafactor_step", "state_dtype"]


def __getattr__(name: str) -> Any:
    if name == "Adafactor":  # torch is imported here, never when lowrank_hpc is
        from .torch_adafactor import Adafactor
        return Adafactor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
