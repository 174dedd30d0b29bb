// The kernelized product's fused top-k selection (CPU: f and the per-row selection in one pass
// over a block that is still in cache).
#include "cpu_bindings.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::bindings {

namespace {

// f in place on a (rows, n) block, then each row's top-k by |f| into values and indices
// (rows, k); nonfinite[0] += the block's NaN/inf count.
void kernel_topk_rows(const ArrayView& block, int kernel, const ArrayView& values, const ArrayView& indices,
                      const ArrayView& nonfinite) {
  LRH_EXPECTS(kernel >= 0 && kernel <= static_cast<int>(ops::KernelFunction::piecewise_linear),
              "kernel: unknown kernel function code ", kernel);
  expect().shape(block, "block", {-1, -1});
  expect().shape(values, "values", {block.shape[0], -1});
  const int64_t rows = block.shape[0], n = block.shape[1], k = values.shape[1];
  LRH_EXPECTS(k >= 1 && k <= n, "values: k = ", k, " must be in [1, ", n, "]");
  expect().output(indices, "indices", DType::int64, {rows, k});
  expect().output(nonfinite, "nonfinite", DType::int64, {1});
  dispatch_float(block, "block", [&](auto t) {
    using T = decltype(t);
    expect().output(block, "block", dtype_of<T>(), {rows, n});
    expect().output(values, "values", dtype_of<T>(), {rows, k});
    py::gil_scoped_release release;
    *nonfinite.data<int64_t>() += cpu::kernel_topk_rows<T>(block.data<T>(), rows, n,
                                                           static_cast<ops::KernelFunction>(kernel), k,
                                                           values.data<T>(), indices.data<int64_t>());
  });
}

// order (n,) int64 = positions of values (n,) by descending |value|, ties and NaN (last) in
// position order (cpu::order_by_magnitude).
void order_by_magnitude(const ArrayView& values, const ArrayView& order) {
  expect().shape(values, "values", {-1});
  const int64_t n = values.shape[0];
  expect().output(order, "order", DType::int64, {n});
  dispatch_float(values, "values", [&](auto t) {
    using T = decltype(t);
    expect().typed(values, "values", dtype_of<T>(), {n});
    py::gil_scoped_release release;
    cpu::order_by_magnitude<T>(values.data<T>(), n, order.data<int64_t>());
  });
}

// positions (k,) int64 = the positions, ascending, of the k largest |values| (n,), ties to the
// earlier (cpu::select_top_magnitudes), with the bounds read at sample (s,) int64 positions
// (s may be 0); returns k, or -1 where a value is NaN.
int64_t select_top_magnitudes(const ArrayView& values, const ArrayView& sample, const ArrayView& positions) {
  expect().shape(values, "values", {-1});
  const int64_t n = values.shape[0];
  expect().typed(sample, "sample", DType::int64, {-1});
  const int64_t sample_size = sample.shape[0];
  const int64_t* sampled = sample.data<int64_t>();
  for (int64_t s = 0; s < sample_size; ++s)
    LRH_EXPECTS(sampled[s] >= 0 && sampled[s] < n, "sample: position ", sampled[s], " outside [0, ", n, ")");
  expect().output(positions, "positions", DType::int64, {-1});
  const int64_t k = positions.shape[0];
  LRH_EXPECTS(k >= 1 && k <= n, "positions: k = ", k, " must be in [1, ", n, "]");
  return dispatch_float(values, "values", [&](auto t) {
    using T = decltype(t);
    expect().typed(values, "values", dtype_of<T>(), {n});
    py::gil_scoped_release release;
    return cpu::select_top_magnitudes<T>(values.data<T>(), n, k, sampled, sample_size, positions.data<int64_t>());
  });
}

}  // namespace

void bind_top_k(py::module_& m) {
  m.def("kernel_topk_rows", &kernel_topk_rows, py::arg("block"), py::arg("kernel"), py::arg("values"),
        py::arg("indices"), py::arg("nonfinite"));
  m.def("order_by_magnitude", &order_by_magnitude, py::arg("values"), py::arg("order"));
  m.def("select_top_magnitudes", &select_top_magnitudes, py::arg("values"), py::arg("sample"), py::arg("positions"));
}

}  // namespace lowrank_hpc::bindings
