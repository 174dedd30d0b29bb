// What a value type holds, and its widening to double: one number (host or device), or a GCC
// vector of numbers, one problem per lane (core/lanes.hpp specialises both for vectors), so that
// math written once runs on either.
#pragma once
#include <type_traits>
#include <utility>

#include "lowrank_hpc/core/macros.hpp"

namespace lowrank_hpc {

// The numbers a T holds: T itself, or the lane type of a GCC vector.
template <class T, class = void>
struct element_of {
  using type = T;
};
template <class T>
struct element_of<T, std::void_t<decltype(std::declval<T>()[0])>> {
  using type = std::decay_t<decltype(std::declval<T>()[0])>;
};

// x in double: a number, or (core/lanes.hpp) every lane of a vector.
template <class X, class = void>
struct Widening {
  LRH_HD static double of(X x) { return static_cast<double>(x); }
};

template <class X>
LRH_HD auto to_double(X x) {
  return Widening<X>::of(x);
}

}  // namespace lowrank_hpc
