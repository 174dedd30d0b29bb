// One array view at the binding boundary of both backends: a numpy array (host) or any object
// with __cuda_array_interface__ (CuPy, and what the Python layer made of DLPack arrays) arrives
// as an ArrayView carrying pointer, dtype, shape, strides and device. _cpu and _cuda therefore
// take the same arguments, and every binding checks them the same way, in one place.
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "lowrank_hpc/core/error.hpp"
#include "lowrank_hpc/core/half.hpp"

namespace lowrank_hpc::bindings {

namespace py = pybind11;

enum class Device : uint8_t { absent, host, cuda };
enum class DType : uint8_t { other, float32, float64, int32, int64, uint8, uint16, float16, bfloat16 };

inline const char* device_name(Device device) {
  return device == Device::host ? "host (numpy)" : device == Device::cuda ? "CUDA device" : "absent (None)";
}

inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::int32: return "int32";
    case DType::int64: return "int64";
    case DType::uint8: return "uint8";
    case DType::uint16: return "uint16";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
    default: return "an unsupported dtype";
  }
}

// The dtype of a numpy typestr such as "<f4" (the form both interfaces use).
inline DType dtype_of_typestr(const std::string& typestr) {
  if (typestr.size() < 3 || typestr[0] == '>') return DType::other;  // big-endian data is not ours
  const std::string code = typestr.substr(1);
  if (code == "f4") return DType::float32;
  if (code == "f8") return DType::float64;
  if (code == "f2") return DType::float16;
  if (code == "i4") return DType::int32;
  if (code == "i8") return DType::int64;
  if (code == "u1" || code == "b1") return DType::uint8;
  if (code == "u2") return DType::uint16;
  return DType::other;
}

inline constexpr int kMaxDims = 4;

struct ArrayView {
  void* ptr = nullptr;
  Device device = Device::absent;
  DType dtype = DType::other;
  int ndim = 0;
  int64_t itemsize = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> strides{};  // bytes
  bool readonly = false;

  bool present() const { return device != Device::absent; }
  int64_t size() const {
    int64_t total = 1;
    for (int axis = 0; axis < ndim; ++axis) total *= shape[axis];
    return total;
  }
  bool c_contiguous() const {
    if (size() == 0) return true;  // nothing is read: numpy calls any empty array contiguous
    int64_t expected = itemsize;
    for (int axis = ndim - 1; axis >= 0; --axis) {
      if (shape[axis] != 1 && strides[axis] != expected) return false;
      expected *= shape[axis];
    }
    return true;
  }
  // The typed pointer (dtype was checked by the binding's dispatch); null for an absent array.
  template <class T>
  T* data() const { return static_cast<T*>(ptr); }
};

// The checks every binding makes of its arrays, against the module's own device. Direct
// callers of the private modules get a ValueError naming the argument, never a bad read.
class ArrayChecks {
 public:
  explicit ArrayChecks(Device device) : device_(device) {}

  // Present, on this backend's device, C-contiguous, with these extents (-1: any).
  const ArrayView& shape(const ArrayView& a, const char* name, std::initializer_list<int64_t> extents) const {
    LRH_EXPECTS(a.present(), name, ": missing (None)");
    LRH_EXPECTS(a.device == device_, name, ": is a ", device_name(a.device), " array but this backend takes ",
                device_name(device_), " arrays");
    LRH_EXPECTS(a.ndim == static_cast<int>(extents.size()), name, ": expected ", extents.size(),
                " dimensions, got ", a.ndim);
    int axis = 0;
    for (int64_t extent : extents) {
      LRH_EXPECTS(extent < 0 || a.shape[axis] == extent, name, ": axis ", axis, " has length ", a.shape[axis],
                  ", expected ", extent);
      ++axis;
    }
    LRH_EXPECTS(a.c_contiguous(), name, ": must be C-contiguous");
    return a;
  }
  const ArrayView& typed(const ArrayView& a, const char* name, DType dtype,
                         std::initializer_list<int64_t> extents) const {
    shape(a, name, extents);
    LRH_EXPECTS(a.dtype == dtype, name, ": expected ", dtype_name(dtype), ", got ", dtype_name(a.dtype));
    return a;
  }
  const ArrayView& output(const ArrayView& a, const char* name, DType dtype,
                          std::initializer_list<int64_t> extents) const {
    typed(a, name, dtype, extents);
    LRH_EXPECTS(!a.readonly, name, ": output array is read-only");
    return a;
  }
  // An optional array: absent, or as `typed`.
  const ArrayView& optional(const ArrayView& a, const char* name, DType dtype,
                            std::initializer_list<int64_t> extents) const {
    return a.present() ? typed(a, name, dtype, extents) : a;
  }

 private:
  Device device_;
};

template <class T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::float32;
  else if constexpr (std::is_same_v<T, double>) return DType::float64;
  else if constexpr (std::is_same_v<T, int32_t>) return DType::int32;
  else if constexpr (std::is_same_v<T, int64_t>) return DType::int64;
  else if constexpr (std::is_same_v<T, uint8_t>) return DType::uint8;
  else if constexpr (std::is_same_v<T, float16>) return DType::float16;
  else if constexpr (std::is_same_v<T, bfloat16>) return DType::bfloat16;
  else return DType::uint16;
}

// Calls body(T{}) for a float32/float64 array's element type.
template <class Body>
auto dispatch_float(const ArrayView& a, const char* name, Body&& body) {
  LRH_EXPECTS(a.dtype == DType::float32 || a.dtype == DType::float64, name, ": must be float32 or float64, got ",
              dtype_name(a.dtype));
  if (a.dtype == DType::float32) return body(float{});
  return body(double{});
}

// Calls body(T{}) for the storage types of the low-precision kernels: float32, float64 and the
// 16-bit formats (lowrank_hpc::float16, lowrank_hpc::bfloat16; core/half.hpp).
template <class Body>
auto dispatch_storage(const ArrayView& a, const char* name, Body&& body) {
  if (a.dtype == DType::float16) return body(float16{});
  if (a.dtype == DType::bfloat16) return body(bfloat16{});
  LRH_EXPECTS(a.dtype == DType::float32 || a.dtype == DType::float64, name,
              ": must be float32, float64, float16 or bfloat16, got ", dtype_name(a.dtype));
  return dispatch_float(a, name, body);
}

// Calls body(I{}) for an int32/int64 index array's element type.
template <class Body>
auto dispatch_index(const ArrayView& index, const char* index_name, Body&& body) {
  LRH_EXPECTS(index.dtype == DType::int32 || index.dtype == DType::int64, index_name,
              ": must be int32 or int64, got ", dtype_name(index.dtype));
  if (index.dtype == DType::int32) return body(int32_t{});
  return body(int64_t{});
}

// Calls body(T{}, I{}) for a float array's and an index array's element types.
template <class Body>
auto dispatch_float_index(const ArrayView& a, const char* name, const ArrayView& index, const char* index_name,
                          Body&& body) {
  return dispatch_index(index, index_name,
                        [&](auto i) { return dispatch_float(a, name, [&](auto t) { return body(t, i); }); });
}

// The same with T from dispatch_storage (the 16-bit formats too).
template <class Body>
auto dispatch_storage_index(const ArrayView& a, const char* name, const ArrayView& index, const char* index_name,
                            Body&& body) {
  return dispatch_index(index, index_name,
                        [&](auto i) { return dispatch_storage(a, name, [&](auto t) { return body(t, i); }); });
}

}  // namespace lowrank_hpc::bindings

namespace pybind11::detail {

// Reads numpy arrays through the buffer of py::array and CUDA arrays through
// __cuda_array_interface__ (v2/v3: shape, typestr, data, strides); None is an absent view.
template <>
struct type_caster<lowrank_hpc::bindings::ArrayView> {
  PYBIND11_TYPE_CASTER(lowrank_hpc::bindings::ArrayView, const_name("ArrayLike"));

  bool load(handle src, bool) {
    using lowrank_hpc::bindings::Device;
    using lowrank_hpc::bindings::kMaxDims;
    value = {};
    if (src.is_none()) return true;
    if (isinstance<array>(src)) {
      auto a = reinterpret_borrow<array>(src);
      if (a.ndim() > kMaxDims) return false;
      value.device = Device::host;
      value.ptr = const_cast<void*>(a.data());
      value.dtype = lowrank_hpc::bindings::dtype_of_typestr(
          std::string(1, a.dtype().byteorder() == '>' ? '>' : '<') + a.dtype().kind() +
          std::to_string(a.itemsize()));
      if (value.dtype == lowrank_hpc::bindings::DType::other && a.itemsize() == 2 &&
          a.dtype().attr("name").cast<std::string>() == "bfloat16")
        value.dtype = lowrank_hpc::bindings::DType::bfloat16;  // ml_dtypes.bfloat16 (kind 'V')
      value.itemsize = a.itemsize();
      value.ndim = static_cast<int>(a.ndim());
      for (int axis = 0; axis < value.ndim; ++axis) {
        value.shape[axis] = a.shape(axis);
        value.strides[axis] = a.strides(axis);
      }
      value.readonly = !a.writeable();
      return true;
    }
    if (!hasattr(src, "__cuda_array_interface__")) return false;
    dict cai = src.attr("__cuda_array_interface__");
    auto shape = cai["shape"].cast<tuple>();
    if (shape.size() > static_cast<size_t>(kMaxDims)) return false;
    const std::string typestr = cai["typestr"].cast<std::string>();
    auto data = cai["data"].cast<tuple>();
    value.device = Device::cuda;
    value.ptr = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
    value.readonly = data[1].cast<bool>();
    value.dtype = lowrank_hpc::bindings::dtype_of_typestr(typestr);
    value.itemsize = std::stoll(typestr.substr(2));
    // bfloat16 has no typestr: "<V2" with a descr naming it ([("bfloat16", "<V2")]).
    if (value.dtype == lowrank_hpc::bindings::DType::other && value.itemsize == 2 && cai.contains("descr")) {
      auto descr = cai["descr"].cast<list>();
      if (descr.size() == 1 && descr[0].cast<tuple>()[0].cast<std::string>() == "bfloat16")
        value.dtype = lowrank_hpc::bindings::DType::bfloat16;
    }
    value.ndim = static_cast<int>(shape.size());
    int64_t stride = value.itemsize;
    for (int axis = value.ndim - 1; axis >= 0; --axis) {  // C order when "strides" is None
      value.shape[axis] = shape[axis].cast<int64_t>();
      value.strides[axis] = stride;
      stride *= value.shape[axis];
    }
    if (cai.contains("strides") && !cai["strides"].is_none()) {
      auto strides = cai["strides"].cast<tuple>();
      for (int axis = 0; axis < value.ndim; ++axis) value.strides[axis] = strides[axis].cast<int64_t>();
    }
    return true;
  }

  static handle cast(const lowrank_hpc::bindings::ArrayView&, return_value_policy, handle) {
    return none().release();  // views only flow into the bindings
  }
};

}  // namespace pybind11::detail
