// One gradient iteration of a small matrix-completion problem, done entirely by one worker:
// the batched solvers run one per problem (an OpenMP iteration on the CPU, a thread on the
// GPU), so ten thousand tiny problems cost one launch and no per-problem Python.
//
// Problem b minimises 1/2 sum_k (U_i . V_j - v_k)^2 over its entries k in [offsets[b],
// offsets[b+1]). One call tries the step of the chosen method from (U, V); if the loss grows
// (or is not finite) it halves the step and tries again, up to kMaxHalvings times, exactly as
// lowrank_hpc.recover.factored_gd does for one problem.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#if !defined(__CUDACC__)
#include <vector>
#endif

#include "lowrank_hpc/core/constants.hpp"
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/core/numbers.hpp"
#include "lowrank_hpc/core/simd.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"

namespace lowrank_hpc::solvers {

enum class StepMethod : int { gd = 0, alternating = 1, scaled = 2, scaled_damped = 3 };

// 1/2 sum over entries [begin, end) of (<U[rows[e]], V[cols[e]]> - vals[e])^2, in double, for
// one problem's (m, k) U and (n, k) V blocks.
template <class T, class I>
LRH_HD double half_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                                     int64_t begin, int64_t end, int64_t k) {
  double total = 0.0;
  for (int64_t e = begin; e < end; ++e) {
    const T* u = U + static_cast<int64_t>(rows[e]) * k;
    const T* v = V + static_cast<int64_t>(cols[e]) * k;
    T dot = T(0);
    for (int64_t c = 0; c < k; ++c) dot += u[c] * v[c];
    const double z = static_cast<double>(dot - vals[e]);
    total += z * z;
  }
  return 0.5 * total;
}

// ||U1 V1^T - U0 V0^T||_F^2 and ||U0 V0^T||_F^2 from k x k Gram products: the difference is
// expanded as dU V1^T + U0 dV^T so that small changes are not lost to cancellation. Entry
// (a, c) of each Gram product gathers one row of U (LeftGram) or of V (RightGram) at a time.
// D is double, or a GCC vector of doubles holding one problem per lane (core/lanes.hpp).
template <class D = double>
struct LeftGram {
  D du_du{}, du_u0{}, u0_u0{};
  LRH_HD void add(D u0a, D u0c, D u1a, D u1c) {
    const D dua = u1a - u0a, duc = u1c - u0c;
    du_du += dua * duc;
    du_u0 += dua * u0c;
    u0_u0 += u0a * u0c;
  }
};

template <class D = double>
struct RightGram {
  D v1_v1{}, v1_dv{}, dv_dv{}, v0_v0{};
  LRH_HD void add(D v0a, D v0c, D v1a, D v1c) {
    v1_v1 += v1a * v1c;
    v1_dv += v1a * (v1c - v0c);
    dv_dv += (v1a - v0a) * (v1c - v0c);
    v0_v0 += v0a * v0c;
  }
};

template <class D = double>
struct ChangeSums {
  D squared{}, before{};  // ||U1 V1^T - U0 V0^T||^2, ||U0 V0^T||^2
  LRH_HD void add(const LeftGram<D>& left, const RightGram<D>& right) {
    squared += left.du_du * right.v1_v1 + 2.0 * left.du_u0 * right.v1_dv + left.u0_u0 * right.dv_dv;
    before += left.u0_u0 * right.v0_v0;
  }
  // The ratio, inf for a change away from zero, 0 for none (D = double); NaN when a factor held
  // NaN/inf (the clamp of a rounding-negative sum to 0 below must not call that "no change").
  LRH_HD double relative() const {
    using std::sqrt;
    if (squared != squared || before != before) return std::numeric_limits<double>::quiet_NaN();
    if (before > 0.0) return sqrt(squared > 0.0 ? squared / before : 0.0);
    return squared > 0.0 ? std::numeric_limits<double>::infinity() : 0.0;
  }
};

// The ChangeSums of one problem (or of one problem per lane when X is a GCC vector), without
// storage: one (a, c) entry of the Gram products at a time (one pass over U's rows, one over V's).
template <class X, int R = 0>
LRH_HD auto change_sums(const X* U0, const X* V0, const X* U1, const X* V1, int64_t m, int64_t n, int64_t rank) {
  using D = decltype(to_double(U0[0]));
  const int64_t k = static_or<R>(rank);
  ChangeSums<D> sums;
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t c = 0; c < k; ++c) {
      LeftGram<D> left;
      for (int64_t i = 0; i < m; ++i)
        left.add(to_double(U0[i * k + a]), to_double(U0[i * k + c]), to_double(U1[i * k + a]),
                 to_double(U1[i * k + c]));
      RightGram<D> right;
      for (int64_t j = 0; j < n; ++j)
        right.add(to_double(V0[j * k + a]), to_double(V0[j * k + c]), to_double(V1[j * k + a]),
                  to_double(V1[j * k + c]));
      sums.add(left, right);
    }
  }
  return sums;
}

// The same ratio from the k x k Gram products formed elsewhere (by the vendor GEMM, for large
// factors): left (3, k, k) holds dU^T dU, dU^T U0, U0^T U0 and right (4, k, k) holds V1^T V1,
// V1^T dV, dV^T dV, V0^T V0, each row-major (dU = U1 - U0, dV = V1 - V0).
LRH_HD double relative_change_from_grams(const double* left, const double* right, int64_t k) {
  const int64_t kk = k * k;
  ChangeSums<double> sums;
  for (int64_t e = 0; e < kk; ++e) {
    LeftGram<double> l;
    l.du_du = left[e];
    l.du_u0 = left[kk + e];
    l.u0_u0 = left[2 * kk + e];
    RightGram<double> r;
    r.v1_v1 = right[e];
    r.v1_dv = right[kk + e];
    r.dv_dv = right[2 * kk + e];
    r.v0_v0 = right[3 * kk + e];
    sums.add(l, r);
  }
  return sums.relative();
}

// ||U1 V1^T - U0 V0^T||_F / ||U0 V0^T||_F for one problem.
template <class T, int R = 0>
LRH_HD double relative_change(const T* U0, const T* V0, const T* U1, const T* V1, int64_t m, int64_t n,
                              int64_t rank) {
  return change_sums<T, R>(U0, V0, U1, V1, m, n, rank).relative();
}

#if !defined(__CUDACC__)
// relative_change on the host, a row of the Gram products at a time: for each a, the (a, c) sums
// of every c side by side (LeftGram's and RightGram's adds, vectorised across c), each still
// summed over i (then j) in order, then added to the ChangeSums in change_sums' (a, c) order: the
// same bits. An entry at a time, each sum was a chain of dependent adds over strided loads, most
// of a batched gradient step (2,000 problems of 60 x 50 at k = 16, one thread).
// (Below, the vectors across c are too short to pay for the rows' sums in memory: k = 4 lost 15%.)
inline constexpr int64_t kByRowsMinRank = 8;
template <class T>
inline double relative_change_by_rows(const T* U0, const T* V0, const T* U1, const T* V1, int64_t m, int64_t n,
                                      int64_t k) {
  if (k < kByRowsMinRank) return relative_change(U0, V0, U1, V1, m, n, k);
  thread_local std::vector<double> work;
  work.resize(static_cast<size_t>(7 * k));
  double* const du_du = work.data();
  double *const du_u0 = du_du + k, *const u0_u0 = du_u0 + k;
  double *const v1_v1 = u0_u0 + k, *const v1_dv = v1_v1 + k, *const dv_dv = v1_dv + k, *const v0_v0 = dv_dv + k;
  ChangeSums<double> sums;
  for (int64_t a = 0; a < k; ++a) {
    for (int64_t t = 0; t < 7 * k; ++t) work[t] = 0.0;
    for (int64_t i = 0; i < m; ++i) {
      const T *u0 = U0 + i * k, *u1 = U1 + i * k;
      const double u0a = to_double(u0[a]), u1a = to_double(u1[a]);
      LRH_SIMD
      for (int64_t c = 0; c < k; ++c) {
        LeftGram<double> left{du_du[c], du_u0[c], u0_u0[c]};
        left.add(u0a, to_double(u0[c]), u1a, to_double(u1[c]));
        du_du[c] = left.du_du;
        du_u0[c] = left.du_u0;
        u0_u0[c] = left.u0_u0;
      }
    }
    for (int64_t j = 0; j < n; ++j) {
      const T *v0 = V0 + j * k, *v1 = V1 + j * k;
      const double v0a = to_double(v0[a]), v1a = to_double(v1[a]);
      LRH_SIMD
      for (int64_t c = 0; c < k; ++c) {
        RightGram<double> right{v1_v1[c], v1_dv[c], dv_dv[c], v0_v0[c]};
        right.add(v0a, to_double(v0[c]), v1a, to_double(v1[c]));
        v1_v1[c] = right.v1_v1;
        v1_dv[c] = right.v1_dv;
        dv_dv[c] = right.dv_dv;
        v0_v0[c] = right.v0_v0;
      }
    }
    for (int64_t c = 0; c < k; ++c)
      sums.add(LeftGram<double>{du_du[c], du_u0[c], u0_u0[c]},
               RightGram<double>{v1_v1[c], v1_dv[c], dv_dv[c], v0_v0[c]});
  }
  return sums.relative();
}
#endif

// sum_c x[c]^2 in double of one factor row (r values; one row per lane for GCC vectors).
template <int R = 0, class X>
LRH_HD auto squared_norm(const X* x, int64_t rank) {
  decltype(to_double(x[0])) total{};
  for (int64_t c = 0; c < static_or<R>(rank); ++c) total += to_double(x[c]) * to_double(x[c]);
  return total;
}

template <class T, class I>
struct CompletionStep {
  static constexpr int kMaxHalvings = kMaxStepHalvings;

  const I* rows;
  const I* cols;
  const T* vals;
  const int64_t* offsets;
  int64_t m, n, k;
  StepMethod method;
  // Scratch of (m + n) k + 2 k^2 values per problem (gradients and Gram factors).
  T* scratch;

  struct Outcome {
    double loss;     // after the accepted step (or the current loss when stuck)
    double change;   // ||U'V'^T - UV^T||_F / ||UV^T||_F
    T step;          // the step in force afterwards
    int halvings;
    bool stuck;      // no step decreased the loss: stationary at working precision
  };

  LRH_HD T dot(const T* a, const T* b) const {
    T acc = T(0);
    for (int64_t c = 0; c < k; ++c) acc += a[c] * b[c];
    return acc;
  }

  LRH_HD double loss(const T* U, const T* V, int64_t begin, int64_t end) const {
    return half_squared_residuals(U, V, rows, cols, vals, begin, end, k);
  }

  // grad = sum_e z_e (key_e -> other row), z from (U, V); G is (rows_of_grad, k), zeroed here.
  LRH_HD void gradient(const T* U, const T* V, int64_t begin, int64_t end, bool for_u, T* grad) const {
    const int64_t extent = (for_u ? m : n) * k;
    for (int64_t t = 0; t < extent; ++t) grad[t] = T(0);
    for (int64_t e = begin; e < end; ++e) {
      const T* u = U + rows[e] * k;
      const T* v = V + cols[e] * k;
      const T z = dot(u, v) - vals[e];
      T* g = grad + (for_u ? rows[e] : cols[e]) * k;
      const T* partner = for_u ? v : u;
      for (int64_t c = 0; c < k; ++c) g[c] += z * partner[c];
    }
  }

  // loss(U, V) and both gradients in one pass over the entries, each entry's dot formed once:
  // the same sums in the same order as loss() and gradient() make apart.
  LRH_HD double loss_and_gradients(const T* U, const T* V, int64_t begin, int64_t end, T* grad_u,
                                   T* grad_v) const {
    for (int64_t t = 0; t < m * k; ++t) grad_u[t] = T(0);
    for (int64_t t = 0; t < n * k; ++t) grad_v[t] = T(0);
    double total = 0.0;
    for (int64_t e = begin; e < end; ++e) {
      const T* u = U + rows[e] * k;
      const T* v = V + cols[e] * k;
      const T z = dot(u, v) - vals[e];
      total += static_cast<double>(z) * static_cast<double>(z);
      T* g_u = grad_u + rows[e] * k;
      T* g_v = grad_v + cols[e] * k;
      for (int64_t c = 0; c < k; ++c) g_u[c] += z * v[c];
      for (int64_t c = 0; c < k; ++c) g_v[c] += z * u[c];
    }
    return 0.5 * total;
  }

  // grad (rows x k) <- grad (P^T P + damping I)^-1; false if that Gram is singular.
  LRH_HD bool precondition(T* grad, int64_t grad_rows, const T* P, int64_t p_rows, T damping, T* gram) const {
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t c = 0; c <= a; ++c) {
        T acc = T(0);
        for (int64_t i = 0; i < p_rows; ++i) acc += P[i * k + a] * P[i * k + c];
        gram[a * k + c] = acc + (a == c ? damping : T(0));
      }
    }
    if (!ops::ldlt_factor(gram, k)) return false;
    for (int64_t i = 0; i < grad_rows; ++i) ops::ldlt_apply(gram, grad + i * k, k);
    return true;
  }

  // Problem b: from (U, V) (its (m, k) and (n, k) blocks) write the next iterate to (U1, V1).
  LRH_HD Outcome operator()(int64_t b, const T* U, const T* V, T* U1, T* V1, T step, T damping) const {
    const int64_t begin = offsets[b], end = offsets[b + 1];
    T* grad_u = scratch + b * ((m + n) * k + 2 * k * k);
    T* grad_v = grad_u + m * k;
    T* gram = grad_v + n * k;
    const bool scaled = method == StepMethod::scaled || method == StepMethod::scaled_damped;
    const T shift = method == StepMethod::scaled_damped ? damping : T(0);
    bool usable = true;
    const double current = method == StepMethod::alternating
                               ? loss(U, V, begin, end)
                               : loss_and_gradients(U, V, begin, end, grad_u, grad_v);
    if (method != StepMethod::alternating) {
      if (scaled) {
        usable = precondition(grad_u, m, V, n, shift, gram) && precondition(grad_v, n, U, m, shift, gram + k * k);
      }
    }
    Outcome outcome{current, 0.0, step, 0, true};
    const T first_step = step;
    for (int attempt = 0; usable && attempt < kMaxHalvings; ++attempt) {
      if (method == StepMethod::alternating) {
        gradient(U, V, begin, end, true, grad_u);
        for (int64_t t = 0; t < m * k; ++t) U1[t] = U[t] - step * grad_u[t];
        gradient(U1, V, begin, end, false, grad_v);  // V's step sees the new U
        for (int64_t t = 0; t < n * k; ++t) V1[t] = V[t] - step * grad_v[t];
      } else {
        for (int64_t t = 0; t < m * k; ++t) U1[t] = U[t] - step * grad_u[t];
        for (int64_t t = 0; t < n * k; ++t) V1[t] = V[t] - step * grad_v[t];
      }
      const double next = loss(U1, V1, begin, end);
      if (next == next && next <= current * (1.0 + kStepGrowthAllowed)) {
        outcome.loss = next;
        outcome.stuck = false;
        break;
      }
      step *= T(0.5);
      ++outcome.halvings;
    }
    if (outcome.stuck) {  // keep the iterate: the problem is stationary at working precision
      for (int64_t t = 0; t < m * k; ++t) U1[t] = U[t];
      for (int64_t t = 0; t < n * k; ++t) V1[t] = V[t];
    }
    outcome.step = outcome.stuck ? first_step : step;
#if defined(__CUDACC__)
    outcome.change = relative_change(U, V, U1, V1, m, n, k);
#else
    outcome.change = relative_change_by_rows(U, V, U1, V1, m, n, k);
#endif
    return outcome;
  }
};

// Problem b of a batch, as both backends run it: a finished problem keeps its factors, a running
// one takes a step and records its outcome in the per-problem arrays.
template <class T, class I>
LRH_HD void step_problem(const CompletionStep<T, I>& step, int64_t b, const uint8_t* active, const T* U, const T* V,
                         T* U1, T* V1, double* steps, const double* dampings, double* losses, double* changes,
                         int64_t* halvings, uint8_t* stuck) {
  const int64_t mk = step.m * step.k, nk = step.n * step.k;
  const T *u = U + b * mk, *v = V + b * nk;
  T *u1 = U1 + b * mk, *v1 = V1 + b * nk;
  if (!active[b]) {
    for (int64_t t = 0; t < mk; ++t) u1[t] = u[t];
    for (int64_t t = 0; t < nk; ++t) v1[t] = v[t];
    return;
  }
  const auto outcome = step(b, u, v, u1, v1, static_cast<T>(steps[b]), static_cast<T>(dampings[b]));
  losses[b] = outcome.loss;
  changes[b] = outcome.change;
  steps[b] = static_cast<double>(outcome.step);
  halvings[b] += outcome.halvings;
  stuck[b] = outcome.stuck ? 1 : 0;
}

}  // namespace lowrank_hpc::solvers
