// Bindings of the coordinate-format kernels: sampled product, CSR build, SpMM, finiteness.
#include <optional>
#include <pybind11/stl.h>

#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

int64_t checked_batch(const HostArray<int64_t>& offsets, int64_t nnz) {
  LRH_EXPECTS(offsets.ndim() == 1 && offsets.shape(0) >= 2, "offsets: expected a 1-D array of length batch + 1");
  const int64_t batch = offsets.shape(0) - 1;
  const int64_t* o = offsets.data();
  LRH_EXPECTS(o[0] == 0 && o[batch] == nnz, "offsets: must start at 0 and end at nnz = ", nnz);
  for (int64_t b = 0; b < batch; ++b) LRH_EXPECTS(o[b] <= o[b + 1], "offsets: must be non-decreasing");
  return batch;
}

template <class T, class I>
int64_t sampled_product(const HostArray<T>& U, const HostArray<T>& V, const HostArray<I>& rows,
                        const HostArray<I>& cols, const HostArray<int64_t>& offsets, HostArray<T>& out) {
  LRH_EXPECTS(U.ndim() == 3 && V.ndim() == 3, "U, V: expected (batch, rows, rank) arrays");
  const int64_t batch = U.shape(0), m = U.shape(1), r = U.shape(2), n = V.shape(1), nnz = rows.shape(0);
  expect_shape(V, "V", {batch, n, r});
  expect_shape(rows, "rows", {nnz});
  expect_shape(cols, "cols", {nnz});
  expect_shape(out, "out", {nnz});
  expect_writable(out, "out");
  LRH_EXPECTS(checked_batch(offsets, nnz) == batch, "offsets: length must be batch + 1 = ", batch + 1);
  const T *u = U.data(), *v = V.data();
  const I *ri = rows.data(), *ci = cols.data();
  const int64_t* o = offsets.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  return cpu::sampled_product<T, I>(u, v, ri, ci, o, batch, m, n, r, nnz, dst);
}

template <class T, class I>
int64_t sampled_squared_residuals(const HostArray<T>& U, const HostArray<T>& V, const HostArray<I>& rows,
                                  const HostArray<I>& cols, const HostArray<T>& vals,
                                  const HostArray<int64_t>& offsets, HostArray<double>& out) {
  LRH_EXPECTS(U.ndim() == 3 && V.ndim() == 3, "U, V: expected (batch, rows, rank) arrays");
  const int64_t batch = U.shape(0), m = U.shape(1), r = U.shape(2), n = V.shape(1), nnz = rows.shape(0);
  expect_shape(V, "V", {batch, n, r});
  expect_shape(rows, "rows", {nnz});
  expect_shape(cols, "cols", {nnz});
  expect_shape(vals, "vals", {nnz});
  expect_shape(out, "out", {nnz});
  expect_writable(out, "out");
  LRH_EXPECTS(checked_batch(offsets, nnz) == batch, "offsets: length must be batch + 1 = ", batch + 1);
  const T *u = U.data(), *v = V.data(), *w = vals.data();
  const I *ri = rows.data(), *ci = cols.data();
  const int64_t* o = offsets.data();
  double* dst = out.mutable_data();
  py::gil_scoped_release release;
  return cpu::sampled_squared_residuals<T, I>(u, v, ri, ci, w, o, batch, m, n, r, nnz, dst);
}

// Returns (first_bad, already_sorted); vals/vals_sorted are optional (the one-shot product
// moves the values too, a reusable pattern does not).
template <class T, class I>
py::tuple coo_to_csr(const HostArray<I>& keys, const HostArray<I>& others, const std::optional<HostArray<T>>& vals,
                     const HostArray<int64_t>& offsets, int64_t n_key, HostArray<int64_t>& indptr,
                     HostArray<int64_t>& perm, HostArray<I>& others_sorted,
                     std::optional<HostArray<T>>& vals_sorted) {
  const int64_t nnz = keys.shape(0);
  const int64_t batch = checked_batch(offsets, nnz);
  LRH_EXPECTS(n_key >= 0, "n_key must be non-negative");
  expect_shape(others, "others", {nnz});
  expect_shape(indptr, "indptr", {batch * n_key + 1});
  expect_shape(perm, "perm", {nnz});
  expect_shape(others_sorted, "others_sorted", {nnz});
  expect_writable(indptr, "indptr");
  expect_writable(perm, "perm");
  expect_writable(others_sorted, "others_sorted");
  LRH_EXPECTS(vals.has_value() == vals_sorted.has_value(), "vals and vals_sorted come together");
  const T* v = nullptr;
  T* vs = nullptr;
  if (vals) {
    expect_shape(*vals, "vals", {nnz});
    expect_shape(*vals_sorted, "vals_sorted", {nnz});
    expect_writable(*vals_sorted, "vals_sorted");
    v = vals->data();
    vs = vals_sorted->mutable_data();
  }
  const I *k = keys.data(), *oi = others.data();
  const int64_t* o = offsets.data();
  int64_t *ip = indptr.mutable_data(), *pm = perm.mutable_data();
  I* os = others_sorted.mutable_data();
  cpu::CsrBuild built;
  {
    py::gil_scoped_release release;
    built = cpu::coo_to_csr<T, I>(k, oi, v, o, batch, n_key, nnz, ip, pm, os, vs);
  }
  return py::make_tuple(built.first_bad, built.sorted);
}

template <class T, class I>
int64_t csr_times_dense(const HostArray<int64_t>& indptr, const std::optional<HostArray<int64_t>>& perm,
                        const HostArray<I>& others, const HostArray<T>& vals, const HostArray<T>& B,
                        int64_t n_key, HostArray<T>& out) {
  LRH_EXPECTS(B.ndim() == 3, "B: expected a (batch, n_other, rank) array");
  const int64_t batch = B.shape(0), n_other = B.shape(1), r = B.shape(2), nnz = others.shape(0);
  expect_shape(indptr, "indptr", {batch * n_key + 1});
  expect_shape(vals, "vals", {nnz});
  expect_shape(out, "out", {batch, n_key, r});
  expect_writable(out, "out");
  const int64_t* ip = indptr.data();
  LRH_EXPECTS(ip[0] == 0 && ip[batch * n_key] == nnz, "indptr: must run from 0 to nnz");
  for (int64_t row = 0; row < batch * n_key; ++row)
    LRH_EXPECTS(ip[row] <= ip[row + 1], "indptr: must be non-decreasing");
  const int64_t* pm = nullptr;
  if (perm) {
    expect_shape(*perm, "perm", {nnz});
    pm = perm->data();  // trusted: only coo_to_csr makes it (an O(nnz) recheck would cost a pass)
  }
  const I* oi = others.data();
  const T *v = vals.data(), *b = B.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  return cpu::csr_times_dense<T, I>(ip, pm, oi, v, b, batch, n_key, n_other, r, dst);
}

template <class T>
int64_t count_nonfinite(const py::array_t<T>& x) {
  LRH_EXPECTS(x.flags() & py::array::c_style, "x: must be C-contiguous");
  const T* p = x.data();
  const int64_t size = x.size();
  py::gil_scoped_release release;
  return cpu::count_nonfinite<T>(p, size);
}

template <class T, class I>
void bind_typed(py::module_& m) {
  m.def("sampled_product", &sampled_product<T, I>, py::arg("U").noconvert(), py::arg("V").noconvert(),
        py::arg("rows").noconvert(), py::arg("cols").noconvert(), py::arg("offsets").noconvert(),
        py::arg("out").noconvert());
  m.def("sampled_squared_residuals", &sampled_squared_residuals<T, I>, py::arg("U").noconvert(),
        py::arg("V").noconvert(), py::arg("rows").noconvert(), py::arg("cols").noconvert(),
        py::arg("vals").noconvert(), py::arg("offsets").noconvert(), py::arg("out").noconvert());
  m.def("coo_to_csr", &coo_to_csr<T, I>, py::arg("keys").noconvert(), py::arg("others").noconvert(),
        py::arg("vals").noconvert(), py::arg("offsets").noconvert(), py::arg("n_key"), py::arg("indptr").noconvert(),
        py::arg("perm").noconvert(), py::arg("others_sorted").noconvert(), py::arg("vals_sorted").noconvert());
  m.def("csr_times_dense", &csr_times_dense<T, I>, py::arg("indptr").noconvert(), py::arg("perm").noconvert(),
        py::arg("others").noconvert(), py::arg("vals").noconvert(), py::arg("B").noconvert(), py::arg("n_key"),
        py::arg("out").noconvert());
}

}  // namespace

void bind_coo_kernels(py::module_& m) {
  bind_typed<float, int32_t>(m);
  bind_typed<float, int64_t>(m);
  bind_typed<double, int32_t>(m);
  bind_typed<double, int64_t>(m);
  m.def("count_nonfinite", &count_nonfinite<float>, py::arg("x").noconvert());
  m.def("count_nonfinite", &count_nonfinite<double>, py::arg("x").noconvert());
}

}  // namespace lowrank_hpc::bindings
