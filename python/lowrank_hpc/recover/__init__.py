"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves."""
from ._driver import CheckpointError, CheckpointMismatchError
from ._result import RecoveryResult
from .als import als, batched_als
from .batched_gd import BATCHED_METHODS, batched_factored_gd
from .factored_gd import METHODS, factored_gd
from .soft_impute import observed_spectral_norm, soft_impute

__all__ = ["BATCHED_METHODS", "METHODS", "CheckpointError", "CheckpointMismatchError", "RecoveryResult", "als",
           "batched_als", "batched_factored_gd", "factored_gd", "observed_spectral_norm", "soft_impute"]
