// The offsets of a completion model (lowrank_hpc.recover.offsets): x_ij ~ mu + a_i + b_j + ....
#pragma once
#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc::ops {

// mu + a_i + b_j at one entry, in numpy's order for `mu + a[rows] + b[cols]` with mu a Python
// float and a, b arrays of T: mu rounded to T first (numpy's weak scalar), then left to right in T.
template <class T>
struct OffsetAt {
  T mu;
  LRH_HD T operator()(T a_i, T b_j) const { return (mu + a_i) + b_j; }
};

}  // namespace lowrank_hpc::ops
