"""Arrays across the boundary: backend resolution, conversion and the checks every public call makes.

Every public function takes what numpy (or CuPy) takes: any strides, Fortran order, read-only
arrays, lists, any integer dtype for indices. Each argument is converted once, at the call's
entry, to what the kernels read (C-contiguous, float32/float64 values, int32/int64 indices), and
copied only when it is not that already; solvers convert before their loop, never inside it.
pandas objects with nullable columns (Float64, Int64: pd.NA) convert as scikit-learn converts them
(:func:`host_array`), without this module importing pandas.
CUDA arrays are viewed through CuPy (``__cuda_array_interface__`` or DLPack) without a copy.

Both compiled modules take the same arguments (``cpp/bindings/common``), so a kernel call is
``call.module.kernel(..., call.stream())`` on either backend; status words (first bad index,
counts) are int64 arrays on the call's device, read once by :meth:`Call.read`.

Every check names the argument and the fix: TypeError for the wrong kind or dtype of array,
ValueError for shape, empty or non-finite data, IndexError for out-of-range indices.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from . import _backend, _checks

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
HALF_DTYPE_NAMES = ("float16", "bfloat16")  # bfloat16: ml_dtypes' numpy dtype, recognised by name


def is_half(dtype: Any) -> bool:
    """True for the 16-bit formats the low-precision kernels store (numpy/CuPy float16 and
    ml_dtypes.bfloat16); found by name, so the core never imports ml_dtypes."""
    return np.dtype(dtype).name in HALF_DTYPE_NAMES
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
INDEX_LIMIT = int(np.iinfo(np.int64).max)  # uint64 indices above it have no int64 form (nor a dimension that long)
_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA and kDLCUDAManaged


class ComplexDataError(TypeError, ValueError):
    """Complex values where real ones are meant: a TypeError (the wrong dtype) that is also the
    ValueError scikit-learn raises for complex data."""


def for_backend(function: str, backend: str) -> "Call":
    """A call on a named backend ("cpu" or "cuda"), for functions that place the data themselves
    (estimators moving input to their backend, operators generating their matrices)."""
    if backend not in ("cpu", "cuda"):
        raise ValueError(f"{function}: backend must be 'cpu' or 'cuda', got {backend!r}")
    if backend == "cuda":
        _backend.cuda_module()  # raises BackendUnavailableError with the reason
    return Call(function=function, backend=backend)


def is_device_array(x: Any) -> bool:
    """True for arrays that live on a CUDA device (CuPy, PyTorch CUDA tensors, Numba, JAX...)."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    dlpack_device = getattr(x, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            return int(dlpack_device()[0]) in _DLPACK_CUDA_DEVICES
        except Exception:
            return False
    return False


def to_numpy(x: Any) -> np.ndarray:
    """x as a numpy array: a CUDA array (CuPy's, or any with ``__cuda_array_interface__`` or a
    CUDA DLPack device) copied to the host; anything else by :func:`host_array` (numpy views as
    they are; lists; pandas objects, nullable columns with pd.NA as NaN). Not
    ``hasattr(x, "get")``: a pandas frame has a ``get``."""
    if not is_device_array(x):
        return host_array("", "x", x)
    if not hasattr(x, "__cuda_array_interface__"):
        return _backend.cupy_module().from_dlpack(x).get()
    return _backend.cupy_module().asarray(x).get()


def host_array(function: str, name: str, x: Any, *, indices: bool = False) -> np.ndarray:
    """A host array-like as numpy: ``np.asarray``, except for pandas objects with nullable numeric
    columns (Float64, Int64, boolean, pyarrow numbers: ``read_csv(dtype_backend=...)``, merges),
    which numpy sees as object arrays of pd.NA. They become their numpy dtype (Float32 float32,
    Int64 int64, UInt64 uint64, frames the columns' common dtype) when nothing is missing; with
    pd.NA, values become floats with NaN (what NaN means is the function's: a missing entry, or
    NaN data it refuses), and ``indices`` (an index array) raise ValueError naming ``name``.
    pandas is never imported here: a pandas object exists only once pandas is loaded."""
    converted = _pandas_values(function, name, x, indices)
    return np.asarray(x) if converted is None else converted


def _pandas_values(function: str, name: str, x: Any, indices: bool) -> Optional[np.ndarray]:
    """x's values when x is a pandas object with a nullable numeric dtype; None otherwise (numpy's
    own conversion is right, or gives the object array whose error the caller reports)."""
    if isinstance(x, np.ndarray):
        return None  # the common case, first
    pd = sys.modules.get("pandas")
    if pd is None or not isinstance(x, (pd.Series, pd.DataFrame, pd.Index, pd.api.extensions.ExtensionArray)):
        return None
    dtypes = list(x.dtypes) if isinstance(x, pd.DataFrame) else [x.dtype]
    numeric = [_numpy_dtype_behind(pd, dtype) for dtype in dtypes]
    if all(isinstance(dtype, np.dtype) for dtype in dtypes) or any(dtype is None for dtype in numeric):
        return None  # numpy columns only, or columns that are not numbers (str, categorical...)
    dtype = np.result_type(*numeric)  # not empty: a frame without columns returned above
    missing = np.asarray(x.isna())
    if not missing.any():
        return np.asarray(x.to_numpy(dtype=dtype))
    if indices:
        where = [int(i) for i in np.argwhere(missing)[0]]
        position = where[0] if len(where) == 1 else tuple(where)
        raise ValueError(f"{function}: {name} holds {int(missing.sum())} missing value(s) (pd.NA), the first at "
                         f"position {position}; indices cannot be missing (drop or fill those entries first)")
    return np.asarray(x.to_numpy(dtype=dtype if dtype.kind == "f" else np.dtype(np.float64), na_value=np.nan))


def _numpy_dtype_behind(pd: Any, dtype: Any) -> Optional[np.dtype]:
    """The numpy dtype of a column: itself for numpy dtypes, the numbers behind a pandas nullable
    (or pyarrow) numeric dtype, None for anything else."""
    if isinstance(dtype, np.dtype):
        return dtype if dtype.kind in "biuf" else None
    if not isinstance(dtype, pd.api.extensions.ExtensionDtype):
        return None
    try:
        numpy_dtype = np.dtype(getattr(dtype, "numpy_dtype", None) or "O")
    except TypeError:
        return None
    return numpy_dtype if numpy_dtype.kind in "biuf" else None


def _kind(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__name__}"


@dataclass
class Call:
    """One public call's resolved backend, its array module and the arrays it was given."""

    function: str
    backend: str  # "cpu" or "cuda"
    template: Any = None  # an input array whose type the outputs take
    _float_dtype: Optional[np.dtype] = field(default=None, repr=False)
    _float_owner: str = field(default="", repr=False)
    # Resolved once per call (small kernels are called often): the device flag, the array
    # module (numpy or CuPy) and the compiled module (_cpu or _cuda).
    on_device: bool = field(init=False, repr=False)
    xp: Any = field(init=False, repr=False)
    module: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.on_device = self.backend == "cuda"
        self.xp = _backend.cupy_module() if self.on_device else np
        self.module = _backend.cuda_module() if self.on_device else _backend.cpu_kernels()

    # ------------------------------------------------------------------ conversion
    def _as_backend_array(self, name: str, x: Any, indices: bool = False):
        """x as an ndarray of the call's backend (lists become arrays; CUDA arrays are views;
        pandas' nullable columns as :func:`host_array` converts them, ``indices`` for an index array)."""
        if x is None:
            _checks.required(self.function, **{name: x})
        if not self.on_device:
            converted = _pandas_values(self.function, name, x, indices)  # its ValueError as it is
            if converted is not None:
                return converted
            try:
                if hasattr(x, "__dlpack__") and not hasattr(x, "__array__"):
                    return np.from_dlpack(x)  # a host DLPack array, viewed without a copy
                return np.asarray(x)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{self.function}: {name} must be array-like, got {_kind(x)} ({error})") from None
        cupy = _backend.cupy_module()
        if isinstance(x, cupy.ndarray):
            array = x
        elif hasattr(x, "__cuda_array_interface__"):
            array = cupy.asarray(x)  # a view through the interface, not a copy
        else:
            array = cupy.from_dlpack(x)
        current = cupy.cuda.Device().id
        if array.device.id != current:
            raise ValueError(f"{self.function}: {name} is on CUDA device {array.device.id} but the current "
                             f"device is {current}; use `with cupy.cuda.Device({array.device.id}):`")
        return array

    def float_array(self, name: str, x: Any, ndims: Sequence[int], *, check_finite: bool = True,
                    allow_empty: bool = False, halves: bool = False):
        """A C-contiguous float32/float64 array of one of ``ndims`` dimensions, in the call's one
        float dtype. Integer, boolean and float16 input becomes float64 (the call's dtype when an
        earlier argument set it); complex or non-numeric input is a TypeError. With ``halves``
        (the low-precision kernels) float16 and bfloat16 arrays are kept as they are."""
        x = self._as_backend_array(name, x)
        x = _native_byte_order(x)
        if x.dtype not in FLOAT_DTYPES and not (halves and is_half(x.dtype)):
            if x.dtype.kind == "c":
                raise ComplexDataError(f"{self.function}: {name} is complex; Complex data not supported (pass real "
                                       "float32/float64 values)")
            if x.dtype.kind not in "iubfO":
                raise TypeError(f"{self.function}: {name} must be real numbers (float32 or float64), got {x.dtype}")
            try:  # object arrays (lists of mixed numbers, pandas columns) convert when they hold numbers
                x = x.astype(self._float_dtype if self._float_dtype is not None else np.float64)
            except (TypeError, ValueError) as error:
                raise TypeError(f"{self.function}: {name} must be real numbers (float32 or float64), got "
                                f"{x.dtype} values that are not numbers ({error})") from None
        if self._float_dtype is None:
            self._float_dtype, self._float_owner = x.dtype, name
        elif x.dtype != self._float_dtype:
            raise TypeError(f"{self.function}: {name} is {x.dtype} but {self._float_owner} is "
                            f"{self._float_dtype}; pass both in one precision")
        if x.ndim not in ndims:
            wanted = " or ".join(str(d) for d in ndims)
            raise ValueError(f"{self.function}: {name} must have {wanted} dimensions, got shape {tuple(x.shape)}")
        if x.size == 0 and not allow_empty:
            raise ValueError(f"{self.function}: {name} is empty (shape {tuple(x.shape)})")
        x = self.xp.asarray(x, order="C")  # not ascontiguousarray, which makes a 0-d x 1-d
        if check_finite:
            self.check_finite(name, x)
        return x

    def index_array(self, name: str, x: Any, length: Optional[int] = None, bound: Optional[int] = None):
        """A C-contiguous 1-D int32/int64 index array from any integer input (range is checked
        by the kernels that read it): int32 and int64 are kept, other integer dtypes become int64
        (one copy). uint64 values above the int64 maximum are out of range of every dimension: the
        IndexError names the first, and ``bound`` (the size indexed, when the caller knows it)."""
        x = _native_byte_order(self._as_backend_array(name, x, indices=True))
        if x.dtype.kind not in "iu":
            if x.dtype.kind == "f" and x.size == 0:
                x = x.astype(np.int64)  # np.asarray([]) is float64: an empty list of indices
            else:
                raise TypeError(f"{self.function}: {name} must hold integers (any integer dtype), got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"{self.function}: {name} must be 1-D, got shape {tuple(x.shape)}")
        if x.dtype == np.uint64 and x.size and int(x.max()) > INDEX_LIMIT:
            self._raise_beyond_int64(name, x, bound)
        if x.dtype not in INDEX_DTYPES:
            x = x.astype(np.int64)
        if length is not None and x.shape[0] != length:
            raise ValueError(f"{self.function}: {name} has length {x.shape[0]}, expected {length}")
        return self.xp.ascontiguousarray(x)

    def _raise_beyond_int64(self, name: str, x: Any, bound: Optional[int]) -> None:
        """The kernels' IndexError for the first uint64 index no int64 holds (no size reaches it)."""
        k = int(self.xp.argmax(x > np.uint64(INDEX_LIMIT)))
        value = int(x[k])
        if bound is not None:
            raise IndexError(f"{self.function}: {name}[{k}] = {value} is out of range [0, {int(bound)})")
        raise IndexError(f"{self.function}: {name}[{k}] = {value} is out of range [0, n) of the size n it indexes "
                         f"(every index is below 2**63 - 1 = {INDEX_LIMIT})")

    def coordinates(self, rows: Any, cols: Any, allow_empty: bool = False,
                    shape: Optional[Sequence[int]] = None):
        """Validated (rows, cols): 1-D, equal length, one int32/int64 dtype (int64 when they
        differ), not empty unless ``allow_empty`` (a product over no entry: the kernels).
        ``shape`` (n1, n2), when the caller knows it, is the range an IndexError names."""
        n1, n2 = (None, None) if shape is None else shape
        rows = self.index_array("rows", rows, bound=n1)
        cols = self.index_array("cols", cols, length=rows.shape[0], bound=n2)
        if rows.dtype != cols.dtype:
            rows, cols = rows.astype(np.int64), cols.astype(np.int64)
        if rows.shape[0] == 0 and not allow_empty:
            raise ValueError(f"{self.function}: rows and cols are empty; there is no entry")
        return rows, cols

    def output_array(self, name: str, out: Any, shape: tuple[int, ...], dtype: np.dtype,
                     inputs: Optional[dict[str, Any]] = None, in_place: Sequence[str] = ()):
        """An array the call writes into: it must already be what the kernel writes (this
        backend's array type, C-contiguous, writable, exact shape and dtype); never converted,
        since a copy would not be the caller's array. ``inputs`` (name: validated C-contiguous
        array) are what the kernel reads: out must not share memory with any of them, except
        that it may be exactly one named in ``in_place`` (same address, shape and strides)."""
        xp = self.xp
        if not isinstance(out, xp.ndarray):
            raise TypeError(f"{self.function}: {name} must be a {xp.__name__}.ndarray to write into, got {_kind(out)}")
        if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
            raise ValueError(f"{self.function}: {name} has shape {tuple(out.shape)} and dtype {out.dtype}, expected "
                             f"{tuple(shape)} and {np.dtype(dtype)}")
        if not out.flags.c_contiguous:
            raise ValueError(f"{self.function}: {name} must be C-contiguous to be written in place")
        if not self.on_device and not out.flags.writeable:
            raise ValueError(f"{self.function}: {name} is read-only")
        for input_name, x in (inputs or {}).items():
            # A kernel reading an x that out overlaps reads entries it already overwrote (exact for contiguous arrays).
            if not self.xp.may_share_memory(out, x):
                continue
            if input_name in in_place and _same_view(self, out, x):
                continue
            allowed = f"exactly {input_name} (in place) or " if input_name in in_place else ""
            raise ValueError(f"{self.function}: {name} shares memory with {input_name}; {name} must be {allowed}a "
                             f"separate array that does not overlap {input_name}")
        return out

    @property
    def float_dtype(self) -> np.dtype:
        assert self._float_dtype is not None, "float_array must be called first"
        return self._float_dtype

    def check_finite(self, name: str, x: Any) -> None:
        """Raise ValueError if x holds NaN or inf: data is reported, never propagated."""
        bad = count_nonfinite(self, x)
        if bad:
            raise ValueError(f"{self.function}: {name} contains {bad} NaN/inf value(s); "
                             "clean or mask them before the call")

    def stream(self) -> int:
        """The handle the kernels run on: CuPy's current stream on the GPU, 0 on the CPU."""
        return _backend.cupy_module().cuda.get_current_stream().ptr if self.on_device else 0

    def status(self, *values: int):
        """An int64 status word array on the call's device, preset to ``values``; a kernel lowers
        or adds to it (first bad entry, counts) and :meth:`read` fetches it once."""
        return self.xp.asarray(np.array(values, dtype=np.int64))

    def read(self, status) -> list[int]:
        """The values of a status word array on the host (the one device sync of a kernel call)."""
        return self.to_host(status).tolist()

    def to_host(self, x: Any) -> np.ndarray:
        """A numpy copy (GPU) or the array itself (CPU)."""
        return x.get() if self.on_device else np.asarray(x)

    def wrap(self, out: Any) -> Any:
        """Give a result the array type of the inputs (CuPy results go back through DLPack)."""
        if not self.on_device or self.template is None:
            return out
        cupy = _backend.cupy_module()
        if isinstance(self.template, cupy.ndarray):
            return out
        library = sys.modules.get(type(self.template).__module__.split(".")[0])
        from_dlpack = getattr(library, "from_dlpack", None) if library is not None else None
        return from_dlpack(out) if from_dlpack is not None else out


def _native_byte_order(x: Any) -> Any:
    """x in its dtype's native byte order ('>f4' becomes float32, not the float64 that the
    conversion of other dtypes gives), copied only when it is not."""
    return x if x.dtype.isnative else x.astype(x.dtype.newbyteorder("="))


def _same_view(call: Call, a: Any, b: Any) -> bool:
    """Whether a and b are the same elements of the same memory (an in-place call)."""
    address = (lambda x: x.data.ptr) if call.on_device else (lambda x: x.__array_interface__["data"][0])
    return (address(a) == address(b) and a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape)
            and tuple(a.strides) == tuple(b.strides))


def count_nonfinite(call: Call, x: Any) -> int:
    """Number of NaN/inf values in a C-contiguous float array on the call's backend."""
    if x.size == 0:
        return 0
    count = call.status(0)
    # 1-D (a view of the contiguous x): the bindings' arrays hold at most 4 dimensions.
    call.module.count_nonfinite(x.reshape(-1), count, call.stream())
    return call.read(count)[0]


def sum_of_squares(xp: Any, x: Any) -> float:
    """The sum of x^2 in float64 on x's backend (a loss: float32 sums would hide its small
    decreases), from one float64 copy of x."""
    wide = x.astype(np.float64, copy=False)
    return float(xp.vdot(wide, wide))


def resolve(function: str, **arrays: Any) -> Call:
    """Pick the backend for one call from its arrays and the backend in force.

    Host (numpy) and device arrays may not mix, except ``offsets`` (B + 1 problem boundaries, read
    on the host anyway) on the host beside device data; a forced backend must match the arrays.
    """
    host, device = [], []
    template = None
    for name, x in arrays.items():
        if x is None:
            continue
        if name == "offsets" and not is_device_array(x):
            continue  # follows the other arrays: offsets_array moves it to the device
        # Device first: CuPy arrays define __array__ too (to refuse an implicit copy).
        if is_device_array(x):
            device.append(name)
            template = x if template is None else template
        elif (isinstance(x, (np.ndarray, list, tuple, np.generic)) or hasattr(x, "__array_interface__")
                or hasattr(x, "__array__") or hasattr(x, "__dlpack__")):
            host.append(name)
        else:
            raise TypeError(f"{function}: {name} must be an array (numpy, a list, or a CUDA array: CuPy, or any "
                            f"__cuda_array_interface__/DLPack array), got {_kind(x)}")
    if host and device:
        raise TypeError(f"{function}: arguments mix host and device arrays ({', '.join(host)} on the host, "
                        f"{', '.join(device)} on the GPU); move them to one side first")
    wanted = _backend.get_backend()
    found = "cuda" if device else "cpu"
    if device and not _backend.HAS_CUDA:
        raise _backend.BackendUnavailableError(
            f"{function}: got CUDA arrays but the CUDA backend is not available: {_backend.CUDA_UNAVAILABLE_REASON}")
    if wanted != "auto" and wanted != found and (host or device):
        side = "host (numpy)" if host else "device"
        raise TypeError(f"{function}: backend '{wanted}' is in force but the arrays are {side} arrays; "
                        f"move them ({'cupy.asarray' if wanted == 'cuda' else 'cupy.asnumpy'}) or use "
                        f"lowrank_hpc.use_backend('{found}')")
    return Call(function=function, backend=found if (host or device) else (wanted if wanted != "auto" else "cpu"),
                template=template)


def offsets_input(call: Call, name: str, offsets: Any):
    """Problem boundaries as a 1-D index array on the call's backend; host offsets beside device
    data are copied there (B + 1 numbers, once a call)."""
    if call.on_device and not is_device_array(offsets):
        offsets = call.xp.asarray(np.asarray(offsets))
    return call.index_array(name, offsets)


def offsets_array(call: Call, name: str, offsets: Any, batch: int, nnz: int):
    """Validated int64 offsets of length batch + 1 (0, ..., nnz, non-decreasing) on the call's
    backend: read on the host once per call (a solver validates them once per solve)."""
    if offsets is None:
        if batch != 1:
            raise ValueError(f"{call.function}: batched factors (batch={batch}) need {name}, an array of "
                             f"length batch + 1 that splits the entries among the problems")
        return call.xp.asarray(np.array([0, nnz], dtype=np.int64))
    offsets = offsets_input(call, name, offsets)
    if offsets.shape[0] != batch + 1:
        raise ValueError(f"{call.function}: {name} has length {offsets.shape[0]}, expected {batch + 1}")
    host = call.to_host(offsets)
    if host[0] != 0 or host[-1] != nnz:
        raise ValueError(f"{call.function}: {name} must start at 0 and end at the number of entries {nnz}, "
                         f"got {int(host[0])} ... {int(host[-1])}")
    if np.any(np.diff(host) < 0):
        raise ValueError(f"{call.function}: {name} must be non-decreasing")
    return offsets.astype(np.int64, copy=False)


def problem_of_entries(call: Call, offsets: Any, nnz: int):
    """(nnz,) int64 problem index of every entry on the call's backend: the last b with
    offsets[b] <= k (empty problems own nothing). A sort-free search that numpy and CuPy run
    alike (CuPy's repeat takes no device array of counts)."""
    return call.xp.searchsorted(offsets, call.xp.arange(nnz, dtype=np.int64), side="right") - 1
