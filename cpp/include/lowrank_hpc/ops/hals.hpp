// Hierarchical alternating least squares (HALS): the coordinate-descent sweep of non-negative
// matrix factorization (Cichocki & Phan 2009; scikit-learn's NMF(solver="cd")). For the factor
// W (n x k) against the fixed factor H, with G = H H^T (k x k) and C = X H^T (n x k) formed by
// the vendor GEMM, every row i of W is an independent non-negative least-squares problem
//   min_{w >= 0} 1/2 w^T (G + l2 I) w - w^T (C_i - l1)
// and one sweep visits its coordinates t in the given order:
//   grad = sum_r G'[t, r] w[r] - (C[i, t] - l1),  G' = G + l2 I
//   w[t] = max(w[t] - grad / G'[t, t], 0)          (skipped when G'[t, t] == 0)
// The projected gradient |min(grad, 0)| (w[t] == 0) or |grad| (w[t] > 0), met at each visit,
// is summed into the row's violation: scikit-learn's stopping measure.
// Compiled by g++ (OpenMP driver, several rows at once in SIMD lanes: V is a vector of rows)
// and nvcc (one thread per row: V is T); each lane rounds exactly as the scalar code does.
#pragma once
#include <cstdint>
#include <type_traits>

#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc::ops {

template <class V>
LRH_HD V hals_zero() {
  V zero{};
  return zero;
}

// max(x, 0) and |x| written with comparisons, so that they also take GCC lane vectors.
template <class V>
LRH_HD V hals_relu(V x) {
  const V zero = hals_zero<V>();
  return x > zero ? x : zero;
}

template <class V>
LRH_HD V hals_abs(V x) {
  const V zero = hals_zero<V>();
  return x < zero ? -x : x;
}

// True when every lane of a is <= the same lane of b (a plain comparison for one row).
template <class V>
LRH_HD bool hals_all_at_most(V a, V b) {
  if constexpr (std::is_arithmetic_v<V>) {
    return a <= b;
  } else {
    const auto below = a <= b;
    for (unsigned lane = 0; lane < sizeof(V) / sizeof(a[0]); ++lane)
      if (!below[lane]) return false;
    return true;
  }
}

template <class T>
struct HalsSweep {
  T l1;  // subtracted from every entry of C (the l1 penalty of W's entries)
  T l2;  // added to the diagonal of G (the l2 penalty)

  // One sweep over the k coordinates of a row (or of W rows at once, one per lane of V):
  // w[r] and cross[r] hold entry r of the row(s), gram is G row-major (symmetric), order a
  // permutation of 0..k-1. Adds the row's violation to *violation and the sum of |change| of
  // its entries to *change. w is updated in place.
  template <class V>
  LRH_HD void sweep(V* w, const V* cross, const T* gram, const int64_t* order, int64_t k, V* violation,
                    V* change) const {
    const V zero = hals_zero<V>();
    for (int64_t s = 0; s < k; ++s) {
      const int64_t t = order[s];
      const T* g = gram + t * k;
      const T hess = g[t] + l2;
      // The order of the additions is scikit-learn's (_cdnmf_fast): -(C - l1), then r = 0..k-1.
      V grad = -(cross[t] - l1);
      for (int64_t r = 0; r < k; ++r) grad += (r == t ? hess : g[r]) * w[r];
      const V lower = grad < zero ? grad : zero;
      const V projected = w[t] == zero ? lower : grad;
      *violation += hals_abs(projected);
      if (hess != T(0)) {
        const V updated = hals_relu(w[t] - grad / hess);
        *change += hals_abs(updated - w[t]);
        w[t] = updated;
      }
    }
  }

  // Up to `sweeps` sweeps of one row (of a group of rows); the violation is the first sweep's
  // (the measure at the point the half-step started from, as with one sweep). With
  // inner_tol > 0 the sweeps stop once a sweep changes every row by at most inner_tol times
  // what the first sweep changed it (accelerated HALS, Gillis & Glineur 2012); inner_tol = 0
  // runs all of them.
  template <class V>
  LRH_HD V row(V* w, const V* cross, const T* gram, const int64_t* order, int64_t k, int sweeps,
               T inner_tol) const {
    V violation = hals_zero<V>(), first = hals_zero<V>();
    sweep(w, cross, gram, order, k, &violation, &first);
    const V bound = first * inner_tol;
    for (int repeat = 1; repeat < sweeps; ++repeat) {
      V ignored = hals_zero<V>(), change = hals_zero<V>();
      sweep(w, cross, gram, order, k, &ignored, &change);
      if (inner_tol > T(0) && hals_all_at_most(change, bound)) break;
    }
    return violation;
  }
};

}  // namespace lowrank_hpc::ops
