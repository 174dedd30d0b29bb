// The kernelized product's fused top-k selection (CPU: f and the per-row selection in one pass
// over a block that is still in cache).
#include "cpu_bindings.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::bindings {

namespace {

// The kernel function of a code from the Python layer (lowrank_hpc.ops.KERNELS' index).
ops::KernelFunction kernel_function(int kernel) {
  LRH_EXPECTS(kernel >= 0 && kernel <= static_cast<int>(ops::KernelFunction::piecewise_linear),
              "kernel: unknown kernel function code ", kernel);
  return static_cast<ops::KernelFunction>(kernel);
}

// f in place on a (rows, n) block, then each row's top-k by |f| into values and indices
// (rows, k); nonfinite[0] += the block's NaN/inf count.
void kernel_topk_rows(const ArrayView& block, int kernel, const ArrayView& values, const ArrayView& indices,
                      const ArrayView& nonfinite) {
  const ops::KernelFunction f = kernel_function(kernel);
  expect().shape(block, "block", {-1, -1});
  expect().shape(values, "values", {block.shape[0], -1});
  const int64_t rows = block.shape[0], n = block.shape[1], k = values.shape[1];
  LRH_EXPECTS(k >= 1 && k <= n, "values: k = ", k, " must be in [1, ", n, "]");
  expect().output(indices, "indices", DType::int64, {rows, k});
  expect().output(nonfinite, "nonfinite", DType::int64, {1});
  dispatch_float(block, "block", [&](auto t) {
    using T = decltype(t);
    expect().output(block, "block", dtype_of<T>(), {rows, n});
    expect().output(values, "values", dtype_of<T>(), {rows, k});
    py::gil_scoped_release release;
    *nonfinite.data<int64_t>() += cpu::kernel_topk_rows<T>(block.data<T>(), rows, n, f, k, values.data<T>(),
                                                           indices.data<int64_t>());
  });
}

// order (n,) int64 = positions of values (n,) by descending |value|, ties and NaN (last) in
// position order (cpu::order_by_magnitude).
void order_by_magnitude(const ArrayView& values, const ArrayView& order) {
  expect().shape(values, "values", {-1});
  const int64_t n = values.shape[0];
  expect().output(order, "order", DType::int64, {n});
  dispatch_float(values, "values", [&](auto t) {
    using T = decltype(t);
    expect().typed(values, "values", dtype_of<T>(), {n});
    py::gil_scoped_release release;
    cpu::order_by_magnitude<T>(values.data<T>(), n, order.data<int64_t>());
  });
}

// positions (k,) int64 = the positions, ascending, of the k largest |values| (n,), ties to the
// earlier (cpu::select_top_magnitudes), with the bounds read at sample (s,) int64 positions
// (s may be 0); returns k, or -1 where a value is NaN.
int64_t select_top_magnitudes(const ArrayView& values, const ArrayView& sample, const ArrayView& positions) {
  expect().shape(values, "values", {-1});
  const int64_t n = values.shape[0];
  expect().typed(sample, "sample", DType::int64, {-1});
  const int64_t sample_size = sample.shape[0];
  const int64_t* sampled = sample.data<int64_t>();
  for (int64_t s = 0; s < sample_size; ++s)
    LRH_EXPECTS(sampled[s] >= 0 && sampled[s] < n, "sample: position ", sampled[s], " outside [0, ", n, ")");
  expect().output(positions, "positions", DType::int64, {-1});
  const int64_t k = positions.shape[0];
  LRH_EXPECTS(k >= 1 && k <= n, "positions: k = ", k, " must be in [1, ", n, "]");
  return dispatch_float(values, "values", [&](auto t) {
    using T = decltype(t);
    expect().typed(values, "values", dtype_of<T>(), {n});
    py::gil_scoped_release release;
    return cpu::select_top_magnitudes<T>(values.data<T>(), n, k, sampled, sample_size, positions.data<int64_t>());
  });
}

// The host GEMM at `gemm` (a function address from the Python layer) for T, where it fits the
// 32-bit integers of its interface; 0 is no GEMM.
template <class T>
cpu::HostGemm<T> host_gemm(uintptr_t gemm, std::initializer_list<int64_t> extents) {
  LRH_EXPECTS(gemm != 0, "gemm: no host GEMM address");
  for (const int64_t extent : extents)
    LRH_EXPECTS(extent <= std::numeric_limits<int>::max(), "U, V: an extent of ", extent,
                " exceeds the host BLAS's 32-bit integers");
  return reinterpret_cast<cpu::HostGemm<T>>(gemm);
}

// The extents of the tiled products' (batch, m, r) U and (batch, n, r) V, of one float type,
// after checking them and the int64 status word nonfinite (1,).
struct TiledExtents {
  int64_t batch, m, n, r;
};
TiledExtents expect_tiled(const ArrayView& U, const ArrayView& V, const ArrayView& nonfinite) {
  expect().shape(U, "U", {-1, -1, -1});
  expect().shape(V, "V", {U.shape[0], -1, U.shape[2]});
  LRH_EXPECTS(U.dtype == V.dtype, "V: expected ", dtype_name(U.dtype), " like U, got ", dtype_name(V.dtype));
  expect().output(nonfinite, "nonfinite", DType::int64, {1});
  return {U.shape[0], U.shape[1], V.shape[1], U.shape[2]};
}

// out (batch, m, n) = f(U V^T), each row tile formed by the host GEMM at `gemm` (called on one
// BLAS thread from each OpenMP thread) and mapped in cache; nonfinite[0] += its NaN/inf count.
void kernel_product_tiles(const ArrayView& U, const ArrayView& V, int kernel, const ArrayView& out,
                          const ArrayView& nonfinite, uintptr_t gemm) {
  const ops::KernelFunction f = kernel_function(kernel);
  const auto [batch, m, n, r] = expect_tiled(U, V, nonfinite);
  dispatch_float(U, "U", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {batch, m, n});
    const cpu::HostGemm<T> product = host_gemm<T>(gemm, {m, n, r});
    py::gil_scoped_release release;
    *nonfinite.data<int64_t>() +=
        cpu::kernel_product_tiles<T>(product, U.data<T>(), V.data<T>(), batch, m, n, r, f, out.data<T>());
  });
}

// Each row's top-k by |f| of f(U V^T) into values and indices (batch, m, k), the rows formed a
// tile at a time by the host GEMM at `gemm`; nonfinite[0] += the NaN/inf count.
void kernel_topk_rows_of_products(const ArrayView& U, const ArrayView& V, int kernel, const ArrayView& values,
                                  const ArrayView& indices, const ArrayView& nonfinite, uintptr_t gemm) {
  const ops::KernelFunction f = kernel_function(kernel);
  const auto [batch, m, n, r] = expect_tiled(U, V, nonfinite);
  expect().shape(values, "values", {batch, m, -1});
  const int64_t k = values.shape[2];
  LRH_EXPECTS(k >= 1 && k <= n, "values: k = ", k, " must be in [1, ", n, "]");
  expect().output(indices, "indices", DType::int64, {batch, m, k});
  dispatch_float(U, "U", [&](auto t) {
    using T = decltype(t);
    expect().output(values, "values", dtype_of<T>(), {batch, m, k});
    const cpu::HostGemm<T> product = host_gemm<T>(gemm, {m, n, r});
    py::gil_scoped_release release;
    *nonfinite.data<int64_t>() += cpu::kernel_topk_rows_of_products<T>(
        product, U.data<T>(), V.data<T>(), batch, m, n, r, f, k, values.data<T>(), indices.data<int64_t>());
  });
}

// Each problem's top-k entries by |f| of f(U V^T) into values and flat (batch, k) (flat index
// i * n + j; flat order, or best first with by_magnitude), blocks of rows formed in `block`
// (block_rows, n) a tile at a time by the host GEMM at `gemm`; nonfinite[0] += the NaN/inf count
// (then nothing is selected: the caller raises).
void kernel_topk_global_of_products(const ArrayView& U, const ArrayView& V, int kernel, const ArrayView& block,
                                    bool by_magnitude, const ArrayView& values, const ArrayView& flat,
                                    const ArrayView& nonfinite, uintptr_t gemm) {
  const ops::KernelFunction f = kernel_function(kernel);
  const auto [batch, m, n, r] = expect_tiled(U, V, nonfinite);
  expect().shape(values, "values", {batch, -1});
  const int64_t k = values.shape[1];
  LRH_EXPECTS(k >= 1 && k <= m * n, "values: k = ", k, " must be in [1, m * n = ", m * n, "]");
  expect().shape(block, "block", {-1, n});
  const int64_t block_rows = block.shape[0];
  LRH_EXPECTS(block_rows >= 1 && block_rows <= m, "block: ", block_rows, " rows, expected 1 to m = ", m);
  expect().output(flat, "flat", DType::int64, {batch, k});
  dispatch_float(U, "U", [&](auto t) {
    using T = decltype(t);
    expect().output(values, "values", dtype_of<T>(), {batch, k});
    expect().output(block, "block", dtype_of<T>(), {block_rows, n});
    const cpu::HostGemm<T> product = host_gemm<T>(gemm, {m, n, r});
    py::gil_scoped_release release;
    *nonfinite.data<int64_t>() += cpu::kernel_topk_global_of_products<T>(
        product, U.data<T>(), V.data<T>(), batch, m, n, r, f, k, block_rows, block.data<T>(), by_magnitude,
        values.data<T>(), flat.data<int64_t>());
  });
}

}  // namespace

void bind_top_k(py::module_& m) {
  m.def("kernel_topk_global_of_products", &kernel_topk_global_of_products, py::arg("U"), py::arg("V"),
        py::arg("kernel"), py::arg("block"), py::arg("by_magnitude"), py::arg("values"), py::arg("flat"),
        py::arg("nonfinite"), py::arg("gemm"));
  m.def("kernel_product_tiles", &kernel_product_tiles, py::arg("U"), py::arg("V"), py::arg("kernel"), py::arg("out"),
        py::arg("nonfinite"), py::arg("gemm"));
  m.def("kernel_topk_rows_of_products", &kernel_topk_rows_of_products, py::arg("U"), py::arg("V"), py::arg("kernel"),
        py::arg("values"), py::arg("indices"), py::arg("nonfinite"), py::arg("gemm"));
  m.def("kernel_topk_rows", &kernel_topk_rows, py::arg("block"), py::arg("kernel"), py::arg("values"),
        py::arg("indices"), py::arg("nonfinite"));
  m.def("order_by_magnitude", &order_by_magnitude, py::arg("values"), py::arg("order"));
  m.def("select_top_magnitudes", &select_top_magnitudes, py::arg("values"), py::arg("sample"), py::arg("positions"));
}

}  // namespace lowrank_hpc::bindings
