"""Values made fit for strict JSON, which has no NaN or infinity: a value that cannot be computed is ``null``.

Every JSON file the project writes (``metrics.json``, ``comparison.json``, ``train_config.json``, ...)
passes its numbers through here, so a missing value reads the same everywhere.
"""

from __future__ import annotations

import math

import numpy as np


def finite_or_none(v):
    """``v``, or None when it is None or a non-finite float (NaN, +-inf)."""
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def finite_float(v) -> float | None:
    """``float(v)``, or None when ``v`` is None or not finite."""
    return None if v is None else finite_or_none(float(v))


def json_safe(obj):
    """``obj`` with every non-finite float replaced by None, recursively; numpy scalars as Python values, keys as str."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return finite_or_none(obj)
