// Kernelized low-rank product K = f(U V^T): compile-time dispatch of f (apply_kernel, in
// kernel_functions.hpp, is the per-entry step after the vendor GEMM on both backends), and the
// competition order of the top-k selection.
#pragma once
#include <cstdint>
#include <limits>
#include <type_traits>

#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::ops {

template <KernelFunction F>
using KernelConstant = std::integral_constant<KernelFunction, F>;

// Calls body(KernelConstant<f>{}) so the loops inside see f as a compile-time constant: the
// per-entry switch of apply_kernel folds away and the simple kernels vectorize.
template <class Body>
inline auto with_kernel(KernelFunction f, Body&& body) {
  switch (f) {
    case KernelFunction::relu: return body(KernelConstant<KernelFunction::relu>{});
    case KernelFunction::exponential: return body(KernelConstant<KernelFunction::exponential>{});
    case KernelFunction::tanh: return body(KernelConstant<KernelFunction::tanh>{});
    case KernelFunction::piecewise_linear: return body(KernelConstant<KernelFunction::piecewise_linear>{});
    case KernelFunction::identity:
    default: return body(KernelConstant<KernelFunction::identity>{});
  }
}

// The argument |f(x)| grows with: |x| for the odd kernels (identity, tanh, piecewise_linear),
// x for relu and exponential; NaN/inf as +inf (their f is NaN: ranked first, and reported).
template <KernelFunction F, class T>
LRH_HD T rank_argument(T x) {
  constexpr bool kOdd = !(F == KernelFunction::relu || F == KernelFunction::exponential);
  const T argument = kOdd && x < T(0) ? -x : x;
  return is_finite(x) ? argument : std::numeric_limits<T>::infinity();  // a select: the loops vectorize
}

// One competitor of the top-k step: |f(x)| and its column (row mode) or flat index.
template <class T>
struct Candidate {
  T magnitude;
  int64_t index;
};

// NaN ranks as +inf so the order stays total (std::sort needs it); the NaN is reported anyway.
template <class T>
LRH_HD Candidate<T> make_candidate(T value, int64_t index) {
  const T magnitude = value < T(0) ? -value : value;
  return {magnitude == magnitude ? magnitude : std::numeric_limits<T>::infinity(), index};
}

// The competition order: larger magnitude first, ties to the smaller index (deterministic).
template <class T>
LRH_HD bool ranks_before(const Candidate<T>& a, const Candidate<T>& b) {
  return a.magnitude > b.magnitude || (a.magnitude == b.magnitude && a.index < b.index);
}

}  // namespace lowrank_hpc::ops
