"""Arrays across the boundary: backend resolution and the checks every public call makes.

Every check names the argument and the fix: TypeError for the wrong kind or dtype of array,
ValueError for shape, layout, empty or non-finite data, IndexError for out-of-range indices.
Nothing is copied silently: CUDA arrays are viewed through CuPy without a copy, and host
arrays must already be C-contiguous with the right dtype.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from . import _backend

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA and kDLCUDAManaged


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

    @property
    def on_device(self) -> bool:
        return self.backend == "cuda"

    @property
    def xp(self):
        return _backend.cupy_module() if self.on_device else np

    @property
    def module(self):
        return _backend.cuda_module() if self.on_device else _backend.cpu_module()

    # ------------------------------------------------------------------ conversion
    def _as_backend_array(self, name: str, x: Any):
        if not self.on_device:
            return x
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

    def _check_layout(self, name: str, x: Any) -> None:
        if not x.flags.c_contiguous:
            fix = "numpy.ascontiguousarray" if not self.on_device else "cupy.ascontiguousarray"
            raise ValueError(f"{self.function}: {name} must be C-contiguous (row-major); pass {fix}({name})")

    def float_array(self, name: str, x: Any, ndims: Sequence[int], *, check_finite: bool = True,
                    allow_empty: bool = False):
        """A float32/float64 array of one of ``ndims`` dimensions, same dtype as the call's others."""
        x = self._as_backend_array(name, x)
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{self.function}: {name} must be float32 or float64, got {x.dtype}")
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
        self._check_layout(name, x)
        if check_finite:
            self.check_finite(name, x)
        return x

    def index_array(self, name: str, x: Any, length: Optional[int] = None):
        """A 1-D int32/int64 index array (range is checked by the kernels that read it)."""
        x = self._as_backend_array(name, x)
        if x.dtype not in INDEX_DTYPES:
            raise TypeError(f"{self.function}: {name} must be int32 or int64, got {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"{self.function}: {name} must be 1-D, got shape {tuple(x.shape)}")
        if length is not None and x.shape[0] != length:
            raise ValueError(f"{self.function}: {name} has length {x.shape[0]}, expected {length}")
        self._check_layout(name, x)
        return x

    def coordinates(self, rows: Any, cols: Any):
        """Validated (rows, cols): 1-D, equal length, one int32/int64 dtype, not empty."""
        rows = self.index_array("rows", rows)
        cols = self.index_array("cols", cols, length=rows.shape[0])
        if rows.dtype != cols.dtype:
            raise TypeError(f"{self.function}: rows is {rows.dtype} but cols is {cols.dtype}; use one index dtype")
        if rows.shape[0] == 0:
            raise ValueError(f"{self.function}: rows and cols are empty; there is no entry")
        return rows, cols

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
        return _backend.cupy_module().cuda.get_current_stream().ptr if self.on_device else 0

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


def count_nonfinite(call: Call, x: Any) -> int:
    """Number of NaN/inf values in a C-contiguous float array on the call's backend."""
    if x.size == 0:
        return 0
    if not call.on_device:
        return int(call.module.count_nonfinite(x.reshape(-1)))
    cupy = _backend.cupy_module()
    count = cupy.zeros(1, dtype=cupy.int64)
    call.module.count_nonfinite(x.dtype.name, x.data.ptr, x.size, count.data.ptr, call.stream())
    return int(count.get()[0])


def resolve(function: str, **arrays: Any) -> Call:
    """Pick the backend for one call from its arrays and the backend in force.

    Host (numpy) and device arrays may not mix; a forced backend must match the arrays.
    """
    host, device = [], []
    template = None
    for name, x in arrays.items():
        if x is None:
            continue
        if isinstance(x, np.ndarray):
            host.append(name)
        elif is_device_array(x):
            device.append(name)
            template = x if template is None else template
        else:
            raise TypeError(f"{function}: {name} must be a numpy.ndarray or a CUDA array "
                            f"(CuPy, or any __cuda_array_interface__/DLPack array), got {_kind(x)}")
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


def offsets_array(call: Call, name: str, offsets: Any, batch: int, nnz: int):
    """Validated int64 offsets of length batch + 1 (0, ..., nnz, non-decreasing) on the call's backend."""
    xp = call.xp
    if offsets is None:
        if batch != 1:
            raise ValueError(f"{call.function}: batched factors (batch={batch}) need {name}, an array of "
                             f"length batch + 1 that splits the entries among the problems")
        return xp.asarray(np.array([0, nnz], dtype=np.int64))
    offsets = call.index_array(name, offsets, length=batch + 1)
    host = offsets.get() if call.on_device else offsets
    if host[0] != 0 or host[-1] != nnz:
        raise ValueError(f"{call.function}: {name} must start at 0 and end at the number of entries {nnz}, "
                         f"got {int(host[0])} ... {int(host[-1])}")
    if np.any(np.diff(host) < 0):
        raise ValueError(f"{call.function}: {name} must be non-decreasing")
    return offsets.astype(np.int64, copy=False) if offsets.dtype != np.int64 else offsets
