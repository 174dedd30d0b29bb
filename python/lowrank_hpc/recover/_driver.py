"""The iteration loop every solver shares: history, stopping, callback, progress bar, time
limit, and atomic checkpoints that a rerun resumes from with the same final result."""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np


class CheckpointMismatchError(ValueError):
    """The checkpoint file belongs to a different problem or solver configuration."""


@dataclass
class LoopSettings:
    max_iter: int
    tol: float
    callback: Optional[Callable[[int, dict[str, Any]], Any]] = None
    progress: bool = False
    checkpoint: Optional[str] = None
    checkpoint_every: int = 50
    time_limit: Optional[float] = None
    description: str = "lowrank_hpc"

    def validate(self, function: str) -> None:
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"{function}: max_iter must be a positive integer, got {self.max_iter!r}")
        if not (isinstance(self.tol, (int, float, np.floating)) and self.tol >= 0 and np.isfinite(self.tol)):
            raise ValueError(f"{function}: tol must be a finite number >= 0, got {self.tol!r}")
        if self.checkpoint_every < 1:
            raise ValueError(f"{function}: checkpoint_every must be >= 1, got {self.checkpoint_every!r}")
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"{function}: time_limit must be positive seconds, got {self.time_limit!r}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"{function}: callback must be callable, got {type(self.callback).__name__}")


def fingerprint(*parts: Any) -> str:
    """A digest of what defines a run (settings and data), stored in and checked against checkpoints."""
    digest = hashlib.sha256()
    for part in parts:
        if hasattr(part, "__array__") or hasattr(part, "get"):
            array = np.ascontiguousarray(part.get() if hasattr(part, "get") and not isinstance(part, np.ndarray)
                                         else part)
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
        else:
            digest.update(repr(part).encode())
    return digest.hexdigest()


@dataclass
class LoopState:
    """What the loop carries and checkpoints: named arrays, iteration count, history, scalars.

    History entries are floats, or (batch,) float64 arrays for batched solves (one per problem).
    """

    arrays: dict[str, Any]
    iteration: int = 0
    loss: list[Any] = field(default_factory=list)
    relative_change: list[Any] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    stop_reason: Optional[str] = None  # set once the run has ended; a resumed finished run stops at once


def save_checkpoint(path: str, state: LoopState, digest: str) -> None:
    """Write the state atomically: a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    payload = {f"array_{name}": (value.get() if not isinstance(value, np.ndarray) else value)
               for name, value in state.arrays.items()}
    payload.update(iteration=np.int64(state.iteration), loss=np.asarray(state.loss, dtype=np.float64),
                   relative_change=np.asarray(state.relative_change, dtype=np.float64),
                   scalar_names=np.asarray(list(state.scalars), dtype=str),
                   scalar_values=np.asarray(list(state.scalars.values()), dtype=np.float64),
                   fingerprint=np.asarray(digest), stop_reason=np.asarray(state.stop_reason or ""))
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=".checkpoint-", suffix=".npz")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load_checkpoint(path: str, digest: str, xp: Any) -> Optional[LoopState]:
    """The saved state if ``path`` exists and matches ``digest``; None if there is no file."""
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as saved:
        if str(saved["fingerprint"]) != digest:
            raise CheckpointMismatchError(
                f"checkpoint {path!r} was written by a different problem or solver settings; "
                "delete it or pass another checkpoint path")
        arrays = {key[len("array_"):]: xp.asarray(saved[key]) for key in saved.files if key.startswith("array_")}
        scalars = dict(zip([str(n) for n in saved["scalar_names"]], [float(v) for v in saved["scalar_values"]]))
        return LoopState(arrays=arrays, iteration=int(saved["iteration"]), loss=_history(saved["loss"]),
                         relative_change=_history(saved["relative_change"]), scalars=scalars,
                         stop_reason=str(saved["stop_reason"]) or None)


def _history(saved: np.ndarray) -> list[Any]:
    """A saved history as the loop keeps it: floats, or per-problem rows for batched solves."""
    return [float(v) for v in saved] if saved.ndim == 1 else [row.copy() for row in saved]


def _entry(value: Any) -> Any:
    return float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64)


def _shown(value: Any) -> float:
    """The number the progress bar shows: the loss, or the total over the problems still running."""
    return float(value) if np.ndim(value) == 0 else float(np.nansum(value))


def run_loop(settings: LoopSettings, state: LoopState, step: Callable[[LoopState], tuple[float, float]],
             digest: str, converged: Callable[[LoopState], Optional[str]]) -> tuple[LoopState, str, float]:
    """Advance ``state`` with ``step`` until ``converged`` names a reason, max_iter or the time limit.

    ``step`` updates state.arrays in place (or rebinds them) and returns (loss, relative_change):
    floats, or (batch,) arrays for batched solves (the bar then shows the summed loss).
    Returns the final state, the stop reason and the seconds spent in this call.
    """
    start = time.perf_counter()
    if state.stop_reason is not None:  # resumed from the checkpoint of a run that had ended
        return state, state.stop_reason, 0.0
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.max_iter, initial=state.iteration, desc=settings.description, leave=False)
    reason = "max_iter"
    try:
        while state.iteration < settings.max_iter:
            loss, change = step(state)
            state.iteration += 1
            state.loss.append(_entry(loss))
            state.relative_change.append(_entry(change))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{_shown(loss):.3e}", refresh=False)
            if settings.callback is not None:
                settings.callback(state.iteration, {"loss": loss, "relative_change": change, **state.arrays})
            if settings.checkpoint and state.iteration % settings.checkpoint_every == 0:
                save_checkpoint(settings.checkpoint, state, digest)
            found = converged(state)
            if found:
                reason = found
                break
            if settings.time_limit is not None and time.perf_counter() - start > settings.time_limit:
                reason = "time_limit"
                break
    finally:
        if bar is not None:
            bar.close()
    # Only a converged run is final; one stopped by max_iter or the clock resumes on the next call.
    state.stop_reason = reason if reason in ("converged", "stationary") else None
    if settings.checkpoint:
        save_checkpoint(settings.checkpoint, state, digest)
    return state, reason, time.perf_counter() - start
