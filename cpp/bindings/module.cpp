// The _cpu extension module: thin typed entry points over the OpenMP drivers.
#include <omp.h>

#include "host_arrays.hpp"
#include "../src/cpu_backend.hpp"
#include "cpu_bindings.hpp"

namespace lowrank_hpc::bindings {

void bind_runtime(py::module_& m) {
  m.def("max_threads", [] { return omp_get_max_threads(); }, "OpenMP threads a parallel region uses");
  m.def("set_num_threads", [](int n) {
    LRH_EXPECTS(n >= 1, "num_threads must be >= 1, got ", n);
    omp_set_num_threads(n);
  }, py::arg("num_threads"));
}

}  // namespace lowrank_hpc::bindings

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "lowrank_hpc CPU backend (OpenMP). Private: use lowrank_hpc.ops and lowrank_hpc.sensing.";
  m.attr("__version__") = LRH_VERSION;
  lowrank_hpc::bindings::bind_runtime(m);
  lowrank_hpc::bindings::bind_coo_kernels(m);
  lowrank_hpc::bindings::bind_completion_step(m);
  lowrank_hpc::bindings::bind_sensing(m);
  lowrank_hpc::bindings::bind_kernel_product(m);
  lowrank_hpc::bindings::bind_als(m);
}
