"""The iteration loop every solver shares: history, stopping, callback, progress bar, time
limit, and atomic checkpoints that a rerun resumes from with the same final result."""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import numpy as np

from .. import _checks
from .._arrays import is_device_array

# Reasons that end a run for good: a rerun with the same checkpoint returns at once. "max_iter"
# and "time_limit" are not final: a rerun with the checkpoint goes on from where it stopped.
FINAL_REASONS = ("converged", "stationary", "diverged", "no_progress")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, truncated, empty, not written by
    lowrank_hpc, inconsistent, or in a directory that does not exist. The message names the
    file and what is wrong."""


class CheckpointMismatchError(CheckpointError):
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
        """Check the settings (normalizing numbers and the checkpoint path) before any work: the
        checks of LOOP_CONSTRAINTS, for a caller that did not declare them."""
        for name, check in LOOP_CONSTRAINTS.items():
            setattr(self, name, check(function, name, getattr(self, name)))


def _callable(function: str, name: str, value: Any) -> Any:
    """Something to call."""
    if not callable(value):
        raise TypeError(f"{function}: {name} must be callable, got {type(value).__name__}")
    return value


def _checkpoint(function: str, name: str, value: Any) -> str:
    return checkpoint_path(function, value)


# The constraints of the loop's settings, declared once and spread into every solver's table.
# max_iter = 0 and time_limit = 0 are valid: the run returns its starting point. A checkpoint
# path must lie in an existing, writable directory (checked first, so a long run does not fail
# at its first save).
LOOP_CONSTRAINTS: dict[str, _checks.Check] = {
    "max_iter": _checks.nonnegative_int,
    "tol": _checks.nonnegative_float,
    "checkpoint_every": _checks.positive_int,
    "time_limit": _checks.optional(functools.partial(_checks.nonnegative_float, finite=False)),
    "callback": _checks.optional(_callable),
    "checkpoint": _checks.optional(_checkpoint),
    "progress": _checks.flag,
}


def checkpoint_path(function: str, path: Any) -> str:
    """The checkpoint path as a str, after checking that its directory exists and is writable."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{function}: checkpoint must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str) or not path:
        raise TypeError(f"{function}: checkpoint must be a non-empty str path, got {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise CheckpointError(f"{function}: the directory {directory!r} of checkpoint {path!r} does not exist; "
                              "create it first (checked before the run, so no work is lost)")
    if not os.access(directory, os.W_OK):
        raise CheckpointError(f"{function}: the directory {directory!r} of checkpoint {path!r} is not writable")
    if os.path.isdir(path):
        raise CheckpointError(f"{function}: checkpoint {path!r} is a directory; pass a file path (.npz)")
    return path


class Fingerprint:
    """The digest of what defines a run (settings and data), stored in and checked against
    checkpoints: a str once read (``str(fp)``, ``fp == text``). Computed the first time it is read,
    and only checkpointed runs read it: hashing the data up front held a copy of each array (80
    MiB for 20M int32 indices) and brought a GPU run's data to the host. A checkpointed run reads
    it when it starts (resume_or_start), before any solver changes its arrays in place."""

    # Device arrays come to the host this many bytes at a time.
    CHUNK_BYTES = 1 << 24

    def __init__(self, parts: tuple[Any, ...]):
        self._parts: Optional[tuple[Any, ...]] = parts
        self._value: Optional[str] = None

    def __str__(self) -> str:
        if self._value is None:
            digest = hashlib.sha256()
            for part in self._parts or ():
                if isinstance(part, np.ndarray) or hasattr(part, "__array__") and not is_device_array(part):
                    array = np.ascontiguousarray(part)
                    digest.update(str((array.dtype.str, array.shape)).encode())
                    digest.update(array.reshape(-1).view(np.uint8))  # the bytes in place, no copy
                elif is_device_array(part):  # the same bytes, streamed in chunks (CuPy's get)
                    flat = part.reshape(-1)
                    digest.update(str((flat.dtype.str, tuple(part.shape))).encode())
                    step = max(1, self.CHUNK_BYTES // max(1, flat.dtype.itemsize))
                    for start in range(0, flat.shape[0], step):
                        digest.update(np.ascontiguousarray(flat[start:start + step].get()).view(np.uint8))
                else:
                    digest.update(repr(part).encode())
            self._value, self._parts = digest.hexdigest(), None
        return self._value

    def __repr__(self) -> str:  # as the hex string's: a fingerprint of a fingerprint hashes its repr
        return repr(str(self))

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


Digest = Union[str, Fingerprint]  # what the loop compares a checkpoint with ("" where none is kept)


def fingerprint(*parts: Any) -> Fingerprint:
    """A digest of what defines a run (settings and data), stored in and checked against
    checkpoints; computed only when a checkpoint reads it (:class:`Fingerprint`)."""
    return Fingerprint(parts)


@dataclass
class LoopState:
    """What the loop carries and checkpoints: named arrays, iteration count, history, scalars.

    History entries are floats, or (batch,) float64 arrays for batched solves (one per problem).
    ``seed`` is the seed the run uses (drawn when the call passed None), saved with the state so
    a resumed run goes on with it.
    """

    arrays: dict[str, Any]
    iteration: int = 0
    loss: list[Any] = field(default_factory=list)
    relative_change: list[Any] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    stop_reason: Optional[str] = None  # set once the run has ended; a resumed finished run stops at once
    seed: Any = None  # an int, an (int, int) pair (als), or None


def _seed_array(seed: Any) -> np.ndarray:
    parts = () if seed is None else (tuple(seed) if isinstance(seed, (tuple, list)) else (seed,))
    return np.asarray([int(p) for p in parts], dtype=np.uint64)


def _seed_value(saved: np.ndarray) -> Any:
    parts = [int(p) for p in np.asarray(saved).reshape(-1)]
    return None if not parts else (parts[0] if len(parts) == 1 else tuple(parts))


def save_checkpoint(path: str, state: LoopState, digest: Digest) -> None:
    """Write the state atomically: a reader sees the old file or the new one, never half of one."""
    directory = os.path.dirname(os.path.abspath(path))
    payload = {f"array_{name}": (value.get() if not isinstance(value, np.ndarray) else value)
               for name, value in state.arrays.items()}
    payload.update(iteration=np.int64(state.iteration), loss=np.asarray(state.loss, dtype=np.float64),
                   relative_change=np.asarray(state.relative_change, dtype=np.float64),
                   scalar_names=np.asarray(list(state.scalars), dtype=str),
                   scalar_values=np.asarray(list(state.scalars.values()), dtype=np.float64),
                   fingerprint=np.asarray(str(digest)), stop_reason=np.asarray(state.stop_reason or ""),
                   seed=_seed_array(state.seed))
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


# What reading a damaged or foreign file raises, inside numpy's loader and zipfile.
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError)
_REQUIRED = ("fingerprint", "iteration", "loss", "relative_change", "scalar_names", "scalar_values", "stop_reason",
             "seed")


def _read(path: str) -> dict[str, np.ndarray]:
    """Every entry of the checkpoint at ``path``, or CheckpointError naming the file and the fault."""
    try:
        with open(path, "rb") as stream:  # numpy reads from our handle, which closes on every path
            if not stream.read(1):
                raise CheckpointError(f"checkpoint {path!r} is empty (0 bytes); delete it or pass another path")
            stream.seek(0)
            loaded = np.load(stream, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise CheckpointError(f"checkpoint {path!r} is a single .npy array, not a lowrank_hpc checkpoint "
                                      "(.npz); delete it or pass another path")
            with loaded:
                missing = [key for key in _REQUIRED if key not in loaded.files]
                if missing:
                    raise CheckpointError(f"checkpoint {path!r} is not a lowrank_hpc checkpoint (it lacks "
                                          f"{', '.join(map(repr, missing))}); delete it or pass another path")
                return {key: loaded[key] for key in loaded.files}
    except CheckpointError:
        raise
    except _READ_ERRORS as error:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({type(error).__name__}: {error}): it is "
                              "truncated, damaged or not an .npz file; delete it or pass another path") from None


def resolve_seed(seed: Any, checkpoint: Optional[str]) -> tuple[Any, Any]:
    """(the seed a run uses, what its fingerprint records for it), for a validated ``seed``.

    An explicit seed is used as given and enters the fingerprint. None draws a fresh seed
    (:func:`lowrank_hpc._checks.draw_seed`) and the fingerprint records "drawn", not the value,
    so a later call with seed=None matches the checkpoint; when that checkpoint exists the seed
    it stores (the one its run drew) is used again, so the resumed run is the same run.
    """
    if seed is not None:
        return seed, seed
    if checkpoint and os.path.exists(checkpoint):
        saved = _seed_value(_read(checkpoint)["seed"])
        if saved is not None:
            return saved, "drawn"
    return _checks.draw_seed(), "drawn"


def resume_or_start(settings: LoopSettings, digest: Digest, xp: Any, fresh: LoopState, host: tuple[str, ...] = (),
                    growable: tuple[str, ...] = ()) -> LoopState:
    """The state a run starts from: its checkpoint's when ``settings.checkpoint`` names a file
    that matches ``digest`` (see :func:`load_checkpoint`), else ``fresh``. Arrays named in
    ``host`` (bookkeeping the loop keeps in numpy) come back as numpy arrays."""
    if settings.checkpoint:
        str(digest)  # computed now, from the data as given: a solver may later change arrays in place
    saved = load_checkpoint(settings.checkpoint, digest, xp, template=fresh,
                            growable=growable) if settings.checkpoint else None
    if saved is None:
        return fresh
    for name in host:
        array = saved.arrays[name]
        saved.arrays[name] = array if isinstance(array, np.ndarray) else array.get()
    return saved


def load_checkpoint(path: str, digest: Digest, xp: Any, template: Optional[LoopState] = None,
                    growable: tuple[str, ...] = ()) -> Optional[LoopState]:
    """The saved state if ``path`` exists and matches ``digest``; None if there is no file.

    CheckpointMismatchError when the file belongs to another problem or settings;
    CheckpointError when it cannot be read, is not a lowrank_hpc checkpoint, or (given the fresh
    state ``template``) its arrays do not have the shapes and dtypes of this run's (arrays named
    in ``growable`` may differ in their first axis: histories that grow).
    """
    if not os.path.exists(path):
        return None
    saved = _read(path)
    if str(saved["fingerprint"]) != str(digest):
        raise CheckpointMismatchError(
            f"checkpoint {path!r} was written by a different problem or solver settings; "
            "delete it or pass another checkpoint path")
    arrays = {key[len("array_"):]: saved[key] for key in saved if key.startswith("array_")}
    iteration = int(saved["iteration"]) if saved["iteration"].shape == () else -1
    loss, change = saved["loss"], saved["relative_change"]
    fault = None
    if iteration < 0 or loss.shape[:1] != (iteration,) or change.shape != loss.shape:
        fault = (f"an iteration count of {saved['iteration']!r} with histories of shapes {loss.shape} and "
                 f"{change.shape}")
    elif saved["scalar_names"].shape != saved["scalar_values"].shape:
        fault = "scalar names and values of different lengths"
    if fault is None and template is not None:
        names = {str(n) for n in saved["scalar_names"]}
        for name in sorted(set(template.scalars) - names):
            fault = f"no scalar {name!r}"
        for name, fresh in template.arrays.items():
            if fault is not None:
                break
            if name not in arrays:
                fault = f"no array {name!r}"
                continue
            have, want = arrays[name], fresh
            same = have.shape == tuple(want.shape) or (name in growable and have.shape[1:] == tuple(want.shape[1:]))
            if have.dtype != want.dtype or not same:
                fault = (f"{name} of shape {have.shape} and dtype {have.dtype} where this run has shape "
                         f"{tuple(want.shape)} and dtype {want.dtype}")
    if fault is not None:
        raise CheckpointError(f"checkpoint {path!r} does not fit this run: it holds {fault}; it was altered or "
                              "written by another version; delete it or pass another path")
    scalars = dict(zip([str(n) for n in saved["scalar_names"]], [float(v) for v in saved["scalar_values"]]))
    return LoopState(arrays={name: xp.asarray(value) for name, value in arrays.items()}, iteration=iteration,
                     loss=_history(loss), relative_change=_history(change), scalars=scalars,
                     stop_reason=str(saved["stop_reason"]) or None, seed=_seed_value(saved["seed"]))


def _history(saved: np.ndarray) -> list[Any]:
    """A saved history as the loop keeps it: floats, or per-problem rows for batched solves."""
    return [float(v) for v in saved] if saved.ndim == 1 else [row.copy() for row in saved]


def _entry(value: Any) -> Any:
    return float(value) if np.ndim(value) == 0 else np.asarray(value, dtype=np.float64)


def _shown(value: Any) -> float:
    """The number the progress bar shows: the loss, or the total over the problems still running."""
    return float(value) if np.ndim(value) == 0 else float(np.nansum(value))


def run_loop(settings: LoopSettings, state: LoopState, step: Callable[[LoopState], tuple[float, float]],
             digest: Digest, converged: Callable[[LoopState], Optional[str]]) -> tuple[LoopState, str, float]:
    """Advance ``state`` with ``step`` until ``converged`` names a reason, max_iter or the time limit.

    ``step`` updates state.arrays in place (or rebinds them) and returns (loss, relative_change):
    floats, or (batch,) arrays for batched solves (the bar then shows the summed loss).
    The clock is read after each iteration, so a positive time_limit runs at least one;
    time_limit = 0 (like max_iter = 0) returns the starting state.
    Returns the final state, the stop reason and the seconds spent in this call.
    """
    start = time.perf_counter()
    if state.stop_reason is not None:  # resumed from the checkpoint of a run that had ended
        return state, state.stop_reason, 0.0
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.max_iter, initial=state.iteration, desc=settings.description, leave=False)
    reason = "time_limit" if settings.time_limit == 0 and state.iteration < settings.max_iter else "max_iter"
    try:
        while reason != "time_limit" and state.iteration < settings.max_iter:
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
    # A run that ended for a final reason stays ended; one stopped by max_iter or the clock
    # resumes on the next call.
    state.stop_reason = reason if reason in FINAL_REASONS else None
    if settings.checkpoint:
        save_checkpoint(settings.checkpoint, state, digest)
    return state, reason, time.perf_counter() - start
