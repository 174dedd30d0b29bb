// CUDA kernels of the Gaussian sensing family over the functor in lowrank_hpc/ops/gaussian_sensing.hpp.
#include <cuda_runtime.h>

#include "lowrank_hpc/ops/gaussian_sensing.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int kBatchTile = 4;          // batch items sharing one draw of each entry, in registers
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y

int64_t blocks_for(int64_t threads) { return (threads + kBlock - 1) / kBlock; }

unsigned int batch_tiles(int64_t batch) {
  const int64_t tiles = (batch + kBatchTile - 1) / kBatchTile;
  return static_cast<unsigned int>(tiles < kMaxGridY ? tiles : kMaxGridY);
}

template <class T>
__global__ void gaussian_fill_kernel(ops::GaussianEnsemble ensemble, int64_t count, T* out) {
  const int64_t size = ensemble.size(), total = count * size;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total; k += int64_t(gridDim.x) * blockDim.x)
    out[k] = static_cast<T>(ensemble.entry(k / size, k % size));
}

// Block per (measurement, batch tile): threads stride over entries, then a fixed-order tree
// reduction in shared memory, so the result is deterministic.
template <class T>
__global__ void gaussian_forward_kernel(ops::GaussianEnsemble ensemble, int64_t m, const T* X, int64_t batch,
                                        T* out) {
  __shared__ double partial[kBatchTile][kBlock];
  const int64_t i = blockIdx.x, size = ensemble.size();
  for (int64_t b0 = int64_t(blockIdx.y) * kBatchTile; b0 < batch; b0 += int64_t(gridDim.y) * kBatchTile) {
    double acc[kBatchTile] = {};
    for (int64_t e = threadIdx.x; e < size; e += blockDim.x) {
      const double a = ensemble.draw(i, e);
      for (int t = 0; t < kBatchTile; ++t)
        if (b0 + t < batch) acc[t] += a * ensemble.forward_operand(X + (b0 + t) * size, e);
    }
    for (int t = 0; t < kBatchTile; ++t) partial[t][threadIdx.x] = acc[t];
    __syncthreads();
    for (int step = kBlock / 2; step > 0; step /= 2) {
      if (threadIdx.x < step)
        for (int t = 0; t < kBatchTile; ++t) partial[t][threadIdx.x] += partial[t][threadIdx.x + step];
      __syncthreads();
    }
    if (threadIdx.x < kBatchTile && b0 + threadIdx.x < batch)
      out[(b0 + threadIdx.x) * m + i] = static_cast<T>(partial[threadIdx.x][0]);
    __syncthreads();  // partial is reused by the next batch tile
  }
}

// Thread per (entry, batch tile): a sequential sum over measurements, no atomics.
template <class T>
__global__ void gaussian_adjoint_kernel(ops::GaussianEnsemble ensemble, int64_t m, const T* y, int64_t batch,
                                        T* out) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, size = ensemble.size();
  if (e >= size) return;
  for (int64_t b0 = int64_t(blockIdx.y) * kBatchTile; b0 < batch; b0 += int64_t(gridDim.y) * kBatchTile) {
    double acc[kBatchTile] = {};
    for (int64_t i = 0; i < m; ++i) {
      const double a = ensemble.entry(i, e);
      for (int t = 0; t < kBatchTile; ++t)
        if (b0 + t < batch) acc[t] += a * static_cast<double>(y[(b0 + t) * m + i]);
    }
    for (int t = 0; t < kBatchTile; ++t)
      if (b0 + t < batch) out[(b0 + t) * size + e] = static_cast<T>(acc[t]);
  }
}

}  // namespace

template <class T>
int gaussian_fill(const ops::GaussianEnsemble& ensemble, int64_t count, T* out, void* stream) {
  const int64_t total = count * ensemble.size();
  if (total == 0) return cudaSuccess;
  const int64_t grid = blocks_for(total) < 65536 ? blocks_for(total) : 65536;
  gaussian_fill_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(ensemble, count, out);
  return cudaGetLastError();
}

template <class T>
int gaussian_forward(const ops::GaussianEnsemble& ensemble, int64_t m, const T* X, int64_t batch, T* out,
                     void* stream) {
  if (m == 0 || batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(m), batch_tiles(batch));
  gaussian_forward_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(ensemble, m, X, batch, out);
  return cudaGetLastError();
}

template <class T>
int gaussian_adjoint(const ops::GaussianEnsemble& ensemble, int64_t m, const T* y, int64_t batch, T* out,
                     void* stream) {
  if (batch == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(blocks_for(ensemble.size())), batch_tiles(batch));
  gaussian_adjoint_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(ensemble, m, y, batch, out);
  return cudaGetLastError();
}

#define LRH_INSTANTIATE(T)                                                                                   \
  template int gaussian_fill<T>(const ops::GaussianEnsemble&, int64_t, T*, void*);                           \
  template int gaussian_forward<T>(const ops::GaussianEnsemble&, int64_t, const T*, int64_t, T*, void*);     \
  template int gaussian_adjoint<T>(const ops::GaussianEnsemble&, int64_t, const T*, int64_t, T*, void*);
LRH_INSTANTIATE(float)
LRH_INSTANTIATE(double)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cuda
