"""lowrank_hpc.info(): what this installation can do on this machine."""
from __future__ import annotations

from typing import Any

from . import _backend, _cpu_isa

__version__ = "0.1.0"


def info() -> dict[str, Any]:
    """Version, backends built and usable, the CUDA kernel images compiled, CUDA device (name,
    memory) or why none (no device, or none the compiled images run on), OpenMP threads, the CPU
    kernels' instruction-set level, the float types every function takes ("float_dtypes") and the
    16-bit storage formats the kernels and the torch/JAX adapters also take ("half_dtypes";
    bfloat16 on the CPU only, CuPy having none; the solvers do not), and whether the CPU kernels
    hold XLA FFI handlers for lowrank_hpc.jax ("jax_ffi": built, the jaxlib built against, and
    whether the CUDA module has them too)."""
    try:
        from . import _build_info

        cuda_built, archs = _build_info.CUDA_BUILT, _build_info.CUDA_ARCHS
        compiler, jaxlib = _build_info.CXX_COMPILER, _build_info.JAX_FFI_JAXLIB
    except ImportError:
        cuda_built, archs, compiler, jaxlib = _backend.CUDA_BUILT, [], "", ""
    # The CPU modules' XLA FFI handlers for lowrank_hpc.jax (without them it uses host callbacks).
    jax_ffi = {"built": hasattr(_backend.cpu_module(), "jax_ffi_handlers"), "jaxlib": jaxlib,
               "cuda": hasattr(_backend._cuda_module, "jax_ffi_handlers")}
    images = _backend.parse_cuda_archs(archs)
    # The kernel images compiled, as nvcc names them: ["sm_80", "sm_90", "compute_90"].
    arch_names = [image.name for image in images] if images is not None else [archs] if isinstance(archs, str) else list(archs)
    cuda: dict[str, Any] = {"built": cuda_built, "archs": arch_names, "available": _backend.HAS_CUDA}
    if _backend.HAS_CUDA:
        cupy = _backend.cupy_module()
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        cuda.update(device=name, device_id=device.id, memory_bytes=int(props["totalGlobalMem"]),
                    compute_capability=f"{props['major']}.{props['minor']}", cupy_version=cupy.__version__)
    else:
        cuda["reason"] = _backend.CUDA_UNAVAILABLE_REASON
    return {
        "version": __version__,
        "backends_built": ["cpu"] + (["cuda"] if cuda_built else []),
        "backend": _backend.get_backend(),
        "cuda": cuda,
        "openmp_threads": _backend.cpu_module().max_threads(),
        # The CPU kernels' instruction-set level in use, and those built (see _cpu_isa).
        "cpu_level": _backend.cpu_module().CPU_LEVEL,
        "cpu_levels_built": _cpu_isa.built_levels(),
        "float_dtypes": ["float32", "float64"],
        "half_dtypes": ["float16", "bfloat16"],
        "index_dtypes": ["int32", "int64"],
        "compiler": compiler,
        "jax_ffi": jax_ffi,
    }
