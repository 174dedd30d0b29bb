// The Adafactor step (lowrank_hpc/ops/adafactor.hpp) over a batch of parameters of one shape,
// the same signature on both modules. The Python layer (lowrank_hpc.optim) passes parameters as
// (slices, rows, cols) or vectors, 16-bit ones as uint16 bits with their format named; every
// array is checked here again, so a direct caller gets a ValueError, never a bad write.
#include <algorithm>
#include <cmath>
#include <vector>

#include <pybind11/stl.h>

#include "backend.hpp"
#include "lowrank_hpc/ops/adafactor.hpp"

namespace lowrank_hpc::bindings {

namespace {

using py::arg;

// Calls body(P{}, S{}) for a parameter format and checks the arrays' dtype against it.
template <class Body>
void dispatch_format(const std::string& format, Body&& body) {
  if (format == "float32") return body(float{}, float{});
  if (format == "float64") return body(double{}, double{});
  if (format == "bfloat16") return body(bfloat16{}, float{});
  if (format == "float16") return body(float16{}, float{});
  LRH_EXPECTS(false, "param_format: must be float32, float64, bfloat16 or float16, got '", format, "'");
}

template <class P>
constexpr DType storage_dtype() {
  if constexpr (std::is_same_v<P, float> || std::is_same_v<P, double>) return dtype_of<P>();
  else return DType::uint16;  // 16-bit floats travel as their bits
}

std::string indexed(const char* name, size_t b) { return std::string(name) + "[" + std::to_string(b) + "]"; }

// Present, on this device, C-contiguous, of dtype and size, writable when `written`.
void expect_array(const ArrayView& a, const std::string& name, DType dtype, int64_t size, bool written) {
  LRH_EXPECTS(a.present(), name, ": missing (None)");
  LRH_EXPECTS(a.device == kDevice, name, ": is a ", device_name(a.device), " array but this backend takes ",
              device_name(kDevice), " arrays");
  LRH_EXPECTS(a.dtype == dtype, name, ": expected ", dtype_name(dtype), ", got ", dtype_name(a.dtype));
  LRH_EXPECTS(a.size() == size, name, ": has ", a.size(), " entries, expected ", size);
  LRH_EXPECTS(a.c_contiguous(), name, ": must be C-contiguous");
  LRH_EXPECTS(!written || !a.readonly, name, ": is read-only but is written in place");
}

void adafactor_step(const std::string& param_format, const std::vector<ArrayView>& params,
                    const std::vector<ArrayView>& grads, const std::vector<ArrayView>& row_vars,
                    const std::vector<ArrayView>& col_vars, const std::vector<ArrayView>& exp_avgs,
                    const std::vector<double>& steps, const ops::AdafactorOptions& options, const ArrayView& status,
                    std::uintptr_t stream) {
  const size_t batch = params.size();
  LRH_EXPECTS(batch >= 1, "params: empty batch");
  LRH_EXPECTS(grads.size() == batch && row_vars.size() == batch && col_vars.size() == batch && steps.size() == batch,
              "grads, row_vars, col_vars, steps: expected ", batch, " entries each (one per parameter)");
  const bool momentum = options.beta1 != 0.0;
  LRH_EXPECTS(exp_avgs.size() == (momentum ? batch : 0), "exp_avgs: expected ", momentum ? batch : 0,
              " entries (one per parameter when beta1 != 0, none otherwise)");
  const ArrayView& first = params[0];
  LRH_EXPECTS(first.ndim == 1 || first.ndim == 3, "params[0]: expected a vector or (slices, rows, cols), got ",
              first.ndim, " dimensions");
  ops::AdafactorShape shape{};
  shape.factored = first.ndim == 3;
  shape.slices = shape.factored ? first.shape[0] : 1;
  shape.rows = shape.factored ? first.shape[1] : 1;
  shape.cols = shape.factored ? first.shape[2] : first.shape[0];
  LRH_EXPECTS(shape.size() >= 1, "params[0]: is empty");
  LRH_EXPECTS(options.lr > 0 && std::isfinite(options.lr), "lr: must be a finite number > 0, got ", options.lr);
  LRH_EXPECTS(options.beta2_decay <= 0, "beta2_decay: must be <= 0, got ", options.beta2_decay);
  LRH_EXPECTS(options.eps1 >= 0 && options.eps2 >= 0, "eps: must be >= 0");
  LRH_EXPECTS(options.d >= 1, "d: must be >= 1, got ", options.d);
  LRH_EXPECTS(options.beta1 >= 0 && options.beta1 < 1, "beta1: must be in [0, 1), got ", options.beta1);
  for (size_t b = 0; b < batch; ++b)
    LRH_EXPECTS(steps[b] >= 1 && std::isfinite(steps[b]), indexed("steps", b), ": must be >= 1, got ", steps[b]);
  expect().output(status, "status", DType::int64, {static_cast<int64_t>(batch)});

  dispatch_format(param_format, [&](auto p_type, auto s_type) {
    using P = decltype(p_type);
    using S = decltype(s_type);
    std::vector<ops::AdafactorProblem<P, S>> problems(batch);
    std::vector<const void*> distinct(batch);
    for (size_t b = 0; b < batch; ++b) {
      const ArrayView& param = params[b];
      LRH_EXPECTS(param.ndim == first.ndim && std::equal(param.shape.begin(), param.shape.begin() + param.ndim,
                                                         first.shape.begin()),
                  indexed("params", b), ": has a different shape from params[0] (one launch takes one shape)");
      expect_array(param, indexed("params", b), storage_dtype<P>(), shape.size(), true);
      expect_array(grads[b], indexed("grads", b), storage_dtype<P>(), shape.size(), false);
      if (shape.factored) {
        expect_array(row_vars[b], indexed("row_vars", b), dtype_of<S>(), shape.slices * shape.rows, true);
      } else {
        LRH_EXPECTS(!row_vars[b].present(), indexed("row_vars", b), ": must be None for a vector parameter");
      }
      expect_array(col_vars[b], indexed("col_vars", b), dtype_of<S>(), shape.slices * shape.cols, true);
      if (momentum) expect_array(exp_avgs[b], indexed("exp_avgs", b), dtype_of<S>(), shape.size(), true);
      auto& problem = problems[b];
      problem.param = param.data<P>();
      problem.grad = grads[b].data<P>();
      problem.row_var = shape.factored ? row_vars[b].data<S>() : nullptr;
      problem.col_var = col_vars[b].data<S>();
      problem.exp_avg = momentum ? exp_avgs[b].data<S>() : nullptr;
      ops::adafactor_schedule(options, steps[b], &problem.moment_weight, &problem.rho);
      distinct[b] = param.ptr;
    }
    std::sort(distinct.begin(), distinct.end());
    LRH_EXPECTS(std::adjacent_find(distinct.begin(), distinct.end()) == distinct.end(),
                "params: one array appears twice in the batch");
    py::gil_scoped_release release;
    check_launch(launch::adafactor_step<P, S>(problems.data(), static_cast<int64_t>(batch), shape, options,
                                              status.data<int64_t>(), stream_of(stream)),
                 "adafactor_step");
  });
}

}  // namespace

void bind_adafactor(py::module_& m) {
  // Module-local: _cpu and _cuda each register this C++ type, which pybind11 otherwise refuses.
  py::class_<ops::AdafactorOptions>(m, "AdafactorOptions", py::module_local(),
                                    "The options of an Adafactor step (ops/adafactor.hpp)")
      .def(py::init([](double lr, double beta2_decay, double eps1, double eps2, double d, double weight_decay,
                       double beta1, bool maximize, bool relative_step, bool scale_parameter, bool warmup_init) {
             return ops::AdafactorOptions{lr, beta2_decay, eps1, eps2, d, weight_decay, beta1,
                                          maximize, relative_step, scale_parameter, warmup_init};
           }),
           arg("lr"), arg("beta2_decay"), arg("eps1"), arg("eps2"), arg("d"), arg("weight_decay"), arg("beta1"),
           arg("maximize"), arg("relative_step"), arg("scale_parameter"), arg("warmup_init"));
  m.def("adafactor_step", &adafactor_step, arg("param_format"), arg("params"), arg("grads"), arg("row_vars"),
        arg("col_vars"), arg("exp_avgs"), arg("steps"), arg("options"), arg("status"), arg("stream") = 0,
        "One Adafactor step of a batch of parameters of one shape, in place; status[b] = 0 (done), 1 (grad "
        "not finite) or 2 (param not finite), the parameter and its state untouched unless 0");
}

}  // namespace lowrank_hpc::bindings
