// Stream-ordered copies and device selection for host code compiled without CUDA headers (the
// JAX FFI handlers, cpp/bindings/jax_ffi): plain pointers and ints, each returning a cudaError_t
// code (0 on success). `stream` is a cudaStream_t.
#pragma once
#include <cstddef>

namespace lowrank_hpc::cuda {

// Copies `bytes` between any two of host and device memory (cudaMemcpyDefault) on `stream`.
int copy_async(void* destination, const void* source, size_t bytes, void* stream);
// Zeroes `bytes` of device memory on `stream`.
int zero_async(void* data, size_t bytes, void* stream);
// Waits for the work queued on `stream`.
int synchronize(void* stream);
// Makes `device` the calling thread's current device; *previous receives the one it replaces.
int select_device(int device, int* previous);

}  // namespace lowrank_hpc::cuda
