// Host-only: one row's r x r normal equations formed and factored in register tiles, the way a
// BLAS-3 kernel does (ALS's exact solve where als_cpu.cpp's use_tiles says: every rank above 4).
//
// The per-entry form (normal_equations.hpp) adds each entry's outer product into G in memory:
// one multiply-add per load and store of G, 3-7% of the GEMM rate. Here a tile of kRows x kCols
// entries of G stays in registers over a whole chunk of entries (a packed copy of their factor
// rows), and the factorisation's trailing updates take a panel of 2 kRows pivots at a time, so
// each load of G feeds a chunk's (or a panel's) multiply-adds.
//
// The numbers follow the per-entry form's order: every entry of G adds the same products in the
// same order (entries in CSR order, then the shift), ldlt_factor_tiled subtracts the same
// products in the same order k = 0, 1, ... as ldlt_factor, and ldlt_apply_tiled runs
// ldlt_apply's order. One difference: where the build has FMA (the avx2 and avx512 levels) G's
// multiply-adds are fused, one rounding each instead of two (the Gram's tiles ran 1.33x faster
// on the Zen 4 machine of BENCHMARKS.md's session 15), so G differs from the per-entry
// form's (and the device's) by rounding; kFusedGram says which, and the tests transcribe both.
// The factorisation and solve stay unfused: they are bound by latency, not by the FP pipes.
// The factorisation works on the upper triangle (G[p][q], p <= q, mirrors the per-entry form's
// G[q][p]) so that every update runs along contiguous rows; the lower triangle is scratch.
#pragma once
#if !defined(__CUDACC__)
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__FMA__)
#include <immintrin.h>
#endif

#include "lowrank_hpc/core/lanes.hpp"
#include "lowrank_hpc/ops/finite.hpp"

namespace lowrank_hpc::ops {

// Factor rows a tile pass asks for while it computes (the next chunk's, gathered next): rows[t]
// for t < count, each bytes long. A pass covers the byte offsets [begin, end) of every row, in
// 64-byte steps, the last clamped to the row's last byte (a row need not start a cache line).
struct PrefetchRows {
  const char* const* rows = nullptr;
  int64_t count = 0, bytes = 0, begin = 0, end = 0;
  inline __attribute__((always_inline)) void at(int64_t t) const {
    if (t >= count) return;
    for (int64_t offset = begin; offset < end; offset += 64)
      __builtin_prefetch(rows[t] + (offset < bytes ? offset : bytes - 1));
  }
};

template <class T>
struct RegisterTiles {
  using vec = typename lanes::Vector<T, lanes::kNativeBytes>::type;
  static constexpr int kLanes = lanes::kNativeBytes / static_cast<int>(sizeof(T));
  // kRows x kVectors accumulators plus the loads: 24 + 5 of AVX-512's 32 registers, 8 + 4 of 16
  // below. Each broadcast of a row's number feeds kVectors multiply-adds.
  static constexpr int kRows = lanes::kNativeBytes == 64 ? 8 : (kLanes >= 4 ? 4 : 2);
  static constexpr int kVectors = lanes::kNativeBytes == 64 ? 3 : 2;
  static constexpr int kCols = kVectors * kLanes;
  static_assert(kLanes % kRows == 0, "row blocks must not straddle a vector");

  // The width of the tiled rows: r rounded up to whole vectors (the padding stays zero).
  static int64_t padded(int64_t r) { return (r + kLanes - 1) / kLanes * kLanes; }
  // The rows' stride: the width, plus a vector where it is a multiple of 256 bytes (r = 128
  // floats: a column's numbers 512 bytes apart all fell in a few of L1's sets).
  static int64_t stride(int64_t r) {
    return padded(r) * static_cast<int64_t>(sizeof(T)) % 256 == 0 ? padded(r) + kLanes : padded(r);
  }

  // Lane numbers 0, 1, ... as integers of T's size (vector selects by lane).
  using index_t = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  using index_vec = typename lanes::Vector<index_t, sizeof(vec)>::type;
  static index_vec lane_numbers() {
    index_vec lane{};
    for (int l = 0; l < kLanes; ++l) lane[l] = static_cast<index_t>(l);
    return lane;
  }

  // Lane j of x on every lane (a shuffle: no trip through memory).
  static inline __attribute__((always_inline)) vec spread(const vec& x, int64_t j) {
    return __builtin_shuffle(x, index_vec{} + static_cast<index_t>(j));
  }

  static inline __attribute__((always_inline)) vec load(const T* p) {
    vec x;
    std::memcpy(&x, p, sizeof x);
    return x;
  }
  static inline __attribute__((always_inline)) void store(T* p, const vec& x) { std::memcpy(p, &x, sizeof x); }

  // Whether tile<V, false> (the Gram) fuses its multiply-adds: where the build has FMA.
#if defined(__FMA__)
  static constexpr bool kFusedGram = sizeof(vec) == 64 || sizeof(vec) == 32;
#else
  static constexpr bool kFusedGram = false;
#endif

  // acc + a x for a whole or a half vector W, one rounding where kFusedGram, two elsewhere (a
  // spread from a scalar: vec{} + a added a zero to a before each broadcast, since -0.0 + 0 is
  // not -0.0).
  template <class W>
  static inline __attribute__((always_inline)) W gram_multiply_add(const W& acc, T a, const W& x) {
#if defined(__FMA__)
    if constexpr (kFusedGram && sizeof(W) == 64 && sizeof(T) == 4) return _mm512_fmadd_ps(_mm512_set1_ps(a), x, acc);
    if constexpr (kFusedGram && sizeof(W) == 64 && sizeof(T) == 8) return _mm512_fmadd_pd(_mm512_set1_pd(a), x, acc);
    if constexpr (kFusedGram && sizeof(W) == 32 && sizeof(T) == 4) return _mm256_fmadd_ps(_mm256_set1_ps(a), x, acc);
    if constexpr (kFusedGram && sizeof(W) == 32 && sizeof(T) == 8) return _mm256_fmadd_pd(_mm256_set1_pd(a), x, acc);
    if constexpr (kFusedGram && sizeof(W) == 16 && sizeof(T) == 4) return _mm_fmadd_ps(_mm_set1_ps(a), x, acc);
    if constexpr (kFusedGram && sizeof(W) == 16 && sizeof(T) == 8) return _mm_fmadd_pd(_mm_set1_pd(a), x, acc);
#endif
    return acc + a * x;
  }

  // Half a native vector, for the row blocks whose diagonal starts half a vector in (kRows is
  // half a vector for AVX-512 and AVX2 floats): the whole vector computed kRows x kLanes / 2
  // entries of the lower triangle for nothing, a tenth of the Gram's work at r = 64.
  using half_vec = typename lanes::Vector<T, sizeof(vec) / 2>::type;
  static constexpr bool kHalfFirst = 2 * kRows == kLanes;

  static inline __attribute__((always_inline)) half_vec load_half(const T* p) {
    half_vec x;
    std::memcpy(&x, p, sizeof x);
    return x;
  }

  // G[p][q] = start[p][q] +- the sum over t < count of rows[t row_step + p] cols[t col_step + q]
  // for p in [p0, p0 + kRows), q in [q0, q0 + V kLanes): each entry summed over t in order, each
  // step gram_multiply_add's (adding) or a multiply then a subtraction (the factorisation's
  // trailing updates, which keep the per-entry form's bits). start: G itself, or
  // another matrix laid out as G, or null for zero. record, unless null: record[p ld + t] =
  // rows[t row_step + p] (the broadcasts, transposed: stores the FP-bound loop has room for).
  // ahead, unless null: its rows' lines asked for, a row a step. kHead (the Gram only): columns
  // [p0, p0 + kLanes / 2) in a half vector too, q0 = p0 + kLanes / 2 (a row block whose diagonal
  // starts half a vector in).
  template <int V, bool kSubtract, bool kHead = false>
  static inline __attribute__((always_inline)) void tile(const T* rows, int64_t row_step, const T* cols,
                                                         int64_t col_step, int64_t count, const T* start, T* G,
                                                         int64_t ld, int64_t p0, int64_t q0, T* record,
                                                         const PrefetchRows* ahead = nullptr) {
    static_assert(!(kHead && kSubtract), "the half vector is the Gram's");
    vec acc[kRows][V > 0 ? V : 1];
    half_vec head[kRows];
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      if constexpr (kHead) head[i] = start ? load_half(start + (p0 + i) * ld + p0) : half_vec{};
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) acc[i][v] = start ? load(start + (p0 + i) * ld + q0 + v * kLanes) : vec{};
    }
    for (int64_t t = 0; t < count; ++t) {
      if (ahead) ahead->at(t);
      half_vec h{};
      if constexpr (kHead) h = load_half(cols + t * col_step + p0);
      vec x[V > 0 ? V : 1];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) x[v] = load(cols + t * col_step + q0 + v * kLanes);
      const T* s = rows + t * row_step + p0;
#pragma GCC unroll 16
      for (int i = 0; i < kRows; ++i) {
        const T si = s[i];
        if (record) record[(p0 + i) * ld + t] = si;
        if constexpr (kHead) head[i] = gram_multiply_add(head[i], si, h);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) {
          if constexpr (kSubtract)
            acc[i][v] -= si * x[v];
          else
            acc[i][v] = gram_multiply_add(acc[i][v], si, x[v]);
        }
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      if constexpr (kHead) std::memcpy(G + (p0 + i) * ld + p0, &head[i], sizeof head[i]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) store(G + (p0 + i) * ld + q0 + v * kLanes, acc[i][v]);
    }
  }

  // Row c of G, V vectors from column q: minus (D L^T)[k][q..] L[c][k] for k in [k0, c), in order;
  // L[c][k] = multipliers[k ld] (column c of L^T).
  template <int V>
  static inline __attribute__((always_inline)) void left_looking(T* G, int64_t ld, const T* multipliers,
                                                                 int64_t k0, int64_t c, int64_t q) {
    T* G_c = G + c * ld + q;
    vec acc[V];
    for (int v = 0; v < V; ++v) acc[v] = load(G_c + v * kLanes);
    for (int64_t k = k0; k < c; ++k) {
      const T u = multipliers[k * ld];
      for (int v = 0; v < V; ++v) acc[v] -= u * load(G + k * ld + q + v * kLanes);
    }
    for (int v = 0; v < V; ++v) store(G_c + v * kLanes, acc[v]);
  }

  // out[c] += sum over t < count of coefs[t] rows[t ld + c] for c < width (a multiple of kLanes),
  // each summed over t in order, four vectors of out in registers at a time.
  static inline void add_rows(const T* rows, int64_t ld, int64_t count, const T* coefs, int64_t width, T* out) {
    int64_t c0 = 0;
    for (; c0 + 4 * kLanes <= width; c0 += 4 * kLanes) add_row_vectors<4>(rows, ld, count, coefs, c0, out);
    for (; c0 < width; c0 += kLanes) add_row_vectors<1>(rows, ld, count, coefs, c0, out);
  }
  template <int V>
  static inline __attribute__((always_inline)) void add_row_vectors(const T* rows, int64_t ld, int64_t count,
                                                                    const T* coefs, int64_t c0, T* out) {
    vec acc[V];
    for (int v = 0; v < V; ++v) acc[v] = load(out + c0 + v * kLanes);
    for (int64_t t = 0; t < count; ++t)
      for (int v = 0; v < V; ++v) acc[v] += coefs[t] * load(rows + t * ld + c0 + v * kLanes);
    for (int v = 0; v < V; ++v) store(out + c0 + v * kLanes, acc[v]);
  }

  // tile over rows [p_begin, p_end) (a multiple of kRows from p_begin), each from the vector
  // holding its diagonal (the upper triangle and some scratch) to column width; the first tile
  // of each row block records (tile's record). ahead, unless empty: the rows the next call
  // reads, a cache line of each per row block's first tile (the last block takes the rest), so
  // their misses overlap this call's arithmetic.
  template <bool kSubtract>
  static inline void upper_tiles(const T* rows, int64_t row_step, const T* cols, int64_t col_step, int64_t count,
                                 const T* start, T* G, int64_t ld, int64_t width, int64_t p_begin, int64_t p_end,
                                 T* record = nullptr, PrefetchRows ahead = {}) {
    for (int64_t p0 = p_begin; p0 < p_end; p0 += kRows) {
      int64_t q0 = p0 / kLanes * kLanes;
      T* first = record;
      ahead.begin = (p0 - p_begin) / kRows * 64;
      // Offsets up to the row's length plus a line: the last one clamped onto the row's last byte.
      ahead.end = p0 + kRows < p_end ? ahead.begin + 64 : ahead.bytes + 64;
      const PrefetchRows* lines = ahead.rows && ahead.begin < ahead.bytes + 64 ? &ahead : nullptr;
      if constexpr (!kSubtract && kHalfFirst) {
        // The Gram's row blocks that start half a vector in: that half, then up to two whole
        // vectors in the same tile (8 + 16 accumulators), the rest below. Columns [q0, p0) of
        // these rows are left alone (lower triangle: the factorisation never uses them).
        if (p0 - q0 == kLanes / 2) {
          const int64_t after = q0 + kLanes, whole = (width - after) / kLanes;
          if (whole >= 2) {
            tile<2, false, true>(rows, row_step, cols, col_step, count, start, G, ld, p0, after, nullptr, lines);
            q0 = after + 2 * kLanes;
          } else if (whole == 1) {
            tile<1, false, true>(rows, row_step, cols, col_step, count, start, G, ld, p0, after, nullptr, lines);
            q0 = after + kLanes;
          } else {
            tile<0, false, true>(rows, row_step, cols, col_step, count, start, G, ld, p0, after, nullptr, lines);
            q0 = after;
          }
          lines = nullptr;
        }
      }
      for (; q0 + kCols <= width; q0 += kCols, first = nullptr, lines = nullptr)
        tile<kVectors, kSubtract>(rows, row_step, cols, col_step, count, start, G, ld, p0, q0, first, lines);
      static_assert(kVectors <= 3, "the rest is one tile of 2 or 1 vectors");
      const int64_t rest = (width - q0) / kLanes;  // whole vectors, fewer than kVectors
      if (rest == 2) tile<2, kSubtract>(rows, row_step, cols, col_step, count, start, G, ld, p0, q0, first, lines);
      if (rest == 1) tile<1, kSubtract>(rows, row_step, cols, col_step, count, start, G, ld, p0, q0, first, lines);
    }
  }
};

// Per-thread scratch of the tiled row solve, for one rank (each block 64-byte aligned).
template <class T>
struct RowSystemWorkspace {
  using Tiles = RegisterTiles<T>;
  int64_t r, width, ld, chunk;
  std::vector<T> storage;
  std::vector<const char*> ahead;  // the next chunk's factor rows (PrefetchRows)
  T *A, *B, *G, *U, *scales, *g, *shared_transposed;
  int64_t shared_problem = -1;  // whose S^T shared_transposed holds

  RowSystemWorkspace(int64_t rank, bool weighted, bool shared)
      : r(rank), width(Tiles::padded(rank)), ld(Tiles::stride(rank)), chunk(chunk_rows(Tiles::stride(rank))) {
    const int64_t sizes[] = {chunk * ld, weighted ? chunk * ld : 0, ld * ld, ld * ld, ld, ld, shared ? ld * ld : 0};
    int64_t total = 0;
    for (int64_t s : sizes) total += round_up(s);
    storage.assign(static_cast<size_t>(total + kAlign), T(0));
    T* next = storage.data() + (kAlign - (reinterpret_cast<uintptr_t>(storage.data()) / sizeof(T)) % kAlign) % kAlign;
    T** slots[] = {&A, &B, &G, &U, &scales, &g, &shared_transposed};
    for (int s = 0; s < 7; ++s) {
      *slots[s] = sizes[s] > 0 ? next : nullptr;
      next += round_up(sizes[s]);
    }
    if (!weighted) B = A;
    ahead.resize(static_cast<size_t>(chunk));
  }

 private:
  static constexpr int64_t kAlign = 64 / static_cast<int64_t>(sizeof(T));
  static int64_t round_up(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
  // Entries per packed chunk: their rows (and weighted rows) about 64 KiB, the size of L2's
  // share a tile pass streams, at least 16 (a tile's loads and stores of G amortised).
  static int64_t chunk_rows(int64_t ld) {
    const int64_t rows = (64 * 1024) / (ld * static_cast<int64_t>(sizeof(T)));
    return rows < 16 ? 16 : (rows > 512 ? 512 : rows);
  }
};

// ldlt_factor's arithmetic on the upper triangle of G (rank r, rows of width numbers ld apart;
// rows and columns in [r, width) zero): on return G[k][c] (c > k) holds (D L^T)[k][c], U[k][c]
// L^T[k][c] and U[c][k] L[c][k] (U: ld x ld), scales (r numbers) 1 / D, and the result says
// whether G is numerically positive definite (ldlt_factor's test).
//
// Panels of kPanel pivots: each of the panel's rows takes the panel's earlier pivots in
// registers (left-looking, a few vectors of the row at a time), is finished, and then the rows
// below take the whole panel's products in register tiles, which also record their
// multipliers as L's rows. Every entry still subtracts its products in the order k = 0, 1, ...
template <class T>
bool ldlt_factor_tiled(T* G, T* U, T* scales, int64_t r, int64_t width, int64_t ld) {
  using Tiles = RegisterTiles<T>;
  using vec = typename Tiles::vec;
  constexpr int kPanel = 2 * Tiles::kRows;
  constexpr int kLanes = Tiles::kLanes;
  static_assert(kPanel % kLanes == 0, "a row's first vector starts inside its panel");
  const T noise = static_cast<T>(r) * std::numeric_limits<T>::epsilon();
  const int64_t rows_up = (r + Tiles::kRows - 1) / Tiles::kRows * Tiles::kRows;
  bool ok = true;
  for (int64_t k = 0; k < r; ++k) scales[k] = G[k * ld + k];
  for (int64_t k0 = 0; k0 < r; k0 += kPanel) {
    const int64_t k1 = k0 + kPanel < r ? k0 + kPanel : r;
    for (int64_t c = k0; c < k1; ++c) {
      T* G_c = G + c * ld;
      T* U_c = U + c * ld;
      // The row from the vector holding its diagonal (its lower part is scratch), up to four
      // vectors a pass (independent chains), the multipliers L[c][k] from the panel's rows of U.
      const int64_t head_at = c / kLanes * kLanes;
      int64_t q = head_at;
      for (; q + 4 * kLanes <= width; q += 4 * kLanes) Tiles::template left_looking<4>(G, ld, U + c, k0, c, q);
      switch ((width - q) / kLanes) {
        case 3: Tiles::template left_looking<3>(G, ld, U + c, k0, c, q); break;
        case 2: Tiles::template left_looking<2>(G, ld, U + c, k0, c, q); break;
        case 1: Tiles::template left_looking<1>(G, ld, U + c, k0, c, q); break;
        default: break;
      }
      // The pivot from the row's first vector in registers: a number read back from memory right
      // after its vector's store missed store forwarding. 1 / D goes to scales, G keeps D.
      const vec head = Tiles::load(G_c + head_at);
      const T pivot = Tiles::spread(head, c - head_at)[0];
      ok = ok && is_finite(pivot) && pivot > noise * scales[c] && pivot > T(0);
      const T inverse = T(1) / pivot;
      scales[c] = inverse;
      // L^T's row c (lanes up to the diagonal of the first vector: scratch, overwritten next by
      // L's row c in the panel; whole vectors stored before single numbers, not after).
      Tiles::store(U_c + head_at, head * inverse);
      for (q = head_at + kLanes; q < width; q += kLanes) Tiles::store(U_c + q, Tiles::load(G_c + q) * inverse);
      for (int64_t k = k0; k < c; ++k) U_c[k] = U[k * ld + c];
    }
    if (k1 < r)
      Tiles::template upper_tiles<true>(U + k0 * ld, ld, G + k0 * ld, ld, k1 - k0, G, G, ld, width, k1, rows_up,
                                        U + k0);
  }
  return ok;
}

// g <- G^-1 g for ldlt_factor_tiled's factor (inverse_pivots: its scales) in ldlt_apply's order,
// both triangles in axpy form along contiguous rows (L^T's rows forward, L's rows backward), in
// whole vectors: the one that holds the first (forward) or last (backward) entry of a row's
// range takes only its lanes in range. g: width numbers, zero past r.
template <class T>
void ldlt_apply_tiled(const T* inverse_pivots, const T* U, T* g, int64_t r, int64_t width, int64_t ld) {
  using Tiles = RegisterTiles<T>;
  using vec = typename Tiles::vec;
  constexpr int kLanes = Tiles::kLanes;
  using index_t = typename Tiles::index_t;
  const auto lane = Tiles::lane_numbers();
  // The next step's multiplier, lane j of x on every lane, taken in registers (read back from
  // memory, a number just stored with its vector missed store forwarding on every step).
  const auto spread = [](const vec& x, int64_t j) { return Tiles::spread(x, j); };
  vec y = Tiles::load(g);
  y = spread(y, 0);
  for (int64_t k = 0; k + 1 < r; ++k) {  // L y = g: y[i] minus L[i][k] y[k] for i > k, k = 0, 1, ...
    const T* U_k = U + k * ld;
    int64_t q = (k + 1) / kLanes * kLanes;
    const vec first = Tiles::load(g + q);
    const auto after = lane + static_cast<index_t>(q) > static_cast<index_t>(k);
    const vec head = after ? first - Tiles::load(U_k + q) * y : first;
    Tiles::store(g + q, head);
    for (int64_t p = q + kLanes; p < width; p += kLanes)
      Tiles::store(g + p, Tiles::load(g + p) - Tiles::load(U_k + p) * y);
    y = spread(head, k + 1 - q);  // y[k + 1] is final
  }
  for (int64_t i = 0; i < r; ++i) g[i] *= inverse_pivots[i];
  vec x = Tiles::load(g + (r - 1) / kLanes * kLanes);
  x = spread(x, (r - 1) % kLanes);
  for (int64_t k = r - 1; k > 0; --k) {  // L^T x = D^-1 y: x[i] minus L[k][i] x[k] for i < k, k = r - 1, ...
    const T* L_k = U + k * ld;
    int64_t q = 0;
    vec tail{};
    for (; q + kLanes <= k; q += kLanes) {
      tail = Tiles::load(g + q) - Tiles::load(L_k + q) * x;
      Tiles::store(g + q, tail);
    }
    if (q < k) {
      const vec last = Tiles::load(g + q);
      tail = (lane + static_cast<index_t>(q) < static_cast<index_t>(k)) ? last - Tiles::load(L_k + q) * x : last;
      Tiles::store(g + q, tail);
    } else {
      q -= kLanes;  // the last whole vector holds k - 1
    }
    x = spread(tail, k - 1 - q);  // x[k - 1] is final
  }
}

}  // namespace lowrank_hpc::ops
#endif
