"""Baseline statistics of the training data, per column, for monitoring to compare live
traffic against (schema in the trainer README)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

SCHEMA_VERSION = 1
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
HISTOGRAM_BINS = 20
#: Most categories listed per categorical column; the rest are summed as other_fraction.
MAX_CATEGORIES = 50


def _number(value: Any) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None


def column_statistics(column: pd.Series, role: str) -> dict[str, Any]:
    """Type, counts and distribution of one column."""
    count = len(column)
    missing = int(column.isna().sum())
    present = column.dropna()
    stats: dict[str, Any] = {
        "name": str(column.name),
        "role": role,
        "count": count,
        "missing": missing,
        "missing_fraction": (missing / count) if count else 0.0,
    }
    if pd.api.types.is_bool_dtype(column):
        stats["type"] = "boolean"
        values = present.astype(bool)
        stats["frequencies"] = {
            "true": float(values.mean()) if len(values) else 0.0,
            "false": float(1 - values.mean()) if len(values) else 0.0,
        }
        return stats
    if pd.api.types.is_numeric_dtype(column):
        values = present.to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        stats["type"] = "numeric"
        stats["dtype"] = str(column.dtype)
        if len(values) == 0:
            return stats
        stats.update(
            {
                "min": _number(values.min()),
                "max": _number(values.max()),
                "mean": _number(values.mean()),
                "std": _number(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "quantiles": {
                    f"{q:g}": _number(v)
                    for q, v in zip(QUANTILES, np.quantile(values, QUANTILES), strict=True)
                },
            }
        )
        counts, edges = np.histogram(values, bins=HISTOGRAM_BINS)
        stats["histogram"] = {
            "edges": [float(e) for e in edges],
            "counts": [int(c) for c in counts],
        }
        return stats
    values = present.astype(str)
    frequencies = values.value_counts(normalize=True, sort=True)
    top = frequencies.head(MAX_CATEGORIES)
    stats.update(
        {
            "type": "categorical",
            "distinct": int(values.nunique()),
            "frequencies": {str(k): float(v) for k, v in top.items()},
            "other_fraction": float(max(0.0, 1.0 - float(top.sum()))),
        }
    )
    return stats


def compute(
    frame: pd.DataFrame, *, target: str, features: list[str], dataset_uri: str, dataset_sha256: str
) -> dict[str, Any]:
    """The baseline document of a training frame."""
    columns = [column_statistics(frame[name], "feature") for name in features]
    if target in frame.columns:
        columns.append(column_statistics(frame[target], "target"))
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"uri": dataset_uri, "sha256": dataset_sha256, "rows": len(frame)},
        "target": target,
        "features": features,
        "columns": columns,
    }
