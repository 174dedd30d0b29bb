// The _cuda extension module: the shared bindings (cpp/bindings/common, compiled here with
// LRH_BACKEND_CUDA) over the CUDA launchers, plus the device queries. Compiled by the host
// compiler: the kernels live in cuda/src.
#include "../../cpp/bindings/common/backend.hpp"
#include "lowrank_hpc/core/constants.hpp"

namespace lowrank_hpc::bindings {

void bind_device_info(py::module_& m);  // device_info.cpp: the queries of the import-time check

void raise_launch_error(int code, const char* what) {
  throw CudaError(std::string(what) + " kernel launch failed: " + cuda::error_string(code));
}

}  // namespace lowrank_hpc::bindings

PYBIND11_MODULE(_cuda, m) {
  namespace py = pybind11;
  namespace bindings = lowrank_hpc::bindings;
  m.doc() = "lowrank_hpc CUDA backend. Private: use lowrank_hpc.ops and lowrank_hpc.sensing.";
  m.attr("__version__") = LRH_VERSION;
  static py::exception<bindings::CudaError> cuda_error(m, "CudaError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const bindings::CudaError& e) {
      py::set_error(cuda_error, e.what());
    }
  });
  m.def("device_count", &lowrank_hpc::cuda::device_count,
        "Number of CUDA devices, or minus the cudaError_t code that explains why there is none");
  m.def("error_string", [](int code) { return std::string(lowrank_hpc::cuda::error_string(code)); });
  bindings::bind_shared(m);
  bindings::bind_device_info(m);
#ifdef LRH_JAX_FFI
  bindings::bind_jax_ffi(m);
#endif
  // A row's normal equations live in one block's shared memory.
  m.attr("ALS_SYSTEM_BYTES_LIMIT") = lowrank_hpc::kAlsSharedBytes;
}
