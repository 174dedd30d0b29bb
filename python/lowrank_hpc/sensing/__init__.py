"""Measurement operators for matrix sensing: A maps an (n1, n2) matrix X to m measurements.

Every operator has ``shape``, ``num_measurements``, ``seed``, ``forward``, ``adjoint``,
``forward_factored``, ``to_dense`` and ``as_linear_operator``; numpy arrays run on the CPU and CUDA
arrays on the GPU, in float32 or float64. Random matrices come from the counter-based Philox
generator keyed by (seed, stream, index), bit-identical on both backends.
"""
from ._base import SensingOperator, get_memory_budget, set_memory_budget
from .column_sketch import ColumnSketch
from .entry_sampling import EntrySampling
from .gaussian import GaussianSensing
from .rank_one import RankOneSensing

__all__ = ["ColumnSketch", "EntrySampling", "GaussianSensing", "RankOneSensing", "SensingOperator",
           "get_memory_budget", "set_memory_budget"]
