// The CPU driver of the Adafactor step (lowrank_hpc/ops/adafactor.hpp): each parameter's three
// passes run back to back, rows split among the threads, so a parameter that fits in the cache
// is read from memory once. Parameters too small to share are stepped one per thread.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "launchers.hpp"
#include "lowrank_hpc/ops/adafactor.hpp"

namespace lowrank_hpc::cpu::launch {

namespace {

using ops::AdafactorEntry;
using ops::AdafactorOptions;
using ops::AdafactorProblem;
using ops::AdafactorShape;

// Below this many entries a parameter is stepped by one thread: waking the team costs more.
constexpr int64_t kMinParallelEntries = int64_t(1) << 15;
// Up to this many entries, a batch of at least two parameters per thread runs one parameter per
// thread: one thread's passes 2 and 3 (from the cache) overlap another's pass 1 (from memory).
constexpr int64_t kMaxEntriesPerThread = int64_t(1) << 21;

// The rows [begin, end) of `count` that thread `t` of `team` owns (contiguous, in order).
inline void owned(int64_t count, int t, int team, int64_t* begin, int64_t* end) {
  *begin = count * t / team;
  *end = count * (t + 1) / team;
}

// The column roots of a factored row (taken once per column), or of a vector's entries (taken per
// entry from its moment, so that no array of the vector's size is allocated).
template <class S>
struct GivenRoots {
  const S* roots;
  LRH_HD S operator()(int64_t j) const { return roots[j]; }
};
template <class S>
struct MomentRoots {
  const S* moment;
  LRH_HD S operator()(int64_t j) const { return ops::inverse_root(moment[j]); }
};

// Pass 3 of one row: X = step(X, U), U's entries recomputed exactly as in pass 2.
template <class P, class S, class Roots>
void update_row(P* param, const P* grad, Roots col_roots, S row_root, S* exp_avg, int64_t m,
                const AdafactorEntry<S>& entry) {
  if (exp_avg == nullptr) {
    LRH_SIMD
    for (int64_t j = 0; j < m; ++j) {
      const S u = entry.direction(load_as<S>(grad[j]), row_root, col_roots(j));
      param[j] = store_as<P>(entry.step(load_as<S>(param[j]), u, nullptr));
    }
  } else {
    LRH_SIMD
    for (int64_t j = 0; j < m; ++j) {
      const S u = entry.direction(load_as<S>(grad[j]), row_root, col_roots(j));
      param[j] = store_as<P>(entry.step(load_as<S>(param[j]), u, exp_avg + j));
    }
  }
}

// Pass 2 of one row: the sum of U^2 in double.
template <class P, class S, class Roots>
double update_squares_row(const P* grad, Roots col_roots, S row_root, int64_t m,
                          const AdafactorEntry<S>& entry) {
  double total = 0.0;
  LRH_SIMD_SUM(total)
  for (int64_t j = 0; j < m; ++j) {
    const double u = entry.direction(load_as<S>(grad[j]), row_root, col_roots(j));
    total += u * u;
  }
  return total;
}

// Pass 1 of one row: adds G^2 to the column sums and returns the row's sum of G^2; *params
// gets the row's sum of X^2.
template <class P>
double grad_squares_row(const P* grad, const P* param, int64_t m, double* col_sums, double* params) {
  double row = 0.0, squares = 0.0;
#pragma omp simd reduction(+ : row, squares)
  for (int64_t j = 0; j < m; ++j) {
    const double g = load_as<double>(grad[j]), x = load_as<double>(param[j]);
    row += g * g;
    col_sums[j] += g * g;
    squares += x * x;
  }
  *params = squares;
  return row;
}

// One parameter with factored moments, on up to `threads` threads. Returns its status.
// A parameter's status from its threads' partial sums of G^2 and X^2, added in thread order (the
// result does not depend on the schedule); *param_total gets the sum of X^2.
inline int64_t team_status(const std::vector<double>& grad_sums, const std::vector<double>& param_sums, int team,
                           double* param_total) {
  double g = 0.0, p = 0.0;
  for (int k = 0; k < team; ++k) g += grad_sums[k], p += param_sums[k];
  *param_total = p;
  return static_cast<int64_t>(ops::adafactor_status(g, p));
}

template <class P, class S>
int64_t step_factored(const AdafactorProblem<P, S>& pr, const AdafactorShape& shape, const AdafactorOptions& o,
                      int threads) {
  const int64_t slices = shape.slices, n = shape.rows, m = shape.cols, rows = slices * n;
  // O(threads (slices m) + slices n) doubles: never a temporary of the parameter's size.
  std::vector<double> col_sums(size_t(threads) * slices * m, 0.0), row_sums(rows), row_scale(slices);
  std::vector<S> col_roots(slices * m);
  std::vector<double> grad_sums(threads, 0.0), param_sums(threads, 0.0), update_sums(threads, 0.0);
  AdafactorEntry<S> entry(o);
  int64_t status = 0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    int64_t begin, end;
    owned(rows, t, team, &begin, &end);
    double* my_cols = col_sums.data() + size_t(t) * slices * m;
    double grads = 0.0, params = 0.0;
    for (int64_t r = begin; r < end; ++r) {
      double row_params;
      row_sums[r] = grad_squares_row(pr.grad + r * m, pr.param + r * m, m, my_cols + (r / n) * m, &row_params);
      grads += row_sums[r];
      params += row_params;
    }
    grad_sums[t] = grads;
    param_sums[t] = params;
#pragma omp barrier
#pragma omp single
    status = team_status(grad_sums, param_sums, team, &param_sums[0]);
    if (status == 0) {
      for (int64_t r = begin; r < end; ++r)
        pr.row_var[r] = ops::updated_moment(pr.row_var[r], row_sums[r], m, pr.moment_weight);
      int64_t col_begin, col_end;
      owned(slices * m, t, team, &col_begin, &col_end);
      for (int64_t c = col_begin; c < col_end; ++c) {
        double total = 0.0;
        for (int k = 0; k < team; ++k) total += col_sums[size_t(k) * slices * m + c];
        pr.col_var[c] = ops::updated_moment(pr.col_var[c], total, n, pr.moment_weight);
        col_roots[c] = ops::inverse_root(pr.col_var[c]);
      }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t l = 0; l < slices; ++l) {
        double total = 0.0;
        for (int64_t i = 0; i < n; ++i) total += pr.row_var[l * n + i];
        row_scale[l] = ops::adafactor_row_scale(o, total, n);
      }
      double updates = 0.0;
      // Backwards: the rows pass 1 read last are still in the cache, and pass 3 (forwards) then
      // starts on the rows this pass read last.
      for (int64_t r = end - 1; r >= begin; --r) {
        const S root = ops::adafactor_row_root(pr.row_var[r], row_scale[r / n]);
        const GivenRoots<S> roots{col_roots.data() + (r / n) * m};
        updates += update_squares_row(pr.grad + r * m, roots, root, m, entry);
      }
      update_sums[t] = updates;
#pragma omp barrier
#pragma omp single
      {
        double u = 0.0;
        for (int k = 0; k < team; ++k) u += update_sums[k];
        const int64_t size = shape.size();
        entry.scale = static_cast<S>(ops::adafactor_step_size(o, pr.rho, param_sums[0], size) /
                                     ops::adafactor_clip_divisor(o, u, size));
      }
      for (int64_t r = begin; r < end; ++r) {
        const S root = ops::adafactor_row_root(pr.row_var[r], row_scale[r / n]);
        update_row(pr.param + r * m, pr.grad + r * m, GivenRoots<S>{col_roots.data() + (r / n) * m}, root,
                   pr.exp_avg ? pr.exp_avg + r * m : nullptr, m, entry);
      }
    }
  }
  return status;
}

// One vector parameter with its unfactored moment (col_var), entries split among the threads.
template <class P, class S>
int64_t step_vector(const AdafactorProblem<P, S>& pr, const AdafactorShape& shape, const AdafactorOptions& o,
                    int threads) {
  const int64_t size = shape.size();
  std::vector<double> grad_sums(threads, 0.0), param_sums(threads, 0.0), update_sums(threads, 0.0);
  AdafactorEntry<S> entry(o);
  int64_t status = 0;
  double param_total = 0.0;
#pragma omp parallel num_threads(threads) if (threads > 1)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    int64_t begin, end;
    owned(size, t, team, &begin, &end);
    double grads = 0.0, params = 0.0;
#pragma omp simd reduction(+ : grads, params)
    for (int64_t j = begin; j < end; ++j) {
      const double g = load_as<double>(pr.grad[j]), x = load_as<double>(pr.param[j]);
      grads += g * g;
      params += x * x;
    }
    grad_sums[t] = grads;
    param_sums[t] = params;
#pragma omp barrier
#pragma omp single
    status = team_status(grad_sums, param_sums, team, &param_total);
    if (status == 0) {
      for (int64_t j = begin; j < end; ++j) {
        const double g = load_as<double>(pr.grad[j]);
        pr.col_var[j] = ops::updated_moment(pr.col_var[j], g * g, 1, pr.moment_weight);
      }
      const MomentRoots<S> roots{pr.col_var + begin};
      update_sums[t] = update_squares_row(pr.grad + begin, roots, S(1), end - begin, entry);
#pragma omp barrier
#pragma omp single
      {
        double u = 0.0;
        for (int k = 0; k < team; ++k) u += update_sums[k];
        entry.scale = static_cast<S>(ops::adafactor_step_size(o, pr.rho, param_total, size) /
                                     ops::adafactor_clip_divisor(o, u, size));
      }
      update_row(pr.param + begin, pr.grad + begin, roots, S(1),
                 pr.exp_avg ? pr.exp_avg + begin : nullptr, end - begin, entry);
    }
  }
  return status;
}

template <class P, class S>
int64_t step_one(const AdafactorProblem<P, S>& pr, const AdafactorShape& shape, const AdafactorOptions& o,
                 int threads) {
  return shape.factored ? step_factored(pr, shape, o, threads) : step_vector(pr, shape, o, threads);
}

}  // namespace

template <class P, class S>
int adafactor_step(const AdafactorProblem<P, S>* problems, int64_t batch, AdafactorShape shape,
                   const AdafactorOptions& options, int64_t* status, void*) {
  const int threads = omp_get_max_threads();
  const int64_t size = shape.size();
  if (size < kMinParallelEntries || (batch >= 2 * threads && size <= kMaxEntriesPerThread)) {
#pragma omp parallel for schedule(dynamic, 1) if (batch > 1)
    for (int64_t b = 0; b < batch; ++b) status[b] = step_one(problems[b], shape, options, 1);
  } else {
    for (int64_t b = 0; b < batch; ++b) status[b] = step_one(problems[b], shape, options, threads);
  }
  return 0;
}

LRH_FOR_EACH_ADAFACTOR_TYPE(LRH_INSTANTIATE_ADAFACTOR)

}  // namespace lowrank_hpc::cpu::launch
