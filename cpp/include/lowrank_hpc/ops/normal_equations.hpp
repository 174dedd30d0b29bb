// ALS normal equations, one key row at a time, shared by the CPU driver and the CUDA kernel.
//
// One half-step of ALS fixes the other factor F and minimises, for every key row i,
//     sum over observed (i, j) of (v_ij - <u_i, f_j>)^2 + lambda_i ||u_i||^2,
// whose minimiser solves (sum_j f_j f_j^T + lambda_i I) u_i = sum_j v_ij f_j. Summed over both
// half-steps this is the objective
//     sum over observed (v_k - <u_i, v_j>)^2 + reg * sum_i w_i ||u_i||^2 + reg * sum_j w_j ||v_j||^2
// with w = 1 (reg_scaling "none") or w = the row's / column's number of observations ("count",
// ALS-WR as in Spark MLlib), so lambda_i = reg * w_i.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"

namespace lowrank_hpc::ops {

// The CSR entries of the key rows of a batch of problems (block-diagonal layout: problem b's
// key row i is flattened row b * n_key + i, its other-side row j is F row b * n_other + j).
// CSR entry j has other index others[j] and value vals[perm[j]] (vals[j] when perm is null).
// R > 0 fixes the rank at compile time (the r x r loops of small ranks unroll); R = 0 reads r.
template <class T, class I, int R = 0>
struct NormalEquations {
  const int64_t* indptr;  // (batch * n_key + 1)
  const int64_t* perm;    // (nnz) or null
  const I* others;        // (nnz), in CSR order, each in [0, n_other)
  const T* vals;          // (nnz), in input order
  const T* F;             // (batch, n_other, r), the fixed factor
  int64_t n_key, n_other, r;
  T reg;
  bool count_scaling;

  LRH_HD int64_t count(int64_t row) const { return indptr[row + 1] - indptr[row]; }
  LRH_HD T lambda(int64_t row) const { return count_scaling ? reg * static_cast<T>(count(row)) : reg; }
  LRH_HD T value(int64_t j) const { return vals[perm ? perm[j] : j]; }
  // The row's problem's block of F, found once per row (a division per entry would dominate).
  LRH_HD const T* factor_block(int64_t row) const { return F + (row / n_key) * n_other * r; }
  LRH_HD const T* factor_row(const T* block, int64_t j) const {
    return block + static_cast<int64_t>(others[j]) * r;
  }

  // G[a, c] (c <= a) of the row's system, entries summed in CSR order (device: one thread each).
  LRH_HD T gram_entry(int64_t row, int64_t a, int64_t c) const {
    const T* block = factor_block(row);
    T acc = T(0);
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
      const T* f = factor_row(block, j);
      acc += f[a] * f[c];
    }
    return a == c ? acc + lambda(row) : acc;
  }

  // g[a] of the row's right-hand side, entries summed in CSR order.
  LRH_HD T rhs_entry(int64_t row, int64_t a) const {
    const T* block = factor_block(row);
    T acc = T(0);
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) acc += value(j) * factor_row(block, j)[a];
    return acc;
  }

  // The whole lower triangle of G (row-major r x r) and g in one pass over the entries (host);
  // every sum runs in the same order as gram_entry / rhs_entry.
  LRH_HD void accumulate(int64_t row, T* G, T* g) const { accumulate(row, row / n_key, G, g); }

  // The same, for a caller that walks problems and knows the row's problem b (no division).
  LRH_HD void accumulate(int64_t row, int64_t b, T* G, T* g) const {
    if constexpr (R > 0) {
      // A compile-time rank keeps the sums in registers, not in G and g (memory round trips).
      T Gl[R * R] = {}, gl[R] = {};
      accumulate_into(row, b, R, Gl, gl);
      for (int64_t t = 0; t < R * R; ++t) G[t] = Gl[t];
      for (int64_t t = 0; t < R; ++t) g[t] = gl[t];
    } else {
      for (int64_t t = 0; t < r * r; ++t) G[t] = T(0);
      for (int64_t t = 0; t < r; ++t) g[t] = T(0);
      accumulate_into(row, b, r, G, g);
    }
  }

  // Adds the row's terms to zeroed G (lower triangle) and g, then the shift on G's diagonal.
  LRH_HD void accumulate_into(int64_t row, int64_t b, int64_t rank, T* G, T* g) const {
    const int64_t r = static_or<R>(rank);
    const T* block = F + b * n_other * r;
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
      const T* f = factor_row(block, j);
      const T v = value(j);
      for (int64_t a = 0; a < r; ++a) {
        g[a] += v * f[a];
        for (int64_t c = 0; c <= a; ++c) G[a * r + c] += f[a] * f[c];
      }
    }
    const T shift = lambda(row);
    for (int64_t a = 0; a < r; ++a) G[a * r + a] += shift;
  }
};

// Solves G x = g in place for a symmetric positive definite r x r G (row-major; only its lower
// triangle is read, and overwritten by the Cholesky factor L with 1 / L[j, j] on its diagonal);
// x overwrites g. Returns false,
// leaving G and g partly overwritten, when G is not numerically positive definite: a pivot
// that is not finite or is <= r * eps * G[j, j] (cancellation down to rounding noise).
template <class T, int R = 0>
LRH_HD bool cholesky_solve(T* G, T* g, int64_t rank) {
  const int64_t r = static_or<R>(rank);
  const T noise = static_cast<T>(r) * std::numeric_limits<T>::epsilon();
  for (int64_t j = 0; j < r; ++j) {
    T pivot = G[j * r + j];
    const T scale = pivot;
    for (int64_t k = 0; k < j; ++k) pivot -= G[j * r + k] * G[j * r + k];
    if (!is_finite(pivot) || !(pivot > noise * scale) || !(pivot > T(0))) return false;
    // The diagonal slot keeps 1 / L[j, j]: one division per pivot, multiplications after it
    // (divisions dominate the tiny systems of small ranks).
    const T inverse = T(1) / std::sqrt(pivot);
    G[j * r + j] = inverse;
    for (int64_t i = j + 1; i < r; ++i) {
      T entry = G[i * r + j];
      for (int64_t k = 0; k < j; ++k) entry -= G[i * r + k] * G[j * r + k];
      G[i * r + j] = entry * inverse;
    }
  }
  for (int64_t i = 0; i < r; ++i) {  // L y = g
    T entry = g[i];
    for (int64_t k = 0; k < i; ++k) entry -= G[i * r + k] * g[k];
    g[i] = entry * G[i * r + i];
  }
  for (int64_t i = r - 1; i >= 0; --i) {  // L^T x = y
    T entry = g[i];
    for (int64_t k = i + 1; k < r; ++k) entry -= G[k * r + i] * g[k];
    g[i] = entry * G[i * r + i];
  }
  return true;
}

// Finishes one row from its assembled system: out_row = G^-1 g, or zeros for a row without
// observations or a singular system. Returns true when the row counts as singular: a failed
// factorisation, or no observations with reg == 0 (an unregularised row with no data).
template <class T, int R = 0>
LRH_HD bool solve_row(T* G, T* g, int64_t rank, int64_t count, T reg, T* out_row) {
  const int64_t r = static_or<R>(rank);
  const bool solved = count > 0 && cholesky_solve<T, R>(G, g, r);
  for (int64_t c = 0; c < r; ++c) out_row[c] = solved ? g[c] : T(0);
  return !solved && (count > 0 || !(reg > T(0)));
}

}  // namespace lowrank_hpc::ops
