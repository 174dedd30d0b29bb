// Host-callable launchers of the CUDA kernels. Plain pointers and a stream handle only, so
// the bindings compile with the host compiler and no CUDA headers.
// Index errors: kernels atomically lower *first_bad (device int64, preset to nnz by the caller)
// to the first entry with an out-of-range index. Each launcher returns a cudaError_t code.
#pragma once
#include <cstdint>

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/ops/adafactor.hpp"
#include "lowrank_hpc/ops/gaussian_sensing.hpp"

namespace lowrank_hpc::cuda {

template <class T, class I>
int sampled_product(const T* U, const T* V, const I* rows, const I* cols, const int64_t* offsets,
                    int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out,
                    int64_t* first_bad, void* stream);

// out[k] = (vals[k] - <U[b, rows[k]], V[b, cols[k]]>)^2 in double (cpu::sampled_squared_residuals).
template <class T, class I>
int sampled_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                              const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz,
                              double* out, int64_t* first_bad, void* stream);

// CSR order of coordinates (cpu::coo_to_csr): indptr (batch * n_key + 1), the stable permutation
// perm and the other index (and vals, when not null) moved into it. status[0] is lowered to the
// first out-of-range key, status[1] set to 0 (the permutation is always written on the device).
template <class T, class I>
int coo_to_csr(const I* keys, const I* others, const T* vals, const int64_t* offsets, int64_t batch, int64_t n_key,
               int64_t nnz, int64_t* indptr, int64_t* perm, I* others_sorted, T* vals_sorted, int64_t* status,
               void* stream);

// out (batch * n_key, r) = S @ B with S in CSR form (cpu::csr_times_dense): each row sums its
// entries in CSR order, no atomics. *first_bad is lowered to the input position of a bad index.
template <class T, class I>
int csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals, const T* B,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out, int64_t* first_bad,
                    void* stream);

// Adds the number of NaN/inf values of x to *count (device int64, preset by the caller).
template <class T>
int count_nonfinite(const T* x, int64_t size, int64_t* count, void* stream);

// Gaussian sensing (deterministic, no atomics): out (count, rows * cols) = the ensemble's entries;
// forward out (batch, m) = <A_i, X_b> for X (batch, rows * cols); adjoint out (batch, rows * cols)
// = sum_i y[b, i] A_i for y (batch, m).
template <class T>
int gaussian_fill(const ops::GaussianEnsemble& ensemble, int64_t count, T* out, void* stream);
template <class T>
int gaussian_forward(const ops::GaussianEnsemble& ensemble, int64_t m, const T* X, int64_t batch, T* out,
                     void* stream);
template <class T>
int gaussian_adjoint(const ops::GaussianEnsemble& ensemble, int64_t m, const T* y, int64_t batch, T* out,
                     void* stream);
// ALS half-step (lowrank_hpc/ops/normal_equations.hpp), one thread block per key row: the same
// arguments as the CPU driver cpu::als_update_rows, all pointers on the device. Adds the number
// of singular rows to *singular (device int64, preset by the caller). Needs (r^2 + r) *
// sizeof(T) <= 48 KiB of shared memory (cudaErrorInvalidConfiguration otherwise); with
// cg_steps > 0 (conjugate gradients from out's rows) 3 r * sizeof(T), any rank that fits it.
template <class T, class I>
int als_update_rows(const int64_t* indptr, const I* others, const T* vals, const T* F,
                    int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg, bool count_scaling,
                    const T* weights, const T* shared, const uint8_t* active, int cg_steps, T* out,
                    int64_t* singular, double* residuals, void* stream);

// The batched completion solver's fused iteration, one thread per problem: the same arguments
// as cpu::completion_steps, all pointers on the device.
template <class T, class I>
int completion_steps(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch,
                     int64_t m, int64_t n, int64_t k, int method, const uint8_t* active, const T* U, const T* V,
                     T* U1, T* V1, double* steps, const double* dampings, T* scratch, double* losses,
                     double* changes, int64_t* halvings, uint8_t* stuck, void* stream);

// out[b] = the relative change of problem b from its Gram products (batch, 3, k, k) and
// (batch, 4, k, k) (solvers::relative_change_from_grams), one thread per problem.
int relative_change_from_grams(const double* left, const double* right, int64_t batch, int64_t k, double* out,
                               void* stream);

// The element-wise map and row/column reductions over a functor of lowrank_hpc/ops/maps.hpp
// (cpu/src/map_reduce.hpp has the CPU's, same signatures): out[i] = f(x[i]) (out may be x),
// *nonfinite += the NaN/inf results (as stored: out may be a 16-bit format for float x, each
// f(x) rounded once); out[i] = sum_j f(x[i, j]) and out[j] = sum_i f(x[i, j]) for x (rows,
// cols), summed in double. Instantiated for every map in cuda/src/maps.cu.
template <class T, class F, class O = T>
int map(const T* x, O* out, int64_t size, F f, int64_t* nonfinite, void* stream);
template <class T, class F>
int reduce_rows(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream);
template <class T, class F>
int reduce_cols(const T* x, int64_t rows, int64_t cols, F f, T* out, void* stream);

// The fused elastic-binary half-step, one thread per factor row: the same arguments as the CPU
// driver (cpp/src/launchers.hpp), all pointers on the device.
template <class T>
int elastic_binary_half_step(const T* U, const T* U_prev, const T* gram, const T* cross, int64_t batch, int64_t n,
                             int64_t k, double kappa, double lambda, double inertia, bool nonnegative,
                             const uint8_t* active, T* out, T* gram_out, void* stream);

// One Adafactor step of a batch of parameters of one shape, in place (lowrank_hpc/ops/adafactor.hpp).
// problems: a host array (staged to the device here) of `batch` entries; status (batch,), on the device, receives each parameter's
// ops::AdafactorStatus; a parameter whose gradient or value is not finite is left untouched.
template <class P, class S>
int adafactor_step(const ops::AdafactorProblem<P, S>* problems, int64_t batch, ops::AdafactorShape shape,
                   const ops::AdafactorOptions& options, int64_t* status, void* stream);

// The HALS coordinate-descent sweep of NMF (lowrank_hpc/ops/hals.hpp): W (n, k) in place, `sweeps`
// sweeps per row in the order `order` (k,), against gram (k, k) and cross (n, k); violations (n,)
// receives each row's projected-gradient violation of the first sweep.
template <class T>
int hals_sweep(T* W, const T* gram, const T* cross, const int64_t* order, int64_t n, int64_t k, double l1,
               double l2, int sweeps, double inner_tol, double* violations, void* stream);

// Device query for lowrank_hpc.info(): count, or a negative cudaError_t code.
int device_count();
const char* error_string(int code);

}  // namespace lowrank_hpc::cuda
