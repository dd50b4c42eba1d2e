"""Publishing events: one producer per service, configured from :class:`KafkaSettings`.

Every record gets the envelope headers (``ce_*``, ``content-type``) and the trace context of a
PRODUCER span, so a consumer's span continues the publisher's trace. Idempotence and
transactions stay off: aiokafka's implementation fails on the embedded broker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata
from google.protobuf.message import Message
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind

from mlbus.core.messaging.envelope import PROTOBUF, build_headers, encode
from mlbus.core.messaging.topics import Topic, ensure_topics
from mlbus.core.settings import KafkaSettings
from mlbus.core.telemetry import KafkaHeaders, inject_kafka_headers

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

INSTRUMENTATION: Final = "mlbus.messaging"
_tracer = trace.get_tracer(INSTRUMENTATION)
_produced = metrics.get_meter(INSTRUMENTATION).create_counter(
    "mlbus.messaging.records.produced",
    unit="{record}",
    description="Records acknowledged by the broker, per topic.",
)

Key = str | bytes | None
Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes]


def encode_key(key: Key) -> bytes | None:
    """Record key bytes: text keys are UTF-8."""
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode()
    raise TypeError(f"key: expected str, bytes or None, got {type(key).__name__}")


def producer_config(settings: KafkaSettings, source: str) -> dict[str, Any]:
    """Keyword arguments for :class:`AIOKafkaProducer` from ``settings``."""
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.client_id_prefix}-{source}",
        "acks": 1 if settings.acks == "1" else "all",
        "linger_ms": settings.linger_ms,
        "max_batch_size": settings.max_batch_size,
        "max_request_size": settings.max_request_size,
        "compression_type": None
        if settings.compression_type == "none"
        else settings.compression_type,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
        # Must stay off: aiokafka's InitProducerId v0 fails on the embedded broker.
        "enable_idempotence": False,
    }


def _span_attributes(topic: str, key: bytes | None, size: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.operation.name": "publish",
        "messaging.destination.name": topic,
        "messaging.message.body.size": size,
    }
    if key is not None:
        attributes["messaging.kafka.message.key"] = key.decode("utf-8", "replace")
    return attributes


class EventProducer:
    """Publishes protobuf events to catalogue topics (and raw records to DLQs and relays).

    ``source`` is the publishing service's name (``ce_source``, client id). Unless
    ``settings.create_topics`` is off, a topic and its DLQ are created on first publish when
    missing, so a topic never gets the broker's default partition count by accident.
    """

    def __init__(self, settings: KafkaSettings, source: str) -> None:
        self.settings = settings
        self.source = source
        self._producer: AIOKafkaProducer | None = None
        self._ensured: set[str] = set()
        self._ensure_lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._producer is not None

    async def start(self) -> None:
        """Connect to the cluster; raises if it cannot be reached. A second call does nothing."""
        if self._producer is not None:
            return
        producer = AIOKafkaProducer(**producer_config(self.settings, self.source))
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer

    async def stop(self) -> None:
        """Flush pending records and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _require(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("EventProducer is not started; call start() first")
        return self._producer

    async def _ensure(self, topic: Topic[Any]) -> None:
        if not self.settings.create_topics or topic.name in self._ensured:
            return
        async with self._ensure_lock:
            if topic.name not in self._ensured:
                await ensure_topics(self.settings, [topic])
                self._ensured.add(topic.name)

    def mark_ensured(self, *topics: Topic[Any]) -> None:
        """Record that ``topics`` exist already (e.g. after the service's own ensure_topics)."""
        self._ensured.update(t.name for t in topics)

    async def publish(
        self,
        topic: Topic[M],
        message: M,
        *,
        key: Key,
        event_id: str | None = None,
        headers: Headers | None = None,
        partition: int | None = None,
        time: datetime | None = None,
        content_type: str = PROTOBUF,
    ) -> RecordMetadata:
        """Publish ``message`` to ``topic`` and wait for the broker's acknowledgement.

        ``key`` names the entity whose order matters (see ``topic.key``); ``event_id`` becomes
        ``ce_id`` (a new uuid4 if None); ``headers`` are extra application headers. Raises
        TypeError when ``message`` is not the topic's message type.
        """
        if not isinstance(message, topic.message_type):
            raise TypeError(
                f"topic {topic.name} carries {topic.type_name}, "
                f"got {type(message).__module__}.{type(message).__qualname__}"
            )
        producer = self._require()
        await self._ensure(topic)
        raw_key = encode_key(key)
        value = encode(message, content_type)
        with _tracer.start_as_current_span(
            f"{topic.name} publish",
            kind=SpanKind.PRODUCER,
            attributes=_span_attributes(topic.name, raw_key, len(value)),
        ) as span:
            record_headers = build_headers(
                topic.message_type,
                source=self.source,
                event_id=event_id,
                time=time,
                content_type=content_type,
                extra=headers,
            )
            ce_id = next(v for k, v in record_headers if k == "ce_id").decode()
            span.set_attribute("messaging.message.id", ce_id)
            span.set_attribute("mlbus.event.type", topic.type_name)
            metadata = await self._send(
                producer, topic.name, value, raw_key, record_headers, partition
            )
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)
        return metadata

    async def publish_raw(
        self,
        topic_name: str,
        value: bytes | None,
        *,
        key: Key = None,
        headers: Headers | None = None,
        partition: int | None = None,
    ) -> RecordMetadata:
        """Publish bytes with the given headers as they are (dead letters, relays, replays).

        Only the trace context is replaced, by this PRODUCER span's (same trace). ``topic_name``
        must come from the catalogue (e.g. ``topic.dlq_name``), never a literal.
        """
        producer = self._require()
        raw_key = encode_key(key)
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        record_headers: KafkaHeaders = [(k, bytes(v)) for k, v in pairs]
        with _tracer.start_as_current_span(
            f"{topic_name} publish",
            kind=SpanKind.PRODUCER,
            attributes=_span_attributes(topic_name, raw_key, len(value or b"")),
        ) as span:
            inject_kafka_headers(record_headers)
            metadata = await self._send(
                producer, topic_name, value, raw_key, record_headers, partition
            )
            span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
            span.set_attribute("messaging.kafka.offset", metadata.offset)
        return metadata

    async def _send(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: KafkaHeaders,
        partition: int | None,
    ) -> RecordMetadata:
        delivery = await producer.send(
            topic, value=value, key=key, headers=headers, partition=partition
        )
        metadata: RecordMetadata = await delivery
        _produced.add(1, {"messaging.destination.name": topic})
        return metadata

    async def flush(self) -> None:
        """Wait until every record sent so far is acknowledged."""
        await self._require().flush()
