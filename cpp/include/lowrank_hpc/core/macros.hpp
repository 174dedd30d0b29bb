// One macro marks math that compiles for both the host (g++, OpenMP) and the device (nvcc).
#pragma once

#if defined(__CUDACC__)
#define LRH_HD __host__ __device__ __forceinline__
#define LRH_DEVICE_COMPILE 1
#else
#define LRH_HD inline
#define LRH_DEVICE_COMPILE 0
#endif

// True only in the device pass of nvcc: selects intrinsics that the host cannot call.
#if defined(__CUDA_ARCH__)
#define LRH_ON_DEVICE 1
#else
#define LRH_ON_DEVICE 0
#endif
