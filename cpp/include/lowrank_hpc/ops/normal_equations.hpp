// ALS normal equations, one key row at a time, shared by the CPU driver and the CUDA kernel.
//
// One half-step of ALS fixes the other factor F and minimises, for every key row i,
//     sum over observed (i, j) of (v_ij - <u_i, f_j>)^2 + lambda_i ||u_i||^2,
// whose minimiser solves (sum_j f_j f_j^T + lambda_i I) u_i = sum_j v_ij f_j. Summed over both
// half-steps this is the objective
//     sum over observed (v_k - <u_i, v_j>)^2 + reg * sum_i w_i ||u_i||^2 + reg * sum_j w_j ||v_j||^2
// with w = 1 (reg_scaling "none") or w = the row's / column's number of observations ("count",
// ALS-WR as in Spark MLlib), so lambda_i = reg * w_i.
//
// The same equations with per-entry weights c_j and a term S shared by every row of a problem,
//     (S + lambda_i I + sum_j c_j f_j f_j^T) u_i = sum_j v_j f_j,
// are implicit feedback's (Hu, Koren and Volinsky 2008): S = F^T F (every pair of the matrix at
// confidence 1, which costs nothing per pair), c_j = alpha x_j, v_j = 1 + alpha x_j (observed
// pairs: preference 1 at confidence 1 + alpha x_j). Explicit ALS is c = 1 and no S.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/core/numbers.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"

#if !defined(__CUDACC__)
#include "lowrank_hpc/core/lanes.hpp"
#include "lowrank_hpc/ops/register_tiles.hpp"
#endif

namespace lowrank_hpc::ops {

// The one small SPD solver of the core: G x = g for a symmetric positive definite r x r G
// (row-major; only its lower triangle is read) by the square-root-free Cholesky factorisation
// G = L D L^T. The tiny systems of ALS and of the preconditioned gradient steps are bound by
// the latency and throughput of divisions and square roots, and LDL^T needs one division per
// pivot and no square root.
//
// ldlt_factor overwrites the lower triangle by L D, the upper by L^T, the diagonal by 1 / D,
// and returns whether G is numerically positive definite: false when a pivot D[j] is not
// finite or is <= r * eps * G[j, j] (cancellation down to rounding noise); the factor is then
// meaningless. No early exit: T may be a GCC vector holding one system per lane (the result is
// then a mask of the lanes), and the same code runs for one system on the host and the device.
//
// Right-looking: step k finishes column k and subtracts its outer product from the trailing
// lower triangle, row by row over contiguous entries (a loop that vectorises). Every entry
// still subtracts its terms in the order k = 0, 1, ... of the left-looking dot products, which
// ran down strided columns one number at a time (r = 128: most of an exact ALS half-step).
template <class T, int R = 0>
LRH_HD auto ldlt_factor(T* G, int64_t rank) {
  using E = typename element_of<T>::type;
  const int64_t r = static_or<R>(rank);
  const E noise = static_cast<E>(r) * std::numeric_limits<E>::epsilon();
  auto ok = G[0] == G[0] || G[0] != G[0];  // true (every lane)
  // The pivots' scale, the original diagonal, waits in the upper triangle's last column (free
  // until L^T's last column is written there, just after each is read); the last one here.
  const T last_scale = G[(r - 1) * r + (r - 1)];
  for (int64_t j = 0; j + 1 < r; ++j) G[j * r + (r - 1)] = G[j * r + j];
  for (int64_t k = 0; k < r; ++k) {
    const T pivot = G[k * r + k];  // minus (L D)[k, j] L[k, j] for every j < k
    const T scale = k + 1 < r ? G[k * r + (r - 1)] : last_scale;
    ok = ok && is_finite(pivot) && pivot > noise * scale && pivot > E(0);
    const T inverse = E(1) / pivot;
    G[k * r + k] = inverse;
    for (int64_t i = k + 1; i < r; ++i) G[k * r + i] = G[i * r + k] * inverse;  // L[i, k], transposed
    const T* L_k = G + k * r;
    for (int64_t i = k + 1; i < r; ++i) {  // (i, c) for k < c <= i: minus (L D)[i, k] L[c, k]
      const T ld = G[i * r + k];
      T* G_i = G + i * r;
      for (int64_t c = k + 1; c <= i; ++c) G_i[c] -= ld * L_k[c];
    }
  }
  return ok;
}

// g <- G^-1 g for the factor of ldlt_factor (one right-hand side; call again for another).
template <class T, int R = 0>
LRH_HD void ldlt_apply(const T* G, T* g, int64_t rank) {
  const int64_t r = static_or<R>(rank);
  for (int64_t i = 0; i < r; ++i) {  // L y = g
    T entry = g[i];
    for (int64_t k = 0; k < i; ++k) entry -= G[k * r + i] * g[k];
    g[i] = entry;
  }
  // L^T x = D^-1 y, each x[i] subtracting the x[k] from the last: x[r - 1] is final first, so
  // the rows' sums overlap (the host's tiled solve runs the same order).
  for (int64_t i = r - 1; i >= 0; --i) {
    T entry = g[i] * G[i * r + i];
    for (int64_t k = r - 1; k > i; --k) entry -= G[i * r + k] * g[k];
    g[i] = entry;
  }
}

// Solves G x = g in place (x overwrites g); returns ldlt_factor's verdict (x is meaningless
// where it is false).
template <class T, int R = 0>
LRH_HD auto ldlt_solve(T* G, T* g, int64_t rank) {
  const auto ok = ldlt_factor<T, R>(G, rank);
  ldlt_apply<T, R>(G, g, rank);
  return ok;
}

// Finishes one row from its assembled system (count: its observations): out_row = G^-1 g, or
// zeros for a row without observations or a singular system. Returns whether the row counts as
// singular: a failed factorisation, or no observations where empty_singular (an unregularised
// row with no data: reg == 0 and nothing shared). For lanes (T and count GCC vectors), the same
// per lane, as a mask.
template <class T, int R = 0, class Count>
LRH_HD auto solve_row(T* G, T* g, int64_t rank, Count count, bool empty_singular, T* out_row) {
  const int64_t r = static_or<R>(rank);
  const auto has_data = count > 0;
  const auto solved = has_data && ldlt_solve<T, R>(G, g, r);
  for (int64_t c = 0; c < r; ++c) out_row[c] = solved ? g[c] : T{};
  return !solved && (has_data || empty_singular);
}

// The CSR entries of the key rows of a batch of problems (block-diagonal layout: problem b's
// key row i is flattened row b * n_key + i, its other-side row j is F row b * n_other + j).
// CSR entry j has other index others[j] and value vals[j] (the values moved into CSR order once).
// R > 0 fixes the rank at compile time (the r x r loops of small ranks unroll); R = 0 reads r.
template <class T, class I, int R = 0>
struct NormalEquations {
  const int64_t* indptr;  // (batch * n_key + 1)
  const I* others;        // (nnz), in CSR order, each in [0, n_other)
  const T* vals;          // (nnz), in CSR order: the right-hand side's coefficients v_j
  const T* F;             // (batch, n_other, r), the fixed factor
  int64_t n_key, n_other, r;
  T reg;
  bool count_scaling;
  const T* weights = nullptr;  // (nnz) c_j in CSR order, or null for c = 1
  const T* shared = nullptr;   // (batch, r, r) symmetric S of each problem, or null for none

  LRH_HD int64_t count(int64_t row) const { return indptr[row + 1] - indptr[row]; }
  LRH_HD T lambda(int64_t row) const { return count_scaling ? reg * static_cast<T>(count(row)) : reg; }
  LRH_HD T value(int64_t j) const { return vals[j]; }
  LRH_HD T weight(int64_t j) const { return weights ? weights[j] : T(1); }
  LRH_HD const T* shared_block(int64_t b) const {
    return shared ? shared + b * static_or<R>(r) * static_or<R>(r) : nullptr;
  }
  // A row without observations: its solution is zero (the right-hand side is), and it is
  // singular only when nothing else makes its system definite (no S, reg == 0).
  LRH_HD bool empty_row_singular() const { return !shared && !(reg > T(0)); }
  // outs[g] (r) += sign S ps[g] for the n rows g < n and the problem's S (symmetric, so row k of
  // S is its column k): axpy form, each out[c] summed over k in order.
  LRH_HD void add_shared_times(const T* S, const T* const* ps, T sign, T* const* outs, int n) const {
    const int64_t r = static_or<R>(this->r);
#if !defined(__CUDACC__)
    // Host: tiles of four native vectors held in registers over k (summed in memory, every k's
    // add waited on the previous k's store: 5,700 cycles for r = 128, two thirds of a CG step),
    // for kSharedRows rows at a time: each stretch of S read serves them all (r = 128: S is
    // 64 KiB, more than L1 holds, and a row at a time read all of it per row and CG step).
    const int64_t tiled = r / kSharedTile * kSharedTile;
    for (int64_t c0 = 0; c0 < tiled; c0 += kSharedTile) {
      int g = 0;
      for (; g + kSharedRows <= n; g += kSharedRows) shared_tile<kSharedRows>(S, ps + g, sign, outs + g, c0);
      for (; g < n; ++g) shared_tile<1>(S, ps + g, sign, outs + g, c0);
    }
#else
    const int64_t tiled = 0;
#endif
    if (tiled == r) return;
    for (int g = 0; g < n; ++g) {
      for (int64_t k = 0; k < r; ++k) {
        const T pk = sign * ps[g][k];
        const T* S_k = S + k * r;
        for (int64_t c = tiled; c < r; ++c) outs[g][c] += pk * S_k[c];
      }
    }
  }
#if !defined(__CUDACC__)
  static constexpr int kSharedTile = lanes::kTileNumbers<T>;
  static constexpr int kSharedRows = lanes::kNativeBytes == 64 ? 4 : 2;  // 16 (AVX-512) or 8 accumulators
  template <int kRows>
  inline __attribute__((always_inline)) void shared_tile(const T* S, const T* const* ps, T sign, T* const* outs,
                                                         int64_t c0) const {
    const int64_t r = static_or<R>(this->r);
    lanes::RegisterRow<T, kSharedTile> acc[kRows];
#pragma GCC unroll 4
    for (int g = 0; g < kRows; ++g) {
      acc[g].zero();
      acc[g].add(outs[g] + c0);
    }
    for (int64_t k = 0; k < r; ++k) {
#pragma GCC unroll 4
      for (int g = 0; g < kRows; ++g) acc[g].add_scaled(sign * ps[g][k], S + k * r + c0);
    }
#pragma GCC unroll 4
    for (int g = 0; g < kRows; ++g) acc[g].store(outs[g] + c0);
  }
#endif
  // The row's problem's block of F, found once per row (a division per entry would dominate).
  LRH_HD const T* factor_block(int64_t row) const { return F + (row / n_key) * n_other * static_or<R>(r); }
  LRH_HD const T* factor_row(const T* block, int64_t j) const {
    return block + static_cast<int64_t>(others[j]) * static_or<R>(r);
  }

#if !defined(__CUDACC__)
  // Host: asks for entry j's factor row ahead of its use (j < end): on real data the other
  // factor outgrows the caches, and a row read when needed waits on its misses.
  static constexpr int64_t kAhead = 8;
  void prefetch_row(const T* block, int64_t j, int64_t end) const {
    if (j >= end) return;
    const char* row = reinterpret_cast<const char*>(factor_row(block, j));
    for (int64_t byte = 0; byte < static_or<R>(r) * static_cast<int64_t>(sizeof(T)); byte += 64)
      __builtin_prefetch(row + byte);
  }
#endif

  // out (r) += sum over the entries j in [begin, end) of coef(j) f_j, each out[c] summed over j
  // in order (coef must not read out).
  template <class Coef>
  LRH_HD void add_entry_rows(const T* block, int64_t begin, int64_t end, Coef coef, T* out) const {
    const int64_t r = static_or<R>(this->r);
#if !defined(__CUDACC__)
    // Host: the coefficients of up to 32 entries first, then out in registers over them, a tile
    // of four native vectors (or the whole row of a compiled rank) at a time; a run-time rank's
    // rest in one more pass, its last numbers by masked loads (a compiled rank leaves no rest).
    // Summed in memory, each entry's add waited on the previous entry's store (CG at r = 20
    // floats took 5.5x r = 16's time). Each number of out adds the same products in the same
    // order either way.
    constexpr int kWidth = R > 0 && R <= lanes::kTileNumbers<T> ? R : lanes::kTileNumbers<T>;
    constexpr int kChunk = 32;
    T coefs[kChunk];
    for (int64_t j0 = begin; j0 < end; j0 += kChunk) {
      const int n = static_cast<int>(end - j0 < kChunk ? end - j0 : kChunk);
      for (int t = 0; t < n; ++t) {
        prefetch_row(block, j0 + t + kAhead, end);
        coefs[t] = coef(j0 + t);
      }
      lanes::row_tiles<T, kWidth>(r, out, [&](auto& acc, int64_t c0) {
        acc.add(out + c0);
        for (int t = 0; t < n; ++t) acc.add_scaled(coefs[t], factor_row(block, j0 + t) + c0);
      });
    }
    return;
#endif
    for (int64_t j = begin; j < end; ++j) {
      const T a = coef(j);
      const T* f = factor_row(block, j);
      for (int64_t c = 0; c < r; ++c) out[c] += a * f[c];
    }
  }

  // G[a, c] (c <= a) of the row's system: S's entry, then the entries in CSR order, then the
  // shift (device: one thread each; accumulate_into's order).
  LRH_HD T gram_entry(int64_t row, int64_t a, int64_t c) const {
    const T* block = factor_block(row);
    const T* S = shared_block(row / n_key);
    T acc = S ? S[a * static_or<R>(r) + c] : T(0);
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
      const T* f = factor_row(block, j);
      acc += (weight(j) * f[a]) * f[c];
    }
    return a == c ? acc + lambda(row) : acc;
  }

  // g[a] of the row's right-hand side, entries summed in CSR order.
  LRH_HD T rhs_entry(int64_t row, int64_t a) const {
    const T* block = factor_block(row);
    T acc = T(0);
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) acc += value(j) * factor_row(block, j)[a];
    return acc;
  }

  // Assembles the row's system in one pass over its entries (host; every sum runs in the same
  // order as gram_entry / rhs_entry) and solves it into out_row (solve_row); true when singular.
  // b is the row's problem, known to a caller that walks problems (no division per row).
  // G (r x r) and g (r) are scratch for a run-time rank; a compile-time rank ignores them.
  LRH_HD bool solve(int64_t row, int64_t b, T* G, T* g, T* out_row) const {
    if constexpr (R > 0) {
      // The sums stay in registers (local arrays of a compile-time size); summed in memory,
      // each update would wait on a store-to-load round trip. The solve gets its own copy,
      // since its indexed accesses would pull the sums into memory.
      T Gl[R * R] = {}, gl[R] = {};
      if (const T* S = shared_block(b))
        for (int64_t t = 0; t < R * R; ++t) Gl[t] = S[t];
      accumulate_into(row, b, R, Gl, gl);
      T Gs[R * R], gs[R];
      for (int64_t t = 0; t < R * R; ++t) Gs[t] = Gl[t];
      for (int64_t t = 0; t < R; ++t) gs[t] = gl[t];
      return solve_row<T, R>(Gs, gs, R, count(row), empty_row_singular(), out_row);
    } else {
      const T* S = shared_block(b);
      for (int64_t t = 0; t < r * r; ++t) G[t] = S ? S[t] : T(0);
      for (int64_t t = 0; t < r; ++t) g[t] = T(0);
      accumulate_into(row, b, r, G, g);
      return solve_row<T, 0>(G, g, r, count(row), empty_row_singular(), out_row);
    }
  }

#if !defined(__CUDACC__)
  // solve's arithmetic in solve's order at the rate of register tiles (register_tiles.hpp; the
  // host, where als_cpu.cpp's use_tiles says): the same bits, except that G's multiply-adds are
  // fused where RegisterTiles<T>::kFusedGram. ws: the thread's workspace for this rank and problem set.
  bool solve_tiled(int64_t row, int64_t b, RowSystemWorkspace<T>& ws, T* out_row) const {
    const int64_t r = this->r;
    if (count(row) == 0) {
      for (int64_t c = 0; c < r; ++c) out_row[c] = T(0);
      return empty_row_singular();
    }
    assemble_tiled(row, b, ws, ws.G, ws.g);
    const bool solved = ldlt_factor_tiled(ws.G, ws.U, ws.scales, r, ws.width, ws.ld);
    ldlt_apply_tiled(ws.scales, ws.U, ws.g, r, ws.width, ws.ld);
    for (int64_t c = 0; c < r; ++c) out_row[c] = solved ? ws.g[c] : T(0);
    return !solved;
  }

  // solve_tiled's system of a row with observations, into G (the upper triangle, ws.width rows
  // ws.ld numbers apart, zero past r) and g (ws.width numbers; zero past r).
  void assemble_tiled(int64_t row, int64_t b, RowSystemWorkspace<T>& ws, T* G, T* g) const {
    using Tiles = RegisterTiles<T>;
    const int64_t r = this->r, ld = ws.ld, width = ws.width;
    const int64_t rows_up = (r + Tiles::kRows - 1) / Tiles::kRows * Tiles::kRows;
    const int64_t begin = indptr[row], end = indptr[row + 1];
    const T* block = F + b * n_other * r;
    // The tiles cover what the factorisation reads: the first chunk's start from S^T (the upper
    // triangle mirrors solve's lower) or zero, no pass to clear G.
    const T* start = nullptr;
    if (const T* S = shared_block(b)) {
      if (ws.shared_problem != b) {
        for (int64_t p = 0; p < r; ++p)
          for (int64_t q = 0; q < r; ++q) ws.shared_transposed[p * ld + q] = S[q * r + p];
        ws.shared_problem = b;
      }
      start = ws.shared_transposed;
    }
    for (int64_t c = 0; c < width; ++c) g[c] = T(0);
    // The tiles ask for the factor rows of the entries after the chunk (the row's next chunk or
    // the next rows', the problem's entries in CSR order: a thread's next row is mostly the
    // next one) while they compute.
    const int64_t problem_end = indptr[(b + 1) * n_key];
    PrefetchRows ahead{ws.ahead.data(), 0, r * static_cast<int64_t>(sizeof(T))};
    for (int64_t j0 = begin; j0 < end; j0 += ws.chunk) {
      const int64_t n = end - j0 < ws.chunk ? end - j0 : ws.chunk;
      for (int64_t t = 0; t < n; ++t) {
        prefetch_row(block, j0 + t + kAhead, end);
        const T* f = factor_row(block, j0 + t);
        std::memcpy(ws.A + t * ld, f, sizeof(T) * static_cast<size_t>(r));
        if (weights) {
          const T w = weights[j0 + t];
          for (int64_t c = 0; c < r; ++c) ws.B[t * ld + c] = w * f[c];
        }
      }
      ahead.count = problem_end - (j0 + n) < n ? problem_end - (j0 + n) : n;
      for (int64_t t = 0; t < ahead.count; ++t)
        ws.ahead[t] = reinterpret_cast<const char*>(factor_row(block, j0 + n + t));
      Tiles::add_rows(ws.A, ld, n, vals + j0, width, g);  // g += sum_j v_j f_j, entries in order
      Tiles::template upper_tiles<false>(ws.A, ld, ws.B, ld, n, start, G, ld, width, 0, rows_up, nullptr, ahead);
      start = G;
    }
    const T shift = lambda(row);
    for (int64_t p = 0; p < r; ++p) G[p * ld + p] += shift;
  }
#endif

  // Conjugate gradients on the row's system G x = g from x (the row's previous factor: a warm
  // start), ``steps`` steps (Takacs, Pilaszy and Tikk 2011; implicit's default solver). G is
  // never formed: G p = S p + sum_j c_j <f_j, p> f_j + lambda p is one pass over the row's
  // entries (plus r^2 for S), so a step costs O(entries r + r^2) against the exact solve's
  // O(entries r^2 + r^3). Dots over r take strided_dot's fixed order (the same on both
  // backends). scratch: 3 r. A row without observations becomes zero (its exact solution).
  // misfits (2 count(row)), if given: its first count(row) get each entry's v_j - c_j <f_j, x>
  // at the returned x (unweighted: the entry's residual), kept up to date from the steps' own
  // dots (x moves by alpha p, so each misfit by -alpha c_j <f_j, p>) instead of another pass
  // over the entries; the rest is scratch.
  LRH_HD bool cg_solve(int64_t row, int64_t b, int steps, T* scratch, T* x, T* misfits = nullptr) const {
    if (count(row) == 0) {
      for (int64_t c = 0; c < static_or<R>(r); ++c) x[c] = T(0);
      return empty_row_singular();
    }
    cg_solve_rows<1>(&row, 1, b, steps, scratch, &x, &misfits);
    return false;
  }

  // cg_solve for n <= N rows of problem b, each with observations, step by step together: every
  // row's arithmetic is cg_solve's on its own, in its order, and only S p is taken for the rows
  // still stepping at once (add_shared_times). xs[g], misfits[g]: row rows[g]'s x and misfits
  // (or null); scratch: 3 r n.
  template <int N>
  LRH_HD void cg_solve_rows(const int64_t* rows, int n, int64_t b, int steps, T* scratch, T* const* xs,
                            T* const* misfits) const {
    const int64_t r = static_or<R>(this->r);
    const T* block = F + b * n_other * r;
    const T* S = shared_block(b);
    T* residual[N];   // g - G x
    T* direction[N];
    T* product[N];  // G direction
    T squared[N];
    bool live[N];  // still stepping
    for (int g = 0; g < n; ++g) {
      residual[g] = scratch + 3 * r * g;
      direction[g] = residual[g] + r;
      product[g] = direction[g] + r;
      const T shift = lambda(rows[g]);
      for (int64_t c = 0; c < r; ++c) residual[g][c] = -shift * xs[g][c];
    }
    if (S) add_shared_times(S, xs, T(-1), residual, n);
    for (int g = 0; g < n; ++g) {
      const int64_t begin = indptr[rows[g]];
      const T* x = xs[g];
      T* fits = misfits[g];
      add_entry_rows(
          block, begin, indptr[rows[g] + 1],
          [&](int64_t j) {
            const T misfit = value(j) - weight(j) * strided_dot<T, R>(factor_row(block, j), x, r, 0, 1);
            if (fits) fits[j - begin] = misfit;
            return misfit;
          },
          residual[g]);
      for (int64_t c = 0; c < r; ++c) direction[g][c] = residual[g][c];
      squared[g] = strided_dot<T, R>(residual[g], residual[g], r, 0, 1);
      live[g] = squared[g] > T(0);
    }
    for (int step = 0; step < steps; ++step) {
      const T* moving[N];  // the directions and products of the rows still stepping
      T* products[N];
      int m = 0;
      for (int g = 0; g < n; ++g) {
        if (!live[g]) continue;
        const T shift = lambda(rows[g]);
        for (int64_t c = 0; c < r; ++c) product[g][c] = shift * direction[g][c];
        moving[m] = direction[g];
        products[m++] = product[g];
      }
      if (m == 0) break;
      if (S) add_shared_times(S, moving, T(1), products, m);
      for (int g = 0; g < n; ++g) {
        if (!live[g]) continue;
        const int64_t begin = indptr[rows[g]], entries = indptr[rows[g] + 1] - begin;
        T* fits = misfits[g];
        T* moves = fits ? fits + entries : nullptr;  // this step's c_j <f_j, p>
        const T* p = direction[g];
        add_entry_rows(
            block, begin, begin + entries,
            [&](int64_t j) {
              const T move = weight(j) * strided_dot<T, R>(factor_row(block, j), p, r, 0, 1);
              if (moves) moves[j - begin] = move;
              return move;
            },
            product[g]);
        const T curvature = strided_dot<T, R>(direction[g], product[g], r, 0, 1);
        if (!(curvature > T(0))) {  // a singular direction (reg == 0, fewer entries than r)
          live[g] = false;
          continue;
        }
        const T alpha = squared[g] / curvature;
        T* x = xs[g];
        for (int64_t c = 0; c < r; ++c) {
          x[c] += alpha * direction[g][c];
          residual[g][c] -= alpha * product[g][c];
        }
        if (fits)
          for (int64_t t = 0; t < entries; ++t) fits[t] -= alpha * moves[t];
        const T next = strided_dot<T, R>(residual[g], residual[g], r, 0, 1);
        const T beta = next / squared[g];
        for (int64_t c = 0; c < r; ++c) direction[g][c] = residual[g][c] + beta * direction[g][c];
        squared[g] = next;
        live[g] = next > T(0);
      }
    }
  }

  // sum over the row's entries of (<x, f_j> - v_j)^2 in double, x its (r) solution: the fit
  // term of explicit ALS's objective, summed while the row's factor rows are still in cache
  // (a second pass over the entries would gather every factor row again). Each dot summed in
  // order over c (the fused and dense iterations', which must agree bit for bit), or with
  // vector_dots in strided_dot's order (the rows kernel's: a chain of r dependent adds per
  // entry cost more than the pass it saves).
  LRH_HD double squared_residuals(int64_t row, int64_t b, const T* x, bool vector_dots = false) const {
    const int64_t r = static_or<R>(this->r);
    const T* block = F + b * n_other * r;
    double total = 0.0;
    for (int64_t j = indptr[row]; j < indptr[row + 1]; ++j) {
      const T* f = factor_row(block, j);
      T dot = T(0);
      if (vector_dots) {
        dot = strided_dot<T, R>(x, f, r, 0, 1);
      } else {
        for (int64_t c = 0; c < r; ++c) dot += x[c] * f[c];
      }
      const double z = static_cast<double>(dot - value(j));
      total += z * z;
    }
    return total;
  }

  // Adds the row's terms to G (lower triangle; zero or S) and zeroed g, then the shift on G's
  // diagonal.
  LRH_HD void accumulate_into(int64_t row, int64_t b, int64_t rank, T* G, T* g) const {
    const int64_t r = static_or<R>(rank);
    const T* block = F + b * n_other * r;
    int64_t j = indptr[row];
    if constexpr (R == 0 || R >= 8) {
      // G too large for registers: four entries per pass over it, a quarter of the loads and
      // stores of G. Each sum still adds the entries one at a time in CSR order.
      for (; j + 4 <= indptr[row + 1]; j += 4) {
        const T *f0 = factor_row(block, j), *f1 = factor_row(block, j + 1), *f2 = factor_row(block, j + 2),
                *f3 = factor_row(block, j + 3);
        const T v0 = value(j), v1 = value(j + 1), v2 = value(j + 2), v3 = value(j + 3);
        const T w0 = weight(j), w1 = weight(j + 1), w2 = weight(j + 2), w3 = weight(j + 3);
        for (int64_t a = 0; a < r; ++a) {
          g[a] = (((g[a] + v0 * f0[a]) + v1 * f1[a]) + v2 * f2[a]) + v3 * f3[a];
          const T x0 = w0 * f0[a], x1 = w1 * f1[a], x2 = w2 * f2[a], x3 = w3 * f3[a];
          T* G_a = G + a * r;
          for (int64_t c = 0; c <= a; ++c)
            G_a[c] = (((G_a[c] + x0 * f0[c]) + x1 * f1[c]) + x2 * f2[c]) + x3 * f3[c];
        }
      }
    }
    for (; j < indptr[row + 1]; ++j) {
      const T* f = factor_row(block, j);
      const T v = value(j), w = weight(j);
      for (int64_t a = 0; a < r; ++a) {
        g[a] += v * f[a];
        const T x = w * f[a];
        for (int64_t c = 0; c <= a; ++c) G[a * r + c] += x * f[c];
      }
    }
    const T shift = lambda(row);
    for (int64_t a = 0; a < r; ++a) G[a * r + a] += shift;
  }
};

}  // namespace lowrank_hpc::ops
