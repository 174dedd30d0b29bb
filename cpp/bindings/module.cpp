// The CPU extension module (_cpu, or _cpu_avx2 / _cpu_avx512: the same sources for a wider
// x86-64 level, see CMakeLists.txt): the shared bindings over the OpenMP drivers, plus the
// CPU-only ones.
#include <omp.h>

#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

// The CPU drivers report no launch errors; this is never reached.
void raise_launch_error(int code, const char* what) {
  throw std::runtime_error(std::string(what) + " failed with code " + std::to_string(code));
}

void bind_runtime(py::module_& m) {
  m.def("max_threads", [] { return omp_get_max_threads(); }, "OpenMP threads a parallel region uses");
  m.def("set_num_threads", [](int n) {
    LRH_EXPECTS(n >= 1, "num_threads must be >= 1, got ", n);
    omp_set_num_threads(n);
  }, py::arg("num_threads"));
}

}  // namespace lowrank_hpc::bindings

#ifndef LRH_CPU_MODULE
#define LRH_CPU_MODULE _cpu
#define LRH_CPU_LEVEL "baseline"
#endif

PYBIND11_MODULE(LRH_CPU_MODULE, m) {
  namespace bindings = lowrank_hpc::bindings;
  m.doc() = "lowrank_hpc CPU backend (OpenMP). Private: use lowrank_hpc.ops and lowrank_hpc.sensing.";
  m.attr("__version__") = LRH_VERSION;
  m.attr("CPU_LEVEL") = LRH_CPU_LEVEL;
  bindings::bind_shared(m);
  m.attr("ALS_SYSTEM_BYTES_LIMIT") = pybind11::none();  // a row's normal equations may take any size
  bindings::bind_runtime(m);
  bindings::bind_als_fused(m);
  bindings::bind_top_k(m);
  bindings::bind_csr_sampled_product(m);
  bindings::bind_coo_times_dense(m);
  bindings::bind_thin_svd(m);
  bindings::bind_binary_product(m);
  bindings::bind_change_grams(m);
  bindings::bind_offsets(m);
#ifdef LRH_JAX_FFI
  bindings::bind_jax_ffi(m);  // built where jaxlib's FFI headers were found (CMakeLists.txt)
#endif
}
