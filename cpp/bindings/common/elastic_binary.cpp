// The fused elastic-binary half-step of Boolean matrix factorization (lowrank_hpc/ops/
// elastic_binary.hpp); its prox alone is the map "elastic_binary_prox" (maps.cpp).
#include "backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// out (batch, n, k) = prox(Y - step (Y gram - cross)), Y = U + inertia (U - U_prev), for every
// active problem (the others copy U); out must not overlap U or U_prev (each row reads all of
// its entries while writing them). gram_out (batch, k, k), if given, receives out^T out.
void elastic_binary_half_step(const ArrayView& U, const ArrayView& U_prev, const ArrayView& gram,
                              const ArrayView& cross, double kappa, double lambda, double inertia, bool nonnegative,
                              const ArrayView& active, const ArrayView& out, const ArrayView& gram_out,
                              std::uintptr_t stream) {
  expect().shape(U, "U", {-1, -1, -1});
  const int64_t batch = U.shape[0], n = U.shape[1], k = U.shape[2];
  LRH_EXPECTS(kappa >= 0.0 && lambda >= 0.0, "kappa, lambda: must be >= 0, got ", kappa, " and ", lambda);
  LRH_EXPECTS(inertia >= 0.0 && inertia < 1.0, "inertia: must be in [0, 1), got ", inertia);
  dispatch_float(U, "U", [&](auto t) {
    using T = decltype(t);
    expect().typed(U_prev, "U_prev", dtype_of<T>(), {batch, n, k});
    expect().typed(gram, "gram", dtype_of<T>(), {batch, k, k});
    expect().typed(cross, "cross", dtype_of<T>(), {batch, n, k});
    expect().optional(active, "active", DType::uint8, {batch});
    expect().output(out, "out", dtype_of<T>(), {batch, n, k});
    if (gram_out.present()) expect().output(gram_out, "gram_out", dtype_of<T>(), {batch, k, k});
    LRH_EXPECTS(out.data<T>() != U.data<T>() && out.data<T>() != U_prev.data<T>(),
                "out: must be a separate array from U and U_prev");
    py::gil_scoped_release release;
    check_launch(launch::elastic_binary_half_step<T>(U.data<T>(), U_prev.data<T>(), gram.data<T>(), cross.data<T>(),
                                                     batch, n, k, kappa, lambda, inertia, nonnegative,
                                                     active.present() ? active.data<uint8_t>() : nullptr,
                                                     out.data<T>(), gram_out.present() ? gram_out.data<T>() : nullptr,
                                                     stream_of(stream)),
                 "elastic_binary_half_step");
  });
}

}  // namespace

void bind_elastic_binary(py::module_& m) {
  m.def("elastic_binary_half_step", &elastic_binary_half_step, arg("U"), arg("U_prev"), arg("gram"), arg("cross"),
        arg("kappa"), arg("lambda_"), arg("inertia"), arg("nonnegative"), arg("active"), arg("out"),
        arg("gram_out"), arg("stream") = 0,
        "out = the PALM / iPALM elastic-binary half-step of U (batch, n, k) against gram (batch, k, k) and cross "
        "(batch, n, k); gram_out (batch, k, k), if given, = out^T out");
}

}  // namespace lowrank_hpc::bindings
