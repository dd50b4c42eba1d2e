"""Endpoint configuration rules: each invalid field is named, valid specs pass unchanged
(minus registry-filled parts)."""

from __future__ import annotations

from typing import Any

import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.endpoints import validate_spec
from mlbus.registry.domain.models import (
    ArtifactRef,
    BatchingConfig,
    DataCapture,
    EndpointConfigSpec,
    ShadowVariant,
    Signature,
    Variant,
    VariantMode,
)


def variant(name: str = "blue", **fields: Any) -> Variant:
    values: dict[str, Any] = {
        "model_group": "churn",
        "model_version": 1,
        "weight": 1.0,
        "instance_count": 1,
    }
    values.update(fields)
    return Variant(name=name, **values)


def test_a_valid_spec_passes_without_registry_filled_parts() -> None:
    filled = variant(
        artifact=ArtifactRef(uri="u", sha256="s", size_bytes=1, content_type="c"),
        signature=Signature(opset=17),
    )
    spec = EndpointConfigSpec(
        variants=(
            filled,
            variant("green", weight=0.5, mode=VariantMode.SERVERLESS, instance_count=0),
            variant("idle", scale_to_zero_after_seconds=604800),
        ),
        shadow=ShadowVariant(variant=variant("mirror", weight=0), sampling_percent=100),
        data_capture=DataCapture(sampling_percent=0),
    )
    checked = validate_spec(spec)
    assert checked.variants[0].artifact is None
    assert checked.variants[0].signature is None
    assert checked.variants[1].mode is VariantMode.SERVERLESS
    assert checked.variants[2].scale_to_zero_after_seconds == 604800


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (EndpointConfigSpec(), "variants: expected at least one"),
        (
            EndpointConfigSpec(variants=tuple(variant(f"v{i}") for i in range(11))),
            "variants: expected at most 10",
        ),
        (EndpointConfigSpec(variants=(variant(weight=-1),)), "variants[0].weight"),
        (EndpointConfigSpec(variants=(variant(weight=float("nan")),)), "variants[0].weight"),
        (
            EndpointConfigSpec(variants=(variant(instance_count=1001),)),
            "variants[0].instance_count",
        ),
        (
            EndpointConfigSpec(variants=(variant(max_concurrency=-1),)),
            "variants[0].max_concurrency",
        ),
        (
            EndpointConfigSpec(variants=(variant(scale_to_zero_after_seconds=-1),)),
            "variants[0].scale_to_zero_after_seconds: expected 0 (never) to 604800 seconds, got -1",
        ),
        (
            EndpointConfigSpec(
                variants=(
                    variant(
                        mode=VariantMode.SERVERLESS,
                        instance_count=0,
                        scale_to_zero_after_seconds=604801,
                    ),
                )
            ),
            "variants[0].scale_to_zero_after_seconds: expected 0 (the router's default) to "
            "604800 seconds, got 604801",
        ),
        (
            EndpointConfigSpec(
                variants=(variant(),),
                shadow=ShadowVariant(
                    variant=variant("m", scale_to_zero_after_seconds=300), sampling_percent=10
                ),
            ),
            "shadow.variant.scale_to_zero_after_seconds: expected 0 on a shadow variant "
            "(shadow variants are not scaled to zero), got 300",
        ),
        (EndpointConfigSpec(variants=(variant(model_group="Bad"),)), "variants[0].model_group"),
        (
            EndpointConfigSpec(variants=(variant(batching=BatchingConfig(max_batch_size=70000)),)),
            "variants[0].batching.max_batch_size",
        ),
        (
            EndpointConfigSpec(
                variants=(variant(),),
                shadow=ShadowVariant(variant=variant("blue"), sampling_percent=10),
            ),
            "shadow.variant.name: variant names must be unique",
        ),
        (
            EndpointConfigSpec(
                variants=(variant(),),
                shadow=ShadowVariant(variant=variant("m", weight=-1), sampling_percent=10),
            ),
            "shadow.variant.weight",
        ),
        (
            EndpointConfigSpec(
                variants=(variant(),), data_capture=DataCapture(sampling_percent=101)
            ),
            "data_capture.sampling_percent",
        ),
        (EndpointConfigSpec(variants=(variant(),), description="x" * 4097), "description"),
    ],
)
def test_invalid_fields_are_named(spec: EndpointConfigSpec, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_spec(spec)
    assert caught.value.message.startswith(message)
