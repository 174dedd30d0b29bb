// The fused elastic-binary half-step on the GPU: one thread per factor row runs the functor the
// CPU runs (lowrank_hpc/ops/elastic_binary.hpp), each deriving its problem's step from the k x k
// Gram matrix (k^2 cached reads, no extra launch or host sync). out^T out, when asked for, is one
// block per entry of each problem's Gram: a fixed-order sum, the same on every run.
#include <cuda_runtime.h>

#include "lowrank_hpc/ops/elastic_binary.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

template <class T>
__global__ void elastic_binary_half_step_kernel(ops::ElasticBinaryHalfStep<T> step, const T* U, const T* U_prev,
                                                const T* gram, const T* cross, int64_t batch, int64_t n, int64_t k,
                                                const uint8_t* active, T* out) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r >= batch * n) return;
  const int64_t b = r / n;
  const double size = ops::palm_step_size(gram + b * k * k, k, step.inertia);
  step(b, r % n, U, U_prev, gram, cross, active, n, k, size, out);
}

// gram_out[b, a, c] = sum over rows i of out[b, i, a] out[b, i, c], in double: one block per
// (b, a, c), threads striding over the rows, then a tree in shared memory.
template <class T>
__global__ void factor_gram_kernel(const T* out, int64_t n, int64_t k, T* gram_out) {
  constexpr int kThreads = 256;
  __shared__ double sums[kThreads];
  const int64_t entry = blockIdx.x, pairs = k * k;
  const int64_t b = entry / pairs, a = (entry % pairs) / k, c = entry % k;
  const T* x = out + b * n * k;
  double total = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads)
    total += static_cast<double>(x[i * k + a]) * static_cast<double>(x[i * k + c]);
  sums[threadIdx.x] = total;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) gram_out[entry] = static_cast<T>(sums[0]);
}

}  // namespace

template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, T* gram_out, void* stream) {
  if (batch * k == 0) return cudaSuccess;
  if (n == 0) {
    if (gram_out != nullptr)
      return cudaMemsetAsync(gram_out, 0, batch * k * k * sizeof(T), static_cast<cudaStream_t>(stream));
    return cudaSuccess;
  }
  constexpr int kBlock = 128;
  const auto grid = static_cast<unsigned>((batch * n + kBlock - 1) / kBlock);
  const ops::ElasticBinaryHalfStep<T> step{kappa, lambda, inertia, nonnegative};
  elastic_binary_half_step_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      step, U, U_prev, gram, cross, batch, n, k, active, out);
  if (gram_out != nullptr)
    factor_gram_kernel<T><<<static_cast<unsigned>(batch * k * k), 256, 0, static_cast<cudaStream_t>(stream)>>>(
        out, n, k, gram_out);
  return cudaGetLastError();
}

template int elastic_binary_half_step<float>(const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, double, double, double, bool, const uint8_t*, float*,
                                             float*, void*);
template int elastic_binary_half_step<double>(const double*, const double*, const double*, const double*, int64_t,
                                              int64_t, int64_t, double, double, double, bool, const uint8_t*,
                                              double*, double*, void*);

}  // namespace lowrank_hpc::cuda
