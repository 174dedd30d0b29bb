// The _cuda extension module. Compiled by the host compiler: kernels live in cuda/src.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"

PYBIND11_MODULE(_cuda, m) {
  namespace py = pybind11;
  using lowrank_hpc::bindings::CudaError;
  m.doc() = "lowrank_hpc CUDA backend. Private: use lowrank_hpc.ops and lowrank_hpc.sensing.";
  m.attr("__version__") = LRH_VERSION;
  static py::exception<CudaError> cuda_error(m, "CudaError", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const CudaError& e) {
      py::set_error(cuda_error, e.what());
    }
  });
  m.def("device_count", &lowrank_hpc::cuda::device_count,
        "Number of CUDA devices, or minus the cudaError_t code that explains why there is none");
  m.def("error_string", [](int code) { return std::string(lowrank_hpc::cuda::error_string(code)); });
  lowrank_hpc::bindings::bind_coo_kernels(m);
  lowrank_hpc::bindings::bind_completion_step(m);
  lowrank_hpc::bindings::bind_sensing(m);
  lowrank_hpc::bindings::bind_kernel_product(m);
  lowrank_hpc::bindings::bind_als(m);
  lowrank_hpc::bindings::bind_device_info(m);
}
