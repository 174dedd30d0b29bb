// Adafactor (Shazeer & Stern, 2018) with factored second moments, in torch.optim.Adafactor's
// variant (eps1 floors the estimate instead of being added to G^2) plus the paper's and Hugging
// Face's options: the per-entry and per-parameter math of one step, shared by the CPU driver
// (cpp/src/adafactor_cpu.cpp) and the CUDA kernels (cuda/src/adafactor.cu).
//
// A launch steps a batch of parameters of one shape, slices x rows x cols (the last two
// dimensions factored; rows = 1 and an unfactored moment for a vector):
//   pass 1  sums of G^2 per row and per column, and of X^2 (the parameter scale);
//   then    R = lerp(R, rowmean(G^2), w), C = lerp(C, colmean(G^2), w), w = t^beta2_decay;
//   pass 2  sum of U^2, U = G / sqrt(max(R_i C_j / max(mean(R), eps1), eps1^2)) (roots per row and column);
//   pass 3  X = X (1 - lr wd) - alpha / max(1, RMS(U) / d) U  (or minus the first moment of that).
#pragma once
#include <cmath>
#include <cstdint>

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc::ops {

// The options of a step, as the bindings pass them (doubles and flags).
struct AdafactorOptions {
  double lr;            // relative_step: the cap of the relative step size; else the step size
  double beta2_decay;   // 1 - beta2_t = t^beta2_decay
  double eps1;          // floor of mean(R) and (squared) of each entry of the estimate
  double eps2;          // floor of RMS(X) in the parameter scaling
  double d;             // clipping threshold of RMS(U)
  double weight_decay;  // decoupled, torch's form: X *= 1 - lr * weight_decay
  double beta1;         // first moment of the scaled update (0: none)
  bool maximize;
  bool relative_step;    // rho_t = min(lr or 1e-6 t (warmup_init), 1 / sqrt(t)); else rho_t = lr
  bool scale_parameter;  // alpha_t = max(eps2, RMS(X)) rho_t; else alpha_t = rho_t
  bool warmup_init;
};

// Every parameter of a launch: slices x rows x cols, C-contiguous.
struct AdafactorShape {
  int64_t slices, rows, cols;
  bool factored;  // false: a vector (slices = rows = 1) with an unfactored moment in col_var
  LRH_HD int64_t size() const { return slices * rows * cols; }
};

// One parameter of a batch and its state. row_var (slices, rows), col_var (slices, cols) or the
// unfactored moment (cols); exp_avg null without a first moment. The schedule of its step is
// computed on the host (adafactor_schedule), so both backends use the same doubles.
template <class P, class S>
struct AdafactorProblem {
  P* param;
  const P* grad;
  S* row_var;
  S* col_var;
  S* exp_avg;
  double moment_weight;  // 1 - beta2_t
  double rho;            // the relative step size rho_t
};

template <class T>
LRH_HD T max_of(T a, T b) { return a > b ? a : b; }
template <class T>
LRH_HD T min_of(T a, T b) { return a < b ? a : b; }

template <class T>
LRH_HD T square_root(T x) {
#if LRH_ON_DEVICE
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// (1 - beta2_t, rho_t) of step t >= 1, on the host only (pow differs between libm and CUDA).
inline void adafactor_schedule(const AdafactorOptions& o, double t, double* moment_weight, double* rho) {
  *moment_weight = std::pow(t, o.beta2_decay);
  if (!o.relative_step) {
    *rho = o.lr;
  } else {
    const double cap = o.warmup_init ? 1e-6 * t : o.lr;
    *rho = min_of(cap, 1.0 / std::sqrt(t));
  }
}

// alpha_t from the sum of X^2 before the step.
LRH_HD double adafactor_step_size(const AdafactorOptions& o, double rho, double sum_param_squares, int64_t size) {
  return o.scale_parameter ? max_of(o.eps2, square_root(sum_param_squares / double(size))) * rho : rho;
}

// max(1, RMS(U) / d): the divisor of update clipping.
LRH_HD double adafactor_clip_divisor(const AdafactorOptions& o, double sum_update_squares, int64_t size) {
  return max_of(1.0, square_root(sum_update_squares / double(size)) / o.d);
}

// torch's lerp: from + w (to - from), written from the far end for w >= 0.5 (exact at w = 1).
template <class S>
LRH_HD S lerp(S from, S to, S weight) {
  return weight < S(0.5) ? from + weight * (to - from) : to - (to - from) * (S(1) - weight);
}

// The moment after step t from the mean of G^2 over its row or column (summed in double).
template <class S>
LRH_HD S updated_moment(S moment, double sum_of_squares, int64_t count, double moment_weight) {
  return lerp(moment, static_cast<S>(sum_of_squares / double(count)), static_cast<S>(moment_weight));
}

// 1 / max(mean(R), eps1): scales R_i into the row factor of the rank-1 estimate R_i C_j / mean(R).
LRH_HD double adafactor_row_scale(const AdafactorOptions& o, double sum_row_var, int64_t rows) {
  return 1.0 / max_of(sum_row_var / double(rows), o.eps1);
}

// 1 / sqrt(v): inf at 0, which the floor of AdafactorEntry::direction turns into 1 / eps1.
template <class S>
LRH_HD S inverse_root(S v) { return S(1) / square_root(v); }

// The entries of U = G / sqrt(max(V, eps1^2)) and of the step, in the compute type S.
// 1 / sqrt(max(R_i C_j / mean(R), eps1^2)) = min(row_root * col_root, 1 / eps1) with the roots of
// R_i / mean(R) and C_j taken once per row and column: two products per entry, no root or division.
template <class S>
struct AdafactorEntry {
  S sign;           // -1 when maximizing
  S inverse_eps1;   // 1 / eps1 (inf for eps1 = 0)
  S decay;          // 1 - lr * weight_decay
  S scale;          // alpha_t / max(1, RMS(U) / d); set after pass 2
  S beta1, one_minus_beta1;
  bool momentum;

  LRH_HD AdafactorEntry(const AdafactorOptions& o)
      : sign(o.maximize ? S(-1) : S(1)),
        inverse_eps1(static_cast<S>(1.0 / o.eps1)),  // IEEE: inf for eps1 = 0
        decay(static_cast<S>(1.0 - o.lr * o.weight_decay)),
        scale(0),
        beta1(static_cast<S>(o.beta1)),
        one_minus_beta1(static_cast<S>(1.0 - o.beta1)),
        momentum(o.beta1 != 0.0) {}

  // U's entry for gradient g, the row's inverse root (1 for a vector) and the column's (entry's).
  LRH_HD S direction(S g, S row_root, S col_root) const {
    return sign * g * min_of(row_root * col_root, inverse_eps1);
  }

  // The parameter after the step; exp_avg (when momentum) holds the first moment of scale * u.
  LRH_HD S step(S param, S u, S* exp_avg) const {
    const S decayed = param * decay;
    if (!momentum) return decayed - scale * u;
    const S moment = beta1 * *exp_avg + one_minus_beta1 * (scale * u);
    *exp_avg = moment;
    return decayed - moment;
  }
};

// The inverse root of row r's factor R_r / max(mean(R), eps1) (row_scale from adafactor_row_scale).
template <class S>
LRH_HD S adafactor_row_root(S row_var, double row_scale) {
  return inverse_root(static_cast<S>(row_var * row_scale));
}

// Status of one parameter after a launch (the bindings' status array).
enum class AdafactorStatus : int64_t { ok = 0, nonfinite_grad = 1, nonfinite_param = 2 };

// The status from pass 1's sums in double: a NaN/inf entry makes its sum NaN/inf.
LRH_HD int64_t adafactor_status(double sum_grad_squares, double sum_param_squares) {
  const double g = sum_grad_squares - sum_grad_squares, p = sum_param_squares - sum_param_squares;
  if (g != g) return static_cast<int64_t>(AdafactorStatus::nonfinite_grad);
  if (p != p) return static_cast<int64_t>(AdafactorStatus::nonfinite_param);
  return static_cast<int64_t>(AdafactorStatus::ok);
}

}  // namespace lowrank_hpc::ops

// The (parameter storage, state and compute) types of a step: M(P, S).
#define LRH_FOR_EACH_ADAFACTOR_TYPE(M) \
  M(float, float)                      \
  M(double, double)                    \
  M(::lowrank_hpc::bfloat16, float)    \
  M(::lowrank_hpc::float16, float)

// The explicit instance of a backend's launcher for one (P, S), expanded in its namespace.
#define LRH_INSTANTIATE_ADAFACTOR(P, S)                                                              \
  template int adafactor_step<P, S>(const ::lowrank_hpc::ops::AdafactorProblem<P, S>*, int64_t,     \
                                    ::lowrank_hpc::ops::AdafactorShape,                              \
                                    const ::lowrank_hpc::ops::AdafactorOptions&, int64_t*, void*);
