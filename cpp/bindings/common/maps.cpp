// The element-wise map and row/column reductions, by map name (lowrank_hpc/ops/maps.hpp): a new
// element-wise kernel is a functor and a line of LRH_FOR_EACH_MAP, nothing here.
#include <type_traits>
#include <vector>

#include <pybind11/stl.h>

#include "backend.hpp"
#include "lowrank_hpc/ops/maps.hpp"
#ifndef LRH_BACKEND_CUDA
#include "../../src/map_reduce.hpp"
#endif

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// Calls body(functor) for the map named `op`, built from its parameters.
template <class Body>
void with_map(const std::string& op, const std::vector<double>& params, Body&& body) {
#define LRH_TRY_MAP(name, F)                                                                             \
  if (op == #name) {                                                                                     \
    LRH_EXPECTS(params.size() == F::kParams, "params: map ", op, " takes ", F::kParams, " parameters, got ", \
                params.size());                                                                         \
    return body(F(params.data()));                                                                        \
  }
  LRH_FOR_EACH_MAP(LRH_TRY_MAP)
#undef LRH_TRY_MAP
  LRH_EXPECTS(false, "op: unknown map '", op, "'");
}

// out = f(x) entry by entry (out may be x), out of x's dtype or, for float32 x, float16 or
// bfloat16 (each f(x) rounded once); nonfinite[0] += the NaN/inf results as stored.
void map(const std::string& op, const ArrayView& x, const ArrayView& out, const std::vector<double>& params,
         const ArrayView& nonfinite, std::uintptr_t stream) {
  LRH_EXPECTS(x.present() && x.ndim == out.ndim, "x, out: expected arrays of one shape");
  expect().output(nonfinite, "nonfinite", DType::int64, {1});
  dispatch_float(x, "x", [&](auto t) {
    using T = decltype(t);
    LRH_EXPECTS(x.device == kDevice && x.c_contiguous(), "x: must be a C-contiguous array on this backend");
    LRH_EXPECTS(out.size() == x.size(), "out: has ", out.size(), " entries, x has ", x.size());
    const bool rounded = std::is_same_v<T, float> && (out.dtype == DType::float16 || out.dtype == DType::bfloat16);
    LRH_EXPECTS(out.device == kDevice && out.c_contiguous() && !out.readonly && (out.dtype == x.dtype || rounded),
                "out: must be a writable C-contiguous array on this backend of x's dtype (or, for float32 x, "
                "float16 or bfloat16), got ", dtype_name(out.dtype));
    with_map(op, params, [&](auto f) {
      const auto launch_into = [&](auto o) {
        using O = decltype(o);
        py::gil_scoped_release release;
        check_launch(launch::map<T>(x.data<T>(), out.data<O>(), x.size(), f, nonfinite.data<int64_t>(),
                                    stream_of(stream)),
                     "map");
      };
      if constexpr (std::is_same_v<T, float>) {
        if (out.dtype == DType::float16) return launch_into(float16{});
        if (out.dtype == DType::bfloat16) return launch_into(bfloat16{});
      }
      launch_into(T{});
    });
  });
}

// out (rows,) = sum_j f(x[i, j]) (axis 1) or out (cols,) = sum_i f(x[i, j]) (axis 0), in double.
void reduce(const std::string& op, const ArrayView& x, int axis, const ArrayView& out,
            const std::vector<double>& params, std::uintptr_t stream) {
  expect().shape(x, "x", {-1, -1});
  LRH_EXPECTS(axis == 0 || axis == 1, "axis must be 0 or 1, got ", axis);
  const int64_t rows = x.shape[0], cols = x.shape[1];
  dispatch_float(x, "x", [&](auto t) {
    using T = decltype(t);
    expect().output(out, "out", dtype_of<T>(), {axis == 1 ? rows : cols});
    with_map(op, params, [&](auto f) {
      py::gil_scoped_release release;
      const int code = axis == 1 ? launch::reduce_rows<T>(x.data<T>(), rows, cols, f, out.data<T>(), stream_of(stream))
                                 : launch::reduce_cols<T>(x.data<T>(), rows, cols, f, out.data<T>(), stream_of(stream));
      check_launch(code, "reduce");
    });
  });
}

}  // namespace

void bind_maps(py::module_& m) {
  m.def("map", &map, arg("op"), arg("x"), arg("out"), arg("params"), arg("nonfinite"), arg("stream") = 0,
        "out = f(x) for the map named op (lowrank_hpc/ops/maps.hpp); nonfinite[0] += the NaN/inf results");
  m.def("reduce", &reduce, arg("op"), arg("x"), arg("axis"), arg("out"), arg("params"), arg("stream") = 0,
        "out = sum of f(x) over axis (1: per row, 0: per column) of a 2-D x, summed in double");
  py::dict maps;
#define LRH_LIST_MAP(name, F) maps[#name] = F::kParams;
  LRH_FOR_EACH_MAP(LRH_LIST_MAP)
#undef LRH_LIST_MAP
  m.attr("MAPS") = maps;  // name -> number of parameters
}

}  // namespace lowrank_hpc::bindings
