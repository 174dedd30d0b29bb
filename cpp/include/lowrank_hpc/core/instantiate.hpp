// The (float type, index type) pairs every coordinate kernel is compiled for, listed once:
// LRH_FOR_FLOAT_INDEX(M) expands M(T, I) for each pair (explicit instantiations on both backends).
#pragma once
#include <cstdint>

#define LRH_FOR_FLOAT_INDEX(M) M(float, int32_t) M(float, int64_t) M(double, int32_t) M(double, int64_t)
