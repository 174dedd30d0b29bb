// ALS half-step on the GPU: one thread block per key row over the shared normal equations.
#include <cuda_runtime.h>

#include "lowrank_hpc/core/constants.hpp"
#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

// The default dynamic shared memory a block may take without opting in.

// The block's threads fill the Gram's lower triangle and the right-hand side in shared memory
// (one entry per thread, each summing the row's observations in CSR order); then one thread
// factorises and solves. Simple first: r is small, and rows run in parallel across blocks.
template <class T, class I>
__global__ void als_update_rows_kernel(ops::NormalEquations<T, I> equations, const uint8_t* active, int cg_steps,
                                       T* out, unsigned long long* singular, double* residuals) {
  extern __shared__ unsigned char shared[];
  T* G = reinterpret_cast<T*>(shared);
  const int64_t r = equations.r;
  T* g = G + r * r;
  const int64_t row = blockIdx.x;
  if (active && !active[row / equations.n_key]) return;  // uniform over the block
  if (cg_steps > 0) {  // conjugate gradients from out's row, by one thread (simple first)
    if (threadIdx.x == 0 && equations.cg_solve(row, row / equations.n_key, cg_steps, G, out + row * r))
      atomicAdd(singular, 1ull);
    if (threadIdx.x == 0 && residuals)
      residuals[row] = equations.squared_residuals(row, row / equations.n_key, out + row * r, true);
    return;
  }
  for (int64_t t = threadIdx.x; t < r * r + r; t += blockDim.x) {
    if (t >= r * r) {
      g[t - r * r] = equations.rhs_entry(row, t - r * r);
    } else if (t % r <= t / r) {
      G[t] = equations.gram_entry(row, t / r, t % r);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0 && ops::solve_row(G, g, r, equations.count(row), equations.empty_row_singular(), out + row * r))
    atomicAdd(singular, 1ull);
  if (threadIdx.x == 0 && residuals)
    residuals[row] = equations.squared_residuals(row, row / equations.n_key, out + row * r, true);
}

}  // namespace

template <class T, class I>
int als_update_rows(const int64_t* indptr, const I* others, const T* vals, const T* F,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg, bool count_scaling,
                    const T* weights, const T* shared, const uint8_t* active, int cg_steps, T* out,
                    int64_t* singular, double* residuals, void* stream) {
  const int64_t n_rows = batch * n_key;
  if (n_rows == 0) return cudaSuccess;
  const int64_t shared_bytes = (cg_steps > 0 ? 3 * r : r * r + r) * static_cast<int64_t>(sizeof(T));
  if (r < 1 || shared_bytes > kAlsSharedBytes || n_rows > 0x7fffffff) return cudaErrorInvalidConfiguration;
  // One warp covers the r^2 + r entries of small ranks; larger ranks use up to 256 threads.
  const int64_t work = r * r + r;
  const int threads = cg_steps > 0 ? 32 : work >= 256 ? 256 : static_cast<int>((work + 31) / 32 * 32);
  const ops::NormalEquations<T, I> equations{indptr, others, vals, F, n_key, n_other, r, reg, count_scaling,
                                             weights, shared};
  als_update_rows_kernel<T, I><<<static_cast<unsigned>(n_rows), threads, static_cast<size_t>(shared_bytes),
                                 static_cast<cudaStream_t>(stream)>>>(
      equations, active, cg_steps, out, reinterpret_cast<unsigned long long*>(singular), residuals);
  return cudaGetLastError();
}

#define LRH_INSTANTIATE(T, I)                                                                              \
  template int als_update_rows<T, I>(const int64_t*, const I*, const T*, const T*, int64_t, int64_t,    \
                                     int64_t, int64_t, T, bool, const T*, const T*, const uint8_t*, int, T*, \
                                     int64_t*, double*, void*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cuda
