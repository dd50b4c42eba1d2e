"""Endpoint configurations written by people: from ``key=value,...`` option strings and
from YAML/JSON files, with the same field names in both.

Accepted variant keys (``-`` and ``_`` are interchangeable):

=====================================  ==============================================
``name``                               variant name (default ``<group>-v<version>``)
``group`` / ``model_group``            model group
``version`` / ``model_version``        version number (must be APPROVED)
``weight``                             relative traffic share (default 1)
``instances`` / ``instance_count``     worker instances (default 1)
``mode``                               ``realtime`` (default) or ``serverless``
``max_concurrency``                    requests in flight per instance (0 = default)
``max_batch_size``                     dynamic batching: largest batch
``max_queue_delay_us``                 dynamic batching: longest wait in microseconds
``batching``                           mapping of the two above (as the API returns it)
``scale_to_zero_after_seconds``        idle seconds (no real-time request, empty async
                                       and batch queues) before the router stops the
                                       workers until the next request (0 = never;
                                       serverless: the router's default); also
                                       ``scale_to_zero`` or ``scale_to_zero_after``
=====================================  ==============================================

A shadow variant takes the same keys plus ``sampling`` / ``sampling_percent`` (0-100), or
the API's shape ``{variant: {...}, sampling_percent: N}``; the registry refuses a non-zero
``scale_to_zero`` on it. A file holds::

    description: churn, blue/green
    variants:
      - {name: blue, group: churn, version: 3, weight: 90, instances: 2}
      - {name: green, group: churn, version: 4, weight: 10}
    shadow: {name: next, group: churn, version: 5, sampling: 10}
    capture_percent: 5        # or data_capture: {sampling_percent: 5}

so ``mlbus endpoints describe NAME --json`` output (its ``current_config``) loads back too:
resolved fields the registry fills in (artifact, signature, revision, ...) are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mlbus.sdk.registry.models import (
    BatchingConfig,
    DataCaptureConfig,
    EndpointSpec,
    EndpointVariant,
    ShadowVariant,
)

_VARIANT_ALIASES = {
    "group": "model_group",
    "version": "model_version",
    "instances": "instance_count",
    "max_queue_delay_us": "max_queue_delay_micros",
    "scale_to_zero": "scale_to_zero_after_seconds",
    "scale_to_zero_after": "scale_to_zero_after_seconds",
}
_BATCHING_KEYS = ("max_batch_size", "max_queue_delay_micros")
_VARIANT_KEYS = frozenset(
    {
        "name",
        "model_group",
        "model_version",
        "weight",
        "instance_count",
        "mode",
        "max_concurrency",
        "scale_to_zero_after_seconds",
        "batching",
        *_BATCHING_KEYS,
    }
)
#: What the registry fills in; present in describe output, ignored on input.
_RESOLVED_VARIANT_KEYS = frozenset({"artifact", "signature"})
_SPEC_KEYS = frozenset({"variants", "shadow", "data_capture", "capture_percent", "description"})
_RESOLVED_SPEC_KEYS = frozenset(
    {"endpoint", "revision", "created_by", "create_time", "rolled_back_from"}
)


class SpecError(ValueError):
    """An endpoint configuration (option string or file) is malformed; says where and why."""


def _key(raw: object) -> str:
    return str(raw).strip().lower().replace("-", "_")


def parse_key_values(text: str, *, what: str) -> dict[str, str]:
    """``"a=1,b=x"`` → ``{"a": "1", "b": "x"}``; :class:`SpecError` for a part without
    ``=``, an empty key or a repeated key."""
    result: dict[str, str] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpecError(f"{what}: expected key=value, got {part!r}")
        if key in result:
            raise SpecError(f"{what}: {key!r} given twice")
        result[key] = value.strip()
    return result


def _int(value: object, field: str, what: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{what}: {field} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip())
    except ValueError:
        raise SpecError(f"{what}: {field} must be an integer, got {value!r}") from None


def _float(value: object, field: str, what: str) -> float:
    if isinstance(value, bool):
        raise SpecError(f"{what}: {field} must be a number, got {value!r}")
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SpecError(f"{what}: {field} must be a number, got {value!r}") from None


def _non_negative(value: float, field: str, what: str) -> None:
    if value < 0:
        raise SpecError(f"{what}: {field} must be >= 0, got {value:g}")


def _percent(value: object, field: str, what: str) -> float:
    number = _float(value, field, what)
    if not 0 <= number <= 100:
        raise SpecError(f"{what}: {field} must be between 0 and 100, got {number:g}")
    return number


def variant_from_mapping(
    data: Mapping[str, Any], *, what: str = "variant", extra: frozenset[str] = frozenset()
) -> tuple[EndpointVariant, dict[str, Any]]:
    """A variant from a mapping with the keys documented above. Returns the variant and
    the entries named in ``extra`` (e.g. a shadow's ``sampling``)."""
    fields: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _key(raw_key)
        key = _VARIANT_ALIASES.get(key, key)
        if key in extra:
            extras[key] = value
            continue
        if key in _RESOLVED_VARIANT_KEYS:
            continue
        if key not in _VARIANT_KEYS:
            known = sorted(
                {*_VARIANT_KEYS, *_VARIANT_ALIASES, *extra} - set(_VARIANT_ALIASES.values())
            )
            raise SpecError(f"{what}: unknown key {raw_key!r}; expected one of {', '.join(known)}")
        if key in fields:
            raise SpecError(f"{what}: {key!r} given twice")
        fields[key] = value
    for required, hint in (("model_group", "group"), ("model_version", "version")):
        if fields.get(required) in (None, ""):
            raise SpecError(f"{what}: {hint}= is required")
    batching: dict[str, int] = {}
    nested = fields.pop("batching", None)
    if nested is not None:
        if not isinstance(nested, Mapping):
            raise SpecError(f"{what}: batching must be a mapping, got {nested!r}")
        for raw_key, value in nested.items():
            key = _VARIANT_ALIASES.get(_key(raw_key), _key(raw_key))
            if key not in _BATCHING_KEYS:
                raise SpecError(f"{what}: unknown batching key {raw_key!r}")
            batching[key] = _int(value, key, what)
    for key in _BATCHING_KEYS:
        if key in fields:
            batching[key] = _int(fields.pop(key), key, what)
    version = _int(fields["model_version"], "version", what)
    if version < 1:
        raise SpecError(f"{what}: version must be >= 1, got {version}")
    fields["model_version"] = version
    fields["model_group"] = str(fields["model_group"]).strip()
    for key in ("instance_count", "max_concurrency", "scale_to_zero_after_seconds"):
        if key in fields:
            fields[key] = _int(fields[key], key.replace("_count", "s"), what)
            _non_negative(fields[key], key, what)
    if "weight" in fields:
        fields["weight"] = _float(fields["weight"], "weight", what)
        _non_negative(fields["weight"], "weight", what)
    for key, number in batching.items():
        _non_negative(number, key, what)
    if "mode" in fields:
        mode = str(fields["mode"]).strip().upper()
        if mode not in ("REALTIME", "SERVERLESS"):
            raise SpecError(f"{what}: mode must be realtime or serverless, got {fields['mode']!r}")
        fields["mode"] = mode
    name = str(fields.get("name") or "").strip()
    fields["name"] = name or f"{fields['model_group']}-v{version}"
    if batching:
        fields["batching"] = BatchingConfig(**batching)
    try:
        return EndpointVariant(**fields), extras
    except ValidationError as exc:
        raise SpecError(f"{what}: {_first_error(exc)}") from None


def shadow_from_mapping(data: Mapping[str, Any], *, what: str = "shadow") -> ShadowVariant:
    """A shadow variant: variant keys plus ``sampling`` (or the API's nested shape)."""
    if "variant" in data:
        unknown = {_key(k) for k in data} - {"variant", "sampling_percent", "sampling"}
        if unknown:
            raise SpecError(f"{what}: unknown key(s) {', '.join(sorted(unknown))}")
        inner = data["variant"]
        if not isinstance(inner, Mapping):
            raise SpecError(f"{what}: variant must be a mapping")
        variant, _ = variant_from_mapping(inner, what=what)
        sampling = data.get("sampling_percent", data.get("sampling"))
    else:
        variant, extras = variant_from_mapping(
            data, what=what, extra=frozenset({"sampling", "sampling_percent"})
        )
        sampling = extras.get("sampling", extras.get("sampling_percent"))
    if sampling is None:
        raise SpecError(f"{what}: sampling= (percent of requests mirrored, 0-100) is required")
    return ShadowVariant(variant=variant, sampling_percent=_percent(sampling, "sampling", what))


def spec_from_mapping(data: Mapping[str, Any], *, what: str = "endpoint config") -> EndpointSpec:
    """An :class:`EndpointSpec` from a parsed YAML/JSON document."""
    if not isinstance(data, Mapping):
        raise SpecError(f"{what}: expected a mapping at the top level")
    unknown = {_key(k) for k in data} - _SPEC_KEYS - _RESOLVED_SPEC_KEYS
    if unknown:
        raise SpecError(
            f"{what}: unknown key(s) {', '.join(sorted(unknown))}; expected "
            f"{', '.join(sorted(_SPEC_KEYS))}"
        )
    fields = {_key(k): v for k, v in data.items()}
    raw_variants = fields.get("variants")
    if not isinstance(raw_variants, list) or not raw_variants:
        raise SpecError(f"{what}: variants must be a non-empty list")
    variants = []
    for index, item in enumerate(raw_variants, start=1):
        if not isinstance(item, Mapping):
            raise SpecError(f"{what}: variants[{index}] must be a mapping")
        variants.append(variant_from_mapping(item, what=f"{what}: variants[{index}]")[0])
    shadow = None
    if fields.get("shadow") is not None:
        if not isinstance(fields["shadow"], Mapping):
            raise SpecError(f"{what}: shadow must be a mapping")
        shadow = shadow_from_mapping(fields["shadow"], what=f"{what}: shadow")
    capture = None
    if "capture_percent" in fields and "data_capture" in fields:
        raise SpecError(f"{what}: give capture_percent or data_capture, not both")
    if fields.get("capture_percent") is not None:
        capture = DataCaptureConfig(
            sampling_percent=_percent(fields["capture_percent"], "capture_percent", what)
        )
    elif fields.get("data_capture") is not None:
        section = fields["data_capture"]
        if not isinstance(section, Mapping) or set(map(_key, section)) - {"sampling_percent"}:
            raise SpecError(f"{what}: data_capture must be {{sampling_percent: N}}")
        capture = DataCaptureConfig(
            sampling_percent=_percent(
                section.get("sampling_percent", 0), "data_capture.sampling_percent", what
            )
        )
    names = [v.name for v in variants] + ([shadow.variant.name] if shadow else [])
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SpecError(f"{what}: variant names must be unique; repeated: {', '.join(duplicates)}")
    return EndpointSpec(
        variants=tuple(variants),
        shadow=shadow,
        data_capture=capture,
        description=str(fields.get("description") or ""),
    )


def load_spec(path: str | Path) -> EndpointSpec:
    """An :class:`EndpointSpec` from a ``.yaml``/``.yml`` or ``.json`` file (any other
    suffix: tried as JSON, then YAML)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml(text)
        else:
            try:
                data = json.loads(text)
            except ValueError:
                data = _yaml(text)
    except ValueError as exc:
        raise SpecError(f"{path}: not valid {suffix.lstrip('.') or 'JSON/YAML'}: {exc}") from None
    return spec_from_mapping(data, what=str(path))


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"])
    return f"{location}: {error['msg']}" if location else str(error["msg"])
