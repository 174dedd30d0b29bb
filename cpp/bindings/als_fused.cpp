// The CPU's own ALS kernels: the iterations fused (each problem's whole iteration in one pass
// while its data is in cache) and dense (a SIMD register of small problems on the full grid), the
// fit term's pass of the rows kernel, and which form the exact row solves take.
#include "cpu_bindings.hpp"
#include "lowrank_hpc/core/lanes.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// Losses and relative changes (batch,) float64, the active mask (batch,) uint8, factors
// (batch, m|n, r) of the values' dtype.
template <class T>
void expect_iteration_arrays(const ArrayView& active, const ArrayView& U, const ArrayView& V,
                             const ArrayView& losses, const ArrayView& changes, int64_t batch, int64_t m, int64_t n,
                             int64_t r) {
  expect().typed(active, "active", DType::uint8, {batch});
  expect().output(U, "U", dtype_of<T>(), {batch, m, r});
  expect().output(V, "V", dtype_of<T>(), {batch, n, r});
  expect().output(losses, "losses", DType::float64, {batch});
  expect().output(changes, "changes", DType::float64, {batch});
}

// The CSR orders come from coo_to_csr, which checked every index once per solve.
int64_t als_iterations(const ArrayView& row_indptr, const ArrayView& row_others, const ArrayView& row_vals,
                       const ArrayView& col_indptr, const ArrayView& col_others, const ArrayView& col_vals,
                       double reg, bool count_scaling, const ArrayView& active, const ArrayView& U,
                       const ArrayView& V, const ArrayView& losses, const ArrayView& changes) {
  expect().shape(U, "U", {-1, -1, -1});
  expect().shape(V, "V", {U.shape[0], -1, U.shape[2]});
  expect().shape(row_others, "row_others", {-1});
  const int64_t batch = U.shape[0], m = U.shape[1], r = U.shape[2], n = V.shape[1], nnz = row_others.shape[0];
  return dispatch_float_index(U, "U", row_others, "row_others", [&](auto t, auto i) -> int64_t {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(col_others, "col_others", dtype_of<I>(), {nnz});
    expect().typed(row_vals, "row_vals", dtype_of<T>(), {nnz});
    expect().typed(col_vals, "col_vals", dtype_of<T>(), {nnz});
    expect().typed(row_indptr, "row_indptr", DType::int64, {batch * m + 1});
    expect().typed(col_indptr, "col_indptr", DType::int64, {batch * n + 1});
    expect_iteration_arrays<T>(active, U, V, losses, changes, batch, m, n, r);
    const cpu::AlsBatch<T, I> data{row_indptr.data<int64_t>(), row_others.data<I>(), row_vals.data<T>(),
                                   col_indptr.data<int64_t>(), col_others.data<I>(), col_vals.data<T>(),
                                   batch, m, n};
    py::gil_scoped_release release;
    return cpu::als_iterations<T, I>(data, r, static_cast<T>(reg), count_scaling, active.data<uint8_t>(),
                                     U.data<T>(), V.data<T>(), losses.data<double>(), changes.data<double>());
  });
}

// The dense groups (cpu::AlsDense) of `batch` problems after checking the four arrays against
// each other: seen (groups, m, n) of W-bit integers, values (groups, m, n, W), row_counts
// (groups, m, W), col_counts (groups, n, W).
template <class T>
cpu::AlsDense<T> dense_groups(const ArrayView& seen, const ArrayView& values, const ArrayView& row_counts,
                              const ArrayView& col_counts, int64_t batch) {
  constexpr int64_t W = lanes::Lanes<T>::width;
  const int64_t groups = (batch + W - 1) / W;
  LRH_EXPECTS(batch >= 1, "the dense ALS kernel needs at least one problem");
  expect().output(values, "values", dtype_of<T>(), {groups, -1, -1, W});
  const int64_t m = values.shape[1], n = values.shape[2];
  expect().output(row_counts, "row_counts", dtype_of<T>(), {groups, m, W});
  expect().output(col_counts, "col_counts", dtype_of<T>(), {groups, n, W});
  expect().output(seen, "seen", W == 8 ? DType::uint8 : DType::uint16, {groups, m, n});
  return {seen.ptr, values.data<T>(), row_counts.data<T>(), col_counts.data<T>(), batch, m, n};
}

// Fills zeroed dense groups. False when some problem's entries are not in strictly increasing
// (row, col) order or out of range: then the sparse kernels run.
bool als_dense_pack(const ArrayView& rows, const ArrayView& cols, const ArrayView& vals, const ArrayView& offsets,
                    const ArrayView& seen, const ArrayView& values, const ArrayView& row_counts,
                    const ArrayView& col_counts) {
  expect().shape(rows, "rows", {-1});
  expect().shape(offsets, "offsets", {-1});
  const int64_t nnz = rows.shape[0], batch = offsets.shape[0] - 1;
  return dispatch_float_index(vals, "vals", rows, "rows", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    const cpu::AlsDense<T> out = dense_groups<T>(seen, values, row_counts, col_counts, batch);
    expect().typed(cols, "cols", dtype_of<I>(), {nnz});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().typed(offsets, "offsets", DType::int64, {batch + 1});
    py::gil_scoped_release release;
    return cpu::als_dense_pack<T, I>(rows.data<I>(), cols.data<I>(), vals.data<T>(), offsets.data<int64_t>(),
                                     out.batch, out.m, out.n, out);
  });
}

// The fused ALS iteration on the dense groups of als_dense_pack (ranks 1 to 4).
int64_t als_dense_iterations(const ArrayView& seen, const ArrayView& values, const ArrayView& row_counts,
                             const ArrayView& col_counts, double reg, bool count_scaling, const ArrayView& active,
                             const ArrayView& U, const ArrayView& V, const ArrayView& losses,
                             const ArrayView& changes) {
  expect().shape(U, "U", {-1, -1, -1});
  const int64_t batch = U.shape[0], r = U.shape[2];
  LRH_EXPECTS(r >= 1 && r <= 4, "the dense ALS kernel takes ranks 1 to 4, got ", r);
  return dispatch_float(U, "U", [&](auto t) -> int64_t {
    using T = decltype(t);
    const cpu::AlsDense<T> data = dense_groups<T>(seen, values, row_counts, col_counts, batch);
    expect_iteration_arrays<T>(active, U, V, losses, changes, batch, data.m, data.n, r);
    py::gil_scoped_release release;
    return cpu::als_dense_iterations<T>(data, r, static_cast<T>(reg), count_scaling, active.data<uint8_t>(),
                                        U.data<T>(), V.data<T>(), losses.data<double>(), changes.data<double>());
  });
}

// out (batch * n_key,) float64 = each key row's sum of squared residuals against F (batch,
// n_other, r) at its factor X (batch, n_key, r), CSR as for als_update_rows (from coo_to_csr,
// which checked every index); rows of inactive problems untouched.
void als_squared_residuals(const ArrayView& indptr, const ArrayView& others, const ArrayView& vals,
                           const ArrayView& F, const ArrayView& X, const ArrayView& active, const ArrayView& out) {
  expect().shape(F, "F", {-1, -1, -1});
  expect().shape(others, "others", {-1});
  const int64_t batch = F.shape[0], n_other = F.shape[1], r = F.shape[2], nnz = others.shape[0];
  dispatch_float_index(F, "F", others, "others", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(X, "X", dtype_of<T>(), {batch, -1, r});
    const int64_t n_key = X.shape[1];
    expect().typed(indptr, "indptr", DType::int64, {batch * n_key + 1});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().optional(active, "active", DType::uint8, {batch});
    expect().output(out, "out", DType::float64, {batch * n_key});
    py::gil_scoped_release release;
    cpu::als_squared_residuals<T, I>(indptr.data<int64_t>(), others.data<I>(), vals.data<T>(), F.data<T>(),
                                     X.data<T>(), batch, n_key, n_other, r, active.data<uint8_t>(),
                                     out.data<double>());
  });
}

// "entries", "tiles" or "fused_tiles": how the exact row solves form rank r's systems in dtype
// ("float32" or "float64"; cpu::als_row_solve_form), for the tests that transcribe them.
std::string als_row_solve_form(int64_t r, const std::string& dtype) {
  LRH_EXPECTS(r >= 1, "rank must be >= 1, got ", r);
  LRH_EXPECTS(dtype == "float32" || dtype == "float64", "dtype must be float32 or float64, got ", dtype);
  const int form = dtype == "float32" ? cpu::als_row_solve_form<float>(r) : cpu::als_row_solve_form<double>(r);
  return form == 0 ? "entries" : form == 1 ? "tiles" : "fused_tiles";
}

}  // namespace

void bind_als_fused(py::module_& m) {
  m.def("als_row_solve_form", &als_row_solve_form, arg("rank"), arg("dtype"));
  m.def("als_squared_residuals", &als_squared_residuals, arg("indptr"), arg("others"), arg("vals"), arg("F"),
        arg("X"), arg("active"), arg("out"));
  m.def("als_iterations", &als_iterations, arg("row_indptr"), arg("row_others"), arg("row_vals"),
        arg("col_indptr"), arg("col_others"), arg("col_vals"), arg("reg"), arg("count_scaling"), arg("active"),
        arg("U"), arg("V"), arg("losses"), arg("changes"));
  m.def("als_dense_pack", &als_dense_pack, arg("rows"), arg("cols"), arg("vals"), arg("offsets"), arg("seen"),
        arg("values"), arg("row_counts"), arg("col_counts"));
  m.def("als_dense_iterations", &als_dense_iterations, arg("seen"), arg("values"), arg("row_counts"),
        arg("col_counts"), arg("reg"), arg("count_scaling"), arg("active"), arg("U"), arg("V"), arg("losses"),
        arg("changes"));
}

}  // namespace lowrank_hpc::bindings
