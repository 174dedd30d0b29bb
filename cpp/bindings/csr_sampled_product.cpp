// The sampled product over a prepared CSR pattern (SparsePattern.sampled_product): on the CPU a
// row's U row is read once for all its entries; the GPU runs the coordinate kernel instead (a
// thread group per entry gains nothing from the row order).
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// out[perm[j]] (out[j] without perm) = <U[row of j], V[b, others[j]]> for the CSR arrays of
// coo_to_csr, trusted as in csr_times_dense; lowers first_bad[0] to the first entry (the
// caller's order) whose other index is out of range. With y (nnz,) the residual product - y
// instead, and sum_of_squares (1,) float64 receives the sum of its squares; out must not be y
// (in row order the kernel writes a chunk's products into out before it reads y there).
void csr_sampled_product(const ArrayView& indptr, const ArrayView& perm, const ArrayView& others, const ArrayView& U,
                         const ArrayView& V, const ArrayView& out, const ArrayView& first_bad, const ArrayView& y,
                         const ArrayView& sum_of_squares) {
  expect().shape(U, "U", {-1, -1, -1});
  expect().shape(others, "others", {-1});
  const int64_t batch = U.shape[0], m = U.shape[1], r = U.shape[2], nnz = others.shape[0];
  expect().shape(V, "V", {batch, -1, r});
  const int64_t n = V.shape[1];
  dispatch_float_index(U, "U", others, "others", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(V, "V", dtype_of<T>(), {batch, n, r});
    expect().typed(indptr, "indptr", DType::int64, {batch * m + 1});
    expect().optional(perm, "perm", DType::int64, {nnz});
    expect().output(out, "out", dtype_of<T>(), {nnz});
    expect().output(first_bad, "first_bad", DType::int64, {1});
    LRH_EXPECTS(y.present() == sum_of_squares.present(), "y and sum_of_squares come together");
    expect().optional(y, "y", dtype_of<T>(), {nnz});
    if (sum_of_squares.present()) expect().output(sum_of_squares, "sum_of_squares", DType::float64, {1});
    py::gil_scoped_release release;
    const int64_t bad = cpu::csr_sampled_product<T, I>(indptr.data<int64_t>(), perm.data<int64_t>(), others.data<I>(),
                                                       U.data<T>(), V.data<T>(), y.data<T>(), batch, m, n, r, nnz,
                                                       out.data<T>(), sum_of_squares.data<double>());
    if (bad >= 0) *first_bad.data<int64_t>() = std::min(*first_bad.data<int64_t>(), bad);
  });
}

}  // namespace

void bind_csr_sampled_product(py::module_& m) {
  m.def("csr_sampled_product", &csr_sampled_product, py::arg("indptr"), py::arg("perm"), py::arg("others"),
        py::arg("U"), py::arg("V"), py::arg("out"), py::arg("first_bad"), py::arg("y") = py::none(),
        py::arg("sum_of_squares") = py::none());
}

}  // namespace lowrank_hpc::bindings
