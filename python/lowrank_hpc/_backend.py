"""Which backend runs a call: the compiled modules, their availability, and the user's choice.

Arrays decide by default (numpy -> CPU, CUDA arrays -> GPU); ``set_backend``, ``use_backend``
and the ``LOWRANK_HPC_BACKEND`` environment variable force one.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
import sys
import threading
import warnings
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np

# Idle OpenMP threads that spin steal the cores OpenBLAS needs for the numpy calls between our
# kernels (measured: 10x slower small calls on 2 cores). Set before libgomp loads; users may override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _cpu_isa  # noqa: E402

# The CPU backend at the widest instruction-set level this processor runs (see _cpu_isa).
_cpu = _cpu_isa.load()


# Whether this process may have started OpenMP's thread pool: set where kernels are dispatched
# (cpu_kernels(), and the JAX handlers' registration), not by importing or asking info().
_openmp_used = False


def cpu_kernels() -> ModuleType:
    """The CPU module, to run its kernels (what cpu_module() gives, noted for fork: see below)."""
    global _openmp_used
    _openmp_used = True
    return _cpu


def _after_fork_in_child() -> None:
    """In a fork()ed child of a process that ran kernels, run them on one OpenMP thread (what
    PyTorch does): libgomp's pool is not fork-safe, and a parallel region in such a child waited
    forever on threads that were not copied. ``info()["openmp_threads"]`` then says 1. A child
    of a process that never ran one (a forkserver that preloaded lowrank_hpc) keeps its threads.
    The BLAS scope keeps only the forking thread's open scopes, under a new lock (another thread
    of the parent may have held it, or a scope, and none came along)."""
    global _blas_scope_lock
    if _openmp_used:
        for name in _cpu_isa.MODULES.values():  # every level module loaded (tests may load several)
            module = sys.modules.get(f"{__package__}.{name}")
            if module is not None:
                module.set_num_threads(1)
    _blas_scope_lock = threading.Lock()
    survivor = threading.get_ident()  # the forking thread keeps its ident in the child
    for ident in [ident for ident in _blas_scope_depths if ident != survivor]:
        del _blas_scope_depths[ident]
    if not _blas_scope_depths and _blas_scope_limit is not None:  # scopes the other threads held: lifted
        _lift_blas_limit()


# Registered once per process: a reload of this module must not add a second handler.
if not globals().get("_fork_handler_registered") and hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
    _fork_handler_registered = True

BACKENDS = ("auto", "cpu", "cuda")


class BackendUnavailableError(RuntimeError):
    """The requested backend is not usable on this machine; the message says why."""


class CudaImage(NamedTuple):
    """One kernel image in the build: SASS for sm_XY or PTX for compute_XY (``suffix`` "a" or "f"
    for the arch- and family-specific variants)."""

    kind: str  # "sass" or "ptx"
    major: int
    minor: int
    suffix: str = ""

    @property
    def name(self) -> str:
        prefix = "sm" if self.kind == "sass" else "compute"
        return f"{prefix}_{self.major}{self.minor}{self.suffix}"

    def runs_on(self, capability: tuple[int, int]) -> bool:
        """Whether the CUDA driver runs this image on a device of ``capability``: SASS on the same
        major with a minor at least the image's; PTX, JIT-compiled, on any later device;
        "a" images on that exact capability only; "f" images within their major."""
        major, minor = capability
        if self.suffix == "a":
            return (major, minor) == (self.major, self.minor)
        if self.kind == "sass" or self.suffix == "f":
            return major == self.major and minor >= self.minor
        return (major, minor) >= (self.major, self.minor)


_ARCH_ENTRY = re.compile(r"^(\d+)([af]?)(-real|-virtual)?$")


def parse_cuda_archs(archs: Union[str, Sequence[str]]) -> Optional[list[CudaImage]]:
    """The kernel images of a CMake CUDA_ARCHITECTURES list (``_build_info.CUDA_ARCHS``, or the
    LOWRANK_HPC_CUDA_ARCHS string "86;90"): "86-real" is SASS sm_86, "86-virtual" PTX compute_86,
    a plain "86" both. None when an entry is not a number (``native``, ``all``): unknown images."""
    entries = re.split(r"[;,\s]+", archs) if isinstance(archs, str) else list(archs)
    images: list[CudaImage] = []
    for entry in entries:
        entry = str(entry).strip()
        if not entry:
            continue
        match = _ARCH_ENTRY.match(entry)
        if match is None:
            return None
        number, suffix, variant = int(match.group(1)), match.group(2), match.group(3)
        major, minor = divmod(number, 10)
        if variant != "-virtual":
            images.append(CudaImage("sass", major, minor, suffix))
        if variant != "-real":
            images.append(CudaImage("ptx", major, minor, suffix))
    return images


def describe_cuda_archs(images: Sequence[CudaImage]) -> str:
    """ "sm_75, sm_80, sm_120 (PTX compute_120)": the SASS images, then the PTX ones."""
    sass = ", ".join(image.name for image in images if image.kind == "sass")
    ptx = ", ".join(image.name for image in images if image.kind == "ptx")
    if sass and ptx:
        return f"{sass} (PTX {ptx})"
    return sass or (f"PTX {ptx}" if ptx else "no architecture")


def cuda_arch_mismatch(archs: Union[str, Sequence[str]], capability: tuple[int, int],
                       device: Optional[str] = None,
                       compiler_archs: Sequence[int] = ()) -> Optional[str]:
    """Why a device of ``capability`` (major, minor) has no kernel image in a build compiled for
    ``archs`` (``_build_info.CUDA_ARCHS``), or None when one runs on it (or the list is not
    understood: then the first launch decides). ``device`` names the device in the message;
    ``compiler_archs`` (``_build_info.CUDA_COMPILER_ARCHS``) lets it say when the compiling
    toolkit cannot build for that device at all."""
    images = parse_cuda_archs(archs)
    if images is None or any(image.runs_on(capability) for image in images):
        return None
    major, minor = capability
    if device is None:
        device = f"a device of compute capability {major}.{minor}"
    arch = f"{major}{minor}"
    reason = (f"this build has kernels for {describe_cuda_archs(images)}; {device} has none: "
              f"rebuild with LOWRANK_HPC_CUDA_ARCHS={arch}")
    if compiler_archs and major * 10 + minor not in compiler_archs:
        reason += (f" using a CUDA toolkit that supports sm_{arch} (the nvcc of this build supports "
                   f"sm_{min(compiler_archs)} to sm_{max(compiler_archs)})")
    return reason


def _device_arch_problem(cuda: ModuleType) -> Optional[str]:
    """The import-time check: does the current device have an image in this build?"""
    try:
        from . import _build_info
    except ImportError:
        return None
    archs = getattr(_build_info, "CUDA_ARCHS", None)
    if not archs or not hasattr(cuda, "device_compute_capability"):  # an older build: no check
        return None
    device = cuda.current_device()
    if device < 0:
        return f"no usable CUDA device: {cuda.error_string(-device)}"
    capability = cuda.device_compute_capability(device)
    if isinstance(capability, int):
        return f"no usable CUDA device: {cuda.error_string(-capability)}"
    name = cuda.device_name(device)
    label = f"device {device} ({name + ', ' if name else ''}compute capability {capability[0]}.{capability[1]})"
    return cuda_arch_mismatch(archs, tuple(capability), label,
                              getattr(_build_info, "CUDA_COMPILER_ARCHS", ()))


_cuda_device_ready = False  # set by _probe_cuda: the CUDA module loaded and the device runs its kernels


def _probe_cuda() -> tuple[Optional[ModuleType], Optional[ModuleType], str]:
    """Import _cuda and CuPy, count devices and check that the current one has a kernel image in
    this build; never raises (a broken GPU build only warns)."""
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
    problem = _device_arch_problem(_cuda)
    if problem:
        return _cuda, None, problem
    global _cuda_device_ready
    _cuda_device_ready = True  # what needs no CuPy (lowrank_hpc.jax's FFI handlers) can run from here
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


def cuda_kernels_run_here() -> Optional[ModuleType]:
    """The CUDA module where it loaded and the current device runs its kernels, CuPy or not
    (lowrank_hpc.jax's FFI handlers in it need none), else None."""
    return _cuda_module if _cuda_device_ready else None


def cupy_module() -> ModuleType:
    if _cupy is None:
        raise BackendUnavailableError(f"the CUDA backend is not available: {CUDA_UNAVAILABLE_REASON}")
    return _cupy


class _StreamHandle:
    """A raw cudaStream_t behind the CUDA stream protocol (``__cuda_stream__``: version 0, handle)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> tuple:
        return (0, self.handle)


def external_stream(handle: int, device_index: int) -> Any:
    """CuPy's view of another library's stream (torch's, JAX's): a context manager that makes it
    current. CuPy 14 deprecates ExternalStream for Stream.from_external; older CuPy has only the former."""
    cupy = cupy_module()
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is None:
        return cupy.cuda.ExternalStream(handle, device_index)
    with cupy.cuda.Device(device_index):
        return from_external(_StreamHandle(handle))


# Numbers defined once in the core (cpp/include/lowrank_hpc/core/constants.hpp and the enums the
# kernels take), exported by both modules alike: the halving limits, method and kernel codes.
CONSTANTS: dict = _cpu.CONSTANTS


def array_module(x: Any) -> ModuleType:
    """numpy for a numpy array, CuPy for a CuPy array: the module whose functions take x."""
    return np if isinstance(x, np.ndarray) else cupy_module()


def single_threaded_blas() -> contextlib.AbstractContextManager:
    """A scope in which the host BLAS/LAPACK runs on one thread.

    Solvers whose dense work is tall-skinny (n x r SVDs and Grams, r small) between OpenMP
    kernels run it in here: OpenBLAS's threads and the kernels' OpenMP threads spin-wait for
    each other otherwise, and on a loaded 2-core machine a 1797 x 20 SVD took 114 ms instead of
    2 ms. threadpoolctl is scikit-learn's tool for exactly this oversubscription; its scan of
    the loaded libraries (about 1 ms) is done once. Nested scopes (a solver inside an estimator's
    fit) cost nothing: the limit is set by the outermost scope and lifted when the last one open,
    in any thread, closes (a threadpoolctl limit costs about 0.1 ms each way).
    """
    return _single_threaded_scope()


_blas_scope_lock = threading.Lock()
_blas_scope_depths: dict[int, int] = {}  # open scopes by thread (a forked child keeps its own thread's)
_blas_scope_limit: Any = None


@contextlib.contextmanager
def _single_threaded_scope() -> Iterator[None]:
    global _blas_scope_limit
    me = threading.get_ident()
    with _blas_scope_lock:
        if not _blas_scope_depths:
            with _openblas_control_kept_as_found():
                _blas_scope_limit = _blas_controller().limit(limits=1, user_api="blas")
        _blas_scope_depths[me] = _blas_scope_depths.get(me, 0) + 1
    try:
        yield
    finally:
        with _blas_scope_lock:
            depth = _blas_scope_depths.get(me, 0) - 1
            if depth > 0:
                _blas_scope_depths[me] = depth
            else:
                _blas_scope_depths.pop(me, None)
            if not _blas_scope_depths and _blas_scope_limit is not None:
                _lift_blas_limit()


def _lift_blas_limit() -> None:
    """Restore the BLAS thread counts the outermost scope found (under the scope's lock)."""
    global _blas_scope_limit
    with _openblas_control_kept_as_found():
        _blas_scope_limit.restore_original_limits()
    _blas_scope_limit = None


@contextlib.contextmanager
def _openblas_control_kept_as_found() -> Iterator[None]:
    """Around a limit set or restored for the scope: afterwards this thread holds threadpoolctl's
    OpenBLAS control only if it held it before (a limit of the caller's own must stay the caller's).

    threadpoolctl >= 3.8 lets only the thread that last set a (pthreads) OpenBLAS limit set
    another while it lives, and ignores the others silently. The scope is opened by whichever
    thread comes first and closed by whichever leaves last: without the release the closing
    thread's restore was ignored while the opening one lived, OpenBLAS stayed at 1 thread, and
    every later scope took that 1 as the original to restore (for the rest of the process). Older
    threadpoolctl has no such rule, nor these attributes."""
    from threadpoolctl import OpenBLASController

    shared = getattr(OpenBLASController, "_SHARED_STATE", None)
    held = getattr(shared, "controlling_thread", None) is threading.current_thread()
    yield
    clear = getattr(OpenBLASController, "clear_controlling_thread", None)
    if not held and clear is not None:
        clear()


@functools.lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.lru_cache(maxsize=None)
def tile_gemm_address(dtype: Any) -> int:
    """The address of SciPy's BLAS sgemm (float32) or dgemm (float64), from
    ``scipy.linalg.cython_blas``: a Fortran GEMM with 32-bit integers, which the CPU module's
    tiled products call from each OpenMP thread on its own row tiles (inside
    :func:`single_threaded_blas`). 0 for other dtypes, or where SciPy's capsule is missing or
    declares another interface."""
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        return 0
    try:
        from scipy.linalg import cython_blas
        capsule = cython_blas.__pyx_capi__["sgemm" if dtype == np.float32 else "dgemm"]
    except (ImportError, AttributeError, KeyError):
        return 0
    return capsule_gemm_address(capsule)


@functools.lru_cache(maxsize=1)
def openblas_thread_controls() -> tuple[int, ...]:
    """The addresses of ``openblas_set_num_threads`` and ``openblas_get_num_threads`` (each
    library's prefixed names) of every OpenBLAS threadpoolctl finds in the process, in pairs
    (set, get): code running without the GIL (lowrank_hpc.jax's top-k handlers) sets them to one
    thread around its tiles and back after, as :func:`single_threaded_blas` does for the same
    numbers. Empty where threadpoolctl finds none (another BLAS: the handlers then leave its
    threads as they are). An OpenBLAS on OpenMP threads is left out: its count is the calling
    thread's OpenMP one (1 would leave the handler's own loop one thread), and called inside an
    OpenMP parallel region it runs on one thread anyway."""
    import ctypes

    addresses: list[int] = []
    for controller in _blas_controller().select(internal_api="openblas").lib_controllers:
        if getattr(controller, "threading_layer", None) == "openmp":
            continue
        get_symbol = getattr(controller, "_get_symbol", None)  # threadpoolctl >= 3.2
        functions = [get_symbol(name) if get_symbol else None
                     for name in ("openblas_set_num_threads", "openblas_get_num_threads")]
        if all(f is not None for f in functions):
            addresses += [ctypes.cast(f, ctypes.c_void_p).value or 0 for f in functions]
    return tuple(addresses)


def capsule_gemm_address(capsule: Any) -> int:
    """The function address in a Cython capsule whose declared signature (its name) is a GEMM's
    with 32-bit integers (transa, transb, then m, n, k as ``int *``); 0 for any other capsule."""
    import ctypes

    # Prototypes of our own: setting restype/argtypes on ctypes.pythonapi's would change them
    # for every other user of those functions.
    name_of = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
    pointer_of = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
        ("PyCapsule_GetPointer", ctypes.pythonapi))
    try:
        name = name_of(capsule)
    except (TypeError, ValueError, ctypes.ArgumentError):  # not a capsule
        return 0
    if not name or not name.startswith(b"void (char *, char *, int *, int *, int *, "):
        return 0
    return int(pointer_of(capsule, name) or 0)


# The host GEMM of the dense products (lowrank_product, kernel_product): numpy's BLAS, unless a
# framework adapter set its own for the duration of its call (see host_gemm), with whether it
# takes 16-bit factors.
_host_gemm: contextvars.ContextVar[Optional[tuple[Callable, bool]]] = contextvars.ContextVar("host_gemm", default=None)


def matmul(xp: ModuleType, a: Any, b: Any, out: Any = None) -> Any:
    """a @ b (stacked or 2-D) by the vendor BLAS: CuPy's cuBLAS for device arrays; for numpy
    arrays numpy's BLAS, or the GEMM of the enclosing :func:`host_gemm` scope."""
    scope = _host_gemm.get() if xp is np else None
    if scope is None:
        return xp.matmul(a, b, out=out)
    return scope[0](a, b, out)


def host_gemm_is_set() -> bool:
    """Whether a :func:`host_gemm` scope (a framework adapter's GEMM) is open in this context."""
    return _host_gemm.get() is not None


def gemm_takes_halves(xp: ModuleType) -> bool:
    """Whether :func:`matmul` of ``xp`` arrays multiplies float16/bfloat16 factors itself, summing
    in float32 and rounding each entry once (only a :func:`host_gemm` scope that says so)."""
    scope = _host_gemm.get() if xp is np else None
    return scope is not None and scope[1]


@contextlib.contextmanager
def host_gemm(gemm: Callable[[np.ndarray, np.ndarray, Optional[np.ndarray]], np.ndarray], *,
              takes_halves: bool = False) -> Iterator[None]:
    """A scope in which the dense products' host GEMM is ``gemm(a, b, out)`` (returns a @ b, in
    ``out`` when given) instead of numpy's. lowrank_hpc.torch runs its CPU operators in one with
    torch's GEMM: numpy's OpenBLAS threads, woken between torch's, spun on the cores that torch's
    threads and ours wanted (a 2000 x 2000 tanh(U V^T), forward and backward, took 33-40 ms
    instead of 14-20 with OpenBLAS on one thread). ``takes_halves``: ``gemm`` also multiplies
    float16/bfloat16 arrays, summing in float32 and rounding each entry once, so
    ``lowrank_product`` hands it 16-bit factors instead of upcasting them and rounding after."""
    token = _host_gemm.set((gemm, takes_halves))
    try:
        yield
    finally:
        _host_gemm.reset(token)
