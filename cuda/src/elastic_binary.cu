// The fused elastic-binary half-step on the GPU: one thread per factor row runs the functor the
// CPU runs (lowrank_hpc/ops/elastic_binary.hpp), each deriving its problem's step from the k x k
// Gram matrix (k^2 cached reads, no extra launch or host sync).
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

}  // namespace

template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, void* stream) {
  if (batch * n == 0) return cudaSuccess;
  constexpr int kBlock = 128;
  const auto grid = static_cast<unsigned>((batch * n + kBlock - 1) / kBlock);
  const ops::ElasticBinaryHalfStep<T> step{kappa, lambda, inertia, nonnegative};
  elastic_binary_half_step_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      step, U, U_prev, gram, cross, batch, n, k, active, out);
  return cudaGetLastError();
}

template int elastic_binary_half_step<float>(const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, double, double, double, bool, const uint8_t*, float*,
                                             void*);
template int elastic_binary_half_step<double>(const double*, const double*, const double*, const double*, int64_t,
                                              int64_t, int64_t, double, double, double, bool, const uint8_t*,
                                              double*, void*);

}  // namespace lowrank_hpc::cuda
