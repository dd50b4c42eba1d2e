"""Endpoint configurations from option strings and YAML/JSON files: one vocabulary, clear
errors, and describe output that loads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mlbus.sdk.registry import (
    BatchingConfig,
    DataCaptureConfig,
    EndpointConfig,
    EndpointVariant,
    SpecError,
    load_spec,
)
from mlbus.sdk.registry.specs import (
    parse_key_values,
    shadow_from_mapping,
    spec_from_mapping,
    variant_from_mapping,
)


def test_parse_key_values() -> None:
    assert parse_key_values("a=1, b = x ,c=", what="v") == {"a": "1", "b": "x", "c": ""}
    with pytest.raises(SpecError, match="expected key=value, got 'b'"):
        parse_key_values("a=1,b", what="v")
    with pytest.raises(SpecError, match="'a' given twice"):
        parse_key_values("a=1,a=2", what="v")


def test_variant_short_and_long_keys_mean_the_same() -> None:
    short, _ = variant_from_mapping(
        {
            "name": "blue",
            "group": "churn",
            "version": "3",
            "weight": "90",
            "instances": "2",
            "mode": "Serverless",
            "max-concurrency": "8",
            "max-batch-size": "16",
            "max-queue-delay-us": "500",
        }
    )
    long, _ = variant_from_mapping(
        {
            "name": "blue",
            "model_group": "churn",
            "model_version": 3,
            "weight": 90.0,
            "instance_count": 2,
            "mode": "SERVERLESS",
            "max_concurrency": 8,
            "batching": {"max_batch_size": 16, "max_queue_delay_micros": 500},
        }
    )
    assert short == long
    assert short.batching == BatchingConfig(max_batch_size=16, max_queue_delay_micros=500)


def test_variant_defaults() -> None:
    variant, _ = variant_from_mapping({"group": "churn", "version": 3})
    assert variant == EndpointVariant(name="churn-v3", model_group="churn", model_version=3)
    assert (variant.weight, variant.instance_count, variant.mode) == (1.0, 1, "REALTIME")
    assert variant.batching is None
    assert variant.scale_to_zero_after_seconds == 0


@pytest.mark.parametrize(
    "key",
    [
        "scale_to_zero_after_seconds",
        "scale-to-zero-after-seconds",
        "scale_to_zero",
        "scale-to-zero",
        "scale_to_zero_after",
        "Scale-To-Zero-After",
    ],
)
def test_scale_to_zero_keys_mean_the_same(key: str) -> None:
    from_text, _ = variant_from_mapping({"group": "churn", "version": 3, key: "300"})
    from_file, _ = variant_from_mapping({"group": "churn", "version": 3, key: 300})
    assert from_text.scale_to_zero_after_seconds == 300
    assert from_file == from_text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 1}, "group= is required"),
        ({"group": "g"}, "version= is required"),
        ({"group": "g", "version": "three"}, "version must be an integer, got 'three'"),
        ({"group": "g", "version": 0}, "version must be >= 1"),
        ({"group": "g", "version": 1, "weight": "-1"}, "weight must be >= 0"),
        ({"group": "g", "version": 1, "mode": "batch"}, "mode must be realtime or serverless"),
        ({"group": "g", "version": 1, "colour": "red"}, "unknown key 'colour'"),
        ({"group": "g", "version": 1, "instances": "1.5"}, "instances must be an integer"),
        ({"group": "g", "version": True}, "version must be an integer"),
        (
            {"group": "g", "version": 1, "scale_to_zero": "-60"},
            "scale_to_zero_after_seconds must be >= 0, got -60",
        ),
        (
            {"group": "g", "version": 1, "scale_to_zero": "5m"},
            "scale_to_zero_after_seconds must be an integer, got '5m'",
        ),
        (
            {"group": "g", "version": 1, "scale_to_zero_after": 1.5},
            "scale_to_zero_after_seconds must be an integer, got 1.5",
        ),
        (
            {"group": "g", "version": 1, "scale_to_zero": 60, "scale_to_zero_after_seconds": 60},
            "'scale_to_zero_after_seconds' given twice",
        ),
    ],
)
def test_variant_errors_say_what_is_wrong(data: dict[str, object], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        variant_from_mapping(data, what="variant 1")


def test_shadow_flat_and_nested() -> None:
    flat = shadow_from_mapping({"name": "next", "group": "churn", "version": 4, "sampling": "10"})
    nested = shadow_from_mapping(
        {
            "variant": {"name": "next", "model_group": "churn", "model_version": 4},
            "sampling_percent": 10,
        }
    )
    assert flat == nested
    assert flat.sampling_percent == 10
    with pytest.raises(SpecError, match=r"sampling= .* is required"):
        shadow_from_mapping({"group": "churn", "version": 4})
    with pytest.raises(SpecError, match="between 0 and 100"):
        shadow_from_mapping({"group": "churn", "version": 4, "sampling": 150})


YAML_CONFIG = """
description: churn, blue/green
variants:
  - {name: blue, group: churn, version: 3, weight: 90, instances: 2}
  - name: green
    group: churn
    version: 4
    weight: 10
    mode: serverless
    max_concurrency: 4
    scale_to_zero: 900
shadow: {name: next, group: churn, version: 5, sampling: 10}
capture_percent: 5
"""


def test_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_file = tmp_path / "endpoint.yaml"
    yaml_file.write_text(YAML_CONFIG)
    spec = load_spec(yaml_file)
    assert [v.name for v in spec.variants] == ["blue", "green"]
    assert spec.variants[1].mode == "SERVERLESS"
    assert [v.scale_to_zero_after_seconds for v in spec.variants] == [0, 900]
    assert spec.shadow is not None
    assert spec.shadow.variant.model_version == 5
    assert spec.data_capture == DataCaptureConfig(sampling_percent=5)
    assert spec.description == "churn, blue/green"

    json_file = tmp_path / "endpoint.json"
    json_file.write_text(json.dumps(yaml.safe_load(YAML_CONFIG)))
    assert load_spec(json_file) == spec

    untyped = tmp_path / "endpoint.conf"
    untyped.write_text(YAML_CONFIG)
    assert load_spec(untyped) == spec


def test_describe_output_loads_back(tmp_path: Path) -> None:
    """``endpoints describe --json`` → edit → ``update -f``: resolved fields are ignored."""
    config = EndpointConfig(
        endpoint="churn",
        revision=3,
        variants=(
            EndpointVariant(
                name="blue",
                model_group="churn",
                model_version=3,
                batching=BatchingConfig(max_batch_size=8, max_queue_delay_micros=100),
                scale_to_zero_after_seconds=600,
                artifact={"uri": "file:///x", "sha256": "00" * 32},  # type: ignore[arg-type]
            ),
        ),
        data_capture=DataCaptureConfig(sampling_percent=1),
        created_by="alice",
    )
    path = tmp_path / "current.json"
    path.write_text(json.dumps(config.to_dict()))
    spec = load_spec(path)
    assert spec.variants[0].artifact is None
    assert spec.variants[0].batching == config.variants[0].batching
    assert spec.variants[0].scale_to_zero_after_seconds == 600
    assert spec.data_capture == config.data_capture


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "expected a mapping at the top level"),
        ({"variants": []}, "variants must be a non-empty list"),
        ({"variants": [{"group": "g", "version": 1}], "extra": 1}, "unknown key"),
        (
            {"variants": [{"group": "g", "version": "x"}]},
            r"variants\[1\]: version must be an integer",
        ),
        (
            {"variants": [{"name": "a", "group": "g", "version": 1}] * 2},
            "variant names must be unique; repeated: a",
        ),
        (
            {"variants": [{"group": "g", "version": 1}], "capture_percent": 1, "data_capture": {}},
            "not both",
        ),
    ],
)
def test_file_errors(document: object, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        spec_from_mapping(document)  # type: ignore[arg-type]


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("variants: [unclosed")
    with pytest.raises(SpecError, match=r"bad\.yaml: not valid yaml"):
        load_spec(path)
