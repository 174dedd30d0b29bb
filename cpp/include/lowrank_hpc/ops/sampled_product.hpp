// SDDMM: vals[k] = <U[b, rows[k]], V[b, cols[k]]> for the problem b that owns entry k.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/core/rounding.hpp"
#include "lowrank_hpc/core/simd.hpp"

#if !defined(__CUDACC__)
#include "lowrank_hpc/core/lanes.hpp"
#endif

namespace lowrank_hpc::ops {

#if !defined(__CUDACC__)
// Host: the dot of a compiled power-of-two rank on GCC vectors, by the same halving tree as
// strided_dot's array form (g++ kept that array in memory and looped over the fold: at r = 16
// every step stored a vector and reloaded half of it). Bit-equal to it.
// Lanes [0, N/2) plus lanes [N/2, N), as a vector of N/2 (shuffles, not a trip through memory).
template <class A, int Bytes, size_t... Lane>
inline __attribute__((always_inline)) typename lanes::Vector<A, Bytes / 2>::type add_halves(
    typename lanes::Vector<A, Bytes>::type x, std::index_sequence<Lane...>) {
  constexpr int kHalf = static_cast<int>(sizeof...(Lane));
  return __builtin_shufflevector(x, x, Lane...) + __builtin_shufflevector(x, x, (Lane + kHalf)...);
}

template <class A, int Bytes>
inline __attribute__((always_inline)) A fold_lanes(typename lanes::Vector<A, Bytes>::type x) {
  if constexpr (Bytes == 2 * static_cast<int>(sizeof(A))) {
    return x[0] + x[1];
  } else {
    return fold_lanes<A, Bytes / 2>(
        add_halves<A, Bytes>(x, std::make_index_sequence<Bytes / 2 / sizeof(A)>{}));
  }
}

// Whether host_dot<A, R> serves rank R: a power of two of 16 bytes or more, in at most four
// native vectors.
template <class A, int R>
inline constexpr bool kHostDot = R > 1 && (R & (R - 1)) == 0 && R * sizeof(A) >= 16 &&
                                 R * sizeof(A) <= 4 * lanes::kNativeBytes;

template <class A, int R>
inline __attribute__((always_inline)) A host_dot(const A* a, const A* b) {
  constexpr int kBytes = R * static_cast<int>(sizeof(A));
  constexpr int kVector = kBytes < lanes::kNativeBytes ? kBytes : lanes::kNativeBytes;
  constexpr int kCount = kBytes / kVector, kPer = kVector / static_cast<int>(sizeof(A));
  typedef typename lanes::Vector<A, kVector>::type V;
  V p[kCount];
  for (int j = 0; j < kCount; ++j) {
    V x, y;
    __builtin_memcpy(&x, a + j * kPer, kVector);
    __builtin_memcpy(&y, b + j * kPer, kVector);
    p[j] = x * y;
  }
  for (int live = kCount; live > 1; live /= 2)
    for (int j = 0; j < live / 2; ++j) p[j] += p[j + live / 2];
  return fold_lanes<A, kVector>(p[0]);
}

// Host: strided_dot's run-time-rank order on native vectors (its array form's 32 or 16 lanes as
// 128 / kNativeBytes vectors), bit-equal to it. With one 64-byte accumulator the dot was a chain
// of dependent adds and its lanes were then summed one by one: the CG row solves spent most of
// their time there. Every loop over p is unrolled: with one left rolled, g++ kept p in memory,
// zeroed by a rep stos each call (ALS's CG at r = 24 took 3.2x the compiled r = 32's time, now
// 1.7x; the SDDMM at r = 40 took twice today's; the same numbers: BENCHMARKS.md session 34).
template <class A>
inline __attribute__((always_inline)) A host_runtime_dot(const A* a, const A* b, int64_t r) {
  constexpr int kVector = lanes::kNativeBytes, kCount = 128 / kVector, kPer = kVector / static_cast<int>(sizeof(A));
  constexpr int64_t kChunk = 128 / sizeof(A);
  typedef typename lanes::Vector<A, kVector>::type V;
  V p[kCount];
#pragma GCC unroll 8
  for (int j = 0; j < kCount; ++j) p[j] = V{};
  int64_t c = 0;
  for (; c + kChunk <= r; c += kChunk)
#pragma GCC unroll 8
    for (int j = 0; j < kCount; ++j) {
      V x, y;
      __builtin_memcpy(&x, a + c + j * kPer, kVector);
      __builtin_memcpy(&y, b + c + j * kPer, kVector);
      p[j] += x * y;
    }
  if (c + kChunk / 2 <= r) {
#pragma GCC unroll 8
    for (int j = 0; j < kCount / 2; ++j) {
      V x, y;
      __builtin_memcpy(&x, a + c + j * kPer, kVector);
      __builtin_memcpy(&y, b + c + j * kPer, kVector);
      p[j] += x * y;
    }
    c += kChunk / 2;
  }
  if (c < r) {  // the rest, zero-padded to 64 bytes, into the lower half
#pragma GCC unroll 8
    for (int j = 0; j < kCount / 2; ++j) {
      const int64_t left = r - c - j * kPer;
      const int count = static_cast<int>(left < kPer ? left : kPer);
      p[j] += left <= 0 ? V{}  // +0, as the array form adds to every lane (no pointer past the row)
                        : lanes::load_first<V>(a + c + j * kPer, count) * lanes::load_first<V>(b + c + j * kPer, count);
    }
  }
#pragma GCC unroll 8
  for (int live = kCount; live > 1; live /= 2)
#pragma GCC unroll 8
    for (int j = 0; j < live / 2; ++j) p[j] += p[j + live / 2];
  return fold_lanes<A, kVector>(p[0]);
}

// Host: the dot of two rows of 16-bit storage in float: vectors of floats widened from them
// (lanes::widen: F16C for float16, a shift for bfloat16) summed into one register of partial
// sums and folded, then what is left in 8 and 4 lanes and one by one. (Number by number, g++
// converted bfloat16 in scalar code: the SDDMM at r = 32 took 3.4x float32's time.) The order is
// the host's own (float16 with r a multiple of 8: the earlier 8-lane dot's); the tests bound it
// by one rounding of the float32 sum.
template <class S>
inline float host_half_dot(const S* a, const S* b, int64_t r) {
  // float16: 8 lanes at most (AVX-512's 16-lane conversions and folds were slower from r = 8 to
  // 40 than AVX2's: 4.1 -> 4.7 ms at r = 8, 1e6 entries).
  constexpr int kVector = std::is_same_v<S, float16> && lanes::kNativeBytes > 32 ? 32 : lanes::kNativeBytes;
  constexpr int kPer = kVector / static_cast<int>(sizeof(float));
  using V = typename lanes::Vector<float, kVector>::type;
  int64_t c = 0;
  float acc = 0.0f;
  if (r >= kPer) {  // (below, folding a register of zeros cost as much as the dot)
    V p = lanes::widen<V>(a) * lanes::widen<V>(b);
    for (c = kPer; c + kPer <= r; c += kPer) p += lanes::widen<V>(a + c) * lanes::widen<V>(b + c);
    acc = fold_lanes<float, kVector>(p);
  }
  // The rest in 8 and 4 lanes before single numbers (float16's scalar conversion is bit code).
  using V8 = typename lanes::Vector<float, 32>::type;
  using V4 = typename lanes::Vector<float, 16>::type;
  if (kPer > 8 && c + 8 <= r) {
    acc += fold_lanes<float, 32>(lanes::widen<V8>(a + c) * lanes::widen<V8>(b + c));
    c += 8;
  }
  if (kPer > 4 && c + 4 <= r) {
    acc += fold_lanes<float, 16>(lanes::widen<V4>(a + c) * lanes::widen<V4>(b + c));
    c += 4;
  }
  for (; c < r; ++c) acc += to_float(a[c]) * to_float(b[c]);
  return acc;
}
#endif

// The compiled ranks' summation tree over N partial sums: the upper half added onto the lower,
// ceil(live / 2) apart, until one is left (log2 N adds a vector unit can do side by side; a chain
// of N dependent adds made rank 8 cost as much as rank 32). The host's, the device's chunked
// and the array forms all sum in this order; for a power of two it is also the run-time rank's
// order (host_runtime_dot), which the host's other compiled ranks above 4 take.
template <int N, class A>
LRH_HD A fold_halving(A (&p)[N]) {
  for (int live = N; live > 1; live = (live + 1) / 2)
    for (int c = 0; c < live / 2; ++c) p[c] = p[c] + p[c + (live + 1) / 2];
  return p[0];
}

// Partial dot product over the coordinates lane, lane + width, ...: width = 1 on the host,
// a group of cooperating threads on the device. 16-bit storage is read as float and summed in
// float (accumulate_t<T>); float and double are read as they are.
template <class T, int R = 0>
LRH_HD accumulate_t<T> strided_dot(const T* a, const T* b, int64_t r, int lane, int width) {
  using A = accumulate_t<T>;
#if !defined(__CUDACC__)
  if constexpr (is_half_v<T>) {
    if (width == 1) return host_half_dot(a, b, r);  // the host loop (width is 1 on the host)
  }
#endif
  A acc = A(0);
#if !defined(__CUDACC__)
  if constexpr (std::is_same_v<T, A> && kHostDot<A, R>) {
    if (width == 1) return host_dot<A, R>(a, b);
  }
  if constexpr (std::is_same_v<T, A> && R > 4 && !kHostDot<A, R>) {
    if (width == 1) return host_runtime_dot<A>(a, b, R);
  }
#endif
  if (width == 1 && R > 0) {
    // A compiled rank (the device's; the host's up to 4): the R products summed by fold_halving's
    // fixed tree.
    A p[R > 0 ? R : 1];
    for (int c = 0; c < R; ++c) p[c] = load_as<A>(a[c]) * load_as<A>(b[c]);
    acc = fold_halving(p);
  } else if (width == 1) {
    // A run-time rank: 128-byte blocks summed lane by lane into two registers' worth of partial
    // sums (two independent chains), one 64-byte block more into the lower half, the rest
    // zero-padded to a 64-byte block into the lower half too, the lanes folded by the halving
    // tree (a run-time simd loop took 2.3x as long at r = 20; the rest summed in order after the
    // fold, a chain of dependent adds, made r = 10 floats cost 4x r = 8's).
#if !defined(__CUDACC__)
    if constexpr (std::is_same_v<T, A>) return host_runtime_dot<A>(a, b, r);
#endif
    constexpr int kBlock = 64 / sizeof(A);
    A part[2 * kBlock] = {};
    int64_t c = 0;
    for (; c + 2 * kBlock <= r; c += 2 * kBlock) {
      LRH_SIMD
      for (int l = 0; l < 2 * kBlock; ++l) part[l] += load_as<A>(a[c + l]) * load_as<A>(b[c + l]);
    }
    if (c + kBlock <= r) {
      LRH_SIMD
      for (int l = 0; l < kBlock; ++l) part[l] += load_as<A>(a[c + l]) * load_as<A>(b[c + l]);
      c += kBlock;
    }
    if (c < r) {
      for (int l = 0; l < kBlock; ++l)
        part[l] += c + l < r ? load_as<A>(a[c + l]) * load_as<A>(b[c + l]) : A(0);
    }
    for (int live = 2 * kBlock; live > 1; live /= 2)
      for (int l = 0; l < live / 2; ++l) part[l] += part[l + live / 2];
    acc = part[0];
  } else {
    for (int64_t c = lane; c < r; c += width) acc += load_as<A>(a[c]) * load_as<A>(b[c]);
  }
  return acc;
}

// The device's vector form of strided_dot for float and double: chunks of W consecutive
// coordinates (W * sizeof(T) = 16 bytes, one vector load each; r a multiple of W, rows 16-byte
// aligned), chunk lane, lane + width, ... summed in order into W partial sums. One chunk per
// lane, then the lanes added upper half onto lower and the W sums folded the same way, is the
// halving tree of the compiled ranks (two chunks per lane add p[c] + p[c + r / 2] first, which
// is that tree's first step too).
template <int W, class T>
LRH_HD void chunked_dot(const T* a, const T* b, int64_t r, int lane, int width, T (&acc)[W]) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double storage");
  struct alignas(W * sizeof(T)) Chunk {
    T v[W];
  };
  for (int64_t c = int64_t(lane) * W; c < r; c += int64_t(width) * W) {
    const Chunk x = *reinterpret_cast<const Chunk*>(a + c), y = *reinterpret_cast<const Chunk*>(b + c);
    for (int j = 0; j < W; ++j) acc[j] = acc[j] + mul_rn(x.v[j], y.v[j]);  // unfused on the device too
  }
}

template <class I>
LRH_HD bool index_in_range(I index, int64_t bound) {
  // One unsigned compare (a negative index wraps above any bound): no branch, so a loop of
  // checks vectorises.
  return static_cast<uint64_t>(static_cast<int64_t>(index)) < static_cast<uint64_t>(bound);
}

// One observed entry of one problem: U is (batch, m, r), V is (batch, n, r), row-major.
template <class T, class I, int R = 0>
struct SampledProduct {
  const T* U;
  const T* V;
  const I* rows;
  const I* cols;
  int64_t m, n, r;

  LRH_HD bool valid(int64_t k) const { return index_in_range(rows[k], m) & index_in_range(cols[k], n); }
  // Bytes of U and V of one problem (what a host thread reads at random).
  LRH_HD int64_t factor_bytes() const { return (m + n) * r * static_cast<int64_t>(sizeof(T)); }
  LRH_HD const T* u_row(int64_t k, int64_t b) const { return U + (b * m + static_cast<int64_t>(rows[k])) * r; }
  LRH_HD const T* v_row(int64_t k, int64_t b) const { return V + (b * n + static_cast<int64_t>(cols[k])) * r; }
  LRH_HD accumulate_t<T> partial(int64_t k, int64_t b, int lane, int width) const {
    return strided_dot<T, R>(u_row(k, b), v_row(k, b), r, lane, width);
  }
  template <int W>
  LRH_HD void partial_chunks(int64_t k, int64_t b, int lane, int width, T (&acc)[W]) const {
    chunked_dot<W>(u_row(k, b), v_row(k, b), r, lane, width, acc);
  }
};

}  // namespace lowrank_hpc::ops
