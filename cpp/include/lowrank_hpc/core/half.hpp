// 16-bit floating-point storage (bfloat16, IEEE float16) read and written as float, on both
// backends: conversions from integer arithmetic alone, so g++ and nvcc round alike (to nearest,
// ties to even) and no CUDA header is needed on the host.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc {

// Storage-only types: 16 bits, converted to float for every operation.
struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

LRH_HD uint32_t float_bits(float x) {
  uint32_t bits;
  memcpy(&bits, &x, sizeof bits);
  return bits;
}

LRH_HD float bits_float(uint32_t bits) {
  float x;
  memcpy(&x, &bits, sizeof x);
  return x;
}

LRH_HD float to_float(bfloat16 x) { return bits_float(uint32_t(x.bits) << 16); }

LRH_HD bfloat16 to_bfloat16(float x) {
  const uint32_t bits = float_bits(x);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return {uint16_t((bits >> 16) | 0x40u)};  // NaN stays a quiet NaN
  const uint32_t round = 0x7fffu + ((bits >> 16) & 1u);  // ties to even
  return {uint16_t((bits + round) >> 16)};
}

LRH_HD float to_float(float16 x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1fu, mantissa = x.bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    return bits_float(sign | float_bits(float(mantissa) * 5.9604644775390625e-8f));
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// F. Giesen's float -> half with round to nearest even (subnormals by a float addition, which
// rounds to nearest even on both backends).
LRH_HD float16 to_float16(float x) {
  uint32_t bits = float_bits(x);
  const uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  uint32_t out;
  if (bits >= 0x47800000u) {  // >= 2^16: inf, or NaN (kept quiet)
    out = bits > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (bits < 0x38800000u) {  // below 2^-14: subnormal or zero
    const uint32_t magic = 126u << 23;  // 0.5f: aligns the half's subnormal ulp with float's last bit
    out = float_bits(bits_float(bits) + bits_float(magic)) - magic;
  } else {
    const uint32_t odd = (bits >> 13) & 1u;
    bits += (uint32_t(15 - 127) << 23) + 0xfffu + odd;  // rebias, then round (a carry may give inf)
    out = bits >> 13;
  }
  return {uint16_t(out | (sign >> 16))};
}

// Loads and stores of a parameter's storage type P in its compute type S.
template <class S>
LRH_HD S load_as(float x) { return static_cast<S>(x); }
template <class S>
LRH_HD S load_as(double x) { return static_cast<S>(x); }
template <class S>
LRH_HD S load_as(bfloat16 x) { return static_cast<S>(to_float(x)); }
template <class S>
LRH_HD S load_as(float16 x) { return static_cast<S>(to_float(x)); }

template <class P, class S>
LRH_HD P store_as(S x) {
  if constexpr (std::is_same_v<P, bfloat16>) return to_bfloat16(static_cast<float>(x));
  else if constexpr (std::is_same_v<P, float16>) return to_float16(static_cast<float>(x));
  else return static_cast<P>(x);
}

// The type a kernel accumulates a storage type in: float for the 16-bit formats (their
// products and sums in float32, rounded once when stored), the type itself otherwise.
template <class T>
struct accumulator {
  using type = T;
};
template <>
struct accumulator<bfloat16> {
  using type = float;
};
template <>
struct accumulator<float16> {
  using type = float;
};
template <class T>
using accumulate_t = typename accumulator<T>::type;

template <class T>
inline constexpr bool is_half_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

}  // namespace lowrank_hpc

// Host code with F16C (x86-64-v3 and up): float16 converted a vector at a time (vcvtph2ps,
// vcvtps2ph; lanes::widen reads rows this way), as GCC does not vectorize the bit code above (nor
// _Float16 conversions). The same conversions, exact either way.
#if !LRH_DEVICE_COMPILE && defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define LRH_HOST_F16C 1

namespace lowrank_hpc {

// out[c] = to_float16(x[c]) over n entries, bit for bit: the conversion rounds to nearest, ties
// to even, as to_float16 does; a vector holding a NaN goes through to_float16 again (the
// instruction keeps payload bits that to_float16's quiet NaN does not).
inline void store_f16c(const float* x, float16* out, int64_t n) {
  int64_t c = 0;
#if defined(__AVX512F__)
  for (; c + 16 <= n; c += 16) {
    const __m512 v = _mm512_loadu_ps(x + c);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c),  // maskz: GCC 12's header trips -Wmaybe-uninitialized
                        _mm512_maskz_cvtps_ph(__mmask16(0xffff), v, _MM_FROUND_TO_NEAREST_INT));
    if (_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q))
      for (int l = 0; l < 16; ++l) out[c + l] = to_float16(x[c + l]);
  }
#endif
  for (; c + 8 <= n; c += 8) {
    const __m256 v = _mm256_loadu_ps(x + c);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)))
      for (int l = 0; l < 8; ++l) out[c + l] = to_float16(x[c + l]);
  }
  for (; c < n; ++c) out[c] = to_float16(x[c]);
}

}  // namespace lowrank_hpc
#else
#define LRH_HOST_F16C 0
#endif
