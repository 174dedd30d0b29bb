// ALS for many small, densely observed problems, a group of W problems per SIMD register
// (core/lanes.hpp): each group is laid out densely, so every lane walks the same (i, j) grid and
// one vector operation does the work of W problems. The per-entry math is the shared functors'
// (ops/normal_equations.hpp, solvers/completion_step.hpp) run on lanes, and each sum runs in the
// order of the sparse kernel for entries given in (row, column) order: every lane gets the bits
// the per-problem solver gets.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_backend.hpp"
#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/core/lanes.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::cpu {

namespace {

template <class T>
using Bits = std::conditional_t<lanes::Lanes<T>::width == 8, uint8_t, uint16_t>;

// The lanes whose bit is set in bits, as the mask a comparison of T lanes gives.
// Helpers are LRH_HD (forced inline) so that they run in the caller's ISA clone.
template <class T>
LRH_HD auto lane_mask(Bits<T> bits) {
  using Int = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef Int ints __attribute__((vector_size(lanes::kBytes)));
  constexpr int W = lanes::Lanes<T>::width;
  ints one_bit_each{};
  for (int l = 0; l < W; ++l) one_bit_each[l] = Int(1) << l;
  return (one_bit_each & static_cast<Int>(bits)) != 0;
}

// One half-step for a group: out[k] (k < n_key) solves key k's system against F (n_other
// rows), the cell (k, o) being at grid position k * key_stride + o * other_stride. Returns the
// singular rows among the counted lanes.
template <class T, int R>
LRH_HD int64_t half_step(const Bits<T>* seen, lanes::LaneArray<T> values, lanes::LaneArray<T> counts,
                         int64_t n_key, int64_t n_other, int64_t key_stride, int64_t other_stride,
                         const lanes::vec<T>* F, T reg, bool count_scaling, uint32_t counted,
                         lanes::vec<T>* products, lanes::vec<T>* out) {
  using V = lanes::vec<T>;
  constexpr int P = R * (R + 1) / 2;
  // f_a f_c of every F row, in the order the sparse kernel adds them to G's lower triangle.
  for (int64_t o = 0; o < n_other; ++o) {
    int t = 0;
    for (int a = 0; a < R; ++a)
      for (int c = 0; c <= a; ++c) products[o * P + t++] = F[o * R + a] * F[o * R + c];
  }
  int64_t singular = 0;
  for (int64_t k = 0; k < n_key; ++k) {
    V G_sums[P] = {}, g[R] = {};
    for (int64_t o = 0; o < n_other; ++o) {
      const int64_t at = k * key_stride + o * other_stride;
      const auto observed = lane_mask<T>(seen[at]);
      const V value = values[at];  // 0 where not observed: adds +-0 to g
      for (int t = 0; t < P; ++t) G_sums[t] += observed ? products[o * P + t] : V{};
      for (int a = 0; a < R; ++a) g[a] += value * F[o * R + a];
    }
    V G[R * R];
    int t = 0;
    for (int a = 0; a < R; ++a)
      for (int c = 0; c <= a; ++c) G[a * R + c] = G_sums[t++];
    const V count = counts[k];
    const V shift = count_scaling ? reg * count : V{} + reg;
    for (int a = 0; a < R; ++a) G[a * R + a] += shift;
    const auto bad = ops::solve_row<V, R>(G, g, R, count, !(reg > 0), out + k * R);
    for (int l = 0; l < lanes::Lanes<T>::width; ++l) singular += ((counted >> l) & 1u) && bad[l] ? 1 : 0;
  }
  return singular;
}

template <class T, int R>
int64_t als_dense_iterations_rank(const AlsDense<T>& data, T reg, bool count_scaling,
                                  const uint8_t* active, T* U, T* V, double* losses,
                                  double* changes) {
  using Vec = lanes::vec<T>;
  using Wide = lanes::wide<T>;
  constexpr int W = lanes::Lanes<T>::width;
  const int64_t batch = data.batch, m = data.m, n = data.n, groups = (batch + W - 1) / W;
  const auto* seen_all = reinterpret_cast<const Bits<T>*>(data.seen);
  const lanes::LaneArray<T> values_all{data.values}, row_counts_all{data.row_counts}, col_counts_all{data.col_counts};
  int64_t singular = 0;
#pragma omp parallel reduction(+ : singular) if (groups > 1)
  {
    // Per thread: the group's factors before and after, and the F products of a half-step.
    const int64_t vectors = 2 * (m + n) * R + (m > n ? m : n) * (R * (R + 1) / 2);
    std::vector<T> scratch(static_cast<size_t>((vectors + 1) * W));  // one spare vector to align in
    Vec* Ul = reinterpret_cast<Vec*>((reinterpret_cast<uintptr_t>(scratch.data()) + lanes::kBytes - 1) &
                                     ~static_cast<uintptr_t>(lanes::kBytes - 1));
    Vec* Vl = Ul + m * R;
    Vec* U0 = Vl + n * R;
    Vec* V0 = U0 + m * R;
    Vec* products = V0 + n * R;
#pragma omp for schedule(dynamic, 1)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first = group * W;
      uint32_t counted = 0;
      for (int l = 0; l < W; ++l)
        if (first + l < batch && active[first + l]) counted |= 1u << l;
      if (!counted) continue;
      for (int64_t t = 0; t < m * R; ++t) Ul[t] = Vec{};
      for (int64_t t = 0; t < n * R; ++t) Vl[t] = Vec{};
      for (int l = 0; l < W && first + l < batch; ++l) {
        const T* u = U + (first + l) * m * R;
        const T* v = V + (first + l) * n * R;
        for (int64_t t = 0; t < m * R; ++t) Ul[t][l] = u[t];
        for (int64_t t = 0; t < n * R; ++t) Vl[t][l] = v[t];
      }
      for (int64_t t = 0; t < m * R; ++t) U0[t] = Ul[t];
      for (int64_t t = 0; t < n * R; ++t) V0[t] = Vl[t];
      const Bits<T>* seen = seen_all + group * m * n;
      const auto values = values_all + group * m * n;
      const auto row_counts = row_counts_all + group * m;
      const auto col_counts = col_counts_all + group * n;
      // The grid is row-major: a row walks it along j, a column along i.
      singular += half_step<T, R>(seen, values, row_counts, m, n, n, 1, Vl, reg, count_scaling, counted, products,
                                  Ul);
      singular += half_step<T, R>(seen, values, col_counts, n, m, 1, n, Ul, reg, count_scaling, counted, products,
                                  Vl);
      // The objective and the change, summed in the order of the sparse kernel (als_cpu.cpp).
      const auto weight = [count_scaling](const Vec count) { return count_scaling ? to_double(count) : Wide{} + 1.0; };
      Wide fit{}, norms{};
      for (int64_t i = 0; i < m; ++i) norms += weight(row_counts[i]) * solvers::squared_norm<R>(Ul + i * R, R);
      for (int64_t j = 0; j < n; ++j) {
        const Vec* x = Vl + j * R;
        norms += weight(col_counts[j]) * solvers::squared_norm<R>(x, R);
        Wide column{};
        for (int64_t i = 0; i < m; ++i) {
          const Vec* f = Ul + i * R;
          Vec dot{};
          for (int c = 0; c < R; ++c) dot += x[c] * f[c];
          // An unobserved cell adds +0 (its residual is not squared: it could overflow).
          const Wide z = to_double(lane_mask<T>(seen[i * n + j]) ? dot - values[i * n + j] : Vec{});
          column += z * z;
        }
        fit += column;
      }
      const Wide loss = 0.5 * fit + 0.5 * static_cast<double>(reg) * norms;
      const auto change = solvers::change_sums<Vec, R>(U0, V0, Ul, Vl, m, n, R);
      for (int l = 0; l < W; ++l) {
        if (!((counted >> l) & 1u)) continue;  // frozen or padding: left as it was
        const int64_t b = first + l;
        T* u = U + b * m * R;
        T* v = V + b * n * R;
        for (int64_t t = 0; t < m * R; ++t) u[t] = Ul[t][l];
        for (int64_t t = 0; t < n * R; ++t) v[t] = Vl[t][l];
        losses[b] = loss[l];
        changes[b] = solvers::ChangeSums<>{change.squared[l], change.before[l]}.relative();
      }
    }
  }
  return singular;
}

}  // namespace

template <class T, class I>
bool als_dense_pack(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch, int64_t m,
                    int64_t n, const AlsDense<T>& out) {
  constexpr int W = lanes::Lanes<T>::width;
  auto* seen = reinterpret_cast<Bits<T>*>(out.seen);
  const int64_t groups = (batch + W - 1) / W;
  int64_t out_of_order = 0;
  // A group per thread: its problems share the bytes of seen.
#pragma omp parallel for reduction(+ : out_of_order) schedule(static) if (offsets[batch] > kParallelMinWork)
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t lane = 0; lane < W && group * W + lane < batch; ++lane) {
      const int64_t b = group * W + lane;
      int64_t previous = -1;  // flattened (row, col) of the previous entry
      for (int64_t k = offsets[b]; k < offsets[b + 1]; ++k) {
        const int64_t i = rows[k], j = cols[k];
        if (i < 0 || i >= m || j < 0 || j >= n || i * n + j <= previous) {
          ++out_of_order;
          break;
        }
        previous = i * n + j;
        const int64_t at = group * m * n + i * n + j;
        seen[at] = static_cast<Bits<T>>(seen[at] | (1u << lane));
        out.values[at * W + lane] = vals[k];
        out.row_counts[(group * m + i) * W + lane] += T(1);
        out.col_counts[(group * n + j) * W + lane] += T(1);
      }
    }
  }
  return out_of_order == 0;
}

template <class T>
int64_t als_dense_iterations(const AlsDense<T>& data, int64_t r, T reg, bool count_scaling, const uint8_t* active,
                             T* U, T* V, double* losses, double* changes) {
  switch (r) {
    case 1: return als_dense_iterations_rank<T, 1>(data, reg, count_scaling, active, U, V, losses, changes);
    case 2: return als_dense_iterations_rank<T, 2>(data, reg, count_scaling, active, U, V, losses, changes);
    case 3: return als_dense_iterations_rank<T, 3>(data, reg, count_scaling, active, U, V, losses, changes);
    case 4: return als_dense_iterations_rank<T, 4>(data, reg, count_scaling, active, U, V, losses, changes);
    default: return -1;
  }
}

#define LRH_INSTANTIATE(T, I)                                                                                 \
  template bool als_dense_pack<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                     const AlsDense<T>&);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
template int64_t als_dense_iterations<float>(const AlsDense<float>&, int64_t, float, bool, const uint8_t*, float*,
                                             float*, double*, double*);
template int64_t als_dense_iterations<double>(const AlsDense<double>&, int64_t, double, bool, const uint8_t*,
                                              double*, double*, double*, double*);

}  // namespace lowrank_hpc::cpu
