// ldlt_factor and ldlt_apply (normal_equations.hpp) for a group of systems side by side, one per
// lane of a native vector V: entry (i, c) of every system is the vector G[i * ld + c]. One r x r
// factorisation on its own spends its time on dependent chains and partial vectors (r = 64: about
// a quarter of an exact ALS half-step at 15% of the FMA peak); across lanes every step is a whole
// vector and the chains of different entries overlap.
//
// Lane by lane the arithmetic is ldlt_factor's and ldlt_apply's, in their order: every entry
// subtracts its terms k = 0, 1, ... (left-looking here, in 4 x 4 register tiles; right-looking
// there), each product and difference rounded on its own. So each lane holds the bits ldlt_factor
// gives that system, in its layout (lower triangle L D, upper L^T, diagonal 1 / D).
//
// The loops over a tile's entries and a vector's lanes unroll whatever the optimisation level
// (their accumulators and shuffle masks must be registers and constants).
//
// Rows and columns r .. round_up(r, 4) - 1 are padding the caller fills with the identity
// (zero off the diagonal, one on it): the tiles then need no remainder, and the padding leaves
// the first r rows untouched (their sums never reach it).
#pragma once
#if !defined(__CUDACC__)
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "lowrank_hpc/core/numbers.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/register_tiles.hpp"

namespace lowrank_hpc::ops {

inline constexpr int kLaneTile = 4;  // the register tile: 4 x 4 entries, 16 accumulators

// acc[a][b] = G[i0 + a][c0 + b] minus the terms k < c0 of ldlt_factor's sum, in order (the
// diagonal block: only a >= b, the entries of the lower triangle).
template <bool kDiagonal, class V>
inline __attribute__((always_inline)) void lane_tile_prefix(const V* G, int64_t ld, int64_t i0, int64_t c0,
                                                            V (&acc)[kLaneTile][kLaneTile]) {
  constexpr int B = kLaneTile;
  #pragma GCC unroll 16
  for (int a = 0; a < B; ++a)
    #pragma GCC unroll 16
    for (int b = 0; b < B; ++b)
      if (!kDiagonal || a >= b) acc[a][b] = G[(i0 + a) * ld + c0 + b];
  const V* rows = G + i0 * ld;
  for (int64_t k = 0; k < c0; ++k) {
    const V* L_k = G + k * ld + c0;  // L[c0 + b][k], from the upper triangle
    V l[B];
    #pragma GCC unroll 16
    for (int b = 0; b < B; ++b) l[b] = L_k[b];
    #pragma GCC unroll 16
    for (int a = 0; a < B; ++a) {
      const V ld_ak = rows[a * ld + k];  // (L D)[i0 + a][k]
      #pragma GCC unroll 16
      for (int b = 0; b < B; ++b)
        if (!kDiagonal || a >= b) acc[a][b] -= ld_ak * l[b];
    }
  }
}

// G = L D L^T for every lane (G: rows of ld >= round_up(r, 4) vectors, padded as above; only the
// lower triangle is read). Returns ldlt_factor's verdict per lane, as a mask.
template <class V>
auto ldlt_factor_lanes(V* G, int64_t r, int64_t ld) {
  using E = typename element_of<V>::type;
  constexpr int B = kLaneTile;
  const E noise = static_cast<E>(r) * std::numeric_limits<E>::epsilon();
  auto ok = G[0] == G[0] || G[0] != G[0];  // true (every lane)
  const int64_t padded = (r + B - 1) / B * B;
  for (int64_t c0 = 0; c0 < padded; c0 += B) {
    // The diagonal block: its pivots, and its L entries, the multipliers of the rows below.
    V acc[B][B], L[B][B], inverse[B];
    lane_tile_prefix<true>(G, ld, c0, c0, acc);
    #pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      #pragma GCC unroll 16
      for (int a = b; a < B; ++a)
        #pragma GCC unroll 16
        for (int k = 0; k < b; ++k) acc[a][b] -= acc[a][k] * L[b][k];
      const V pivot = acc[b][b];
      if (c0 + b < r) ok = ok && is_finite(pivot) && pivot > noise * G[(c0 + b) * ld + c0 + b] && pivot > E(0);
      inverse[b] = E(1) / pivot;
      #pragma GCC unroll 16
      for (int a = b + 1; a < B; ++a) L[a][b] = acc[a][b] * inverse[b];
    }
    #pragma GCC unroll 16
    for (int b = 0; b < B; ++b) {
      G[(c0 + b) * ld + c0 + b] = inverse[b];
      #pragma GCC unroll 16
      for (int a = b + 1; a < B; ++a) {
        G[(c0 + a) * ld + c0 + b] = acc[a][b];
        G[(c0 + b) * ld + c0 + a] = L[a][b];
      }
    }
    for (int64_t i0 = c0 + B; i0 < padded; i0 += B) {
      lane_tile_prefix<false>(G, ld, i0, c0, acc);
      #pragma GCC unroll 16
      for (int b = 0; b < B; ++b)
        #pragma GCC unroll 16
        for (int a = 0; a < B; ++a) {
          #pragma GCC unroll 16
          for (int k = 0; k < b; ++k) acc[a][b] -= acc[a][k] * L[b][k];
          G[(i0 + a) * ld + c0 + b] = acc[a][b];
          G[(c0 + b) * ld + i0 + a] = acc[a][b] * inverse[b];
        }
    }
  }
  return ok;
}

// g <- G^-1 g for ldlt_factor_lanes' factor, lane by lane in ldlt_apply's order, in axpy form
// (each x[k], once final, leaves its term in the entries after it: their chains overlap).
template <class V>
void ldlt_apply_lanes(const V* G, V* g, int64_t r, int64_t ld) {
  for (int64_t k = 0; k + 1 < r; ++k) {  // L y = g
    const V y = g[k];
    const V* U_k = G + k * ld;  // L[i][k] for i > k
    for (int64_t i = k + 1; i < r; ++i) g[i] -= U_k[i] * y;
  }
  for (int64_t i = 0; i < r; ++i) g[i] *= G[i * ld + i];  // D^-1 y
  for (int64_t k = r - 1; k > 0; --k) {  // L^T x = D^-1 y, from the last x
    const V x = g[k];
    for (int64_t i = 0; i < k; ++i) g[i] -= G[i * ld + k] * x;
  }
}

// A group of up to kWidth systems (one native vector's lanes) assembled one by one in the
// register tiles' layout (RowSystemWorkspace: the upper triangle, rows ld numbers apart, zero past
// r), moved into lanes (transposes of kWidth x kWidth numbers in registers) and solved together:
// for each system the numbers of ldlt_factor_tiled and ldlt_apply_tiled, the bits of ldlt_factor
// and ldlt_apply.
template <class T>
struct LaneSystems {
  using Tiles = RegisterTiles<T>;
  using vec = typename Tiles::vec;
  static constexpr int kWidth = Tiles::kLanes;

  int64_t r, width, ld, padded, lane_rows, lane_ld;
  int count = 0;  // systems in the group so far

  explicit LaneSystems(int64_t rank)
      : r(rank), width(Tiles::padded(rank)), ld(Tiles::stride(rank)),
        padded((rank + kLaneTile - 1) / kLaneTile * kLaneTile), lane_rows(rows_for(rank)),
        // One vector past the rows: rows a multiple of 4 KiB apart fell in one of L1's sets
        // (r = 64: 2.0 against 3.0 us a system).
        lane_ld(lane_rows + 1),
        // The copies on whole cache lines, like the lanes (their rows' loads then split none).
        storage(static_cast<size_t>(kWidth * (width * ld + width) + kWidth)),
        slots(storage.data() + (kWidth - reinterpret_cast<uintptr_t>(storage.data()) / sizeof(T) % kWidth) % kWidth),
        lanes(static_cast<size_t>(lane_rows * lane_ld + lane_rows)) {}

  LaneSystems(const LaneSystems&) = delete;  // slots points into storage
  LaneSystems& operator=(const LaneSystems&) = delete;

  // The bytes of a thread's group (the systems' copies and their lanes), for the caller to keep
  // within L2.
  static int64_t footprint(int64_t rank) {
    const int64_t rows = rows_for(rank);
    return static_cast<int64_t>(sizeof(T)) * kWidth * Tiles::padded(rank) * Tiles::stride(rank) +
           static_cast<int64_t>(sizeof(vec)) * rows * (rows + 2);
  }
  // The lanes' rows: the transposes' whole vectors (width) or the factorisation's whole tiles.
  static int64_t rows_for(int64_t rank) {
    const int64_t width = Tiles::padded(rank), tiles = (rank + kLaneTile - 1) / kLaneTile * kLaneTile;
    return width > tiles ? width : tiles;
  }

  // The next system's G (width rows of ld numbers) and g (width numbers), for the assembly.
  T* G() { return slots + count * width * ld; }
  T* g() { return slots + kWidth * width * ld + count * width; }
  // Counts the system just assembled, whose solution goes to out_row (r numbers; zeros where
  // it is not positive definite); true when the group is whole (time to solve it).
  bool add(T* out_row) {
    outs[count] = out_row;
    return ++count == kWidth;
  }

  // Solves the count systems of the group into their rows; done(s, solved) then hears of the
  // s-th system and ldlt_factor's verdict.
  template <class Done>
  void solve(Done done) {
    // Lanes past count: the identity (no NaN or subnormal garbage through the arithmetic).
    const int systems = count;
    for (int s = count; s < kWidth; ++s) {
      T* G_s = G();
      for (int64_t p = 0; p < r; ++p)
        for (int64_t q = 0; q < width; ++q) G_s[p * ld + q] = p == q ? T(1) : T(0);
      T* g_s = g();
      for (int64_t p = 0; p < width; ++p) g_s[p] = T(0);
      add(nullptr);
    }
    move();
    vec* GL = lanes.data();
    vec* gl = GL + lane_rows * lane_ld;
    for (int64_t q = r; q < padded; ++q) {  // the padding: the identity
      for (int64_t p = 0; p < q; ++p) GL[q * lane_ld + p] = vec{};
      GL[q * lane_ld + q] = vec{} + T(1);
    }
    const auto solved = ldlt_factor_lanes<vec>(GL, r, lane_ld);
    ldlt_apply_lanes<vec>(GL, gl, r, lane_ld);
    for (int s = 0; s < systems; ++s) {
      for (int64_t c = 0; c < r; ++c) outs[s][c] = solved[s] ? gl[c][s] : T(0);
      done(s, solved[s] != 0);
    }
    count = 0;
  }

 private:
  using index_t = typename Tiles::index_t;
  std::vector<T> storage;
  T* slots;  // kWidth systems' G, then their g
  std::vector<vec> lanes;
  T* outs[kWidth] = {};  // where each system's solution goes

  // The systems in the slots into the lanes: row p of each one's upper triangle, kWidth numbers
  // at a time, becomes column p of the lanes' lower triangle (and g, g).
  void move() {
    vec* GL = lanes.data();
    vec* gl = GL + lane_rows * lane_ld;
    const T* g0 = slots + kWidth * width * ld;
    vec block[kWidth];
    for (int64_t p = 0; p < r; ++p) {
      for (int64_t q0 = p / kWidth * kWidth; q0 < width; q0 += kWidth) {
        #pragma GCC unroll 16
        for (int s = 0; s < kWidth; ++s) block[s] = Tiles::load(slots + s * width * ld + p * ld + q0);
        transpose(block);
        #pragma GCC unroll 16
        for (int j = 0; j < kWidth; ++j) GL[(q0 + j) * lane_ld + p] = block[j];
      }
    }
    for (int64_t q0 = 0; q0 < width; q0 += kWidth) {
      #pragma GCC unroll 16
      for (int s = 0; s < kWidth; ++s) block[s] = Tiles::load(g0 + s * width + q0);
      transpose(block);
      #pragma GCC unroll 16
      for (int j = 0; j < kWidth; ++j) gl[q0 + j] = block[j];
    }
  }

  // block[j] lane s <- block[s] lane j: log2(kWidth) rounds, each swapping the off-diagonal
  // h x h blocks of every 2h x 2h block with two-vector shuffles.
  template <int h = 1>
  static inline __attribute__((always_inline)) void transpose(vec (&block)[kWidth]) {
    if constexpr (h < kWidth) {
      typename Tiles::index_vec low{}, high{};
      #pragma GCC unroll 16
      for (int l = 0; l < kWidth; ++l) {
        const bool second = (l & h) != 0;
        low[l] = static_cast<index_t>(second ? kWidth + l - h : l);
        high[l] = static_cast<index_t>(second ? kWidth + l : l + h);
      }
      #pragma GCC unroll 16
      for (int i = 0; i < kWidth; ++i) {
        if (i & h) continue;
        const vec a = block[i], b = block[i + h];
        block[i] = __builtin_shuffle(a, b, low);
        block[i + h] = __builtin_shuffle(a, b, high);
      }
      transpose<2 * h>(block);
    }
  }
};

}  // namespace lowrank_hpc::ops
#endif
