// Numbers the solvers and the Python layer must agree on, defined once here and exported to
// Python by both modules (CONSTANTS).
#pragma once
#include <cstdint>

namespace lowrank_hpc {

// Step control of the gradient solvers: a step whose loss grows by more than this relative
// amount (or is not finite) is halved and retried, at most kMaxStepHalvings times an iteration.
inline constexpr int kMaxStepHalvings = 50;
inline constexpr double kStepGrowthAllowed = 1e-9;

// Shared memory one block of the CUDA ALS half-step may use: (r^2 + r) values of the row's
// normal equations (the default per-block limit, so no opt-in attribute is needed).
inline constexpr int64_t kAlsSharedBytes = 48 * 1024;

}  // namespace lowrank_hpc
