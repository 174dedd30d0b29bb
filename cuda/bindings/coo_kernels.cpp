// Bindings of the coordinate-format CUDA kernels.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"

namespace lowrank_hpc::bindings {

void bind_coo_kernels(py::module_& m) {
  m.def("sampled_product",
        [](const std::string& dtype, const std::string& index_dtype, std::uintptr_t U, std::uintptr_t V,
           std::uintptr_t rows, std::uintptr_t cols, std::uintptr_t offsets, int64_t batch, int64_t m_rows,
           int64_t n_rows, int64_t r, int64_t nnz, std::uintptr_t out, std::uintptr_t first_bad,
           std::uintptr_t stream) {
          py::gil_scoped_release release;
          dispatch_float_index(dtype, index_dtype, [&](auto t, auto i) {
            using T = decltype(t);
            using I = decltype(i);
            check_cuda(cuda::sampled_product<T, I>(as_ptr<const T>(U), as_ptr<const T>(V), as_ptr<const I>(rows),
                                                   as_ptr<const I>(cols), as_ptr<const int64_t>(offsets), batch,
                                                   m_rows, n_rows, r, nnz, as_ptr<T>(out),
                                                   as_ptr<int64_t>(first_bad), as_ptr<void>(stream)),
                       "sampled_product kernel launch");
          });
        });
  m.def("coo_times_dense",
        [](const std::string& dtype, const std::string& index_dtype, std::uintptr_t keys, std::uintptr_t others,
           std::uintptr_t vals, std::uintptr_t B, std::uintptr_t offsets, int64_t batch, int64_t n_key,
           int64_t n_other, int64_t r, int64_t nnz, std::uintptr_t out, std::uintptr_t first_bad,
           std::uintptr_t stream) {
          py::gil_scoped_release release;
          dispatch_float_index(dtype, index_dtype, [&](auto t, auto i) {
            using T = decltype(t);
            using I = decltype(i);
            check_cuda(cuda::coo_times_dense<T, I>(as_ptr<const I>(keys), as_ptr<const I>(others),
                                                   as_ptr<const T>(vals), as_ptr<const T>(B),
                                                   as_ptr<const int64_t>(offsets), batch, n_key, n_other, r, nnz,
                                                   as_ptr<T>(out), as_ptr<int64_t>(first_bad), as_ptr<void>(stream)),
                       "coo_times_dense kernel launch");
          });
        });
  m.def("count_nonfinite", [](const std::string& dtype, std::uintptr_t x, int64_t size, std::uintptr_t count,
                              std::uintptr_t stream) {
    py::gil_scoped_release release;
    dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      check_cuda(cuda::count_nonfinite<T>(as_ptr<const T>(x), size, as_ptr<int64_t>(count), as_ptr<void>(stream)),
                 "count_nonfinite kernel launch");
    });
  });
}

}  // namespace lowrank_hpc::bindings
