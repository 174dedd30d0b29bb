#include "lowrank_hpc/core/instantiate.hpp"
#include "cpu_backend.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::cpu {

template <class T, class I>
void completion_steps(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch,
                      int64_t m, int64_t n, int64_t k, int method, const uint8_t* active, const T* U, const T* V,
                      T* U1, T* V1, double* steps, const double* dampings, T* scratch, double* losses,
                      double* changes, int64_t* halvings, uint8_t* stuck) {
  const solvers::CompletionStep<T, I> step{rows, cols, vals, offsets, m, n, k,
                                           static_cast<solvers::StepMethod>(method), scratch};
  // Problems differ in size and in how often they retry: dynamic scheduling balances them.
#pragma omp parallel for schedule(dynamic, 16) if (offsets[batch] * k > kParallelMinWork)
  for (int64_t b = 0; b < batch; ++b)
    solvers::step_problem(step, b, active, U, V, U1, V1, steps, dampings, losses, changes, halvings, stuck);
}

#define LRH_INSTANTIATE(T, I)                                                                                   \
  template void completion_steps<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                       int64_t, int, const uint8_t*, const T*, const T*, T*, T*, double*,      \
                                       const double*, T*, double*, double*, int64_t*, uint8_t*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
