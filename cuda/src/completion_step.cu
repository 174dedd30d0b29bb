// The batched completion solver's fused iteration on the GPU: one thread per problem runs the
// same CompletionStep the CPU runs (lowrank_hpc/solvers/completion_step.hpp).
#include <cuda_runtime.h>

#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

template <class T, class I>
__global__ void completion_steps_kernel(solvers::CompletionStep<T, I> step, int64_t batch, const uint8_t* active,
                                        const T* U, const T* V, T* U1, T* V1, double* steps,
                                        const double* dampings, double* losses, double* changes,
                                        int64_t* halvings, uint8_t* stuck) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  solvers::step_problem(step, b, active, U, V, U1, V1, steps, dampings, losses, changes, halvings, stuck);
}

__global__ void relative_change_kernel(const double* left, const double* right, int64_t batch, int64_t k,
                                       double* out) {
  const int64_t b = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  out[b] = solvers::relative_change_from_grams(left + b * 3 * k * k, right + b * 4 * k * k, k);
}

}  // namespace

int relative_change_from_grams(const double* left, const double* right, int64_t batch, int64_t k, double* out,
                               void* stream) {
  if (batch == 0) return cudaSuccess;
  constexpr int kBlock = 128;
  const auto grid = static_cast<unsigned>((batch + kBlock - 1) / kBlock);
  relative_change_kernel<<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(left, right, batch, k, out);
  return cudaGetLastError();
}

template <class T, class I>
int completion_steps(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch,
                     int64_t m, int64_t n, int64_t k, int method, const uint8_t* active, const T* U, const T* V,
                     T* U1, T* V1, double* steps, const double* dampings, T* scratch, double* losses,
                     double* changes, int64_t* halvings, uint8_t* stuck, void* stream) {
  if (batch == 0) return cudaSuccess;
  const solvers::CompletionStep<T, I> step{rows, cols, vals, offsets, m, n, k,
                                           static_cast<solvers::StepMethod>(method), scratch};
  constexpr int kBlock = 128;
  const auto grid = static_cast<unsigned>((batch + kBlock - 1) / kBlock);
  completion_steps_kernel<T, I><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      step, batch, active, U, V, U1, V1, steps, dampings, losses, changes, halvings, stuck);
  return cudaGetLastError();
}

#define LRH_INSTANTIATE(T, I)                                                                                  \
  template int completion_steps<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                      int64_t, int, const uint8_t*, const T*, const T*, T*, T*, double*,       \
                                      const double*, T*, double*, double*, int64_t*, uint8_t*, void*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cuda
