// Constants the Python layer reads from the core instead of copying them.
#include "backend.hpp"
#include "lowrank_hpc/core/constants.hpp"
#include "lowrank_hpc/ops/kernel_functions.hpp"
#include "lowrank_hpc/solvers/completion_step.hpp"

namespace lowrank_hpc::bindings {

void bind_constants(py::module_& m) {
  py::dict constants;
  constants["max_step_halvings"] = kMaxStepHalvings;
  constants["step_growth_allowed"] = kStepGrowthAllowed;
  constants["als_shared_bytes"] = kAlsSharedBytes;
  // Codes passed down for the batched solver's methods and the kernel functions, by name.
  py::dict methods;
  methods["gd"] = static_cast<int>(solvers::StepMethod::gd);
  methods["alternating"] = static_cast<int>(solvers::StepMethod::alternating);
  methods["scaled"] = static_cast<int>(solvers::StepMethod::scaled);
  methods["scaled_damped"] = static_cast<int>(solvers::StepMethod::scaled_damped);
  constants["step_methods"] = methods;
  py::dict kernels;
  kernels["identity"] = static_cast<int>(ops::KernelFunction::identity);
  kernels["relu"] = static_cast<int>(ops::KernelFunction::relu);
  kernels["exponential"] = static_cast<int>(ops::KernelFunction::exponential);
  kernels["tanh"] = static_cast<int>(ops::KernelFunction::tanh);
  kernels["piecewise_linear"] = static_cast<int>(ops::KernelFunction::piecewise_linear);
  constants["kernel_functions"] = kernels;
  m.attr("CONSTANTS") = constants;
}

}  // namespace lowrank_hpc::bindings
