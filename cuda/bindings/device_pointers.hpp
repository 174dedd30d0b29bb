// Device arrays reach the _cuda module as raw addresses read from __cuda_array_interface__ by
// the Python layer, which also checked dtype, shape, strides and device. Here: dispatch on
// dtype and turn CUDA failures into lowrank_hpc.CudaError.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

#include <pybind11/pybind11.h>

#include "lowrank_hpc/core/error.hpp"
#include "lowrank_hpc_cuda/launchers.hpp"

namespace lowrank_hpc::bindings {

namespace py = pybind11;

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline void check_cuda(int code, const char* what) {
  if (code != 0) throw CudaError(std::string(what) + " failed: " + cuda::error_string(code));
}

template <class T>
T* as_ptr(std::uintptr_t address) { return reinterpret_cast<T*>(address); }

// Calls body(T{}, I{}) for the float and index types named by the Python layer.
template <class Body>
auto dispatch_float_index(const std::string& dtype, const std::string& index_dtype, Body&& body) {
  LRH_EXPECTS(dtype == "float32" || dtype == "float64", "dtype must be float32 or float64, got ", dtype);
  LRH_EXPECTS(index_dtype == "int32" || index_dtype == "int64", "index dtype must be int32 or int64, got ", index_dtype);
  if (dtype == "float32") {
    if (index_dtype == "int32") return body(float{}, int32_t{});
    return body(float{}, int64_t{});
  }
  if (index_dtype == "int32") return body(double{}, int32_t{});
  return body(double{}, int64_t{});
}

template <class Body>
auto dispatch_float(const std::string& dtype, Body&& body) {
  LRH_EXPECTS(dtype == "float32" || dtype == "float64", "dtype must be float32 or float64, got ", dtype);
  if (dtype == "float32") return body(float{});
  return body(double{});
}

}  // namespace lowrank_hpc::bindings
