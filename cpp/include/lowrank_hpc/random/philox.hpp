// Counter-based normal random numbers that are bit-identical on the host (g++) and the device (nvcc).
//
// Philox-4x32-10 (Salmon et al., SC'11; Random123) turns (counter, key) into four uint32 with no state,
// so any draw can be computed from (seed, stream, index) alone. The normal transform (Box-Muller) needs
// log, sin and cos; library versions differ in the last ulp between glibc and CUDA, so this header
// carries its own (fdlibm algorithms) built only from correctly rounded IEEE operations.
//
// Floating-point assumptions:
//   * device: every + - * / fma sqrt goes through an __d*_rn / __fma_rn / __dsqrt_rn intrinsic, which
//     nvcc never contracts or reorders;
//   * host: plain operators compiled with -ffp-contract=off (CMakeLists.txt sets it for host and nvcc
//     host code: g++ fuses a*b+c by default whenever the target has FMA, even with -std=c++17, and
//     that moves about 1% of the draws by an ulp), SSE2 doubles (x86-64), no -ffast-math (rejected below).
#pragma once

#include <cstdint>

#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/core/rounding.hpp"

#if !LRH_ON_DEVICE
#include <cmath>
#include <cstring>
#endif

#if !LRH_ON_DEVICE && defined(__FAST_MATH__)
#error "lowrank_hpc/random/philox.hpp needs IEEE semantics: do not compile it with -ffast-math"
#endif

namespace lowrank_hpc::random {

// ------------------------------------------------------------------------------------------- Philox

struct Philox4x32Output {
  uint32_t v[4];
};

namespace detail {

struct MulHiLo {
  uint32_t hi;
  uint32_t lo;
};

LRH_HD MulHiLo mulhilo32(uint32_t a, uint32_t b) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  return {static_cast<uint32_t>(product >> 32), static_cast<uint32_t>(product)};
}

}  // namespace detail

// Philox-4x32 with 10 rounds; reproduces the Random123 known-answer vectors.
LRH_HD Philox4x32Output philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                      uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMultiplier0 = 0xD2511F53u;
  constexpr uint32_t kMultiplier1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u;
  constexpr uint32_t kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {  // the key is bumped between rounds, not before the first
      k0 += kWeyl0;
      k1 += kWeyl1;
    }
    const detail::MulHiLo p0 = detail::mulhilo32(kMultiplier0, c0);
    const detail::MulHiLo p1 = detail::mulhilo32(kMultiplier1, c2);
    c0 = p1.hi ^ c1 ^ k0;
    c1 = p1.lo;
    c2 = p0.hi ^ c3 ^ k1;
    c3 = p0.lo;
  }
  return {{c0, c1, c2, c3}};
}

// ------------------------------------------------------------------ correctly rounded double ops

namespace detail {

// The rounded operations live in core/rounding.hpp (the SDDMM kernels use them too).
using lowrank_hpc::add_rn;
using lowrank_hpc::mul_rn;
using lowrank_hpc::sub_rn;

LRH_HD double div_rn(double a, double b) {
#if LRH_ON_DEVICE
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

LRH_HD double fma_rn(double a, double b, double c) {
#if LRH_ON_DEVICE
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

LRH_HD double sqrt_rn(double a) {
#if LRH_ON_DEVICE
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

LRH_HD uint64_t bits_of(double x) {
#if LRH_ON_DEVICE
  return static_cast<uint64_t>(__double_as_longlong(x));
#else
  uint64_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
#endif
}

LRH_HD double double_of(uint64_t bits) {
#if LRH_ON_DEVICE
  return __longlong_as_double(static_cast<long long>(bits));
#else
  double x;
  std::memcpy(&x, &bits, sizeof x);
  return x;
#endif
}

// fdlibm __kernel_sin(x, y, 1): sin(x + y) for |x + y| <= ~pi/4, y the tail of x.
LRH_HD double kernel_sin(double x, double y) {
  constexpr double kS1 = -0x1.5555555555549p-3;
  constexpr double kS2 = 0x1.111111110f8a6p-7;
  constexpr double kS3 = -0x1.a01a019c161d5p-13;
  constexpr double kS4 = 0x1.71de357b1fe7dp-19;
  constexpr double kS5 = -0x1.ae5e68a2b9cebp-26;
  constexpr double kS6 = 0x1.5d93a5acfd57cp-33;
  const double z = mul_rn(x, x);
  const double w = mul_rn(z, z);
  const double r = add_rn(add_rn(kS2, mul_rn(z, add_rn(kS3, mul_rn(z, kS4)))),
                          mul_rn(mul_rn(z, w), add_rn(kS5, mul_rn(z, kS6))));
  const double v = mul_rn(z, x);
  // x - ((z*(y/2 - v*r) - y) - v*S1)
  return sub_rn(x, sub_rn(sub_rn(mul_rn(z, sub_rn(mul_rn(0.5, y), mul_rn(v, r))), y),
                          mul_rn(v, kS1)));
}

// fdlibm (FreeBSD) __kernel_cos(x, y): cos(x + y) for |x + y| <= ~pi/4, y the tail of x.
LRH_HD double kernel_cos(double x, double y) {
  constexpr double kC1 = 0x1.555555555554cp-5;
  constexpr double kC2 = -0x1.6c16c16c15177p-10;
  constexpr double kC3 = 0x1.a01a019cb159p-16;
  constexpr double kC4 = -0x1.27e4f809c52adp-22;
  constexpr double kC5 = 0x1.1ee9ebdb4b1c4p-29;
  constexpr double kC6 = -0x1.8fae9be8838d4p-37;
  const double z = mul_rn(x, x);
  const double w = mul_rn(z, z);
  const double r = add_rn(mul_rn(z, add_rn(kC1, mul_rn(z, add_rn(kC2, mul_rn(z, kC3))))),
                          mul_rn(mul_rn(w, w), add_rn(kC4, mul_rn(z, add_rn(kC5, mul_rn(z, kC6))))));
  const double half_z = mul_rn(0.5, z);
  const double one_minus_half_z = sub_rn(1.0, half_z);
  // ((1 - one_minus_half_z) - half_z) is the rounding error of 1 - z/2, added back with the tail terms
  return add_rn(one_minus_half_z, add_rn(sub_rn(sub_rn(1.0, one_minus_half_z), half_z),
                                         sub_rn(mul_rn(z, r), mul_rn(x, y))));
}

// 2*pi*u written as quadrant*(pi/2) + (hi + lo) with |hi + lo| <= pi/4.
struct ReducedTurn {
  int quadrant;
  double hi;
  double lo;
};

// Reduction happens in u-space, where subtracting quadrant/4 is exact; valid for u in [0, 1].
LRH_HD ReducedTurn reduce_turn(double u) {
  constexpr double kTwoPiHi = 0x1.921fb54442d18p+2;
  constexpr double kTwoPiLo = 0x1.1a62633145c07p-52;  // 2*pi - kTwoPiHi
  const int octant = static_cast<int>(mul_rn(u, 8.0));
  const int quadrant = (octant + 1) >> 1;
  const double r = sub_rn(u, mul_rn(static_cast<double>(quadrant), 0.25));  // |r| <= 1/8, exact
  const double product = mul_rn(r, kTwoPiHi);
  const double tail = fma_rn(r, kTwoPiLo, fma_rn(r, kTwoPiHi, -product));
  const double hi = add_rn(product, tail);
  return {quadrant, hi, sub_rn(tail, sub_rn(hi, product))};  // Fast2Sum keeps hi + lo exact
}

// sin(quadrant*pi/2 + (hi + lo)).
LRH_HD double sin_of_reduced(int quadrant, double hi, double lo) {
  switch (quadrant & 3) {
    case 0:
      return kernel_sin(hi, lo);
    case 1:
      return kernel_cos(hi, lo);
    case 2:
      return -kernel_sin(hi, lo);
    default:
      return -kernel_cos(hi, lo);
  }
}

}  // namespace detail

// ------------------------------------------------------------------------- portable elementary math

// Natural log of a positive normal double, < 1 ulp error (fdlibm/FreeBSD e_log.c without the
// special cases: zero, negative, subnormal, inf and nan inputs are outside its domain).
LRH_HD double portable_log(double x) {
  constexpr double kLn2Hi = 0x1.62e42feep-1;  // trailing zeros: k*kLn2Hi is exact for |k| < 2^11
  constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
  constexpr double kLg1 = 0x1.5555555555593p-1;
  constexpr double kLg2 = 0x1.999999997fa04p-2;
  constexpr double kLg3 = 0x1.2492494229359p-2;
  constexpr double kLg4 = 0x1.c71c51d8e78afp-3;
  constexpr double kLg5 = 0x1.7466496cb03dep-3;
  constexpr double kLg6 = 0x1.39a09d078c69fp-3;
  constexpr double kLg7 = 0x1.2f112df3e5244p-3;
  constexpr uint64_t kMantissaMask = 0x000FFFFFFFFFFFFFull;
  constexpr uint64_t kSqrt2Mantissa = 0x6A09E667F3BCDull;
  constexpr uint64_t kExponentOfOne = 0x3FFull << 52;
  constexpr uint64_t kExponentOfHalf = 0x3FEull << 52;

  // x = 2^k * m with m in [sqrt(2)/2, sqrt(2)), so log(m) = log(1 + f) with |f| <= 0.4143.
  const uint64_t bits = detail::bits_of(x);
  const uint64_t mantissa = bits & kMantissaMask;
  const bool halve = mantissa >= kSqrt2Mantissa;
  const int k = static_cast<int>(bits >> 52) - 1023 + (halve ? 1 : 0);
  const double m = detail::double_of(mantissa | (halve ? kExponentOfHalf : kExponentOfOne));
  const double f = detail::sub_rn(m, 1.0);

  // log(1 + f) = 2s + s*R(s^2), s = f / (2 + f), R a minimax polynomial in z = s^2.
  const double s = detail::div_rn(f, detail::add_rn(2.0, f));
  const double z = detail::mul_rn(s, s);
  const double w = detail::mul_rn(z, z);
  const double t1 = detail::mul_rn(
      w, detail::add_rn(kLg2, detail::mul_rn(w, detail::add_rn(kLg4, detail::mul_rn(w, kLg6)))));
  const double t2 = detail::mul_rn(
      z, detail::add_rn(kLg1, detail::mul_rn(w, detail::add_rn(kLg3, detail::mul_rn(
                                                    w, detail::add_rn(kLg5, detail::mul_rn(w, kLg7)))))));
  const double r = detail::add_rn(t2, t1);
  const double half_f_squared = detail::mul_rn(detail::mul_rn(0.5, f), f);
  const double dk = static_cast<double>(k);

  // s*(hfsq + R) + k*ln2_lo - hfsq + f + k*ln2_hi, summed left to right, smallest terms first
  double sum = detail::mul_rn(s, detail::add_rn(half_f_squared, r));
  sum = detail::add_rn(sum, detail::mul_rn(dk, kLn2Lo));
  sum = detail::sub_rn(sum, half_f_squared);
  sum = detail::add_rn(sum, f);
  return detail::add_rn(sum, detail::mul_rn(dk, kLn2Hi));
}

// sin(2*pi*u) for u in [0, 1], < 1 ulp error.
LRH_HD double sin_two_pi(double u) {
  const detail::ReducedTurn t = detail::reduce_turn(u);
  return detail::sin_of_reduced(t.quadrant, t.hi, t.lo);
}

// cos(2*pi*u) for u in [0, 1], < 1 ulp error.
LRH_HD double cos_two_pi(double u) {
  const detail::ReducedTurn t = detail::reduce_turn(u);
  return detail::sin_of_reduced(t.quadrant + 1, t.hi, t.lo);  // cos(a) = sin(a + pi/2)
}

// ------------------------------------------------------------------------------------ normal draws

// Uniform in (0, 1] from 53 random bits (27 of a, 26 of b); never 0, so log() is always finite.
LRH_HD double uniform53(uint32_t a, uint32_t b) {
  const uint64_t m = (static_cast<uint64_t>(a >> 5) << 26) | static_cast<uint64_t>(b >> 6);
  return detail::mul_rn(static_cast<double>(m + 1), 0x1p-53);  // m + 1 <= 2^53 converts exactly
}

// The index-th N(0, 1) draw of `stream` under `seed`: random access, bit-identical on host and device.
// Draws 2p and 2p+1 are the cos and sin halves of one Box-Muller pair from Philox counter
// (p, stream) and key seed.
LRH_HD double standard_normal(uint64_t seed, uint64_t stream, uint64_t index) {
  const uint64_t pair = index >> 1;
  const Philox4x32Output r = philox4x32_10(
      static_cast<uint32_t>(pair), static_cast<uint32_t>(pair >> 32), static_cast<uint32_t>(stream),
      static_cast<uint32_t>(stream >> 32), static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  const double u1 = uniform53(r.v[0], r.v[1]);
  const double u2 = uniform53(r.v[2], r.v[3]);
  const double radius = detail::sqrt_rn(detail::mul_rn(-2.0, portable_log(u1)));
  const double trig = (index & 1) == 0 ? cos_two_pi(u2) : sin_two_pi(u2);
  return detail::mul_rn(radius, trig);
}

// standard_normal rounded to float (round to nearest even, identical on host and device).
LRH_HD float standard_normal_f(uint64_t seed, uint64_t stream, uint64_t index) {
  const double x = standard_normal(seed, stream, index);
#if LRH_ON_DEVICE
  return __double2float_rn(x);
#else
  return static_cast<float>(x);
#endif
}

}  // namespace lowrank_hpc::random
