// SpMM on coordinate data: out[b, key[k]] += vals[k] * B[b, other[k]], the adjoint of the
// sampled product with respect to U (key = rows) or V (key = cols: the transposed product).
#pragma once
#include <cstdint>

#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/core/simd.hpp"
#include "lowrank_hpc/ops/sampled_product.hpp"

namespace lowrank_hpc::ops {

// Problems are the diagonal blocks of one block-diagonal matrix: problem b's key row i is
// flattened row b * n_key + i of the output, and its B row j is row b * n_other + j.
// Sums run in A = accumulate_t<T> (float for 16-bit storage): a driver adds a row's terms in A
// and stores each sum in T once (the host's register tiles: cpp/src/sparse_times_dense_cpu.cpp).
template <class T, int R = 0>
struct SparseTimesDense {
  using A = accumulate_t<T>;
  const T* B;  // (batch, n_other, r)
  int64_t n_key, n_other, r;

  LRH_HD const T* b_row(int64_t other, int64_t b) const { return B + (b * n_other + other) * r; }

  // One coordinate of an entry's update out[b, key] += v * B[b, other] (device: one thread per
  // coordinate).
  LRH_HD A term(T v, int64_t other, int64_t b, int64_t c) const {
    return load_as<A>(v) * load_as<A>(b_row(other, b)[c]);
  }
};

}  // namespace lowrank_hpc::ops
