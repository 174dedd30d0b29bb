"""What every solver returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class RecoveryResult:
    """The outcome of one solve.

    U : (n1, rank) left factor (or (batch, n1, rank) for batched solves), on the input's backend.
    V : (n2, rank) right factor; for symmetric problems V is U.
    X : U @ U.T for symmetric problems, else None (form U @ V.T yourself when you need it).
    history : {"loss": (n_iter,), "relative_change": (n_iter,)} float64 numpy arrays, per
        iteration: the objective after it and ||X_t - X_{t-1}||_F / ||X_{t-1}||_F, computed on
        the factors (batched solves: (n_iter, batch)).
    n_iter : iterations run (batched: the most any problem ran).
    converged : reached the tolerance (batched: (batch,) bool array, one flag per problem).
    stop_reason : "converged", "stalled", "max_iter" or "time_limit" (batched: one per problem).
    seconds : wall-clock time of the solve.
    backend : "cpu" or "cuda".
    step : the step size in force at the end (gradient methods; halved on divergence).
    step_halvings : how often divergence halved the step (0 when it never did).
    """

    U: Any
    V: Any
    history: dict[str, np.ndarray]
    n_iter: int
    converged: Any
    stop_reason: Any
    seconds: float
    backend: str
    X: Optional[Any] = None
    step: Optional[float] = None
    step_halvings: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (f"RecoveryResult(U={tuple(self.U.shape)}, V={tuple(self.V.shape)}, n_iter={self.n_iter}, "
                f"converged={self.converged!r}, stop_reason={self.stop_reason!r}, "
                f"seconds={self.seconds:.3g}, backend={self.backend!r})")
