"""Where the distributed code's tasks run: a Dask client, or this process (client=None).

Both executors take the same calls (scatter, submit, gather), so solve_batch and DistributedALS
are one code path whether they run on a cluster or locally, and give the same results.
"""
from __future__ import annotations

import itertools
import uuid
from typing import Any, Callable, Optional, Sequence

from .. import _backend

_DASK_MISSING = ("lowrank_hpc.distributed needs Dask's distributed scheduler for a cluster: "
                 "pip install 'lowrank_hpc[dask]' (or pass client=None to run in this process)")


def require_distributed():
    """The ``distributed`` module, or ImportError saying how to install it."""
    try:
        import distributed
    except ImportError as error:
        raise ImportError(f"{_DASK_MISSING} ({error})") from None
    return distributed


def is_client(value: Any) -> bool:
    """True for a dask.distributed Client (False for anything when distributed is not installed)."""
    try:
        from distributed import Client
    except ImportError:
        return False
    return isinstance(value, Client)


class Ready:
    """A value computed in this process: what LocalExecutor returns where Dask returns a Future."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


def _resolved(argument: Any) -> Any:
    if isinstance(argument, Ready):
        return argument.value
    if isinstance(argument, list):
        return [_resolved(item) for item in argument]
    return argument


class LocalExecutor:
    """Runs every task at once in this process, in submission order."""

    workers: Sequence[Optional[str]] = (None,)

    def scatter(self, value: Any, worker: Optional[str] = None) -> Ready:
        return Ready(value)

    def submit(self, function: Callable, *args: Any, worker: Optional[str] = None, name: str = "",
               **kwargs: Any) -> Ready:
        return Ready(function(*(_resolved(a) for a in args), **{k: _resolved(v) for k, v in kwargs.items()}))

    def gather(self, items: Sequence[Ready]) -> list[Any]:
        return [item.value for item in items]

    def worker_count(self) -> int:
        return 1


class DaskExecutor:
    """Tasks on a dask.distributed cluster. Tasks carry their inputs (so the scheduler can run a
    task again elsewhere when its worker dies) unless the caller scattered them; ``worker`` pins
    a task to a worker loosely (allow_other_workers), so a dead worker does not block it."""

    def __init__(self, client: Any, retries: int = 0):
        self.client = client
        self.retries = retries
        self.workers = worker_addresses(client)
        if not self.workers:
            raise RuntimeError("the Dask cluster has no workers; start some (cluster.scale(n)) or wait for them "
                               "(client.wait_for_workers(n))")
        self._names = itertools.count()
        self._token = uuid.uuid4().hex[:8]

    def key(self, name: str) -> str:
        return f"lowrank_hpc-{name}-{self._token}-{next(self._names)}"

    def scatter(self, value: Any, worker: Optional[str] = None) -> Any:
        return self.client.scatter(value, workers=[worker] if worker else None, hash=False)

    def submit(self, function: Callable, *args: Any, worker: Optional[str] = None, name: str = "task",
               **kwargs: Any) -> Any:
        return self.client.submit(function, *args, key=self.key(name), workers=[worker] if worker else None,
                                  allow_other_workers=worker is not None, retries=self.retries, pure=False, **kwargs)

    def gather(self, futures: Sequence[Any]) -> list[Any]:
        return self.client.gather(list(futures))

    def worker_count(self) -> int:
        return len(self.workers)


def worker_addresses(client: Any) -> list[str]:
    """The addresses of every worker of the client's cluster, sorted."""
    # n_workers=-1: every worker (distributed >= 2025.4 lists five by default).
    info = client.scheduler_info(n_workers=-1) if _takes_n_workers(client) else client.scheduler_info()
    return sorted(info["workers"])


def _takes_n_workers(client: Any) -> bool:
    """Whether Client.scheduler_info takes n_workers (distributed >= 2025.4 lists only 5 by default)."""
    import inspect

    return "n_workers" in inspect.signature(client.scheduler_info).parameters


def executor(client: Any, retries: int = 0, *, function: str) -> Any:
    """DaskExecutor for a Client, LocalExecutor for None; TypeError for anything else, ValueError
    for a closed Client (both naming ``function``)."""
    if client is None:
        return LocalExecutor()
    if not is_client(client):
        raise TypeError(f"{function}: client must be a dask.distributed Client or None, got "
                        f"{type(client).__module__}.{type(client).__name__}")
    # A closed client's scheduler_info() is {}: it would fail as a bare KeyError 'workers'.
    if client.status in ("closing", "closed"):
        raise ValueError(f"{function}: client is closed (status {client.status!r}); pass an open "
                         "dask.distributed Client, or None to run in this process")
    return DaskExecutor(client, retries)


def worker_backend(choice: str, function: str) -> str:
    """The backend a task runs on: the worker's GPU for "auto" when it has one; "cuda" on a
    worker without a usable GPU is a BackendUnavailableError naming ``function``."""
    if choice == "auto":
        return "cuda" if _backend.HAS_CUDA else "cpu"
    if choice == "cuda" and not _backend.HAS_CUDA:
        raise _backend.BackendUnavailableError(f"{function}: backend 'cuda' but this worker has no usable GPU: "
                                               f"{_backend.CUDA_UNAVAILABLE_REASON}")
    return choice
