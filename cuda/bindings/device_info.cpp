// Bindings of the device queries: the import-time architecture check in lowrank_hpc._backend
// calls them before anything launches a kernel, so none of them raises.
#include <pybind11/pybind11.h>

#include "lowrank_hpc_cuda/device_info.hpp"

#include <string>

namespace lowrank_hpc::bindings {

namespace py = pybind11;

void bind_device_info(py::module_& m) {
  m.def("current_device", []() {
    int device = 0;
    const int status = cuda::current_device(&device);
    return status == 0 ? device : -status;
  }, "The current CUDA device, or minus the cudaError_t code that says why there is none");
  m.def("device_compute_capability", [](int device) -> py::object {
    int major = 0, minor = 0;
    const int status = cuda::device_compute_capability(device, &major, &minor);
    if (status != 0) return py::int_(-status);
    return py::make_tuple(major, minor);
  }, py::arg("device"),
     "(major, minor) compute capability of the device, or minus the cudaError_t code on failure");
  m.def("device_name", [](int device) {
    char name[256] = {};
    return cuda::device_name(device, name, sizeof name) == 0 ? std::string(name) : std::string();
  }, py::arg("device"), "The device's name, or an empty string when it cannot be read");
}

}  // namespace lowrank_hpc::bindings
