// Element-wise kernels K = f(U V^T) that raise the rank of a merged low-rank update.
#pragma once
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/ops/elementary.hpp"
#include "lowrank_hpc/ops/finite.hpp"

namespace lowrank_hpc::ops {

// Order and values match lowrank_hpc.ops.kernel_product.KERNELS on the Python side.
enum class KernelFunction : int { identity = 0, relu = 1, exponential = 2, tanh = 3, piecewise_linear = 4 };

template <class T>
LRH_HD T apply_kernel(KernelFunction f, T x) {
  // NaN/inf in (an overflowed U V^T) comes out NaN, never saturated to a finite value (tanh(inf)
  // = 1, relu(-inf) = 0): the callers count non-finite results and raise.
  if (!is_finite(x)) return x - x;
  switch (f) {
    case KernelFunction::relu: return x > T(0) ? x : T(0);
    case KernelFunction::exponential: return exp_arith(x);
    case KernelFunction::tanh: return tanh_arith(x);
    // The piecewise-linear surrogate of tanh ("hard tanh"): clamp to [-1, 1].
    case KernelFunction::piecewise_linear: return x < T(-1) ? T(-1) : (x > T(1) ? T(1) : x);
    case KernelFunction::identity:
    default: return x;
  }
}

}  // namespace lowrank_hpc::ops
