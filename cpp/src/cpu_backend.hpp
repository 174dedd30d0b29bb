// The CPU backend's drivers: OpenMP loops over the shared functors in lowrank_hpc/ops.
// Each returns the position of the first entry with an out-of-range index, or -1.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "lowrank_hpc/ops/gaussian_sensing.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::cpu {

// Whether every index in [begin, end) is in [0, bound): the greatest of them read as unsigned
// numbers of the index's width (a negative one is then above any bound the width can hold), a
// max reduction that vectorises (a bool &= of compares did not: a quarter of the rank-1 SpMM's
// time). At the index's own width: int32 read as 64-bit numbers needed a widening and an
// emulated unsigned compare per lane (AVX2 has none for 64 bits), 11% of that SpMM's samples.
template <class I>
inline bool all_in_range(const I* index, int64_t begin, int64_t end, int64_t bound) {
  static_assert(std::is_signed_v<I>, "signed indices: a negative one reads as a large unsigned number");
  using U = std::make_unsigned_t<I>;
  U greatest = 0;
  for (int64_t j = begin; j < end; ++j) {
    const U x = static_cast<U>(index[j]);
    greatest = x > greatest ? x : greatest;
  }
  // A bound past the width's greatest index is the width's limit: every non-negative index is
  // below it and every negative one, read unsigned, at or above it.
  const uint64_t limit = static_cast<uint64_t>(std::numeric_limits<I>::max()) + 1;
  return static_cast<uint64_t>(greatest) < std::min(static_cast<uint64_t>(bound), limit) || begin >= end;
}

// Calls body(std::integral_constant<int, R>) with R = r for the small ranks that many tiny
// problems use (their loops unroll), R = 0 (rank read at run time) otherwise.
template <class Body>
auto dispatch_rank(int64_t r, Body&& body) {
  switch (r) {
    case 1: return body(std::integral_constant<int, 1>{});
    case 2: return body(std::integral_constant<int, 2>{});
    case 3: return body(std::integral_constant<int, 3>{});
    case 4: return body(std::integral_constant<int, 4>{});
    case 8: return body(std::integral_constant<int, 8>{});
    case 16: return body(std::integral_constant<int, 16>{});
    case 32: return body(std::integral_constant<int, 32>{});
    default: return body(std::integral_constant<int, 0>{});
  }
}

// dispatch_rank's ranks and the common ones between them (model defaults, rank="auto"'s steps,
// round numbers) for per-entry dots: a rank known at compile time drops the run-time rank's
// loop and mask work per entry (SDDMM, float32, one thread: r = 20 took 1.47x r = 32's time at
// run time, 1.06x compiled). The dot's order is the run-time rank's either way (strided_dot).
template <class Body>
auto dispatch_dot_rank(int64_t r, Body&& body) {
  switch (r) {
    case 5: return body(std::integral_constant<int, 5>{});
    case 6: return body(std::integral_constant<int, 6>{});
    case 10: return body(std::integral_constant<int, 10>{});
    case 12: return body(std::integral_constant<int, 12>{});
    case 20: return body(std::integral_constant<int, 20>{});
    case 24: return body(std::integral_constant<int, 24>{});
    case 64: return body(std::integral_constant<int, 64>{});
    case 100: return body(std::integral_constant<int, 100>{});
    default: return dispatch_rank(r, body);
  }
}

// Calls body(std::integral_constant<int, R>) with R = r for every r <= 16 and r = 32, else R = 0:
// for row-at-a-time kernels whose rows then unroll into registers (a Boolean product's add of a
// factor row: 3x faster at r = 10 than the run-time loop).
template <class Body>
void dispatch_narrow_rank(int64_t r, Body&& body) {
  switch (r) {
#define LRH_WIDTH(R) \
  case R: return body(std::integral_constant<int, R>{});
    LRH_WIDTH(1) LRH_WIDTH(2) LRH_WIDTH(3) LRH_WIDTH(4) LRH_WIDTH(5) LRH_WIDTH(6) LRH_WIDTH(7) LRH_WIDTH(8)
    LRH_WIDTH(9) LRH_WIDTH(10) LRH_WIDTH(11) LRH_WIDTH(12) LRH_WIDTH(13) LRH_WIDTH(14) LRH_WIDTH(15)
    LRH_WIDTH(16) LRH_WIDTH(32)
#undef LRH_WIDTH
    default: return body(std::integral_constant<int, 0>{});
  }
}

// Thin SVD M = left diag(s) q^T of a row-major (n, r) M, n >= r, by one-sided Jacobi (one
// thread, double inside): left (n, r) orthonormal columns, s (r,) descending, q (r, r)
// orthogonal. Returns the sweeps used, or -1 when M is not finite or max_sweeps did not converge
// (then nothing is written).
template <class T>
int thin_svd_jacobi(const T* M, int64_t n, int64_t r, int max_sweeps, T* left, T* s, T* q);

// A 0/1 matrix bit-packed by rows: row i's bit j is bit (j % 64) of word i * binary_words(m) + j / 64.
inline int64_t binary_words(int64_t n_cols) { return (n_cols + 63) / 64; }

// words (n_rows, binary_words(n_cols)) = the bits of the ones at (rows[e], cols[e]); returns the
// first e out of range (words then incomplete), or -1.
int64_t pack_binary(const int64_t* rows, const int64_t* cols, int64_t count, int64_t n_rows, int64_t n_cols,
                    uint64_t* words);

// out (batch, n, r) = A_b F_b for the packed 0/1 A (batch, n, binary_words(m)) and F (batch, m, r).
template <class T>
void binary_times_dense(const uint64_t* words, const T* F, int64_t batch, int64_t n, int64_t m, int64_t r, T* out);
// out (batch, m, r) = A_b^T G_b for the same packing of A and G (batch, n, r), by scattering G's rows.
template <class T>
void binary_transpose_times_dense(const uint64_t* words, const T* G, int64_t batch, int64_t n, int64_t m, int64_t r,
                                  T* out);

// The same products for a sparse 0/1 A given by the column indices of its ones in CSR order
// (indptr (n + 1,), indices (nnz,) in [0, m)): out (n, r) = A F for F (m, r), or with transpose
// out (m, r) = A^T G for G (n, r), by gathering F's rows or by scattering G's.
template <class T>
void binary_indexed_times_dense(const int64_t* indptr, const int32_t* indices, const T* F, int64_t n, int64_t m,
                                int64_t r, bool transpose, T* out);

// Below this many multiply-adds a parallel region costs more than it saves.
inline constexpr int64_t kParallelMinWork = int64_t(1) << 16;

template <class T, class I>
int64_t sampled_product(const T* U, const T* V, const I* rows, const I* cols,
                        const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                        int64_t nnz, T* out);

// The sampled product over a CSR pattern (coo_to_csr's arrays): CSR entry j is
// <U[row], V[b, others[j]]> for its row (b * m + i of U viewed as (batch * m, r)), written to
// out[perm[j]] (out[j] when perm is null), the caller's order. Each U row is read once per
// row instead of once per entry. With y (caller's order; null: none) the residual
// product - y[k] is written instead and *sum_of_squares receives the sum of its squares in
// double. Returns the first bad entry (caller's order) or -1.
template <class T, class I>
int64_t csr_sampled_product(const int64_t* indptr, const int64_t* perm, const I* others, const T* U, const T* V,
                            const T* y, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out,
                            double* sum_of_squares);

// sampled_product for float32/float64 rows long enough that reading each U row once per row
// pays for a sort: the entries ordered by (problem, row) (coo_to_csr), the products formed row
// by row in that order and gathered back to the caller's: the sort writes no permutation at
// random and the kernel scatters no result (1e6 shuffled entries of 10,000 x 10,000 factors,
// float32, 2 threads, Zen 3: r = 128 19-25 against 22-34 ms, r = 256 41-42 against 45-48).
// Scratch: 8 bytes an entry and one index and one result. Returns the first entry (caller's
// order) whose row is out of range, else whose column is, or -1.
template <class T, class I>
int64_t sampled_product_in_row_order(const T* U, const T* V, const I* rows, const I* cols, const int64_t* offsets,
                                     int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out);

struct CsrBuild {
  int64_t first_bad;  // -1, or the first entry whose key is out of range
  bool sorted;        // entries were already in (problem, key) order: perm was not written
};

// One gradient iteration of every active problem of a batch of small completion problems
// (lowrank_hpc/solvers/completion_step.hpp), with per-problem step halving. U, V are
// (batch, m, k) / (batch, n, k); U1, V1 receive the next iterate (a copy for inactive
// problems); steps is updated in place; scratch holds batch * ((m + n) k + 2 k^2) values.
template <class T, class I>
void completion_steps(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch,
                      int64_t m, int64_t n, int64_t k, int method, const uint8_t* active, const T* U, const T* V,
                      T* U1, T* V1, double* steps, const double* dampings, T* scratch, double* losses,
                      double* changes, int64_t* halvings, uint8_t* stuck);

// out[k] = (vals[k] - <U[b, rows[k]], V[b, cols[k]]>)^2 in double: a solver's loss terms in one
// pass, without a residual array in T and its conversion.
template <class T, class I>
int64_t sampled_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                                  const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                                  int64_t nnz, double* out);

// Row pointers (batch * n_key + 1) and a stable permutation that orders entries by
// (problem, key), with the other index (and vals, when not null) moved into that order.
// Nothing but indptr is written when the entries are already sorted. perm[j] is the entry at
// CSR place j; inverse (when not null) receives the other direction, inverse[k] the CSR place of
// entry k, written in entry order (no scattered stores; the scatter then takes no runs of rows).
template <class T, class I>
CsrBuild coo_to_csr(const I* keys, const I* others, const T* vals, const int64_t* offsets, int64_t batch,
                    int64_t n_key, int64_t nnz, int64_t* indptr, int64_t* perm, I* others_sorted,
                    T* vals_sorted, int64_t* inverse = nullptr);

// out (n_out,) = numpy's bincount(index, weights, minlength=n_out) with weights values (nnz,) or,
// with gather, values[gather] (values of n_values): float64 sums, each bin in entry order (the
// same bits). sorted_index (non-decreasing, trusted: the caller checks): threads take runs of whole
// bins. Returns the first entry whose index (outside [0, n_out): no growth, unlike bincount) or
// gathered position is out of range (out then incomplete), or -1.
template <class T, class I>
int64_t sums_by_index(const I* index, const T* values, const I* gather, int64_t n_values, int64_t nnz,
                      bool sorted_index, double* out, int64_t n_out);

// out (nnz,) = mu + a[rows] + b[cols] in numpy's arithmetic (ops::OffsetAt); a (n1,), b (n2,).
// Returns the first entry with an index out of range (its out is 0), or -1.
template <class T, class I>
int64_t offsets_at(const I* rows, const I* cols, double mu, const T* a, const T* b, int64_t n1, int64_t n2,
                   int64_t nnz, T* out);

// Whether coo_times_dense_in_place would take a product of this shape (before its look at the
// keys' order): n_key rows of r numbers of item_bytes each, on this many OpenMP threads (the
// rule and its measurements: sparse_times_dense_cpu.cpp).
bool in_place_product_pays(int64_t n_key, int64_t r, int64_t item_bytes);

// out (n_key, r) = S @ B for one problem's coordinates in the caller's order, on one thread:
// each entry's v * B[others[k]] added into its output row in memory, in entry order, so every
// row sums its entries in input order (csr_times_dense's numbers, bit for bit) without the sort.
// Returns false, having written nothing, where the sort pays instead: the shape fails
// in_place_product_pays, or the first keys come in order (sorted input: coo_to_csr's check and
// the CSR product are faster there). Entries with an out-of-range index are skipped; bad[0] and
// bad[1] receive the first entry whose key, and whose other index, is out of range (nnz: none).
template <class T, class I>
bool coo_times_dense_in_place(const I* keys, const I* others, const T* vals, const T* B, int64_t n_key,
                              int64_t n_other, int64_t r, int64_t nnz, T* out, int64_t* bad);

// out (batch * n_key, r) = S @ B with S in CSR form: others[j] is the B row of CSR entry j,
// whose value is vals[perm[j]] (vals[j] when perm is null). Returns the first bad entry or -1.
template <class T, class I>
int64_t csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                        const T* B, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out);

// A batch of completion problems as the fused ALS iteration reads it: both CSR orders, with
// the other index and the value moved in (the loss is summed over the column order).
template <class T, class I>
struct AlsBatch {
  const int64_t* row_indptr;  // (batch * m + 1)
  const I* row_others;
  const T* row_vals;
  const int64_t* col_indptr;  // (batch * n + 1)
  const I* col_others;
  const T* col_vals;
  int64_t batch, m, n;
};

// One whole ALS iteration (U rows, then V rows, then loss and relative change) of each active
// problem in turn, problems in parallel: each problem's data stays in cache throughout.
// Returns the number of singular rows.
template <class T, class I>
int64_t als_iterations(const AlsBatch<T, I>& data, int64_t r, T reg, bool count_scaling, const uint8_t* active,
                       T* U, T* V, double* losses, double* changes);

// Many small problems laid out densely, W = 64 / sizeof(T) problems per group (one SIMD
// register of lanes, core/lanes.hpp): seen (groups, m, n) has bit l set where problem
// group * W + l observes (i, j) (uint8 for W = 8, uint16 for W = 16); values (groups, m, n, W),
// 0 where not observed; row_counts (groups, m, W) and col_counts (groups, n, W) count them.
template <class T>
struct AlsDense {
  void* seen;
  T* values;
  T* row_counts;
  T* col_counts;
  int64_t batch, m, n;
};

// Fills a zeroed AlsDense from the problems' entries. False when some problem's entries are not
// in strictly increasing (row, col) order (or out of range): the dense kernel gives the
// per-problem solver's bits only for entries in that order (and has no room for repeats).
template <class T, class I>
bool als_dense_pack(const I* rows, const I* cols, const T* vals, const int64_t* offsets, int64_t batch, int64_t m,
                    int64_t n, const AlsDense<T>& out);

// als_iterations on the dense groups of als_dense_pack, for ranks 1 to 4 (-1 for another).
template <class T>
int64_t als_dense_iterations(const AlsDense<T>& data, int64_t r, T reg, bool count_scaling, const uint8_t* active,
                             T* U, T* V, double* losses, double* changes);

// One ALS half-step: for every key row of every active problem, out[row] = the solution of the
// row's regularised normal equations (lowrank_hpc/ops/normal_equations.hpp) given the fixed
// factor F (batch * n_other, r). CSR as from coo_to_csr: entry j has other index others[j]
// (trusted to be in [0, n_other)) and value vals[j] (values moved into CSR order).
// active: per-problem mask, or null for all; rows of inactive problems are left untouched.
// cg_steps > 0 takes that many conjugate-gradient steps from out's rows instead of the exact
// solve. weights (nnz, CSR order) and shared (batch, r, r), each optional, make the systems
// implicit feedback's (NormalEquations). residuals, unless null, gets each solved row's sum of
// squared residuals (n_rows, float64). Returns the number of singular rows (set to zero).
template <class T, class I>
int64_t als_update_rows(const int64_t* indptr, const I* others, const T* vals, const T* F,
                        int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T reg, bool count_scaling,
                        const T* weights, const T* shared, const uint8_t* active, int cg_steps, T* out,
                        double* residuals);

// out[row] = sum over the row's entries j of (<X[row], F[others[j]]> - vals[j])^2 in double for
// every key row of every active problem (CSR as for als_update_rows; X (batch * n_key, r) the
// key rows' factor): explicit ALS's fit term in a pass of its own over the orientation whose
// gathered factor is the smaller (NormalEquations::squared_residuals, strided_dot's order).
template <class T, class I>
void als_squared_residuals(const int64_t* indptr, const I* others, const T* vals, const T* F, const T* X,
                           int64_t batch, int64_t n_key, int64_t n_other, int64_t r, const uint8_t* active,
                           double* out);

// relative_change's float64 Gram blocks (solvers::relative_change_from_grams) over batch
// problems' rows x k factor rows before and after an update, dA = after - before in float64,
// added into each problem's out: left (batch, 3, k, k): dA^T dA, dA^T A0, A0^T A0 (the last
// where with_before_gram); right (batch, 4, k, k): A1^T A1 (where with_after_gram), A1^T dA,
// dA^T dA, A0^T A0 (where with_before_gram). Each entry sums the rows in order, the same bits
// for any thread count.
template <class T>
void change_grams_left(const T* before, const T* after, int64_t batch, int64_t rows, int64_t k, bool with_before_gram,
                       double* out);
template <class T>
void change_grams_right(const T* before, const T* after, int64_t batch, int64_t rows, int64_t k, bool with_after_gram,
                        bool with_before_gram, double* out);

// How the exact row solves of als_update_rows and als_iterations form a rank's systems: 0 per
// entry (normal_equations.hpp's solve), 1 in register tiles with the same bits, 2 in register
// tiles whose Gram multiply-adds are fused (RegisterTiles<T>::kFusedGram).
template <class T>
int als_row_solve_form(int64_t r);

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

// Row block (rows, n) of U V^T: applies f in place, then writes each row's k largest |f|
// (values, column indices; best first, ties to the smaller column) to (rows, k) outputs.
// Returns the NaN/inf count of the block.
template <class T>
int64_t kernel_topk_rows(T* block, int64_t rows, int64_t n, ops::KernelFunction f, int64_t k, T* values,
                         int64_t* indices);

// A host BLAS GEMM: Fortran sgemm/dgemm with 32-bit integers (scipy.linalg.cython_blas's
// pointers, handed over by the Python layer). The kernels below call it from each OpenMP thread
// on its own row tiles, so the caller limits the BLAS to one thread (no pool left spinning
// against the kernels' threads: that halved a top-k's selection after numpy's GEMM).
template <class T>
using HostGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*, const T*,
                          const int*, const T*, const int*, const T*, T*, const int*);

// out (batch, m, n) = f(U V^T) for U (batch, m, r), V (batch, n, r), C-contiguous: each row tile
// formed by gemm and mapped while in cache. Returns the NaN/inf count of the results.
template <class T>
int64_t kernel_product_tiles(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m, int64_t n, int64_t r,
                             ops::KernelFunction f, T* out);

// Each row's k largest |f| of f(U V^T) (as kernel_topk_rows) into values and indices (batch, m,
// k), the rows formed a tile at a time by gemm in a thread's buffer (never the m x n matrix).
// Returns the NaN/inf count of the entries f was applied to.
template <class T>
int64_t kernel_topk_rows_of_products(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m, int64_t n,
                                     int64_t r, ops::KernelFunction f, int64_t k, T* values, int64_t* indices);

// Each problem's k largest |f| of f(U V^T) (ties to the smaller flat index i * n + j) into
// values and flat (batch, k): in flat order, or best first (ties in flat order) with
// by_magnitude. Blocks of block_rows (1 to m) rows formed in `block` (block_rows x n) by the
// tiled products (kernel_product_tiles), each block's top k merged with the running best. Returns
// the NaN/inf count of the entries f was applied to (all of them; nothing selected once one is
// seen). The caller's block: a fresh 64 MiB one for each call took longer than the selection
// (its pages faulted in on every call).
template <class T>
int64_t kernel_topk_global_of_products(HostGemm<T> gemm, const T* U, const T* V, int64_t batch, int64_t m,
                                       int64_t n, int64_t r, ops::KernelFunction f, int64_t k, int64_t block_rows,
                                       T* block, bool by_magnitude, T* values, int64_t* flat);

// order (n) = the positions of values (n) by descending |value|, ties and NaN (last) in position
// order: a stable argsort of -|values| by radix sort (the global top-k's final order).
template <class T>
void order_by_magnitude(const T* values, int64_t n, int64_t* order);

// positions (k) = the positions, ascending, of the k largest |values| (n), ties at the k-th
// magnitude to the earlier positions (1 <= k <= n); returns k, or -1 (nothing written) where
// a value is NaN. sample_positions (sample_size, each in [0, n); none when 0): where to read the
// keys that bound the k-th (a shortcut only: the result does not depend on them).
template <class T>
int64_t select_top_magnitudes(const T* values, int64_t n, int64_t k, const int64_t* sample_positions,
                              int64_t sample_size, int64_t* positions);

}  // namespace lowrank_hpc::cpu
