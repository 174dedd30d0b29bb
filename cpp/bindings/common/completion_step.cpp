// The batched completion solver's fused per-problem gradient iteration.
#include "backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// Index ranges are checked once per solve by lowrank_hpc.recover.batched_factored_gd, not here
// on every iteration.
void completion_steps(const ArrayView& rows, const ArrayView& cols, const ArrayView& vals, const ArrayView& offsets,
                      int method, const ArrayView& active, const ArrayView& U, const ArrayView& V, const ArrayView& U1,
                      const ArrayView& V1, const ArrayView& steps, const ArrayView& dampings,
                      const ArrayView& scratch, const ArrayView& losses, const ArrayView& changes,
                      const ArrayView& halvings, const ArrayView& stuck, std::uintptr_t stream) {
  LRH_EXPECTS(method >= 0 && method <= 3, "method code must be 0..3, got ", method);
  expect().shape(U, "U", {-1, -1, -1});
  const int64_t batch = U.shape[0], m = U.shape[1], k = U.shape[2], n = V.shape[1], nnz = rows.shape[0];
  dispatch_float_index(U, "U", rows, "rows", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(V, "V", dtype_of<T>(), {batch, -1, k});
    expect().typed(rows, "rows", dtype_of<I>(), {nnz});
    expect().typed(cols, "cols", dtype_of<I>(), {nnz});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().typed(offsets, "offsets", DType::int64, {batch + 1});
    expect().typed(active, "active", DType::uint8, {batch});
    expect().typed(dampings, "dampings", DType::float64, {batch});
    expect().output(U1, "U1", dtype_of<T>(), {batch, m, k});
    expect().output(V1, "V1", dtype_of<T>(), {batch, n, k});
    expect().output(scratch, "scratch", dtype_of<T>(), {batch * ((m + n) * k + 2 * k * k)});
    for (const auto& [array, name] : {std::pair{&steps, "steps"}, {&losses, "losses"}, {&changes, "changes"}})
      expect().output(*array, name, DType::float64, {batch});
    expect().output(halvings, "halvings", DType::int64, {batch});
    expect().output(stuck, "stuck", DType::uint8, {batch});
    py::gil_scoped_release release;
    check_launch(launch::completion_steps<T, I>(
                     rows.data<I>(), cols.data<I>(), vals.data<T>(), offsets.data<int64_t>(), batch, m, n, k, method,
                     active.data<uint8_t>(), U.data<T>(), V.data<T>(), U1.data<T>(), V1.data<T>(),
                     steps.data<double>(), dampings.data<double>(), scratch.data<T>(), losses.data<double>(),
                     changes.data<double>(), halvings.data<int64_t>(), stuck.data<uint8_t>(), stream_of(stream)),
                 "completion_steps");
  });
}

// out (batch,) = ||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F per problem, from the Gram products
// left (batch, 3, k, k) and right (batch, 4, k, k) (solvers::relative_change_from_grams).
void relative_change(const ArrayView& left, const ArrayView& right, const ArrayView& out, std::uintptr_t stream) {
  expect().typed(left, "left", DType::float64, {-1, 3, -1, -1});
  const int64_t batch = left.shape[0], k = left.shape[2];
  expect().typed(left, "left", DType::float64, {batch, 3, k, k});
  expect().typed(right, "right", DType::float64, {batch, 4, k, k});
  expect().output(out, "out", DType::float64, {batch});
  py::gil_scoped_release release;
  check_launch(launch::relative_change_from_grams(left.data<double>(), right.data<double>(), batch, k,
                                                  out.data<double>(), stream_of(stream)),
               "relative_change");
}

}  // namespace

void bind_completion_step(py::module_& m) {
  m.def("relative_change", &relative_change, arg("left"), arg("right"), arg("out"), arg("stream") = 0,
        "out[b] = the relative change of problem b's product from its Gram products");
  m.def("completion_steps", &completion_steps, arg("rows"), arg("cols"), arg("vals"), arg("offsets"), arg("method"),
        arg("active"), arg("U"), arg("V"), arg("U1"), arg("V1"), arg("steps"), arg("dampings"), arg("scratch"),
        arg("losses"), arg("changes"), arg("halvings"), arg("stuck"), arg("stream") = 0);
}

}  // namespace lowrank_hpc::bindings
