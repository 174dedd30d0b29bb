// Host-only: GCC vectors that hold the same quantity of several independent problems, one per
// lane, so that the per-entry functors written for one number run on a whole group at once.
// Plain C++ operators on them compile to AVX-512, AVX2 or SSE2 (whichever ISA clone runs), and
// every lane rounds exactly as the scalar code does.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/numbers.hpp"

namespace lowrank_hpc::lanes {

// 64 bytes: one AVX-512 register (two AVX2, four SSE2).
inline constexpr int kBytes = 64;

template <class T>
struct Lanes {
  static constexpr int width = kBytes / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(kBytes)));
  // The same lanes widened to double (equal to type when T is double).
  typedef double wide __attribute__((vector_size(width * sizeof(double))));
};

template <class T>
using vec = typename Lanes<T>::type;

template <class T>
using wide = typename Lanes<T>::wide;

// The vector V of numbers starting at p, which is aligned only to its numbers (numpy's arrays),
// not to the vector.
template <class V, class T>
inline __attribute__((always_inline)) V load_vector(const T* p) {
  V x;
  __builtin_memcpy(&x, p, sizeof x);
  return x;
}

// Lane vectors stored in memory aligned only to T: element k is the W numbers at k * W.
template <class T>
struct LaneArray {
  const T* data;
  inline __attribute__((always_inline)) vec<T> operator[](int64_t k) const {
    return load_vector<vec<T>>(data + k * Lanes<T>::width);
  }
  LaneArray operator+(int64_t k) const { return {data + k * Lanes<T>::width}; }
};

// The widest vector the ISA clone being compiled holds in one register: GCC splits a wider
// vector type into halves that it keeps in memory, not in registers.
#if defined(__AVX512F__)
inline constexpr int kNativeBytes = 64;
#elif defined(__AVX__)
inline constexpr int kNativeBytes = 32;
#else
inline constexpr int kNativeBytes = 16;
#endif

// The numbers of T in a register tile of a row: four native vectors (wider tiles left too few
// registers for the loads).
template <class T>
inline constexpr int kTileNumbers = 4 * kNativeBytes / static_cast<int>(sizeof(T));

// A GCC vector of Bytes bytes of T.
template <class T, int Bytes>
struct Vector {
  typedef T type __attribute__((vector_size(Bytes)));
};

// V (a GCC vector of float or double) holding the first count numbers at p (0 <= count <=
// its lanes) in its low lanes, +0 above; nothing past them is read (a row's last numbers may end
// a page). Masked loads where the ISA has them, else number by number.
template <class V, class A>
inline __attribute__((always_inline)) V load_first(const A* p, int count) {
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, double>, "float or double");
  constexpr int kCount = static_cast<int>(sizeof(V) / sizeof(A));
  V out;
#if defined(__AVX512F__)
  if constexpr (sizeof(V) == 64) {
    const unsigned mask = (1u << count) - 1u;
    if constexpr (std::is_same_v<A, float>) {
      const __m512 x = _mm512_maskz_loadu_ps(static_cast<__mmask16>(mask), p);
      __builtin_memcpy(&out, &x, sizeof out);
    } else {
      const __m512d x = _mm512_maskz_loadu_pd(static_cast<__mmask8>(mask), p);
      __builtin_memcpy(&out, &x, sizeof out);
    }
    return out;
  }
#endif
#if defined(__AVX2__)
  if constexpr (sizeof(V) == 32) {
    if constexpr (std::is_same_v<A, float>) {
      const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(count), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      const __m256 x = _mm256_maskload_ps(p, keep);
      __builtin_memcpy(&out, &x, sizeof out);
    } else {
      const __m256i keep = _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
      const __m256d x = _mm256_maskload_pd(p, keep);
      __builtin_memcpy(&out, &x, sizeof out);
    }
    return out;
  }
#endif
  out = V{};
  for (int l = 0; l < kCount && l < count; ++l) out[l] = p[l];
  return out;
}

// V (a GCC vector of float) from as many 16-bit numbers at p, exactly (every float16 and
// bfloat16 is a float): bfloat16 by widening its bits, float16 by F16C where the build has it.
template <class V, class S>
inline __attribute__((always_inline)) V widen(const S* p) {
  constexpr int kCount = static_cast<int>(sizeof(V) / sizeof(float));
  static_assert(is_half_v<S> && std::is_same_v<std::remove_cv_t<decltype(V{}[0])>, float>, "16 bits to float");
  V out;
  if constexpr (std::is_same_v<S, bfloat16>) {
    using narrow_t = typename Vector<uint16_t, kCount * 2>::type;
    using wide_t = typename Vector<uint32_t, kCount * 4>::type;
    narrow_t bits;
    __builtin_memcpy(&bits, p, sizeof bits);
    const wide_t widened = __builtin_convertvector(bits, wide_t) << 16;
    __builtin_memcpy(&out, &widened, sizeof out);
    return out;
  } else {
#if LRH_HOST_F16C
#if defined(__AVX512F__)
    if constexpr (kCount == 16) {
      // maskz: the unmasked form trips GCC 12's -Wmaybe-uninitialized inside its header
      const __m512 x = _mm512_maskz_cvtph_ps(__mmask16(0xffff), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
      __builtin_memcpy(&out, &x, sizeof out);
      return out;
    }
#endif
    if constexpr (kCount == 8) {
      const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      __builtin_memcpy(&out, &x, sizeof out);
      return out;
    }
    if constexpr (kCount == 4) {
      const __m128 x = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      __builtin_memcpy(&out, &x, sizeof out);
      return out;
    }
#endif
    for (int l = 0; l < kCount; ++l) out[l] = to_float(p[l]);
    return out;
  }
}

// W numbers of one output row summed in registers: native vectors, then one half-width and one
// 16-byte vector where they fit, then scalars. (A plain T[W] under `omp simd` is kept in memory
// whenever W is not a multiple of the vector width: every add then waits on a store.) Each
// number is summed in the order of the calls, as a scalar loop would.
template <class T, int W>
struct RegisterRow {
  static constexpr int kHalfBytes = kNativeBytes >= 32 ? kNativeBytes / 2 : 0;
  static constexpr int kSmallBytes = kNativeBytes >= 64 ? 16 : 0;
  static constexpr int kWidth = W;
  static constexpr int kPer = kNativeBytes / static_cast<int>(sizeof(T));
  static constexpr int kFull = W / kPer;
  static constexpr int kHalfAt = kFull * kPer;
  static constexpr bool kHasHalf = kHalfBytes > 0 && W - kHalfAt >= kHalfBytes / static_cast<int>(sizeof(T));
  static constexpr int kSmallAt = kHalfAt + (kHasHalf ? kHalfBytes / static_cast<int>(sizeof(T)) : 0);
  static constexpr bool kHasSmall = kSmallBytes > 0 && W - kSmallAt >= kSmallBytes / static_cast<int>(sizeof(T));
  static constexpr int kTailAt = kSmallAt + (kHasSmall ? kSmallBytes / static_cast<int>(sizeof(T)) : 0);
  static constexpr int kTail = W - kTailAt;

  using full_t = typename Vector<T, kNativeBytes>::type;
  using half_t = typename Vector<T, (kHalfBytes > 0 ? kHalfBytes : kNativeBytes)>::type;
  using small_t = typename Vector<T, (kSmallBytes > 0 ? kSmallBytes : kNativeBytes)>::type;
  full_t full[kFull > 0 ? kFull : 1];
  half_t half;
  small_t small;
  T tail[kTail > 0 ? kTail : 1];

  inline __attribute__((always_inline)) void zero() {
    for (int f = 0; f < kFull; ++f) full[f] = full_t{};
    half = half_t{};
    small = small_t{};
    for (int e = 0; e < kTail; ++e) tail[e] = T(0);
  }
  // row += p[0, W)
  inline __attribute__((always_inline)) void add(const T* p) {
    for (int f = 0; f < kFull; ++f) full[f] += load_vector<full_t>(p + f * kPer);
    if constexpr (kHasHalf) half += load_vector<half_t>(p + kHalfAt);
    if constexpr (kHasSmall) small += load_vector<small_t>(p + kSmallAt);
    for (int e = 0; e < kTail; ++e) tail[e] += p[kTailAt + e];
  }
  // row += x p[0, W) (multiply, then add: no fused rounding)
  inline __attribute__((always_inline)) void add_scaled(T x, const T* p) {
    for (int f = 0; f < kFull; ++f) full[f] += x * load_vector<full_t>(p + f * kPer);
    if constexpr (kHasHalf) half += x * load_vector<half_t>(p + kHalfAt);
    if constexpr (kHasSmall) small += x * load_vector<small_t>(p + kSmallAt);
    for (int e = 0; e < kTail; ++e) tail[e] += x * p[kTailAt + e];
  }
  // row += x p[0, W) for 16-bit storage (core/half.hpp), each number read as T first: the
  // products and sums of add_scaled on the converted row.
  template <class S>
  inline __attribute__((always_inline)) void add_scaled_widened(T x, const S* p) {
    for (int f = 0; f < kFull; ++f) full[f] += x * widen<full_t>(p + f * kPer);
    if constexpr (kHasHalf) half += x * widen<half_t>(p + kHalfAt);
    if constexpr (kHasSmall) small += x * widen<small_t>(p + kSmallAt);
    for (int e = 0; e < kTail; ++e) tail[e] += x * load_as<T>(p[kTailAt + e]);
  }
  // row += other, lane by lane
  inline __attribute__((always_inline)) void add(const RegisterRow& other) {
    for (int f = 0; f < kFull; ++f) full[f] += other.full[f];
    half += other.half;
    small += other.small;
    for (int e = 0; e < kTail; ++e) tail[e] += other.tail[e];
  }
  inline __attribute__((always_inline)) void store(T* p) const {
    for (int f = 0; f < kFull; ++f) __builtin_memcpy(p + f * kPer, &full[f], sizeof(full_t));
    if constexpr (kHasHalf) __builtin_memcpy(p + kHalfAt, &half, sizeof(half_t));
    if constexpr (kHasSmall) __builtin_memcpy(p + kSmallAt, &small, sizeof(small_t));
    for (int e = 0; e < kTail; ++e) p[kTailAt + e] = tail[e];
  }
};

// Whether load_first reads by mask (AVX2, AVX-512); without, it reads number by number, too slow
// for a kernel's inner loop.
#if defined(__AVX2__) || defined(__AVX512F__)
inline constexpr bool kMaskedLoads = true;
#else
inline constexpr bool kMaskedLoads = false;
#endif

// A row of a run-time width in registers, kVectors native vectors whose last holds its last
// `last` numbers (1 <= last <= kPer; the rest of that vector +0): RegisterRow's operations for a
// width known only at run time, in one pass. Loads read nothing past the row; the same products
// and sums, number by number, as RegisterRow's (multiply, then add).
template <class T, int kVectors>
struct MaskedRow {
  static constexpr int kPer = kNativeBytes / static_cast<int>(sizeof(T));
  using full_t = typename Vector<T, kNativeBytes>::type;
  full_t v[kVectors];
  int last;

  // width: the row's numbers, in ((kVectors - 1) kPer, kVectors kPer].
  explicit inline __attribute__((always_inline)) MaskedRow(int64_t width)
      : last(static_cast<int>(width - (kVectors - 1) * kPer)) {}
  inline __attribute__((always_inline)) void zero() {
    for (int f = 0; f < kVectors; ++f) v[f] = full_t{};
  }
  inline __attribute__((always_inline)) void add(const T* p) {
    for (int f = 0; f + 1 < kVectors; ++f) v[f] += load_vector<full_t>(p + f * kPer);
    v[kVectors - 1] += load_first<full_t>(p + (kVectors - 1) * kPer, last);
  }
  inline __attribute__((always_inline)) void add_scaled(T x, const T* p) {
    for (int f = 0; f + 1 < kVectors; ++f) v[f] += x * load_vector<full_t>(p + f * kPer);
    v[kVectors - 1] += x * load_first<full_t>(p + (kVectors - 1) * kPer, last);
  }
  inline __attribute__((always_inline)) void store(T* p) const {
    for (int f = 0; f + 1 < kVectors; ++f) __builtin_memcpy(p + f * kPer, &v[f], sizeof(full_t));
    T numbers[kPer];
    __builtin_memcpy(numbers, &v[kVectors - 1], sizeof numbers);
    for (int l = 0; l < last; ++l) p[(kVectors - 1) * kPer + l] = numbers[l];
  }
};

// Calls body(row) with a MaskedRow<T, K> of width numbers, K the vectors they fill: 1 to 4 (the
// rest of a run-time width under a tile of four vectors; the callers never pass more).
template <class T, class Body>
inline __attribute__((always_inline)) void with_masked_row(int64_t width, Body&& body) {
  constexpr int64_t kPer = kNativeBytes / static_cast<int64_t>(sizeof(T));
  switch ((width + kPer - 1) / kPer) {
#define LRH_MASKED_ROW(K)       \
  case K: {                     \
    MaskedRow<T, K> row(width); \
    body(row);                  \
    return;                     \
  }
    LRH_MASKED_ROW(1) LRH_MASKED_ROW(2) LRH_MASKED_ROW(3) LRH_MASKED_ROW(4)
#undef LRH_MASKED_ROW
    default: return;
  }
}

// out (width numbers) = what sum(acc, c0) adds into a register row acc for columns [c0, c0 +
// acc's width), acc zeroed first: register rows of kTile numbers (kTileNumbers; a compiled
// width up to it passes itself), the rest in one MaskedRow. Each number holds its own
// sum in sum's order (in memory, each add waited on the previous one's store). sum reads out
// itself where out's old numbers are to be added (acc.add(out + c0) first).
template <class T, int kTile = kTileNumbers<T>, class Sum>
inline __attribute__((always_inline)) void row_tiles(int64_t width, T* out, Sum&& sum) {
  int64_t c0 = 0;
  for (; c0 + kTile <= width; c0 += kTile) {
    RegisterRow<T, kTile> acc;
    acc.zero();
    sum(acc, c0);
    acc.store(out + c0);
  }
  if (c0 < width)  // under a tile of four vectors: with_masked_row's reach
    with_masked_row<T>(width - c0, [&](auto& acc) {
      acc.zero();
      sum(acc, c0);
      acc.store(out + c0);
    });
}

}  // namespace lowrank_hpc::lanes

namespace lowrank_hpc {

// to_double of a vector: every lane widened to double.
template <class X>
struct Widening<X, std::void_t<decltype(std::declval<X>()[0])>> {
  static inline __attribute__((always_inline)) auto of(X x) {
    return __builtin_convertvector(x, lanes::wide<typename element_of<X>::type>);
  }
};

}  // namespace lowrank_hpc
