// The float64 Gram blocks of relative_change's expansion in register tiles
// (cpp/src/change_grams_cpu.cpp); the GPU keeps cuBLAS's GEMMs (ChangeGrams in recover/_measures.py).
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// before, after (batch, rows, k) of one dtype; out (batch, blocks, k, k) float64, added into.
template <class Body>
void with_change_blocks(const ArrayView& before, const ArrayView& after, const ArrayView& out, int64_t blocks,
                        Body&& body) {
  expect().shape(before, "before", {-1, -1, -1});
  const int64_t batch = before.shape[0], rows = before.shape[1], k = before.shape[2];
  dispatch_float(before, "before", [&](auto t) {
    using T = decltype(t);
    expect().typed(after, "after", dtype_of<T>(), {batch, rows, k});
    expect().output(out, "out", DType::float64, {batch, blocks, k, k});
    py::gil_scoped_release release;
    body(before.data<T>(), after.data<T>(), batch, rows, k, out.data<double>());
  });
}

// out (batch, 3, k, k) += dA^T dA, dA^T A0, A0^T A0 (the last where with_before_gram), dA = after - before.
void change_grams_left(const ArrayView& before, const ArrayView& after, bool with_before_gram, const ArrayView& out) {
  with_change_blocks(before, after, out, 3,
                     [&](const auto* a0, const auto* a1, int64_t batch, int64_t rows, int64_t k, double* o) {
                       cpu::change_grams_left(a0, a1, batch, rows, k, with_before_gram, o);
                     });
}

// out (batch, 4, k, k) += A1^T A1 (where with_after_gram), A1^T dA, dA^T dA, A0^T A0 (where with_before_gram).
void change_grams_right(const ArrayView& before, const ArrayView& after, bool with_after_gram, bool with_before_gram,
                        const ArrayView& out) {
  with_change_blocks(before, after, out, 4,
                     [&](const auto* a0, const auto* a1, int64_t batch, int64_t rows, int64_t k, double* o) {
                       cpu::change_grams_right(a0, a1, batch, rows, k, with_after_gram, with_before_gram, o);
                     });
}

}  // namespace

void bind_change_grams(py::module_& m) {
  m.def("change_grams_left", &change_grams_left, py::arg("before"), py::arg("after"), py::arg("with_before_gram"),
        py::arg("out"));
  m.def("change_grams_right", &change_grams_right, py::arg("before"), py::arg("after"), py::arg("with_after_gram"),
        py::arg("with_before_gram"), py::arg("out"));
}

}  // namespace lowrank_hpc::bindings
