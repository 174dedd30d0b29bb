// The CPU's element-wise map and row/column reduction launchers (the CUDA ones are in
// cuda/include/lowrank_hpc_cuda/map_reduce.cuh, with the same signatures): OpenMP loops over a
// per-entry functor of lowrank_hpc/ops/maps.hpp. Instantiated for every map in maps_cpu.cpp.
#pragma once
#include <algorithm>
#include <cstdint>

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/simd.hpp"
#include "lowrank_hpc/ops/finite.hpp"

namespace lowrank_hpc::cpu::launch {

// out[i] = f(x[i]) (out may be x), stored as O (T, or a 16-bit format for float T: rounded
// once, core/half.hpp's store_as); *nonfinite += the number of NaN/inf results as stored (a
// finite f(x) beyond the 16-bit format's range counts).
template <class T, class F, class O = T>
int map(const T* x, O* out, int64_t size, F f, int64_t* nonfinite, void* stream);
// out[i] = sum_j f(x[i, j]) for x (rows, cols), summed in double.
template <class T, class F>
int reduce_rows(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream);
// out[j] = sum_i f(x[i, j]) for x (rows, cols), summed in double.
template <class T, class F>
int reduce_cols(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream);

}  // namespace lowrank_hpc::cpu::launch
