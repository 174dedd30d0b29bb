// Host loops ask OpenMP to vectorize; the device pass has no OpenMP and needs none, nor do host
// files built without it (the CUDA module's bindings, which include the shared headers).
#pragma once
#include "lowrank_hpc/core/macros.hpp"

#define LRH_PRAGMA(x) _Pragma(#x)
#if LRH_DEVICE_COMPILE || !defined(_OPENMP)
#define LRH_SIMD
#define LRH_SIMD_SUM(var)
#define LRH_SIMD_MAX(var)
#else
#define LRH_SIMD LRH_PRAGMA(omp simd)
#define LRH_SIMD_SUM(var) LRH_PRAGMA(omp simd reduction(+ : var))
#define LRH_SIMD_MAX(var) LRH_PRAGMA(omp simd reduction(max : var))
#endif
