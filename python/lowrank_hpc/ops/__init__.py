"""Low-rank kernels, one math on two backends: numpy arrays run on the CPU (OpenMP), CUDA
arrays (CuPy, or any __cuda_array_interface__/DLPack array) on the GPU."""
from .lowrank_product import lowrank_product
from .sampled_product import sampled_product
from .sparse_times_dense import SparsePattern, sparse_times_dense

__all__ = ["SparsePattern", "lowrank_product", "sampled_product", "sparse_times_dense"]
