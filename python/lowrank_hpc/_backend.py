"""Which backend runs a call: the compiled modules, their availability, and the user's choice.

Arrays decide by default (numpy -> CPU, CUDA arrays -> GPU); ``set_backend``, ``use_backend``
and the ``LOWRANK_HPC_BACKEND`` environment variable force one.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from types import ModuleType
from typing import Iterator, Optional

# Idle OpenMP threads that spin steal the cores OpenBLAS needs for the numpy calls between our
# kernels (measured: 10x slower small calls on 2 cores). Set before libgomp loads; users may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _cpu  # noqa: E402

BACKENDS = ("auto", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend is not usable on this machine; the message says why."""


def _probe_cuda() -> tuple[Optional[ModuleType], Optional[ModuleType], str]:
    """Import _cuda and CuPy and count devices; never raises (a broken GPU build only warns)."""
    try:
        from . import _build_info

        if not _build_info.CUDA_BUILT:
            return None, None, "this build has no CUDA backend (nvcc was not found when it was compiled)"
    except ImportError:
        pass
    try:
        from . import _cuda  # type: ignore[attr-defined]
    except ImportError as error:
        return None, None, f"the CUDA module did not load: {error}"
    count = _cuda.device_count()
    if count < 0:
        return _cuda, None, f"no usable CUDA device: {_cuda.error_string(-count)}"
    if count == 0:
        return _cuda, None, "no CUDA device is visible"
    try:
        import cupy  # noqa: F401
    except ImportError:
        return _cuda, None, "CuPy is not installed (pip install cupy-cuda13x); the CUDA backend uses its arrays and cuBLAS"
    except Exception as error:  # a CuPy that fails to import must not break the CPU path
        warnings.warn(f"lowrank_hpc: CuPy failed to import ({error}); CUDA backend disabled", RuntimeWarning)
        return _cuda, None, f"CuPy failed to import: {error}"
    return _cuda, cupy, ""


_cuda_module, _cupy, CUDA_UNAVAILABLE_REASON = _probe_cuda()
HAS_CUDA: bool = _cupy is not None
CUDA_BUILT: bool = _cuda_module is not None

_local = threading.local()


def _validated(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    name = name.lower()
    if name == "cuda" and not HAS_CUDA:
        raise BackendUnavailableError(f"backend 'cuda' is not available: {CUDA_UNAVAILABLE_REASON}")
    return name


_default_backend = _validated(os.environ.get("LOWRANK_HPC_BACKEND", "auto") or "auto")


def get_backend() -> str:
    """The backend in force in this thread: "auto", "cpu" or "cuda"."""
    return getattr(_local, "backend", None) or _default_backend


def set_backend(name: str) -> None:
    """Force a backend for this process ("cpu" or "cuda") or let arrays decide ("auto").

    Raises BackendUnavailableError for "cuda" on a machine without a usable GPU, with the reason.
    """
    global _default_backend
    _default_backend = _validated(name)
    _local.backend = None


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager: force ``name`` for the calls made inside the block in this thread."""
    chosen = _validated(name)
    previous = getattr(_local, "backend", None)
    _local.backend = chosen
    try:
        yield chosen
    finally:
        _local.backend = previous


def cpu_module() -> ModuleType:
    return _cpu


def cuda_module() -> ModuleType:
    if _cuda_module is None or _cupy is None:
        raise BackendUnavailableError(f"the CUDA backend is not available: {CUDA_UNAVAILABLE_REASON}")
    return _cuda_module


def cupy_module() -> ModuleType:
    if _cupy is None:
        raise BackendUnavailableError(f"the CUDA backend is not available: {CUDA_UNAVAILABLE_REASON}")
    return _cupy


# Numbers defined once in the core (cpp/include/lowrank_hpc/core/constants.hpp and the enums the
# kernels take), exported by both modules alike: the halving limits, method and kernel codes.
CONSTANTS: dict = _cpu.CONSTANTS
