// The GPU launcher of the Adafactor step (lowrank_hpc/ops/adafactor.hpp; the CPU driver is
// cpp/src/adafactor_cpu.cpp). Five kernels, every sum in a fixed order (no atomics), so a step is
// deterministic: (1) tiles of a row band x 512 columns sum G^2 per row and per column band and
// X^2, G^2 per tile; (2) one block per slice checks the parameter, updates R and C and takes
// mean(R); (3) warps over rows sum U^2; (4) one thread per parameter makes the scale; (5) warps
// over rows apply the step. Scratch is O(slices (rows + cols)) per parameter, stream-ordered.
#include <cuda_runtime.h>

#include <algorithm>

#include "lowrank_hpc/ops/adafactor.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

using ops::AdafactorEntry;
using ops::AdafactorOptions;
using ops::AdafactorProblem;
using ops::AdafactorShape;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kColsPerLane = 16;
constexpr int64_t kWindow = 32 * kColsPerLane;  // columns of a pass-1 tile
constexpr int64_t kMaxBands = 64;               // row bands of a slice in pass 1 (column partial sums)
constexpr int64_t kTargetBlocks = 1024;         // enough blocks to fill any current GPU
constexpr int64_t kVectorRow = 1024;            // a vector's entries per warp in passes 2 and 3
constexpr int64_t kMaxBatch = 65535;            // gridDim.y

__device__ double warp_sum(double x) {
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;  // every lane holds the total
}

// The block's total in a fixed order, returned to every thread. `shared` holds kWarps doubles.
__device__ double block_sum(double x, double* shared) {
  x = warp_sum(x);
  const int warp = threadIdx.x / 32;
  __syncthreads();  // shared may still be read from a previous call
  if (threadIdx.x % 32 == 0) shared[warp] = x;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += shared[w];
  return total;
}

struct Layout {
  int64_t windows, bands, band_rows, tiles;  // pass 1
  int64_t row_len, rows;                     // passes 2 and 3: rows of row_len entries
  int64_t pass2_blocks;
};

// Pass 1: row_partials[b, l, window, i], col_partials[b, l, band, j], tile_sums[b, tile, {G^2, X^2}].
template <class P, class S>
__global__ void __launch_bounds__(kThreads) grad_squares_kernel(const AdafactorProblem<P, S>* problems,
                                                                AdafactorShape shape, Layout layout,
                                                                double* row_partials, double* col_partials,
                                                                double* tile_sums) {
  __shared__ double cols[kWarps][kWindow];
  __shared__ double sums[kWarps];
  const int64_t b = blockIdx.y;
  const AdafactorProblem<P, S> pr = problems[b];
  const int64_t L = shape.slices, n = shape.rows, m = shape.cols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t tile = blockIdx.x; tile < layout.tiles; tile += gridDim.x) {
    const int64_t w = tile % layout.windows, h = (tile / layout.windows) % layout.bands;
    const int64_t l = tile / (layout.windows * layout.bands);
    const int64_t c0 = w * kWindow, r0 = h * layout.band_rows, r1 = min(n, r0 + layout.band_rows);
    double acc[kColsPerLane] = {};
    double grads = 0.0, params = 0.0;
    for (int64_t i = r0 + warp; i < r1; i += kWarps) {
      const int64_t base = (l * n + i) * m;
      double row = 0.0;
#pragma unroll
      for (int k = 0; k < kColsPerLane; ++k) {
        const int64_t j = c0 + lane + 32 * k;
        if (j < m) {
          const double g = load_as<double>(pr.grad[base + j]), x = load_as<double>(pr.param[base + j]);
          row += g * g;
          acc[k] += g * g;
          params += x * x;
        }
      }
      row = warp_sum(row);
      if (lane == 0) {
        row_partials[((b * L + l) * layout.windows + w) * n + i] = row;
        grads += row;
      }
    }
#pragma unroll
    for (int k = 0; k < kColsPerLane; ++k) cols[warp][lane + 32 * k] = acc[k];
    __syncthreads();
    for (int c = threadIdx.x; c < kWindow; c += kThreads) {
      double total = 0.0;
      for (int v = 0; v < kWarps; ++v) total += cols[v][c];
      if (c0 + c < m) col_partials[((b * L + l) * layout.bands + h) * m + c0 + c] = total;
    }
    grads = block_sum(grads, sums);
    params = block_sum(params, sums);
    if (threadIdx.x == 0) {
      tile_sums[(b * layout.tiles + tile) * 2] = grads;
      tile_sums[(b * layout.tiles + tile) * 2 + 1] = params;
    }
    __syncthreads();  // cols is rewritten by the next tile
  }
}

// One block per (slice, parameter): the parameter's status, then its R, C and row scale.
template <class P, class S>
__global__ void __launch_bounds__(kThreads) moments_kernel(const AdafactorProblem<P, S>* problems,
                                                           AdafactorShape shape, Layout layout,
                                                           AdafactorOptions options, const double* row_partials,
                                                           const double* col_partials, const double* tile_sums,
                                                           double* row_scale, S* col_roots, double* param_sums,
                                                           int64_t* status) {
  __shared__ double shared[kWarps];
  const int64_t b = blockIdx.y, l = blockIdx.x;
  const AdafactorProblem<P, S> pr = problems[b];
  const int64_t L = shape.slices, n = shape.rows, m = shape.cols;
  double grads = 0.0, params = 0.0;
  for (int64_t t = threadIdx.x; t < layout.tiles; t += kThreads) {
    grads += tile_sums[(b * layout.tiles + t) * 2];
    params += tile_sums[(b * layout.tiles + t) * 2 + 1];
  }
  grads = block_sum(grads, shared);
  params = block_sum(params, shared);
  const int64_t code = ops::adafactor_status(grads, params);
  if (code != 0) {
    if (l == 0 && threadIdx.x == 0) status[b] = code;
    return;
  }
  if (l == 0 && threadIdx.x == 0) param_sums[b] = params;
  double row_total = 0.0;
  if (shape.factored) {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      double sum = 0.0;
      for (int64_t w = 0; w < layout.windows; ++w) sum += row_partials[((b * L + l) * layout.windows + w) * n + i];
      const S moment = ops::updated_moment(pr.row_var[l * n + i], sum, m, pr.moment_weight);
      pr.row_var[l * n + i] = moment;
      row_total += moment;
    }
  }
  for (int64_t j = threadIdx.x; j < m; j += kThreads) {
    double sum = 0.0;
    for (int64_t h = 0; h < layout.bands; ++h) sum += col_partials[((b * L + l) * layout.bands + h) * m + j];
    const S moment = ops::updated_moment(pr.col_var[l * m + j], sum, n, pr.moment_weight);
    pr.col_var[l * m + j] = moment;
    if (shape.factored) col_roots[(b * L + l) * m + j] = ops::inverse_root(moment);
  }
  row_total = block_sum(row_total, shared);
  if (threadIdx.x == 0) row_scale[b * L + l] = shape.factored ? ops::adafactor_row_scale(options, row_total, n) : 1.0;
}

// Passes 2 (kApply false: update_partials[b, block] = sum of U^2) and 3 (kApply: the step),
// a warp per row of row_len entries.
template <class P, class S, bool kApply>
__global__ void __launch_bounds__(kThreads) direction_kernel(const AdafactorProblem<P, S>* problems,
                                                             AdafactorShape shape, Layout layout,
                                                             AdafactorOptions options, const double* row_scale,
                                                             const S* col_roots, const double* scales,
                                                             const int64_t* status, double* update_partials) {
  __shared__ double shared[kWarps];
  const int64_t b = blockIdx.y;
  if (status[b] != 0) return;  // the whole block leaves together
  const AdafactorProblem<P, S> pr = problems[b];
  AdafactorEntry<S> entry(options);
  if (kApply) entry.scale = static_cast<S>(scales[b]);
  const int64_t size = shape.size(), n = shape.rows, m = shape.cols;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double squares = 0.0;
  for (int64_t r = blockIdx.x * int64_t(kWarps) + warp; r < layout.rows; r += int64_t(gridDim.x) * kWarps) {
    const int64_t begin = r * layout.row_len, len = min(layout.row_len, size - begin);
    S row_root = S(1);
    const S* roots = nullptr;  // a vector: its entries' roots, taken from its moment entry by entry
    if (shape.factored) {
      const int64_t l = r / n;
      row_root = ops::adafactor_row_root(pr.row_var[r], row_scale[b * shape.slices + l]);
      roots = col_roots + (b * shape.slices + l) * m;
    }
    for (int64_t j = lane; j < len; j += 32) {
      const S col_root = roots ? roots[j] : ops::inverse_root(pr.col_var[begin + j]);
      const S u = entry.direction(load_as<S>(pr.grad[begin + j]), row_root, col_root);
      if (kApply) {
        S* moment = pr.exp_avg ? pr.exp_avg + begin + j : nullptr;
        pr.param[begin + j] = store_as<P>(entry.step(load_as<S>(pr.param[begin + j]), u, moment));
      } else {
        squares += static_cast<double>(u) * static_cast<double>(u);
      }
    }
  }
  if (!kApply) {
    squares = block_sum(squares, shared);
    if (threadIdx.x == 0) update_partials[b * gridDim.x + blockIdx.x] = squares;
  }
}

// scales[b] = alpha_t / max(1, RMS(U) / d), one thread per parameter.
template <class P, class S>
__global__ void scale_kernel(const AdafactorProblem<P, S>* problems, int64_t batch, AdafactorShape shape,
                             Layout layout, AdafactorOptions options, const double* update_partials,
                             const double* param_sums, const int64_t* status, double* scales) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch || status[b] != 0) return;
  double squares = 0.0;
  for (int64_t k = 0; k < layout.pass2_blocks; ++k) squares += update_partials[b * layout.pass2_blocks + k];
  const int64_t size = shape.size();
  scales[b] = ops::adafactor_step_size(options, problems[b].rho, param_sums[b], size) /
              ops::adafactor_clip_divisor(options, squares, size);
}

template <class T>
T* carve(char*& cursor, int64_t count) {
  T* out = reinterpret_cast<T*>(cursor);
  cursor += ((count * int64_t(sizeof(T)) + 255) / 256) * 256;
  return out;
}

template <class P, class S>
int step_chunk(const AdafactorProblem<P, S>* problems, int64_t batch, AdafactorShape shape,
               const AdafactorOptions& options, int64_t* status, cudaStream_t stream) {
  const int64_t L = shape.slices, n = shape.rows, m = shape.cols;
  Layout layout{};
  layout.windows = (m + kWindow - 1) / kWindow;
  const int64_t wanted = (kTargetBlocks + batch * L * layout.windows - 1) / (batch * L * layout.windows);
  layout.bands = std::max<int64_t>(1, std::min({wanted, kMaxBands, n}));
  layout.band_rows = (n + layout.bands - 1) / layout.bands;
  layout.bands = (n + layout.band_rows - 1) / layout.band_rows;
  layout.tiles = L * layout.bands * layout.windows;
  layout.row_len = shape.factored ? m : kVectorRow;
  layout.rows = shape.factored ? L * n : (m + kVectorRow - 1) / kVectorRow;
  layout.pass2_blocks = std::min<int64_t>((layout.rows + kWarps - 1) / kWarps,
                                          std::max<int64_t>(1, kTargetBlocks / batch));

  // Scratch: the staged problems, then the partial sums, freed in stream order.
  const int64_t bytes = 256 * 10 + int64_t(sizeof(AdafactorProblem<P, S>)) * batch +
                        int64_t(sizeof(S)) * (shape.factored ? batch * L * m : 0) +
                        8 * (batch * L * layout.windows * n + batch * L * layout.bands * m + batch * layout.tiles * 2 +
                             batch * L + 3 * batch + batch * layout.pass2_blocks);
  void* buffer = nullptr;
  cudaError_t code = cudaMallocAsync(&buffer, bytes, stream);
  if (code != cudaSuccess) return code;
  char* cursor = static_cast<char*>(buffer);
  auto* table = carve<AdafactorProblem<P, S>>(cursor, batch);
  double* row_partials = carve<double>(cursor, batch * L * layout.windows * n);
  double* col_partials = carve<double>(cursor, batch * L * layout.bands * m);
  double* tile_sums = carve<double>(cursor, batch * layout.tiles * 2);
  double* row_scale = carve<double>(cursor, batch * L);
  S* col_roots = carve<S>(cursor, shape.factored ? batch * L * m : 0);
  double* param_sums = carve<double>(cursor, batch);
  double* scales = carve<double>(cursor, batch);
  double* update_partials = carve<double>(cursor, batch * layout.pass2_blocks);
  // Pageable source: the copy is staged before the call returns, so `problems` may go.
  code = cudaMemcpyAsync(table, problems, sizeof(AdafactorProblem<P, S>) * batch, cudaMemcpyHostToDevice, stream);
  if (code == cudaSuccess) {
    const dim3 grid1(static_cast<unsigned>(std::min<int64_t>(layout.tiles, 4 * kTargetBlocks)),
                     static_cast<unsigned>(batch));
    grad_squares_kernel<P, S><<<grid1, kThreads, 0, stream>>>(table, shape, layout, row_partials, col_partials,
                                                              tile_sums);
    moments_kernel<P, S><<<dim3(static_cast<unsigned>(L), static_cast<unsigned>(batch)), kThreads, 0, stream>>>(
        table, shape, layout, options, row_partials, col_partials, tile_sums, row_scale, col_roots, param_sums,
        status);
    const dim3 grid2(static_cast<unsigned>(layout.pass2_blocks), static_cast<unsigned>(batch));
    direction_kernel<P, S, false><<<grid2, kThreads, 0, stream>>>(table, shape, layout, options, row_scale,
                                                                  col_roots, scales, status, update_partials);
    scale_kernel<P, S><<<static_cast<unsigned>((batch + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        table, batch, shape, layout, options, update_partials, param_sums, status, scales);
    direction_kernel<P, S, true><<<grid2, kThreads, 0, stream>>>(table, shape, layout, options, row_scale,
                                                                 col_roots, scales, status, update_partials);
    code = cudaGetLastError();
  }
  const cudaError_t freed = cudaFreeAsync(buffer, stream);
  return code != cudaSuccess ? code : freed;
}

}  // namespace

template <class P, class S>
int adafactor_step(const AdafactorProblem<P, S>* problems, int64_t batch, AdafactorShape shape,
                   const AdafactorOptions& options, int64_t* status, void* stream) {
  if (shape.slices > 2147483647) return cudaErrorInvalidConfiguration;  // gridDim.x of the moments kernel
  for (int64_t first = 0; first < batch; first += kMaxBatch) {
    const int code = step_chunk<P, S>(problems + first, std::min(kMaxBatch, batch - first), shape, options,
                                      status + first, static_cast<cudaStream_t>(stream));
    if (code != cudaSuccess) return code;
  }
  return cudaSuccess;
}

LRH_FOR_EACH_ADAFACTOR_TYPE(LRH_INSTANTIATE_ADAFACTOR)

}  // namespace lowrank_hpc::cuda
