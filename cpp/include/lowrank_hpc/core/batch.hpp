// Batched coordinate data: problem b owns entries [offsets[b], offsets[b + 1]).
#pragma once
#include <cstdint>

#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc {

// Index of the problem that owns entry k: the last b with offsets[b] <= k (offsets sorted).
LRH_HD int64_t find_batch(const int64_t* offsets, int64_t batch, int64_t k) {
  int64_t lo = 0, hi = batch;  // invariant: offsets[lo] <= k < offsets[hi]
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (offsets[mid] <= k) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace lowrank_hpc
