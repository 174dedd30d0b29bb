// The CPU's HALS sweep (lowrank_hpc/ops/hals.hpp): rows are independent, so an OpenMP loop runs
// groups of rows, each group in the lanes of one SIMD vector (a row per lane, the same rounding
// as one row at a time); the rows left over run one by one.
#include <vector>

#include "cpu_backend.hpp"
#include "launchers.hpp"
#include "lowrank_hpc/core/lanes.hpp"
#include "lowrank_hpc/ops/hals.hpp"

namespace lowrank_hpc::cpu::launch {

template <class T>
int hals_sweep(T* W, const T* gram, const T* cross, const int64_t* order, int64_t n, int64_t k, double l1,
               double l2, int sweeps, double inner_tol, double* violations, void*) {
  // One SIMD register of rows per group: wider groups (2 or 4 registers, for more independent
  // addition chains) measured slower here (g++ 12 spills them: k = 30, 5.9 against 3.0 GMAC/s).
  using V = lanes::vec<T>;
  constexpr int64_t width = lanes::Lanes<T>::width;
  const ops::HalsSweep<T> step{static_cast<T>(l1), static_cast<T>(l2)};
  const int64_t groups = n / width;
#pragma omp parallel if (n * k * k * sweeps > kParallelMinWork)
  {
    std::vector<V> w(k), c(k);
    // Dynamic chunks: on a machine shared with other work a descheduled thread's static share
    // held the whole team at the barrier (the chunk's claim costs one atomic per 16 groups).
#pragma omp for schedule(dynamic, 16)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first = group * width;
      for (int64_t r = 0; r < k; ++r)
        for (int64_t lane = 0; lane < width; ++lane) {
          w[r][lane] = W[(first + lane) * k + r];
          c[r][lane] = cross[(first + lane) * k + r];
        }
      const V violation = step.row(w.data(), c.data(), gram, order, k, sweeps, static_cast<T>(inner_tol));
      for (int64_t r = 0; r < k; ++r)
        for (int64_t lane = 0; lane < width; ++lane) W[(first + lane) * k + r] = w[r][lane];
      for (int64_t lane = 0; lane < width; ++lane) violations[first + lane] = static_cast<double>(violation[lane]);
    }
  }
  for (int64_t i = groups * width; i < n; ++i)
    violations[i] =
        static_cast<double>(step.row(W + i * k, cross + i * k, gram, order, k, sweeps, static_cast<T>(inner_tol)));
  return 0;
}

template int hals_sweep<float>(float*, const float*, const float*, const int64_t*, int64_t, int64_t, double, double,
                               int, double, double*, void*);
template int hals_sweep<double>(double*, const double*, const double*, const int64_t*, int64_t, int64_t, double,
                                double, int, double, double*, void*);

}  // namespace lowrank_hpc::cpu::launch
