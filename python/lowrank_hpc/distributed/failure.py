"""What :func:`lowrank_hpc.distributed.solve_batch` returns in the slot of a problem that failed."""
from __future__ import annotations

import pickle
import traceback as _traceback
from dataclasses import dataclass


@dataclass
class ProblemFailure:
    """A problem of a batch whose solve raised: its slot holds this instead of a RecoveryResult,
    and the other problems are unaffected.

    index : the problem's position in the batch.
    error : the exception the solver raised (a ValueError for NaN/inf values, an IndexError for
        an index out of range, ...), or a RuntimeError with its text when it could not travel
        back from the worker.
    traceback : the formatted traceback, as the worker saw it.

    A ProblemFailure is falsy, so ``[r for r in results if r]`` keeps the solved problems;
    :meth:`reraise` raises the original error.
    """

    index: int
    error: BaseException
    traceback: str = ""

    def __bool__(self) -> bool:
        return False

    def reraise(self):
        """Raise the problem's error (its traceback as the worker saw it is in ``traceback``)."""
        raise self.error

    def __repr__(self) -> str:
        return f"ProblemFailure(index={self.index}, error={type(self.error).__name__}({str(self.error)!r}))"

    @classmethod
    def from_exception(cls, index: int, error: BaseException) -> "ProblemFailure":
        """The failure of problem ``index``, with an error that pickles (it crosses to the client)."""
        text = "".join(_traceback.format_exception(type(error), error, error.__traceback__))
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            error = RuntimeError(f"{type(error).__name__}: {error}")
        return cls(int(index), error.with_traceback(None), text)
