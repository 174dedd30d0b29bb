"""Past one machine: many problems, or one big completion, on a Dask cluster (the ``[dask]`` extra).

- :func:`solve_batch`: B independent problems in chunks, each chunk one batched solver call on a
  worker (its GPU when it has one); results in input order, a failed problem's error in its slot.
- :class:`DistributedALS`: one ALS completion with its rows and columns sharded over the
  workers, the factors exchanged every half-step; the same result as
  :func:`lowrank_hpc.recover.als`.

Dask (``dask.distributed``) is imported only when a client is used: ``solve_batch(...,
client=None)`` runs in this process without it.
"""
from .als import DistributedALS
from .batch import solve_batch
from .factors import DistributedFactor
from .failure import ProblemFailure

__all__ = ["DistributedALS", "DistributedFactor", "ProblemFailure", "solve_batch"]
