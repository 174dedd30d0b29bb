// Bindings of the kernelized product's element-wise step and fused top-k selection.
#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

ops::KernelFunction checked_kernel(int kernel) {
  LRH_EXPECTS(kernel >= 0 && kernel <= static_cast<int>(ops::KernelFunction::piecewise_linear),
              "kernel: unknown kernel function code ", kernel);
  return static_cast<ops::KernelFunction>(kernel);
}

template <class T>
int64_t apply_kernel(HostArray<T>& x, int kernel) {
  expect_writable(x, "x");
  const ops::KernelFunction f = checked_kernel(kernel);
  T* p = x.mutable_data();
  const int64_t size = x.size();
  py::gil_scoped_release release;
  return cpu::apply_kernel_in_place<T>(p, size, f);
}

template <class T>
int64_t kernel_topk_rows(HostArray<T>& block, int kernel, HostArray<T>& values, HostArray<int64_t>& indices) {
  LRH_EXPECTS(block.ndim() == 2 && values.ndim() == 2, "block, values: expected 2-D arrays");
  const int64_t rows = block.shape(0), n = block.shape(1), k = values.shape(1);
  LRH_EXPECTS(k >= 1 && k <= n, "values: k = ", k, " must be in [1, ", n, "]");
  expect_shape(values, "values", {rows, k});
  expect_shape(indices, "indices", {rows, k});
  expect_writable(block, "block");
  expect_writable(values, "values");
  expect_writable(indices, "indices");
  const ops::KernelFunction f = checked_kernel(kernel);
  T *b = block.mutable_data(), *v = values.mutable_data();
  int64_t* ix = indices.mutable_data();
  py::gil_scoped_release release;
  return cpu::kernel_topk_rows<T>(b, rows, n, f, k, v, ix);
}

template <class T>
void bind_typed(py::module_& m) {
  m.def("apply_kernel", &apply_kernel<T>, py::arg("x").noconvert(), py::arg("kernel"),
        "x = f(x) in place; returns the number of NaN/inf results");
  m.def("kernel_topk_rows", &kernel_topk_rows<T>, py::arg("block").noconvert(), py::arg("kernel"),
        py::arg("values").noconvert(), py::arg("indices").noconvert(),
        "f in place on a (rows, n) block, then each row's top-k by |f|; returns the NaN/inf count");
}

}  // namespace

void bind_kernel_product(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace lowrank_hpc::bindings
