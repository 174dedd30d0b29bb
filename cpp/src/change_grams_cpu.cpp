// The float64 Gram blocks of relative_change's expansion (solvers::relative_change_from_grams)
// over a block of factor rows, in register tiles: numpy's float64 GEMM on one BLAS thread (the
// ALS loop runs BLAS single-threaded) took 160 ms of a 1.8 s rank-64 iteration on
// MovieLens-20M's shape.
//
// The parts [P_0 | P_1 | ...] (each rows x k: the rows before, after, or their difference in
// float64) are packed side by side, k padded to whole vectors, and the upper triangle of
// W^T W is formed as ALS's row systems are (RegisterTiles<double>::upper_tiles). Threads split
// the Gram's row blocks, not the factor rows: each entry sums the rows in order whatever the
// thread count, so the result is the same bits on 1 or 16 threads.
#include <omp.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu_backend.hpp"
#include "lowrank_hpc/ops/register_tiles.hpp"

namespace lowrank_hpc::cpu {

namespace {

using Tiles = ops::RegisterTiles<double>;

enum class Part { before, after, difference };

// Block (row_part, col_part) of W^T W added into out (k x k), transposed where asked.
struct GramBlock {
  int row_part, col_part;
  double* out;
  bool transposed;
};

template <class T>
void add_stacked_gram(const T* before, const T* after, int64_t rows, int64_t k, std::initializer_list<Part> parts,
                      int row_parts, std::initializer_list<GramBlock> blocks) {
  if (rows == 0 || k == 0) return;
  const int n_parts = static_cast<int>(parts.size());
  const int64_t kp = (k + Tiles::kLanes - 1) / Tiles::kLanes * Tiles::kLanes;
  const int64_t width = n_parts * kp;
  // A row 256 bytes apart from the next put a column's numbers in a few of L1's sets.
  const int64_t ld = width * 8 % 256 == 0 ? width + Tiles::kLanes : width;
  const int64_t p_end = row_parts * kp;
  // Rows per packed chunk: about 64 KiB, as ALS's chunks (RowSystemWorkspace).
  const int64_t chunk = std::clamp<int64_t>((64 * 1024) / (ld * 8), 16, 512);
  // Uninitialised: the first chunk's tiles write every entry the sums read (at r = 1,024 a
  // zeroed G was 33 MB of stores a call).
  const std::unique_ptr<double[]> gram(new double[static_cast<size_t>(p_end * ld)]);
  double* const G = gram.get();
  const int64_t row_blocks = p_end / Tiles::kRows;
  const bool parallel = rows * width * p_end / 2 > kParallelMinWork && row_blocks > 1;
#pragma omp parallel if (parallel)
  {
    const int threads = omp_get_num_threads(), thread = omp_get_thread_num();
    // Row blocks dealt in a snake (0 1 1 0 0 1 ...): the triangle's long blocks come first.
    std::vector<int64_t> mine;
    for (int64_t block = 0; block < row_blocks; ++block) {
      const int64_t lap = block / threads, seat = block % threads;
      if ((lap % 2 == 0 ? seat : threads - 1 - seat) == thread) mine.push_back(block * Tiles::kRows);
    }
    std::vector<double> W(static_cast<size_t>(chunk * ld), 0.0);  // the padding stays zero
    for (int64_t t0 = 0; t0 < rows && !mine.empty(); t0 += chunk) {
      const int64_t count = std::min(chunk, rows - t0);
      for (int64_t t = 0; t < count; ++t) {
        const T* a0 = before + (t0 + t) * k;
        const T* a1 = after + (t0 + t) * k;
        double* w = W.data() + t * ld;
        int part_index = 0;
        for (Part part : parts) {
          double* out = w + part_index++ * kp;
          // One loop per part (each a plain conversion the compiler vectorises).
          if (part == Part::before)
            for (int64_t c = 0; c < k; ++c) out[c] = static_cast<double>(a0[c]);
          else if (part == Part::after)
            for (int64_t c = 0; c < k; ++c) out[c] = static_cast<double>(a1[c]);
          else
            for (int64_t c = 0; c < k; ++c) out[c] = static_cast<double>(a1[c]) - static_cast<double>(a0[c]);
        }
      }
      for (int64_t p0 : mine)
        Tiles::upper_tiles<false>(W.data(), ld, W.data(), ld, count, t0 == 0 ? nullptr : G, G, ld, width, p0,
                                  p0 + Tiles::kRows);
    }
  }
  // The tiles hold G[p][q] from q = p's vector on: a diagonal block's lower half is its mirror.
  for (const GramBlock& block : blocks) {
    const int64_t p_base = block.row_part * kp, q_base = block.col_part * kp;
    for (int64_t a = 0; a < k; ++a) {
      for (int64_t c = 0; c < k; ++c) {
        const int64_t p = p_base + a, q = q_base + c;
        const double value = p <= q ? G[p * ld + q] : G[q * ld + p];
        block.out[block.transposed ? c * k + a : a * k + c] += value;
      }
    }
  }
}

}  // namespace

// body(before, after, out) for each of batch problems' rows x k factor rows and its `blocks`
// k x k outputs.
template <class T, class Body>
void each_problem(const T* before, const T* after, int64_t batch, int64_t rows, int64_t k, int64_t blocks,
                  double* out, Body&& body) {
  for (int64_t b = 0; b < batch; ++b) body(before + b * rows * k, after + b * rows * k, out + b * blocks * k * k);
}

template <class T>
void change_grams_left(const T* before, const T* after, int64_t batch, int64_t rows, int64_t k, bool with_before_gram,
                       double* out) {
  const int64_t kk = k * k;
  each_problem(before, after, batch, rows, k, 3, out, [&](const T* a0, const T* a1, double* o) {
    if (with_before_gram)
      add_stacked_gram(a0, a1, rows, k, {Part::difference, Part::before}, 2,
                       {{0, 0, o, false}, {0, 1, o + kk, false}, {1, 1, o + 2 * kk, false}});
    else
      add_stacked_gram(a0, a1, rows, k, {Part::difference, Part::before}, 1, {{0, 0, o, false}, {0, 1, o + kk, false}});
  });
}

template <class T>
void change_grams_right(const T* before, const T* after, int64_t batch, int64_t rows, int64_t k, bool with_after_gram,
                        bool with_before_gram, double* out) {
  const int64_t kk = k * k;
  each_problem(before, after, batch, rows, k, 4, out, [&](const T* a0, const T* a1, double* o) {
    if (with_after_gram)
      add_stacked_gram(a0, a1, rows, k, {Part::after, Part::difference}, 2,
                       {{0, 0, o, false}, {0, 1, o + kk, false}, {1, 1, o + 2 * kk, false}});
    else  // dV^T [dV | V1]: its first block is dV^T dV, its second (V1^T dV)^T
      add_stacked_gram(a0, a1, rows, k, {Part::difference, Part::after}, 1,
                       {{0, 0, o + 2 * kk, false}, {0, 1, o + kk, true}});
    if (with_before_gram) add_stacked_gram(a0, a1, rows, k, {Part::before}, 1, {{0, 0, o + 3 * kk, false}});
  });
}

#define LRH_INSTANTIATE(T)                                                                                        \
  template void change_grams_left<T>(const T*, const T*, int64_t, int64_t, int64_t, bool, double*);              \
  template void change_grams_right<T>(const T*, const T*, int64_t, int64_t, int64_t, bool, bool, double*);
LRH_INSTANTIATE(float)
LRH_INSTANTIATE(double)
#undef LRH_INSTANTIATE

}  // namespace lowrank_hpc::cpu
