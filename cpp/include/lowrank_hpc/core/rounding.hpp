// Explicitly rounded arithmetic: each operation rounded on its own on both sides. nvcc contracts
// a * b + c into one fused multiply-add by default; its _rn intrinsics never are, and the host is
// built with -ffp-contract=off, so these give the host's bits on the device.
#pragma once
#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc {

LRH_HD double add_rn(double a, double b) {
#if LRH_ON_DEVICE
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

LRH_HD double sub_rn(double a, double b) {
#if LRH_ON_DEVICE
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

LRH_HD double mul_rn(double a, double b) {
#if LRH_ON_DEVICE
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

LRH_HD float mul_rn(float a, float b) {
#if LRH_ON_DEVICE
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

}  // namespace lowrank_hpc
