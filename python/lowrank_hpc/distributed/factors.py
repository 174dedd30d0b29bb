"""A factor of DistributedALS left on the workers (``gather=False``): for factors too big for the client."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import _shards


class DistributedFactor:
    """An (n, rank) factor held by the workers as row blocks: block s is rows
    [bounds[s], bounds[s + 1]), a Dask future on the worker that computed it.

    ``gather()`` brings it to the client as one numpy array; ``to_dask_array()`` wraps the blocks
    as a dask.array (one chunk per block) without moving them; ``blocks`` are the futures of
    :class:`numpy.ndarray` blocks (on the host, also on GPU workers).
    """

    def __init__(self, blocks: Sequence[Any], bounds: np.ndarray, rank: int, dtype: np.dtype, run: Any):
        self._run = run
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.dtype = np.dtype(dtype)
        self.shape = (int(self.bounds[-1]), int(rank))
        self.blocks = [run.submit(_shards.host_factor, block, name="factor-block") for block in blocks]

    def gather(self) -> np.ndarray:
        """The whole factor as one (n, rank) numpy array on the client."""
        return np.concatenate(self._run.gather(self.blocks))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        gathered = self.gather()
        return gathered if dtype is None else gathered.astype(dtype)

    def to_dask_array(self) -> Any:
        """A dask.array of shape (n, rank), one chunk per block, computed from the futures."""
        import dask
        import dask.array as da

        if not hasattr(self._run, "client"):  # computed in this process: the blocks are at hand
            return da.from_array(self.gather(), chunks=(tuple(np.diff(self.bounds)), self.shape[1]))
        parts = [da.from_delayed(dask.delayed(_identity)(block), shape=(int(hi - lo), self.shape[1]), dtype=self.dtype)
                 for block, lo, hi in zip(self.blocks, self.bounds[:-1], self.bounds[1:])]
        return da.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return f"DistributedFactor(shape={self.shape}, dtype={self.dtype}, blocks={len(self.blocks)})"


def _identity(x: Any) -> Any:
    return x
