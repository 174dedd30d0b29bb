// The Gaussian sensing kernels: the ensemble's entries, matrix-free forward and adjoint.
#include "backend.hpp"
#include "lowrank_hpc/ops/gaussian_sensing.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// out (count, rows * cols): entry e of matrix i is the draw (seed, first_stream + i, index_offset + e).
void gaussian_fill(uint64_t seed, uint64_t first_stream, int64_t rows, int64_t cols, uint64_t index_offset,
                   double scale, bool symmetric, const ArrayView& out, std::uintptr_t stream) {
  const ops::GaussianEnsemble ensemble =
      ops::checked_gaussian_ensemble(seed, first_stream, rows, cols, index_offset, scale, symmetric);
  expect().shape(out, "out", {-1, rows * cols});
  dispatch_float(out, "out", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {-1, rows * cols});
    py::gil_scoped_release release;
    check_launch(launch::gaussian_fill<T>(ensemble, out.shape[0], out.data<T>(), stream_of(stream)), "gaussian_fill");
  });
}

// out (batch, m) = <A_i, X_b> for X (batch, rows * cols).
void gaussian_forward(uint64_t seed, int64_t rows, int64_t cols, double scale, bool symmetric, const ArrayView& X,
                      const ArrayView& out, std::uintptr_t stream) {
  const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
  expect().shape(X, "X", {-1, rows * cols});
  dispatch_float(X, "X", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {X.shape[0], -1});
    py::gil_scoped_release release;
    check_launch(launch::gaussian_forward<T>(ensemble, out.shape[1], X.data<T>(), X.shape[0], out.data<T>(),
                                             stream_of(stream)),
                 "gaussian_forward");
  });
}

// out (batch, rows * cols) = sum_i y[b, i] A_i for y (batch, m).
void gaussian_adjoint(uint64_t seed, int64_t rows, int64_t cols, double scale, bool symmetric, const ArrayView& y,
                      const ArrayView& out, std::uintptr_t stream) {
  const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
  expect().shape(y, "y", {-1, -1});
  dispatch_float(y, "y", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {y.shape[0], rows * cols});
    py::gil_scoped_release release;
    check_launch(launch::gaussian_adjoint<T>(ensemble, y.shape[1], y.data<T>(), y.shape[0], out.data<T>(),
                                             stream_of(stream)),
                 "gaussian_adjoint");
  });
}

}  // namespace

void bind_sensing(py::module_& m) {
  m.def("gaussian_fill", &gaussian_fill, arg("seed"), arg("first_stream"), arg("rows"), arg("cols"),
        arg("index_offset"), arg("scale"), arg("symmetric"), arg("out"), arg("stream") = 0);
  m.def("gaussian_forward", &gaussian_forward, arg("seed"), arg("rows"), arg("cols"), arg("scale"), arg("symmetric"),
        arg("X"), arg("out"), arg("stream") = 0);
  m.def("gaussian_adjoint", &gaussian_adjoint, arg("seed"), arg("rows"), arg("cols"), arg("scale"), arg("symmetric"),
        arg("y"), arg("out"), arg("stream") = 0);
}

}  // namespace lowrank_hpc::bindings
