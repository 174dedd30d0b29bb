// The (float type, index type) pairs every coordinate kernel is compiled for, listed once:
// LRH_FOR_FLOAT_INDEX(M) expands M(T, I) for each pair (explicit instantiations on both backends).
#pragma once
#include <cstdint>

#define LRH_FOR_FLOAT_INDEX(M) M(float, int32_t) M(float, int64_t) M(double, int32_t) M(double, int64_t)

// The 16-bit storage formats (core/half.hpp) with each index type: only the kernels torch/JAX
// users call in low precision (sampled product, CSR order and product, the NaN/inf count).
#define LRH_FOR_HALF_INDEX(M)                                                              \
  M(::lowrank_hpc::float16, int32_t) M(::lowrank_hpc::float16, int64_t)                    \
  M(::lowrank_hpc::bfloat16, int32_t) M(::lowrank_hpc::bfloat16, int64_t)
