"""lowrank_hpc: recover and factor low-rank matrices fast, on a CPU core, a GPU or a cluster.

>>> import numpy as np, lowrank_hpc as lr
>>> U, V = np.ones((3, 2)), np.ones((4, 2))
>>> lr.ops.sampled_product(U, V, np.array([0, 2]), np.array([1, 3]))
array([2., 2.])
"""
from . import ops, optim, recover, research, sensing
from ._backend import BackendUnavailableError, get_backend, set_backend, use_backend
from ._info import __version__, info
from .estimators import EBMF, NMF, BooleanMF, MatrixCompletion, MatrixSensing, MixtureCompletion, NotFittedError
from .recover import CheckpointError

__all__ = ["BackendUnavailableError", "BooleanMF", "CheckpointError", "EBMF", "MatrixCompletion", "MatrixSensing",
           "MixtureCompletion", "NMF", "NotFittedError", "__version__", "get_backend", "info", "ops", "optim",
           "recover", "research", "sensing", "set_backend", "use_backend"]
