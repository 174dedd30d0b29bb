// Bindings of the Gaussian sensing CUDA kernels.
#include "cuda_bindings.hpp"
#include "device_pointers.hpp"

namespace lowrank_hpc::bindings {

void bind_sensing(py::module_& m) {
  m.def("gaussian_fill", [](const std::string& dtype, uint64_t seed, uint64_t first_stream, int64_t rows,
                            int64_t cols, uint64_t index_offset, double scale, bool symmetric, int64_t count,
                            std::uintptr_t out, std::uintptr_t stream) {
    const ops::GaussianEnsemble ensemble =
        ops::checked_gaussian_ensemble(seed, first_stream, rows, cols, index_offset, scale, symmetric);
    py::gil_scoped_release release;
    dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      check_cuda(cuda::gaussian_fill<T>(ensemble, count, as_ptr<T>(out), as_ptr<void>(stream)),
                 "gaussian_fill kernel launch");
    });
  });
  m.def("gaussian_forward", [](const std::string& dtype, uint64_t seed, int64_t rows, int64_t cols, double scale,
                               bool symmetric, std::uintptr_t X, int64_t batch, int64_t m_measurements,
                               std::uintptr_t out, std::uintptr_t stream) {
    const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
    py::gil_scoped_release release;
    dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      check_cuda(cuda::gaussian_forward<T>(ensemble, m_measurements, as_ptr<const T>(X), batch, as_ptr<T>(out),
                                           as_ptr<void>(stream)),
                 "gaussian_forward kernel launch");
    });
  });
  m.def("gaussian_adjoint", [](const std::string& dtype, uint64_t seed, int64_t rows, int64_t cols, double scale,
                               bool symmetric, std::uintptr_t y, int64_t batch, int64_t m_measurements,
                               std::uintptr_t out, std::uintptr_t stream) {
    const ops::GaussianEnsemble ensemble = ops::checked_gaussian_ensemble(seed, 0, rows, cols, 0, scale, symmetric);
    py::gil_scoped_release release;
    dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      check_cuda(cuda::gaussian_adjoint<T>(ensemble, m_measurements, as_ptr<const T>(y), batch, as_ptr<T>(out),
                                           as_ptr<void>(stream)),
                 "gaussian_adjoint kernel launch");
    });
  });
}

}  // namespace lowrank_hpc::bindings
