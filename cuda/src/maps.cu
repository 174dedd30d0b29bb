// The element-wise map and row/column reduction launchers of the GPU, instantiated for every
// map of lowrank_hpc/ops/maps.hpp (the CPU's are in cpp/src/maps_cpu.cpp).
#include <cuda_runtime.h>

#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/maps.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 4096;  // grid-stride loops: enough blocks to fill any current GPU

int64_t grid_for(int64_t threads) {
  const int64_t blocks = (threads + kBlock - 1) / kBlock;
  return blocks < kMaxGrid ? blocks : kMaxGrid;
}

template <class T, class F, class O>
__global__ void map_kernel(const T* x, O* out, int64_t size, F f, int64_t* nonfinite) {
  int64_t local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    const O y = store_as<O>(f(x[i]));
    out[i] = y;
    local += ops::is_finite(y) ? 0 : 1;
  }
  if (local) atomicAdd(reinterpret_cast<unsigned long long*>(nonfinite), static_cast<unsigned long long>(local));
}

// One warp per row: lanes stride the row, then a shuffle reduction.
template <class T, class F>
__global__ void reduce_rows_kernel(const T* x, int64_t rows, int64_t cols, F f, T* out) {
  const int64_t row = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together: rows are warp-aligned
  double total = 0.0;
  for (int64_t j = lane; j < cols; j += 32) total += static_cast<double>(f(x[row * cols + j]));
  for (int step = 16; step > 0; step /= 2) total += __shfl_down_sync(0xffffffffu, total, step);
  if (lane == 0) out[row] = static_cast<T>(total);
}

// One thread per column, rows in order: neighbouring threads read neighbouring entries.
template <class T, class F>
__global__ void reduce_cols_kernel(const T* x, int64_t rows, int64_t cols, F f, T* out) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= cols) return;
  double total = 0.0;
  for (int64_t i = 0; i < rows; ++i) total += static_cast<double>(f(x[i * cols + col]));
  out[col] = static_cast<T>(total);
}

}  // namespace

template <class T, class F, class O>
int map(const T* x, O* out, int64_t size, F f, int64_t* nonfinite, void* stream) {
  if (size == 0) return cudaSuccess;
  map_kernel<T, F, O><<<grid_for(size), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(x, out, size, f, nonfinite);
  return cudaGetLastError();
}

template <class T, class F>
int reduce_rows(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t blocks = (rows * 32 + kBlock - 1) / kBlock;
  reduce_rows_kernel<T, F><<<blocks, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(x, rows, cols, f, out);
  return cudaGetLastError();
}

template <class T, class F>
int reduce_cols(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream) {
  if (cols == 0) return cudaSuccess;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
  reduce_cols_kernel<T, F><<<blocks, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(x, rows, cols, f, out);
  return cudaGetLastError();
}

LRH_FOR_EACH_MAP(LRH_INSTANTIATE_MAP_LAUNCHERS)

}  // namespace lowrank_hpc::cuda
