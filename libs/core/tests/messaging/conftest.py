"""Shared helpers for the messaging tests: event collectors, raw topic readers, tracing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.core.messaging import Event
from mlbus.core.settings import KafkaSettings


class Collector:
    """Handler that records events (and can be told to fail); waits without sleeping."""

    def __init__(self, behaviour: Callable[[Event[Any]], Awaitable[None]] | None = None) -> None:
        self.events: list[Event[Any]] = []
        self.calls: list[tuple[Event[Any], float]] = []
        self._behaviour = behaviour
        self._changed = asyncio.Condition()

    async def __call__(self, event: Event[Any]) -> None:
        loop = asyncio.get_running_loop()
        self.calls.append((event, loop.time()))
        try:
            if self._behaviour is not None:
                await self._behaviour(event)
            self.events.append(event)
        finally:
            async with self._changed:
                self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[Collector], bool], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    async def wait_count(self, count: int, timeout: float = 20.0) -> None:
        await self.wait_for(lambda c: len(c.events) >= count, timeout)


ReadTopic = Callable[..., Awaitable[list[ConsumerRecord[bytes, bytes]]]]


@pytest.fixture
def read_topic(kafka_settings: KafkaSettings) -> ReadTopic:
    """``await read_topic(name, count)``: the first ``count`` records of an existing topic,
    read without a consumer group (no join delay)."""

    async def read(
        name: str, count: int, timeout: float = 20.0
    ) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            name,
            bootstrap_servers=kafka_settings.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=20,
        )
        await consumer.start()
        records: list[ConsumerRecord[bytes, bytes]] = []
        try:
            async with asyncio.timeout(timeout):
                while len(records) < count:
                    batch = await consumer.getmany(timeout_ms=200)
                    for part in batch.values():
                        records.extend(part)
        finally:
            await consumer.stop()
        return records

    return read


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """In-memory span exporter on the process's SDK tracer provider (installed if missing)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def make_collector() -> type[Collector]:
    """The :class:`Collector` class (test modules cannot import conftest by name)."""
    return Collector
