// The offsets' sweeps (lowrank_hpc.recover.offsets) on the CPU: numpy's weighted bincounts and
// gathers, one pass each instead of a float64 copy of the weights, a range pass and the sums.
#include <algorithm>
#include <omp.h>

#include "cpu_backend.hpp"
#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/ops/offsets.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"

namespace lowrank_hpc::cpu {

namespace {

// out[index[k]] += double(weight(k)) for k in [begin, end), in that order; the first k whose index
// (or gathered position) is out of range, or end. A run of equal indices sums in a register
// (adding into memory made every entry wait on the previous one's store): the same additions.
template <class I, class Weight>
int64_t add_by_index(const I* index, int64_t n_out, int64_t begin, int64_t end, double* out, Weight&& weight) {
  int64_t k = begin;
  while (k < end) {
    const I bin = index[k];
    if (!ops::index_in_range(bin, n_out)) return k;
    double sum = out[bin], w;
    do {
      if (!weight(k, w)) {
        out[bin] = sum;
        return k;
      }
      sum += w;
    } while (++k < end && index[k] == bin);
    out[bin] = sum;
  }
  return end;
}

}  // namespace

template <class T, class I>
int64_t sums_by_index(const I* index, const T* values, const I* gather, int64_t n_values, int64_t nnz,
                      bool sorted_index, double* out, int64_t n_out) {
  std::fill_n(out, n_out, 0.0);
  const auto weight = [&](int64_t k, double& w) {
    if (!gather) {
      w = static_cast<double>(values[k]);
      return true;
    }
    if (!ops::index_in_range(gather[k], n_values)) return false;
    w = static_cast<double>(values[gather[k]]);
    return true;
  };
  // Unsorted: one thread in entry order. Sorted: each thread a run of whole bins (its first
  // boundary moved past the bin it splits), each bin still summed in entry order.
  const int threads = sorted_index && nnz > kParallelMinWork ? omp_get_max_threads() : 1;
  int64_t first_bad = nnz;
#pragma omp parallel num_threads(threads) reduction(min : first_bad)
  {
    const int64_t t = omp_get_thread_num(), n_threads = omp_get_num_threads();
    // The first entry of a bin at or after this thread's share: a binary search of the sorted index.
    const auto boundary = [&](int64_t part) {
      const int64_t k = nnz * part / n_threads;
      return k == 0 || k == nnz ? k : std::upper_bound(index + k, index + nnz, index[k - 1]) - index;
    };
    const int64_t begin = boundary(t), end = std::max(begin, boundary(t + 1));
    const int64_t bad = add_by_index(index, n_out, begin, end, out, weight);
    if (bad < end) first_bad = bad;
  }
  return first_bad == nnz ? -1 : first_bad;
}

template <class T, class I>
int64_t offsets_at(const I* rows, const I* cols, double mu, const T* a, const T* b, int64_t n1, int64_t n2,
                   int64_t nnz, T* out) {
  const ops::OffsetAt<T> at{static_cast<T>(mu)};
  int64_t first_bad = nnz;
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (nnz > kParallelMinWork)
  for (int64_t k = 0; k < nnz; ++k) {
    if (ops::index_in_range(rows[k], n1) & ops::index_in_range(cols[k], n2)) {
      out[k] = at(a[rows[k]], b[cols[k]]);
    } else {
      out[k] = T(0);
      first_bad = std::min(first_bad, k);
    }
  }
  return first_bad == nnz ? -1 : first_bad;
}

#define LRH_INSTANTIATE(T, I)                                                                           \
  template int64_t sums_by_index<T, I>(const I*, const T*, const I*, int64_t, int64_t, bool, double*, int64_t); \
  template int64_t offsets_at<T, I>(const I*, const I*, double, const T*, const T*, int64_t, int64_t, int64_t, T*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
