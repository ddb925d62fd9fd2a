"""Strict JSON for every output file and ``--json`` print.

JSON has no NaN or infinity: Python's :mod:`json` writes them as bare ``NaN`` /
``Infinity`` by default, which JavaScript's ``JSON.parse`` and most other parsers refuse.
Here a non-finite number becomes ``null``, numpy scalars and arrays become plain numbers
and lists, and writing refuses anything else that JSON cannot hold.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

__all__ = ["dumps", "strict"]


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None, numpy types made plain and
    tuples made lists (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, np.ndarray):
        return strict(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`strict` ``(value)``, refusing NaN and infinity."""
    return json.dumps(strict(value), allow_nan=False, **kwargs)
