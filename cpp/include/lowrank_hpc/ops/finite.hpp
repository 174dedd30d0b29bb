// NaN/inf detection shared by both backends: data is reported, never propagated silently.
#pragma once
#include "lowrank_hpc/core/half.hpp"
#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc::ops {

// x - x is 0 for finite x and NaN for NaN or inf, and needs no math library on either side.
// A bool for a number; for a GCC vector of numbers (core/lanes.hpp), a mask of its lanes.
template <class T>
LRH_HD auto is_finite(T x) {
  const T diff = x - x;
  return diff == diff;
}
// The 16-bit formats: finite unless every exponent bit is set (inf or NaN).
LRH_HD bool is_finite(float16 x) { return (x.bits & 0x7c00u) != 0x7c00u; }
LRH_HD bool is_finite(bfloat16 x) { return (x.bits & 0x7f80u) != 0x7f80u; }

}  // namespace lowrank_hpc::ops
