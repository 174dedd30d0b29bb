// CUDA step of the kernelized product: f applied in place to a GEMM result (cuBLAS via CuPy),
// through the same per-entry function as the OpenMP driver.
#include <cuda_runtime.h>

#include "lowrank_hpc/ops/kernel_product.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::cuda {

namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxGrid = 4096;  // grid-stride loop: enough blocks to fill any current GPU

// f is a template parameter so the per-entry switch folds away at compile time.
template <ops::KernelFunction F, class T>
__global__ void apply_kernel_kernel(T* x, int64_t size, int64_t* nonfinite) {
  int64_t local = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < size; i += int64_t(gridDim.x) * blockDim.x) {
    x[i] = ops::apply_kernel(F, x[i]);
    local += ops::is_finite(x[i]) ? 0 : 1;  // exp overflow, or a GEMM that overflowed
  }
  if (local) atomicAdd(reinterpret_cast<unsigned long long*>(nonfinite), static_cast<unsigned long long>(local));
}

}  // namespace

template <class T>
int apply_kernel_function(T* x, int64_t size, int kernel, int64_t* nonfinite, void* stream) {
  if (size == 0) return cudaSuccess;
  const int64_t blocks = (size + kBlock - 1) / kBlock;
  const int64_t grid = blocks < kMaxGrid ? blocks : kMaxGrid;
  return ops::with_kernel(static_cast<ops::KernelFunction>(kernel), [&](auto F) {
    apply_kernel_kernel<decltype(F)::value, T><<<grid, kBlock, 0, static_cast<cudaStream_t>(stream)>>>(x, size, nonfinite);
    return static_cast<int>(cudaGetLastError());
  });
}

template int apply_kernel_function<float>(float*, int64_t, int, int64_t*, void*);
template int apply_kernel_function<double>(double*, int64_t, int, int64_t*, void*);

}  // namespace lowrank_hpc::cuda
