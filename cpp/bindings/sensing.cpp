// Bindings of the Gaussian sensing kernels: dense fill, matrix-free forward and adjoint.
#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

template <class T>
void gaussian_fill(uint64_t seed, uint64_t first_stream, int64_t rows, int64_t cols, uint64_t index_offset,
                   double scale, bool symmetric, HostArray<T>& out) {
  const ops::GaussianEnsemble ensemble =
      ops::checked_gaussian_ensemble(seed, first_stream, rows, cols, index_offset, scale, symmetric);
  LRH_EXPECTS(out.ndim() == 2, "out: expected a (count, rows * cols) array");
  const int64_t count = out.shape(0);
  expect_shape(out, "out", {count, rows * cols});
  expect_writable(out, "out");
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  cpu::gaussian_fill<T>(ensemble, count, dst);
}

template <class T>
void gaussian_forward(uint64_t seed, int64_t rows, int64_t cols, double scale, bool symmetric,
                      const HostArray<T>& X, HostArray<T>& out) {
  const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
  LRH_EXPECTS(X.ndim() == 2 && out.ndim() == 2, "X, out: expected (batch, rows * cols) and (batch, m) arrays");
  const int64_t batch = X.shape(0), m = out.shape(1);
  expect_shape(X, "X", {batch, rows * cols});
  expect_shape(out, "out", {batch, m});
  expect_writable(out, "out");
  const T* x = X.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  cpu::gaussian_forward<T>(ensemble, m, x, batch, dst);
}

template <class T>
void gaussian_adjoint(uint64_t seed, int64_t rows, int64_t cols, double scale, bool symmetric,
                      const HostArray<T>& y, HostArray<T>& out) {
  const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
  LRH_EXPECTS(y.ndim() == 2 && out.ndim() == 2, "y, out: expected (batch, m) and (batch, rows * cols) arrays");
  const int64_t batch = y.shape(0), m = y.shape(1);
  expect_shape(out, "out", {batch, rows * cols});
  expect_writable(out, "out");
  const T* src = y.data();
  T* dst = out.mutable_data();
  py::gil_scoped_release release;
  cpu::gaussian_adjoint<T>(ensemble, m, src, batch, dst);
}

template <class T>
void bind_typed(py::module_& m) {
  m.def("gaussian_fill", &gaussian_fill<T>, py::arg("seed"), py::arg("first_stream"), py::arg("rows"),
        py::arg("cols"), py::arg("index_offset"), py::arg("scale"), py::arg("symmetric"),
        py::arg("out").noconvert());
  m.def("gaussian_forward", &gaussian_forward<T>, py::arg("seed"), py::arg("rows"), py::arg("cols"),
        py::arg("scale"), py::arg("symmetric"), py::arg("X").noconvert(), py::arg("out").noconvert());
  m.def("gaussian_adjoint", &gaussian_adjoint<T>, py::arg("seed"), py::arg("rows"), py::arg("cols"),
        py::arg("scale"), py::arg("symmetric"), py::arg("y").noconvert(), py::arg("out").noconvert());
}

}  // namespace

void bind_sensing(py::module_& m) {
  bind_typed<float>(m);
  bind_typed<double>(m);
}

}  // namespace lowrank_hpc::bindings
