// Device queries for lowrank_hpc._backend's check of the compiled architectures; no kernels.
#include <cstring>

#include <cuda_runtime.h>

#include "lowrank_hpc_cuda/device_info.hpp"

namespace lowrank_hpc::cuda {

int current_device(int* device) { return cudaGetDevice(device); }

int device_compute_capability(int device, int* major, int* minor) {
  cudaError_t status = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device);
  if (status == cudaSuccess) status = cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, device);
  return status;
}

int device_name(int device, char* name, int size) {
  if (size <= 0) return cudaErrorInvalidValue;
  cudaDeviceProp props;
  const cudaError_t status = cudaGetDeviceProperties(&props, device);
  if (status != cudaSuccess) return status;
  std::strncpy(name, props.name, static_cast<size_t>(size) - 1);
  name[size - 1] = '\0';
  return cudaSuccess;
}

}  // namespace lowrank_hpc::cuda
