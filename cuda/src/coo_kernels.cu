// CUDA kernels of the coordinate-format family over the functors in lowrank_hpc/ops.
#include <cuda_runtime.h>

#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/core/batch.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"
#include "lowrank_hpc/ops/sparse_times_dense.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

constexpr int kBlock = 256;

// Threads per entry: enough lanes to cover the rank in one pass, at most a warp.
int lanes_for_rank(int64_t r) {
  int lanes = 1;
  while (lanes < 32 && lanes < r) lanes *= 2;
  return lanes;
}

int64_t grid_for(int64_t threads) { return (threads + kBlock - 1) / kBlock; }

__device__ void record_bad(int64_t* first_bad, int64_t k) {
  atomicMin(reinterpret_cast<unsigned long long*>(first_bad), static_cast<unsigned long long>(k));
}

// A group of `lanes` threads computes one entry's dot product and reduces it by shuffles.
template <class T, class I>
__global__ void sampled_product_kernel(ops::SampledProduct<T, I> entry, const int64_t* offsets,
                                       int64_t batch, int64_t nnz, int lanes, T* out, int64_t* first_bad) {
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t k = thread / lanes;
  const int lane = static_cast<int>(thread % lanes);
  const bool active = k < nnz;
  const bool valid = active && entry.valid(k);
  T acc = T(0);
  if (valid) acc = entry.partial(k, find_batch(offsets, batch, k), lane, lanes);
  for (int step = lanes / 2; step > 0; step /= 2) acc += __shfl_down_sync(0xffffffffu, acc, step, lanes);
  if (active && lane == 0) {
    out[k] = acc;
    if (!valid) record_bad(first_bad, k);
  }
}

// One thread per (entry, coordinate); atomics merge entries that share an output row.
template <class T, class I>
__global__ void coo_times_dense_kernel(ops::SparseTimesDense<T> product, const I* keys, const I* others,
                                       const T* vals, const int64_t* offsets, int64_t batch, int64_t nnz,
                                       T* out, int64_t* first_bad) {
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t k = thread / product.r, c = thread % product.r;
  if (k >= nnz) return;
  if (!ops::index_in_range(keys[k], product.n_key) || !ops::index_in_range(others[k], product.n_other)) {
    if (c == 0) record_bad(first_bad, k);
    return;
  }
  const int64_t b = find_batch(offsets, batch, k);
  const int64_t row = b * product.n_key + static_cast<int64_t>(keys[k]);
  atomicAdd(out + row * product.r + c, product.term(vals[k], static_cast<int64_t>(others[k]), b, c));
}

template <class T>
__global__ void count_nonfinite_kernel(const T* x, int64_t size, int64_t* count) {
  int64_t local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x)
    local += ops::is_finite(x[i]) ? 0 : 1;
  if (local) atomicAdd(reinterpret_cast<unsigned long long*>(count), static_cast<unsigned long long>(local));
}

}  // namespace

template <class T, class I>
int sampled_product(const T* U, const T* V, const I* rows, const I* cols, const int64_t* offsets,
                    int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out,
                    int64_t* first_bad, void* stream) {
  if (nnz == 0) return cudaSuccess;
  const int lanes = lanes_for_rank(r);
  const ops::SampledProduct<T, I> entry{U, V, rows, cols, m, n, r};
  sampled_product_kernel<T, I><<<grid_for(nnz * lanes), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      entry, offsets, batch, nnz, lanes, out, first_bad);
  return cudaGetLastError();
}

template <class T, class I>
int coo_times_dense(const I* keys, const I* others, const T* vals, const T* B, const int64_t* offsets,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, int64_t nnz, T* out,
                    int64_t* first_bad, void* stream) {
  if (nnz == 0 || r == 0) return cudaSuccess;
  const ops::SparseTimesDense<T> product{B, n_key, n_other, r};
  coo_times_dense_kernel<T, I><<<grid_for(nnz * r), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      product, keys, others, vals, offsets, batch, nnz, out, first_bad);
  return cudaGetLastError();
}

template <class T>
int count_nonfinite(const T* x, int64_t size, int64_t* count, void* stream) {
  if (size == 0) return cudaSuccess;
  const int64_t grid = grid_for(size) < 4096 ? grid_for(size) : 4096;
  count_nonfinite_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(x, size, count);
  return cudaGetLastError();
}

int device_count() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  return status == cudaSuccess ? count : -static_cast<int>(status);
}

const char* error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

#define LRH_INSTANTIATE(T, I)                                                                      \
  template int sampled_product<T, I>(const T*, const T*, const I*, const I*, const int64_t*, int64_t, \
                                     int64_t, int64_t, int64_t, int64_t, T*, int64_t*, void*);       \
  template int coo_times_dense<T, I>(const I*, const I*, const T*, const T*, const int64_t*, int64_t, \
                                     int64_t, int64_t, int64_t, int64_t, T*, int64_t*, void*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
template int count_nonfinite<float>(const float*, int64_t, int64_t*, void*);
template int count_nonfinite<double>(const double*, int64_t, int64_t*, void*);

}  // namespace lowrank_hpc::cuda
