// CUDA kernels of the coordinate-format family over the functors in lowrank_hpc/ops.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
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

// What an entry's dot product becomes: the product itself, or the solvers' loss term
// (vals[k] - <u, v>)^2, the residual in T and its square in double as on the CPU.
// 16-bit storage: the dot product summed in float (accumulate_t<T>), rounded once here.
template <class T>
struct EmitProduct {
  T* out;
  __device__ void operator()(int64_t k, accumulate_t<T> dot) const { out[k] = store_as<T>(dot); }
  __device__ void bad(int64_t k) const { out[k] = store_as<T>(0.0f); }
};
template <class T>
struct EmitSquaredResidual {
  const T* vals;
  double* out;
  __device__ void operator()(int64_t k, T dot) const {
    const double residual = static_cast<double>(vals[k] - dot);
    out[k] = residual * residual;
  }
  __device__ void bad(int64_t k) const { out[k] = 0.0; }
};

// A group of `lanes` threads computes one entry's dot product and reduces it by shuffles. W > 1:
// each lane reads chunks of W coordinates with one 16-byte load (ops::chunked_dot) and the
// group's W partial sums are shuffled together, then folded: a group of 8 lanes covers 128 bytes
// of a row per step. At r = 32 that is 4 entries a warp instead of one, with a quarter of the
// loads (one lane per coordinate, scalar loads: 0.06x cuSPARSE's SDDMM on an H200).
template <class T, class I, int W, class Emit>
__global__ void sampled_product_kernel(ops::SampledProduct<T, I> entry, const int64_t* offsets,
                                       int64_t batch, int64_t nnz, int lanes, Emit emit, int64_t* first_bad) {
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t k = thread / lanes;
  const int lane = static_cast<int>(thread % lanes);
  const bool active = k < nnz;
  const bool valid = active && entry.valid(k);
  accumulate_t<T> acc = 0;
  if constexpr (W == 1) {
    if (valid) acc = entry.partial(k, find_batch(offsets, batch, k), lane, lanes);
    for (int step = lanes / 2; step > 0; step /= 2) acc += __shfl_down_sync(0xffffffffu, acc, step, lanes);
  } else {
    T parts[W] = {};
    if (valid) entry.template partial_chunks<W>(k, find_batch(offsets, batch, k), lane, lanes, parts);
    for (int step = lanes / 2; step > 0; step /= 2)
      for (int j = 0; j < W; ++j) parts[j] = parts[j] + __shfl_down_sync(0xffffffffu, parts[j], step, lanes);
    acc = ops::fold_halving<W>(parts);
  }
  if (active && lane == 0) {
    if (valid) {
      emit(k, acc);
    } else {
      emit.bad(k);
      record_bad(first_bad, k);
    }
  }
}

// Coordinates per 16-byte load for T (float 4, double 2; 16-bit storage reads one at a time).
template <class T>
constexpr int kChunkWidth = std::is_same_v<T, float> ? 4 : std::is_same_v<T, double> ? 2 : 1;

// Launches the entry kernel: 16-byte chunks where the rank and the factors' alignment allow,
// the group's lanes then at most 8 (128 bytes of a row per step), else one coordinate a lane.
template <class T, class I, class Emit>
int launch_entries(const ops::SampledProduct<T, I>& entry, const int64_t* offsets, int64_t batch, int64_t nnz,
                   Emit emit, int64_t* first_bad, void* stream) {
  constexpr int W = kChunkWidth<T>;
  const auto aligned = [](const T* p) { return reinterpret_cast<uintptr_t>(p) % (W * sizeof(T)) == 0; };
  if (W > 1 && entry.r % W == 0 && aligned(entry.U) && aligned(entry.V)) {
    int lanes = 1;
    while (lanes < 8 && int64_t(lanes) * W < entry.r) lanes *= 2;
    sampled_product_kernel<T, I, W, Emit><<<grid_for(nnz * lanes), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        entry, offsets, batch, nnz, lanes, emit, first_bad);
  } else {
    const int lanes = lanes_for_rank(entry.r);
    sampled_product_kernel<T, I, 1, Emit><<<grid_for(nnz * lanes), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
        entry, offsets, batch, nnz, lanes, emit, first_bad);
  }
  return cudaGetLastError();
}

// Flattened CSR key of entry k, b * n_key + keys[k], counted for indptr; an out-of-range key is
// reported and given batch * n_key (it sorts last, and the caller raises before reading the order).
template <class I>
__global__ void csr_keys_kernel(const I* keys, const int64_t* offsets, int64_t batch, int64_t n_key, int64_t nnz,
                                int64_t* flat, int64_t* perm, unsigned long long* counts, int64_t* first_bad) {
  const int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (k >= nnz) return;
  perm[k] = k;
  if (!ops::index_in_range(keys[k], n_key)) {
    flat[k] = batch * n_key;
    record_bad(first_bad, k);
    return;
  }
  flat[k] = find_batch(offsets, batch, k) * n_key + static_cast<int64_t>(keys[k]);
  atomicAdd(counts + flat[k] + 1, 1ull);
}

// The other index and the values moved into CSR order.
template <class T, class I>
__global__ void gather_kernel(const int64_t* perm, const I* others, const T* vals, int64_t nnz, I* others_sorted,
                              T* vals_sorted) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= nnz) return;
  others_sorted[j] = others[perm[j]];
  if (vals) vals_sorted[j] = vals[perm[j]];
}

// One thread per (CSR row, coordinate): each output row sums its entries in CSR order, so the
// GPU product is deterministic (no atomics) and adds in the CPU's order.
template <class T, class I>
__global__ void csr_times_dense_kernel(ops::SparseTimesDense<T> product, const int64_t* indptr, const int64_t* perm,
                                       const I* others, const T* vals, int64_t n_rows, T* out,
                                       int64_t* first_bad) {
  const int64_t thread = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  const int64_t row = thread / product.r, c = thread % product.r;
  if (row >= n_rows) return;
  const int64_t b = row / product.n_key;
  accumulate_t<T> acc = 0;
  for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
    const int64_t source = perm ? perm[j] : j;
    if (!ops::index_in_range(others[j], product.n_other)) {
      if (c == 0) record_bad(first_bad, source);
      continue;
    }
    acc += product.term(vals[source], static_cast<int64_t>(others[j]), b, c);
  }
  out[row * product.r + c] = store_as<T>(acc);
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
  const ops::SampledProduct<T, I> entry{U, V, rows, cols, m, n, r};
  return launch_entries(entry, offsets, batch, nnz, EmitProduct<T>{out}, first_bad, stream);
}

template <class T, class I>
int sampled_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                              const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz,
                              double* out, int64_t* first_bad, void* stream) {
  if (nnz == 0) return cudaSuccess;
  const ops::SampledProduct<T, I> entry{U, V, rows, cols, m, n, r};
  return launch_entries(entry, offsets, batch, nnz, EmitSquaredResidual<T>{vals, out}, first_bad, stream);
}

// Counting keys with atomics, a scan for indptr and a stable radix sort of the flattened keys
// (CUB's DeviceRadixSort is stable), so each row keeps its entries in input order as on the CPU.
template <class T, class I>
int coo_to_csr(const I* keys, const I* others, const T* vals, const int64_t* offsets, int64_t batch, int64_t n_key,
               int64_t nnz, int64_t* indptr, int64_t* perm, I* others_sorted, T* vals_sorted, int64_t* status,
               void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t n_rows = batch * n_key;
  cudaError_t error = cudaMemsetAsync(indptr, 0, (n_rows + 1) * sizeof(int64_t), stream);
  // status[1] = 0: the permutation is always written here (no host read to skip it).
  if (error == cudaSuccess) error = cudaMemsetAsync(status + 1, 0, sizeof(int64_t), stream);
  if (error != cudaSuccess || nnz == 0) return error;
  int64_t *flat = nullptr, *flat_sorted = nullptr, *order = nullptr;
  void* temp = nullptr;
  size_t sort_bytes = 0, scan_bytes = 0;
  int end_bit = 1;
  while (end_bit < 63 && (int64_t(1) << end_bit) <= n_rows) ++end_bit;
  error = cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, flat, flat_sorted, order, perm, nnz, 0, end_bit,
                                          stream);
  if (error == cudaSuccess)
    error = cub::DeviceScan::InclusiveSum(nullptr, scan_bytes, indptr, indptr, n_rows + 1, stream);
  const size_t temp_bytes = sort_bytes > scan_bytes ? sort_bytes : scan_bytes;
  // No perm from the caller: the sort still needs one (a fourth slot of the scratch).
  const int64_t slots = perm ? 3 : 4;
  if (error == cudaSuccess)
    error = cudaMallocAsync(reinterpret_cast<void**>(&flat), slots * nnz * sizeof(int64_t), stream);
  if (error == cudaSuccess) error = cudaMallocAsync(&temp, temp_bytes, stream);
  if (error == cudaSuccess) {
    flat_sorted = flat + nnz;
    order = flat + 2 * nnz;
    if (!perm) perm = flat + 3 * nnz;
    csr_keys_kernel<I><<<grid_for(nnz), kBlock, 0, stream>>>(keys, offsets, batch, n_key, nnz, flat, order,
                                                             reinterpret_cast<unsigned long long*>(indptr), status);
    error = cudaGetLastError();
  }
  size_t bytes = sort_bytes;
  if (error == cudaSuccess)
    error = cub::DeviceRadixSort::SortPairs(temp, bytes, flat, flat_sorted, order, perm, nnz, 0, end_bit, stream);
  bytes = scan_bytes;
  if (error == cudaSuccess) error = cub::DeviceScan::InclusiveSum(temp, bytes, indptr, indptr, n_rows + 1, stream);
  if (error == cudaSuccess) {
    gather_kernel<T, I><<<grid_for(nnz), kBlock, 0, stream>>>(perm, others, vals, nnz, others_sorted, vals_sorted);
    error = cudaGetLastError();
  }
  if (temp) cudaFreeAsync(temp, stream);
  if (flat) cudaFreeAsync(flat, stream);
  return error;
}

template <class T, class I>
int csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals, const T* B,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out, int64_t* first_bad,
                    void* stream) {
  const int64_t n_rows = batch * n_key;
  if (n_rows == 0 || r == 0) return cudaSuccess;
  const ops::SparseTimesDense<T> product{B, n_key, n_other, r};
  csr_times_dense_kernel<T, I><<<grid_for(n_rows * r), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      product, indptr, perm, others, vals, n_rows, out, first_bad);
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
  template int sampled_squared_residuals<T, I>(const T*, const T*, const I*, const I*, const T*,           \
                                               const int64_t*, int64_t, int64_t, int64_t, int64_t, int64_t, \
                                               double*, int64_t*, void*);                                   \
  template int coo_to_csr<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, int64_t,     \
                                int64_t*, int64_t*, I*, T*, int64_t*, void*);                               \
  template int csr_times_dense<T, I>(const int64_t*, const int64_t*, const I*, const T*, const T*, int64_t,  \
                                     int64_t, int64_t, int64_t, T*, int64_t*, void*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
// 16-bit storage: the product kernels torch/JAX users call, not the solvers' residuals.
#define LRH_INSTANTIATE(T, I)                                                                      \
  template int sampled_product<T, I>(const T*, const T*, const I*, const I*, const int64_t*, int64_t, \
                                     int64_t, int64_t, int64_t, int64_t, T*, int64_t*, void*);       \
  template int coo_to_csr<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, int64_t,     \
                                int64_t*, int64_t*, I*, T*, int64_t*, void*);                               \
  template int csr_times_dense<T, I>(const int64_t*, const int64_t*, const I*, const T*, const T*, int64_t,  \
                                     int64_t, int64_t, int64_t, T*, int64_t*, void*);
LRH_FOR_HALF_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
template int count_nonfinite<float>(const float*, int64_t, int64_t*, void*);
template int count_nonfinite<double>(const double*, int64_t, int64_t*, void*);
template int count_nonfinite<float16>(const float16*, int64_t, int64_t*, void*);
template int count_nonfinite<bfloat16>(const bfloat16*, int64_t, int64_t*, void*);

}  // namespace lowrank_hpc::cuda
