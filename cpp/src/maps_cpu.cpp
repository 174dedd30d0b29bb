// The element-wise map and row/column reduction launchers of the CPU, instantiated for every
// map of lowrank_hpc/ops/maps.hpp.
#include <omp.h>

#include <type_traits>

#include "cpu_backend.hpp"
#include "map_reduce.hpp"
#include "lowrank_hpc/ops/maps.hpp"

namespace lowrank_hpc::cpu::launch {

namespace {

// Below this many entries, waking the thread team costs more than the work it would share.
constexpr int64_t kMinParallelEntries = int64_t(1) << 15;
// Chunks of 4096 keep each simd loop long while balancing the threads.
constexpr int64_t kChunk = 4096;

// Two loops over a chunk still in cache: g++ vectorizes each, not always the fused one.
template <class T, class F>
int64_t map_chunk(const T* x, T* out, int64_t size, const F& f) {
  LRH_SIMD
  for (int64_t i = 0; i < size; ++i) out[i] = f(x[i]);
  int64_t bad = 0;
  LRH_SIMD_SUM(bad)
  for (int64_t i = 0; i < size; ++i) bad += ops::is_finite(out[i]) ? 0 : 1;
  return bad;
}

// Into a 16-bit format: f over the chunk in float, then the rounding (store_as's bits; F16C for
// float16 where the build has it: g++ vectorizes neither to_float16's branches nor _Float16
// conversions), then the count.
template <class T, class F, class O>
int64_t map_chunk(const T* x, O* out, int64_t size, const F& f) {
  static_assert(std::is_same_v<T, float> && is_half_v<O>, "16-bit results of float maps");
  float y[kChunk];
  LRH_SIMD
  for (int64_t i = 0; i < size; ++i) y[i] = f(x[i]);
#if LRH_HOST_F16C
  if constexpr (std::is_same_v<O, float16>) {
    store_f16c(y, out, size);
  } else
#endif
  {
    LRH_SIMD
    for (int64_t i = 0; i < size; ++i) out[i] = store_as<O>(y[i]);
  }
  int64_t bad = 0;
  LRH_SIMD_SUM(bad)
  for (int64_t i = 0; i < size; ++i) bad += ops::is_finite(out[i]) ? 0 : 1;
  return bad;
}

}  // namespace

template <class T, class F, class O>
int map(const T* x, O* out, int64_t size, F f, int64_t* nonfinite, void*) {
  const int64_t chunks = (size + kChunk - 1) / kChunk;
  int64_t bad = 0;
#pragma omp parallel for schedule(static) reduction(+ : bad) if (size > kMinParallelEntries)
  for (int64_t c = 0; c < chunks; ++c)
    bad += map_chunk(x + c * kChunk, out + c * kChunk, std::min(kChunk, size - c * kChunk), f);
  *nonfinite += bad;
  return 0;
}

template <class T, class F>
int reduce_rows(const T* x, int64_t rows, int64_t cols, F f, T* out, void*) {
#pragma omp parallel for schedule(static) if (rows * cols > kMinParallelEntries)
  for (int64_t i = 0; i < rows; ++i) {
    double total = 0.0;
    const T* row = x + i * cols;
    LRH_SIMD_SUM(total)
    for (int64_t j = 0; j < cols; ++j) total += static_cast<double>(f(row[j]));
    out[i] = static_cast<T>(total);
  }
  return 0;
}

template <class T, class F>
int reduce_cols(const T* x, int64_t rows, int64_t cols, F f, T* out, void*) {
  // Column blocks per thread, rows streamed in order: each thread reads whole cache lines.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (rows * cols > kMinParallelEntries)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t begin = block * kBlock, width = std::min(kBlock, cols - begin);
    double totals[kBlock] = {};
    for (int64_t i = 0; i < rows; ++i) {
      const T* row = x + i * cols + begin;
      LRH_SIMD
      for (int64_t j = 0; j < width; ++j) totals[j] += static_cast<double>(f(row[j]));
    }
    for (int64_t j = 0; j < width; ++j) out[begin + j] = static_cast<T>(totals[j]);
  }
  return 0;
}

LRH_FOR_EACH_MAP(LRH_INSTANTIATE_MAP_LAUNCHERS)

}  // namespace lowrank_hpc::cpu::launch
