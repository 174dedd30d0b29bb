// Products of a 0/1 matrix with a thin dense factor, A is bit-packed (Boolean matrix
// factorization's A F and A^T F).
//
// BLAS reads a dense 0/1 A as n x m floats (24 MB at 2,000 x 1,500 in float64) and multiplies
// every zero; packed, A is 64x smaller (it stays in cache) and the product touches only the ones:
// out row i = the sum of the F rows of the set bits of A's row i, found by count-trailing-zeros.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_backend.hpp"
#include "lowrank_hpc/core/lanes.hpp"

namespace lowrank_hpc::cpu {

int64_t pack_binary(const int64_t* rows, const int64_t* cols, int64_t count, int64_t n_rows, int64_t n_cols,
                    uint64_t* words) {
  const int64_t per_row = binary_words(n_cols);
  std::fill_n(words, n_rows * per_row, uint64_t{0});
  for (int64_t e = 0; e < count; ++e) {
    if (rows[e] < 0 || rows[e] >= n_rows || cols[e] < 0 || cols[e] >= n_cols) return e;
    words[rows[e] * per_row + (cols[e] >> 6)] |= uint64_t{1} << (cols[e] & 63);
  }
  return -1;
}

namespace {

// Visits the columns j of the set bits of one packed row, in increasing order.
template <class Visit>
inline void for_each_one(const uint64_t* bits, int64_t per_row, Visit&& visit) {
  for (int64_t w = 0; w < per_row; ++w)
    for (uint64_t x = bits[w]; x != 0; x &= x - 1) visit((w << 6) + __builtin_ctzll(x));
}

// target (r) += src (r).
template <int R, class T>
inline void add_row(T* target, const T* src, int64_t r) {
#pragma omp simd
  for (int64_t c = 0; c < static_or<R>(r); ++c) target[c] += src[c];
}

// Gather form: out row i = the sum of F's rows j over the ones of row i (F read at random: for
// an F that stays in cache).
template <class T, int R>
void gather_rows(const uint64_t* words, const T* F, int64_t batch, int64_t n, int64_t m, int64_t r, T* out) {
  const int64_t per_row = binary_words(m), rank = static_or<R>(r);
#pragma omp parallel for schedule(dynamic, 16) if (batch * n * per_row * 8 * rank > kParallelMinWork)
  for (int64_t row = 0; row < batch * n; ++row) {
    const T* factor = F + (row / n) * m * rank;
    T* target = out + row * rank;
    if constexpr (R > 0) {
      // Two accumulators held in registers (the ones of a word taken in pairs) halve the chain
      // of dependent adds.
      lanes::RegisterRow<T, R> even, odd;
      even.zero();
      odd.zero();
      const uint64_t* bits = words + row * per_row;
      for (int64_t w = 0; w < per_row; ++w) {
        uint64_t x = bits[w];
        while (x != 0) {
          even.add(factor + ((w << 6) + __builtin_ctzll(x)) * R);
          x &= x - 1;
          if (x == 0) break;
          odd.add(factor + ((w << 6) + __builtin_ctzll(x)) * R);
          x &= x - 1;
        }
      }
      even.add(odd);
      even.store(target);
    } else {
      const uint64_t* bits = words + row * per_row;
      lanes::row_tiles<T>(rank, target, [&](auto& acc, int64_t c0) {
        for_each_one(bits, per_row, [&](int64_t j) { acc.add(factor + j * rank + c0); });
      });
    }
  }
}

// Scatter form: out = A^T G by streaming G's rows i into the rows j of the ones of row i (out
// read at random: for a tall G that does not stay in cache while out does). ones(b, i, visit)
// calls visit(j) for the ones of problem b's row i. Rows are split into fixed blocks of at least
// min_rows rows (at most max_blocks); block 0 sums into out, each other block into its own
// partial out, added in block order at the end: the same sums for any thread count.
template <class T, int R, class Ones>
void scatter_rows(const Ones& ones, const T* G, int64_t batch, int64_t n, int64_t m, int64_t r, int64_t work,
                  int64_t min_rows, int64_t max_blocks, T* out) {
  const int64_t rank = static_or<R>(r);
  const int64_t blocks = std::clamp<int64_t>(n / min_rows, 1, max_blocks);
  std::vector<T> partial(static_cast<size_t>(batch * (blocks - 1) * m * rank));
  std::fill_n(out, batch * m * rank, T(0));
#pragma omp parallel for schedule(dynamic, 1) collapse(2) if (work * rank > kParallelMinWork)
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t block = 0; block < blocks; ++block) {
      T* sums = block == 0 ? out + b * m * rank : partial.data() + (b * (blocks - 1) + block - 1) * m * rank;
      if (block > 0) std::fill_n(sums, m * rank, T(0));
      for (int64_t i = n * block / blocks; i < n * (block + 1) / blocks; ++i) {
        const T* row = G + (b * n + i) * rank;
        // G's row in registers: read once, not again after every store into the (possibly
        // aliasing, for the compiler) partial sums.
        T local[R > 0 ? R : 1];
        if constexpr (R > 0)
          for (int c = 0; c < R; ++c) local[c] = row[c];
        const T* src = R > 0 ? local : row;
        ones(b, i, [&](int64_t j) { add_row<R>(sums + j * rank, src, rank); });
      }
    }
  if (blocks == 1) return;
#pragma omp parallel for schedule(static) if (batch * m * rank * blocks > kParallelMinWork)
  for (int64_t row = 0; row < batch * m; ++row) {
    const int64_t b = row / m, j = row % m;
    for (int64_t block = 1; block < blocks; ++block)
      add_row<R>(out + row * rank, partial.data() + ((b * (blocks - 1) + block - 1) * m + j) * rank, rank);
  }
}

// The packed scatter's blocks: many small ones (the words of a dense A are cheap to scan).
constexpr int64_t kPackedScatterMinRows = 2048;
constexpr int64_t kPackedScatterBlocks = 64;
// The indexed scatter's: fewer, larger ones (fewer partial outputs to add at the end).
constexpr int64_t kIndexedScatterMinRows = 8192;
constexpr int64_t kIndexedScatterBlocks = 16;

// The gather form for a sparse A listed by its ones' column indices (CSR; scatter_rows serves
// that listing too): at 1% ones a packed row's words mostly hold zero or one set bit, and finding
// them mispredicts a branch per word, while the indices give each row's ones with a known count
// (2.6M ones: 4 against 10 ms).
template <class T, int R>
void gather_indexed(const int64_t* indptr, const int32_t* indices, const T* F, int64_t n, int64_t r, T* out) {
  const int64_t rank = static_or<R>(r);
#pragma omp parallel for schedule(dynamic, 64) if (indptr[n] * rank > kParallelMinWork)
  for (int64_t row = 0; row < n; ++row) {
    T* target = out + row * rank;
    const int64_t end = indptr[row + 1];
    int64_t e = indptr[row];
    if constexpr (R > 0) {
      lanes::RegisterRow<T, R> even, odd;  // two chains of adds in registers, as in gather_rows
      even.zero();
      odd.zero();
      for (; e + 1 < end; e += 2) {
        even.add(F + static_cast<int64_t>(indices[e]) * R);
        odd.add(F + static_cast<int64_t>(indices[e + 1]) * R);
      }
      if (e < end) even.add(F + static_cast<int64_t>(indices[e]) * R);
      even.add(odd);
      even.store(target);
    } else {
      lanes::row_tiles<T>(rank, target, [&](auto& acc, int64_t c0) {
        for (int64_t f = e; f < end; ++f) acc.add(F + static_cast<int64_t>(indices[f]) * rank + c0);
      });
    }
  }
}

}  // namespace

template <class T>
void binary_times_dense(const uint64_t* words, const T* F, int64_t batch, int64_t n, int64_t m, int64_t r, T* out) {
  dispatch_narrow_rank(r, [&](auto width) { gather_rows<T, decltype(width)::value>(words, F, batch, n, m, r, out); });
}

template <class T>
void binary_transpose_times_dense(const uint64_t* words, const T* G, int64_t batch, int64_t n, int64_t m, int64_t r,
                                  T* out) {
  const int64_t per_row = binary_words(m);
  const auto ones = [&](int64_t b, int64_t i, auto&& visit) {
    for_each_one(words + (b * n + i) * per_row, per_row, visit);
  };
  dispatch_narrow_rank(r, [&](auto width) {
    scatter_rows<T, decltype(width)::value>(ones, G, batch, n, m, r, batch * n * per_row * 8, kPackedScatterMinRows,
                                            kPackedScatterBlocks, out);
  });
}

template <class T>
void binary_indexed_times_dense(const int64_t* indptr, const int32_t* indices, const T* F, int64_t n, int64_t m,
                                int64_t r, bool transpose, T* out) {
  dispatch_narrow_rank(r, [&](auto width) {
    if (transpose) {
      const auto ones = [&](int64_t, int64_t i, auto&& visit) {
        for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) visit(static_cast<int64_t>(indices[e]));
      };
      scatter_rows<T, decltype(width)::value>(ones, F, 1, n, m, r, indptr[n], kIndexedScatterMinRows,
                                              kIndexedScatterBlocks, out);
    } else
      gather_indexed<T, decltype(width)::value>(indptr, indices, F, n, r, out);
  });
}

#define LRH_INSTANTIATE_BINARY(T)                                                                            \
  template void binary_times_dense<T>(const uint64_t*, const T*, int64_t, int64_t, int64_t, int64_t, T*);   \
  template void binary_transpose_times_dense<T>(const uint64_t*, const T*, int64_t, int64_t, int64_t, int64_t, T*); \
  template void binary_indexed_times_dense<T>(const int64_t*, const int32_t*, const T*, int64_t, int64_t, int64_t, \
                                              bool, T*);
LRH_INSTANTIATE_BINARY(float)
LRH_INSTANTIATE_BINARY(double)
#undef LRH_INSTANTIATE_BINARY

}  // namespace lowrank_hpc::cpu
