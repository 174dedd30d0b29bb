// The CPU backend's drivers: OpenMP loops over the shared functors in lowrank_hpc/ops.
// Each returns the position of the first entry with an out-of-range index, or -1.
#pragma once
#include <cstdint>

#include "lowrank_hpc/ops/gaussian_sensing.hpp"

namespace lowrank_hpc::cpu {

template <class T, class I>
int64_t sampled_product(const T* U, const T* V, const I* rows, const I* cols,
                        const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                        int64_t nnz, T* out);

// Row pointers (batch * n_key + 1) and a stable permutation that orders entries by
// (problem, key); -1 on success, else the first entry whose key is out of range.
template <class I>
int64_t coo_to_csr(const I* keys, const int64_t* offsets, int64_t batch, int64_t n_key,
                   int64_t nnz, int64_t* indptr, int64_t* perm);

// out (batch * n_key, r) = S @ B with S in CSR form; entry j of the CSR order is entry
// perm[j] of (others, vals), or entry j itself when perm is null.
template <class T, class I>
int64_t csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                        const T* B, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out);

// Number of NaN/inf values among x[0..size).
template <class T>
int64_t count_nonfinite(const T* x, int64_t size);

// out (count, rows * cols): entry e of matrix i of the ensemble, rounded to T.
template <class T>
void gaussian_fill(const ops::GaussianEnsemble& ensemble, int64_t count, T* out);

// out (batch, m) = <A_i, X_b> for the ensemble's first m matrices, X (batch, rows * cols).
template <class T>
void gaussian_forward(const ops::GaussianEnsemble& ensemble, int64_t m, const T* X, int64_t batch, T* out);

// out (batch, rows * cols) = sum_i y[b, i] A_i, y (batch, m).
template <class T>
void gaussian_adjoint(const ops::GaussianEnsemble& ensemble, int64_t m, const T* y, int64_t batch, T* out);

}  // namespace lowrank_hpc::cpu
