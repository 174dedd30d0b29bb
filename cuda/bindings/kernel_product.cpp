// Binding of the kernelized product's CUDA element-wise step.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::bindings {

void bind_kernel_product(py::module_& m) {
  m.def("apply_kernel", [](const std::string& dtype, std::uintptr_t x, int64_t size, int kernel,
                           std::uintptr_t nonfinite, std::uintptr_t stream) {
    LRH_EXPECTS(kernel >= 0 && kernel <= static_cast<int>(ops::KernelFunction::piecewise_linear),
                "kernel: unknown kernel function code ", kernel);
    LRH_EXPECTS(size >= 0, "size must be non-negative, got ", size);
    py::gil_scoped_release release;
    dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      check_cuda(cuda::apply_kernel_function<T>(as_ptr<T>(x), size, kernel, as_ptr<int64_t>(nonfinite),
                                                as_ptr<void>(stream)),
                 "apply_kernel kernel launch");
    });
  }, py::arg("dtype"), py::arg("x"), py::arg("size"), py::arg("kernel"), py::arg("nonfinite"), py::arg("stream"));
}

}  // namespace lowrank_hpc::bindings
