"""Comparing a shadow variant's outputs with production's (the routed path never decodes
tensors; this runs off it, on mirrored responses only)."""

from __future__ import annotations

import math

import numpy as np

from mlbus.core.tensors import decode_outputs

__all__ = ["decode_outputs", "max_abs_diff"]


def max_abs_diff(production: dict[str, np.ndarray], shadow: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over production's outputs (numeric), 1.0 for a differing
    BYTES or BOOL output, infinity when an output is missing or its shape differs."""
    worst = 0.0
    for name, prod in production.items():
        other = shadow.get(name)
        if other is None or prod.shape != other.shape:
            return math.inf
        if prod.size == 0:
            continue
        if prod.dtype.kind in "Ob" or other.dtype.kind in "Ob":
            if not np.array_equal(prod, other):
                worst = max(worst, 1.0)
            continue
        delta = np.abs(prod.astype(np.float64) - other.astype(np.float64))
        if not np.isnan(delta).all():
            worst = max(worst, float(np.nanmax(delta)))
    return worst
