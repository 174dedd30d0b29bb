// The CPU backend's drivers: OpenMP loops over the shared functors in lowrank_hpc/ops.
// Each returns the position of the first entry with an out-of-range index, or -1.
#pragma once
#include <cstdint>

#include "lowrank_hpc/ops/kernel_functions.hpp"

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

// x[i] = f(x[i]) for the whole array (after the vendor GEMM); returns the NaN/inf count.
template <class T>
int64_t apply_kernel_in_place(T* x, int64_t size, ops::KernelFunction f);

// Row block (rows, n) of U V^T: applies f in place, then writes each row's k largest |f|
// (values, column indices; best first, ties to the smaller column) to (rows, k) outputs.
// Returns the NaN/inf count of the block.
template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices);

}  // namespace lowrank_hpc::cpu
