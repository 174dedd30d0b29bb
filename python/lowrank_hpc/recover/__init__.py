"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves."""
from ._driver import CheckpointMismatchError
from ._result import RecoveryResult
from .als import als, batched_als

__all__ = ["CheckpointMismatchError", "RecoveryResult", "als", "batched_als"]
