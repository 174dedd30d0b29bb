// Sparse times dense in the caller's order, on one thread, for small outputs: the CPU adds each
// entry into its output row in cache, where the shared path (common/coo_kernels.cpp) first sorts
// the entries by row (a counting sort that writes nnz-sized arrays at random). The GPU has no
// such path: its sort is a device radix sort and its threads would contend on the rows.
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// out (n_key, r) = S @ B for entries (keys[k], others[k], vals[k]) and B (n_other, r);
// bad (2,) int64 receives the first entry whose key, and whose other index, is out of range
// (nnz where none is; such entries add nothing). False, nothing written, where the first keys
// come in order (cpu::coo_times_dense_in_place): the caller takes the CSR path then.
bool coo_times_dense_in_place(const ArrayView& keys, const ArrayView& others, const ArrayView& vals,
                              const ArrayView& B, const ArrayView& out, const ArrayView& bad) {
  expect().shape(keys, "keys", {-1});
  const int64_t nnz = keys.shape[0];
  expect().shape(B, "B", {-1, -1});
  expect().shape(out, "out", {-1, B.shape[1]});
  const int64_t n_other = B.shape[0], r = B.shape[1], n_key = out.shape[0];
  return dispatch_float_index(vals, "vals", keys, "keys", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(others, "others", dtype_of<I>(), {nnz});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().typed(B, "B", dtype_of<T>(), {n_other, r});
    expect().output(out, "out", dtype_of<T>(), {n_key, r});
    expect().output(bad, "bad", DType::int64, {2});
    py::gil_scoped_release release;
    return cpu::coo_times_dense_in_place<T, I>(keys.data<I>(), others.data<I>(), vals.data<T>(), B.data<T>(), n_key,
                                               n_other, r, nnz, out.data<T>(), bad.data<int64_t>());
  });
}

}  // namespace

void bind_coo_times_dense(py::module_& m) {
  m.def("in_place_product_pays", &cpu::in_place_product_pays, py::arg("n_key"), py::arg("r"), py::arg("item_bytes"),
        "Whether coo_times_dense_in_place takes a product of this shape on this many threads");
  m.def("coo_times_dense_in_place", &coo_times_dense_in_place, py::arg("keys"), py::arg("others"), py::arg("vals"),
        py::arg("B"), py::arg("out"), py::arg("bad"));
}

}  // namespace lowrank_hpc::bindings
