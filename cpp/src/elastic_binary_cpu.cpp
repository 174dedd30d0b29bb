// The CPU's fused elastic-binary half-step (lowrank_hpc/ops/elastic_binary.hpp): an OpenMP loop
// over fixed blocks of rows of every problem of a batch, the rows of a block in SIMD lanes,
// optionally summing out^T out on the way (the next half-step's and the loss's Gram matrix,
// without a second pass over the new factor).
#include <algorithm>
#include <vector>

#include "cpu_backend.hpp"
#include "launchers.hpp"
#include "lowrank_hpc/core/lanes.hpp"
#include "lowrank_hpc/ops/elastic_binary.hpp"

namespace lowrank_hpc::cpu::launch {

namespace {

// Rows per partial Gram: fixed, so the sums are the same for any thread count.
constexpr int64_t kGramBlockRows = 1024;

// One problem's rows [first, last): groups of `width` rows run the functor in the lanes of one
// vector (a row per lane; ranks past the functor's stack rows take the row-at-a-time path), the
// rest one row at a time. With `sums` (k x k, upper triangle, double) the new rows' outer
// products are added: per lane within the groups, then the lanes in order, then the other rows.
template <class T, int R>
void half_step_block(const ops::ElasticBinaryHalfStep<T>& step, double size, const T* U, const T* U_prev,
                     const T* gram, const T* cross, int64_t rank, int64_t first, int64_t last, T* out,
                     double* sums) {
  using V = lanes::vec<T>;
  using W = lanes::wide<T>;
  constexpr int64_t width = lanes::Lanes<T>::width;
  const int64_t k = static_or<R>(rank);
  int64_t i = first;
  if (k <= ops::ElasticBinaryHalfStep<T>::kStackRank && last - first >= width) {
    std::vector<V> u(k), previous(k), c(k), x(k);
    std::vector<W> lane_sums(sums != nullptr ? k * k : 0, W{});
    for (; i + width <= last; i += width) {
      for (int64_t a = 0; a < k; ++a)
        for (int64_t lane = 0; lane < width; ++lane) {
          u[a][lane] = U[(i + lane) * k + a];
          previous[a][lane] = U_prev[(i + lane) * k + a];
          c[a][lane] = cross[(i + lane) * k + a];
        }
      step.template row<R, V>(u.data(), previous.data(), gram, c.data(), x.data(), k, size);
      for (int64_t a = 0; a < k; ++a)
        for (int64_t lane = 0; lane < width; ++lane) out[(i + lane) * k + a] = x[a][lane];
      if (sums != nullptr)
        for (int64_t a = 0; a < k; ++a) {
          const W xa = to_double(x[a]);
          for (int64_t b = a; b < k; ++b) lane_sums[a * k + b] += xa * to_double(x[b]);
        }
    }
    if (sums != nullptr)
      for (int64_t a = 0; a < k; ++a)
        for (int64_t b = a; b < k; ++b)
          for (int64_t lane = 0; lane < width; ++lane) sums[a * k + b] += lane_sums[a * k + b][lane];
  }
  for (; i < last; ++i) {
    step.template row<R>(U + i * k, U_prev + i * k, gram, cross + i * k, out + i * k, k, size);
    if (sums == nullptr) continue;
    const T* x = out + i * k;
    for (int64_t a = 0; a < k; ++a) {
      const double xa = static_cast<double>(x[a]);
      for (int64_t b = a; b < k; ++b) sums[a * k + b] += xa * static_cast<double>(x[b]);
    }
  }
}

template <class T, int R>
void half_step_rows(const ops::ElasticBinaryHalfStep<T>& step, const std::vector<double>& steps, const T* U,
                    const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n, int64_t rank,
                    const uint8_t* active, T* out, T* gram_out) {
  const int64_t k = static_or<R>(rank);
  // Fixed blocks of rows per problem; with gram_out each sums its rows' outer products (upper
  // triangle, in double) into its own partial, and the partials are added in block order.
  const int64_t blocks_per_problem = std::max<int64_t>(1, (n + kGramBlockRows - 1) / kGramBlockRows);
  const int64_t blocks = batch * blocks_per_problem, pairs = k * k;
  std::vector<double> partial(gram_out != nullptr ? static_cast<size_t>(blocks * pairs) : 0, 0.0);
#pragma omp parallel for schedule(dynamic, 1) if (batch * n * k * k > kParallelMinWork)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t b = block / blocks_per_problem, first = (block % blocks_per_problem) * kGramBlockRows;
    const int64_t last = std::min(n, first + kGramBlockRows), offset = b * n * k;
    double* sums = gram_out != nullptr ? partial.data() + block * pairs : nullptr;
    if (active != nullptr && !active[b]) {  // a stopped problem keeps its factor
      std::copy(U + offset + first * k, U + offset + last * k, out + offset + first * k);
      if (sums != nullptr)
        for (int64_t i = first; i < last; ++i)
          for (int64_t a = 0; a < k; ++a)
            for (int64_t c = a; c < k; ++c)
              sums[a * k + c] += static_cast<double>(U[offset + i * k + a]) * static_cast<double>(U[offset + i * k + c]);
      continue;
    }
    half_step_block<T, R>(step, steps[b], U + offset, U_prev + offset, gram + b * pairs, cross + offset, k, first,
                          last, out + offset, sums);
  }
  if (gram_out == nullptr) return;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t a = 0; a < k; ++a)
      for (int64_t c = a; c < k; ++c) {
        double total = 0.0;
        for (int64_t block = b * blocks_per_problem; block < (b + 1) * blocks_per_problem; ++block)
          total += partial[block * pairs + a * k + c];
        gram_out[b * pairs + a * k + c] = gram_out[b * pairs + c * k + a] = static_cast<T>(total);
      }
}

}  // namespace

template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, T* gram_out, void*) {
  const ops::ElasticBinaryHalfStep<T> step{kappa, lambda, inertia, nonnegative};
  std::vector<double> steps(batch);  // one k x k norm per problem, not per row
  for (int64_t b = 0; b < batch; ++b) steps[b] = ops::palm_step_size(gram + b * k * k, k, inertia);
  dispatch_narrow_rank(k, [&](auto width) {
    half_step_rows<T, decltype(width)::value>(step, steps, U, U_prev, gram, cross, batch, n, k, active, out,
                                              gram_out);
  });
  return 0;
}

template int elastic_binary_half_step<float>(const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, double, double, double, bool, const uint8_t*, float*,
                                             float*, void*);
template int elastic_binary_half_step<double>(const double*, const double*, const double*, const double*, int64_t,
                                              int64_t, int64_t, double, double, double, bool, const uint8_t*,
                                              double*, double*, void*);

}  // namespace lowrank_hpc::cpu::launch
