"""Recovery solvers: factored gradient methods for sensing and completion, ALS, batched solves."""
from ._driver import CheckpointMismatchError
from ._result import RecoveryResult

__all__ = ["CheckpointMismatchError", "RecoveryResult"]
