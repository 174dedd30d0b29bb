// The kernels only the CPU module has (the shared ones are in common/): algorithms whose GPU
// counterpart is a different kernel (the fused and dense ALS iterations, the fused top-k) or
// the vendor's (the small thin SVD, the bit-packed 0/1 products), or one the GPU does not need
// (the row-ordered sampled product, the in-place product of shuffled entries), or one whose GPU
// counterpart is cuBLAS (the change's Grams).
// The Python layer asks for them by capability (lowrank_hpc._backend), never by device.
#pragma once
#include "common/backend.hpp"

namespace lowrank_hpc::bindings {

void bind_runtime(py::module_& m);
void bind_als_fused(py::module_& m);
void bind_top_k(py::module_& m);
void bind_csr_sampled_product(py::module_& m);
void bind_coo_times_dense(py::module_& m);
void bind_thin_svd(py::module_& m);
void bind_binary_product(py::module_& m);
void bind_change_grams(py::module_& m);
void bind_offsets(py::module_& m);

}  // namespace lowrank_hpc::bindings
