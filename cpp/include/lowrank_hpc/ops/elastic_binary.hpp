// Elastic-binary proximal steps (Dalleiger & Vreeken, NeurIPS 2022, "Elbmf"): the proximal
// operator of the bimodal elastic net whose minima sit at 0 and 1, and the PALM / inertial PALM
// half-step of Boolean matrix factorization built on it. Compiled by g++ (OpenMP drivers) and
// nvcc (kernels) alike; formulas in shared/specs/elbmf.md.
#pragma once
#include <cmath>
#include <cstdint>

#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc::ops {

// V is T, or (host only) a GCC vector of T holding one row per lane: the same expressions,
// written with comparisons and selects that also take lane vectors, round every lane exactly
// as the scalar code does.
template <class V, class T>
LRH_HD V splat(T value) {
  V x{};
  x += value;
  return x;
}

// sign(x) in {-1, 0, 1}.
template <class V>
LRH_HD V sign_of(V x) {
  const V zero{};
  return x > zero ? zero + 1 : (x < zero ? zero - 1 : zero);
}

// The elastic-binary proximal operator with l1 weight `l1` and l2 weight `l2` (both already
// scaled by the step), as the reference implementation: the elastic-net prox towards 0 for
// x <= 1/2 and towards 1 above; nonnegative clamps the result at 0.
template <class V, class T>
LRH_HD V elastic_binary_prox(V x, T l1, T l2, bool nonnegative) {
  const V zero{};
  const V low = (x - l1 * sign_of(x)) / (T(1) + l2);
  const V high = (x - l1 * sign_of(x - T(1)) + l2) / (T(1) + l2);
  const V y = x <= splat<V>(T(0.5)) ? low : high;
  return nonnegative ? (y < zero ? zero : y) : y;
}

// The map of lowrank_hpc.ops.elastic_binary_prox: params (l1, l2, nonnegative as 0/1).
struct ElasticBinaryProx {
  static constexpr int kParams = 3;
  double l1, l2;
  bool nonnegative;
  explicit ElasticBinaryProx(const double* params)
      : l1(params[0]), l2(params[1]), nonnegative(params[2] != 0.0) {}
  template <class T>
  LRH_HD T operator()(T x) const {
    return elastic_binary_prox(x, static_cast<T>(l1), static_cast<T>(l2), nonnegative);
  }
};

// Below this Lipschitz estimate the step would blow up (an all-zero factor): the spec's floor.
inline constexpr double kMinLipschitz = 1e-4;

// The step of one half-step from the k x k Gram matrix G = V V^T of the fixed factor:
// L = max(||G||_F, 1e-4); PALM (inertia 0) 1 / (1.1 L), iPALM 2 (1 - b) / ((1 + 2 b) L).
template <class T>
LRH_HD double palm_step_size(const T* gram, int64_t k, double inertia) {
  using std::sqrt;
  double squares = 0.0;
  for (int64_t e = 0; e < k * k; ++e) squares += static_cast<double>(gram[e]) * static_cast<double>(gram[e]);
  double lipschitz = sqrt(squares);
  lipschitz = lipschitz > kMinLipschitz ? lipschitz : kMinLipschitz;
  return inertia > 0.0 ? 2.0 * (1.0 - inertia) / ((1.0 + 2.0 * inertia) * lipschitz) : 1.0 / (1.1 * lipschitz);
}

// One row of the fused half-step for the factor U (n x k) against the fixed factor V (k x m):
//   Y = U + b (U - U_prev),  out = prox(Y - step (Y G - C); kappa step, lambda step)
// with G = V V^T (k x k) and C = A V^T (n x k) formed by the vendor GEMM.
template <class T>
struct ElasticBinaryHalfStep {
  // Ranks up to this keep the row of Y and of the gradient in registers or on the stack (the
  // GPU's local memory: 32 there, 2 x 32 numbers a thread); larger ones recompute Y per output
  // column instead of needing scratch. The same rows either way. (On the host, 32 made k = 33-64
  // cost 7x k = 32's Boolean MF iteration: those rows ran one at a time, Y recomputed k times.
  // 64 there: the CPU driver's per-lane Gram sums, k^2 vectors of doubles, fit in L2 up to it.)
#if defined(__CUDACC__)
  static constexpr int64_t kStackRank = 32;
#else
  static constexpr int64_t kStackRank = 64;
#endif

  double kappa;    // l1 weight (fixed)
  double lambda;   // l2 weight at this iteration (lambda * growth^t)
  double inertia;  // b >= 0; 0 is PALM
  bool nonnegative;

  // R > 0: k == R known at compile time (the CPU driver's small ranks: the loops unroll);
  // R == 0: k read at run time. V: T, or a vector of rows one per lane (the CPU driver). The
  // same operations in the same order either way.
  template <int R = 0, class V = T>
  LRH_HD void row(const V* u, const V* u_prev, const T* gram, const V* cross, V* out, int64_t rank,
                  double step) const {
    const int64_t k = static_or<R>(rank);
    const T b = static_cast<T>(inertia), t = static_cast<T>(step);
    const T l1 = static_cast<T>(kappa * step), l2 = static_cast<T>(lambda * step);
    if (k <= kStackRank) {
      V y[R > 0 ? R : kStackRank], gradient[R > 0 ? R : kStackRank];
      for (int64_t c = 0; c < k; ++c) {
        y[c] = u[c] + b * (u[c] - u_prev[c]);
        gradient[c] = -cross[c];
      }
      // Row a of G at a time: the inner loop runs along contiguous memory and vectorizes.
      for (int64_t a = 0; a < k; ++a) {
        const V ya = y[a];
        const T* g = gram + a * k;
        for (int64_t c = 0; c < k; ++c) gradient[c] += ya * g[c];
      }
      for (int64_t c = 0; c < k; ++c) out[c] = elastic_binary_prox(y[c] - t * gradient[c], l1, l2, nonnegative);
      return;
    }
    for (int64_t c = 0; c < k; ++c) {
      V gradient = -cross[c];
      for (int64_t a = 0; a < k; ++a) gradient += (u[a] + b * (u[a] - u_prev[a])) * gram[a * k + c];
      const V y = u[c] + b * (u[c] - u_prev[c]);
      out[c] = elastic_binary_prox(y - t * gradient, l1, l2, nonnegative);
    }
  }

  // Row i of problem b of a batch: U, U_prev, cross (batch, n, k), gram (batch, k, k); an
  // inactive problem copies its U.
  template <int R = 0>
  LRH_HD void operator()(int64_t b, int64_t i, const T* U, const T* U_prev, const T* gram, const T* cross,
                         const uint8_t* active, int64_t n, int64_t rank, double step, T* out) const {
    const int64_t k = static_or<R>(rank);
    const int64_t offset = (b * n + i) * k;
    if (active != nullptr && !active[b]) {
      for (int64_t c = 0; c < k; ++c) out[offset + c] = U[offset + c];
      return;
    }
    row<R>(U + offset, U_prev + offset, gram + b * k * k, cross + offset, out + offset, k, step);
  }
};

}  // namespace lowrank_hpc::ops
