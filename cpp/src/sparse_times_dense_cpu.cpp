#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <vector>
#include <omp.h>

#include "lowrank_hpc/core/instantiate.hpp"
#include "lowrank_hpc/core/lanes.hpp"
#include "cpu_backend.hpp"
#include "lowrank_hpc/core/batch.hpp"
#include "lowrank_hpc/ops/finite.hpp"
#include "lowrank_hpc/ops/sparse_times_dense.hpp"

namespace lowrank_hpc::cpu {

namespace {
// Per-thread histograms cost threads * rows counters; past this, sort on one thread.
constexpr int64_t kMaxHistogramBytes = int64_t(1) << 30;

// The sort's scatter keeps one write stream per row and output array. With this many rows and
// outputs this large, each store waits on a line fetched from memory (1e6 shuffled entries in
// 10,000 rows: 4-9 ms), so entries are first grouped into at most kRowGroups runs of
// consecutive rows (few streams), then each run is spread over its rows while it sits in cache:
// 1.0-1.6x from 12 MiB of output on, 0.61-0.88x grouped below it (BENCHMARKS.md, session 25).
constexpr int64_t kGroupedMinRows = 4096;
constexpr int64_t kGroupedMinBytes = int64_t(12) << 20;  // of perm, others and vals
constexpr int64_t kRowGroups = 128;
// Runs of at most 8,192 rows (the most measured: 1e6 rows in 128 runs); more rows sort directly.
constexpr int kMaxGroupShift = 13;
// A run is copied to per-thread scratch before it is spread; a larger one (a row holding most
// entries) keeps the direct scatter. The threads spreading runs hold at most kMaxSpreadScratchBytes
// of such copies together (fewer threads where the runs are large).
constexpr int64_t kMaxGroupEntries = int64_t(1) << 20;
constexpr int64_t kMaxSpreadScratchBytes = int64_t(64) << 20;

// Rows per run (a power of two, 2^shift) so that n_rows rows make at most kRowGroups runs.
inline int row_group_shift(int64_t n_rows) {
  int shift = 0;
  while (((n_rows - 1) >> shift) >= kRowGroups) ++shift;
  return shift;
}

// The grouped scatter's second pass: each run of rows (its entries contiguous in the outputs, in
// the stable order the first pass left, with each entry's row within the run in row_in_group)
// copied to scratch and spread to its rows' positions in the same places. Runs are independent.
template <class T, class I>
void spread_row_groups(const int64_t* indptr, int64_t n_rows, int shift, int64_t largest,
                       const uint16_t* row_in_group, int64_t* perm, I* others_sorted, T* vals_sorted) {
  const int64_t groups = ((n_rows - 1) >> shift) + 1, rows_per_group = int64_t(1) << shift;
  const int64_t run_bytes = largest * ((perm ? int64_t(sizeof(int64_t)) : 0) + int64_t(sizeof(I)) +
                                       (vals_sorted ? int64_t(sizeof(T)) : 0));
  const int64_t most_threads = std::min<int64_t>({omp_get_max_threads(), groups, kMaxSpreadScratchBytes / run_bytes});
  const int threads = indptr[n_rows] > kParallelMinWork ? static_cast<int>(std::max<int64_t>(1, most_threads)) : 1;
  // Every thread's scratch allocated here: a bad_alloc inside the parallel region would end the process.
  const auto scratch = [&](auto* present, int64_t per_thread) {
    using X = std::remove_pointer_t<decltype(present)>;
    return std::unique_ptr<X[]>(present ? new X[static_cast<size_t>(threads * per_thread)] : nullptr);
  };
  const auto perm_runs = scratch(perm, largest), others_runs = scratch(others_sorted, largest);
  const auto vals_runs = scratch(vals_sorted, largest);
  std::unique_ptr<int64_t[]> next_positions(new int64_t[static_cast<size_t>(threads * rows_per_group)]);
#pragma omp parallel num_threads(threads)
  {
    const int64_t tid = omp_get_thread_num();
    int64_t* perm_run = perm ? perm_runs.get() + tid * largest : nullptr;
    I* others_run = others_runs.get() + tid * largest;
    T* vals_run = vals_sorted ? vals_runs.get() + tid * largest : nullptr;
    int64_t* next = next_positions.get() + tid * rows_per_group;
#pragma omp for schedule(dynamic, 1)
    for (int64_t group = 0; group < groups; ++group) {
      const int64_t first_row = group << shift, end_row = std::min(n_rows, first_row + rows_per_group);
      const int64_t begin = indptr[first_row], count = indptr[end_row] - begin;
      if (count == 0) continue;
      const size_t n = static_cast<size_t>(count);
      if (perm) std::memcpy(perm_run, perm + begin, sizeof(int64_t) * n);
      std::memcpy(others_run, others_sorted + begin, sizeof(I) * n);
      if (vals_sorted) std::memcpy(vals_run, vals_sorted + begin, sizeof(T) * n);
      for (int64_t row = first_row; row < end_row; ++row) next[row - first_row] = indptr[row];
      for (int64_t j = 0; j < count; ++j) {
        const int64_t position = next[row_in_group[begin + j]]++;
        if (perm) perm[position] = perm_run[j];
        others_sorted[position] = others_run[j];
        if (vals_sorted) vals_sorted[position] = vals_run[j];
      }
    }
  }
}

// One problem's keys already in order (np.nonzero's output, a CSR matrix's rows): one pass over
// blocks of keys, each checked branch-free for a descent (a shuffled input stops after its first
// block) and then scanned, while in L1, for the rows that start in it; the range from the two
// ends. Replaces counting every entry (1e6 sorted entries: the count took 1.2-1.5 ms of
// sparse_times_dense's 2.9 at r = 1). False when the keys are not sorted or not all in range;
// indptr is then partly written, and the caller's counting sort rewrites all of it.
template <class I>
bool sorted_keys_indptr(const I* keys, int64_t n_key, int64_t nnz, int64_t* indptr) {
  constexpr int64_t kBlock = 4096;
  if (nnz == 0 || !ops::index_in_range(keys[0], n_key) || !ops::index_in_range(keys[nnz - 1], n_key)) return false;
  bool sorted = true;
#pragma omp parallel for schedule(static) reduction(&& : sorted) if (nnz > kParallelMinWork)
  for (int64_t block = 0; block < (nnz - 1 + kBlock - 1) / kBlock; ++block) {
    if (!sorted) continue;  // this thread already saw a block out of order
    const int64_t begin = block * kBlock, end = std::min(nnz - 1, begin + kBlock);
    int descents = 0;
    for (int64_t k = begin; k < end; ++k) descents |= keys[k] > keys[k + 1];
    sorted = descents == 0;
    if (!sorted) continue;
    // Rows keys[k] + 1 .. keys[k + 1] start at k + 1. Where the block's rows average more than 16
    // keys, it is scanned 16 keys at a time, a stretch whose ends hold one key skipped whole (the
    // keys are sorted: it holds that key throughout). Binary searches for the rows' starts took
    // twice as long (rows of 100 entries, one thread: 0.99 against 0.53 ms for 1e6 keys; each
    // probe waits on the one before).
    const int64_t first_row = static_cast<int64_t>(keys[begin]) + 1, last_row = static_cast<int64_t>(keys[end]);
    const int64_t stretch = (last_row - first_row + 1) * 16 < end - begin ? 16 : 1;
    for (int64_t k = begin; k < end;) {
      const int64_t stop = std::min(end, k + stretch);
      if (stretch > 1 && keys[stop] == keys[k]) {
        k = stop;
        continue;
      }
      for (; k < stop; ++k) {
        for (int64_t row = static_cast<int64_t>(keys[k]) + 1; row <= static_cast<int64_t>(keys[k + 1]); ++row)
          indptr[row] = k + 1;
      }
    }
  }
  if (!sorted) return false;
  for (int64_t row = 0; row <= static_cast<int64_t>(keys[0]); ++row) indptr[row] = 0;
  for (int64_t row = static_cast<int64_t>(keys[nnz - 1]) + 1; row <= n_key; ++row) indptr[row] = nnz;
  return true;
}
}  // namespace

template <class T, class I>
CsrBuild coo_to_csr(const I* keys, const I* others, const T* vals, const int64_t* offsets, int64_t batch,
                    int64_t n_key, int64_t nnz, int64_t* indptr, int64_t* perm, I* others_sorted,
                    T* vals_sorted, int64_t* inverse) {
  const int64_t n_rows = batch * n_key;
  if (batch == 1 && sorted_keys_indptr(keys, n_key, nnz, indptr)) return {-1, true};
  int64_t threads = omp_get_max_threads();
  if (threads * (n_rows + 1) * int64_t(sizeof(int64_t)) > kMaxHistogramBytes) threads = 1;
  // counts[t][row]: entries of row in thread t's chunk. Chunk t precedes chunk t+1, so the
  // scatter below is a stable sort and the result does not depend on the thread count.
  std::vector<int64_t> counts(static_cast<size_t>(threads * (n_rows + 1)), 0);
  const int shift = row_group_shift(n_rows);
  const int64_t groups = ((n_rows - 1) >> shift) + 1;
  const int64_t entry_bytes =
      (perm ? int64_t(sizeof(int64_t)) : 0) + int64_t(sizeof(I)) + (vals ? int64_t(sizeof(T)) : 0);
  // Each grouped entry's row within its run (2 bytes an entry; its pages are touched only when
  // grouping), allocated before the parallel region, where a bad_alloc would end the process;
  // without the memory the sort scatters directly.
  std::unique_ptr<uint16_t[]> row_in_group(
      !inverse && n_rows >= kGroupedMinRows && nnz * entry_bytes >= kGroupedMinBytes && shift <= kMaxGroupShift
          ? new (std::nothrow) uint16_t[static_cast<size_t>(nnz)]
          : nullptr);
  const bool may_group = row_in_group != nullptr;
  // group_next[t][group]: where thread t's next entry of that run of rows goes in the first pass.
  std::vector<int64_t> group_next(may_group ? static_cast<size_t>(threads * groups) : 0, 0);
  bool grouped = false;
  int64_t largest_group = 0;
  // Per chunk: its first and last flattened key, and whether it is sorted within.
  std::vector<int64_t> first_key(static_cast<size_t>(threads), -1), last_key(static_cast<size_t>(threads), -1);
  std::vector<char> chunk_sorted(static_cast<size_t>(threads), 1);
  int64_t first_bad = nnz;  // shared: the scan and the scatter run only on valid keys
  bool sorted = true;
#pragma omp parallel num_threads(threads) if (nnz > kParallelMinWork)
  {
    const int64_t tid = omp_get_thread_num(), used = omp_get_num_threads();
    const int64_t begin = nnz * tid / used, end = nnz * (tid + 1) / used;
    int64_t* mine = counts.data() + tid * (n_rows + 1);
    int64_t my_bad = nnz, previous = -1;
    bool my_sorted = true;
    int64_t b = begin < end ? find_batch(offsets, batch, begin) : 0;
    for (int64_t k = begin; k < end; ++k) {
      while (k >= offsets[b + 1]) ++b;
      if (!ops::index_in_range(keys[k], n_key)) { my_bad = std::min(my_bad, k); continue; }
      const int64_t row = b * n_key + static_cast<int64_t>(keys[k]);
      my_sorted &= row >= previous;
      if (k == begin) first_key[tid] = row;
      previous = row;
      ++mine[row];
    }
    last_key[tid] = previous;
    chunk_sorted[tid] = my_sorted;
#pragma omp critical(lrh_coo_to_csr_bad)
    first_bad = std::min(first_bad, my_bad);
#pragma omp barrier
#pragma omp single
    if (first_bad == nnz) {
      for (int64_t t = 0; t < used; ++t) {
        sorted = sorted && chunk_sorted[t] && (t == 0 || first_key[t] < 0 || first_key[t] >= last_key[t - 1]);
      }
      // Exclusive scan in (row, thread) order turns counts into write positions.
      int64_t running = 0;
      for (int64_t row = 0; row < n_rows; ++row) {
        indptr[row] = running;
        for (int64_t t = 0; t < used; ++t) {
          int64_t& c = counts[t * (n_rows + 1) + row];
          const int64_t here = c;
          c = running;
          running += here;
          if (may_group) group_next[t * groups + (row >> shift)] += here;  // the thread's entries in the run
        }
      }
      indptr[n_rows] = running;
      if (may_group && !sorted) {
        for (int64_t group = 0; group < groups; ++group)
          largest_group =
              std::max(largest_group, indptr[std::min(n_rows, (group + 1) << shift)] - indptr[group << shift]);
        grouped = largest_group <= kMaxGroupEntries;
      }
      // Each run's entries in thread order from the run's first position: counts into positions.
      for (int64_t group = 0; grouped && group < groups; ++group) {
        int64_t position = indptr[group << shift];
        for (int64_t t = 0; t < used; ++t) {
          const int64_t here = group_next[t * groups + group];
          group_next[t * groups + group] = position;
          position += here;
        }
      }
    }
    if (first_bad == nnz && grouped) {
      // First pass: each entry to the next place of its run of rows.
      int64_t* next = group_next.data() + tid * groups;
      b = begin < end ? find_batch(offsets, batch, begin) : 0;
      for (int64_t k = begin; k < end; ++k) {
        while (k >= offsets[b + 1]) ++b;
        const int64_t row = b * n_key + static_cast<int64_t>(keys[k]);
        const int64_t position = next[row >> shift]++;
        row_in_group[position] = static_cast<uint16_t>(row & ((int64_t(1) << shift) - 1));
        if (perm) perm[position] = k;
        others_sorted[position] = others[k];
        if (vals) vals_sorted[position] = vals[k];
      }
    }
    // Entries already in row order need no permutation at all. Otherwise the scatter also
    // moves the other index (and the values) so no later pass gathers them at random.
    if (first_bad == nnz && !sorted && !grouped) {
      b = begin < end ? find_batch(offsets, batch, begin) : 0;
      for (int64_t k = begin; k < end; ++k) {
        while (k >= offsets[b + 1]) ++b;
        const int64_t position = mine[b * n_key + static_cast<int64_t>(keys[k])]++;
        if (perm) perm[position] = k;  // null: the caller keeps no permutation (ALS's memory)
        if (inverse) inverse[k] = position;
        others_sorted[position] = others[k];
        if (vals) vals_sorted[position] = vals[k];
      }
    }
  }
  if (grouped)
    spread_row_groups(indptr, n_rows, shift, largest_group, row_in_group.get(), perm, others_sorted,
                      vals ? vals_sorted : nullptr);
  return {first_bad == nnz ? -1 : first_bad, first_bad == nnz && sorted};
}

namespace {

// Far enough ahead to hide a cache miss on the permuted value and the B row it scales.
constexpr int64_t kPrefetchDistance = 16;
// B up to this size stays in the caches: no prefetch (it only costs issue slots then).
constexpr int64_t kPrefetchMinBytes = int64_t(1) << 20;

// Columns [c0, c0 + width) of one output row into acc (a register row of that width): the sum
// over the row's entries, in their order, of v * B[other], held in registers and stored once
// (summing into the output row in memory made every entry wait on the previous one's store).
// 16-bit storage: read as float and summed in float, each sum rounded once when stored.
template <class Row, class T, class I>
inline __attribute__((always_inline)) void row_pass(Row& acc, int64_t width, int64_t begin, int64_t end, int64_t nnz,
                                                    const int64_t* perm, const I* others, const T* vals,
                                                    const T* B_problem, int64_t r, int64_t c0, bool prefetch,
                                                    T* out_row) {
  using A = accumulate_t<T>;
  acc.zero();
  for (int64_t j = begin; j < end; ++j) {
    // Ahead within this row: the same columns (the next pass); past it, the next rows' first tile.
    if (prefetch && j + kPrefetchDistance < nnz) {
      const int64_t ahead = j + kPrefetchDistance;
      if (perm) __builtin_prefetch(vals + perm[ahead]);
      const T* line = B_problem + static_cast<int64_t>(others[ahead]) * r + (ahead < end ? c0 : 0);
      __builtin_prefetch(line);
      if (width * static_cast<int64_t>(sizeof(T)) > 64) __builtin_prefetch(line + width - 1);
    }
    const T v = vals[perm ? perm[j] : j];
    const T* b_row = B_problem + static_cast<int64_t>(others[j]) * r + c0;
    if constexpr (is_half_v<T>)
      acc.add_scaled_widened(load_as<A>(v), b_row);
    else
      acc.add_scaled(v, b_row);
  }
  if constexpr (is_half_v<T>) {
    A sums[Row::kWidth];
    acc.store(sums);
    for (int c = 0; c < Row::kWidth; ++c) out_row[c0 + c] = store_as<T>(sums[c]);
  } else {
    acc.store(out_row + c0);
  }
}

template <int W, class T, class I>
inline void row_tile(int64_t begin, int64_t end, int64_t nnz, const int64_t* perm, const I* others, const T* vals,
                     const T* B_problem, int64_t r, int64_t c0, bool prefetch, T* out_row) {
  lanes::RegisterRow<accumulate_t<T>, W> acc;
  row_pass(acc, W, begin, end, nnz, perm, others, vals, B_problem, r, c0, prefetch, out_row);
}

// Columns [c0, c0 + width) for a run-time width < 16: the compiled tile of that width.
template <class T, class I>
inline void remainder_tile(int64_t width, int64_t begin, int64_t end, int64_t nnz, const int64_t* perm, const I* others,
                           const T* vals, const T* B_problem, int64_t r, int64_t c0, bool prefetch, T* out_row) {
  switch (width) {
#define LRH_TILE(W) \
  case W: return row_tile<W>(begin, end, nnz, perm, others, vals, B_problem, r, c0, prefetch, out_row);
    LRH_TILE(1) LRH_TILE(2) LRH_TILE(3) LRH_TILE(4) LRH_TILE(5) LRH_TILE(6) LRH_TILE(7) LRH_TILE(8)
    LRH_TILE(9) LRH_TILE(10) LRH_TILE(11) LRH_TILE(12) LRH_TILE(13) LRH_TILE(14) LRH_TILE(15)
#undef LRH_TILE
    default: return;
  }
}

// A run-time width's rest under a block tile (four native vectors; kBlockTileBytes below): one
// pass over the row's entries in as many vectors as it needs, the last loaded by mask (float and
// double where the level loads by mask; whole 32- and 16-column tiles and a compiled remainder
// took two or three passes, and r = 20 floats cost more than r = 32). Else those tiles.
template <class T>
constexpr bool kMaskedRest = lanes::kMaskedLoads && !is_half_v<T>;

// Full tiles of accumulators in vector registers: 256 bytes with AVX-512 (four registers of 32)
// and AVX2 (eight of 16: with the broadcast number and a product, 10 of them), 128 bytes below.
// Wider tiles mean fewer passes over a row's entries, each gathering a longer piece of every B
// row. AVX2's tile was four vectors (128 bytes: float32 r = 256 in eight passes, now four): 1e6
// entries, 10,000 x r B, 2 threads, float32 r = 256 22.9-25.1 -> 17.8-21.2 ms (through a pattern
// 28.8-38.2 -> 22.3-28.0), r = 128 1.1-1.2x, float64 r = 128 21.8 -> 18.0 (the same numbers;
// BENCHMARKS.md session 34). (16-bit storage: as many numbers as float accumulators.)
#if defined(__AVX512F__) || defined(__AVX2__)
constexpr int64_t kTileBytes = 256;
#else
constexpr int64_t kTileBytes = 128;
#endif
// Column blocks (below) and a masked rest take tiles of four native vectors, with_masked_row's
// reach (AVX2: a block of 100,000 B rows eight vectors wide outgrew the cache, r = 128 float32
// 75.5 -> 90.9 ms); without masked loads, the full tile.
constexpr int64_t kBlockTileBytes = lanes::kMaskedLoads ? lanes::kTileNumbers<char> : kTileBytes;
static_assert(kTileBytes % kBlockTileBytes == 0, "whole block tiles in a tile");

// Products whose B outgrows the last-level cache run a block of columns at a time over every
// row, the block's columns of B first copied together (read in place, a block's pieces of B's
// rows lie a whole row apart and fell in a few of the cache's sets): at most kColumnBlockBytes
// (or one block tile), whole block tiles wide, gathered from cache instead of memory. Each
// coordinate still sums its entries in order: the same numbers. Measured on a 2-core Zen 4 VM
// (32 MiB L3 a CCD; sysconf reports the socket's 320 MiB, so the threshold is fixed), in separate
// processes: B of 16 MiB (4,096 x 1,024 float32, 1.7M entries) 125-140 -> 49-62 ms, 49 and 98 MiB
// (100,000 rows, r = 128, 256) 1.3-1.5x; B of 2-10 MiB, still in L3, 0.74-0.81x.
constexpr int64_t kColumnBlockBytes = int64_t(1) << 20;
constexpr int64_t kColumnBlockThresholdBytes = int64_t(16) << 20;

// Where B's rows sit for the gathers: B itself, or a copy on whole cache lines (held by
// `holder`). Rows that divide a line (or are two lines) but do not start where one does (numpy
// aligns to 16 bytes) each touch one line more than they fill: 2 for 1 at 32 and 64 bytes, 3 for
// 2 at 128. Copied once where the entries read every row of B several times over. 1e6 entries,
// 10,000 x r float32 B 16 bytes past a line, 2 threads: r = 8 1.14 -> 0.83 ms, r = 16 1.72 ->
// 1.12, r = 32 1.80 -> 1.48 (the same numbers: only B's address changes). From 256 bytes on the
// copy cost what it saved (r = 64 and 128 float32 stayed 1.12-1.14x the aligned B's time).
template <class T>
const T* lined_rows(const T* B, int64_t rows_of_B, int64_t r, int64_t nnz, std::unique_ptr<T[]>& holder) {
  const int64_t row_bytes = r * static_cast<int64_t>(sizeof(T));
  const auto address = reinterpret_cast<uintptr_t>(B);
  const bool straddles = (64 % row_bytes == 0 && address % row_bytes != 0) || (row_bytes == 128 && address % 64 != 0);
  if (!straddles || nnz < 4 * rows_of_B) return B;
  const int64_t size = rows_of_B * r;
  holder.reset(new T[static_cast<size_t>(size + 64 / sizeof(T))]);
  T* start = holder.get() + (64 - reinterpret_cast<uintptr_t>(holder.get()) % 64) % 64 / sizeof(T);
#pragma omp parallel for schedule(static) if (size > kParallelMinWork)
  for (int64_t i = 0; i < size; ++i) start[i] = B[i];
  return start;
}

// Each output row is built tile by tile in registers. R > 0 (ranks up to 16, and 32): one tile
// of width R. R = 0: full tiles of kTileBytes (of kBlockTileBytes in a column block), tiles of
// kBlockTileBytes, then the rest in one masked pass (kMaskedRest) or halving tiles down to 16
// columns and a compiled remainder tile. Every coordinate sums its row's entries in input order,
// as the GPU kernel does: the result does not depend on the thread count.
template <class T, class I, int R>
int64_t csr_times_dense_tiled(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                              const T* B, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out) {
  constexpr int kTile = kTileBytes / sizeof(accumulate_t<T>);
  constexpr int kBlockTile = kBlockTileBytes / sizeof(accumulate_t<T>);
  const int64_t n_rows = batch * n_key, nnz = indptr[n_rows];
  const int64_t B_bytes = batch * n_other * r * int64_t(sizeof(T));
  // Columns a block: all of them, or whole block tiles (at least one) whose rows of B (every
  // problem's) fit kColumnBlockBytes, copied into `packed` (left uninitialised: every
  // number is written before it is read).
  int64_t block = r;
  if (R == 0 && B_bytes >= kColumnBlockThresholdBytes) {
    const int64_t tiles = kColumnBlockBytes / (batch * n_other * kBlockTile * int64_t(sizeof(T)));
    block = std::min(r, std::max<int64_t>(1, tiles) * kBlockTile);
  }
  const bool blocked = block < r;
  const bool prefetch = !blocked && B_bytes > kPrefetchMinBytes;  // a block is in cache
  std::unique_ptr<T[]> lined;
  if (!blocked) B = lined_rows(B, batch * n_other, r, nnz, lined);
  const std::unique_ptr<T[]> packed(blocked ? new T[static_cast<size_t>(batch * n_other * block)] : nullptr);
  int64_t first_bad = nnz;
#pragma omp parallel reduction(min : first_bad) if (nnz * r > kParallelMinWork)
  for (int64_t first_col = 0; first_col < r; first_col += block) {
    const int64_t width = std::min(r, first_col + block) - first_col;
    if (blocked) {
#pragma omp for schedule(static)
      for (int64_t q = 0; q < batch * n_other; ++q)
        std::copy_n(B + q * r + first_col, width, packed.get() + q * width);
    }
    // The block's B rows (stride apart) and each output row's piece, from column 0 of the block.
    const int64_t stride = blocked ? width : r;
#pragma omp for schedule(dynamic, 64)
    for (int64_t row = 0; row < n_rows; ++row) {
      const int64_t begin = indptr[row], end = indptr[row + 1];
      const T* B_rows = blocked ? packed.get() + (row / n_key) * n_other * width
                                : B + (row / n_key) * n_other * r;
      T* out_row = out + row * r + first_col;
      // Indices were checked where the pattern was built; a stray one still may not read outside B.
      if (!all_in_range(others, begin, end, n_other)) {
        for (int64_t j = begin; j < end; ++j)
          if (!ops::index_in_range(others[j], n_other)) first_bad = std::min(first_bad, perm ? perm[j] : j);
        std::fill_n(out_row, width, T{});  // zero; the caller raises; never leave the row unwritten
        continue;
      }
      if constexpr (R > 0) {
        row_tile<R>(begin, end, nnz, perm, others, vals, B_rows, stride, 0, prefetch, out_row);
      } else {
        int64_t c0 = 0;
        if (!blocked)
          for (; c0 + kTile <= width; c0 += kTile)
            row_tile<kTile>(begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
        for (; c0 + kBlockTile <= width; c0 += kBlockTile)
          row_tile<kBlockTile>(begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
        if constexpr (kMaskedRest<T>) {
          if (c0 < width)
            lanes::with_masked_row<T>(width - c0, [&](auto& acc) {
              row_pass(acc, width - c0, begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
            });
        } else {
          if constexpr (kBlockTile > 32) {
            if (c0 + 32 <= width) {
              row_tile<32>(begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
              c0 += 32;
            }
          }
          if constexpr (kBlockTile > 16) {
            if (c0 + 16 <= width) {
              row_tile<16>(begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
              c0 += 16;
            }
          }
          if (c0 < width)
            remainder_tile(width - c0, begin, end, nnz, perm, others, vals, B_rows, stride, c0, prefetch, out_row);
        }
      }
    }
  }
  return first_bad == nnz ? -1 : first_bad;
}

}  // namespace

template <class T, class I>
int64_t csr_times_dense(const int64_t* indptr, const int64_t* perm, const I* others, const T* vals,
                        const T* B, int64_t batch, int64_t n_key, int64_t n_other, int64_t r, T* out) {
  int64_t first_bad = -1;
  dispatch_narrow_rank(r, [&](auto rank) {
    first_bad = csr_times_dense_tiled<T, I, decltype(rank)::value>(indptr, perm, others, vals, B, batch, n_key,
                                                                   n_other, r, out);
  });
  return first_bad;
}

namespace {

// Each entry's out_row += v * b_row over r columns, the row tile's products and sums
// (-ffp-contract=off: a multiply then an add, as there); R the compile-time width (0: r).
template <int R, class T, class I>
void scatter_entries(const I* keys, const I* others, const T* vals, const T* B, int64_t n_key, int64_t n_other,
                     int64_t r, int64_t nnz, T* out, int64_t* bad) {
  const int64_t width = R > 0 ? R : r;
  for (int64_t k = 0; k < nnz; ++k) {
    const bool key_ok = ops::index_in_range(keys[k], n_key), other_ok = ops::index_in_range(others[k], n_other);
    if (!(key_ok && other_ok)) {
      if (!key_ok) bad[0] = std::min(bad[0], k);
      if (!other_ok) bad[1] = std::min(bad[1], k);
      continue;
    }
    T* out_row = out + static_cast<int64_t>(keys[k]) * width;
    const T* b_row = B + static_cast<int64_t>(others[k]) * width;
    const T v = vals[k];
    LRH_SIMD
    for (int64_t c = 0; c < width; ++c) out_row[c] += v * b_row[c];
  }
}

}  // namespace

// Where the in-place product beats the sort (float32, 2 threads, 1e6 shuffled entries of
// 10,000 x 10,000: r = 1 4.7 -> 1.6 ms, r = 8 4.3 -> 2.4, r = 10-16 5.1-5.7 -> 3.6-4.3; 4e6 of
// 100,000 x 100,000: r = 8 40 -> 9.5; 4e6 of 50,000 x 50,000: r = 12 28-32 -> 18, r = 16 24-28
// -> 22, float64 r = 8 36-43 -> 16-23): rows of up to 64 bytes into a result that stays in
// cache, on few threads (the sort and the CSR product use them all). Results of 6 MiB or sorted
// keys: the sort is ahead.
constexpr int64_t kInPlaceMaxRowBytes = 64;
constexpr int64_t kInPlaceMaxResultBytes = int64_t(4) << 20;
constexpr int kInPlaceMaxThreads = 4;

bool in_place_product_pays(int64_t n_key, int64_t r, int64_t item_bytes) {
  const int64_t row_bytes = r * item_bytes;
  return row_bytes <= kInPlaceMaxRowBytes && n_key <= kInPlaceMaxResultBytes / std::max<int64_t>(row_bytes, 1) &&
         omp_get_max_threads() <= kInPlaceMaxThreads;
}

template <class T, class I>
bool coo_times_dense_in_place(const I* keys, const I* others, const T* vals, const T* B, int64_t n_key,
                              int64_t n_other, int64_t r, int64_t nnz, T* out, int64_t* bad) {
  if (!in_place_product_pays(n_key, r, static_cast<int64_t>(sizeof(T)))) return false;
  constexpr int64_t kOrderProbe = 4096;  // a shuffled input shows a descent long before this
  int descents = 0;
  for (int64_t k = 0; k + 1 < std::min(nnz, kOrderProbe); ++k) descents |= keys[k] > keys[k + 1];
  if (descents == 0) return false;
  std::fill_n(out, n_key * r, T{});
  bad[0] = bad[1] = nnz;
  dispatch_narrow_rank(r, [&](auto rank) {
    scatter_entries<decltype(rank)::value>(keys, others, vals, B, n_key, n_other, r, nnz, out, bad);
  });
  return true;
}

template <class T>
int64_t count_nonfinite(const T* x, int64_t size) {
  int64_t bad = 0;
#pragma omp parallel for simd reduction(+ : bad) schedule(static) if (size > kParallelMinWork)
  for (int64_t i = 0; i < size; ++i) bad += ops::is_finite(x[i]) ? 0 : 1;
  return bad;
}

#define LRH_INSTANTIATE(T, I)                                                                  \
  template CsrBuild coo_to_csr<T, I>(const I*, const I*, const T*, const int64_t*, int64_t, int64_t, \
                                     int64_t, int64_t*, int64_t*, I*, T*, int64_t*);            \
  template int64_t csr_times_dense<T, I>(const int64_t*, const int64_t*, const I*, const T*,   \
                                         const T*, int64_t, int64_t, int64_t, int64_t, T*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
LRH_FOR_HALF_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
#define LRH_INSTANTIATE(T, I)                                                                             \
  template bool coo_times_dense_in_place<T, I>(const I*, const I*, const T*, const T*, int64_t, int64_t, \
                                               int64_t, int64_t, T*, int64_t*);
LRH_FOR_FLOAT_INDEX(LRH_INSTANTIATE)
#undef LRH_INSTANTIATE
template int64_t count_nonfinite<float>(const float*, int64_t);
template int64_t count_nonfinite<double>(const double*, int64_t);
template int64_t count_nonfinite<float16>(const float16*, int64_t);
template int64_t count_nonfinite<bfloat16>(const bfloat16*, int64_t);

}  // namespace lowrank_hpc::cpu
