#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>
#include <omp.h>
#include <type_traits>
#include <utility>

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

// The sort key of |x|: ascending keys are descending magnitudes, NaN last (the order of a
// stable argsort of -|x|). The bits of a non-negative float order as its value, so the key is
// their distance below infinity's.
template <class T>
struct MagnitudeKey {
  using Key = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static constexpr Key kSign = Key(1) << (8 * sizeof(T) - 1);
  static constexpr Key kInfinity = sizeof(T) == 4 ? Key(0x7f800000u) : Key(0x7ff0000000000000ull);
  static Key of(T x) {
    Key bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits &= ~kSign;
    return bits > kInfinity ? kInfinity + 1 : kInfinity - bits;
  }
};

}  // namespace

template <class T>
void order_by_magnitude(const T* values, int64_t n, int64_t* order) {
  // Stable LSD radix sort of the keys, a byte a pass; a pass whose byte is the same for every
  // key is skipped (magnitudes of similar size share their high bytes).
  using Key = typename MagnitudeKey<T>::Key;
  constexpr int kPasses = static_cast<int>(sizeof(Key));
  std::vector<std::array<int64_t, 256>> counts(kPasses, std::array<int64_t, 256>{});
  std::vector<Key> keys(static_cast<size_t>(n)), moved_keys(static_cast<size_t>(n));
  std::vector<int64_t> moved(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const Key key = MagnitudeKey<T>::of(values[i]);
    keys[i] = key;
    order[i] = i;
    for (int pass = 0; pass < kPasses; ++pass) ++counts[pass][(key >> (8 * pass)) & 0xff];
  }
  Key *from_keys = keys.data(), *to_keys = moved_keys.data();
  int64_t *from = order, *to = moved.data();
  for (int pass = 0; pass < kPasses && n > 0; ++pass) {
    std::array<int64_t, 256>& next = counts[pass];
    if (next[(from_keys[0] >> (8 * pass)) & 0xff] == n) continue;
    int64_t start = 0;
    for (int64_t& slot : next) start += std::exchange(slot, start);  // each byte's first position
    for (int64_t i = 0; i < n; ++i) {
      const int64_t at = next[(from_keys[i] >> (8 * pass)) & 0xff]++;
      to_keys[at] = from_keys[i];
      to[at] = from[i];
    }
    std::swap(from_keys, to_keys);
    std::swap(from, to);
  }
  if (from != order) std::copy(from, from + n, order);
}

template void order_by_magnitude<float>(const float*, int64_t, int64_t*);
template void order_by_magnitude<double>(const double*, int64_t, int64_t*);

template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices) {
  return ops::with_kernel(f, [&](auto F) { return topk_rows<decltype(F)::value>(block, rows, n, k, values, indices); });
}

template int64_t kernel_topk_rows<float>(float*, int64_t, int64_t, ops::KernelFunction, int64_t, float*, int64_t*);
template int64_t kernel_topk_rows<double>(double*, int64_t, int64_t, ops::KernelFunction, int64_t, double*, int64_t*);

}  // namespace lowrank_hpc::cpu
