"""Numbers for reports: RMSE that is None when there is nothing to measure, and JSON that
never holds NaN or inf (``json.dumps(..., allow_nan=False)`` accepts what ``json_safe`` returns)."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np


def rmse(predicted: np.ndarray, actual: np.ndarray) -> Optional[float]:
    """Root mean squared error, or None for no entries (never NaN)."""
    if np.asarray(actual).size == 0:
        return None
    value = float(np.sqrt(np.mean((np.asarray(predicted, dtype=np.float64) - actual) ** 2)))
    return value if math.isfinite(value) else None


def json_safe(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python, and NaN/inf replaced by None."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
