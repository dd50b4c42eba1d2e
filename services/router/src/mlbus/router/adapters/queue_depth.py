"""How much queued work an endpoint has: the consumer lag of its workers' groups.

An endpoint's queue is its asynchronous-request topic (group ``mlbus-inference-<endpoint>-
async``) and its batch-chunk topic (group ``...-batch``). Depth = end offset minus the
group's committed offset, per partition, summed; a partition the group never committed
counts from its first offset. This is what the controller polls to scale an async endpoint
up from zero workers, and what it exports as ``mlbus.router.queue.depth`` — the workers'
own lag gauge disappears when they are stopped, this one does not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from mlbus.core.async_inference import async_group_id, batch_group_id
from mlbus.core.messaging import Topic, TopicCatalogue
from mlbus.core.settings import KafkaSettings

log = logging.getLogger(__name__)


class KafkaQueueDepth:
    """Reads queue depths from the broker (one admin client and one group-less consumer,
    connected lazily and reconnected after an error)."""

    def __init__(self, settings: KafkaSettings, catalogue: TopicCatalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._warned = False

    def queues(self, endpoint: str) -> list[tuple[str, Topic[Any]]]:
        """(consumer group, topic) of each queue of ``endpoint``."""
        return [
            (async_group_id(endpoint), self.catalogue.async_requests(endpoint)),
            (batch_group_id(endpoint), self.catalogue.batch_chunks(endpoint)),
        ]

    async def depth(self, endpoint: str) -> int | None:
        """Records queued for ``endpoint`` and not yet handled; None if the broker did not
        answer (the caller then assumes the queue may hold work)."""
        async with self._lock:
            try:
                return await self._depth(endpoint)
            except Exception as exc:
                if not self._warned:
                    log.warning(
                        "cannot read queue depth; retrying on the next poll",
                        extra={"endpoint": endpoint, "error": repr(exc)},
                    )
                    self._warned = True
                await self._close()
                return None

    async def _depth(self, endpoint: str) -> int:
        admin, consumer = await self._connect()
        total = 0
        for group, topic in self.queues(endpoint):
            partitions = [TopicPartition(topic.name, p) for p in range(topic.partitions)]
            ends = await consumer.end_offsets(partitions)
            if not any(ends.values()):
                continue
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            missing = [
                tp for tp in partitions if committed.get(tp) is None or committed[tp].offset < 0
            ]
            starts = await consumer.beginning_offsets(missing) if missing else {}
            for tp in partitions:
                meta = committed.get(tp)
                done = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
                total += max(ends[tp] - done, 0)
        self._warned = False
        return total

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            common = {
                "bootstrap_servers": self.settings.bootstrap_servers,
                "client_id": f"{self.settings.client_id_prefix}-router-queue-depth",
                "request_timeout_ms": self.settings.request_timeout_ms,
                "security_protocol": self.settings.security_protocol,
            }
            admin = AIOKafkaAdminClient(**common)
            consumer = AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **common)
            try:
                await admin.start()
                await consumer.start()
            except BaseException:
                await _quietly([admin.close(), consumer.stop()])
                raise
            self._admin, self._consumer = admin, consumer
        return self._admin, self._consumer

    async def _close(self) -> None:
        admin, consumer = self._admin, self._consumer
        self._admin = self._consumer = None
        closing = []
        if admin is not None:
            closing.append(admin.close())
        if consumer is not None:
            closing.append(consumer.stop())
        await _quietly(closing)

    async def close(self) -> None:
        """Disconnect (router shutdown)."""
        async with self._lock:
            await self._close()


async def _quietly(closing: Iterable[Any]) -> None:
    await asyncio.gather(*closing, return_exceptions=True)
