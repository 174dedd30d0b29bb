#include <algorithm>
#include <memory>
#include <vector>
#include <omp.h>

#include "lowrank_hpc/core/instantiate.hpp"
#include "cpu_backend.hpp"
#include "lowrank_hpc/core/batch.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"

namespace lowrank_hpc::cpu {

namespace {

#define LRH_ALWAYS_INLINE __attribute__((always_inline))

// Far enough ahead to hide the cache misses on the factor rows an entry gathers (a V row of a
// large factor is rarely cached: columns come in random order within a row).
constexpr int64_t kPrefetchDistance = 16;
// Prefetch only where it paid (float32, 2 threads, Zen 4 with 1 MiB L2 and 32 MiB L3, against no
// prefetch): rows of 256 bytes or more in factors beyond a few MiB (r = 128, 100,000 x 100,000,
// row-sorted: 317 against 374 ms for 1e7 entries). Shorter rows lost to the extra index loads
// and checks, in cache and out: r = 8 with 10,000 x 10,000 factors 2.7 against 1.3 ms for 1e6
// entries, r = 32 in random order at 100,000 x 100,000 177 against 129 ms for 1e7.
constexpr int64_t kPrefetchMinRowBytes = 256;
constexpr int64_t kPrefetchMinBytes = int64_t(8) << 20;

// Every 64-byte line of a factor row of r values (a rank-128 float32 row spans eight).
template <class T>
inline void prefetch_row(const T* row, int64_t r) {
  const char* bytes = reinterpret_cast<const char*>(row);
  const int64_t size = r * static_cast<int64_t>(sizeof(T));
  for (int64_t offset = 0; offset < size; offset += 64) __builtin_prefetch(bytes + offset);
}

// Runs write(k, b) for every entry k of problem b whose indices are in range and bad(k) for
// the others, in contiguous per-thread chunks (each thread finds its first problem once, then
// walks forward). Returns the first bad entry or -1. write must be inlined (LRH_ALWAYS_INLINE)
// and hold copies of what it reads: g++ otherwise calls it once per entry from the OpenMP
// region and reloads the factor pointers through its captures after every store (rank 1: 21
// against 11 ms for 4M entries).
template <int R, class Entry, class Write, class Bad>
int64_t for_each_entry(const Entry& entry, const int64_t* offsets, int64_t batch, int64_t nnz, int64_t r,
                       Write write, Bad bad) {
  const bool prefetch = r * static_cast<int64_t>(sizeof(*entry.U)) >= kPrefetchMinRowBytes &&
                        entry.factor_bytes() > kPrefetchMinBytes;
  // One problem whose indices are all in range (two vector passes over rows and cols first): no
  // check or problem walk per entry, and at rank 1 a loop vectorised across entries (1e6
  // entries: 1.63 -> 0.47 ms; the per-entry checks had cost more than the products).
  const bool checked = batch == 1 && !prefetch && all_in_range(entry.rows, 0, nnz, entry.m) &&
                       all_in_range(entry.cols, 0, nnz, entry.n);
  int64_t first_bad = nnz;
#pragma omp parallel reduction(min : first_bad) if (nnz * r > kParallelMinWork)
  {
    // Thread-local copies: the outlined region otherwise reads them through a pointer to the
    // caller's frame, reloaded after every store to the output.
    const Entry local = entry;
    const Write local_write = write;
    const int64_t threads = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t begin = nnz * tid / threads, end = nnz * (tid + 1) / threads;
    if (checked) {
      if constexpr (R == 1) {
#pragma omp simd
        for (int64_t k = begin; k < end; ++k) local_write(k, 0);
      } else {
        for (int64_t k = begin; k < end; ++k) local_write(k, 0);
      }
    }
    int64_t b = begin < end && !checked ? find_batch(offsets, batch, begin) : 0;
    for (int64_t k = checked ? end : begin; k < end; ++k) {
      while (k >= offsets[b + 1]) ++b;
      // A hint only: an entry of the next problem prefetches the wrong rows, harmlessly.
      if (prefetch && k + kPrefetchDistance < end && local.valid(k + kPrefetchDistance)) {
        prefetch_row(local.u_row(k + kPrefetchDistance, b), r);
        prefetch_row(local.v_row(k + kPrefetchDistance, b), r);
      }
      if (!local.valid(k)) {
        bad(k);
        first_bad = std::min(first_bad, k);
        continue;
      }
      local_write(k, b);
    }
  }
  return first_bad == nnz ? -1 : first_bad;
}

template <class T, class I, int R>
int64_t sampled_product_rank(const T* U, const T* V, const I* rows, const I* cols,
                             const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                             int64_t nnz, T* out) {
  const ops::SampledProduct<T, I, R> entry{U, V, rows, cols, m, n, r};
  return for_each_entry<R>(
      entry, offsets, batch, nnz, r,
      [entry, out](int64_t k, int64_t b) LRH_ALWAYS_INLINE { out[k] = store_as<T>(entry.partial(k, b, 0, 1)); },
      [&](int64_t k) { out[k] = store_as<T>(0.0f); });
}

template <class T, class I, int R>
int64_t squared_residuals_rank(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                               const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                               int64_t nnz, double* out) {
  const ops::SampledProduct<T, I, R> entry{U, V, rows, cols, m, n, r};
  return for_each_entry<R>(
      entry, offsets, batch, nnz, r,
      [entry, vals, out](int64_t k, int64_t b) LRH_ALWAYS_INLINE {
        // The residual in T (as the solver's gradient sees it), squared in double for the sum.
        const double residual = static_cast<double>(vals[k] - entry.partial(k, b, 0, 1));
        out[k] = residual * residual;
      },
      [&](int64_t k) { out[k] = 0.0; });
}

// The entries of CSR rows: each thread takes an equal share of the entries (a row holding half
// of them is split, not left to one thread) and walks its rows from the first. With Residual,
// out[k] = product - y[k] (in T, as the solver's gradient sees it) and each thread sums its
// squares in double; the shares are added in thread order, so a thread count gives one sum.
// With perm (entries given out of row order), a chunk's products go to a buffer in L1 and then
// to their places in one burst: scattered stores (and y's scattered loads) between the factor-row
// loads stalled them (1e6 shuffled entries of 10,000 x 10,000, float32, 2 threads, Zen 3: r = 128
// 38-43 against 33-34 ms, with the residual 79-93 against 39-40; r = 64 10-11 against 11-12).
template <class T, class I, int R, bool Residual>
int64_t csr_sampled_product_rank(const int64_t* indptr, const int64_t* perm, const I* others, const T* U,
                                 const T* V, const T* y, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz,
                                 T* out, double* sum_of_squares) {
  constexpr int64_t kChunk = 1024;  // 4-8 KiB of products: they stay in L1 until written out
  const int64_t n_rows = batch * m;
  const bool prefetch = r * static_cast<int64_t>(sizeof(T)) >= kPrefetchMinRowBytes &&
                        (m + n) * r * static_cast<int64_t>(sizeof(T)) > kPrefetchMinBytes;
  const bool parallel = nnz * r > kParallelMinWork;
  std::vector<double> shares(static_cast<size_t>(parallel ? omp_get_max_threads() : 1), 0.0);
  int64_t first_bad = nnz;
#pragma omp parallel reduction(min : first_bad) if (parallel)
  {
    const int64_t threads = omp_get_num_threads(), tid = omp_get_thread_num();
    const int64_t begin = nnz * tid / threads, end = nnz * (tid + 1) / threads;
    double share = 0.0;
    T buffer[kChunk];
    // The row holding entry `begin`: the last row starting at or before it.
    int64_t row = std::upper_bound(indptr, indptr + n_rows + 1, begin) - indptr - 1;
    for (int64_t chunk = begin; chunk < end; chunk += kChunk) {
      const int64_t chunk_end = std::min(end, chunk + kChunk);
      // In row order the products are the results' own places; the pass below then only
      // subtracts y and sums the squares (Residual) over entries still in L1.
      T* products = perm ? buffer : out + chunk;
      for (int64_t j = chunk; j < chunk_end;) {
        const int64_t row_end = indptr[row + 1], stop = std::min(chunk_end, row_end);
        const int64_t b = row / m;
        const T* u = U + row * r;
        const T* V_problem = V + b * n * r;
        for (; j < stop; ++j) {
          if (prefetch && j + kPrefetchDistance < end && ops::index_in_range(others[j + kPrefetchDistance], n))
            prefetch_row(V_problem + static_cast<int64_t>(others[j + kPrefetchDistance]) * r, r);
          if (!ops::index_in_range(others[j], n)) {
            products[j - chunk] = store_as<T>(0.0f);
            first_bad = std::min(first_bad, perm ? perm[j] : j);
            continue;
          }
          products[j - chunk] =
              store_as<T>(ops::strided_dot<T, R>(u, V_problem + static_cast<int64_t>(others[j]) * r, r, 0, 1));
        }
        if (j == row_end) ++row;
      }
      if (!perm && !Residual) continue;
      for (int64_t j = chunk; j < chunk_end; ++j) {
        const int64_t k = perm ? perm[j] : j;
        const T product = products[j - chunk];
        if constexpr (Residual) {
          if (!ops::index_in_range(others[j], n)) {  // a bad entry's result is 0, outside the sum
            out[k] = product;
            continue;
          }
          const T residual = product - y[k];
          out[k] = residual;
          share += static_cast<double>(residual) * static_cast<double>(residual);
        } else {
          out[k] = product;
        }
      }
    }
    shares[static_cast<size_t>(tid)] = share;
  }
  if constexpr (Residual) {
    double total = 0.0;
    for (const double share : shares) total += share;
    *sum_of_squares = total;
  }
  return first_bad == nnz ? -1 : first_bad;
}

}  // namespace

template <class T, class I>
int64_t csr_sampled_product(const int64_t* indptr, const int64_t* perm, const I* others, const T* U, const T* V,
                            const T* y, int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out,
                            double* sum_of_squares) {
  return dispatch_dot_rank(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
    return y ? csr_sampled_product_rank<T, I, R, true>(indptr, perm, others, U, V, y, batch, m, n, r, nnz, out,
                                                       sum_of_squares)
             : csr_sampled_product_rank<T, I, R, false>(indptr, perm, others, U, V, y, batch, m, n, r, nnz, out,
                                                        sum_of_squares);
  });
}

template <class T, class I>
int64_t sampled_product_in_row_order(const T* U, const T* V, const I* rows, const I* cols, const int64_t* offsets,
                                     int64_t batch, int64_t m, int64_t n, int64_t r, int64_t nnz, T* out) {
  // Not value-initialised: every place is written before it is read.
  std::unique_ptr<int64_t[]> indptr(new int64_t[static_cast<size_t>(batch * m + 1)]);
  std::unique_ptr<int64_t[]> inverse(new int64_t[static_cast<size_t>(nnz)]);
  std::unique_ptr<I[]> others(new I[static_cast<size_t>(nnz)]);
  const CsrBuild build = coo_to_csr<T, I>(rows, cols, nullptr, offsets, batch, m, nnz, indptr.get(), nullptr,
                                          others.get(), nullptr, inverse.get());
  if (build.first_bad >= 0) return build.first_bad;
  // In row order already: the products are written in place (and a bad place is the caller's).
  if (build.sorted) return csr_sampled_product<T, I>(indptr.get(), nullptr, cols, U, V, nullptr, batch, m, n, r, nnz,
                                                     out, nullptr);
  std::unique_ptr<T[]> products(new T[static_cast<size_t>(nnz)]);
  const int64_t bad = csr_sampled_product<T, I>(indptr.get(), nullptr, others.get(), U, V, nullptr, batch, m, n, r,
                                                nnz, products.get(), nullptr);
  int64_t first_bad = -1;  // bad is a CSR place: the caller's first bad column is found in the caller's order
  for (int64_t k = 0; bad >= 0 && k < nnz && first_bad < 0; ++k)
    if (!ops::index_in_range(cols[k], n)) first_bad = k;
  // Gathered even then: out holds every product and a bad entry's 0, as the other paths leave it.
  const T* sorted_products = products.get();
  const int64_t* place = inverse.get();
#pragma omp parallel for schedule(static) if (nnz > kParallelMinWork)
  for (int64_t k = 0; k < nnz; ++k) out[k] = sorted_products[place[k]];
  return first_bad;
}

template <class T, class I>
int64_t sampled_squared_residuals(const T* U, const T* V, const I* rows, const I* cols, const T* vals,
                                  const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                                  int64_t nnz, double* out) {
  return dispatch_dot_rank(r, [&](auto rank) {
    return squared_residuals_rank<T, I, decltype(rank)::value>(U, V, rows, cols, vals, offsets, batch, m, n, r,
                                                               nnz, out);
  });
}

template <class T, class I>
int64_t sampled_product(const T* U, const T* V, const I* rows, const I* cols,
                        const int64_t* offsets, int64_t batch, int64_t m, int64_t n, int64_t r,
                        int64_t nnz, T* out) {
  if constexpr (is_half_v<T>) {  // 16-bit storage: the general-rank loop only (compile time)
    return sampled_product_rank<T, I, 0>(U, V, rows, cols, offsets, batch, m, n, r, nnz, out);
  } else {
    return dispatch_dot_rank(r, [&](auto rank) {
      return sampled_product_rank<T, I, decltype(rank)::value>(U, V, rows, cols, offsets, batch, m, n, r, nnz, out);
    });
  }
}

#define LRH_INSTANTIATE(T, I)                                                              \
  template int64_t sampled_product<T, I>(const T*, const T*, const I*, const I*,           \
                                         const int64_t*, int64_t, int64_t, int64_t, int64_t, \
                                         int64_t, T*);                                      \
  template int64_t sampled_squared_residuals<T, I>(const T*, const T*, const I*, const I*, const T*,   \
                                                   const int64_t*, int64_t, int64_t, int64_t, int64_t, \
                                                   int64_t, double*);                                   \
  template int64_t csr_sampled_product<T, I>(const int64_t*, const int64_t*, const I*, const T*, const T*, \
                                             const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T*,   \
                                             double*);                                                    \
  template int64_t sampled_product_in_row_order<T, I>(const T*, const T*, const I*, const I*, const int64_t*,  \
                                                      int64_t, int64_t, int64_t, int64_t, int64_t, T*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
#define LRH_INSTANTIATE(T, I)                                                              \
  template int64_t sampled_product<T, I>(const T*, const T*, const I*, const I*,           \
                                         const int64_t*, int64_t, int64_t, int64_t, int64_t, \
                                         int64_t, T*);
LRH_FOR_HALF_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
