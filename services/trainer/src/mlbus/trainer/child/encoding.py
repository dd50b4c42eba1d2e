"""How the feature columns become the model's input, in training and in the exported model.

Numeric (and boolean) feature columns only: the estimator takes the float matrix of the
columns in file order, and the ONNX model one input ``input``, FP32 ``[-1, n_features]``.

With categorical columns (strings, pandas categories, any other non-numeric dtype): the
ONNX model takes one input per feature column, named exactly as the column, FP32 ``[-1, 1]``
for a numeric column and STRING ``[-1, 1]`` for a categorical one (the layout in which the
SDK's Predictor sends a DataFrame and batch transform a CSV with a header). Inside, a
ColumnTransformer passes the numeric columns through and one-hot encodes the categorical
ones: ``OneHotEncoder(handle_unknown="ignore")`` over each column's ``max_categories`` most
frequent categories in the training rows, so a category not seen in training, or too rare
to be kept, encodes as all zeros. (Rare categories do not share an "infrequent" column:
skl2onnx cannot convert that for an encoder of one column.)
The estimator is fitted on the encoded matrix and the exported model is
``Pipeline([("columns", encoder), ("model", estimator)])``: the parity check compares that
pipeline, fed the raw columns, with the ONNX model fed the same columns.

A missing categorical value is the empty string, in training and for the model.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from mlbus.trainer.child.errors import JobFailed

INPUT_NAME = "input"
#: What a missing categorical value is, for the encoder and for the ONNX model.
MISSING_CATEGORY = ""


def is_numeric(column: pd.Series) -> bool:
    """Whether a column is a numeric (or boolean) feature; other columns are categorical."""
    return bool(pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


def _check_kind(column: pd.Series, name: str, what: str) -> None:
    if pd.api.types.is_datetime64_any_dtype(column) or pd.api.types.is_timedelta64_dtype(column):
        raise JobFailed(
            f"{what}: column {name!r} holds times ({column.dtype}); the model takes numbers and "
            "categories, so derive numeric features from it first (a processing job)"
        )


def _strings(column: pd.Series) -> np.ndarray:
    values = column.astype(object).where(column.notna(), MISSING_CATEGORY)
    return np.asarray([str(v) for v in values], dtype=object)


def _kept_categories(values: np.ndarray, most: int) -> np.ndarray:
    """The ``most`` most frequent values (ties by value), sorted."""
    names, counts = np.unique(values, return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))[:most]
    return np.asarray(sorted(names[i] for i in order), dtype=object)


@dataclass
class Encoder:
    """The feature columns' encoding (see the module docstring); :meth:`fit` builds one."""

    features: list[str]
    categorical: list[str]
    transformer: Any = None
    encoded_features: list[str] = field(default_factory=list)

    @property
    def numeric(self) -> list[str]:
        """The numeric feature columns, in file order."""
        categorical = set(self.categorical)
        return [f for f in self.features if f not in categorical]

    @classmethod
    def fit(cls, train: pd.DataFrame, features: list[str], *, max_categories: int) -> Encoder:
        """The encoder of ``features``, fitted on the training rows."""
        for name in features:
            _check_kind(train[name], name, "input")
        categorical = [f for f in features if not is_numeric(train[f])]
        encoder = cls(features=features, categorical=categorical)
        if not categorical:
            encoder.encoded_features = list(features)
            return encoder
        from sklearn.compose import ColumnTransformer  # type: ignore[import-untyped]
        from sklearn.preprocessing import OneHotEncoder  # type: ignore[import-untyped]

        features_frame = encoder.frame(train, "input")
        categories = [
            _kept_categories(features_frame[name].to_numpy(), max_categories)
            for name in categorical
        ]
        parts: list[tuple[str, Any, list[str]]] = []
        if encoder.numeric:
            parts.append(("numeric", "passthrough", encoder.numeric))
        parts.append(
            (
                "categorical",
                OneHotEncoder(categories=categories, handle_unknown="ignore", sparse_output=False),
                categorical,
            )
        )
        transformer = ColumnTransformer(parts, sparse_threshold=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            transformer.fit(features_frame)
        encoder.transformer = transformer
        encoder.encoded_features = [str(n) for n in transformer.get_feature_names_out()]
        return encoder

    def frame(self, frame: pd.DataFrame, what: str, *, float32: bool = False) -> pd.DataFrame:
        """The feature columns as the pipeline takes them: numeric ones as float64 (rounded
        to float32 when ``float32``, as the ONNX model sees them), categorical ones as
        strings."""
        out: dict[str, Any] = {}
        for name in self.features:
            if name not in frame.columns:
                raise JobFailed(f"{what}: column {name!r} is missing (the training data has it)")
            column = frame[name]
            if name in self.categorical:
                out[name] = _strings(column)
                continue
            _check_kind(column, name, what)
            if not is_numeric(column):
                raise JobFailed(
                    f"{what}: column {name!r} is not numeric ({column.dtype}), but it is "
                    "numeric in the training data"
                )
            values = column.to_numpy(dtype=np.float64)
            out[name] = values.astype(np.float32).astype(np.float64) if float32 else values
        return pd.DataFrame(out, index=frame.index)

    def matrix(self, frame: pd.DataFrame, what: str, *, float32: bool = False) -> np.ndarray:
        """The encoded float64 matrix the estimator is fitted on (and evaluated with)."""
        features = self.frame(frame, what, float32=float32)
        if self.transformer is None:
            matrix: np.ndarray = features.to_numpy(dtype=np.float64)
            return matrix
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoded: np.ndarray = np.asarray(self.transformer.transform(features), np.float64)
        return encoded

    def model_input(self, frame: pd.DataFrame, what: str) -> Any:
        """What the exported model (:meth:`model`) predicts from, with the float32 values the
        ONNX model sees: a float32 matrix, or the frame of raw columns."""
        if self.transformer is None:
            return np.ascontiguousarray(self.matrix(frame, what), dtype=np.float32)
        return self.frame(frame, what, float32=True)

    def model(self, estimator: Any) -> Any:
        """The model to export: ``estimator`` itself, or the encoder and it in a Pipeline."""
        if self.transformer is None:
            return estimator
        from sklearn.pipeline import Pipeline  # type: ignore[import-untyped]

        return Pipeline([("columns", self.transformer), ("model", estimator)])

    def onnx_inputs(self) -> list[tuple[str, Any]]:
        """The ONNX model's inputs as skl2onnx initial types."""
        from skl2onnx.common.data_types import (  # type: ignore[import-untyped]
            FloatTensorType,
            StringTensorType,
        )

        if self.transformer is None:
            return [(INPUT_NAME, FloatTensorType([None, len(self.features)]))]
        return [
            (
                name,
                StringTensorType([None, 1])
                if name in self.categorical
                else FloatTensorType([None, 1]),
            )
            for name in self.features
        ]

    def onnx_feed(self, frame: pd.DataFrame, what: str) -> dict[str, np.ndarray]:
        """The ONNX model's inputs for the rows of ``frame``."""
        if self.transformer is None:
            return {INPUT_NAME: self.model_input(frame, what)}
        features = self.frame(frame, what, float32=True)
        feed: dict[str, np.ndarray] = {}
        for name in self.features:
            values = features[name].to_numpy()
            dtype = object if name in self.categorical else np.float32
            feed[name] = np.ascontiguousarray(values.astype(dtype).reshape(-1, 1))
        return feed
