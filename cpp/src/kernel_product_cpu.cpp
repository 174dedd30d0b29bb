#include <algorithm>
#include <cmath>
#include <vector>
#include <omp.h>

#include "cpu_backend.hpp"
#include "lowrank_hpc/core/simd.hpp"
#include "lowrank_hpc/ops/kernel_product.hpp"

namespace lowrank_hpc::cpu {

namespace {

// Below this many entries, waking the thread team costs more than the work it would share.
constexpr int64_t kMinParallelEntries = int64_t(1) << 15;

// f over one contiguous range, in place; returns how many results are NaN/inf. Two loops over
// data still in cache: g++ vectorizes each, but not the fused map-and-count for every kernel.
template <ops::KernelFunction F, class T>
int64_t apply_range(T* x, int64_t size) {
  LRH_SIMD
  for (int64_t i = 0; i < size; ++i) x[i] = ops::apply_kernel(F, x[i]);
  int64_t bad = 0;
  LRH_SIMD_SUM(bad)
  for (int64_t i = 0; i < size; ++i) bad += ops::is_finite(x[i]) ? 0 : 1;
  return bad;
}

template <ops::KernelFunction F, class T>
int64_t topk_rows(T* block, int64_t rows, int64_t n, int64_t k, T* values, int64_t* indices) {
  int64_t bad = 0;
#pragma omp parallel reduction(+ : bad) if (rows * n > kMinParallelEntries)
  {
    // Bounded heap whose front is the weakest of the k best so far.
    std::vector<ops::Candidate<T>> heap;
    heap.reserve(static_cast<size_t>(k));
    const auto before = [](const ops::Candidate<T>& a, const ops::Candidate<T>& b) { return ops::ranks_before(a, b); };
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      T* row = block + i * n;
      bad += apply_range<F>(row, n);
      heap.clear();
      for (int64_t j = 0; j < k; ++j) heap.push_back(ops::make_candidate(row[j], j));
      std::make_heap(heap.begin(), heap.end(), before);
      // Entries are offered in increasing column order, so a tie never displaces the front:
      // one |x| > threshold test decides, and rejects almost every entry.
      T threshold = heap.front().magnitude;
      for (int64_t j = k; j < n; ++j) {
        if (!(std::fabs(row[j]) > threshold)) continue;  // NaN too: it is counted in `bad` and reported
        std::pop_heap(heap.begin(), heap.end(), before);
        heap.back() = ops::make_candidate(row[j], j);
        std::push_heap(heap.begin(), heap.end(), before);
        threshold = heap.front().magnitude;
      }
      std::sort_heap(heap.begin(), heap.end(), before);  // best first
      for (int64_t t = 0; t < k; ++t) {
        values[i * k + t] = row[heap[t].index];
        indices[i * k + t] = heap[t].index;
      }
    }
  }
  return bad;
}

}  // namespace

template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices) {
  return ops::with_kernel(f, [&](auto F) { return topk_rows<decltype(F)::value>(block, rows, n, k, values, indices); });
}

template int64_t kernel_topk_rows<float>(float*, int64_t, int64_t, ops::KernelFunction, int64_t, float*, int64_t*);
template int64_t kernel_topk_rows<double>(double*, int64_t, int64_t, ops::KernelFunction, int64_t, double*, int64_t*);

}  // namespace lowrank_hpc::cpu
