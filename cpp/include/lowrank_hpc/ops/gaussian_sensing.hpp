// Gaussian measurement matrices regenerated from (seed, stream, index): entry e = j*cols + k of
// matrix i is scale * standard_normal(seed, first_stream + i, index_offset + e), so the dense fill,
// the matrix-free forward and the matrix-free adjoint see bit-identical entries on host and device.
#pragma once
#include <cstdint>

#include "lowrank_hpc/core/error.hpp"
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/random/philox.hpp"

namespace lowrank_hpc::ops {

// A stack of `count` (rows x cols) Gaussian matrices; symmetric ones (rows == cols) are
// (G + G^T) / 2. All arithmetic is in double through the explicitly rounded ops of philox.hpp,
// which nvcc never contracts, so host and device agree bit for bit.
struct GaussianEnsemble {
  uint64_t seed;
  uint64_t first_stream;
  int64_t rows, cols;
  uint64_t index_offset;
  double scale;
  bool symmetric;

  LRH_HD int64_t size() const { return rows * cols; }

  // scale * G_i[e], the unsymmetrized draw.
  LRH_HD double draw(int64_t i, int64_t e) const {
    const double g = random::standard_normal(seed, first_stream + static_cast<uint64_t>(i),
                                             index_offset + static_cast<uint64_t>(e));
    return random::detail::mul_rn(scale, g);
  }

  LRH_HD int64_t transposed(int64_t e) const { return (e % cols) * cols + e / cols; }

  // Entry e of matrix i in double: scale * G_i[e], or (scale * G_i[e] + scale * G_i[e^T]) / 2.
  LRH_HD double entry(int64_t i, int64_t e) const {
    const double a = draw(i, e);
    if (!symmetric) return a;
    return random::detail::mul_rn(0.5, random::detail::add_rn(a, draw(i, transposed(e))));
  }

  // The operand that multiplies draw(i, e) in <A_i, X>: X[e], or (X[e] + X[e^T]) / 2 for a symmetric
  // ensemble, since <(G + G^T)/2, X> = <G, (X + X^T)/2> costs one draw per entry instead of two.
  template <class T>
  LRH_HD double forward_operand(const T* x, int64_t e) const {
    if (!symmetric) return static_cast<double>(x[e]);
    return 0.5 * (static_cast<double>(x[e]) + static_cast<double>(x[transposed(e)]));
  }
};

// The bindings' one way to build an ensemble from Python arguments, checked on the host.
inline GaussianEnsemble checked_gaussian_ensemble(uint64_t seed, uint64_t first_stream, int64_t rows, int64_t cols,
                                                  uint64_t index_offset, double scale, bool symmetric) {
  LRH_EXPECTS(rows >= 1 && cols >= 1, "shape: rows and cols must be positive, got ", rows, " x ", cols);
  LRH_EXPECTS(!symmetric || rows == cols, "symmetric: needs a square shape, got ", rows, " x ", cols);
  return {seed, first_stream, rows, cols, index_offset, scale, symmetric};
}

}  // namespace lowrank_hpc::ops
