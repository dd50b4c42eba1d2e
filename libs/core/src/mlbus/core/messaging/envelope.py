"""Record headers and payload encoding, set and read in this one place.

Headers follow the CloudEvents Kafka protocol binding (binary content mode): ``ce_specversion``,
``ce_id``, ``ce_type``, ``ce_source``, ``ce_time`` and ``content-type``, plus the W3C trace
context (``traceparent``/``tracestate``). The value is the event itself: a serialized protobuf
message, or its JSON form (``google.protobuf.json_format``) when the content type is JSON, as
for v2 inference requests that producers publish straight to a request topic.

Records from producers outside mlbus may lack the ``ce_*`` headers; decoding tolerates that
(the id then falls back to ``<topic>/<partition>/<offset>``, stable across redeliveries) but
never a ``ce_type`` that names another message type than the topic carries.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from mlbus.core.telemetry import KafkaHeaders, inject_kafka_headers

SPECVERSION: Final = "1.0"
PROTOBUF: Final = "application/x-protobuf"
JSON: Final = "application/json"
#: Media types accepted as protobuf besides :data:`PROTOBUF`.
_PROTOBUF_ALIASES: Final = frozenset(
    {PROTOBUF, "application/protobuf", "application/vnd.google.protobuf"}
)

H_SPECVERSION: Final = "ce_specversion"
H_ID: Final = "ce_id"
H_TYPE: Final = "ce_type"
H_SOURCE: Final = "ce_source"
H_TIME: Final = "ce_time"
H_CONTENT_TYPE: Final = "content-type"
H_TRACEPARENT: Final = "traceparent"
H_TRACESTATE: Final = "tracestate"
#: Every header name the envelope owns; callers' extra headers may not reuse them.
ENVELOPE_HEADERS: Final = frozenset(
    {H_SPECVERSION, H_ID, H_TYPE, H_SOURCE, H_TIME, H_CONTENT_TYPE, H_TRACEPARENT, H_TRACESTATE}
)

M = TypeVar("M", bound=Message)


class EventDecodeError(Exception):
    """A record cannot be turned into its topic's message: wrong type, bad bytes, bad headers.

    Retrying cannot help; the consumer sends such records straight to the dead-letter topic.
    """


def type_name(message_type: type[Message]) -> str:
    """The protobuf full name carried in ``ce_type`` (e.g. ``mlbus.registry.v1.AliasMoved``)."""
    return str(message_type.DESCRIPTOR.full_name)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("ce_time needs an aware datetime")
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def media_type(content_type: str) -> str:
    """The bare media type of a content-type header value, lower-cased, parameters dropped."""
    return content_type.split(";", 1)[0].strip().lower()


def header_value(headers: Sequence[tuple[str, bytes | None]], name: str) -> str | None:
    """Last value of header ``name`` as text, or None (header names compare case-insensitively)."""
    found: str | None = None
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted and value is not None:
            found = value.decode("utf-8", "replace")
    return found


def build_headers(
    message_type: type[Message],
    *,
    source: str,
    event_id: str | None = None,
    time: datetime | None = None,
    content_type: str = PROTOBUF,
    extra: Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None = None,
) -> KafkaHeaders:
    """Headers for one event; the current trace context is injected as ``traceparent``.

    ``extra`` headers come first and must not use an envelope header name.
    """
    pairs = list(extra.items()) if isinstance(extra, Mapping) else list(extra or ())
    clash = sorted({k for k, _ in pairs if k.lower() in ENVELOPE_HEADERS})
    if clash:
        raise ValueError(f"headers {clash} are set by the envelope; pass them as arguments")
    headers: KafkaHeaders = [(k, bytes(v)) for k, v in pairs]
    headers += [
        (H_SPECVERSION, SPECVERSION.encode()),
        (H_ID, (event_id or str(uuid.uuid4())).encode()),
        (H_TYPE, type_name(message_type).encode()),
        (H_SOURCE, source.encode()),
        (H_TIME, format_time(time or datetime.now(UTC)).encode()),
        (H_CONTENT_TYPE, content_type.encode()),
    ]
    inject_kafka_headers(headers)
    return headers


def encode(message: Message, content_type: str = PROTOBUF) -> bytes:
    """Serialize ``message`` as protobuf or as its canonical JSON form."""
    kind = media_type(content_type)
    if kind in _PROTOBUF_ALIASES:
        return message.SerializeToString()
    if kind == JSON:
        return json_format.MessageToJson(message, indent=None).encode()
    raise ValueError(f"content type {content_type!r}: expected {PROTOBUF!r} or {JSON!r}")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a record's headers say about its event."""

    id: str
    type: str | None
    source: str | None
    time: datetime | None
    content_type: str
    specversion: str | None
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def from_headers(
        cls, headers: Sequence[tuple[str, bytes | None]] | None, *, fallback_id: str
    ) -> Envelope:
        """Parse the envelope; ``fallback_id`` stands in for a missing ``ce_id``.

        Raises :class:`EventDecodeError` on an unreadable ``ce_time``.
        """
        raw = tuple((k, v) for k, v in (headers or ()) if v is not None)
        time_text = header_value(raw, H_TIME)
        moment: datetime | None = None
        if time_text:
            try:
                moment = datetime.fromisoformat(time_text)
            except ValueError as exc:
                raise EventDecodeError(
                    f"header {H_TIME}: expected RFC 3339, got {time_text!r}"
                ) from exc
        return cls(
            id=header_value(raw, H_ID) or fallback_id,
            type=header_value(raw, H_TYPE),
            source=header_value(raw, H_SOURCE),
            time=moment,
            content_type=header_value(raw, H_CONTENT_TYPE) or PROTOBUF,
            specversion=header_value(raw, H_SPECVERSION),
            headers=raw,
        )

    def get(self, name: str) -> str | None:
        """A header's value as text (last one wins), or None."""
        return header_value(self.headers, name)


def decode(message_type: type[M], envelope: Envelope, value: bytes | None) -> M:
    """Parse ``value`` as ``message_type`` after checking the envelope agrees.

    Raises :class:`EventDecodeError` when ``ce_type`` names another type, the content type is
    unknown, or the bytes do not parse.
    """
    expected = type_name(message_type)
    if envelope.type is not None and envelope.type != expected:
        raise EventDecodeError(f"header {H_TYPE}: expected {expected!r}, got {envelope.type!r}")
    if value is None:
        raise EventDecodeError(f"expected a {expected} value, got a tombstone (null value)")
    kind = media_type(envelope.content_type)
    message = message_type()
    try:
        if kind in _PROTOBUF_ALIASES:
            message.ParseFromString(value)
        elif kind == JSON:
            json_format.Parse(value.decode("utf-8"), message)
        else:
            raise EventDecodeError(
                f"header {H_CONTENT_TYPE}: expected {PROTOBUF!r} or {JSON!r}, "
                f"got {envelope.content_type!r}"
            )
    except (ProtobufDecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
        raise EventDecodeError(f"value is not a valid {expected} ({kind}): {exc}") from exc
    return message
