"""Pure rules: spec checks, hyperparameter parsing, grid values, baseline statistics."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.trainer.child.baseline import column_statistics
from mlbus.trainer.child.training import parse_value
from mlbus.trainer.domain.models import JobKind, JobSpec, Limits, ParameterRange, TuningSpec
from mlbus.trainer.domain.rules import LimitPolicy, check_spec
from mlbus.trainer.domain.tuning import grid_size, grid_values

POLICY = LimitPolicy(
    default_runtime_s=60, max_runtime_s=600, default_memory_bytes=2**30, max_memory_bytes=2**32
)


def training(**kw: object) -> JobSpec:
    values: dict[str, object] = {
        "algorithm": "random-forest-classifier",
        "input_uri": "/d.csv",
        "target_column": "y",
    }
    values.update(kw)
    return JobSpec(**values)  # type: ignore[arg-type]


def test_defaults_are_filled_in() -> None:
    spec = check_spec(JobKind.TRAINING, training(), POLICY)
    assert spec.limits == Limits(max_runtime_s=60, max_memory_bytes=2**30)
    assert spec.validation_fraction == 0.2


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"algorithm": "nope"}, "spec.algorithm: unknown algorithm 'nope'"),
        ({"algorithm": "custom"}, "spec.script_uri: required for algorithm 'custom'"),
        ({"input_uri": ""}, "spec.input_uri: required"),
        ({"target_column": ""}, "spec.target_column: required"),
        ({"validation_fraction": 1.0}, "spec.validation_fraction: expected 0 <= fraction < 1"),
        ({"model_group": "Bad_Name"}, "spec.model_group: expected 1-63 lower-case"),
        (
            {"limits": Limits(max_runtime_s=601)},
            "spec.limits.max_runtime: expected more than 0 and at most 600s",
        ),
    ],
)
def test_bad_specs_name_the_field(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        check_spec(JobKind.TRAINING, training(**kw), POLICY)


def test_tuning_needs_a_known_objective() -> None:
    tuning = TuningSpec(
        parameters=(ParameterRange(name="max_depth", kind="integer", min=1, max=5),),
        objective_metric="speed",
    )
    with pytest.raises(InvalidArgument, match=re.escape("spec.tuning.objective_metric")):
        check_spec(JobKind.TUNING, training(tuning=tuning), POLICY)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("0.5", 0.5),
        ("true", True),
        ("None", None),
        ("64,32", (64, 32)),
        ("[1, 2]", [1, 2]),
        ("gini", "gini"),
    ],
)
def test_hyperparameter_values(text: str, value: object) -> None:
    assert parse_value(text) == value


def test_grid_values() -> None:
    assert grid_values(ParameterRange(name="a", kind="integer", min=1, max=3), 5) == [1, 2, 3]
    assert grid_values(
        ParameterRange(name="b", kind="continuous", min=0.01, max=1, log=True), 3
    ) == pytest.approx([0.01, 0.1, 1])
    tuning = TuningSpec(
        parameters=(
            ParameterRange(name="a", kind="integer", min=1, max=3),
            ParameterRange(name="c", kind="categorical", values=("x", "y")),
        ),
        grid_points=3,
    )
    assert grid_size(tuning) == 6


def test_baseline_of_numeric_and_categorical_columns() -> None:
    numeric = column_statistics(pd.Series([1.0, 2.0, None, 4.0], name="n"), "feature")
    assert numeric["type"] == "numeric"
    assert numeric["missing_fraction"] == 0.25
    assert (numeric["min"], numeric["max"]) == (1.0, 4.0)
    assert sum(numeric["histogram"]["counts"]) == 3
    categorical = column_statistics(pd.Series(["a", "b", "a", None], name="c"), "feature")
    assert categorical["type"] == "categorical"
    assert categorical["frequencies"] == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert categorical["distinct"] == 2
