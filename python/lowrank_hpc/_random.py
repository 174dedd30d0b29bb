"""Counter-based Gaussian draws (Philox-4x32-10, cpp/include/lowrank_hpc/random/philox.hpp):
random access by (seed, stream, index) and bit-identical on the CPU and the GPU, so every seeded
start and every sensing operator is the same on both backends."""
from __future__ import annotations

import numpy as np

from ._arrays import Call


def gaussian_fill(call: Call, dtype: np.dtype, seed: int, count: int, rows: int, cols: int, *,
                  first_stream: int = 0, index_offset: int = 0, scale: float = 1.0, symmetric: bool = False):
    """(count, rows * cols) array on the call's backend: entry e of matrix i is
    scale * standard_normal(seed, first_stream + i, index_offset + e), rounded to ``dtype``
    (symmetric: the average with the transposed entry). Bit-identical on CPU and GPU."""
    out = call.xp.empty((count, rows * cols), dtype=dtype)
    call.module.gaussian_fill(seed, first_stream, rows, cols, index_offset, scale, symmetric, out, call.stream())
    return out
