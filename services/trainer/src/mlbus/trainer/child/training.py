"""Building and fitting estimators: built-in algorithms by name, or a user's script.

Built-ins that grow in steps (random forests, histogram gradient boosting: warm-started in
tenths; MLPs: one ``partial_fit`` epoch at a time) report validation metrics per step, so
their history is recorded and a tuning job can stop a bad trial early.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mlbus.trainer.child.errors import JobFailed
from mlbus.trainer.domain.algorithms import Algorithm, Task

#: Called with (step, metrics) after each step of a stepwise fit; returns nothing.
Reporter = Callable[[int, dict[str, float]], None]
#: Computes validation metrics of an estimator (used per step).
Evaluator = Callable[[Any], dict[str, float]]


def parse_value(text: str) -> Any:
    """A hyperparameter string as a Python value: true/false, none/null, int, float, JSON,
    ``64,32`` (a tuple of numbers), else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    if "," in text:
        parts = [p.strip() for p in text.split(",")]
        try:
            return tuple(int(p) for p in parts)
        except ValueError:
            try:
                return tuple(float(p) for p in parts)
            except ValueError:
                pass
    return text


def parse_hyperparameters(values: dict[str, str]) -> dict[str, Any]:
    """Every hyperparameter string parsed with :func:`parse_value`."""
    return {name: parse_value(value) for name, value in values.items()}


def estimator_class(algorithm: Algorithm) -> type[Any]:
    """Import the class of a built-in."""
    module, _, name = algorithm.class_path.rpartition(".")
    try:
        cls: type[Any] = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise JobFailed(f"algorithm {algorithm.name}: {module} is not installed ({exc})") from exc
    return cls


def build(algorithm: Algorithm, hyperparameters: dict[str, Any], seed: int) -> Any:
    """An unfitted estimator with ``hyperparameters``; JobFailed naming an unknown one."""
    cls = estimator_class(algorithm)
    known = set(inspect.signature(cls.__init__).parameters) - {"self", "args", "kwargs"}
    if algorithm.class_path.startswith(("xgboost.", "lightgbm.")):
        known |= set(cls().get_params())
    unknown = sorted(set(hyperparameters) - known)
    if unknown:
        raise JobFailed(
            f"hyperparameter {unknown[0]!r}: not a parameter of {cls.__name__} "
            f"(it takes {', '.join(sorted(known))})"
        )
    params = dict(hyperparameters)
    if "random_state" in known and "random_state" not in params:
        params["random_state"] = seed
    if algorithm.class_path.startswith("lightgbm.") and "verbose" not in params:
        params["verbose"] = -1
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise JobFailed(f"hyperparameters of {cls.__name__}: {exc}") from exc


def _steps(total: int, count: int = 10) -> list[int]:
    step = max(1, total // count)
    points = list(range(step, total, step))
    return [*points, total]


def fit_builtin(
    algorithm: Algorithm,
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    evaluate: Evaluator,
    report: Reporter,
) -> dict[str, list[float]]:
    """Fit ``estimator``; per-step validation metrics go to ``report``. Returns extra
    history series the library records itself (e.g. XGBoost's evaluation log)."""
    name = algorithm.class_path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if algorithm.iterations == "max_iter" and name.startswith("sklearn.neural_network"):
                _fit_epochs(algorithm, estimator, x, y, evaluate, report)
                return {"training_loss": [float(v) for v in getattr(estimator, "loss_curve_", [])]}
            if algorithm.iterations:
                total = int(estimator.get_params()[algorithm.iterations])
                estimator.set_params(warm_start=True)
                for step, value in enumerate(_steps(total), start=1):
                    estimator.set_params(**{algorithm.iterations: value})
                    estimator.fit(x, y)
                    report(step, evaluate(estimator))
                    if "HistGradientBoosting" in name and estimator.n_iter_ < value:
                        break  # its own early stopping ended the boosting
                return {}
            if name.startswith("xgboost."):
                estimator.fit(x, y, eval_set=[(x_valid, y_valid)], verbose=False)
                logs = estimator.evals_result().get("validation_0", {})
                return {f"validation_{k}": [float(v) for v in vs] for k, vs in logs.items()}
            if name.startswith("lightgbm."):
                estimator.fit(x, y, eval_set=[(x_valid, y_valid)])
                logs = getattr(estimator, "evals_result_", {}).get("valid_0", {})
                return {f"validation_{k}": [float(v) for v in vs] for k, vs in logs.items()}
            estimator.fit(x, y)
        except (ValueError, TypeError) as exc:
            raise JobFailed(f"training {algorithm.name} failed: {exc}") from exc
    return {}


def _fit_epochs(
    algorithm: Algorithm,
    estimator: Any,
    x: np.ndarray,
    y: np.ndarray,
    evaluate: Evaluator,
    report: Reporter,
) -> None:
    # partial_fit runs one epoch per call; stop like fit() does: after n_iter_no_change
    # epochs without the training loss improving by tol.
    params = estimator.get_params()
    epochs = int(params["max_iter"])
    patience = int(params.get("n_iter_no_change", 10))
    tol = float(params.get("tol", 1e-4))
    classes = np.unique(y) if algorithm.task == "classification" else None
    best = np.inf
    stale = 0
    for epoch in range(1, epochs + 1):
        if classes is not None:
            estimator.partial_fit(x, y, classes=classes)
        else:
            estimator.partial_fit(x, y)
        report(epoch, evaluate(estimator))
        loss = float(estimator.loss_)
        if loss > best - tol:
            stale += 1
            if stale >= patience:
                break
        else:
            stale = 0
        best = min(best, loss)


def load_script(path: str) -> Any:
    """Import a user's Python file as a module."""
    file = Path(path)
    if not file.is_file():
        raise JobFailed(f"script {path}: no such file")
    spec = importlib.util.spec_from_file_location("mlbus_user_script", file)
    if spec is None or spec.loader is None:
        raise JobFailed(f"script {path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mlbus_user_script"] = module
    sys.path.insert(0, str(file.parent))
    spec.loader.exec_module(module)
    return module


def custom_train(script: str, data: Any, hyperparameters: dict[str, Any]) -> Any:
    """Run ``train(data, hyperparameters)`` of the user's script; the estimator it returns."""
    module = load_script(script)
    train = getattr(module, "train", None)
    if not callable(train):
        raise JobFailed(f"script {script}: defines no function train(data, hyperparameters)")
    estimator = train(data, hyperparameters)
    if estimator is None or not hasattr(estimator, "predict"):
        raise JobFailed(
            f"script {script}: train() returned {type(estimator).__name__}, expected a fitted "
            "estimator with predict()"
        )
    return estimator


def task_of(estimator: Any) -> Task:
    """Classification if the estimator knows classes, else regression."""
    from sklearn.base import is_classifier  # type: ignore[import-untyped]

    if is_classifier(estimator) or hasattr(estimator, "classes_"):
        return "classification"
    return "regression"
