// The coordinate-format kernels: sampled product (and the solvers' squared residuals), CSR
// order, CSR times dense, and the NaN/inf count every public call makes of its data.
// The sampled product, CSR order and product and the count also take 16-bit storage (float16,
// bfloat16): read as float, summed in float, each output rounded once to the input's format.
// Status words (first bad entry, counts) are int64 arrays on the module's device, so neither
// module reads device memory here; the Python layer reads them when it needs the answer.
#include <algorithm>
#include <type_traits>

#include "backend.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// The operands both sampled kernels read: factors (batch, m, r) and (batch, n, r) of type T,
// nnz coordinates of type I, batch + 1 offsets and the first-bad status word.
template <class T, class I>
void expect_sampled_operands(const ArrayView& V, const ArrayView& rows, const ArrayView& cols,
                             const ArrayView& offsets, const ArrayView& first_bad, int64_t batch, int64_t r,
                             int64_t nnz) {
  expect().typed(V, "V", dtype_of<T>(), {batch, -1, r});
  expect().typed(rows, "rows", dtype_of<I>(), {nnz});
  expect().typed(cols, "cols", dtype_of<I>(), {nnz});
  expect().typed(offsets, "offsets", DType::int64, {batch + 1});
  expect().output(first_bad, "first_bad", DType::int64, {1});
}

// row_order (float32/float64 on the CPU; lowrank_hpc.ops' sort_pays decides): the entries sorted
// by row first and each U row read once per row (cpu::sampled_product_in_row_order); the GPU
// runs the coordinate kernel (a thread group per entry gains nothing from the row order).
void sampled_product(const ArrayView& U, const ArrayView& V, const ArrayView& rows, const ArrayView& cols,
                     const ArrayView& offsets, const ArrayView& out, const ArrayView& first_bad,
                     std::uintptr_t stream, bool row_order) {
  expect().shape(U, "U", {-1, -1, -1});
  const int64_t batch = U.shape[0], m = U.shape[1], r = U.shape[2], n = V.shape[1], nnz = rows.shape[0];
  dispatch_storage_index(U, "U", rows, "rows", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect_sampled_operands<T, I>(V, rows, cols, offsets, first_bad, batch, r, nnz);
    expect().output(out, "out", dtype_of<T>(), {nnz});
    py::gil_scoped_release release;
#ifndef LRH_BACKEND_CUDA
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      if (row_order) {
        const int64_t bad = cpu::sampled_product_in_row_order<T, I>(U.data<T>(), V.data<T>(), rows.data<I>(),
                                                                    cols.data<I>(), offsets.data<int64_t>(), batch,
                                                                    m, n, r, nnz, out.data<T>());
        if (bad >= 0) *first_bad.data<int64_t>() = std::min(*first_bad.data<int64_t>(), bad);
        return;
      }
    }
#endif
    (void)row_order;
    check_launch(launch::sampled_product<T, I>(U.data<T>(), V.data<T>(), rows.data<I>(), cols.data<I>(),
                                               offsets.data<int64_t>(), batch, m, n, r, nnz, out.data<T>(),
                                               first_bad.data<int64_t>(), stream_of(stream)),
                 "sampled_product");
  });
}

void sampled_squared_residuals(const ArrayView& U, const ArrayView& V, const ArrayView& rows, const ArrayView& cols,
                               const ArrayView& vals, const ArrayView& offsets, const ArrayView& out,
                               const ArrayView& first_bad, std::uintptr_t stream) {
  expect().shape(U, "U", {-1, -1, -1});
  const int64_t batch = U.shape[0], m = U.shape[1], r = U.shape[2], n = V.shape[1], nnz = rows.shape[0];
  dispatch_float_index(U, "U", rows, "rows", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect_sampled_operands<T, I>(V, rows, cols, offsets, first_bad, batch, r, nnz);
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().output(out, "out", DType::float64, {nnz});
    py::gil_scoped_release release;
    check_launch(launch::sampled_squared_residuals<T, I>(U.data<T>(), V.data<T>(), rows.data<I>(), cols.data<I>(),
                                                         vals.data<T>(), offsets.data<int64_t>(), batch, m, n, r,
                                                         nnz, out.data<double>(), first_bad.data<int64_t>(),
                                                         stream_of(stream)),
                 "sampled_squared_residuals");
  });
}

// vals and vals_sorted are both given (the one-shot product moves the values) or both None.
void coo_to_csr(const ArrayView& keys, const ArrayView& others, const ArrayView& vals, const ArrayView& offsets,
                int64_t n_key, const ArrayView& indptr, const ArrayView& perm, const ArrayView& others_sorted,
                const ArrayView& vals_sorted, const ArrayView& status, std::uintptr_t stream) {
  expect().shape(keys, "keys", {-1});
  expect().shape(offsets, "offsets", {-1});
  const int64_t nnz = keys.shape[0], batch = offsets.shape[0] - 1;
  LRH_EXPECTS(batch >= 1 && n_key >= 0, "offsets: expected length batch + 1 >= 2; n_key must be >= 0");
  LRH_EXPECTS(vals.present() == vals_sorted.present(), "vals and vals_sorted come together");
  // The dtype of the values only matters when they move; float32 stands in otherwise.
  const ArrayView& float_like = vals.present() ? vals : ArrayView{nullptr, kDevice, DType::float32};
  dispatch_storage_index(float_like, "vals", keys, "keys", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(others, "others", dtype_of<I>(), {nnz});
    expect().typed(offsets, "offsets", DType::int64, {batch + 1});
    expect().output(indptr, "indptr", DType::int64, {batch * n_key + 1});
    if (perm.present()) expect().output(perm, "perm", DType::int64, {nnz});  // None: not kept
    expect().output(others_sorted, "others_sorted", dtype_of<I>(), {nnz});
    expect().optional(vals, "vals", dtype_of<T>(), {nnz});
    if (vals_sorted.present()) expect().output(vals_sorted, "vals_sorted", dtype_of<T>(), {nnz});
    expect().output(status, "status", DType::int64, {2});
    py::gil_scoped_release release;
    check_launch(launch::coo_to_csr<T, I>(keys.data<I>(), others.data<I>(), vals.data<T>(), offsets.data<int64_t>(),
                                          batch, n_key, nnz, indptr.data<int64_t>(), perm.data<int64_t>(),
                                          others_sorted.data<I>(), vals_sorted.data<T>(), status.data<int64_t>(),
                                          stream_of(stream)),
                 "coo_to_csr");
  });
}

// The CSR arrays are trusted to come from coo_to_csr (indptr runs 0..nnz, perm is a
// permutation): re-reading them on every product would cost a pass over the data.
void csr_times_dense(const ArrayView& indptr, const ArrayView& perm, const ArrayView& others, const ArrayView& vals,
                     const ArrayView& B, int64_t n_key, const ArrayView& out, const ArrayView& first_bad,
                     std::uintptr_t stream) {
  expect().shape(B, "B", {-1, -1, -1});
  expect().shape(others, "others", {-1});
  const int64_t batch = B.shape[0], n_other = B.shape[1], r = B.shape[2], nnz = others.shape[0];
  LRH_EXPECTS(n_key >= 1, "n_key must be >= 1, got ", n_key);
  dispatch_storage_index(B, "B", others, "others", [&](auto t, auto i) {
    using T = decltype(t);
    using I = decltype(i);
    expect().typed(indptr, "indptr", DType::int64, {batch * n_key + 1});
    expect().optional(perm, "perm", DType::int64, {nnz});
    expect().typed(vals, "vals", dtype_of<T>(), {nnz});
    expect().output(out, "out", dtype_of<T>(), {batch, n_key, r});
    expect().output(first_bad, "first_bad", DType::int64, {1});
    py::gil_scoped_release release;
    check_launch(launch::csr_times_dense<T, I>(indptr.data<int64_t>(), perm.data<int64_t>(), others.data<I>(),
                                               vals.data<T>(), B.data<T>(), batch, n_key, n_other, r, out.data<T>(),
                                               first_bad.data<int64_t>(), stream_of(stream)),
                 "csr_times_dense");
  });
}

void count_nonfinite(const ArrayView& x, const ArrayView& count, std::uintptr_t stream) {
  LRH_EXPECTS(x.present() && x.c_contiguous(), "x: must be a C-contiguous array");
  expect().output(count, "count", DType::int64, {1});
  dispatch_storage(x, "x", [&](auto t) {
    using T = decltype(t);
    LRH_EXPECTS(x.device == kDevice, "x: is on the wrong device for this backend");
    py::gil_scoped_release release;
    check_launch(launch::count_nonfinite<T>(x.data<T>(), x.size(), count.data<int64_t>(), stream_of(stream)),
                 "count_nonfinite");
  });
}

}  // namespace

void bind_coo_kernels(py::module_& m) {
  m.def("sampled_product", &sampled_product, arg("U"), arg("V"), arg("rows"), arg("cols"), arg("offsets"),
        arg("out"), arg("first_bad"), arg("stream") = 0, arg("row_order") = false,
        "out[k] = <U[b, rows[k]], V[b, cols[k]]>; lowers first_bad[0] to the first out-of-range entry "
        "(row_order: sorted by row first, on the CPU for float32/float64; then the first entry with a bad row, "
        "else with a bad column)");
  m.def("sampled_squared_residuals", &sampled_squared_residuals, arg("U"), arg("V"), arg("rows"), arg("cols"),
        arg("vals"), arg("offsets"), arg("out"), arg("first_bad"), arg("stream") = 0,
        "out[k] = (vals[k] - <U[b, rows[k]], V[b, cols[k]]>)^2 in float64");
  m.def("coo_to_csr", &coo_to_csr, arg("keys"), arg("others"), arg("vals"), arg("offsets"), arg("n_key"),
        arg("indptr"), arg("perm"), arg("others_sorted"), arg("vals_sorted"), arg("status"), arg("stream") = 0,
        "CSR order by (problem, key); status = [first bad key entry (lowered), 1 if already sorted]; perm may be "
        "None where the caller keeps no permutation");
  m.def("csr_times_dense", &csr_times_dense, arg("indptr"), arg("perm"), arg("others"), arg("vals"), arg("B"),
        arg("n_key"), arg("out"), arg("first_bad"), arg("stream") = 0, "out = S @ B for S in CSR form");
  m.def("count_nonfinite", &count_nonfinite, arg("x"), arg("count"), arg("stream") = 0,
        "count[0] += number of NaN/inf values of x");
}

}  // namespace lowrank_hpc::bindings
