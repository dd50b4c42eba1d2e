"""The built-in algorithms and the metrics the trainer reports, by name.

Kept free of scikit-learn imports: the service validates names with this table, and only a
job's child process imports the libraries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Task = Literal["classification", "regression"]

CUSTOM: Final = "custom"


@dataclass(frozen=True, slots=True)
class Algorithm:
    """A built-in algorithm: its estimator class and what it predicts."""

    name: str
    class_path: str
    task: Task
    #: The estimator's parameter that counts iterations, when the trainer can report
    #: per-iteration metrics for it (warm-started in steps, or epochs of partial_fit).
    iterations: str = ""


BUILTINS: Final[dict[str, Algorithm]] = {
    a.name: a
    for a in (
        Algorithm("linear-regression", "sklearn.linear_model.LinearRegression", "regression"),
        Algorithm(
            "logistic-regression", "sklearn.linear_model.LogisticRegression", "classification"
        ),
        Algorithm(
            "random-forest-classifier",
            "sklearn.ensemble.RandomForestClassifier",
            "classification",
            "n_estimators",
        ),
        Algorithm(
            "random-forest-regressor",
            "sklearn.ensemble.RandomForestRegressor",
            "regression",
            "n_estimators",
        ),
        Algorithm(
            "hist-gradient-boosting-classifier",
            "sklearn.ensemble.HistGradientBoostingClassifier",
            "classification",
            "max_iter",
        ),
        Algorithm(
            "hist-gradient-boosting-regressor",
            "sklearn.ensemble.HistGradientBoostingRegressor",
            "regression",
            "max_iter",
        ),
        Algorithm(
            "mlp-classifier", "sklearn.neural_network.MLPClassifier", "classification", "max_iter"
        ),
        Algorithm("mlp-regressor", "sklearn.neural_network.MLPRegressor", "regression", "max_iter"),
        Algorithm("xgboost-classifier", "xgboost.XGBClassifier", "classification"),
        Algorithm("xgboost-regressor", "xgboost.XGBRegressor", "regression"),
        Algorithm("lightgbm-classifier", "lightgbm.LGBMClassifier", "classification"),
        Algorithm("lightgbm-regressor", "lightgbm.LGBMRegressor", "regression"),
    )
}
_BY_CLASS: Final = {a.class_path: a for a in BUILTINS.values()}

CLASSIFICATION_METRICS: Final = ("accuracy", "f1", "auc", "log_loss")
REGRESSION_METRICS: Final = ("rmse", "mae", "r2")
#: Metrics where smaller is better; every other metric is better larger.
MINIMIZED: Final = frozenset({"log_loss", "rmse", "mae"})
ALL_METRICS: Final = (*CLASSIFICATION_METRICS, *REGRESSION_METRICS)


def find(name: str) -> Algorithm | None:
    """The built-in called ``name`` (short name or class path), or None."""
    return BUILTINS.get(name) or _BY_CLASS.get(name)


def names() -> list[str]:
    """Every accepted algorithm name (built-ins and ``custom``)."""
    return [*BUILTINS, CUSTOM]


def default_direction(metric: str) -> Literal["maximize", "minimize"]:
    """How ``metric`` is optimised when a tuning job does not say."""
    return "minimize" if metric in MINIMIZED else "maximize"
