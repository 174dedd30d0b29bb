"""Low-rank kernels, one math on two backends: numpy arrays run on the CPU (OpenMP), CUDA
arrays (CuPy, or any __cuda_array_interface__/DLPack array) on the GPU."""
from .elastic_binary import elastic_binary_half_step, elastic_binary_prox
from .kernel_product import KERNELS, TOP_K_ORDERS, GlobalTopK, TopK, apply_kernel, kernel_product
from .lowrank_product import lowrank_product
from .proximal import soft_threshold
from .reductions import sum_of_squares
from .sampled_product import sampled_product
from .sparse_times_dense import SparsePattern, sparse_times_dense

__all__ = ["KERNELS", "TOP_K_ORDERS", "GlobalTopK", "SparsePattern", "TopK", "apply_kernel",
           "elastic_binary_half_step", "elastic_binary_prox", "kernel_product", "lowrank_product", "sampled_product",
           "soft_threshold", "sparse_times_dense", "sum_of_squares"]
