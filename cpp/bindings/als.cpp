// Binding of the ALS half-step (one batched row-wise normal-equations solve).
#include <optional>
#include <type_traits>
#include <pybind11/stl.h>

#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"
#include "lowrank_hpc/core/lanes.hpp"

namespace lowrank_hpc::bindings {

namespace {

// out (batch, n_key, r) = row-wise solves against F (batch, n_other, r); returns singular rows.
template <class T, class I>
int64_t als_update_rows(const HostArray<int64_t>& indptr, const HostArray<I>& others, const HostArray<T>& vals,
                        const HostArray<T>& F, int64_t n_key, double reg, bool count_scaling,
                        const std::optional<HostArray<uint8_t>>& active, HostArray<T>& out) {
  LRH_EXPECTS(F.ndim() == 3, "F: expected a (batch, n_other, rank) array, got ", F.ndim(), " dimensions");
  const int64_t batch = F.shape(0), n_other = F.shape(1), r = F.shape(2), nnz = others.shape(0);
  LRH_EXPECTS(n_key >= 1 && r >= 1, "n_key and the rank must be positive, got ", n_key, " and ", r);
  LRH_EXPECTS(reg >= 0, "reg must be >= 0, got ", reg);
  expect_shape(indptr, "indptr", {batch * n_key + 1});
  expect_shape(others, "others", {nnz});
  expect_shape(vals, "vals", {nnz});
  expect_shape(out, "out", {batch, n_key, r});
  expect_writable(out, "out");
  const int64_t* ip = indptr.data();
  LRH_EXPECTS(ip[0] == 0 && ip[batch * n_key] == nnz, "indptr: must run from 0 to nnz = ", nnz);
  for (int64_t row = 0; row < batch * n_key; ++row)
    LRH_EXPECTS(ip[row] <= ip[row + 1], "indptr: must be non-decreasing");
  const I* oi = others.data();
  for (int64_t j = 0; j < nnz; ++j)
    LRH_EXPECTS(oi[j] >= 0 && static_cast<int64_t>(oi[j]) < n_other, "others[", j, "] = ", oi[j],
                " is out of range [0, ", n_other, ")");
  const uint8_t* mask = nullptr;
  if (active) {
    expect_shape(*active, "active", {batch});
    mask = active->data();
  }
  const T *v = vals.data(), *f = F.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  return cpu::als_update_rows<T, I>(ip, oi, v, f, batch, n_key, n_other, r, static_cast<T>(reg), count_scaling,
                                    mask, dst);
}

// The fused ALS iteration of a batch; the CSR orders come from coo_to_csr (trusted, as in
// als_update_rows: only lowrank_hpc.recover.als builds them).
template <class T, class I>
int64_t als_iterations(const HostArray<int64_t>& row_indptr,
                       const HostArray<I>& row_others, const HostArray<T>& row_vals,
                       const HostArray<int64_t>& col_indptr, const HostArray<I>& col_others,
                       const HostArray<T>& col_vals, double reg, bool count_scaling, const HostArray<uint8_t>& active,
                       HostArray<T>& U, HostArray<T>& V, HostArray<double>& losses, HostArray<double>& changes) {
  LRH_EXPECTS(U.ndim() == 3 && V.ndim() == 3, "U, V: expected (batch, rows, rank) arrays");
  const int64_t batch = U.shape(0), m = U.shape(1), r = U.shape(2), n = V.shape(1), nnz = row_others.shape(0);
  expect_shape(V, "V", {batch, n, r});
  expect_shape(col_others, "col_others", {nnz});
  for (const auto* values : {&row_vals, &col_vals}) expect_shape(*values, "values", {nnz});
  expect_shape(row_indptr, "row_indptr", {batch * m + 1});
  expect_shape(col_indptr, "col_indptr", {batch * n + 1});
  LRH_EXPECTS(row_indptr.data()[batch * m] == nnz && col_indptr.data()[batch * n] == nnz,
              "row_indptr, col_indptr: must end at nnz = ", nnz);
  expect_shape(active, "active", {batch});
  expect_shape(losses, "losses", {batch});
  expect_shape(changes, "changes", {batch});
  expect_writable(U, "U");
  expect_writable(V, "V");
  const cpu::AlsBatch<T, I> data{row_indptr.data(),
                                 row_others.data(), row_vals.data(), col_indptr.data(), col_others.data(),
                                 col_vals.data(), batch, m, n};
  const uint8_t* mask = active.data();
  T *u = U.mutable_data(), *v = V.mutable_data();
  double *l = losses.mutable_data(), *c = changes.mutable_data();
  py::gil_scoped_release release;
  return cpu::als_iterations<T, I>(data, r, static_cast<T>(reg), count_scaling, mask, u, v, l, c);
}

// The dense groups of `batch` problems (cpu::AlsDense) after checking the four arrays
// against each other: seen (groups, m, n) of W-bit integers, values (groups, m, n, W),
// row_counts (groups, m, W), col_counts (groups, n, W), all C-contiguous and writable.
template <class T>
cpu::AlsDense<T> dense_groups(py::array& seen, HostArray<T>& values, HostArray<T>& row_counts,
                              HostArray<T>& col_counts, int64_t batch) {
  constexpr int64_t W = lanes::Lanes<T>::width;
  const int64_t groups = (batch + W - 1) / W;
  LRH_EXPECTS(batch >= 1 && values.ndim() == 4, "values: expected a (groups, m, n, W) array");
  const int64_t m = values.shape(1), n = values.shape(2);
  expect_shape(values, "values", {groups, m, n, W});
  expect_shape(row_counts, "row_counts", {groups, m, W});
  expect_shape(col_counts, "col_counts", {groups, n, W});
  LRH_EXPECTS(seen.ndim() == 3 && seen.shape(0) == groups && seen.shape(1) == m && seen.shape(2) == n &&
                  seen.itemsize() == W / 8 && (seen.flags() & py::array::c_style) && seen.writeable(),
              "seen: expected a writable C-contiguous (groups, m, n) array of ", W, "-bit integers");
  for (auto* array : {&values, &row_counts, &col_counts}) expect_writable(*array, "dense arrays");
  return {seen.mutable_data(), values.mutable_data(), row_counts.mutable_data(), col_counts.mutable_data(), batch, m,
          n};
}

// Fills zeroed dense groups (numpy.zeros gives pages the first write zeroes, so nothing is
// written twice). False when some problem's entries are not in strictly increasing (row, col)
// order or out of range: then the sparse kernels.
template <class T, class I>
bool als_dense_pack(const HostArray<I>& rows, const HostArray<I>& cols, const HostArray<T>& vals,
                    const HostArray<int64_t>& offsets, py::array& seen, HostArray<T>& values,
                    HostArray<T>& row_counts, HostArray<T>& col_counts) {
  const int64_t nnz = rows.shape(0), batch = offsets.shape(0) - 1;
  const cpu::AlsDense<T> out = dense_groups<T>(seen, values, row_counts, col_counts, batch);
  expect_shape(cols, "cols", {nnz});
  expect_shape(vals, "vals", {nnz});
  LRH_EXPECTS(offsets.data()[0] == 0 && offsets.data()[batch] == nnz, "offsets: must run from 0 to nnz = ", nnz);
  for (int64_t b = 0; b < batch; ++b)
    LRH_EXPECTS(offsets.data()[b] <= offsets.data()[b + 1], "offsets: must be non-decreasing");
  const I *r = rows.data(), *c = cols.data();
  const T* v = vals.data();
  const int64_t* o = offsets.data();
  py::gil_scoped_release release;
  return cpu::als_dense_pack<T, I>(r, c, v, o, out.batch, out.m, out.n, out);
}

// The fused ALS iteration on the dense groups of als_dense_pack (ranks 1 to 4).
template <class T>
int64_t als_dense_iterations(py::array& seen, HostArray<T>& values, HostArray<T>& row_counts,
                             HostArray<T>& col_counts, double reg, bool count_scaling,
                             const HostArray<uint8_t>& active, HostArray<T>& U, HostArray<T>& V,
                             HostArray<double>& losses, HostArray<double>& changes) {
  LRH_EXPECTS(U.ndim() == 3 && V.ndim() == 3, "U, V: expected (batch, rows, rank) arrays");
  const int64_t batch = U.shape(0), r = U.shape(2);
  const cpu::AlsDense<T> data = dense_groups<T>(seen, values, row_counts, col_counts, batch);
  LRH_EXPECTS(r >= 1 && r <= 4, "the dense ALS kernel takes ranks 1 to 4, got ", r);
  expect_shape(U, "U", {batch, data.m, r});
  expect_shape(V, "V", {batch, data.n, r});
  expect_shape(active, "active", {batch});
  expect_shape(losses, "losses", {batch});
  expect_shape(changes, "changes", {batch});
  expect_writable(U, "U");
  expect_writable(V, "V");
  const uint8_t* mask = active.data();
  T *u = U.mutable_data(), *v = V.mutable_data();
  double *l = losses.mutable_data(), *c = changes.mutable_data();
  py::gil_scoped_release release;
  return cpu::als_dense_iterations<T>(data, r, static_cast<T>(reg), count_scaling, mask, u, v, l, c);
}

template <class T, class I>
void bind_typed(py::module_& m) {
  m.def("als_iterations", &als_iterations<T, I>, py::arg("row_indptr").noconvert(),
        py::arg("row_others").noconvert(), py::arg("row_vals").noconvert(), py::arg("col_indptr").noconvert(),
        py::arg("col_others").noconvert(), py::arg("col_vals").noconvert(), py::arg("reg"),
        py::arg("count_scaling"), py::arg("active").noconvert(), py::arg("U").noconvert(), py::arg("V").noconvert(),
        py::arg("losses").noconvert(), py::arg("changes").noconvert());
  m.def("als_dense_pack", &als_dense_pack<T, I>, py::arg("rows").noconvert(), py::arg("cols").noconvert(),
        py::arg("vals").noconvert(), py::arg("offsets").noconvert(), py::arg("seen"), py::arg("values").noconvert(),
        py::arg("row_counts").noconvert(), py::arg("col_counts").noconvert());
  m.def("als_update_rows", &als_update_rows<T, I>, py::arg("indptr").noconvert(),
        py::arg("others").noconvert(), py::arg("vals").noconvert(), py::arg("F").noconvert(), py::arg("n_key"),
        py::arg("reg"), py::arg("count_scaling"), py::arg("active").noconvert(), py::arg("out").noconvert());
}

template <class T>
void bind_dense(py::module_& m) {
  m.def("als_dense_iterations", &als_dense_iterations<T>, py::arg("seen"), py::arg("values").noconvert(),
        py::arg("row_counts").noconvert(), py::arg("col_counts").noconvert(), py::arg("reg"),
        py::arg("count_scaling"), py::arg("active").noconvert(), py::arg("U").noconvert(), py::arg("V").noconvert(),
        py::arg("losses").noconvert(), py::arg("changes").noconvert());
}

}  // namespace

void bind_als(py::module_& m) {
  bind_typed<float, int32_t>(m);
  bind_typed<float, int64_t>(m);
  bind_typed<double, int32_t>(m);
  bind_typed<double, int64_t>(m);
  bind_dense<float>(m);
  bind_dense<double>(m);
}

}  // namespace lowrank_hpc::bindings
