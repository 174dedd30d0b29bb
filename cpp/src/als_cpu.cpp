#include <algorithm>
#include <optional>
#include <vector>

#include "lowrank_hpc/core/instantiate.hpp"
#include "cpu_backend.hpp"
#include "lowrank_hpc/ops/ldlt_lanes.hpp"
#include "lowrank_hpc/ops/normal_equations.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::cpu {

namespace {

// Whether the exact row solve runs in register tiles (ops/register_tiles.hpp; the same numbers):
// every rank above 4, padded to whole vectors. The compiled ranks 1-4 keep the per-entry form
// (the whole system in registers). Padding costs less than the per-entry form's one multiply-add
// per load and store of G: ALS on 4.5M entries of 138,000 x 27,000 with AVX-512 floats, s an
// iteration, r = 5 0.070 -> 0.059, r = 12 0.209 -> 0.087, r = 20 (padded to 32) 0.407 -> 0.139.
constexpr int64_t kPerEntryMaxRank = 4;  // = als.py's _DENSE_MAX_RANK: the dense kernel gives these ranks' bits
// R: the rank a driver is compiled for (0: read at run time), false at once where R says, so that
// the compiled ranks 1-4 drop the tiled code they never run (7% of the unit's compile time).
template <int R = 0>
bool use_tiles(int64_t r) {
  return (R == 0 || R > kPerEntryMaxRank) && r > kPerEntryMaxRank;
}

// Whether the tiled solves factor a group of rows' systems together, one per vector lane
// (ldlt_lanes.hpp; the same numbers): where the group's copies of its systems and their lanes
// stay well within L2 (1.25 MiB: r <= 96 with AVX-512 floats). The U half-step of exact ALS on
// MovieLens-20M's shape: r = 32 0.49-0.50 -> 0.29-0.33 s, r = 64 0.86-0.94 -> 0.70-0.82 s; at
// r = 128 (2.2 MiB) slower than one system at a time.
template <class T>
bool use_lanes(int64_t r) {
  return ops::LaneSystems<T>::footprint(r) <= (int64_t{5} << 18);
}

// Rows of implicit ALS's CG stepping together: two of add_shared_times' AVX-512 tiles of 4 rows
// (not tuned further). r = 128 on bench_implicit_als' problem: 0.44-0.53 -> 0.38-0.41 s an
// iteration; r = 256 1.04-1.27 -> 0.94-1.01 s.
constexpr int kCgRows = 8;

template <class T, class I, int R>
int64_t als_update_rows_rank(const int64_t* indptr, const I* others, const T* vals, const T* F,
                             int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg,
                             bool count_scaling, const T* weights, const T* shared, const uint8_t* active,
                             int cg_steps, T* out, double* residuals) {
  const ops::NormalEquations<T, I, R> equations{indptr, others, vals, F, n_key, n_other, r, reg,
                                                count_scaling, weights, shared};
  const int64_t n_rows = batch * n_key, nnz = indptr[n_rows];
  // CG's residuals come from its own dots (cg_solve's misfits): no pass of their own over the
  // entries (r = 256 on MovieLens-20M's shape: that pass gathered 20 GB of factor rows).
  // (Unweighted rows only: with weights c_j the misfits are v_j - c_j <f_j, x>, not residuals.)
  const bool cg_misfits = cg_steps > 0 && residuals != nullptr && weights == nullptr;
  int64_t longest = 0;
  if (cg_misfits)
    for (int64_t row = 0; row < n_rows; ++row) longest = std::max(longest, indptr[row + 1] - indptr[row]);
  int64_t singular = 0;
  // Work per row is about entries * r^2 (the Gram) plus r^3 / 3 (the factorisation).
#pragma omp parallel reduction(+ : singular) if ((nnz + n_rows * r) * r * r > kParallelMinWork)
  {
    std::vector<T> scratch(static_cast<size_t>(r * r + 3 * r));  // per thread: G then g (or CG's 3 r)
    T* G = scratch.data();
    T* g = G + r * r;
    std::vector<T> misfits(cg_misfits ? static_cast<size_t>(2 * longest) : 0);
    const bool tiled = cg_steps == 0 && use_tiles<R>(r), grouped = tiled && use_lanes<T>(r);
    std::optional<ops::RowSystemWorkspace<T>> tiles;  // the exact solve in register tiles
    if (tiled) tiles.emplace(r, weights != nullptr, shared != nullptr);
    std::optional<ops::LaneSystems<T>> group;  // and the rows' systems factored a group at a time
    if (grouped) group.emplace(r);
    int64_t group_rows[ops::LaneSystems<T>::kWidth] = {}, group_problems[ops::LaneSystems<T>::kWidth] = {};
    // CG with a shared term (implicit ALS): kCgRows rows of a problem step together, so that each
    // pass over S serves them all (cg_solve_rows; the same numbers as one row at a time).
    const bool cg_rows = cg_steps > 0 && shared != nullptr && !cg_misfits;
    std::vector<T> cg_scratch(cg_rows ? static_cast<size_t>(3 * r * kCgRows) : 0);
    int64_t cg_problem = -1;
    int cg_count = 0;
    int64_t cg_row_ids[kCgRows] = {};
    T* cg_xs[kCgRows] = {};
    T* const no_misfits[kCgRows] = {};
    const auto finish = [&](int64_t row, int64_t b, bool failed) {
      singular += failed ? 1 : 0;
      if (cg_misfits)
        residuals[row] = solvers::squared_norm(misfits.data(), equations.count(row));
      else if (residuals)
        residuals[row] = equations.squared_residuals(row, b, out + row * r, true);
    };
    const auto solve_cg_rows = [&]() {
      equations.template cg_solve_rows<kCgRows>(cg_row_ids, cg_count, cg_problem, cg_steps, cg_scratch.data(), cg_xs,
                                                no_misfits);
      for (int g = 0; g < cg_count; ++g) finish(cg_row_ids[g], cg_problem, false);
      cg_count = 0;
    };
    const auto solve_group = [&]() {
      group->solve([&](int s, bool solved) { finish(group_rows[s], group_problems[s], !solved); });
    };
    // (problem, row) pairs: the problem comes from the loop, not from a division per row.
    // Dynamic chunks: real data's heaviest rows come together (ids by popularity), and a static
    // split gave one thread most of the entries (implicit ALS's item side: 0.33 s became 0.22).
#pragma omp for collapse(2) schedule(dynamic, 32)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < n_key; ++i) {
        if (active && !active[b]) continue;
        const int64_t row = b * n_key + i;
        if (cg_rows && equations.count(row) > 0) {  // stepped with the rows before it, once they are whole
          if (cg_count > 0 && cg_problem != b) solve_cg_rows();
          cg_problem = b;
          cg_row_ids[cg_count] = row;
          cg_xs[cg_count++] = out + row * r;
          if (cg_count == kCgRows) solve_cg_rows();
          continue;
        }
        if (grouped && equations.count(row) > 0) {  // solved with the group, once it is whole
          group_rows[group->count] = row;
          group_problems[group->count] = b;
          equations.assemble_tiled(row, b, *tiles, group->G(), group->g());
          if (group->add(out + row * r)) solve_group();
          continue;
        }
        // cg_steps > 0: conjugate gradients from out's row (its previous value), G as scratch.
        const bool failed = cg_steps > 0 ? equations.cg_solve(row, b, cg_steps, G, out + row * r,
                                                              cg_misfits ? misfits.data() : nullptr)
                            : tiled       ? equations.solve_tiled(row, b, *tiles, out + row * r)
                                          : equations.solve(row, b, G, g, out + row * r);
        finish(row, b, failed);
      }
    }
    if (grouped && group->count > 0) solve_group();  // the thread's last rows
    if (cg_count > 0) solve_cg_rows();
  }
  return singular;
}

// One ALS iteration of every active problem, each problem's whole iteration by one thread
// while its data is in cache: both half-steps, then the objective (its residuals summed over
// the column order, whose rows of U are final) and the relative change.
template <class T, class I, int R>
int64_t als_iterations_rank(const AlsBatch<T, I>& data, int64_t r, T reg, bool count_scaling,
                            const uint8_t* active, T* U, T* V, double* losses, double* changes) {
  const int64_t batch = data.batch, m = data.m, n = data.n;
  const ops::NormalEquations<T, I, R> by_rows{data.row_indptr, data.row_others, data.row_vals, V,
                                              m, n, r, reg, count_scaling};
  const ops::NormalEquations<T, I, R> by_cols{data.col_indptr, data.col_others, data.col_vals, U,
                                              n, m, r, reg, count_scaling};
  int64_t singular = 0;
#pragma omp parallel reduction(+ : singular) if (data.col_indptr[batch * n] * r * r > kParallelMinWork)
  {
    // Per thread: one row's system (run-time rank only) and the problem's previous factors.
    std::vector<T> scratch(static_cast<size_t>(r * r + r + (m + n) * r));
    T* G = scratch.data();
    T* g = G + r * r;
    T* U0 = g + r;
    T* V0 = U0 + m * r;
    const bool tiled = use_tiles<R>(r), grouped = tiled && use_lanes<T>(r);
    std::optional<ops::RowSystemWorkspace<T>> tiles;  // the exact solve in register tiles
    if (tiled) tiles.emplace(r, false, false);
    std::optional<ops::LaneSystems<T>> group;  // and the rows' systems factored a group at a time
    if (grouped) group.emplace(r);
    const auto solve_group = [&]() { group->solve([&](int, bool solved) { singular += solved ? 0 : 1; }); };
    // One half-step of problem b: its n_key rows' solutions into x (n_key x r).
    const auto half_step = [&](const ops::NormalEquations<T, I, R>& equations, int64_t n_key, int64_t b, T* x) {
      for (int64_t i = 0; i < n_key; ++i) {
        const int64_t row = b * n_key + i;
        if (grouped && equations.count(row) > 0) {
          equations.assemble_tiled(row, b, *tiles, group->G(), group->g());
          if (group->add(x + i * r)) solve_group();
        } else {
          const bool failed = tiled ? equations.solve_tiled(row, b, *tiles, x + i * r)
                                    : equations.solve(row, b, G, g, x + i * r);
          singular += failed ? 1 : 0;
        }
      }
      if (grouped && group->count > 0) solve_group();  // before the other half-step reads x
    };
#pragma omp for schedule(dynamic, 8)
    for (int64_t b = 0; b < batch; ++b) {
      if (!active[b]) continue;
      T* u = U + b * m * r;
      T* v = V + b * n * r;
      for (int64_t t = 0; t < m * r; ++t) U0[t] = u[t];
      for (int64_t t = 0; t < n * r; ++t) V0[t] = v[t];
      double fit = 0.0, norms = 0.0;
      half_step(by_rows, m, b, u);
      for (int64_t i = 0; i < m; ++i)
        norms += (count_scaling ? static_cast<double>(by_rows.count(b * m + i)) : 1.0) *
                 solvers::squared_norm<R>(u + i * r, r);
      half_step(by_cols, n, b, v);
      for (int64_t j = 0; j < n; ++j) {
        const int64_t col = b * n + j;
        T* x = v + j * r;
        norms += (count_scaling ? static_cast<double>(by_cols.count(col)) : 1.0) * solvers::squared_norm<R>(x, r);
        fit += by_cols.squared_residuals(col, b, x);  // U is final: these are the iteration's residuals
      }
      losses[b] = 0.5 * fit + 0.5 * static_cast<double>(reg) * norms;
      changes[b] = solvers::relative_change<T, R>(U0, V0, static_cast<const T*>(u), static_cast<const T*>(v), m, n, r);
    }
  }
  return singular;
}

}  // namespace

template <class T, class I>
int64_t als_iterations(const AlsBatch<T, I>& data, int64_t r, T reg, bool count_scaling, const uint8_t* active,
                       T* U, T* V, double* losses, double* changes) {
  return dispatch_rank(r, [&](auto rank) {
    return als_iterations_rank<T, I, decltype(rank)::value>(data, r, reg, count_scaling, active, U, V, losses,
                                                            changes);
  });
}

template <class T, class I>
int64_t als_update_rows(const int64_t* indptr, const I* others, const T* vals, const T* F,
                        int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg, bool count_scaling,
                        const T* weights, const T* shared, const uint8_t* active, int cg_steps, T* out,
                        double* residuals) {
  return dispatch_rank(r, [&](auto rank) {
    return als_update_rows_rank<T, I, decltype(rank)::value>(indptr, others, vals, F, batch, n_key, n_other,
                                                             r, reg, count_scaling, weights, shared, active,
                                                             cg_steps, out, residuals);
  });
}

template <class T, class I>
void als_squared_residuals(const int64_t* indptr, const I* others, const T* vals, const T* F, const T* X,
                           int64_t batch, int64_t n_key, int64_t n_other, int64_t r, const uint8_t* active,
                           double* out) {
  dispatch_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
    const ops::NormalEquations<T, I, R> equations{indptr, others, vals, F, n_key, n_other, r, T(0), false};
    const int64_t n_rows = batch * n_key;
#pragma omp parallel for collapse(2) schedule(dynamic, 256) if (indptr[n_rows] * r > kParallelMinWork)
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < n_key; ++i) {
        if (active && !active[b]) continue;
        const int64_t row = b * n_key + i;
        out[row] = equations.squared_residuals(row, b, X + row * r, true);
      }
    }
  });
}

template <class T>
int als_row_solve_form(int64_t r) {
  return !use_tiles(r) ? 0 : ops::RegisterTiles<T>::kFusedGram ? 2 : 1;
}
template int als_row_solve_form<float>(int64_t);
template int als_row_solve_form<double>(int64_t);

#define LRH_INSTANTIATE(T, I)                                                                              \
  template int64_t als_iterations<T, I>(const AlsBatch<T, I>&, int64_t, T, bool, const uint8_t*, T*, T*, double*,  \
                                        double*);                                                               \
  template int64_t als_update_rows<T, I>(const int64_t*, const I*, const T*, const T*, int64_t, \
                                         int64_t, int64_t, int64_t, T, bool, const T*, const T*,       \
                                         const uint8_t*, int, T*, double*);                              \
  template void als_squared_residuals<T, I>(const int64_t*, const I*, const T*, const T*, const T*, int64_t,  \
                                            int64_t, int64_t, int64_t, const uint8_t*, double*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
