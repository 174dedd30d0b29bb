"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves."""
from ._driver import CheckpointMismatchError
from .batched_gd import BATCHED_METHODS, batched_factored_gd
from .factored_gd import METHODS, factored_gd
from ._result import RecoveryResult

__all__ = ["BATCHED_METHODS", "METHODS", "batched_factored_gd", "CheckpointMismatchError", "RecoveryResult", "factored_gd"]
