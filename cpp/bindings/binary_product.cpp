// The CPU's products of a bit-packed 0/1 matrix (cpp/src/binary_product_cpu.cpp); on the GPU the
// dense A goes to cuBLAS and a sparse one to cuSPARSE.
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// words (n_rows, ceil(n_cols / 64)) int64 (the bits of uint64 words) from the ones' coordinates;
// returns the first entry out of range, or -1.
int64_t pack_binary(const ArrayView& rows, const ArrayView& cols, int64_t n_rows, int64_t n_cols,
                    const ArrayView& words) {
  LRH_EXPECTS(n_rows >= 1 && n_cols >= 1, "pack_binary: shape (", n_rows, ", ", n_cols, ") must be positive");
  expect().typed(rows, "rows", DType::int64, {-1});
  expect().typed(cols, "cols", DType::int64, {rows.shape[0]});
  expect().output(words, "words", DType::int64, {n_rows, cpu::binary_words(n_cols)});
  py::gil_scoped_release release;
  return cpu::pack_binary(rows.data<int64_t>(), cols.data<int64_t>(), rows.shape[0], n_rows, n_cols,
                          reinterpret_cast<uint64_t*>(words.data<int64_t>()));
}

// For the packed A (batch, n, ceil(m / 64)): out (batch, n, r) = A_b F_b for F (batch, m, r), or
// with ``transpose`` out (batch, m, r) = A_b^T F_b for F (batch, n, r).
void binary_times_dense(const ArrayView& words, int64_t m, const ArrayView& F, const ArrayView& out, bool transpose) {
  LRH_EXPECTS(m >= 1, "binary_times_dense: m = ", m, " must be >= 1");
  expect().typed(words, "words", DType::int64, {-1, -1, cpu::binary_words(m)});
  const int64_t batch = words.shape[0], n = words.shape[1];
  expect().shape(F, "F", {batch, transpose ? n : m, -1});
  const int64_t r = F.shape[2];
  dispatch_float(F, "F", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {batch, transpose ? m : n, r});
    const auto* bits = reinterpret_cast<const uint64_t*>(words.data<int64_t>());
    py::gil_scoped_release release;
    if (transpose)
      cpu::binary_transpose_times_dense<T>(bits, F.data<T>(), batch, n, m, r, out.data<T>());
    else
      cpu::binary_times_dense<T>(bits, F.data<T>(), batch, n, m, r, out.data<T>());
  });
}

// For a sparse 0/1 A (n, m) listed in CSR order by indptr (n + 1,) int64 and indices (nnz,) int32
// (validated by the caller: nondecreasing indptr from 0, indices in [0, m)): out (n, r) = A F for
// F (m, r), or with ``transpose`` out (m, r) = A^T F for F (n, r).
void binary_indexed_times_dense(const ArrayView& indptr, const ArrayView& indices, int64_t m, const ArrayView& F,
                                const ArrayView& out, bool transpose) {
  LRH_EXPECTS(m >= 1, "binary_indexed_times_dense: m = ", m, " must be >= 1");
  expect().typed(indptr, "indptr", DType::int64, {-1});
  expect().typed(indices, "indices", DType::int32, {-1});
  const int64_t n = indptr.shape[0] - 1;
  LRH_EXPECTS(n >= 1, "binary_indexed_times_dense: indptr must hold n + 1 >= 2 offsets");
  expect().shape(F, "F", {transpose ? n : m, -1});
  const int64_t r = F.shape[1];
  dispatch_float(F, "F", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {transpose ? m : n, r});
    py::gil_scoped_release release;
    cpu::binary_indexed_times_dense<T>(indptr.data<int64_t>(), indices.data<int32_t>(), F.data<T>(), n, m, r,
                                       transpose, out.data<T>());
  });
}

}  // namespace

void bind_binary_product(py::module_& m) {
  m.def("pack_binary", &pack_binary, py::arg("rows"), py::arg("cols"), py::arg("n_rows"), py::arg("n_cols"),
        py::arg("words"));
  m.def("binary_times_dense", &binary_times_dense, py::arg("words"), py::arg("m"), py::arg("F"), py::arg("out"),
        py::arg("transpose") = false);
  m.def("binary_indexed_times_dense", &binary_indexed_times_dense, py::arg("indptr"), py::arg("indices"),
        py::arg("m"), py::arg("F"), py::arg("out"), py::arg("transpose") = false);
}

}  // namespace lowrank_hpc::bindings
