// Binding of the ALS half-step (one batched row-wise normal-equations solve).
#include <optional>
#include <pybind11/stl.h>

#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// out (batch, n_key, r) = row-wise solves against F (batch, n_other, r); returns singular rows.
template <class T, class I>
int64_t als_update_rows(const HostArray<int64_t>& indptr, const std::optional<HostArray<int64_t>>& perm,
                        const HostArray<I>& others, const HostArray<T>& vals, const HostArray<T>& F, int64_t n_key,
                        double reg, bool count_scaling, const std::optional<HostArray<uint8_t>>& active,
                        HostArray<T>& out) {
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
  const int64_t* pm = nullptr;
  if (perm) {
    expect_shape(*perm, "perm", {nnz});
    pm = perm->data();  // trusted: only coo_to_csr makes it
  }
  const uint8_t* mask = nullptr;
  if (active) {
    expect_shape(*active, "active", {batch});
    mask = active->data();
  }
  const T *v = vals.data(), *f = F.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  return cpu::als_update_rows<T, I>(ip, pm, oi, v, f, batch, n_key, n_other, r, static_cast<T>(reg), count_scaling,
                                    mask, dst);
}

template <class T, class I>
void bind_typed(py::module_& m) {
  m.def("als_update_rows", &als_update_rows<T, I>, py::arg("indptr").noconvert(), py::arg("perm").noconvert(),
        py::arg("others").noconvert(), py::arg("vals").noconvert(), py::arg("F").noconvert(), py::arg("n_key"),
        py::arg("reg"), py::arg("count_scaling"), py::arg("active").noconvert(), py::arg("out").noconvert());
}

}  // namespace

void bind_als(py::module_& m) {
  bind_typed<float, int32_t>(m);
  bind_typed<float, int64_t>(m);
  bind_typed<double, int32_t>(m);
  bind_typed<double, int64_t>(m);
}

}  // namespace lowrank_hpc::bindings
