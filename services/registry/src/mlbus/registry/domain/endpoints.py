"""Rules for endpoint configurations (what can be checked without the database).

Whether each referenced version exists and is APPROVED is checked by the use case, in the
transaction that stores the configuration.
"""

from __future__ import annotations

import math
from typing import Final

from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.models import EndpointConfigSpec, Variant, VariantMode
from mlbus.registry.domain.rules import (
    check_group_name,
    check_text,
    check_variant_name,
    check_version_number,
)

MAX_VARIANTS: Final = 10
MAX_INSTANCES: Final = 1000
MAX_CONCURRENCY: Final = 100_000
MAX_SCALE_TO_ZERO_SECONDS: Final = 7 * 24 * 3600
MAX_BATCH_SIZE: Final = 65_536
MAX_QUEUE_DELAY_MICROS: Final = 60_000_000
MAX_DESCRIPTION: Final = 4096


def _invalid(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", details={"field": field})


def _check_percent(value: float, field: str) -> None:
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise _invalid(field, f"expected a percentage from 0 to 100, got {value}")


def _check_variant(variant: Variant, field: str, *, shadow: bool) -> None:
    check_variant_name(variant.name, f"{field}.name")
    check_group_name(variant.model_group, f"{field}.model_group")
    check_version_number(variant.model_version, f"{field}.model_version")
    weight = variant.weight
    if shadow:
        if not math.isfinite(weight) or weight < 0:
            raise _invalid(f"{field}.weight", f"expected 0 or more, got {weight}")
    elif not math.isfinite(weight) or weight <= 0:
        raise _invalid(f"{field}.weight", f"expected a number > 0, got {weight}")
    count = variant.instance_count
    if variant.mode is VariantMode.REALTIME:
        if not 1 <= count <= MAX_INSTANCES:
            raise _invalid(
                f"{field}.instance_count",
                f"expected 1 to {MAX_INSTANCES} instances for a REALTIME variant, got {count}",
            )
    elif count != 0:
        raise _invalid(
            f"{field}.instance_count",
            f"expected 0 for a SERVERLESS variant (instances start on demand, bounded by "
            f"max_concurrency), got {count}",
        )
    if not 0 <= variant.max_concurrency <= MAX_CONCURRENCY:
        raise _invalid(
            f"{field}.max_concurrency",
            f"expected 0 (the worker's default) to {MAX_CONCURRENCY}, "
            f"got {variant.max_concurrency}",
        )
    idle = variant.scale_to_zero_after_seconds
    if not 0 <= idle <= MAX_SCALE_TO_ZERO_SECONDS:
        zero = "never" if variant.mode is VariantMode.REALTIME else "the router's default"
        raise _invalid(
            f"{field}.scale_to_zero_after_seconds",
            f"expected 0 ({zero}) to {MAX_SCALE_TO_ZERO_SECONDS} seconds, got {idle}",
        )
    if shadow and idle != 0:
        raise _invalid(
            f"{field}.scale_to_zero_after_seconds",
            f"expected 0 on a shadow variant (shadow variants are not scaled to zero), got {idle}",
        )
    batching = variant.batching
    if batching is not None:
        if not 0 <= batching.max_batch_size <= MAX_BATCH_SIZE:
            raise _invalid(
                f"{field}.batching.max_batch_size",
                f"expected 0 to {MAX_BATCH_SIZE} (0 or 1 disables batching), "
                f"got {batching.max_batch_size}",
            )
        if not 0 <= batching.max_queue_delay_micros <= MAX_QUEUE_DELAY_MICROS:
            raise _invalid(
                f"{field}.batching.max_queue_delay_micros",
                f"expected 0 to {MAX_QUEUE_DELAY_MICROS} microseconds, "
                f"got {batching.max_queue_delay_micros}",
            )


def validate_spec(spec: EndpointConfigSpec) -> EndpointConfigSpec:
    """Check ``spec`` field by field; returns it without registry-filled parts.

    Errors are INVALID_ARGUMENT naming the field, e.g. ``variants[1].weight: expected a
    number > 0, got 0.0``.
    """
    spec = spec.unresolved()
    if not spec.variants:
        raise _invalid("variants", "expected at least one production variant, got none")
    if len(spec.variants) > MAX_VARIANTS:
        raise _invalid(
            "variants", f"expected at most {MAX_VARIANTS} variants, got {len(spec.variants)}"
        )
    seen: dict[str, str] = {}
    for field, variant in spec.all_variants():
        _check_variant(variant, field, shadow=field.startswith("shadow"))
        if variant.name in seen:
            raise _invalid(
                f"{field}.name",
                f"variant names must be unique within an endpoint; {variant.name!r} is also "
                f"the name of {seen[variant.name]}",
            )
        seen[variant.name] = field
    if spec.shadow is not None:
        _check_percent(spec.shadow.sampling_percent, "shadow.sampling_percent")
    if spec.data_capture is not None:
        _check_percent(spec.data_capture.sampling_percent, "data_capture.sampling_percent")
    check_text(spec.description, "description", max_length=MAX_DESCRIPTION)
    return spec
