// Host-callable device queries for the import-time check that this build has a kernel image the
// device can run (lowrank_hpc._backend). Plain ints only: the bindings need no CUDA headers.
// Each returns a cudaError_t code (0 on success).
#pragma once

namespace lowrank_hpc::cuda {

// The calling thread's current device.
int current_device(int* device);
// The device's compute capability, e.g. 8 and 6 for an A10 / RTX 30.
int device_compute_capability(int device, int* major, int* minor);
// The device's name (e.g. "NVIDIA A100-SXM4-80GB"), NUL-terminated, truncated to size - 1 chars.
int device_name(int device, char* name, int size);

}  // namespace lowrank_hpc::cuda
