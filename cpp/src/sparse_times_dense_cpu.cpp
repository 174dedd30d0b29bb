#include <algorithm>
#include <cstring>
#include <vector>
#include <omp.h>

#include "cpu_backend.hpp"
#include "lowrank_hpc/core/batch.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/sparse_times_dense.hpp"

namespace lowrank_hpc::cpu {

namespace {
// Per-thread histograms cost threads * rows counters; past this, sort on one thread.
constexpr int64_t kMaxHistogramBytes = int64_t(1) << 30;
}

template <class I>
int64_t coo_to_csr(const I* keys, const int64_t* offsets, int64_t batch, int64_t n_key,
                   int64_t nnz, int64_t* indptr, int64_t* perm) {
  const int64_t n_rows = batch * n_key;
  int64_t threads = omp_get_max_threads();
  if (threads * (n_rows + 1) * int64_t(sizeof(int64_t)) > kMaxHistogramBytes) threads = 1;
  // counts[t][row]: entries of row in thread t's chunk. Chunk t precedes chunk t+1, so the
  // scatter below is a stable sort and the result does not depend on the thread count.
  std::vector<int64_t> counts(static_cast<size_t>(threads * (n_rows + 1)), 0);
  int64_t first_bad = nnz;  // shared: the scan and the scatter run only on valid keys
#pragma omp parallel num_threads(threads) if (nnz > kParallelMinWork)
  {
    const int64_t tid = omp_get_thread_num(), used = omp_get_num_threads();
    const int64_t begin = nnz * tid / used, end = nnz * (tid + 1) / used;
    int64_t* mine = counts.data() + tid * (n_rows + 1);
    int64_t my_bad = nnz;
    int64_t b = begin < end ? find_batch(offsets, batch, begin) : 0;
    for (int64_t k = begin; k < end; ++k) {
      while (k >= offsets[b + 1]) ++b;
      if (!ops::index_in_range(keys[k], n_key)) { my_bad = std::min(my_bad, k); continue; }
      ++mine[b * n_key + static_cast<int64_t>(keys[k])];
    }
#pragma omp critical(lrh_coo_to_csr_bad)
    first_bad = std::min(first_bad, my_bad);
#pragma omp barrier
#pragma omp single
    if (first_bad == nnz) {
      // Exclusive scan in (row, thread) order turns counts into write positions.
      int64_t running = 0;
      for (int64_t row = 0; row < n_rows; ++row) {
        indptr[row] = running;
        for (int64_t t = 0; t < used; ++t) {
          int64_t& c = counts[t * (n_rows + 1) + row];
          const int64_t here = c;
          c = running;
          running += here;
        }
      }
      indptr[n_rows] = running;
    }
    if (first_bad == nnz) {
      b = begin < end ? find_batch(offsets, batch, begin) : 0;
      for (int64_t k = begin; k < end; ++k) {
        while (k >= offsets[b + 1]) ++b;
        perm[mine[b * n_key + static_cast<int64_t>(keys[k])]++] = k;
      }
    }
  }
  return first_bad == nnz ? -1 : first_bad;
}

template <class T, class I>
int64_t csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                        const T* B, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out) {
  const ops::SparseTimesDense<T> product{B, n_key, n_other, r};
  const int64_t n_rows = batch * n_key;
  int64_t first_bad = indptr[n_rows];
#pragma omp parallel for schedule(dynamic, 64) reduction(min : first_bad) if (indptr[n_rows] * r > kParallelMinWork)
  for (int64_t row = 0; row < n_rows; ++row) {
    T* out_row = out + row * r;
    std::memset(out_row, 0, sizeof(T) * static_cast<size_t>(r));
    const int64_t b = row / n_key;
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
      const int64_t k = perm ? perm[j] : j;
      if (!ops::index_in_range(others[k], n_other)) { first_bad = std::min(first_bad, k); continue; }
      product.accumulate(out_row, vals[k], static_cast<int64_t>(others[k]), b);
    }
  }
  return first_bad == indptr[n_rows] ? -1 : first_bad;
}

template <class T>
int64_t count_nonfinite(const T* x, int64_t size) {
  int64_t bad = 0;
#pragma omp parallel for simd reduction(+ : bad) schedule(static) if (size > kParallelMinWork)
  for (int64_t i = 0; i < size; ++i) bad += ops::is_finite(x[i]) ? 0 : 1;
  return bad;
}

template int64_t coo_to_csr<int32_t>(const int32_t*, const int64_t*, int64_t, int64_t, int64_t, int64_t*, int64_t*);
template int64_t coo_to_csr<int64_t>(const int64_t*, const int64_t*, int64_t, int64_t, int64_t, int64_t*, int64_t*);
#define LRH_INSTANTIATE(T, I)                                                                  \
  template int64_t csr_times_dense<T, I>(const int64_t*, const int64_t*, const I*, const T*,   \
                                         const T*, int64_t, int64_t, int64_t, int64_t, T*);
LRH_INSTANTIATE(float, int32_t)
LRH_INSTANTIATE(float, int64_t)
LRH_INSTANTIATE(double, int32_t)
LRH_INSTANTIATE(double, int64_t)
#undef LRH_INSTANTIATE
template int64_t count_nonfinite<float>(const float*, int64_t);
template int64_t count_nonfinite<double>(const double*, int64_t);

}  // namespace lowrank_hpc::cpu
