// Binding of the ALS half-step kernel.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"

namespace lowrank_hpc::bindings {

void bind_als(py::module_& m) {
  // active may be 0 (none); singular is a device int64 the kernel adds to.
  m.def("als_update_rows",
        [](const std::string& dtype, const std::string& index_dtype, std::uintptr_t indptr,
           std::uintptr_t others, std::uintptr_t vals, std::uintptr_t F, int64_t batch, int64_t n_key,
           int64_t n_other, int64_t r, double reg, bool count_scaling, std::uintptr_t active, std::uintptr_t out,
           std::uintptr_t singular, std::uintptr_t stream) {
          LRH_EXPECTS(batch >= 1 && n_key >= 1 && n_other >= 1 && r >= 1,
                      "batch, n_key, n_other and the rank must be positive");
          LRH_EXPECTS(reg >= 0, "reg must be >= 0, got ", reg);
          py::gil_scoped_release release;
          dispatch_float_index(dtype, index_dtype, [&](auto t, auto i) {
            using T = decltype(t);
            using I = decltype(i);
            check_cuda(cuda::als_update_rows<T, I>(as_ptr<const int64_t>(indptr),
                                                   as_ptr<const I>(others), as_ptr<const T>(vals),
                                                   as_ptr<const T>(F), batch, n_key, n_other, r,
                                                   static_cast<T>(reg), count_scaling, as_ptr<const uint8_t>(active),
                                                   as_ptr<T>(out), as_ptr<int64_t>(singular), as_ptr<void>(stream)),
                       "als_update_rows kernel launch");
          });
        });
}

}  // namespace lowrank_hpc::bindings
