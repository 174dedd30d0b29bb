#include <vector>

#include "cpu_backend.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"

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

}  // namespace

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
  template int64_t als_update_rows<T, I>(const int64_t*, const int64_t*, const I*, const T*, const T*, int64_t, \
                                         int64_t, int64_t, int64_t, T, bool, const uint8_t*, T*);
LRH_INSTANTIATE(float, int32_t)
LRH_INSTANTIATE(float, int64_t)
LRH_INSTANTIATE(double, int32_t)
LRH_INSTANTIATE(double, int64_t)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
