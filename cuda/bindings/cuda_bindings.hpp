// One bind_* function per kernel family; module.cpp calls each once.
#pragma once
#include <pybind11/pybind11.h>

namespace lowrank_hpc::bindings {

void bind_coo_kernels(pybind11::module_& m);
void bind_completion_step(pybind11::module_& m);
void bind_sensing(pybind11::module_& m);
void bind_kernel_product(pybind11::module_& m);
void bind_als(pybind11::module_& m);
void bind_device_info(pybind11::module_& m);

}  // namespace lowrank_hpc::bindings
