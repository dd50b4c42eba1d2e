"""A training job inside the child: load, split, fit, evaluate, export, check parity,
compute the baseline."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mlbus.trainer.child import baseline, data, export, metrics, training
from mlbus.trainer.child.errors import JobFailed
from mlbus.trainer.child.protocol import BASELINE_FILE, MODEL_FILE, Result, Task, emit, say
from mlbus.trainer.domain import algorithms


def _evaluator(task: str, x_valid: np.ndarray, y_valid: np.ndarray) -> training.Evaluator:
    x32 = x_valid.astype(np.float32)

    def evaluate(estimator: Any) -> dict[str, float]:
        return _metrics(estimator, task, x32, y_valid)

    return evaluate


def _metrics(estimator: Any, task: str, inputs: Any, y_valid: np.ndarray) -> dict[str, float]:
    if task == "classification":
        labels = np.asarray(estimator.predict(inputs)).ravel()
        proba = (
            np.asarray(estimator.predict_proba(inputs))
            if hasattr(estimator, "predict_proba")
            else None
        )
        classes = getattr(export._final_step(estimator), "classes_", np.unique(y_valid))
        return metrics.classification(y_valid, labels, proba, classes)
    return metrics.regression(y_valid, np.asarray(estimator.predict(inputs)))


def run_training(task: Task) -> Result:
    """Run a training job (built-in or custom algorithm) end to end."""
    started = time.monotonic()
    work_dir = Path(task.work_dir)
    emit("phase", phase="loading")
    frame = data.load_table(task.input_path)
    validation = data.load_table(task.validation_path) if task.validation_path else None
    train, valid = data.split(
        frame, validation, fraction=task.validation_fraction or 0.2, seed=task.seed
    )
    prepared = data.prepare(train, valid, task.target_column, max_categories=task.max_categories)
    features, encoder = prepared.features, prepared.encoder
    x, y = prepared.x_train, prepared.y_train
    x_valid, y_valid = prepared.x_validation, prepared.y_validation
    say(
        f"loaded {len(train)} training and {len(valid)} validation rows, "
        f"{len(features)} features, target {task.target_column!r}"
    )
    if encoder.categorical:
        say(
            f"categorical features {', '.join(encoder.categorical)}: one-hot encoded into "
            f"{len(encoder.encoded_features) - len(encoder.numeric)} columns"
        )
    hyperparameters = training.parse_hyperparameters(task.hyperparameters)
    history: dict[str, list[float]] = {}

    def report(step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            history.setdefault(f"validation_{name}", []).append(float(value))
        emit("iteration", step=step, metrics=values)

    emit("phase", phase="training")
    if task.algorithm == algorithms.CUSTOM:

        def custom_report(step: int, **values: float) -> None:
            report(step, {k: float(v) for k, v in values.items()})

        training_data = data.TrainingData(
            train=train,
            validation=valid,
            target=task.target_column,
            features=features,
            X_train=x,
            y_train=y,
            X_validation=x_valid,
            y_validation=y_valid,
            report=custom_report,
            categorical=list(encoder.categorical),
            encoded_features=list(encoder.encoded_features),
            checkpoint_dir=task.checkpoint_dir,
        )
        say(f"training custom algorithm from {task.script_path}")
        estimator = training.custom_train(task.script_path, training_data, hyperparameters)
        kind = training.task_of(estimator)
    else:
        algorithm = algorithms.find(task.algorithm)
        if algorithm is None:
            raise JobFailed(f"unknown algorithm {task.algorithm!r}")
        kind = algorithm.task
        if kind == "classification" and algorithm.class_path.startswith("xgboost."):
            classes = np.unique(y)
            if not (
                np.issubdtype(classes.dtype, np.integer)
                and (classes == np.arange(len(classes))).all()
            ):
                raise JobFailed(
                    f"{algorithm.name}: class labels must be the integers 0..n-1, got "
                    f"{classes[:5].tolist()}"
                )
        estimator = training.build(algorithm, hyperparameters, task.seed)
        say(f"training {algorithm.name} ({type(estimator).__name__})")
        history.update(
            training.fit_builtin(
                algorithm,
                estimator,
                x,
                y,
                x_valid,
                y_valid,
                _evaluator(kind, x_valid, y_valid),
                report,
            )
        )
    fit_seconds = time.monotonic() - started
    # With categorical columns: the encoder and the estimator in one Pipeline taking the
    # raw columns, which is what is exported and checked.
    full = encoder.model(estimator)
    emit("phase", phase="evaluating")
    values = _metrics(full, kind, encoder.model_input(valid, "validation"), y_valid)
    say("validation " + ", ".join(f"{k}={v:.6g}" for k, v in values.items()))

    emit("phase", phase="exporting")
    model = export.to_onnx(full, encoder, kind)
    parity = export.check_parity(
        full, model, encoder, valid, kind, atol=task.parity_atol, rtol=task.parity_rtol
    )
    say(
        f"ONNX parity on {parity.rows} validation rows: largest difference "
        f"{parity.max_abs_diff:.3g}"
    )
    (work_dir / MODEL_FILE).write_bytes(model)

    emit("phase", phase="baseline")
    stats = baseline.compute(
        train,
        target=task.target_column,
        features=features,
        dataset_uri=task.dataset_uri,
        dataset_sha256=task.dataset_sha256,
    )
    (work_dir / BASELINE_FILE).write_text(json.dumps(stats, indent=1))
    used = {k: str(v) for k, v in task.hyperparameters.items()}
    return Result(
        ok=True,
        task=kind,
        metrics={**values, "fit_seconds": fit_seconds},
        history=history,
        hyperparameters=used,
        parity={"rows": parity.rows, "max_abs_diff": parity.max_abs_diff},
        model_file=MODEL_FILE,
        baseline_file=BASELINE_FILE,
    )
