// Stream-ordered copies and device selection behind plain signatures
// (lowrank_hpc_cuda/stream_memory.hpp); no kernels.
#include <cuda_runtime.h>

#include "lowrank_hpc_cuda/stream_memory.hpp"

namespace lowrank_hpc::cuda {

namespace {
cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }
}  // namespace

int copy_async(void* destination, const void* source, size_t bytes, void* stream) {
  return cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, as_stream(stream));
}

int zero_async(void* data, size_t bytes, void* stream) { return cudaMemsetAsync(data, 0, bytes, as_stream(stream)); }

int synchronize(void* stream) { return cudaStreamSynchronize(as_stream(stream)); }

int select_device(int device, int* previous) {
  cudaError_t status = cudaGetDevice(previous);
  if (status == cudaSuccess && *previous != device) status = cudaSetDevice(device);
  return status;
}

}  // namespace lowrank_hpc::cuda
