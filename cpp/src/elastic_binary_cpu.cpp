// The CPU's fused elastic-binary half-step (lowrank_hpc/ops/elastic_binary.hpp): one OpenMP
// loop over the rows of every problem of a batch, optionally summing out^T out on the way (the
// next half-step's and the loss's Gram matrix, without a second pass over the new factor).
#include <algorithm>
#include <vector>

#include "cpu_backend.hpp"
#include "launchers.hpp"
#include "lowrank_hpc/ops/elastic_binary.hpp"

namespace lowrank_hpc::cpu::launch {

namespace {

// Rows per partial Gram: fixed, so the sums are the same for any thread count.
constexpr int64_t kGramBlockRows = 1024;

template <class T, int R>
void half_step_rows(const ops::ElasticBinaryHalfStep<T>& step, const std::vector<double>& steps, const T* U,
                    const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n, int64_t rank,
                    const uint8_t* active, T* out, T* gram_out) {
  const int64_t k = static_or<R>(rank);
  if (gram_out == nullptr) {
    const int64_t rows = batch * n;
#pragma omp parallel for schedule(static) if (rows * k * k > kParallelMinWork)
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t b = r / n;
      step.template operator()<R>(b, r - b * n, U, U_prev, gram, cross, active, n, k, steps[b], out);
    }
    return;
  }
  // Each block of rows sums its rows' outer products (upper triangle, in double) into its own
  // partial; the partials are added in block order.
  const int64_t blocks_per_problem = std::max<int64_t>(1, (n + kGramBlockRows - 1) / kGramBlockRows);
  const int64_t blocks = batch * blocks_per_problem, pairs = k * k;
  std::vector<double> partial(static_cast<size_t>(blocks * pairs), 0.0);
#pragma omp parallel for schedule(static) if (batch * n * k * k > kParallelMinWork)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t b = block / blocks_per_problem, first = (block % blocks_per_problem) * kGramBlockRows;
    const int64_t last = std::min(n, first + kGramBlockRows);
    double* sums = partial.data() + block * pairs;
    for (int64_t i = first; i < last; ++i) {
      step.template operator()<R>(b, i, U, U_prev, gram, cross, active, n, k, steps[b], out);
      const T* x = out + (b * n + i) * k;
      for (int64_t a = 0; a < k; ++a) {
        const double xa = static_cast<double>(x[a]);
#pragma omp simd
        for (int64_t c = a; c < k; ++c) sums[a * k + c] += xa * static_cast<double>(x[c]);
      }
    }
  }
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
