"""Naming and metadata rules. Each check returns the (normalised) value or raises
:class:`~mlbus.core.errors.InvalidArgument` naming the field and what was expected."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Final

from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.models import Lineage, ModelCard

#: Model group names: the rule the API contract states.
GROUP_NAME: Final = re.compile(r"[a-z][a-z0-9-]{0,62}")
#: Aliases: lower-case letters, digits and '-', not a number (that would read as a version).
ALIAS: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
#: Endpoint names become part of topic names; keep equal to mlbus.core.messaging.topics'.
ENDPOINT_NAME: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
VARIANT_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
SHA256: Final = re.compile(r"[0-9a-f]{64}")

MAX_ACTOR: Final = 256
MAX_KEY: Final = 128
MAX_TAG_VALUE: Final = 1024
MAX_PARAM_VALUE: Final = 4096
MAX_ENTRIES: Final = 256
MAX_TEXT: Final = 16 * 1024
MAX_REQUEST_ID: Final = 128
MAX_URI: Final = 2048


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in text)


def check_group_name(name: str, field: str = "model_group") -> str:
    """A model group name: 1-63 lower-case letters, digits or '-', starting with a letter."""
    if not GROUP_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field}: expected 1-63 lower-case letters, digits or '-' starting with a "
            f"letter, got {name!r}",
            details={"field": field},
        )
    return name


def check_alias(alias: str, field: str = "alias") -> str:
    """An alias: 1-63 lower-case letters, digits or '-', not a plain number."""
    if not ALIAS.fullmatch(alias) or alias.isdigit():
        raise InvalidArgument(
            f"{field}: expected 1-63 lower-case letters, digits or '-' that are not a plain "
            f"number (a number reads as a version), got {alias!r}",
            details={"field": field},
        )
    return alias


def check_endpoint_name(name: str, field: str = "name") -> str:
    """An endpoint name (it becomes part of topic names): 1-63 letters, digits or '-',
    starting and ending with a letter or digit."""
    if not ENDPOINT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field}: expected 1-63 letters, digits or '-' starting and ending with a letter "
            f"or digit, got {name!r}",
            details={"field": field},
        )
    return name


def check_variant_name(name: str, field: str) -> str:
    """A variant name: 1-63 lower-case letters, digits or '-', not starting or ending with '-'."""
    if not VARIANT_NAME.fullmatch(name):
        raise InvalidArgument(
            f"{field}: expected 1-63 lower-case letters, digits or '-' starting and ending "
            f"with a letter or digit, got {name!r}",
            details={"field": field},
        )
    return name


def check_version_number(version: int, field: str = "version") -> int:
    """A version number: 1 or more."""
    if version < 1:
        raise InvalidArgument(
            f"{field}: expected a version number >= 1, got {version}", details={"field": field}
        )
    return version


def check_actor(name: str) -> str:
    """Who acts: a non-empty name of at most 256 printable characters."""
    stripped = name.strip()
    if not stripped:
        raise InvalidArgument(
            "actor: expected a name in the request's actor field or the x-mlbus-actor "
            "metadata, got neither",
            details={"field": "actor"},
        )
    if len(stripped) > MAX_ACTOR or _has_control(stripped):
        raise InvalidArgument(
            f"actor: expected at most {MAX_ACTOR} printable characters, got {name[:40]!r}",
            details={"field": "actor"},
        )
    return stripped


def _check_no_nul(value: str, field: str) -> None:
    # PostgreSQL text cannot hold U+0000 (the write would fail as an internal error).
    if "\x00" in value:
        raise InvalidArgument(
            f"{field}: must not contain NUL characters (U+0000), found one at index "
            f"{value.index(chr(0))}",
            details={"field": field},
        )


def check_text(value: str, field: str, *, max_length: int = MAX_TEXT) -> str:
    """Free text of at most ``max_length`` characters, without NUL characters."""
    if len(value) > max_length:
        raise InvalidArgument(
            f"{field}: expected at most {max_length} characters, got {len(value)}",
            details={"field": field},
        )
    _check_no_nul(value, field)
    return value


def check_required_text(value: str, field: str, *, why: str) -> str:
    """Free text that must not be blank."""
    if not value.strip():
        raise InvalidArgument(f"{field}: required {why}", details={"field": field})
    return check_text(value, field)


def _check_key(key: str, field: str) -> None:
    if not key or len(key) > MAX_KEY or _has_control(key):
        raise InvalidArgument(
            f"{field}: expected keys of 1-{MAX_KEY} printable characters, got {key[:40]!r}",
            details={"field": field},
        )


def _check_count(count: int, field: str) -> None:
    if count > MAX_ENTRIES:
        raise InvalidArgument(
            f"{field}: expected at most {MAX_ENTRIES} entries, got {count}",
            details={"field": field},
        )


def check_tags(tags: Mapping[str, str], field: str = "tags") -> dict[str, str]:
    """Tags: at most 256, keys of 1-128 printable characters, values up to 1024 characters."""
    _check_count(len(tags), field)
    for key, value in tags.items():
        _check_key(key, field)
        if len(value) > MAX_TAG_VALUE:
            raise InvalidArgument(
                f"{field}[{key!r}]: expected a value of at most {MAX_TAG_VALUE} characters, "
                f"got {len(value)}",
                details={"field": field},
            )
        _check_no_nul(value, f"{field}[{key!r}]")
    return dict(tags)


def check_tag_keys(keys: Iterable[str], field: str = "remove_tags") -> list[str]:
    """Tag keys to remove."""
    result = list(keys)
    _check_count(len(result), field)
    for key in result:
        _check_key(key, field)
    return result


def check_metrics(metrics: Mapping[str, float], field: str = "metrics") -> dict[str, float]:
    """Metrics: at most 256 named finite numbers."""
    _check_count(len(metrics), field)
    for key, value in metrics.items():
        _check_key(key, field)
        if not math.isfinite(value):
            raise InvalidArgument(
                f"{field}[{key!r}]: expected a finite number, got {value}",
                details={"field": field},
            )
    return dict(metrics)


def check_hyperparameters(
    params: Mapping[str, str], field: str = "hyperparameters"
) -> dict[str, str]:
    """Hyperparameters: at most 256, values up to 4096 characters."""
    _check_count(len(params), field)
    for key, value in params.items():
        _check_key(key, field)
        if len(value) > MAX_PARAM_VALUE:
            raise InvalidArgument(
                f"{field}[{key!r}]: expected a value of at most {MAX_PARAM_VALUE} characters, "
                f"got {len(value)}",
                details={"field": field},
            )
        _check_no_nul(value, f"{field}[{key!r}]")
    return dict(params)


def check_sha256(value: str, field: str) -> str:
    """A SHA-256 as 64 hex digits (returned lower-case)."""
    lowered = value.lower()
    if not SHA256.fullmatch(lowered):
        raise InvalidArgument(
            f"{field}: expected 64 hex digits, got {value[:80]!r}", details={"field": field}
        )
    return lowered


def check_request_id(value: str) -> str | None:
    """An idempotency key of at most 128 printable characters; empty means none."""
    if not value:
        return None
    if len(value) > MAX_REQUEST_ID or _has_control(value):
        raise InvalidArgument(
            f"request_id: expected at most {MAX_REQUEST_ID} printable characters, "
            f"got {value[:40]!r}",
            details={"field": "request_id"},
        )
    return value


def check_uri(value: str, field: str) -> str:
    """An object URI of at most 2048 characters."""
    if len(value) > MAX_URI or _has_control(value):
        raise InvalidArgument(
            f"{field}: expected a URI of at most {MAX_URI} printable characters",
            details={"field": field},
        )
    return value


def check_lineage(lineage: Lineage, field: str = "lineage") -> Lineage:
    """Lineage: short texts, a SHA-256 when given, a parent version >= 0."""
    check_text(lineage.training_job_id, f"{field}.training_job_id", max_length=256)
    check_uri(lineage.dataset_uri, f"{field}.dataset_uri")
    check_text(lineage.code_version, f"{field}.code_version", max_length=256)
    sha = lineage.dataset_sha256
    if sha:
        sha = check_sha256(sha, f"{field}.dataset_sha256")
    if lineage.parent_version < 0:
        raise InvalidArgument(
            f"{field}.parent_version: expected 0 (none) or a version number, "
            f"got {lineage.parent_version}",
            details={"field": f"{field}.parent_version"},
        )
    return lineage.model_copy(update={"dataset_sha256": sha})


def check_model_card(card: ModelCard, field: str = "model_card") -> ModelCard:
    """A model card: four texts of bounded length."""
    for name in ("intended_use", "limitations", "evaluation", "owner"):
        check_text(getattr(card, name), f"{field}.{name}")
    return card
