// The offsets' sums and gathers (lowrank_hpc.recover.offsets) on the CPU. The GPU keeps CuPy's
// bincount and gathers: its atomics and fancy indexing are the vendor's already.
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// out (n_out,) float64 = bincount(index, weights=values or values[gather], minlength=n_out), an
// index outside [0, n_out) a bad entry; sorted_index is trusted (a false one races on the sums).
int64_t sums_by_index(const ArrayView& index, const ArrayView& values, const ArrayView& gather, bool sorted_index,
                      const ArrayView& out) {
  expect().shape(index, "index", {-1});
  expect().shape(values, "values", {-1});
  expect().output(out, "out", DType::float64, {-1});
  const int64_t nnz = index.shape[0], n_values = values.shape[0];
  return dispatch_float_index(values, "values", index, "index", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().optional(gather, "gather", dtype_of<I>(), {nnz});
    LRH_EXPECTS(gather.present() || n_values == nnz, "values: length ", n_values, ", expected ", nnz);
    py::gil_scoped_release release;
    return cpu::sums_by_index<T, I>(index.data<I>(), values.data<T>(), gather.present() ? gather.data<I>() : nullptr,
                                    n_values, nnz, sorted_index, out.data<double>(), out.shape[0]);
  });
}

// out (nnz,) = mu + a[rows] + b[cols] in numpy's arithmetic.
int64_t offsets_at(const ArrayView& rows, const ArrayView& cols, double mu, const ArrayView& a, const ArrayView& b,
                   const ArrayView& out) {
  expect().shape(rows, "rows", {-1});
  const int64_t nnz = rows.shape[0];
  expect().shape(a, "a", {-1});
  expect().shape(b, "b", {-1});
  return dispatch_float_index(a, "a", rows, "rows", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(cols, "cols", dtype_of<I>(), {nnz});
    expect().typed(b, "b", dtype_of<T>(), {b.shape[0]});
    expect().output(out, "out", dtype_of<T>(), {nnz});
    py::gil_scoped_release release;
    return cpu::offsets_at<T, I>(rows.data<I>(), cols.data<I>(), mu, a.data<T>(), b.data<T>(), a.shape[0],
                                 b.shape[0], nnz, out.data<T>());
  });
}

}  // namespace

void bind_offsets(py::module_& m) {
  m.def("sums_by_index", &sums_by_index, py::arg("index"), py::arg("values"), py::arg("gather"),
        py::arg("sorted_index"), py::arg("out"),
        "out = bincount(index, values or values[gather]) in float64 (sorted_index: the caller checked); the "
        "first bad entry, or -1");
  m.def("offsets_at", &offsets_at, py::arg("rows"), py::arg("cols"), py::arg("mu"), py::arg("a"), py::arg("b"),
        py::arg("out"), "out = mu + a[rows] + b[cols]; the first bad entry, or -1");
}

}  // namespace lowrank_hpc::bindings
