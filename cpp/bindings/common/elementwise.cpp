// Element-wise steps: the kernel functions of the kernelized product, applied in place.
#include "backend.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// x = f(x) in place; nonfinite[0] += the number of NaN/inf results.
void apply_kernel(const ArrayView& x, int kernel, const ArrayView& nonfinite, std::uintptr_t stream) {
  LRH_EXPECTS(kernel >= 0 && kernel <= static_cast<int>(ops::KernelFunction::piecewise_linear),
              "kernel: unknown kernel function code ", kernel);
  expect().output(nonfinite, "nonfinite", DType::int64, {1});
  dispatch_float(x, "x", [&](auto t) {
    using T = decltype(t);
    LRH_EXPECTS(x.device == kDevice && x.c_contiguous() && !x.readonly,
                "x: must be a writable C-contiguous array on this backend's device");
    py::gil_scoped_release release;
    check_launch(launch::apply_kernel_function<T>(x.data<T>(), x.size(), kernel, nonfinite.data<int64_t>(),
                                                  stream_of(stream)),
                 "apply_kernel");
  });
}

}  // namespace

void bind_elementwise(py::module_& m) {
  m.def("apply_kernel", &apply_kernel, arg("x"), arg("kernel"), arg("nonfinite"), arg("stream") = 0,
        "x = f(x) in place for the KernelFunction code; nonfinite[0] += the NaN/inf count");
}

}  // namespace lowrank_hpc::bindings
