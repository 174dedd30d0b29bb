// Binding of the batched completion solver's fused GPU iteration.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"

namespace lowrank_hpc::bindings {

void bind_completion_step(py::module_& m) {
  m.def("completion_steps",
        [](const std::string& dtype, const std::string& index_dtype, std::uintptr_t rows, std::uintptr_t cols,
           std::uintptr_t vals, std::uintptr_t offsets, int64_t batch, int64_t m_rows, int64_t n_rows, int64_t k,
           int method, std::uintptr_t active, std::uintptr_t U, std::uintptr_t V, std::uintptr_t U1,
           std::uintptr_t V1, std::uintptr_t steps, std::uintptr_t dampings, std::uintptr_t scratch,
           std::uintptr_t losses, std::uintptr_t changes, std::uintptr_t halvings, std::uintptr_t stuck,
           std::uintptr_t stream) {
          LRH_EXPECTS(method >= 0 && method <= 3, "method code must be 0..3, got ", method);
          py::gil_scoped_release release;
          dispatch_float_index(dtype, index_dtype, [&](auto t, auto i) {
            using T = decltype(t);
            using I = decltype(i);
            check_cuda(cuda::completion_steps<T, I>(
                           as_ptr<const I>(rows), as_ptr<const I>(cols), as_ptr<const T>(vals),
                           as_ptr<const int64_t>(offsets), batch, m_rows, n_rows, k, method,
                           as_ptr<const uint8_t>(active), as_ptr<const T>(U), as_ptr<const T>(V), as_ptr<T>(U1),
                           as_ptr<T>(V1), as_ptr<double>(steps), as_ptr<const double>(dampings), as_ptr<T>(scratch),
                           as_ptr<double>(losses), as_ptr<double>(changes), as_ptr<int64_t>(halvings),
                           as_ptr<uint8_t>(stuck), as_ptr<void>(stream)),
                       "completion_steps kernel launch");
          });
        });
}

}  // namespace lowrank_hpc::bindings
