// Stream-ordered device memory for host code compiled without CUDA headers (the JAX FFI
// handlers, cpp/bindings/jax_ffi): plain pointers and ints, each returning a cudaError_t code
// (0 on success). `stream` is a cudaStream_t.
#pragma once
#include <cstddef>

namespace lowrank_hpc::cuda {

// *data = `bytes` of device memory, usable by work queued on `stream` (cudaMallocAsync).
int allocate_async(void** data, size_t bytes, void* stream);
// Frees memory of allocate_async once the work queued on `stream` so far is done.
int free_async(void* data, void* stream);
// Copies `bytes` between any two of host and device memory (cudaMemcpyDefault) on `stream`.
int copy_async(void* destination, const void* source, size_t bytes, void* stream);
// Zeroes `bytes` of device memory on `stream`.
int zero_async(void* data, size_t bytes, void* stream);
// Waits for the work queued on `stream`.
int synchronize(void* stream);

}  // namespace lowrank_hpc::cuda
