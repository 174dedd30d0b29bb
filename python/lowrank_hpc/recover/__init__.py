"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves,
implicit-feedback ALS, Boolean matrix factorization (Elbmf), mixture matrix completion, recovery from column sketches,
lifted matrix sensing, mirror descent, group-lasso pruning."""
from ._driver import CheckpointError, CheckpointMismatchError
from ._result import RecoveryResult
from .als import als, batched_als
from .elbmf import batched_boolean_mf, boolean_mf
from .boolean_product import boolean_product
from .column_sketches import SKETCH_METHODS, from_column_sketches
from .batched_gd import BATCHED_METHODS, batched_factored_gd
from .factored_gd import METHODS, factored_gd
from .implicit_als import implicit_als
from .lifted_sensing import lifted_sensing, perturbed_completion
from .mirror_descent import MIRROR_MAPS, mirror_descent
from .mixture_completion import MixtureResult, mixture_completion
from .pruning import prune_and_finetune
from .soft_impute import observed_spectral_norm, soft_impute

__all__ = ["BATCHED_METHODS", "METHODS", "MIRROR_MAPS", "SKETCH_METHODS", "CheckpointError", "CheckpointMismatchError",
           "MixtureResult", "RecoveryResult", "als", "batched_als", "batched_boolean_mf", "batched_factored_gd",
           "boolean_mf", "boolean_product", "factored_gd", "from_column_sketches", "implicit_als", "lifted_sensing",
           "mirror_descent", "mixture_completion", "observed_spectral_norm", "perturbed_completion",
           "prune_and_finetune", "soft_impute"]
