"""Training on a CSV with string columns: the registered ONNX model takes the raw columns
(one input per column, strings for the categorical ones) and predicts what scikit-learn's
one-hot pipeline predicts; the baseline counts the categories."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from mlbus.trainer.v1 import events_pb2 as ev


def onnx_feed(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """The model's inputs: one [n, 1] tensor per column, strings for the categorical ones
    (a missing value is the empty string)."""
    feed: dict[str, np.ndarray] = {}
    for name in ("tenure", "plan", "spend", "sales region"):
        column = frame[[name]]
        if name in ("plan", "sales region"):
            feed[name] = column.fillna("").to_numpy(dtype=object)
        else:
            feed[name] = column.to_numpy(dtype=np.float32)
    return feed


async def test_string_columns_train_and_the_model_takes_them_raw(
    stack: Any, tmp_path: Path
) -> None:
    train = stack.mixed_frame(240, seed=11).drop(columns="revenue")
    validation = stack.mixed_frame(60, seed=12).drop(columns="revenue")
    # A plan the training rows never had: encoded as no plan at all, by both models.
    validation.loc[[0, 7], "plan"] = "enterprise"
    train.to_csv(tmp_path / "churn.csv", index=False)
    validation.to_csv(tmp_path / "churn-valid.csv", index=False)
    spec = stack.spec(
        tmp_path / "churn.csv",
        validation_uri=str(tmp_path / "churn-valid.csv"),
        algorithm="logistic-regression",
        target_column="churned",
        model_group="churn-categorical",
    )
    job = await stack.wait((await stack.submit(spec, experiment="categorical")).job_id)
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert job.metrics["accuracy"] > 0.8
    assert job.metrics["parity_max_abs_diff"] < 1e-4
    lines = await stack.logs(job.job_id)
    # plan: 3 categories; sales region: 3 and the empty string of the missing values.
    assert "categorical features plan, sales region: one-hot encoded into 7 columns" in lines

    version = await stack.registry.get_version("churn-categorical", job.model_version)
    assert version.signature is not None
    assert [(t.name, t.datatype, list(t.shape)) for t in version.signature.inputs] == [
        ("tenure", "FP32", [-1, 1]),
        ("plan", "BYTES", [-1, 1]),
        ("spend", "FP32", [-1, 1]),
        ("sales region", "BYTES", [-1, 1]),
    ]
    assert [t.name for t in version.signature.outputs] == ["label", "probabilities"]

    # The registered artifact, run on the raw columns, is the one-hot pipeline sklearn fits.
    artifact = await stack.registry.read_artifact("churn-categorical", job.model_version)
    session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    labels, probabilities = session.run(["label", "probabilities"], onnx_feed(validation))
    numeric, categorical = ["tenure", "spend"], ["plan", "sales region"]
    reference = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numeric", "passthrough", numeric),
                        ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical),
                    ]
                ),
            ),
            ("model", LogisticRegression(random_state=0)),
        ]
    )
    features = numeric + categorical
    reference.fit(train[features].fillna({"sales region": ""}), train["churned"])
    expected = validation[features].fillna({"sales region": ""})
    np.testing.assert_array_equal(labels.ravel(), reference.predict(expected))
    np.testing.assert_allclose(probabilities, reference.predict_proba(expected), atol=1e-4)

    # The baseline describes the categories of the training rows.
    baseline = json.loads(await stack.trainer.objects.read_bytes(version.baseline.uri))
    columns = {c["name"]: c for c in baseline["columns"]}
    plan = columns["plan"]
    assert (plan["type"], plan["role"], plan["count"], plan["missing"]) == (
        "categorical",
        "feature",
        240,
        0,
    )
    counts = train["plan"].value_counts()
    assert plan["frequencies"] == pytest.approx({n: counts[n] / 240 for n in counts.index})
    assert plan["distinct"] == 3
    assert plan["other_fraction"] == 0.0
    region = columns["sales region"]
    assert (region["missing"], region["missing_fraction"]) == (6, 6 / 240)
    present = train["sales region"].dropna().value_counts()
    assert region["frequencies"] == pytest.approx({n: present[n] / 234 for n in present.index})
    assert columns["tenure"]["type"] == "numeric"
