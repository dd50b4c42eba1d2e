"""Loading CSV and Parquet inputs and splitting them into training and validation sets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from mlbus.trainer.child.encoding import Encoder
from mlbus.trainer.child.errors import JobFailed

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".txt", ".tsv")


def load_table(path: str) -> pd.DataFrame:
    """A CSV or Parquet file as a DataFrame (format by suffix: .parquet/.pq, else CSV)."""
    file = Path(path)
    suffixes = [s.lower() for s in file.suffixes]
    try:
        if any(s in PARQUET_SUFFIXES for s in suffixes):
            return pd.read_parquet(file)
        sep = "\t" if ".tsv" in suffixes else ","
        return pd.read_csv(file, sep=sep)
    except FileNotFoundError:
        raise JobFailed(f"input {path}: no such file") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise JobFailed(f"input {path}: not a readable CSV or Parquet file: {exc}") from exc


@dataclass
class TrainingData:
    """What a custom ``train(data, hyperparameters)`` receives.

    ``train`` and ``validation`` are the whole frames (target included); ``X_*`` are float64
    matrices of the feature columns in ``features`` order, ``y_*`` the target values. With
    categorical columns (``categorical``), ``X_*`` are the encoded matrices (numeric columns,
    then one 0/1 column per category; names in ``encoded_features``) and the trainer puts the
    same encoder in front of the returned estimator for export.
    Call ``report(step, **metrics)`` to record per-iteration metrics.
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    target: str
    features: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_validation: np.ndarray
    y_validation: np.ndarray
    report: Any = field(default=None, repr=False)
    categorical: list[str] = field(default_factory=list)
    encoded_features: list[str] = field(default_factory=list)
    #: The job's checkpoint directory (also ``$MLBUS_CHECKPOINT_DIR``): files left there
    #: by an earlier attempt of the job are there again when it is run again.
    checkpoint_dir: str = ""


def split(
    frame: pd.DataFrame, validation: pd.DataFrame | None, *, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and validation frames: ``validation`` if given, else a random
    ``fraction`` of ``frame`` held out (seeded)."""
    if validation is not None:
        return frame, validation
    if len(frame) < 2:
        raise JobFailed(f"input: {len(frame)} rows; need at least 2 to hold out validation rows")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    count = max(1, round(len(frame) * fraction))
    count = min(count, len(frame) - 1)
    held = np.sort(order[:count])
    kept = np.sort(order[count:])
    return frame.iloc[kept].reset_index(drop=True), frame.iloc[held].reset_index(drop=True)


@dataclass
class Prepared:
    """The features of a training job and its training and validation arrays."""

    features: list[str]
    encoder: Encoder
    x_train: np.ndarray
    y_train: np.ndarray
    x_validation: np.ndarray
    y_validation: np.ndarray


def prepare(
    train: pd.DataFrame, validation: pd.DataFrame, target: str, *, max_categories: int
) -> Prepared:
    """Features (every column but the target, in file order), their encoder fitted on the
    training rows, and the encoded X / y arrays."""
    for what, frame in (("input", train), ("validation", validation)):
        if target not in frame.columns:
            raise JobFailed(
                f"{what}: target column {target!r} not found; columns are "
                f"{', '.join(map(str, frame.columns))}"
            )
    features = [str(c) for c in train.columns if c != target]
    if not features:
        raise JobFailed("input: no feature columns besides the target")
    if train[target].isna().any() or validation[target].isna().any():
        raise JobFailed(f"target column {target!r} has missing values")
    encoder = Encoder.fit(train, features, max_categories=max_categories)
    return Prepared(
        features=features,
        encoder=encoder,
        x_train=encoder.matrix(train, "input"),
        y_train=train[target].to_numpy(),
        x_validation=encoder.matrix(validation, "validation"),
        y_validation=validation[target].to_numpy(),
    )
