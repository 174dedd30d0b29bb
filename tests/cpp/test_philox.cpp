// Host checks of lowrank_hpc/random/philox.hpp: Philox known answers, accuracy of the portable
// log/sin/cos, and the distribution of standard_normal.
// Build: g++ -O3 -std=c++17 -ffp-contract=off -I cpp/include tests/cpp/test_philox.cpp
#include "lowrank_hpc/random/philox.hpp"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

namespace lr = lowrank_hpc::random;

namespace {

int g_failures = 0;

void check(bool ok, const char* what) {
  std::printf("[%s] %s\n", ok ? "PASS" : "FAIL", what);
  if (!ok) ++g_failures;
}

void check_known_answer(const uint32_t counter[4], const uint32_t key[2], const uint32_t expected[4]) {
  const lr::Philox4x32Output out =
      lr::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  bool ok = true;
  for (int i = 0; i < 4; ++i) ok = ok && out.v[i] == expected[i];
  char what[160];
  std::snprintf(what, sizeof what, "philox4x32_10 ctr %08x.. key %08x.. -> %08x %08x %08x %08x", counter[0],
                key[0], out.v[0], out.v[1], out.v[2], out.v[3]);
  check(ok, what);
}

// Uniforms on the same 53-bit grid that standard_normal uses, from a fixed Philox stream.
std::vector<double> grid_uniforms(std::size_t n, uint32_t key) {
  std::vector<double> u;
  u.reserve(n);
  for (uint32_t i = 0; u.size() < n; ++i) {
    const lr::Philox4x32Output r = lr::philox4x32_10(i, 0, 0, 0, key, 0);
    u.push_back(lr::uniform53(r.v[0], r.v[1]));
    u.push_back(lr::uniform53(r.v[2], r.v[3]));
  }
  u.resize(n);
  return u;
}

struct ErrorStats {
  double max_relative = 0.0;
  double max_absolute = 0.0;

  void add(double value, long double reference) {
    const double absolute = static_cast<double>(std::fabs(static_cast<long double>(value) - reference));
    max_absolute = std::max(max_absolute, absolute);
    if (reference != 0.0L) {
      max_relative = std::max(max_relative, static_cast<double>(absolute / std::fabs(reference)));
    } else if (value != 0.0) {
      max_relative = INFINITY;
    }
  }
};

// sin(2*pi*u) in long double after the exact reduction u = quadrant/4 + r, so that the reference is
// not limited by rounding 2*pi*u to a double.
long double sin_two_pi_reference(double u, int quarter_turn_shift) {
  constexpr long double kTwoPi = 6.283185307179586476925286766559005768L;
  const int quadrant = static_cast<int>(std::nearbyint(4.0 * u));
  const long double angle = kTwoPi * static_cast<long double>(u - 0.25 * quadrant);
  switch ((quadrant + quarter_turn_shift) & 3) {
    case 0:
      return std::sin(angle);
    case 1:
      return std::cos(angle);
    case 2:
      return -std::sin(angle);
    default:
      return -std::cos(angle);
  }
}

void check_log_accuracy() {
  // Points: the uniform grid, log-uniform values down to 2^-60, and the 2^-53 steps just below 1.
  std::vector<double> points = grid_uniforms(500000, 1);
  for (int i = 0; i < 400000; ++i) points.push_back(std::exp2(-60.0 * (i + 0.5) / 400000.0));
  for (int j = 0; j < 100000; ++j) points.push_back(1.0 - j * 0x1p-53);
  ErrorStats stats;
  for (double x : points) stats.add(lr::portable_log(x), std::log(static_cast<long double>(x)));
  std::printf("portable_log over %zu points: max rel err %.3g, max abs err %.3g (vs long double log)\n",
              points.size(), stats.max_relative, stats.max_absolute);
  check(stats.max_relative < 4e-16, "portable_log relative error < 4e-16");
  check(lr::portable_log(1.0) == 0.0 && lr::portable_log(0x1p-53) == -53 * std::log(2.0),
        "portable_log exact at 1 and 2^-53");
}

void check_trig_accuracy() {
  // Points: the uniform grid plus every multiple of 1/64 and its 2^-53 neighbours (octant edges).
  std::vector<double> points = grid_uniforms(1000000, 2);
  for (int k = 0; k <= 64; ++k) {
    const double edge = k / 64.0;
    points.push_back(edge);
    if (k > 0) points.push_back(edge - 0x1p-53);
    if (k < 64) points.push_back(edge + 0x1p-53);
  }
  ErrorStats sin_stats;
  ErrorStats cos_stats;
  for (double u : points) {
    sin_stats.add(lr::sin_two_pi(u), sin_two_pi_reference(u, 0));
    cos_stats.add(lr::cos_two_pi(u), sin_two_pi_reference(u, 1));
  }
  std::printf("sin_two_pi over %zu points: max rel err %.3g, max abs err %.3g (vs long double sin)\n",
              points.size(), sin_stats.max_relative, sin_stats.max_absolute);
  std::printf("cos_two_pi over %zu points: max rel err %.3g, max abs err %.3g (vs long double cos)\n",
              points.size(), cos_stats.max_relative, cos_stats.max_absolute);
  check(sin_stats.max_relative < 4e-16, "sin_two_pi relative error < 4e-16");
  check(cos_stats.max_relative < 4e-16, "cos_two_pi relative error < 4e-16");
  check(sin_stats.max_absolute < 2.3e-16 && cos_stats.max_absolute < 2.3e-16,
        "sin_two_pi / cos_two_pi absolute error < 2.3e-16");
}

void check_uniforms() {
  check(lr::uniform53(0, 0) == 0x1p-53 && lr::uniform53(0xFFFFFFFFu, 0xFFFFFFFFu) == 1.0,
        "uniform53 spans [2^-53, 1]");
}

double normal_cdf(double x) { return 0.5 * std::erfc(-x / std::sqrt(2.0)); }

void check_normal_distribution() {
  constexpr std::size_t n = 1000000;
  constexpr uint64_t seed = 0x0123456789ABCDEFull;
  constexpr uint64_t stream = 7;
  std::vector<double> x(n);
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = lr::standard_normal(seed, stream, i);
    sum += x[i];
  }
  const double mean = sum / n;
  double squares = 0.0;
  for (double v : x) squares += (v - mean) * (v - mean);
  const double variance = squares / (n - 1);

  std::vector<double> sorted = x;
  std::sort(sorted.begin(), sorted.end());
  double ks = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double cdf = normal_cdf(sorted[i]);
    ks = std::max({ks, cdf - static_cast<double>(i) / n, static_cast<double>(i + 1) / n - cdf});
  }

  // Independent streams: draws of streams 0 and 1 under one seed should be uncorrelated.
  double cross = 0.0;
  for (std::size_t i = 0; i < n; ++i) cross += lr::standard_normal(seed, 0, i) * lr::standard_normal(seed, 1, i);
  const double correlation = cross / n;

  bool float_matches = true;
  for (std::size_t i = 0; i < 1000; ++i) {
    float_matches = float_matches && lr::standard_normal_f(seed, stream, i) == static_cast<float>(x[i]);
  }

  std::printf("standard_normal, %zu draws: mean %.3g, variance %.6f, KS distance %.3g, stream corr %.3g\n",
              n, mean, variance, ks, correlation);
  check(std::fabs(mean) < 5e-3, "|mean| < 5e-3");
  check(std::fabs(variance - 1.0) < 5e-3, "|variance - 1| < 5e-3");
  check(ks < 3e-3, "KS distance to N(0,1) < 3e-3");
  check(std::fabs(correlation) < 5e-3, "|correlation of streams 0 and 1| < 5e-3");
  check(float_matches, "standard_normal_f == (float) standard_normal");
}

// FNV-1a over the bit patterns of draws 0..2^16-1 of (seed 42, stream 3): pins every bit, so a build
// that contracts a*b+c into FMA (about 1% of draws move by an ulp) fails here.
void check_bit_checksum() {
  constexpr uint64_t kExpected = 0xa055781129801713ull;
  uint64_t hash = 0xcbf29ce484222325ull;
  for (uint64_t i = 0; i < 65536; ++i) {
    const double x = lr::standard_normal(42, 3, i);
    uint64_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    for (int byte = 0; byte < 8; ++byte) {
      hash = (hash ^ ((bits >> (8 * byte)) & 0xFF)) * 0x100000001b3ull;
    }
  }
  std::printf("FNV-1a of standard_normal(42, 3, 0..65535) bits: 0x%016" PRIx64 "\n", hash);
  check(hash == kExpected, "bit checksum matches the pinned value");
}

void print_pinned_draws() {
  std::printf("standard_normal(seed=42, stream=3, index=0..7):\n");
  for (uint64_t i = 0; i < 8; ++i) {
    const double x = lr::standard_normal(42, 3, i);
    std::printf("  %" PRIu64 ": %.17g  (%a)\n", i, x, x);
  }
}

}  // namespace

int main() {
  const uint32_t zeros[4] = {0, 0, 0, 0};
  const uint32_t ones[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  const uint32_t pi_counter[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
  const uint32_t pi_key[2] = {0xa4093822u, 0x299f31d0u};
  const uint32_t expected_zeros[4] = {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u};
  const uint32_t expected_ones[4] = {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu};
  const uint32_t expected_pi[4] = {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u};
  check_known_answer(zeros, zeros, expected_zeros);
  check_known_answer(ones, ones, expected_ones);
  check_known_answer(pi_counter, pi_key, expected_pi);

  check_uniforms();
  check_log_accuracy();
  check_trig_accuracy();
  check_normal_distribution();
  check_bit_checksum();
  print_pinned_draws();

  std::printf("%s: %d failure(s)\n", g_failures == 0 ? "OK" : "FAILED", g_failures);
  return g_failures == 0 ? 0 : 1;
}
