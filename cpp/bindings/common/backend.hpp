// Which backend a build of the shared bindings serves. The files in this folder are compiled
// into both modules: for _cpu against the OpenMP drivers (cpp/src/launchers.hpp), for _cuda
// (LRH_BACKEND_CUDA) against the CUDA launchers, which have the same signatures.
#pragma once
#include <stdexcept>
#include <string>

#include "array_view.hpp"

#ifdef LRH_BACKEND_CUDA
#include "lowrank_hpc_cuda/launchers.hpp"
#else
#include "../../src/launchers.hpp"
#endif

namespace lowrank_hpc::bindings {

#ifdef LRH_BACKEND_CUDA
namespace launch = ::lowrank_hpc::cuda;
inline constexpr Device kDevice = Device::cuda;
#else
namespace launch = ::lowrank_hpc::cpu::launch;
inline constexpr Device kDevice = Device::host;
#endif

// The checks of this module's arrays (on its own device).
inline const ArrayChecks& expect() {
  static const ArrayChecks checks(kDevice);
  return checks;
}

// A CUDA failure (launch or runtime error) as lowrank_hpc's CudaError; the CPU drivers return 0.
struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void raise_launch_error(int code, const char* what);

inline void check_launch(int code, const char* what) {
  if (code != 0) raise_launch_error(code, what);
}

inline void* stream_of(std::uintptr_t stream) { return reinterpret_cast<void*>(stream); }

// One bind_* function per kernel family, the same on both modules.
void bind_coo_kernels(py::module_& m);
void bind_sensing(py::module_& m);
void bind_maps(py::module_& m);
void bind_als(py::module_& m);
void bind_completion_step(py::module_& m);
void bind_constants(py::module_& m);
void bind_elastic_binary(py::module_& m);
void bind_adafactor(py::module_& m);
void bind_hals(py::module_& m);

// Everything above, called once by each module's PYBIND11_MODULE.
inline void bind_shared(py::module_& m) {
  bind_coo_kernels(m);
  bind_sensing(m);
  bind_maps(m);
  bind_als(m);
  bind_completion_step(m);
  bind_constants(m);
  bind_elastic_binary(m);
  bind_adafactor(m);
  bind_hals(m);
}

// The XLA FFI handlers for lowrank_hpc.jax (cpp/bindings/jax_ffi/handlers.cpp), in both modules
// where the build found jaxlib's headers (LRH_JAX_FFI).
void bind_jax_ffi(py::module_& m);

}  // namespace lowrank_hpc::bindings
