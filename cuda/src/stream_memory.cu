// Stream-ordered device memory behind plain signatures (lowrank_hpc_cuda/stream_memory.hpp); no kernels.
#include <cuda_runtime.h>

#include "lowrank_hpc_cuda/stream_memory.hpp"

namespace lowrank_hpc::cuda {

namespace {
cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }
}  // namespace

int allocate_async(void** data, size_t bytes, void* stream) {
  return cudaMallocAsync(data, bytes > 0 ? bytes : 1, as_stream(stream));
}

int free_async(void* data, void* stream) { return data ? cudaFreeAsync(data, as_stream(stream)) : cudaSuccess; }

int copy_async(void* destination, const void* source, size_t bytes, void* stream) {
  return cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, as_stream(stream));
}

int zero_async(void* data, size_t bytes, void* stream) { return cudaMemsetAsync(data, 0, bytes, as_stream(stream)); }

int synchronize(void* stream) { return cudaStreamSynchronize(as_stream(stream)); }

}  // namespace lowrank_hpc::cuda
