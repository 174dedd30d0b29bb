// The HALS sweep on the GPU: one thread per row of W runs the functor the CPU runs
// (lowrank_hpc/ops/hals.hpp), reading the k x k Gram matrix through the cache.
#include <cuda_runtime.h>

#include "lowrank_hpc/ops/hals.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

template <class T>
__global__ void hals_sweep_kernel(ops::HalsSweep<T> step, T* W, const T* gram, const T* cross, const int64_t* order,
                                  int64_t n, int64_t k, int sweeps, double inner_tol,
                                  double* violations) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  violations[i] =
      static_cast<double>(step.row(W + i * k, cross + i * k, gram, order, k, sweeps, static_cast<T>(inner_tol)));
}

}  // namespace

template <class T>
int hals_sweep(T* W, const T* gram, const T* cross, const int64_t* order, int64_t n, int64_t k, double l1,
               double l2, int sweeps, double inner_tol, double* violations, void* stream) {
  if (n == 0) return cudaSuccess;
  constexpr int kBlock = 128;
  const auto grid = static_cast<unsigned>((n + kBlock - 1) / kBlock);
  const ops::HalsSweep<T> step{static_cast<T>(l1), static_cast<T>(l2)};
  hals_sweep_kernel<T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(step, W, gram, cross, order, n, k,
                                                                               sweeps, inner_tol, violations);
  return cudaGetLastError();
}

template int hals_sweep<float>(float*, const float*, const float*, const int64_t*, int64_t, int64_t, double, double,
                               int, double, double*, void*);
template int hals_sweep<double>(double*, const double*, const double*, const int64_t*, int64_t, int64_t, double,
                                double, int, double, double*, void*);

}  // namespace lowrank_hpc::cuda
