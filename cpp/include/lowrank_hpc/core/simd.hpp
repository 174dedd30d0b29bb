// Host loops ask OpenMP to vectorize; the device pass has no OpenMP and needs none.
#pragma once
#include "lowrank_hpc/core/macros.hpp"

#define LRH_PRAGMA(x) _Pragma(#x)
#if LRH_DEVICE_COMPILE
#define LRH_SIMD
#define LRH_SIMD_SUM(var)
#else
#define LRH_SIMD LRH_PRAGMA(omp simd)
#define LRH_SIMD_SUM(var) LRH_PRAGMA(omp simd reduction(+ : var))
#endif
