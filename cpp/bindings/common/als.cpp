// The ALS half-step: every key row's regularised normal equations, solved against F.
#include "backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// out (batch, n_key, r) = row-wise solves against F (batch, n_other, r), exact or (cg_steps > 0)
// that many conjugate-gradient steps from out's rows; singular[0] += the singular rows. The CSR
// arrays come from coo_to_csr, which checked every index once per solve. Optional weights (nnz)
// and shared (batch, r, r) make the systems implicit feedback's (ops/normal_equations.hpp);
// optional residuals (batch * n_key,) float64 gets each solved row's sum of squared residuals
// (explicit ALS's fit term, while the factor rows are in cache).
void als_update_rows(const ArrayView& indptr, const ArrayView& others, const ArrayView& vals, const ArrayView& F,
                     int64_t n_key, double reg, bool count_scaling, const ArrayView& active, int cg_steps,
                     const ArrayView& out, const ArrayView& singular, std::uintptr_t stream,
                     const ArrayView& weights, const ArrayView& shared, const ArrayView& residuals) {
  expect().shape(F, "F", {-1, -1, -1});
  expect().shape(others, "others", {-1});
  const int64_t batch = F.shape[0], n_other = F.shape[1], r = F.shape[2], nnz = others.shape[0];
  LRH_EXPECTS(n_key >= 1 && r >= 1, "n_key and the rank must be positive, got ", n_key, " and ", r);
  LRH_EXPECTS(reg >= 0, "reg must be >= 0, got ", reg);
  LRH_EXPECTS(cg_steps >= 0, "cg_steps must be >= 0, got ", cg_steps);
  dispatch_float_index(F, "F", others, "others", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(indptr, "indptr", DType::int64, {batch * n_key + 1});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().optional(active, "active", DType::uint8, {batch});
    expect().optional(weights, "weights", dtype_of<T>(), {nnz});
    expect().optional(shared, "shared", dtype_of<T>(), {batch, r, r});
    expect().output(out, "out", dtype_of<T>(), {batch, n_key, r});
    expect().output(singular, "singular", DType::int64, {1});
    if (residuals.present()) expect().output(residuals, "residuals", DType::float64, {batch * n_key});
    py::gil_scoped_release release;
    check_launch(launch::als_update_rows<T, I>(indptr.data<int64_t>(), others.data<I>(), vals.data<T>(), F.data<T>(),
                                               batch, n_key, n_other, r, static_cast<T>(reg), count_scaling,
                                               weights.data<T>(), shared.data<T>(), active.data<uint8_t>(),
                                               cg_steps, out.data<T>(),
                                               singular.data<int64_t>(), residuals.data<double>(),
                                               stream_of(stream)),
                 "als_update_rows");
  });
}

}  // namespace

void bind_als(py::module_& m) {
  m.def("als_update_rows", &als_update_rows, arg("indptr"), arg("others"), arg("vals"), arg("F"), arg("n_key"),
        arg("reg"), arg("count_scaling"), arg("active"), arg("cg_steps"), arg("out"), arg("singular"),
        arg("stream") = 0, arg("weights") = py::none(), arg("shared") = py::none(), arg("residuals") = py::none());
}

}  // namespace lowrank_hpc::bindings
