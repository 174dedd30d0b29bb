// The HALS coordinate-descent sweep of NMF (lowrank_hpc/ops/hals.hpp), the same signature on
// both modules.
#include "backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// W (n, k) updated in place by up to `sweeps` coordinate sweeps against gram (k, k) and cross
// (n, k) in the coordinate order `order` (k,) int64 (a permutation, checked by the caller),
// stopping early once a sweep changes each row by at most inner_tol times the first (0: never);
// violations (n,) float64 receives each row's projected-gradient violation of the first sweep.
void hals_sweep(const ArrayView& W, const ArrayView& gram, const ArrayView& cross, const ArrayView& order, double l1,
                double l2, int sweeps, double inner_tol, const ArrayView& violations, std::uintptr_t stream) {
  expect().shape(W, "W", {-1, -1});
  const int64_t n = W.shape[0], k = W.shape[1];
  LRH_EXPECTS(l1 >= 0.0 && l2 >= 0.0, "l1, l2: must be >= 0, got ", l1, " and ", l2);
  LRH_EXPECTS(sweeps >= 1, "sweeps: must be >= 1, got ", sweeps);
  LRH_EXPECTS(inner_tol >= 0.0 && inner_tol < 1.0, "inner_tol: must be in [0, 1), got ", inner_tol);
  dispatch_float(W, "W", [&](auto t) {
    using T = decltype(t);
    expect().output(W, "W", dtype_of<T>(), {n, k});
    expect().typed(gram, "gram", dtype_of<T>(), {k, k});
    expect().typed(cross, "cross", dtype_of<T>(), {n, k});
    expect().typed(order, "order", DType::int64, {k});
    expect().output(violations, "violations", DType::float64, {n});
    py::gil_scoped_release release;
    check_launch(launch::hals_sweep<T>(W.data<T>(), gram.data<T>(), cross.data<T>(), order.data<int64_t>(), n, k, l1,
                                       l2, sweeps, inner_tol, violations.data<double>(), stream_of(stream)),
                 "hals_sweep");
  });
}

}  // namespace

void bind_hals(py::module_& m) {
  m.def("hals_sweep", &hals_sweep, arg("W"), arg("gram"), arg("cross"), arg("order"), arg("l1"), arg("l2"),
        arg("sweeps"), arg("inner_tol"), arg("violations"), arg("stream") = 0,
        "W (n, k) <- up to `sweeps` HALS coordinate sweeps against gram (k, k) and cross (n, k); violations (n,) float64");
}

}  // namespace lowrank_hpc::bindings
