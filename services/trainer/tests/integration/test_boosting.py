"""XGBoost and LightGBM, classifier and regressor each, on numeric and on categorical data:
trained with a few trees, converted through onnxmltools' converters (the categorical ones
inside the one-hot pipeline), parity-checked and registered; the registered artifact,
run by ONNX Runtime on the validation file, scores what the job reported."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_squared_error

from mlbus.trainer.v1 import events_pb2 as ev


def split_csv(frame: pd.DataFrame, tmp_path: Path, name: str) -> tuple[Path, Path]:
    """The first 80% of ``frame`` as the training file, the rest as the validation file."""
    cut = len(frame) * 4 // 5
    train, valid = tmp_path / f"{name}.csv", tmp_path / f"{name}-valid.csv"
    frame.iloc[:cut].to_csv(train, index=False)
    frame.iloc[cut:].to_csv(valid, index=False)
    return train, valid


def feed(session: ort.InferenceSession, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The session's inputs from a frame: the one matrix input, or one column per input."""
    inputs = session.get_inputs()
    if len(inputs) == 1 and inputs[0].name == "input":
        return {"input": frame.to_numpy(dtype=np.float32)}
    return {
        i.name: (
            frame[[i.name]].fillna("").to_numpy(dtype=object)
            if i.type == "tensor(string)"
            else frame[[i.name]].to_numpy(dtype=np.float32)
        )
        for i in inputs
    }


async def train_both(
    stack: Any, tmp_path: Path, library: str, trees: int, *, categorical: str
) -> dict[str, tuple[Any, pd.DataFrame, str]]:
    """Train ``<library>-classifier`` and ``-regressor`` at once, the ``categorical`` one
    on the mixed frame (string columns), the other on numeric data; each job with the
    validation frame and target it was given."""
    mixed = stack.mixed_frame(250, seed=21)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((250, 4))
    numeric = pd.DataFrame(x, columns=[f"x{i}" for i in range(4)])
    label = (x[:, 0] - x[:, 1] + 0.3 * rng.standard_normal(250) > 0).astype(int)
    y = 3 * x[:, 0] - 2 * x[:, 1] + 0.1 * rng.standard_normal(250) + 10
    data = {
        "classifier": (
            (mixed.drop(columns="revenue"), "churned")
            if categorical == "classifier"
            else (numeric.assign(label=label), "label")
        ),
        "regressor": (
            (mixed.drop(columns="churned"), "revenue")
            if categorical == "regressor"
            else (numeric.assign(y=y), "y")
        ),
    }
    hyperparameters = {"n_estimators": str(trees), "max_depth": "3", "learning_rate": "0.3"}
    submitted: dict[str, tuple[str, pd.DataFrame, str]] = {}
    for kind, (frame, target) in data.items():
        train, valid = split_csv(frame, tmp_path, f"{library}-{kind}")
        spec = stack.spec(
            train,
            validation_uri=str(valid),
            algorithm=f"{library}-{kind}",
            target_column=target,
            hyperparameters=hyperparameters,
            model_group=f"{library}-{kind}",
        )
        job = await stack.submit(spec, experiment=f"boosting-{library}")
        submitted[kind] = (job.job_id, pd.read_csv(valid), target)
    ended = await asyncio.gather(*(stack.wait(job_id) for job_id, _, _ in submitted.values()))
    return {
        kind: (job, frame, target)
        for (kind, (_, frame, target)), job in zip(submitted.items(), ended, strict=True)
    }


async def check_registered(stack: Any, job: Any, frame: pd.DataFrame, target: str) -> None:
    """The job completed with parity, and its registered model scores what it reported."""
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert job.metrics["parity_max_abs_diff"] < 1e-4
    version = await stack.registry.get_version(job.model_group, job.model_version)
    assert version.tags["mlbus.algorithm"] == job.spec.algorithm
    assert version.approval_status == "PENDING_MANUAL_APPROVAL"
    artifact = await stack.registry.read_artifact(job.model_group, job.model_version)
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    outputs = session.run(None, feed(session, frame.drop(columns=target)))
    if "classifier" in job.spec.algorithm:
        accuracy = accuracy_score(frame[target], outputs[0].ravel())
        assert accuracy == pytest.approx(job.metrics["accuracy"])
        assert accuracy > 0.75
    else:
        rmse = float(np.sqrt(mean_squared_error(frame[target], outputs[0].ravel())))
        assert rmse == pytest.approx(job.metrics["rmse"], rel=1e-4)
        assert job.metrics["r2"] > 0.8


async def test_xgboost_classifier_and_regressor(stack: Any, tmp_path: Path) -> None:
    jobs = await train_both(stack, tmp_path, "xgboost", 12, categorical="classifier")
    for job, frame, target in jobs.values():
        await check_registered(stack, job, frame, target)
    history = {k: {h.name: list(h.values) for h in job.history} for k, (job, _, _) in jobs.items()}
    # XGBoost's own evaluation log on the validation rows: one value per tree.
    assert len(history["classifier"]["validation_logloss"]) == 12
    assert len(history["regressor"]["validation_rmse"]) == 12
    classifier = await stack.registry.get_version(
        "xgboost-classifier", jobs["classifier"][0].model_version
    )
    assert [t.datatype for t in classifier.signature.inputs] == ["FP32", "BYTES", "FP32", "BYTES"]


async def test_lightgbm_classifier_and_regressor(stack: Any, tmp_path: Path) -> None:
    jobs = await train_both(stack, tmp_path, "lightgbm", 12, categorical="regressor")
    for job, frame, target in jobs.values():
        await check_registered(stack, job, frame, target)
    history = {k: {h.name: list(h.values) for h in job.history} for k, (job, _, _) in jobs.items()}
    assert len(history["classifier"]["validation_binary_logloss"]) == 12
    assert len(history["regressor"]["validation_l2"]) == 12
    regressor = await stack.registry.get_version(
        "lightgbm-regressor", jobs["regressor"][0].model_version
    )
    assert [t.name for t in regressor.signature.inputs] == [
        "tenure",
        "plan",
        "spend",
        "sales region",
    ]
