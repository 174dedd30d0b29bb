"""What every solver returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class RecoveryResult:
    """The outcome of one solve.

    Single solves (``factored_gd``, ``als``) and batched solves (``batched_factored_gd``,
    ``batched_als``, B problems) have the same fields; a batched solve gives each per-problem
    field a leading axis of B (or a list of B entries):

    U : (n1, rank) left factor, batched (B, n1, rank); on the input's backend.
    V : (n2, rank) right factor, batched (B, n2, rank); for symmetric problems V is U.
    X : U @ U.T for symmetric problems, else None (form U @ V.T yourself when you need it).
    history : {"loss": (n_iter,), "relative_change": (n_iter,)} float64 numpy arrays, per
        iteration: the objective after it and ||X_t - X_{t-1}||_F / ||X_{t-1}||_F, computed on
        the factors; batched (n_iter, B), NaN once a problem has stopped. Empty ((0,), batched
        (0, B)) when no iteration ran (max_iter=0 or time_limit=0).
    n_iter : int, iterations run (batched: the most any problem ran; each problem's own count
        is ``info["n_iter"]``, a (B,) int64 array).
    converged : single: a Python bool; batched: a (B,) numpy bool array, one flag per problem.
        True exactly when the stop reason is "converged" or "stationary".
    stop_reason : single: a str; batched: a list of B str, one per problem. One of
        "converged" (the tolerance was met), "stationary" (the iterate stopped changing:
        relative change below the solver's threshold, or no step could decrease the loss after
        the previous iteration had already made only a tiny change, i.e. a minimum at working
        precision), "max_iter", "time_limit", "diverged" (the loss is NaN or inf: the data,
        or a given start, is beyond the float range of a squared loss, or the iterates blew up;
        rescale the data), "no_progress" (gradient methods: the iterate did not move, because
        no step in the halving sequence decreased the loss or the step was too small to change
        the factors, without the small previous change that marks a minimum; typically a
        ``step`` far too large or too small). converged is False for the last four.
    seconds : wall-clock time of the solve.
    backend : "cpu" or "cuda".
    step : the step size in force at the end (single gradient solves; halved on divergence;
        None for ALS and batched solves, whose per-problem steps are ``info["steps"]``).
    step_halvings : how often divergence halved the step (0 when it never did; batched: the total).
    info : solver-specific details; every solver reports ``info["seed"]``, the seed the run
        used (drawn from fresh entropy when seed=None was passed): passing it back as ``seed``
        reproduces the run.
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
