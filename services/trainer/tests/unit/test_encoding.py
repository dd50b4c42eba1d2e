"""Categorical columns in the child's own code, in-process: the one-hot encoder, the export
of the encoder-and-estimator pipeline with inputs named as the columns, and the parity
check on raw columns (real scikit-learn, skl2onnx and ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlbus.trainer.child import export
from mlbus.trainer.child.data import prepare
from mlbus.trainer.child.errors import JobFailed

#: Rows per city in every 300 rows: the first three are common, the other nine rare.
CITY_COUNTS = (100, 70, 50, 20, 15, 12, 10, 8, 6, 4, 3, 2)


def frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cities = [f"city {i}" for i, n in enumerate(CITY_COUNTS) for _ in range(n)]
    city = rng.permutation(np.resize(np.array(cities), rows))
    x = rng.standard_normal(rows)
    effect = {f"city {i}": (i % 3) - 1.0 for i in range(len(CITY_COUNTS))}
    y = x + np.array([effect[c] for c in city]) + 0.1 * rng.standard_normal(rows)
    return pd.DataFrame({"x": x, "city": city, "y": y, "positive": (y > 0).astype(int)})


def test_rare_and_unseen_categories_encode_as_zeros_and_parity_holds() -> None:
    train, valid = frame(300, seed=1), frame(80, seed=2)
    valid.loc[:4, "city"] = "atlantis"  # never seen in training
    prepared = prepare(
        train.drop(columns="y"), valid.drop(columns="y"), "positive", max_categories=4
    )
    encoder = prepared.encoder
    assert encoder.categorical == ["city"]
    # x, then a column for each of the 4 most frequent cities.
    assert encoder.encoded_features == [
        "numeric__x",
        "categorical__city_city 0",
        "categorical__city_city 1",
        "categorical__city_city 2",
        "categorical__city_city 3",
    ]
    assert prepared.x_train.shape == (300, 5)
    for i in range(4):
        column = (train["city"] == f"city {i}").to_numpy(dtype=float)
        np.testing.assert_array_equal(prepared.x_train[:, 1 + i], column)
    # The other 8 cities, like atlantis that training never saw, are no city at all.
    kept = train["city"].isin([f"city {i}" for i in range(4)]).to_numpy()
    assert (prepared.x_train[~kept, 1:] == 0).all()
    assert (prepared.x_validation[:5, 1:] == 0).all()

    estimator = encoder.model(LogisticRegression().fit(prepared.x_train, prepared.y_train))
    model = export.to_onnx(estimator, encoder, "classification")
    parity = export.check_parity(
        estimator, model, encoder, valid, "classification", atol=1e-4, rtol=1e-3
    )
    assert parity.rows == 80
    assert parity.max_abs_diff < 1e-5


def test_a_column_named_as_a_model_output_is_refused() -> None:
    train = frame(100, seed=3).drop(columns="positive").rename(columns={"x": "variable"})
    prepared = prepare(train, train, "y", max_categories=10)
    estimator = prepared.encoder.model(LinearRegression().fit(prepared.x_train, prepared.y_train))
    with pytest.raises(JobFailed) as failure:
        export.to_onnx(estimator, prepared.encoder, "regression")
    assert str(failure.value) == (
        "feature column 'variable' has the name of an output of the ONNX model (outputs: "
        "variable), whose inputs are named as the columns: rename the column"
    )


def test_only_categorical_columns_and_names_that_are_not_identifiers() -> None:
    train = frame(200, seed=4)[["city", "y"]].rename(columns={"city": "home city (2024)"})
    valid = frame(50, seed=5)[["city", "y"]].rename(columns={"city": "home city (2024)"})
    prepared = prepare(train, valid, "y", max_categories=20)
    estimator = prepared.encoder.model(LinearRegression().fit(prepared.x_train, prepared.y_train))
    model = export.to_onnx(estimator, prepared.encoder, "regression")
    parity = export.check_parity(
        estimator, model, prepared.encoder, valid, "regression", atol=1e-4, rtol=1e-3
    )
    assert parity.max_abs_diff < 1e-4

    inputs = onnx.load_from_string(model).graph.input
    assert [(i.name, i.type.tensor_type.elem_type) for i in inputs] == [
        ("home city (2024)", onnx.TensorProto.STRING)
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f: f.assign(when=pd.Timestamp("2024-01-01")),
            "input: column 'when' holds times (datetime64[us]); the model takes numbers and "
            "categories, so derive numeric features from it first (a processing job)",
        ),
        (
            lambda f: f.assign(x=f["x"].astype(str)),
            "validation: column 'x' is not numeric (str), but it is numeric in the training data",
        ),
    ],
)
def test_columns_the_model_cannot_take_are_named(change: object, message: str) -> None:
    train = frame(50, seed=6).drop(columns="positive")
    valid = frame(20, seed=7).drop(columns="positive")
    if "validation" in message:
        valid = change(valid)  # type: ignore[operator]
    else:
        train = change(train)  # type: ignore[operator]
    with pytest.raises(JobFailed) as failure:
        prepare(train, valid, "y", max_categories=10)
    assert str(failure.value) == message
