// One macro marks math that compiles for both the host (g++, OpenMP) and the device (nvcc).
#pragma once

#if defined(__CUDACC__)
#define LRH_HD __host__ __device__ __forceinline__
#define LRH_DEVICE_COMPILE 1
#else
// Forced, as __forceinline__ is on the device: the kernels' loops inline their functors.
#define LRH_HD inline __attribute__((always_inline))
#define LRH_DEVICE_COMPILE 0
#endif

// True only in the device pass of nvcc: selects intrinsics that the host cannot call.
#if defined(__CUDA_ARCH__)
#define LRH_ON_DEVICE 1
#else
#define LRH_ON_DEVICE 0
#endif

#include <cstdint>

namespace lowrank_hpc {

// Rank known at compile time (R > 0) unrolls the short loops of small ranks; R = 0 reads r.
template <int R>
LRH_HD int64_t static_or(int64_t r) { return R > 0 ? R : r; }

}  // namespace lowrank_hpc
