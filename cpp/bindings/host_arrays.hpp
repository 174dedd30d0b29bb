// Host arrays as the bindings take them: C-contiguous, exact dtype, never converted or copied.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "lowrank_hpc/core/error.hpp"

namespace lowrank_hpc::bindings {

namespace py = pybind11;

template <class T>
using HostArray = py::array_t<T, py::array::c_style>;

// The Python layer validated shapes already; this second check keeps a direct caller of the
// private module from reading out of bounds.
template <class T>
void expect_shape(const HostArray<T>& array, const char* name, std::initializer_list<int64_t> shape) {
  LRH_EXPECTS(array.ndim() == static_cast<py::ssize_t>(shape.size()), name, ": expected ",
              shape.size(), " dimensions, got ", array.ndim());
  int axis = 0;
  for (int64_t extent : shape) {
    LRH_EXPECTS(array.shape(axis) == extent, name, ": axis ", axis, " has length ", array.shape(axis),
                ", expected ", extent);
    ++axis;
  }
}

template <class T>
void expect_writable(HostArray<T>& array, const char* name) {
  LRH_EXPECTS(array.writeable(), name, ": output array is read-only");
}

}  // namespace lowrank_hpc::bindings
