// The OpenMP drivers behind the CUDA launchers' signatures (cuda/include/lowrank_hpc_cuda/
// launchers.hpp): status words passed by pointer, a stream ignored, 0 returned for success. So
// the bindings in cpp/bindings/common are one source for both modules.
#pragma once
#include <algorithm>
#include <cstdint>

#include "cpu_backend.hpp"
#include "map_reduce.hpp"
#include "lowrank_hpc/ops/adafactor.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::cpu::launch {

// One Adafactor step of a batch of parameters of one shape, in place (lowrank_hpc/ops/adafactor.hpp).
// problems: a host array of `batch` entries; status (batch,) receives each parameter's
// ops::AdafactorStatus; a parameter whose gradient or value is not finite is left untouched.
template <class P, class S>
int adafactor_step(const ops::AdafactorProblem<P, S>* problems, int64_t batch, ops::AdafactorShape shape,
                   const ops::AdafactorOptions& options, int64_t* status, void* stream);

// A driver's "first bad entry or -1" folded into a status word that holds the lowest so far.
inline void lower(int64_t* first_bad, int64_t bad) {
  if (bad >= 0) *first_bad = std::min(*first_bad, bad);
}

template <class T, class I>
int sampled_product(const T* U, const T* V, const I* rows, const I* cols, const int64_t* offsets, int64_t batch,
                    int64_t m, int64_t n, int64_t r, int64_t nnz, T* out, int64_t* first_bad, void*) {
  lower(first_bad, cpu::sampled_product<T, I>(U, V, rows, cols, offsets, batch, m, n, r, nnz, out));
  return 0;
}

template <class T, class I>
int sampled_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                              const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz,
                              double* out, int64_t* first_bad, void*) {
  lower(first_bad, cpu::sampled_squared_residuals<T, I>(U, V, rows, cols, vals, offsets, batch, m, n, r, nnz, out));
  return 0;
}

template <class T, class I>
int coo_to_csr(const I* keys, const I* others, const T* vals, const int64_t* offsets, int64_t batch, int64_t n_key,
               int64_t nnz, int64_t* indptr, int64_t* perm, I* others_sorted, T* vals_sorted, int64_t* status,
               void*) {
  const CsrBuild built = cpu::coo_to_csr<T, I>(keys, others, vals, offsets, batch, n_key, nnz, indptr, perm,
                                               others_sorted, vals_sorted);
  lower(status, built.first_bad);
  status[1] = built.sorted ? 1 : 0;
  return 0;
}

template <class T, class I>
int csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals, const T* B,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out, int64_t* first_bad, void*) {
  lower(first_bad, cpu::csr_times_dense<T, I>(indptr, perm, others, vals, B, batch, n_key, n_other, r, out));
  return 0;
}

template <class T>
int count_nonfinite(const T* x, int64_t size, int64_t* count, void*) {
  *count += cpu::count_nonfinite<T>(x, size);
  return 0;
}

template <class T>
int gaussian_fill(const ops::GaussianEnsemble& ensemble, int64_t count, T* out, void*) {
  cpu::gaussian_fill<T>(ensemble, count, out);
  return 0;
}

template <class T>
int gaussian_forward(const ops::GaussianEnsemble& ensemble, int64_t m, const T* X, int64_t batch, T* out, void*) {
  cpu::gaussian_forward<T>(ensemble, m, X, batch, out);
  return 0;
}

template <class T>
int gaussian_adjoint(const ops::GaussianEnsemble& ensemble, int64_t m, const T* y, int64_t batch, T* out, void*) {
  cpu::gaussian_adjoint<T>(ensemble, m, y, batch, out);
  return 0;
}

template <class T, class I>
int als_update_rows(const int64_t* indptr, const I* others, const T* vals, const T* F, int64_t batch, int64_t n_key,
                    int64_t n_other, int64_t r, T reg, bool count_scaling, const T* weights, const T* shared,
                    const uint8_t* active, int cg_steps, T* out, int64_t* singular, double* residuals, void*) {
  *singular += cpu::als_update_rows<T, I>(indptr, others, vals, F, batch, n_key, n_other, r, reg, count_scaling,
                                          weights, shared, active, cg_steps, out, residuals);
  return 0;
}

template <class T, class I>
int completion_steps(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch, int64_t m,
                     int64_t n, int64_t k, int method, const uint8_t* active, const T* U, const T* V, T* U1, T* V1,
                     double* steps, const double* dampings, T* scratch, double* losses, double* changes,
                     int64_t* halvings, uint8_t* stuck, void*) {
  cpu::completion_steps<T, I>(rows, cols, vals, offsets, batch, m, n, k, method, active, U, V, U1, V1, steps,
                              dampings, scratch, losses, changes, halvings, stuck);
  return 0;
}

// out[b] = the relative change of problem b from its Gram products (batch, 3, k, k) and
// (batch, 4, k, k) (solvers::relative_change_from_grams).
inline int relative_change_from_grams(const double* left, const double* right, int64_t batch, int64_t k, double* out,
                                      void*) {
  for (int64_t b = 0; b < batch; ++b)
    out[b] = solvers::relative_change_from_grams(left + b * 3 * k * k, right + b * 4 * k * k, k);
  return 0;
}

// The fused elastic-binary half-step (lowrank_hpc/ops/elastic_binary.hpp) of B problems: for
// U, U_prev, cross (batch, n, k) and gram (batch, k, k), out = prox(Y - step (Y gram - cross)),
// Y = U + inertia (U - U_prev), step from ||gram||_F per problem; inactive problems copy U.
// gram_out (batch, k, k), unless null, receives out^T out per problem.
template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, T* gram_out, void* stream);

// The HALS coordinate-descent sweep of NMF (lowrank_hpc/ops/hals.hpp): W (n, k) in place, `sweeps`
// sweeps per row in the order `order` (k,), against gram (k, k) and cross (n, k); violations (n,)
// receives each row's projected-gradient violation of the first sweep.
template <class T>
int hals_sweep(T* W, const T* gram, const T* cross, const int64_t* order, int64_t n, int64_t k, double l1,
               double l2, int sweeps, double inner_tol, double* violations, void* stream);

}  // namespace lowrank_hpc::cpu::launch
