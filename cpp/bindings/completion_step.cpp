// Binding of the fused per-problem gradient iteration of the batched completion solver.
#include "cpu_bindings.hpp"
#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

// Index ranges are checked once per solve by lowrank_hpc.recover.batched_factored_gd, not here
// on every iteration.
template <class T, class I>
void completion_steps(const HostArray<I>& rows, const HostArray<I>& cols, const HostArray<T>& vals,
                      const HostArray<int64_t>& offsets, int method, const HostArray<uint8_t>& active,
                      const HostArray<T>& U, const HostArray<T>& V, HostArray<T>& U1, HostArray<T>& V1,
                      HostArray<double>& steps, const HostArray<double>& dampings, HostArray<T>& scratch,
                      HostArray<double>& losses, HostArray<double>& changes, HostArray<int64_t>& halvings,
                      HostArray<uint8_t>& stuck) {
  LRH_EXPECTS(U.ndim() == 3 && V.ndim() == 3, "U, V: expected (batch, rows, rank) arrays");
  const int64_t batch = U.shape(0), m = U.shape(1), k = U.shape(2), n = V.shape(1), nnz = rows.shape(0);
  LRH_EXPECTS(method >= 0 && method <= 3, "method code must be 0..3, got ", method);
  expect_shape(V, "V", {batch, n, k});
  expect_shape(U1, "U1", {batch, m, k});
  expect_shape(V1, "V1", {batch, n, k});
  expect_shape(cols, "cols", {nnz});
  expect_shape(vals, "vals", {nnz});
  expect_shape(offsets, "offsets", {batch + 1});
  LRH_EXPECTS(offsets.data()[0] == 0 && offsets.data()[batch] == nnz, "offsets: must run from 0 to nnz");
  for (auto* array : {&steps, &losses, &changes}) expect_shape(*array, "per-problem output", {batch});
  expect_shape(dampings, "dampings", {batch});
  expect_shape(active, "active", {batch});
  expect_shape(halvings, "halvings", {batch});
  expect_shape(stuck, "stuck", {batch});
  expect_shape(scratch, "scratch", {batch * ((m + n) * k + 2 * k * k)});
  const I *r = rows.data(), *c = cols.data();
  const T *v = vals.data(), *u0 = U.data(), *v0 = V.data();
  const int64_t* o = offsets.data();
  const uint8_t* a = active.data();
  T *u1 = U1.mutable_data(), *v1 = V1.mutable_data(), *work = scratch.mutable_data();
  double *s = steps.mutable_data(), *l = losses.mutable_data(), *ch = changes.mutable_data();
  const double* d = dampings.data();
  int64_t* h = halvings.mutable_data();
  uint8_t* st = stuck.mutable_data();
  py::gil_scoped_release release;
  cpu::completion_steps<T, I>(r, c, v, o, batch, m, n, k, method, a, u0, v0, u1, v1, s, d, work, l, ch, h, st);
}

template <class T, class I>
void bind_typed(py::module_& m) {

  m.def("completion_steps", &completion_steps<T, I>, py::arg("rows").noconvert(), py::arg("cols").noconvert(),
        py::arg("vals").noconvert(), py::arg("offsets").noconvert(), py::arg("method"),
        py::arg("active").noconvert(), py::arg("U").noconvert(), py::arg("V").noconvert(),
        py::arg("U1").noconvert(), py::arg("V1").noconvert(), py::arg("steps").noconvert(),
        py::arg("dampings").noconvert(), py::arg("scratch").noconvert(), py::arg("losses").noconvert(),
        py::arg("changes").noconvert(), py::arg("halvings").noconvert(), py::arg("stuck").noconvert());
}

}  // namespace

void bind_completion_step(py::module_& m) {
  bind_typed<float, int32_t>(m);
  bind_typed<float, int64_t>(m);
  bind_typed<double, int32_t>(m);
  bind_typed<double, int64_t>(m);
}

}  // namespace lowrank_hpc::bindings
