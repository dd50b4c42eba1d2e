"""Producer, consumer, DLQ, retries, crash-resume, tracing and topic creation on a real broker."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.structs import TopicPartition
from google.protobuf import json_format, wrappers_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mlbus.core.messaging import (
    DLQ_HEADERS,
    JSON,
    Event,
    EventConsumer,
    EventProducer,
    RetryableError,
    Topic,
    TopicCatalogue,
    build_headers,
    ensure_topics,
)
from mlbus.core.settings import KafkaSettings
from mlbus.inference.v2 import grpc_service_pb2 as v2
from mlbus.registry.v1 import events_pb2 as registry

CRASH_WORKER = Path(__file__).with_name("crash_worker.py")
JOIN_TIMEOUT = 20.0


def _topic(
    name: str, partitions: int = 1, message_type: Any = wrappers_pb2.StringValue
) -> Topic[Any]:
    return Topic(name=name, message_type=message_type, partitions=partitions, key="test id")


def _headers(record_headers: Any) -> dict[str, str]:
    return {k: v.decode() for k, v in record_headers}


@pytest.fixture
async def producer(kafka_settings: KafkaSettings) -> Any:
    async with EventProducer(kafka_settings, source="messaging-tests") as started:
        yield started


async def test_round_trip_keeps_message_key_id_type_and_headers(
    kafka_settings: KafkaSettings, producer: EventProducer, unique_name: Callable[[str], str]
) -> None:
    catalogue = TopicCatalogue(unique_name("ns"))
    topic = catalogue.async_requests("churn", partitions=2)
    collector: asyncio.Queue[Event[Any]] = asyncio.Queue()

    async def handle(event: Event[Any]) -> None:
        await collector.put(event)

    consumer = EventConsumer(
        kafka_settings,
        group_id=unique_name("g"),
        topics=[topic],
        handler=handle,
        source="inference",
    )
    await consumer.start()
    try:
        assigned = await consumer.wait_assigned(JOIN_TIMEOUT)
        assert {tp.partition for tp in assigned} == {0, 1}

        sent = {}
        for i in range(4):
            request = v2.ModelInferRequest(model_name="churn", id=f"inf-{i}")
            request.inputs.add(
                name="x", datatype="FP32", shape=[1, 2]
            ).contents.fp32_contents.extend([i, 0.5])
            content_type = JSON if i == 3 else "application/x-protobuf"
            meta = await producer.publish(
                topic,
                request,
                key=f"inf-{i}",
                event_id=f"event-{i}",
                headers=[("x-tenant", b"acme")],
                content_type=content_type,
            )
            sent[f"event-{i}"] = (request, meta, content_type)

        received: dict[str, Event[Any]] = {}
        async with asyncio.timeout(20):
            while len(received) < len(sent):
                event = await collector.get()
                received[event.id] = event
        for event_id, (request, meta, content_type) in sent.items():
            event = received[event_id]
            assert event.message == request
            assert event.key == request.id
            assert event.raw_key == request.id.encode()
            assert (event.topic, event.partition, event.offset) == (
                topic,
                meta.partition,
                meta.offset,
            )
            assert event.envelope.type == "inference.ModelInferRequest"
            assert event.envelope.source == "messaging-tests"
            assert event.envelope.content_type == content_type
            assert event.envelope.get("x-tenant") == "acme"
            assert event.attempt == 1
            assert abs(event.timestamp.timestamp() - time.time()) < 60
            assert event.envelope.time is not None
        assert json_format.MessageToDict(received["event-3"].message)["id"] == "inf-3"

        # Same key → same partition.
        again = await producer.publish(topic, v2.ModelInferRequest(id="inf-0"), key="inf-0")
        assert again.partition == sent["event-0"][1].partition
        event = await asyncio.wait_for(collector.get(), 20)
        assert len(event.id) == 36  # a generated uuid4
    finally:
        await consumer.stop()
    assert not consumer.running


async def test_poison_records_go_to_the_dlq_and_the_consumer_moves_on(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    read_topic: Any,
    make_collector: Any,
) -> None:
    topic = _topic(unique_name("poison"))

    async def reject_bad(event: Event[Any]) -> None:
        if event.message.value == "invalid":
            raise ValueError("value 'invalid': expected a known word")

    collector = make_collector(reject_bad)
    consumer = EventConsumer(
        kafka_settings, group_id=unique_name("g"), topics=[topic], handler=collector, source="tests"
    )
    await consumer.start()
    try:
        await consumer.wait_assigned(JOIN_TIMEOUT)
        await producer.publish(topic, wrappers_pb2.StringValue(value="good-1"), key="k1")
        # Bytes that do not parse, with correct envelope headers.
        garbage_headers = build_headers(
            wrappers_pb2.StringValue, source="tests", event_id="garbage"
        )
        garbage = await producer.publish_raw(
            topic.name, b"\xff\xfenot a protobuf", key="k2", headers=garbage_headers
        )
        # A valid message of another type: the envelope says so.
        other = registry.AliasMoved(model_group="g", alias="champion", version=2)
        wrong_headers = build_headers(registry.AliasMoved, source="tests", event_id="wrong-type")
        wrong = await producer.publish_raw(
            topic.name,
            other.SerializeToString(),
            key="k3",
            headers=[*wrong_headers, ("x-app", b"kept")],
        )
        invalid = await producer.publish(
            topic, wrappers_pb2.StringValue(value="invalid"), key="k4", event_id="invalid"
        )
        for i in (2, 3):
            await producer.publish(topic, wrappers_pb2.StringValue(value=f"good-{i}"), key=f"g{i}")

        await collector.wait_count(3)
        assert [e.message.value for e in collector.events] == ["good-1", "good-2", "good-3"]

        dead = await read_topic(topic.dlq_name, 3)
        assert [r.key for r in dead] == [b"k2", b"k3", b"k4"]
        by_id = {_headers(r.headers)["ce_id"]: (r, _headers(r.headers)) for r in dead}

        record, headers = by_id["garbage"]
        assert record.value == b"\xff\xfenot a protobuf"
        assert headers["mlbus-error-type"] == "mlbus.core.messaging.envelope.EventDecodeError"
        assert "not a valid google.protobuf.StringValue" in headers["mlbus-error"]
        assert headers["mlbus-source-topic"] == topic.name
        assert headers["mlbus-source-partition"] == str(garbage.partition)
        assert headers["mlbus-source-offset"] == str(garbage.offset)
        assert headers["mlbus-attempts"] == "1"
        assert headers["mlbus-failed-at"].endswith("Z")

        record, headers = by_id["wrong-type"]
        assert record.value == other.SerializeToString()
        assert (
            "expected 'google.protobuf.StringValue', got 'mlbus.registry.v1.AliasMoved'"
            in headers["mlbus-error"]
        )
        assert headers["mlbus-source-offset"] == str(wrong.offset)
        assert headers["ce_type"] == "mlbus.registry.v1.AliasMoved"  # original headers are kept
        assert headers["x-app"] == "kept"
        assert headers["ce_source"] == "tests"

        _, headers = by_id["invalid"]
        assert headers["mlbus-error-type"] == "builtins.ValueError"
        assert headers["mlbus-error"] == "value 'invalid': expected a known word"
        assert headers["mlbus-source-offset"] == str(invalid.offset)
        assert headers["mlbus-attempts"] == "1"
        assert set(DLQ_HEADERS) <= set(headers)
        assert len(collector.calls) == 4  # the invalid one was not retried
    finally:
        await consumer.stop()


async def test_retryable_errors_back_off_then_succeed_or_dead_letter(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    read_topic: Any,
    make_collector: Any,
) -> None:
    settings = kafka_settings.model_copy(update={"retry_attempts": 3, "retry_backoff_ms": 50})
    topic = _topic(unique_name("retry"))
    failures_left = {"flaky": 2, "broken": 99}

    async def behaviour(event: Event[Any]) -> None:
        word = event.message.value
        if failures_left.get(word, 0) > 0:
            failures_left[word] -= 1
            raise RetryableError(f"{word}: dependency unavailable")

    collector = make_collector(behaviour)
    consumer = EventConsumer(
        settings, group_id=unique_name("g"), topics=[topic], handler=collector, source="tests"
    )
    await consumer.start()
    try:
        await consumer.wait_assigned(JOIN_TIMEOUT)
        for word in ("flaky", "broken", "after"):
            await producer.publish(
                topic, wrappers_pb2.StringValue(value=word), key=word, event_id=word
            )
        await collector.wait_count(2)
        assert [e.message.value for e in collector.events] == ["flaky", "after"]
        flaky_event = collector.events[0]
        assert flaky_event.attempt == 3  # succeeded on the third call, two retries

        attempts = [(e.attempt, t) for e, t in collector.calls if e.message.value == "broken"]
        assert [a for a, _ in attempts] == [1, 2, 3, 4]
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(attempts)]
        for gap, expected in zip(gaps, (0.05, 0.1, 0.2), strict=True):
            assert gap >= expected * 0.9, gaps  # exponential backoff, doubling

        [dead] = await read_topic(topic.dlq_name, 1)
        headers = _headers(dead.headers)
        assert headers["ce_id"] == "broken"
        assert headers["mlbus-attempts"] == "4"
        assert headers["mlbus-error-type"] == "mlbus.core.messaging.consumer.RetryableError"
        assert headers["mlbus-error"] == "broken: dependency unavailable"
    finally:
        await consumer.stop()


async def _committed(
    settings: KafkaSettings, group: str, partitions: list[TopicPartition]
) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    return {tp.partition: max(meta.offset, 0) for tp, meta in offsets.items()}


def _handled_lines(path: Path) -> list[tuple[int, int, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        (int(p), int(o), i) for p, o, i in (line.split() for line in lines if line.count(" ") == 2)
    ]


@pytest.mark.slow
async def test_crash_resume_loses_nothing_and_redelivers_only_after_the_last_commit(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    partitions = 3
    topic = _topic(unique_name("crash"), partitions=partitions)
    group = unique_name("g")
    await ensure_topics(kafka_settings, [topic])
    produced: dict[str, tuple[int, int]] = {}
    for i in range(150):
        meta = await producer.publish(
            topic, wrappers_pb2.StringValue(value=str(i)), key=f"k{i}", event_id=f"id-{i}"
        )
        produced[f"id-{i}"] = (meta.partition, meta.offset)
    ends = {p: 1 + max(o for q, o in produced.values() if q == p) for p in range(partitions)}
    tps = [TopicPartition(topic.name, p) for p in range(partitions)]

    out = tmp_path / "handled-by-victim.txt"
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CRASH_WORKER),
        kafka_settings.bootstrap_servers,
        topic.name,
        str(partitions),
        group,
        str(out),
    )
    try:
        async with asyncio.timeout(40):
            while True:
                assert victim.returncode is None, "the worker exited by itself"
                committed = await _committed(kafka_settings, group, tps)
                if sum(committed.values()) >= 30:
                    break
                await asyncio.sleep(0.05)  # polling the broker for commits, not waiting blindly
    finally:
        if victim.returncode is None:
            victim.send_signal(signal.SIGKILL)
        await victim.wait()
    assert victim.returncode == -signal.SIGKILL
    committed = await _committed(kafka_settings, group, tps)
    before = _handled_lines(out)
    assert 30 <= sum(committed.values()) < len(produced), "kill the worker mid-stream"
    for p, offset in committed.items():
        handled_offsets = {o for q, o, _ in before if q == p}
        # The victim committed only what it had handled.
        assert set(range(offset)) <= handled_offsets

    settings = kafka_settings.model_copy(
        update={"session_timeout_ms": 3000, "heartbeat_interval_ms": 500, "max_poll_records": 10}
    )
    remaining = {i for i, (p, o) in produced.items() if o >= committed[p]}
    after: list[Event[Any]] = []
    done = asyncio.Event()

    async def handle(event: Event[Any]) -> None:
        after.append(event)
        if remaining <= {e.id for e in after}:
            done.set()

    successor = EventConsumer(
        settings, group_id=group, topics=[topic], handler=handle, source="tests"
    )
    await successor.start()
    try:
        await asyncio.wait_for(done.wait(), 40)
    finally:
        await successor.stop()
    assert await _committed(kafka_settings, group, tps) == ends  # stop() committed the rest

    after_ids = {e.id for e in after}
    assert {i for _, _, i in before} | after_ids == set(produced)  # nothing lost
    assert after_ids == remaining  # resumed exactly at the commits
    for p in range(partitions):
        offsets = [e.offset for e in after if e.partition == p]
        if committed[p] < ends[p]:
            assert offsets[0] == committed[p]
        assert offsets == sorted(offsets)
    rehandled = {i for _, _, i in before} & after_ids
    assert all(produced[i][1] >= committed[produced[i][0]] for i in rehandled)


class FlakyProducer(EventProducer):
    """Fails the first ``failures`` dead-letter publishes, as an unreachable broker would."""

    def __init__(self, settings: KafkaSettings, failures: int) -> None:
        super().__init__(settings, source="tests")
        self.failures = failures
        self.attempts: list[float] = []

    async def publish_raw(self, topic_name: str, value: bytes | None, **kwargs: Any) -> Any:
        self.attempts.append(asyncio.get_running_loop().time())
        if self.failures > 0:
            self.failures -= 1
            raise KafkaConnectionError("broker unreachable (simulated)")
        return await super().publish_raw(topic_name, value, **kwargs)


async def test_failed_dead_letter_publish_blocks_the_partition_instead_of_skipping(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    read_topic: Any,
    make_collector: Any,
) -> None:
    settings = kafka_settings.model_copy(update={"retry_backoff_ms": 100})
    topic = _topic(unique_name("dlqdown"))
    group = unique_name("g")
    collector = make_collector()
    async with FlakyProducer(settings, failures=2) as flaky:
        consumer = EventConsumer(
            settings,
            group_id=group,
            topics=[topic],
            handler=collector,
            source="tests",
            producer=flaky,
        )
        await consumer.start()
        try:
            await consumer.wait_assigned(JOIN_TIMEOUT)
            headers = build_headers(wrappers_pb2.StringValue, source="tests", event_id="poison")
            await producer.publish_raw(topic.name, b"\xff\xff", key="p", headers=headers)
            await producer.publish(topic, wrappers_pb2.StringValue(value="next"), key="n")
            await collector.wait_count(1)
        finally:
            await consumer.stop()
        assert flaky.started  # the consumer leaves a producer it was given alone
    first, second, third = flaky.attempts
    assert second - first >= 0.09  # backoff doubles
    assert third - second >= 0.19
    [(handled, handled_at)] = collector.calls
    assert handled.message.value == "next"
    assert handled_at > third  # nothing was skipped
    [dead] = await read_topic(topic.dlq_name, 1)
    assert _headers(dead.headers)["ce_id"] == "poison"
    tp = TopicPartition(topic.name, 0)
    assert await _committed(kafka_settings, group, [tp]) == {0: 2}


async def test_consumer_span_continues_the_publishers_trace(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    span_exporter: InMemorySpanExporter,
) -> None:
    topic = _topic(unique_name("trace"))
    seen: asyncio.Queue[trace.SpanContext] = asyncio.Queue()

    async def handle(event: Event[Any]) -> None:
        await seen.put(trace.get_current_span().get_span_context())

    consumer = EventConsumer(
        kafka_settings, group_id=unique_name("g"), topics=[topic], handler=handle, source="tests"
    )
    await consumer.start()
    try:
        await consumer.wait_assigned(JOIN_TIMEOUT)
        tracer = trace.get_tracer("messaging-tests")
        with tracer.start_as_current_span("client request") as root:
            await producer.publish(topic, wrappers_pb2.StringValue(value="traced"), key="t")
        handled_in = await asyncio.wait_for(seen.get(), 20)
    finally:
        await consumer.stop()

    root_ctx = root.get_span_context()
    assert handled_in.trace_id == root_ctx.trace_id
    spans = {s.context.span_id: s for s in span_exporter.get_finished_spans()}
    consumer_span = spans[handled_in.span_id]
    assert consumer_span.kind is SpanKind.CONSUMER
    assert consumer_span.name == f"{topic.name} process"
    assert consumer_span.attributes is not None
    assert consumer_span.attributes["messaging.consumer.group.name"] == consumer.group_id
    assert consumer_span.parent is not None
    producer_span = spans[consumer_span.parent.span_id]
    assert producer_span.kind is SpanKind.PRODUCER
    assert producer_span.name == f"{topic.name} publish"
    assert producer_span.parent is not None
    assert producer_span.parent.span_id == root_ctx.span_id


async def test_ensure_topics_creates_topics_and_dlqs_and_is_idempotent(
    kafka_settings: KafkaSettings,
    unique_name: Callable[[str], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with_dlq = _topic(unique_name("ensure-a"), partitions=3)
    without_dlq = Topic(
        name=unique_name("ensure-b"),
        message_type=wrappers_pb2.StringValue,
        partitions=2,
        key="k",
        dlq=False,
    )
    first, second = await asyncio.gather(
        ensure_topics(kafka_settings, [with_dlq, without_dlq]),
        ensure_topics(kafka_settings, [with_dlq, without_dlq]),
    )
    expected = {with_dlq.name: 3, with_dlq.dlq_name: 3, without_dlq.name: 2}
    assert first == second == expected

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers)
    await admin.start()
    try:
        described = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()
    assert {name: described.get(name) for name in expected} == expected
    assert without_dlq.dlq_name not in described

    # A later declaration with another count does not touch the topic; it warns.
    with caplog.at_level(logging.WARNING, logger="mlbus.core.messaging.topics"):
        again = await ensure_topics(
            kafka_settings,
            [
                Topic(
                    name=with_dlq.name,
                    message_type=wrappers_pb2.StringValue,
                    partitions=5,
                    key="k",
                    dlq=False,
                )
            ],
        )
    assert again == {with_dlq.name: 3}
    assert any("has 3 partitions, expected 5" in r.getMessage() for r in caplog.records)

    missing = _topic(unique_name("absent"))
    off = kafka_settings.model_copy(update={"create_topics": False})
    with pytest.raises(RuntimeError, match="topic creation is off"):
        await ensure_topics(off, [missing], timeout_s=0.3)


async def test_publish_rejects_a_message_of_another_type(
    producer: EventProducer, unique_name: Callable[[str], str]
) -> None:
    topic = _topic(unique_name("typed"), message_type=registry.ModelVersionApproved)
    with pytest.raises(TypeError, match=r"carries mlbus\.registry\.v1\.ModelVersionApproved"):
        await producer.publish(topic, registry.ModelVersionRejected(), key="g")
    with pytest.raises(TypeError, match="carries"):
        await producer.publish(topic, b"raw bytes", key="g")


async def test_dead_letter_hook_hears_of_every_dead_letter_and_its_failure_is_contained(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    make_collector: Any,
) -> None:
    from mlbus.core.messaging import DeadLetter

    topic = _topic(unique_name("hook"))
    heard: list[DeadLetter] = []

    async def hook(letter: DeadLetter) -> None:
        heard.append(letter)
        if len(heard) == 1:
            raise RuntimeError("the hook itself fails once")

    collector = make_collector()
    consumer = EventConsumer(
        kafka_settings,
        group_id=unique_name("g"),
        topics=[topic],
        handler=collector,
        source="tests",
        on_dead_letter=hook,
    )
    await consumer.start()
    try:
        await consumer.wait_assigned(JOIN_TIMEOUT)
        headers = build_headers(wrappers_pb2.StringValue, source="tests", event_id="bad")
        for key in ("p1", "p2"):
            await producer.publish_raw(
                topic.name, b"\xff\xfe", key=key, headers=[*headers, ("x-id", key.encode())]
            )
        await producer.publish(topic, wrappers_pb2.StringValue(value="after"), key="ok")
        await collector.wait_count(1)
        assert [e.message.value for e in collector.events] == ["after"]
        assert [letter.key for letter in heard] == [b"p1", b"p2"]
        assert dict(heard[1].headers)["x-id"] == b"p2"
        assert "not a valid" in str(heard[1].error)
        assert heard[1].topic == topic
    finally:
        await consumer.stop()


async def test_concurrent_partitions_keep_order_within_each_and_do_not_wait_on_each_other(
    kafka_settings: KafkaSettings,
    producer: EventProducer,
    unique_name: Callable[[str], str],
    make_collector: Any,
) -> None:
    topic = _topic(unique_name("conc"), partitions=2)
    release = asyncio.Event()

    async def slow_on_zero(event: Event[Any]) -> None:
        if event.partition == 0 and event.message.value.endswith("-0"):
            await asyncio.wait_for(release.wait(), 10)

    # Everything is on the topic before the consumer starts, so one poll fetches both
    # partitions (partitions of one poll are handled concurrently; the next poll waits for
    # all of them).
    for i in range(3):
        await producer.publish(
            topic, wrappers_pb2.StringValue(value=f"a-{i}"), key="a", partition=0
        )
        await producer.publish(
            topic, wrappers_pb2.StringValue(value=f"b-{i}"), key="b", partition=1
        )
    collector = make_collector(slow_on_zero)
    consumer = EventConsumer(
        kafka_settings,
        group_id=unique_name("g"),
        topics=[topic],
        handler=collector,
        source="tests",
        concurrent_partitions=True,
    )
    await consumer.start()
    try:
        # Partition 1 is handled while partition 0's first record is still blocked.
        await collector.wait_for(lambda c: sum(e.partition == 1 for e in c.events) == 3)
        assert not any(e.partition == 0 for e in collector.events)
        release.set()
        await collector.wait_count(6)
        assert [e.message.value for e in collector.events if e.partition == 0] == [
            "a-0",
            "a-1",
            "a-2",
        ]
        assert [e.message.value for e in collector.events if e.partition == 1] == [
            "b-0",
            "b-1",
            "b-2",
        ]
    finally:
        await consumer.stop()
