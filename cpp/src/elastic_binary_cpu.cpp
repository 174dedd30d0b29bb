// The CPU's fused elastic-binary half-step (lowrank_hpc/ops/elastic_binary.hpp): one OpenMP
// loop over the rows of every problem of a batch.
#include <vector>

#include "cpu_backend.hpp"
#include "launchers.hpp"
#include "lowrank_hpc/ops/elastic_binary.hpp"

namespace lowrank_hpc::cpu::launch {

template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, void*) {
  const ops::ElasticBinaryHalfStep<T> step{kappa, lambda, inertia, nonnegative};
  std::vector<double> steps(batch);  // one k x k norm per problem, not per row
  for (int64_t b = 0; b < batch; ++b) steps[b] = ops::palm_step_size(gram + b * k * k, k, inertia);
  const int64_t rows = batch * n;
#pragma omp parallel for schedule(static) if (rows * k * k > kParallelMinWork)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / n;
    step(b, r - b * n, U, U_prev, gram, cross, active, n, k, steps[b], out);
  }
  return 0;
}

template int elastic_binary_half_step<float>(const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, double, double, double, bool, const uint8_t*, float*,
                                             void*);
template int elastic_binary_half_step<double>(const double*, const double*, const double*, const double*, int64_t,
                                              int64_t, int64_t, double, double, double, bool, const uint8_t*,
                                              double*, void*);

}  // namespace lowrank_hpc::cpu::launch
