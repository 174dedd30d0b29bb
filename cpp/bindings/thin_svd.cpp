// The CPU's small thin SVD (one-sided Jacobi, cpp/src/thin_svd_cpu.cpp); the GPU keeps cuSOLVER's.
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

namespace {

// left (n, r), s (r,), q (r, r) with M = left diag(s) q^T; returns the sweeps used, or -1 when
// M is not finite or the rotations did not converge within max_sweeps (nothing written).
int thin_svd(const ArrayView& M, const ArrayView& left, const ArrayView& s, const ArrayView& q, int max_sweeps) {
  expect().shape(M, "M", {-1, -1});
  const int64_t n = M.shape[0], r = M.shape[1];
  LRH_EXPECTS(r >= 1 && n >= r, "M: shape (", n, ", ", r, ") must have rows >= columns >= 1");
  LRH_EXPECTS(max_sweeps >= 1, "max_sweeps must be >= 1, got ", max_sweeps);
  return dispatch_float(M, "M", [&](auto t) {
    using T = decltype(t);
    expect().typed(M, "M", dtype_of<T>(), {n, r});
    expect().output(left, "left", dtype_of<T>(), {n, r});
    expect().output(s, "s", dtype_of<T>(), {r});
    expect().output(q, "q", dtype_of<T>(), {r, r});
    py::gil_scoped_release release;
    return cpu::thin_svd_jacobi<T>(M.data<T>(), n, r, max_sweeps, left.data<T>(), s.data<T>(), q.data<T>());
  });
}

}  // namespace

void bind_thin_svd(py::module_& m) {
  m.def("thin_svd", &thin_svd, py::arg("M"), py::arg("left"), py::arg("s"), py::arg("q"), py::arg("max_sweeps"),
        "M = left diag(s) q^T by one-sided Jacobi; the sweeps used, or -1 (not finite / not converged)");
}

}  // namespace lowrank_hpc::bindings
