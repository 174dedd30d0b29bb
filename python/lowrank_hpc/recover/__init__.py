"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves,
Boolean matrix factorization (Elbmf)."""
from ._driver import CheckpointError, CheckpointMismatchError
from ._result import RecoveryResult
from .als import als, batched_als
from .elbmf import batched_boolean_mf, boolean_mf
from .boolean_product import boolean_product
from .batched_gd import BATCHED_METHODS, batched_factored_gd
from .factored_gd import METHODS, factored_gd
from .soft_impute import observed_spectral_norm, soft_impute

__all__ = ["BATCHED_METHODS", "METHODS", "CheckpointError", "CheckpointMismatchError", "RecoveryResult", "als",
           "batched_als", "batched_boolean_mf", "batched_factored_gd", "boolean_mf", "boolean_product",
           "factored_gd", "observed_spectral_norm", "soft_impute"]
from .pruning import prune_and_finetune

__all__ += ["prune_and_finetune"]
from .mirror_descent import MIRROR_MAPS, mirror_descent

__all__ += ["MIRROR_MAPS", "mirror_descent"]
