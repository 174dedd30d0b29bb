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
int64_t select_top_magnitudes(const T* values, int64_t n, int64_t k, int64_t* positions) {
  // The k-th smallest magnitude key (MagnitudeKey: small keys, large magnitudes) from a
  // selection among candidate keys known to hold it, then one pass keeping, in position order,
  // the smaller keys and the first of the equal ones. The candidates: the keys between two
  // bounds read off a strided sample (4 sigma either side of where the k-th falls), found in a
  // pass whose test rarely passes; every key where the input is small or the bounds miss.
  using Key = typename MagnitudeKey<T>::Key;
  constexpr Key kNaN = MagnitudeKey<T>::kInfinity + 1;
  const auto key_of = [values](int64_t i) { return MagnitudeKey<T>::of(values[i]); };
  Key low = 0, width = kNaN;  // candidates: keys in [low, low + width]; at first all of them
  constexpr int64_t kSample = 16384;
  if (n >= 8 * kSample) {
    std::vector<Key> sample(static_cast<size_t>(kSample));
    const int64_t step = n / kSample;
    for (int64_t s = 0; s < kSample; ++s) sample[static_cast<size_t>(s)] = key_of(s * step);
    const double expected = static_cast<double>(k) / static_cast<double>(n) * kSample;  // its rank in the sample
    const double spread = 4.0 * std::sqrt(expected * (1.0 - expected / kSample)) + 8.0;
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(expected - spread));
    const int64_t hi = std::min<int64_t>(kSample - 1, static_cast<int64_t>(expected + spread));
    // The sample's lo-th and hi-th keys (two selections, not a sort); no bound on a side where
    // the range reaches the sample's end.
    std::nth_element(sample.begin(), sample.begin() + hi, sample.end());
    const Key high = hi < kSample - 1 ? sample[static_cast<size_t>(hi)] : kNaN;
    std::nth_element(sample.begin(), sample.begin() + lo, sample.begin() + hi);
    low = lo > 0 ? sample[static_cast<size_t>(lo)] : Key(0);
    width = high - low;
  }
  const auto is_candidate = [&](Key key) { return static_cast<Key>(key - low) <= width; };
  // Counted in one vectorised pass, collected in another: a push_back in the counting loop
  // kept it scalar (4 ms against 1 for 2^20 float32).
  int64_t smaller = 0, inside = 0;  // keys below the candidates, and the candidates
  Key largest = 0;
  for (int64_t i = 0; i < n; ++i) {
    const Key key = key_of(i);
    largest = key > largest ? key : largest;
    smaller += key < low ? 1 : 0;
    inside += is_candidate(key) ? 1 : 0;
  }
  if (largest == kNaN) return -1;  // the caller's path for NaN (an overflow it reports)
  if (!(smaller < k && k <= smaller + inside)) {  // the bounds missed: every key competes
    low = 0;
    width = kNaN;
    smaller = 0;
    inside = n;
  }
  std::vector<Key> candidates(static_cast<size_t>(inside));
  Key* next = candidates.data();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {  // a vectorised test of 16 keys, most of them none
    bool any = false;
    for (int l = 0; l < 16; ++l) any |= is_candidate(key_of(i + l));
    if (!any) continue;
    for (int l = 0; l < 16; ++l)
      if (is_candidate(key_of(i + l))) *next++ = key_of(i + l);
  }
  for (; i < n; ++i)
    if (is_candidate(key_of(i))) *next++ = key_of(i);
  const int64_t rank = k - smaller - 1;  // the k-th smallest key is the candidates' rank-th (from 0)
  std::nth_element(candidates.begin(), candidates.begin() + rank, candidates.end());
  const Key threshold = candidates[static_cast<size_t>(rank)];
  int64_t equal_kept = rank + 1, equal_all = 0;  // keys equal to the threshold: kept, and in all
  for (const Key key : candidates) {
    equal_kept -= key < threshold ? 1 : 0;
    equal_all += key == threshold ? 1 : 0;
  }
  int64_t kept = 0;
  if (equal_kept == equal_all) {  // no tie to break (the usual case): keep every key <= threshold
    for (i = 0; i < n && kept < k; ++i) {
      positions[kept] = i;
      kept += key_of(i) <= threshold ? 1 : 0;
    }
  } else {
    for (i = 0; i < n && kept < k; ++i) {
      const Key key = key_of(i);
      const bool equal = key == threshold;
      positions[kept] = i;
      kept += key < threshold || (equal && equal_kept > 0) ? 1 : 0;
      equal_kept -= equal ? 1 : 0;
    }
  }
  return kept;
}

template int64_t select_top_magnitudes<float>(const float*, int64_t, int64_t, int64_t*);
template int64_t select_top_magnitudes<double>(const double*, int64_t, int64_t, int64_t*);

template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices) {
  return ops::with_kernel(f, [&](auto F) { return topk_rows<decltype(F)::value>(block, rows, n, k, values, indices); });
}

template int64_t kernel_topk_rows<float>(float*, int64_t, int64_t, ops::KernelFunction, int64_t, float*, int64_t*);
template int64_t kernel_topk_rows<double>(double*, int64_t, int64_t, ops::KernelFunction, int64_t, double*, int64_t*);

}  // namespace lowrank_hpc::cpu
