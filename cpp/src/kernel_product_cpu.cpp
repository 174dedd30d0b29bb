#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <vector>
#include <omp.h>
#include <type_traits>
#include <utility>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

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

// The k-th largest of size >= k magnitudes (>= 0, no NaN; +inf allowed): the largest t with at
// least k of them >= t, built bit by bit (the bits of non-negative floats order as their values),
// each bit one vectorised count (nth_element over a row's 125 chunks, its branches mispredicted,
// held a quarter of this kernel's perf samples).
template <class T>
T kth_largest_magnitude(const T* magnitudes, int64_t size, int64_t k) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits best = 0;
  for (int bit = 8 * static_cast<int>(sizeof(T)) - 2; bit >= 0; --bit) {  // below the sign bit
    const Bits trial = best | Bits(1) << bit;
    T threshold;
    std::memcpy(&threshold, &trial, sizeof threshold);
    int64_t count = 0;
    LRH_SIMD_SUM(count)
    for (int64_t i = 0; i < size; ++i) count += magnitudes[i] >= threshold ? 1 : 0;
    best = count >= k ? trial : best;
  }
  T result;
  std::memcpy(&result, &best, sizeof result);
  return result;
}

// The k best of a row of f-values by ops::ranks_before, best first, into best (k), kept by
// insertion: entries come in index order, so a later one ranks before a kept one only with a
// strictly larger magnitude, and with few to keep most entries cost one compare.
template <class T>
void keep_best_by_insertion(const T* row, int64_t n, int64_t k, ops::Candidate<T>* best) {
  int64_t kept = 0;
  for (int64_t j = 0; j < n; ++j) {
    const ops::Candidate<T> candidate = ops::make_candidate(row[j], j);
    if (kept == k && !(candidate.magnitude > best[k - 1].magnitude)) continue;
    int64_t t = kept < k ? kept++ : k - 1;
    for (; t > 0 && candidate.magnitude > best[t - 1].magnitude; --t) best[t] = best[t - 1];
    best[t] = candidate;
  }
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

// The k best of a row of f-values by ops::ranks_before, best first, into best (k), where every
// entry competes and k is large: the k-th magnitude found by bits (vectorised counts), then the
// entries above it and the first ties at it (ties go to the smaller index) are the k kept, and
// one sort of those orders them, float32 as packed integer keys (4096 x 4096, k = 1,000: 115
// against 392 ms for a heap of every entry's candidate; k = 300: 60 against 212).
template <class T>
void keep_best_by_threshold(const T* row, int64_t n, int64_t k, T* magnitudes, ops::Candidate<T>* best,
                            std::vector<uint64_t>& keys) {
  LRH_SIMD
  for (int64_t j = 0; j < n; ++j) magnitudes[j] = ops::make_candidate(row[j], 0).magnitude;
  const T threshold = kth_largest_magnitude(magnitudes, n, k);
  int64_t above = 0;
  LRH_SIMD_SUM(above)
  for (int64_t j = 0; j < n; ++j) above += magnitudes[j] > threshold ? 1 : 0;
  int64_t kept = 0, ties = k - above;  // above < k <= above + (entries at the threshold)
  for (int64_t j = 0; j < n && kept < k; ++j) {
    if (magnitudes[j] > threshold || (magnitudes[j] == threshold && ties-- > 0)) best[kept++] = {magnitudes[j], j};
  }
  if constexpr (sizeof(T) == 4) {
    if (n <= (int64_t(1) << 32)) {  // (key, index) packed: one integer sort, no comparator
      keys.resize(static_cast<size_t>(k));
      for (int64_t t = 0; t < k; ++t) {
        keys[t] = uint64_t(MagnitudeKey<T>::of(best[t].magnitude)) << 32 | static_cast<uint64_t>(best[t].index);
      }
      std::sort(keys.begin(), keys.end());
      for (int64_t t = 0; t < k; ++t) {
        const int64_t j = static_cast<int64_t>(keys[t] & 0xffffffffu);
        best[t] = {magnitudes[j], j};
      }
      return;
    }
  }
  std::sort(best, best + k, [](const ops::Candidate<T>& a, const ops::Candidate<T>& b) { return ops::ranks_before(a, b); });
}

// Rows with fewer chunks than k, where every entry competes, keep k <= this by insertion
// instead of collecting them all and sorting (the whole row top-k of 1,000 problems of 30 x 30,
// k = 5: 20 -> 12 ms; of 30,000 x 200, k = 16: 116-145 -> 61-84 ms).
constexpr int64_t kMaxInsertionK = 32;

// Each row's k best by ops::ranks_before, f applied only where an entry can be among them. |f(x)|
// grows with ops::rank_argument<F>(x) (up to a few ulp of f's rounding), so a 16-entry chunk's
// best is f of its largest argument (one vectorised pass for those), and the k-th best of the
// chunks' bests is a lower bound of the row's k-th (k distinct entries reach it). Only chunks
// reaching it get f (and NaN/inf counted: a chunk holding one reaches +inf), their entries at
// or above it compete, and one sort orders them. Heap selection over f of every entry took 11-12 ms
// for 2000 x 2000, k = 16 (tanh of the 4M entries alone 2.3). One per thread: its scratch.
template <class T>
class RowSelection {
 public:
  RowSelection(int64_t n, int64_t k) : n_(n), k_(k), chunks_((n + kChunk - 1) / kChunk) {
    reach_.resize(static_cast<size_t>(chunks_));
  }

  // f in place on row (n), its k best into values and indices (k); returns its NaN/inf count.
  template <ops::KernelFunction F>
  int64_t select(T* row, T* values, int64_t* indices) {
    const int64_t n = n_, k = k_, chunks = chunks_;
    int64_t bad = 0;
    if (chunks < k) {  // every entry competes
      bad += apply_range<F>(row, n);
      candidates_.resize(static_cast<size_t>(k));
      if (k <= kMaxInsertionK) {
        keep_best_by_insertion(row, n, k, candidates_.data());
      } else {
        magnitudes_.resize(static_cast<size_t>(n));
        keep_best_by_threshold(row, n, k, magnitudes_.data(), candidates_.data(), keys_);
      }
      write(row, values, indices);
      return bad;
    }
    for (int64_t c = 0; c < chunks; ++c) {  // each chunk's largest argument
      const T* chunk = row + c * kChunk;
      const int64_t size = std::min(kChunk, n - c * kChunk);
      T largest = -std::numeric_limits<T>::infinity();
      LRH_SIMD_MAX(largest)
      for (int64_t j = 0; j < size; ++j) largest = std::max(largest, ops::rank_argument<F>(chunk[j]));
      reach_[c] = largest;
    }
    // ... and its |f|, NaN as +inf: one vectorised loop (a scalar tanh a chunk cost 3 ms here)
    T* reach = reach_.data();
    LRH_SIMD
    for (int64_t c = 0; c < chunks; ++c) reach[c] = ops::make_candidate(ops::apply_kernel(F, reach[c]), 0).magnitude;
    const T bound = kth_largest_magnitude(reach, chunks, k);
    candidates_.clear();
    for (int64_t c = 0; c < chunks; ++c) {
      if (reach[c] * kMargin < bound) continue;  // every |f| in it is below the bound
      T* chunk = row + c * kChunk;
      const int64_t size = std::min(kChunk, n - c * kChunk);
      // a full chunk with a constant trip count: one vector, no peeling (this tanh top-k 5.4 -> 4.8 ms)
      bad += size == kChunk ? apply_range<F>(chunk, kChunk) : apply_range<F>(chunk, size);
      for (int64_t j = 0; j < size; ++j) {
        const ops::Candidate<T> candidate = ops::make_candidate(chunk[j], c * kChunk + j);
        if (candidate.magnitude >= bound) candidates_.push_back(candidate);
      }
    }
    // Best first (a total order: either way the same k in the same order). Where k is a large
    // part of the candidates, the k-th found and the k before it sorted beat a heap of k
    // (4096 x 4096 tanh, k = 100: 30-32 against 33-35 ms); for a few of many, the heap rejects
    // most with one compare (rank-64 tanh, k = 32 of 4,096 tied candidates a row: 75 against 84).
    const auto before = [](const ops::Candidate<T>& a, const ops::Candidate<T>& b) { return ops::ranks_before(a, b); };
    const auto kth = candidates_.begin() + k;
    if (16 * k >= static_cast<int64_t>(candidates_.size())) {
      std::nth_element(candidates_.begin(), kth - 1, candidates_.end(), before);
      std::sort(candidates_.begin(), kth, before);
    } else {
      std::partial_sort(candidates_.begin(), kth, candidates_.end(), before);
    }
    write(row, values, indices);
    return bad;
  }

 private:
  static constexpr int64_t kChunk = 16;
  // A chunk is skipped only below the bound by this margin: f's rounding may break monotonicity
  // by an ulp or two, never by this much.
  static constexpr T kMargin = T(1) + T(16) * std::numeric_limits<T>::epsilon();

  void write(const T* row, T* values, int64_t* indices) const {
    for (int64_t t = 0; t < k_; ++t) {
      values[t] = row[candidates_[t].index];
      indices[t] = candidates_[t].index;
    }
  }

  int64_t n_, k_, chunks_;
  std::vector<T> reach_;
  std::vector<T> magnitudes_;  // a row's, where every entry competes for a large k
  std::vector<uint64_t> keys_;
  std::vector<ops::Candidate<T>> candidates_;
};

template <ops::KernelFunction F, class T>
int64_t topk_rows(T* block, int64_t rows, int64_t n, int64_t k, T* values, int64_t* indices) {
  int64_t bad = 0;
#pragma omp parallel reduction(+ : bad) if (rows * n > kMinParallelEntries)
  {
    RowSelection<T> selection(n, k);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) bad += selection.template select<F>(block + i * n, values + i * k, indices + i * k);
  }
  return bad;
}

// Rows of U V^T a thread forms at a time (BLAS on one thread, in each OpenMP thread) and reads
// again while they are in its L2: about 1 MiB (4000 x 4000, k = 16 row top-k against the blocked
// path: 1.0-2.9x at r = 8-256 with 1 MiB, 0.81-2.1x with 256 KiB, where the GEMM's repacking of V
// for each tile of 16 rows lost at r >= 128), at least 16 rows unless that passes 16 MiB.
constexpr int64_t kTileBytes = int64_t(1) << 20;

template <class T>
int64_t tile_rows(int64_t n) {
  const int64_t row_bytes = std::max<int64_t>(n, 1) * static_cast<int64_t>(sizeof(T));
  const int64_t floor = std::clamp<int64_t>((int64_t(16) << 20) / row_bytes, 1, 16);
  return std::clamp<int64_t>(kTileBytes / row_bytes, floor, 512);
}

// C (rows, n; row-major, leading dimension n) = U (rows, r) V (n, r)^T by the host BLAS: in
// column-major terms C^T = V U^T, V's storage read transposed.
template <class T>
void tile_product(HostGemm<T> gemm, const T* U, const T* V, int64_t rows, int64_t n, int64_t r, T* C) {
  const int m_ = static_cast<int>(n), n_ = static_cast<int>(rows), k_ = static_cast<int>(r);
  const int ld_factors = static_cast<int>(std::max<int64_t>(r, 1)), ld_product = static_cast<int>(n);
  const T one = T(1), zero = T(0);
  gemm("T", "N", &m_, &n_, &k_, &one, V, &ld_factors, U, &ld_factors, &zero, C, &ld_product);
}

// Every (problem, row tile) of U (batch, m, r) V (batch, n, r)^T in turn on the OpenMP threads:
// body(problem, first row, rows, tile) after the tile's product is formed in `tile` (a thread's
// buffer of tile_rows x n, or the output itself where into_output gives the place).
template <class T, class Body>
int64_t for_each_product_tile(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m, int64_t n,
                              int64_t r, T* into_output, Body body) {
  // A tile for every thread at least (a thread's share of the rows, 8 at the least) where the
  // rows are few: the tiles are the only work split.
  const int64_t threads = omp_get_max_threads();
  const int64_t share = std::max<int64_t>(8, (batch * m + threads - 1) / threads);
  const int64_t rows = std::min(tile_rows<T>(n), share);
  const int64_t tiles_a_problem = (m + rows - 1) / rows, tiles = batch * tiles_a_problem;
  int64_t bad = 0;
#pragma omp parallel reduction(+ : bad) if (batch * m * n > kMinParallelEntries && tiles > 1)
  {
    std::vector<T> buffer(into_output ? 0 : static_cast<size_t>(rows * n));
    auto local_body = body;  // the thread's own scratch (a RowSelection's)
#pragma omp for schedule(dynamic)
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t b = t / tiles_a_problem, first = (t % tiles_a_problem) * rows, count = std::min(rows, m - first);
      T* tile = into_output ? into_output + (b * m + first) * n : buffer.data();
      tile_product(gemm, U + (b * m + first) * r, V + b * n * r, count, n, r, tile);
      bad += local_body(b, first, count, tile);
    }
  }
  return bad;
}

// Bit l set where lo <= (bits[l] & 0x7fffffff) <= hi, for 16 float bit patterns (magnitudes
// in a range): one compare of a vector register where g++ left a 16-step scalar loop.
inline uint32_t magnitudes_in_range(const uint32_t* bits, uint32_t lo, uint32_t hi) {
  const uint32_t width = hi - lo;
#if defined(__AVX512F__)
  const __m512i a = _mm512_and_si512(_mm512_loadu_si512(bits), _mm512_set1_epi32(0x7fffffff));
  return _mm512_cmple_epu32_mask(_mm512_sub_epi32(a, _mm512_set1_epi32(static_cast<int>(lo))),
                                 _mm512_set1_epi32(static_cast<int>(width)));
#elif defined(__AVX2__)
  uint32_t mask = 0;
  for (int h = 0; h < 2; ++h) {  // unsigned d <= width as min(d, width) == d
    const __m256i a = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + 8 * h)),
                                       _mm256_set1_epi32(0x7fffffff));
    const __m256i d = _mm256_sub_epi32(a, _mm256_set1_epi32(static_cast<int>(lo)));
    const __m256i inside = _mm256_cmpeq_epi32(_mm256_min_epu32(d, _mm256_set1_epi32(static_cast<int>(width))), d);
    mask |= static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(inside))) << (8 * h);
  }
  return mask;
#elif defined(__SSE2__)
  // Unsigned d <= width as a signed compare of both with the sign bit flipped.
  const __m128i flip = _mm_set1_epi32(static_cast<int>(0x80000000u));
  const __m128i limit = _mm_xor_si128(_mm_set1_epi32(static_cast<int>(width)), flip);
  uint32_t mask = 0;
  for (int q = 0; q < 4; ++q) {
    __m128i a = _mm_and_si128(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bits + 4 * q)),
                              _mm_set1_epi32(0x7fffffff));
    a = _mm_xor_si128(_mm_sub_epi32(a, _mm_set1_epi32(static_cast<int>(lo))), flip);
    const __m128i above = _mm_cmpgt_epi32(a, limit);
    mask |= static_cast<uint32_t>(~_mm_movemask_ps(_mm_castsi128_ps(above)) & 0xf) << (4 * q);
  }
  return mask;
#else
  uint32_t mask = 0;
  for (int l = 0; l < 16; ++l) mask |= ((bits[l] & 0x7fffffffu) - lo <= width ? 1u : 0u) << l;
  return mask;
#endif
}

#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2 has no compressed store: lane_order(m) lists the set bits of an 8-bit mask m first, in
// order, as the lane indices of a permutation (vpermd) that packs those lanes to the front.
struct LaneOrders {
  alignas(32) uint32_t lanes[256][8];
  constexpr LaneOrders() : lanes{} {
    for (int m = 0; m < 256; ++m) {
      int packed = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) lanes[m][packed++] = static_cast<uint32_t>(l);
    }
  }
};
inline constexpr LaneOrders kLaneOrders{};
inline __m256i lane_order(uint32_t m) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(kLaneOrders.lanes[m]));
}
#endif

// keys[found++] = the magnitude key (kInfinity - (bits[l] & 0x7fffffff)) of each set bit l of
// mask, in order; keys has room for 16 past the last one found.
inline int64_t store_keys(uint32_t mask, const uint32_t* bits, uint32_t* keys, int64_t found) {
#if defined(__AVX512F__)
  // A compressed store of all 16, kept or not: no branch on the mask (mostly empty, at random).
  const __m512i magnitude = _mm512_and_si512(_mm512_loadu_si512(bits), _mm512_set1_epi32(0x7fffffff));
  const __m512i key = _mm512_sub_epi32(_mm512_set1_epi32(MagnitudeKey<float>::kInfinity), magnitude);
  _mm512_storeu_si512(keys + found, _mm512_maskz_compress_epi32(static_cast<__mmask16>(mask), key));
  return found + __builtin_popcount(mask);
#elif defined(__AVX2__)
  for (int h = 0; h < 2; ++h, mask >>= 8) {  // 8 keys packed by a permutation, stored whole
    const __m256i magnitude = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bits + 8 * h)),
                                               _mm256_set1_epi32(0x7fffffff));
    const __m256i key = _mm256_sub_epi32(_mm256_set1_epi32(MagnitudeKey<float>::kInfinity), magnitude);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(keys + found),
                        _mm256_permutevar8x32_epi32(key, lane_order(mask & 0xffu)));
    found += __builtin_popcount(mask & 0xffu);
  }
  return found;
#else
  for (; mask != 0; mask &= mask - 1)
    keys[found++] = MagnitudeKey<float>::kInfinity - (bits[__builtin_ctz(mask)] & 0x7fffffffu);
  return found;
#endif
}

// positions[kept++] = first + l for each set bit l of mask, until kept reaches k.
inline int64_t store_set_bits(uint32_t mask, int64_t first, int64_t* positions, int64_t kept, int64_t k) {
#if defined(__AVX512F__)
  if (kept + 16 <= k) {  // two compressed stores of 8 (a loop over the set bits mispredicts its end)
    const __m512i lanes = _mm512_add_epi64(_mm512_set1_epi64(first), _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0));
    _mm512_storeu_si512(positions + kept, _mm512_maskz_compress_epi64(static_cast<__mmask8>(mask), lanes));
    kept += __builtin_popcount(mask & 0xffu);
    _mm512_storeu_si512(positions + kept, _mm512_maskz_compress_epi64(static_cast<__mmask8>(mask >> 8),
                                                                      _mm512_add_epi64(lanes, _mm512_set1_epi64(8))));
    return kept + __builtin_popcount(mask >> 8);
  }
#elif defined(__AVX2__)
  if (kept + 16 <= k) {  // per 8 lanes: their numbers packed by a permutation, widened to 64 bits
    for (int h = 0; h < 2; ++h, mask >>= 8) {
      const __m256i lanes =
          _mm256_permutevar8x32_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), lane_order(mask & 0xffu));
      const __m256i base = _mm256_set1_epi64x(first + 8 * h);
      int64_t* at = positions + kept;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(at),
                          _mm256_add_epi64(base, _mm256_cvtepu32_epi64(_mm256_castsi256_si128(lanes))));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(at + 4),
                          _mm256_add_epi64(base, _mm256_cvtepu32_epi64(_mm256_extracti128_si256(lanes, 1))));
      kept += __builtin_popcount(mask & 0xffu);
    }
    return kept;
  }
#endif
  for (; mask != 0 && kept < k; mask &= mask - 1) positions[kept++] = first + __builtin_ctz(mask);
  return kept;
}

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
int64_t select_top_magnitudes(const T* values, int64_t n, int64_t k, const int64_t* sample_positions,
                              int64_t sample_size, int64_t* positions) {
  // The k-th smallest magnitude key (MagnitudeKey: small keys, large magnitudes) from a
  // selection among candidate keys known to hold it, then one pass keeping, in position order,
  // the smaller keys and the first of the equal ones. The candidates: the keys between two
  // bounds read off the caller's sample (4 sigma either side of where the k-th falls), found in
  // a pass whose test rarely passes; every key without a sample or where the bounds miss.
  using Key = typename MagnitudeKey<T>::Key;
  constexpr Key kNaN = MagnitudeKey<T>::kInfinity + 1;
  const auto key_of = [values](int64_t i) { return MagnitudeKey<T>::of(values[i]); };
  Key low = 0, width = kNaN;  // candidates: keys in [low, low + width]; at first all of them
  if (sample_size > 0) {
    std::vector<Key> sample(static_cast<size_t>(sample_size));
    for (int64_t s = 0; s < sample_size; ++s) sample[static_cast<size_t>(s)] = key_of(sample_positions[s]);
    const double size = static_cast<double>(sample_size);
    const double expected = static_cast<double>(k) / static_cast<double>(n) * size;  // its rank in the sample
    const double spread = 4.0 * std::sqrt(expected * (1.0 - expected / size)) + 8.0;
    const int64_t lo = std::max<int64_t>(0, static_cast<int64_t>(expected - spread));
    const int64_t hi = std::min<int64_t>(sample_size - 1, static_cast<int64_t>(expected + spread));
    // The sample's lo-th and hi-th keys (two selections, not a sort); no bound on a side where
    // the range reaches the sample's end.
    std::nth_element(sample.begin(), sample.begin() + hi, sample.end());
    const Key high = hi < sample_size - 1 ? sample[static_cast<size_t>(hi)] : kNaN;
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
  std::vector<Key> candidates(static_cast<size_t>(inside) + 16);  // store_keys writes 16 at a time
  Key* next = candidates.data();
  int64_t i = 0;
  // A key is kInfinity minus the magnitude's bits (NaN is ruled out above): float32's
  // candidates are magnitude bits in a range, tested 16 at a time (1.8 -> 0.3 ms for 2^20).
  if constexpr (sizeof(T) == 4) {
    const uint32_t* bits = reinterpret_cast<const uint32_t*>(values);
    const uint32_t hi = MagnitudeKey<T>::kInfinity - low, lo = hi - (width < hi ? width : hi);
    int64_t found = 0;
    for (; i + 16 <= n; i += 16) found = store_keys(magnitudes_in_range(bits + i, lo, hi), bits + i, next, found);
    next += found;
  }
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
  std::nth_element(candidates.begin(), candidates.begin() + rank, candidates.begin() + inside);
  const Key threshold = candidates[static_cast<size_t>(rank)];
  int64_t equal_kept = rank + 1, equal_all = 0;  // keys equal to the threshold: kept, and in all
  for (int64_t c = 0; c < inside; ++c) {
    const Key key = candidates[static_cast<size_t>(c)];
    equal_kept -= key < threshold ? 1 : 0;
    equal_all += key == threshold ? 1 : 0;
  }
  int64_t kept = 0;
  if (equal_kept == equal_all) {  // no tie to break (the usual case): keep every key <= threshold
    i = 0;
    if constexpr (sizeof(T) == 4) {  // float32: 16 magnitudes tested at a time, a store per kept one
      // (a store per key at the position the previous one counted ran at 3 cycles a key)
      const uint32_t* bits = reinterpret_cast<const uint32_t*>(values);
      const uint32_t least = MagnitudeKey<T>::kInfinity - threshold;  // key <= threshold
      for (; i + 16 <= n && kept < k; i += 16)
        kept = store_set_bits(magnitudes_in_range(bits + i, least, MagnitudeKey<T>::kInfinity), i, positions, kept, k);
    }
    for (; i < n && kept < k; ++i) {
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

template int64_t select_top_magnitudes<float>(const float*, int64_t, int64_t, const int64_t*, int64_t, int64_t*);
template int64_t select_top_magnitudes<double>(const double*, int64_t, int64_t, const int64_t*, int64_t, int64_t*);

template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices) {
  return ops::with_kernel(f, [&](auto F) { return topk_rows<decltype(F)::value>(block, rows, n, k, values, indices); });
}

template int64_t kernel_topk_rows<float>(float*, int64_t, int64_t, ops::KernelFunction, int64_t, float*, int64_t*);
template int64_t kernel_topk_rows<double>(double*, int64_t, int64_t, ops::KernelFunction, int64_t, double*, int64_t*);

template <class T>
int64_t kernel_product_tiles(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m, int64_t n, int64_t r,
                             ops::KernelFunction f, T* out) {
  return ops::with_kernel(f, [&](auto F) {
    return for_each_product_tile(gemm, U, V, batch, m, n, r, out, [&](int64_t, int64_t, int64_t rows, T* tile) {
      return apply_range<decltype(F)::value>(tile, rows * n);  // f while the tile is in cache
    });
  });
}

template <class T>
int64_t kernel_topk_rows_of_products(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m, int64_t n,
                                     int64_t r, ops::KernelFunction f, int64_t k, T* values, int64_t* indices) {
  return ops::with_kernel(f, [&](auto F) {
    constexpr ops::KernelFunction kF = decltype(F)::value;
    RowSelection<T> selection(n, k);  // copied into each thread with the body
    return for_each_product_tile(gemm, U, V, batch, m, n, r, static_cast<T*>(nullptr),
                                 [=](int64_t b, int64_t first, int64_t rows, T* tile) mutable {
                                   int64_t bad = 0;
                                   for (int64_t i = 0; i < rows; ++i) {
                                     const int64_t row = b * m + first + i;
                                     bad += selection.template select<kF>(tile + i * n, values + row * k,
                                                                           indices + row * k);
                                   }
                                   return bad;
                                 });
  });
}

namespace {

// Where a selection from `size` magnitudes reads the keys bounding its k-th: one position in each
// of kSample equal stretches, at an offset from a Fibonacci hash of the stretch's number (as
// lowrank_hpc.ops.kernel_product's _sample_positions; a plain stride dividing the row length
// read a few columns only). None below 8 kSample magnitudes.
constexpr int64_t kSample = 16384;

std::vector<int64_t> sample_positions(int64_t size) {
  if (size < 8 * kSample) return {};
  const uint64_t step = static_cast<uint64_t>(size / kSample);
  std::vector<int64_t> positions(static_cast<size_t>(kSample));
  for (uint64_t s = 0; s < static_cast<uint64_t>(kSample); ++s)
    positions[s] = static_cast<int64_t>(s * step + (((s + 1) * 0x9E3779B97F4A7C15ull) >> 32) % step);
  return positions;
}

// The running best of a global top-k: at most k candidates (values and flat indices) in flat
// order, to which each block offers its own best k.
template <class T>
class GlobalSelection {
 public:
  explicit GlobalSelection(int64_t k) : k_(k), positions_(static_cast<size_t>(k)) {
    values_.reserve(static_cast<size_t>(2 * k));
    flat_.reserve(static_cast<size_t>(2 * k));
  }

  void clear() {
    values_.clear();
    flat_.clear();
  }

  // The block `candidates` (size values, the first at flat index `first`; no NaN: the caller
  // stops selecting at the first NaN/inf) offers its best k.
  void offer(const T* candidates, int64_t size, int64_t first) {
    if (size <= k_) {
      for (int64_t i = 0; i < size; ++i) keep(candidates[i], first + i);
    } else {
      select(candidates, size, block_sample_);
      for (int64_t i = 0; i < k_; ++i) keep(candidates[positions_[i]], first + positions_[i]);
    }
    const int64_t held = static_cast<int64_t>(values_.size());
    if (held <= k_) return;
    // The earlier blocks' best come first: ties still go to the smaller flat index.
    select(values_.data(), held, merge_sample_);
    for (int64_t i = 0; i < k_; ++i) {
      values_[i] = values_[positions_[i]];
      flat_[i] = flat_[positions_[i]];
    }
    values_.resize(static_cast<size_t>(k_));
    flat_.resize(static_cast<size_t>(k_));
  }

  // The k kept into values and flat (k each), best first with by_magnitude.
  void write(bool by_magnitude, T* values, int64_t* flat) {
    if (!by_magnitude) {
      std::copy(values_.begin(), values_.end(), values);
      std::copy(flat_.begin(), flat_.end(), flat);
      return;
    }
    order_by_magnitude<T>(values_.data(), k_, positions_.data());
    for (int64_t i = 0; i < k_; ++i) {
      values[i] = values_[positions_[i]];
      flat[i] = flat_[positions_[i]];
    }
  }

 private:
  // A sample of positions for selections from one size (a block's, or the merge's k to 2k).
  struct Sample {
    int64_t size = -1;
    std::vector<int64_t> positions;
  };

  void keep(T value, int64_t flat) {
    values_.push_back(value);
    flat_.push_back(flat);
  }

  // positions_ = the k best of values (size of them), ascending.
  void select(const T* values, int64_t size, Sample& sample) {
    if (sample.size != size) sample = {size, sample_positions(size)};
    const int64_t kept = select_top_magnitudes<T>(values, size, k_, sample.positions.data(),
                                                  static_cast<int64_t>(sample.positions.size()), positions_.data());
    if (kept != k_) throw std::logic_error("global top-k: a NaN reached the selection");  // the caller's count missed it
  }

  int64_t k_;
  std::vector<T> values_;
  std::vector<int64_t> flat_;
  std::vector<int64_t> positions_;
  Sample block_sample_, merge_sample_;
};

}  // namespace

template <class T>
int64_t kernel_topk_global_of_products(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m,
                                       int64_t n, int64_t r, ops::KernelFunction f, int64_t k, int64_t block_rows,
                                       T* block, bool by_magnitude, T* values, int64_t* flat) {
  GlobalSelection<T> selection(k);
  int64_t bad = 0;
  for (int64_t b = 0; b < batch; ++b) {
    selection.clear();
    for (int64_t first = 0; first < m; first += block_rows) {
      const int64_t rows = std::min(block_rows, m - first);
      bad += kernel_product_tiles<T>(gemm, U + (b * m + first) * r, V + b * n * r, 1, rows, n, r, f, block);
      if (bad == 0) selection.offer(block, rows * n, first * n);  // NaN cannot be ranked: the caller raises
    }
    if (bad == 0) selection.write(by_magnitude, values + b * k, flat + b * k);
  }
  return bad;
}

#define LRH_INSTANTIATE(T)                                                                                          \
  template int64_t kernel_topk_global_of_products<T>(HostGemm<T>, const T*, const T*, int64_t, int64_t, int64_t,     \
                                                     int64_t, ops::KernelFunction, int64_t, int64_t, T*, bool, T*,   \
                                                     int64_t*);                                                      \
  template int64_t kernel_product_tiles<T>(HostGemm<T>, const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                           ops::KernelFunction, T*);                                                 \
  template int64_t kernel_topk_rows_of_products<T>(HostGemm<T>, const T*, const T*, int64_t, int64_t, int64_t,       \
                                                   int64_t, ops::KernelFunction, int64_t, T*, int64_t*);
LRH_INSTANTIATE(float)
LRH_INSTANTIATE(double)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
