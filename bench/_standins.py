"""Stand-ins for the lowrank_hpc.sensing operators, used by bench_solvers.py only while
lowrank_hpc.sensing is not merged into this branch. Delete this file once it is.

Both implement the operator protocol factored_gd reads (shape, num_measurements, forward,
adjoint, forward_factored, and for completion adjoint_times / adjoint_transpose_times), built
on lowrank_hpc.ops, so factored_gd on them runs the library's own solver and kernels:
- EntrySampling is what the library's completion operator is specified to do (sampled_product
  forward, SparsePattern products for the gradients), so its timings stand for factored_gd on
  lowrank_hpc.sensing.EntrySampling;
- GaussianSensing keeps the dense (m, n1*n2) matrix with N(0, 1/m) entries (isotropic:
  E||A(X)||^2 = ||X||_F^2) and multiplies by it, as the torch peer does: one product forward
  and one adjoint per gradient (factored_gd asks for A*(z) @ V and A*(z)^T @ U with the same
  residual z, so A*(z) is kept for the second request).
"""
from __future__ import annotations

import numpy as np

import lowrank_hpc as lr


class EntrySampling:
    """P_Omega: the entries of an (n1, n2) matrix at (rows, cols)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
        self.rows, self.cols, self.shape = rows, cols, (int(shape[0]), int(shape[1]))
        self.num_measurements = int(rows.shape[0])
        self._pattern = lr.ops.SparsePattern(rows, cols, self.shape)

    def forward(self, X: np.ndarray) -> np.ndarray:
        return X[self.rows, self.cols]

    # factored_gd's spectral init hands over a transposed (F-ordered) V; the kernels want rows.
    def forward_factored(self, U: np.ndarray, V: np.ndarray) -> np.ndarray:
        return lr.ops.sampled_product(np.ascontiguousarray(U), np.ascontiguousarray(V), self.rows, self.cols,
                                      check_finite=False)

    def adjoint(self, z: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, dtype=z.dtype)
        np.add.at(out, (self.rows, self.cols), z)
        return out

    def adjoint_times(self, z: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self._pattern.times_dense(z, np.ascontiguousarray(B), check_finite=False)

    def adjoint_transpose_times(self, z: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self._pattern.times_dense(z, np.ascontiguousarray(B), transpose=True, check_finite=False)


class GaussianSensing:
    """y_k = <A_k, X> with A_k iid N(0, 1/m) entries, kept as one dense (m, n1*n2) matrix."""

    def __init__(self, m: int, shape: tuple[int, int], seed: int, dtype=np.float32):
        self.shape, self.num_measurements, self.seed = (int(shape[0]), int(shape[1])), int(m), seed
        rng = np.random.default_rng(seed)
        self.matrix = (rng.standard_normal((m, self.shape[0] * self.shape[1])) / np.sqrt(m)).astype(dtype)
        # (z, A*(z)) of the latest adjoint; keyed on identity: the solver never edits a residual in place.
        self._last: tuple = (None, None)

    def forward(self, X: np.ndarray) -> np.ndarray:
        return self.matrix @ X.reshape(-1)

    def forward_factored(self, U: np.ndarray, V: np.ndarray) -> np.ndarray:
        return self.forward(U @ V.T)

    def adjoint(self, z: np.ndarray) -> np.ndarray:
        if self._last[0] is not z:
            self._last = (z, (z @ self.matrix).reshape(self.shape))
        return self._last[1]

    def adjoint_times(self, z: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self.adjoint(z) @ B

    def adjoint_transpose_times(self, z: np.ndarray, B: np.ndarray) -> np.ndarray:
        return self.adjoint(z).T @ B
