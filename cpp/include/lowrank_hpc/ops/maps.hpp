// Element-wise maps and the per-entry terms of row/column reductions: the only code a new
// element-wise kernel needs. Each functor is built from its scalar parameters (doubles, as the
// bindings pass them) and maps one entry; the shared launchers (cpu/src/map_reduce.hpp,
// cuda/include/lowrank_hpc_cuda/map_reduce.cuh) run it over arrays on either backend, and
// LRH_FOR_EACH_MAP below makes it callable from Python by name.
#pragma once
#include "lowrank_hpc/core/macros.hpp"
#include "lowrank_hpc/ops/elastic_binary.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"

namespace lowrank_hpc::ops {

// f(x) = one of the kernelized product's kernel functions (kernel_functions.hpp).
template <KernelFunction F>
struct KernelMap {
  static constexpr int kParams = 0;
  explicit KernelMap(const double*) {}
  template <class T>
  LRH_HD T operator()(T x) const { return apply_kernel(F, x); }
};

// The proximal operator of t * |x| (soft thresholding): sign(x) * max(|x| - t, 0).
struct SoftThreshold {
  static constexpr int kParams = 1;
  double threshold;
  explicit SoftThreshold(const double* params) : threshold(params[0]) {}
  template <class T>
  LRH_HD T operator()(T x) const {
    const T t = static_cast<T>(threshold);
    return x > t ? x - t : (x < -t ? x + t : T(0));
  }
};

// x as it is: with a 16-bit result, a rounding pass that keeps inf and NaN (the kernel
// functions turn an inf argument into NaN, to be reported).
struct Copy {
  static constexpr int kParams = 0;
  explicit Copy(const double*) {}
  template <class T>
  LRH_HD T operator()(T x) const { return x; }
};

// x^2: the term of squared row/column norms (and of Adafactor's factored second moments).
struct Square {
  static constexpr int kParams = 0;
  explicit Square(const double*) {}
  template <class T>
  LRH_HD T operator()(T x) const { return x * x; }
};

}  // namespace lowrank_hpc::ops

// Every map by its Python name: M(name, functor type). Both backends instantiate each one for
// float and double, and the bindings look them up here.
#define LRH_FOR_EACH_MAP(M)                                                          \
  M(kernel_identity, ::lowrank_hpc::ops::KernelMap<::lowrank_hpc::ops::KernelFunction::identity>) \
  M(kernel_relu, ::lowrank_hpc::ops::KernelMap<::lowrank_hpc::ops::KernelFunction::relu>)         \
  M(kernel_exponential, ::lowrank_hpc::ops::KernelMap<::lowrank_hpc::ops::KernelFunction::exponential>) \
  M(kernel_tanh, ::lowrank_hpc::ops::KernelMap<::lowrank_hpc::ops::KernelFunction::tanh>)         \
  M(kernel_piecewise_linear,                                                         \
    ::lowrank_hpc::ops::KernelMap<::lowrank_hpc::ops::KernelFunction::piecewise_linear>)          \
  M(copy, ::lowrank_hpc::ops::Copy)                                                  \
  M(soft_threshold, ::lowrank_hpc::ops::SoftThreshold)                               \
  M(square, ::lowrank_hpc::ops::Square)                                              \
  M(elastic_binary_prox, ::lowrank_hpc::ops::ElasticBinaryProx)

// The explicit instances of one map's launchers (map, reduce_rows, reduce_cols) for float and
// double, and of the map from float into the 16-bit formats (f and the rounding in one pass),
// written once for both backends: expanded inside each backend's launcher namespace.
#define LRH_INSTANTIATE_MAP_LAUNCHERS(name, F)                                              \
  template int map<float, F>(const float*, float*, int64_t, F, int64_t*, void*);           \
  template int map<double, F>(const double*, double*, int64_t, F, int64_t*, void*);        \
  template int map<float, F, ::lowrank_hpc::float16>(const float*, ::lowrank_hpc::float16*, int64_t, F, \
                                                     int64_t*, void*);                     \
  template int map<float, F, ::lowrank_hpc::bfloat16>(const float*, ::lowrank_hpc::bfloat16*, int64_t, F, \
                                                      int64_t*, void*);                    \
  template int reduce_rows<float, F>(const float*, int64_t, int64_t, F, float*, void*);    \
  template int reduce_rows<double, F>(const double*, int64_t, int64_t, F, double*, void*); \
  template int reduce_cols<float, F>(const float*, int64_t, int64_t, F, float*, void*);    \
  template int reduce_cols<double, F>(const double*, int64_t, int64_t, F, double*, void*);
