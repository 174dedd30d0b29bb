#include <vector>

#include "lowrank_hpc/core/instantiate.hpp"
#include "cpu_backend.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::cpu {

namespace {

template <class T, class I, int R>
int64_t als_update_rows_rank(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                             const T* F, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg,
                             bool count_scaling, const uint8_t* active, T* out) {
  const ops::NormalEquations<T, I, R> equations{indptr, perm, others, vals, F, n_key, n_other, r, reg,
                                                count_scaling};
  const int64_t n_rows = batch * n_key, nnz = indptr[n_rows];
  int64_t singular = 0;
  // Work per row is about entries * r^2 (the Gram) plus r^3 / 3 (the factorisation).
#pragma omp parallel reduction(+ : singular) if ((nnz + n_rows * r) * r * r > kParallelMinWork)
  {
    std::vector<T> scratch(static_cast<size_t>(r * r + r));  // per thread: G then g
    T* G = scratch.data();
    T* g = G + r * r;
    // (problem, row) pairs: the problem comes from the loop, not from a division per row.
#pragma omp for collapse(2) schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < n_key; ++i) {
        if (active && !active[b]) continue;
        const int64_t row = b * n_key + i;
        equations.accumulate(row, b, G, g);
        singular += ops::solve_row<T, R>(G, g, r, equations.count(row), reg, out + row * r) ? 1 : 0;
      }
    }
  }
  return singular;
}

// Weighted squared norms of a factor block: sum_i w_i ||X_i||^2, w = count or 1.
template <class T>
double penalty(const T* X, const int64_t* indptr, int64_t first_row, int64_t rows, int64_t r, bool count_scaling) {
  double total = 0.0;
  for (int64_t i = 0; i < rows; ++i) {
    double squared = 0.0;
    for (int64_t c = 0; c < r; ++c) squared += static_cast<double>(X[i * r + c]) * X[i * r + c];
    const int64_t row = first_row + i;
    total += (count_scaling ? static_cast<double>(indptr[row + 1] - indptr[row]) : 1.0) * squared;
  }
  return total;
}

template <class T, class I, int R>
int64_t als_iterations_rank(const AlsBatch<T, I>& data, int64_t r, T reg, bool count_scaling,
                            const uint8_t* active, T* U, T* V, double* losses, double* changes) {
  const int64_t batch = data.batch, m = data.m, n = data.n;
  const ops::NormalEquations<T, I, R> by_rows{data.row_indptr, nullptr, data.row_others, data.row_vals, V,
                                              m, n, r, reg, count_scaling};
  const ops::NormalEquations<T, I, R> by_cols{data.col_indptr, nullptr, data.col_others, data.col_vals, U,
                                              n, m, r, reg, count_scaling};
  int64_t singular = 0;
#pragma omp parallel reduction(+ : singular) if (data.offsets[batch] * r * r > kParallelMinWork)
  {
    // Per thread: one row's system, and the problem's previous factors for its measures.
    std::vector<T> scratch(static_cast<size_t>(r * r + r + (m + n) * r));
    T* G = scratch.data();
    T* g = G + r * r;
    T* U0 = g + r;
    T* V0 = U0 + m * r;
#pragma omp for schedule(dynamic, 8)
    for (int64_t b = 0; b < batch; ++b) {
      if (!active[b]) continue;
      T* u = U + b * m * r;
      T* v = V + b * n * r;
      for (int64_t t = 0; t < m * r; ++t) U0[t] = u[t];
      for (int64_t t = 0; t < n * r; ++t) V0[t] = v[t];
      // Both half-steps and the measures run while the problem's data is still in cache.
      for (int64_t i = 0; i < m; ++i) {
        const int64_t row = b * m + i;
        by_rows.accumulate(row, b, G, g);
        singular += ops::solve_row<T, R>(G, g, r, by_rows.count(row), reg, u + i * r) ? 1 : 0;
      }
      for (int64_t j = 0; j < n; ++j) {
        const int64_t col = b * n + j;
        by_cols.accumulate(col, b, G, g);
        singular += ops::solve_row<T, R>(G, g, r, by_cols.count(col), reg, v + j * r) ? 1 : 0;
      }
      const double fit = solvers::half_squared_residuals(u, v, data.rows, data.cols, data.vals, data.offsets[b],
                                                         data.offsets[b + 1], r);
      const double norms = penalty(u, data.row_indptr, b * m, m, r, count_scaling) +
                           penalty(v, data.col_indptr, b * n, n, r, count_scaling);
      losses[b] = fit + 0.5 * static_cast<double>(reg) * norms;
      changes[b] = solvers::relative_change(U0, V0, static_cast<const T*>(u), static_cast<const T*>(v), m, n, r);
    }
  }
  return singular;
}

}  // namespace

template <class T, class I>
int64_t als_iterations(const AlsBatch<T, I>& data, int64_t r, T reg, bool count_scaling, const uint8_t* active,
                       T* U, T* V, double* losses, double* changes) {
  return dispatch_rank(r, [&](auto rank) {
    return als_iterations_rank<T, I, decltype(rank)::value>(data, r, reg, count_scaling, active, U, V, losses,
                                                            changes);
  });
}

template <class T, class I>
int64_t als_update_rows(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals, const T* F,
                        int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg, bool count_scaling,
                        const uint8_t* active, T* out) {
  return dispatch_rank(r, [&](auto rank) {
    return als_update_rows_rank<T, I, decltype(rank)::value>(indptr, perm, others, vals, F, batch, n_key, n_other,
                                                             r, reg, count_scaling, active, out);
  });
}

#define LRH_INSTANTIATE(T, I)                                                                              \
  template int64_t als_iterations<T, I>(const AlsBatch<T, I>&, int64_t, T, bool, const uint8_t*, T*, T*, double*,  \
                                        double*);                                                               \
  template int64_t als_update_rows<T, I>(const int64_t*, const int64_t*, const I*, const T*, const T*, int64_t, \
                                         int64_t, int64_t, int64_t, T, bool, const uint8_t*, T*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
