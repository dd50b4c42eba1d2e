"""Validation metrics: accuracy, F1, AUC and log-loss for classifiers; RMSE, MAE and R²
for regressors."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from sklearn import metrics as m  # type: ignore[import-untyped]


def classification(
    y_true: np.ndarray, labels: np.ndarray, proba: np.ndarray | None, classes: Any
) -> dict[str, float]:
    """Metrics of a classifier. F1 is binary for two classes (the second class positive),
    macro-averaged otherwise; AUC is one-vs-rest macro for more than two classes."""
    out: dict[str, float] = {"accuracy": float(m.accuracy_score(y_true, labels))}
    class_list = list(classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(class_list) == 2:
            out["f1"] = float(m.f1_score(y_true, labels, pos_label=class_list[1]))
        else:
            out["f1"] = float(m.f1_score(y_true, labels, average="macro"))
        if proba is not None:
            present = set(np.unique(y_true).tolist())
            try:
                if len(class_list) == 2 and len(present) == 2:
                    out["auc"] = float(m.roc_auc_score(y_true == class_list[1], proba[:, 1]))
                elif len(present) == len(class_list) > 2:
                    out["auc"] = float(
                        m.roc_auc_score(y_true, proba, multi_class="ovr", labels=class_list)
                    )
            except ValueError:
                pass
            clipped = np.clip(proba, 1e-15, 1 - 1e-15)
            clipped = clipped / clipped.sum(axis=1, keepdims=True)
            out["log_loss"] = float(m.log_loss(y_true, clipped, labels=class_list))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def regression(y_true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Metrics of a regressor."""
    y = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(predicted, dtype=np.float64).ravel()
    out = {
        "rmse": float(math.sqrt(m.mean_squared_error(y, p))),
        "mae": float(m.mean_absolute_error(y, p)),
    }
    if len(y) > 1:
        out["r2"] = float(m.r2_score(y, p))
    return {k: v for k, v in out.items() if math.isfinite(v)}
