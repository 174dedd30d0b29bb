// Host-only: GCC vectors that hold the same quantity of several independent problems, one per
// lane, so that the per-entry functors written for one number run on a whole group at once.
// Plain C++ operators on them compile to AVX-512, AVX2 or SSE2 (whichever ISA clone runs), and
// every lane rounds exactly as the scalar code does.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "lowrank_hpc/core/numbers.hpp"

namespace lowrank_hpc::lanes {

// 64 bytes: one AVX-512 register (two AVX2, four SSE2).
inline constexpr int kBytes = 64;

template <class T>
struct Lanes {
  static constexpr int width = kBytes / static_cast<int>(sizeof(T));
  typedef T type __attribute__((vector_size(kBytes)));
  // The same lanes widened to double (equal to type when T is double).
  typedef double wide __attribute__((vector_size(width * sizeof(double))));
};

template <class T>
using vec = typename Lanes<T>::type;

template <class T>
using wide = typename Lanes<T>::wide;

// Lane vectors stored in memory aligned only to T (numpy's arrays): element k is the W numbers
// at k * W, read without assuming the vector's 64-byte alignment.
template <class T>
struct LaneArray {
  const T* data;
  inline __attribute__((always_inline)) vec<T> operator[](int64_t k) const {
    vec<T> x;
    __builtin_memcpy(&x, data + k * Lanes<T>::width, sizeof x);
    return x;
  }
  LaneArray operator+(int64_t k) const { return {data + k * Lanes<T>::width}; }
};

}  // namespace lowrank_hpc::lanes

namespace lowrank_hpc {

// to_double of a vector: every lane widened to double.
template <class X>
struct Widening<X, std::void_t<decltype(std::declval<X>()[0])>> {
  static inline __attribute__((always_inline)) auto of(X x) {
    return __builtin_convertvector(x, lanes::wide<typename element_of<X>::type>);
  }
};

}  // namespace lowrank_hpc
