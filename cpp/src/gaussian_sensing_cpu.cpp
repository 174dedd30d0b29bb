#include <algorithm>
#include <vector>
#include <omp.h>

#include "cpu_backend.hpp"
#include "lowrank_hpc/ops/gaussian_sensing.hpp"

namespace lowrank_hpc::cpu {

template <class T>
void gaussian_fill(const ops::GaussianEnsemble& ensemble, int64_t count, T* out) {
  const int64_t size = ensemble.size();
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t i = 0; i < count; ++i)
    for (int64_t e = 0; e < size; ++e) out[i * size + e] = static_cast<T>(ensemble.entry(i, e));
}

template <class T>
void gaussian_forward(const ops::GaussianEnsemble& ensemble, int64_t m, const T* X, int64_t batch, T* out) {
  const int64_t size = ensemble.size();
#pragma omp parallel
  {
    // Each measurement is one thread's sequential sum: deterministic for any thread count, and
    // every entry is drawn once for the whole batch.
    std::vector<double> acc(static_cast<size_t>(batch));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < m; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t e = 0; e < size; ++e) {
        const double a = ensemble.draw(i, e);
        for (int64_t b = 0; b < batch; ++b) acc[b] += a * ensemble.forward_operand(X + b * size, e);
      }
      for (int64_t b = 0; b < batch; ++b) out[b * m + i] = static_cast<T>(acc[b]);
    }
  }
}

template <class T>
void gaussian_adjoint(const ops::GaussianEnsemble& ensemble, int64_t m, const T* y, int64_t batch, T* out) {
  const int64_t size = ensemble.size();
#pragma omp parallel
  {
    // Each output entry is one thread's sequential sum over measurements: no atomics, deterministic.
    std::vector<double> acc(static_cast<size_t>(batch));
#pragma omp for schedule(static)
    for (int64_t e = 0; e < size; ++e) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < m; ++i) {
        const double a = ensemble.entry(i, e);
        for (int64_t b = 0; b < batch; ++b) acc[b] += a * static_cast<double>(y[b * m + i]);
      }
      for (int64_t b = 0; b < batch; ++b) out[b * size + e] = static_cast<T>(acc[b]);
    }
  }
}

#define LRH_INSTANTIATE(T)                                                                          \
  template void gaussian_fill<T>(const ops::GaussianEnsemble&, int64_t, T*);                        \
  template void gaussian_forward<T>(const ops::GaussianEnsemble&, int64_t, const T*, int64_t, T*); \
  template void gaussian_adjoint<T>(const ops::GaussianEnsemble&, int64_t, const T*, int64_t, T*);
LRH_INSTANTIATE(float)
LRH_INSTANTIATE(double)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
