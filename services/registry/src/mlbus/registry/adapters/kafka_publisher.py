"""Publishes outbox records to the registry topics.

Order: the records of one key are published one after another, each waiting for the
broker's acknowledgement before the next is sent, so a failure can never let a later
event of a key overtake an earlier one; different keys go concurrently. Together with the
relay's retries this gives at-least-once delivery, in order per key, with the outbox row's
event id as ``ce_id`` for consumers to drop duplicates.

Topics: the embedded broker forgets every topic when it restarts, and a producer that
publishes to a missing topic has it auto-created with the broker's default partition
count. So before each batch the topics are checked (one metadata request) and missing
ones created with their catalogue partition counts; with ``verify_topics`` off this
happens only after (re)connecting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from mlbus.core.messaging.producer import EventProducer
from mlbus.core.messaging.topics import Topic, TopicCatalogue, ensure_topics
from mlbus.core.settings import KafkaSettings
from mlbus.registry.adapters.event_encoder import registry_topics
from mlbus.registry.ports import OutboxPublisher, OutboxRecord

log = logging.getLogger(__name__)


class UnknownEventType(Exception):
    """An outbox record whose type no registry topic carries (written by a newer version)."""


class KafkaOutboxPublisher(OutboxPublisher):
    """:class:`~mlbus.registry.ports.OutboxPublisher` on an :class:`EventProducer`.

    The producer is created on first use and dropped by :meth:`reset`, so the registry
    starts and serves without a reachable broker.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        catalogue: TopicCatalogue,
        *,
        source: str,
        send_timeout_s: float,
        verify_topics: bool = True,
    ) -> None:
        # No lingering: each record of a key waits for the previous one's ack anyway. The
        # request timeout bounds how long a send can hang while the broker is away.
        self._kafka = kafka.model_copy(
            update={"linger_ms": 0, "request_timeout_ms": max(1000, int(send_timeout_s * 1000))}
        )
        self._topics: list[Topic[Any]] = registry_topics(catalogue)
        self._by_type = {topic.type_name: topic for topic in self._topics}
        self._source = source
        self._send_timeout_s = send_timeout_s
        self._verify_topics = verify_topics
        self._producer: EventProducer | None = None
        self._topics_checked = False

    @property
    def topics(self) -> list[Topic[Any]]:
        """The topics records go to."""
        return list(self._topics)

    async def _connect(self) -> EventProducer:
        if self._producer is None:
            producer = EventProducer(self._kafka, source=self._source)
            await producer.start()
            self._producer = producer
            self._topics_checked = False
        if self._verify_topics or not self._topics_checked:
            await ensure_topics(self._kafka, self._topics, timeout_s=self._send_timeout_s)
            self._producer.mark_ensured(*self._topics)
            self._topics_checked = True
        return self._producer

    async def _publish_key(
        self, producer: EventProducer, records: list[OutboxRecord]
    ) -> tuple[list[int], Exception | None]:
        done: list[int] = []
        for record in records:
            topic = self._by_type.get(record.event_type)
            if topic is None:
                return done, UnknownEventType(
                    f"outbox record {record.id}: no registry topic carries {record.event_type}"
                )
            try:
                message = topic.message_type.FromString(record.payload)
                await producer.publish(
                    topic,
                    message,
                    key=record.key,
                    event_id=record.event_id,
                    time=record.create_time,
                )
            except Exception as exc:
                return done, exc
            done.append(record.id)
        return done, None

    async def publish(self, records: Sequence[OutboxRecord]) -> tuple[list[int], Exception | None]:
        """Publish ``records``; returns the ids acknowledged and the first error, if any."""
        producer = await self._connect()
        by_key: dict[str, list[OutboxRecord]] = {}
        for record in records:
            by_key.setdefault(record.key, []).append(record)
        try:
            async with asyncio.timeout(2 * self._send_timeout_s + 5):
                results = await asyncio.gather(
                    *(self._publish_key(producer, items) for items in by_key.values())
                )
        except TimeoutError as exc:
            # Unknown which were acknowledged: all are sent again (consumers dedupe).
            return [], exc
        sent = sorted(record_id for done, _ in results for record_id in done)
        errors = [error for _, error in results if error is not None]
        return sent, errors[0] if errors else None

    async def reset(self) -> None:
        """Drop the producer (after a failure, or at shutdown)."""
        producer, self._producer = self._producer, None
        self._topics_checked = False
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._send_timeout_s):
                    await producer.stop()
