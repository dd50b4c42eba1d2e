"""Overhead of mlbus.core.messaging (EventProducer, EventConsumer) over raw aiokafka.

Both sides run on the same broker, in the same process and event loop, with the same client
configuration (``producer_config`` / ``consumer_config`` from one :class:`KafkaSettings`), on
the same protobuf messages. What differs is only the code path:

* raw producer: ``AIOKafkaProducer.send(topic, value=msg.SerializeToString(), key=...)``,
  without headers and with the envelope headers built beforehand;
* wrapper producer: ``EventProducer.publish(topic, msg, key=...)``: type check, envelope
  headers (``ce_*``, content-type, trace context), a PRODUCER span, a counter, and it awaits
  the broker's acknowledgement of every record;
* raw consumer: a group member looping ``getmany`` → ``ParseFromString`` → async handler →
  ``commit(offsets)`` once per batch;
* wrapper consumer: ``EventConsumer`` (envelope parse, decode, CONSUMER span, metrics, one
  commit per batch).

Repetitions interleave raw and wrapper (alternating which goes first), so a ratio compares
two measurements taken seconds apart; the runner reports the median of the per-repetition
ratios. The OpenTelemetry phase says what the process had installed: ``otel-api`` is the
library default (no SDK: spans are non-recording), ``otel-sdk`` is what a service runs after
``setup_telemetry`` (every span sampled and recorded, metrics aggregated for Prometheus).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from mlbus.core.messaging import (
    Event,
    EventConsumer,
    EventProducer,
    Topic,
    build_headers,
    consumer_config,
    ensure_topics,
    producer_config,
)
from mlbus.core.messaging.topics import admin_client
from mlbus.core.settings import KafkaSettings, TelemetrySettings
from mlbus.inference.v1.events_pb2 import InferenceCaptured

TITLE = "Messaging: EventProducer / EventConsumer vs raw aiokafka"

#: Bytes of the ``request`` field: the serialized message is then about 200 B or 10 KB.
PAYLOAD_BYTES = {"small": 80, "large": 10_000}


@dataclass(frozen=True)
class Plan:
    """How much work one run does."""

    reps: int
    #: Messages per produce-throughput repetition (bulk patterns), per size.
    produce: dict[str, int]
    #: Messages per repetition of the one-at-a-time patterns (each awaits its ack).
    sequential: int
    #: Messages per latency repetition and stream, per size, each stream at ``rate`` per second.
    latency: dict[str, int]
    rate: float
    #: Small messages in the pre-filled topic of the consume benchmark.
    consume: int
    #: OpenTelemetry phases, run in this order (the SDK cannot be uninstalled).
    phases: tuple[str, ...] = ("otel-api", "otel-sdk")


FULL = Plan(
    reps=5,
    produce={"small": 4_000, "large": 800},
    sequential=50,
    latency={"small": 120, "large": 80},
    rate=50.0,
    consume=10_000,
)
QUICK = Plan(
    reps=2,
    produce={"small": 2_000, "large": 400},
    sequential=20,
    latency={"small": 40, "large": 25},
    rate=50.0,
    consume=2_000,
)
#: Records per ``asyncio.gather`` in the bounded bulk pattern.
CHUNK = 200


# --- messages and topics ------------------------------------------------------------------


def make_messages(size: str, count: int) -> list[InferenceCaptured]:
    """``count`` distinct messages of one size class (ids differ, payload is the same)."""
    payload = bytes(range(256)) * (PAYLOAD_BYTES[size] // 256) + b"x" * (PAYLOAD_BYTES[size] % 256)
    messages = []
    for _ in range(count):
        message = InferenceCaptured(
            inference_id=str(uuid.uuid4()),
            endpoint="churn",
            variant="blue",
            model_group="churn-classifier",
            model_version=7,
            request=payload,
            response=b"y" * 24,
        )
        message.latency.FromMilliseconds(3)
        message.request_time.FromMilliseconds(1_764_000_000_123)
        messages.append(message)
    return messages


def bench_topic(name: str) -> Topic[InferenceCaptured]:
    """A one-partition topic of the benchmark (no DLQ: nothing fails here)."""
    return Topic(
        name=name,
        message_type=InferenceCaptured,
        partitions=1,
        key="inference id",
        dlq=False,
        description="benchmark topic",
    )


# --- the raw baseline consumer ------------------------------------------------------------

AsyncHandler = Callable[[InferenceCaptured], Awaitable[None]]


class _Assigned(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, event: asyncio.Event) -> None:
        self._event = event

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._event.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self._event.set()


class RawConsumer:
    """Baseline: one aiokafka group member; parse, call the handler, commit once per batch."""

    def __init__(
        self, settings: KafkaSettings, *, group_id: str, topics: list[str], handler: AsyncHandler
    ) -> None:
        self._consumer = AIOKafkaConsumer(
            **consumer_config(settings, group_id=group_id, source="bench-raw")
        )
        self._assigned = asyncio.Event()
        self._consumer.subscribe(topics=topics, listener=_Assigned(self._assigned))
        self._handler = handler
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = False

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._loop())

    async def wait_assigned(self, timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            await self._assigned.wait()

    async def _loop(self) -> None:
        consumer = self._consumer
        while not self._stopping:
            self._idle = True
            try:
                batch = await consumer.getmany(timeout_ms=500)
            finally:
                self._idle = False
            offsets: dict[TopicPartition, int] = {}
            for tp, records in batch.items():
                for record in records:
                    message = InferenceCaptured()
                    message.ParseFromString(record.value)
                    await self._handler(message)
                offsets[tp] = records[-1].offset + 1
            if offsets:
                await consumer.commit(offsets)

    async def stop(self) -> None:
        # Like EventConsumer: cancel only a poll, never a commit in flight.
        self._stopping = True
        if self._task is not None:
            if self._idle:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


# --- helpers ------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class Recorder:
    """Collects the runs of every figure, keyed by name."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, Any]] = {}
        self.ratios: dict[str, dict[str, Any]] = {}

    def add(self, name: str, value: float, *, label: str, unit: str, better: str) -> None:
        figure = self.figures.setdefault(
            name, {"label": label, "unit": unit, "better": better, "runs": []}
        )
        figure["runs"].append(value)

    def ratio(
        self, name: str, numerator: str, denominator: str, label: str, *, cpu_bound: bool = True
    ) -> None:
        """``cpu_bound=False``: the rates are bound by waiting, so no per-message CPU cost."""
        self.ratios.setdefault(
            name,
            {
                "label": label,
                "numerator": numerator,
                "denominator": denominator,
                "per_message_cost": cpu_bound,
            },
        )


def order(rep: int, variants: list[str]) -> list[str]:
    """Alternate which variant goes first, so drift does not favour one side."""
    return variants if rep % 2 == 0 else variants[::-1]


class Bench:
    """One run of the messaging benchmark on one broker."""

    def __init__(self, bootstrap_servers: str, plan: Plan, *, verbose: bool) -> None:
        self.plan = plan
        self.verbose = verbose
        self.run_id = uuid.uuid4().hex[:8]
        # Defaults everywhere except a shorter session: group joins take session/2 on the
        # embedded broker, and every consume repetition joins a fresh group.
        self.settings = KafkaSettings(
            bootstrap_servers=bootstrap_servers,
            session_timeout_ms=4000,
            heartbeat_interval_ms=500,
        )
        self.rec = Recorder()
        self.raw: AIOKafkaProducer | None = None
        self.wrapper: EventProducer | None = None
        self.admin: AIOKafkaAdminClient | None = None
        self.join_s: dict[str, list[float]] = {"raw": [], "wrapper": []}
        self._topic_seq = 0

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"  [messaging] {text}", flush=True)

    def clients(self) -> tuple[AIOKafkaProducer, EventProducer]:
        """The raw and the wrapper producer of the current :meth:`producers` block."""
        if self.raw is None or self.wrapper is None:
            raise RuntimeError("no producers: use `async with self.producers()`")
        return self.raw, self.wrapper

    @contextlib.asynccontextmanager
    async def producers(self) -> AsyncIterator[tuple[AIOKafkaProducer, EventProducer]]:
        """Fresh raw and wrapper producers for one step; stop them before deleting its topics.

        aiokafka keeps asking for the metadata of every topic it ever sent to, and the
        embedded broker auto-creates a missing topic on a metadata request: a topic deleted
        under a live producer comes back (empty, 4 partitions) at the producer's next
        metadata refresh, and the broker slows down as such topics pile up.
        """
        raw = AIOKafkaProducer(**producer_config(self.settings, "bench-raw"))
        wrapper = EventProducer(self.settings, "bench-wrapper")
        await raw.start()
        try:
            await wrapper.start()
            try:
                self.raw, self.wrapper = raw, wrapper
                yield raw, wrapper
            finally:
                self.raw = self.wrapper = None
                await wrapper.stop()
        finally:
            await raw.stop()

    def topic(self, what: str) -> Topic[InferenceCaptured]:
        self._topic_seq += 1
        return bench_topic(f"bench.{self.run_id}.{what}.{self._topic_seq}")

    async def create(self, *topics: Topic[InferenceCaptured]) -> None:
        await ensure_topics(self.settings, topics)
        self.clients()[1].mark_ensured(*topics)

    async def drop(self, *topics: Topic[InferenceCaptured]) -> None:
        # The in-memory broker only frees a topic's memory when it is deleted.
        assert self.admin is not None
        await self.admin.delete_topics([t.name for t in topics])

    # --- (a) produce throughput -----------------------------------------------------------

    async def produce_once(
        self, variant: str, topic: Topic[InferenceCaptured], msgs: list[InferenceCaptured]
    ) -> float:
        raw, wrapper = self.clients()
        started = time.perf_counter()
        if variant == "raw_send_batched":
            futures = [
                await raw.send(topic.name, value=m.SerializeToString(), key=m.inference_id.encode())
                for m in msgs
            ]
            await asyncio.gather(*futures)
        elif variant == "raw_send_batched_headers":
            # Same as raw_send_batched, plus envelope headers built beforehand (not timed).
            headers = [build_headers(InferenceCaptured, source="bench-raw") for _ in msgs]
            started = time.perf_counter()
            futures = [
                await raw.send(
                    topic.name,
                    value=m.SerializeToString(),
                    key=m.inference_id.encode(),
                    headers=h,
                )
                for m, h in zip(msgs, headers, strict=True)
            ]
            await asyncio.gather(*futures)
        elif variant == "publish_chunked":
            for i in range(0, len(msgs), CHUNK):
                await asyncio.gather(
                    *(wrapper.publish(topic, m, key=m.inference_id) for m in msgs[i : i + CHUNK])
                )
        elif variant == "publish_gather_all":
            await asyncio.gather(*(wrapper.publish(topic, m, key=m.inference_id) for m in msgs))
        elif variant == "raw_send_and_wait":
            for m in msgs:
                await raw.send_and_wait(
                    topic.name, value=m.SerializeToString(), key=m.inference_id.encode()
                )
        elif variant == "publish_sequential":
            for m in msgs:
                await wrapper.publish(topic, m, key=m.inference_id)
        else:  # pragma: no cover
            raise ValueError(variant)
        return len(msgs) / (time.perf_counter() - started)

    async def produce(self, phase: str) -> None:
        plan = self.plan
        labels = {
            "raw_send_batched": "raw `await send()` per record, await all futures at the end",
            "raw_send_batched_headers": "the same, with the 6 envelope headers (prebuilt)",
            "publish_chunked": f"`publish()` in `asyncio.gather` chunks of {CHUNK}",
            "publish_gather_all": "`publish()` ×N under one `asyncio.gather`",
            "raw_send_and_wait": "raw `send_and_wait()`, one at a time",
            "publish_sequential": "`publish()`, one at a time",
        }
        bulk_variants = [
            "raw_send_batched",
            "raw_send_batched_headers",
            "publish_chunked",
            "publish_gather_all",
        ]
        # One at a time is bound by linger + round trip, not by the client: measured once.
        seq_variants = ["raw_send_and_wait", "publish_sequential"] if phase == "otel-api" else []
        for size in ("small", "large"):
            bulk = make_messages(size, plan.produce[size])
            seq = make_messages(size, plan.sequential)
            for rep in range(plan.reps):
                topics = []
                async with self.producers():
                    for variant in order(rep, bulk_variants) + order(rep, seq_variants):
                        msgs = seq if variant in seq_variants else bulk
                        topic = self.topic(f"produce.{size}.{variant}")
                        topics.append(topic)
                        await self.create(topic)
                        rate = await self.produce_once(variant, topic, msgs)
                        name = f"{phase}.produce.{size}.{variant}"
                        self.rec.add(
                            name,
                            rate,
                            label=f"{phase} · produce {size} ×{len(msgs)} · {labels[variant]}",
                            unit="msg/s",
                            better="higher",
                        )
                        self.log(f"{name} rep {rep}: {rate:,.0f} msg/s ({len(msgs)} msgs)")
                await self.drop(*topics)
            p = f"{phase}.produce.{size}"
            self.rec.ratio(
                f"{p}.chunked",
                f"{p}.publish_chunked",
                f"{p}.raw_send_batched",
                f"{phase} · produce {size}: publish in chunks of {CHUNK} ÷ raw batched send",
            )
            self.rec.ratio(
                f"{p}.chunked_vs_headers",
                f"{p}.publish_chunked",
                f"{p}.raw_send_batched_headers",
                f"{phase} · produce {size}: publish in chunks ÷ raw batched send with headers",
            )
            self.rec.ratio(
                f"{p}.gather_all",
                f"{p}.publish_gather_all",
                f"{p}.raw_send_batched",
                f"{phase} · produce {size}: publish ×N in one gather ÷ raw batched send",
            )
            if seq_variants:
                self.rec.ratio(
                    f"{p}.sequential",
                    f"{p}.publish_sequential",
                    f"{p}.raw_send_and_wait",
                    f"{phase} · produce {size}, one at a time: publish ÷ raw send_and_wait",
                    cpu_bound=False,
                )
                self.rec.ratio(
                    f"{p}.sequential_vs_batched",
                    f"{p}.publish_sequential",
                    f"{p}.raw_send_batched",
                    f"{phase} · produce {size}: publish one at a time ÷ raw batched send",
                    cpu_bound=False,
                )

    # --- (b) end-to-end latency -----------------------------------------------------------

    async def latency(self, phase: str) -> None:
        """Two streams at the same fixed rate, interleaved half a period apart.

        raw: ``send_and_wait`` → :class:`RawConsumer`; wrapper: ``publish`` →
        :class:`EventConsumer`. Running them side by side (the loop is idle most of the time
        at this rate) exposes both to the same machine conditions.
        """
        variants = ("raw", "wrapper")
        topics = {v: self.topic(f"latency.{v}") for v in variants}
        async with self.producers() as (raw, wrapper):
            await self.create(*topics.values())
            await self._latency(phase, raw, wrapper, topics)
        await self.drop(*topics.values())

    async def _latency(
        self,
        phase: str,
        raw: AIOKafkaProducer,
        wrapper: EventProducer,
        topics: dict[str, Topic[InferenceCaptured]],
    ) -> None:
        plan = self.plan
        variants = tuple(topics)
        sent: dict[str, dict[str, float]] = {v: {} for v in variants}
        seen: dict[str, dict[str, float]] = {v: {} for v in variants}
        complete = {v: asyncio.Event() for v in variants}
        expected = {v: 0 for v in variants}

        def arrived(variant: str, inference_id: str) -> None:
            now = time.perf_counter()
            start = sent[variant].get(inference_id)
            if start is not None and inference_id not in seen[variant]:
                seen[variant][inference_id] = now - start
                if len(seen[variant]) >= expected[variant]:
                    complete[variant].set()

        async def raw_handler(message: InferenceCaptured) -> None:
            arrived("raw", message.inference_id)

        async def wrapper_handler(event: Event[InferenceCaptured]) -> None:
            arrived("wrapper", event.message.inference_id)

        consumers: dict[str, RawConsumer | EventConsumer] = {
            "raw": RawConsumer(
                self.settings,
                group_id=f"bench-{self.run_id}-lat-raw-{phase}",
                topics=[topics["raw"].name],
                handler=raw_handler,
            ),
            "wrapper": EventConsumer(
                self.settings,
                group_id=f"bench-{self.run_id}-lat-wrapper-{phase}",
                topics=[topics["wrapper"]],
                handler=wrapper_handler,
                source="bench-wrapper",
                producer=wrapper,
            ),
        }

        async def send(variant: str, message: InferenceCaptured) -> None:
            sent[variant][message.inference_id] = time.perf_counter()
            if variant == "raw":
                await raw.send_and_wait(
                    topics["raw"].name,
                    value=message.SerializeToString(),
                    key=message.inference_id.encode(),
                )
            else:
                await wrapper.publish(topics["wrapper"], message, key=message.inference_id)

        async def stream(
            variant: str, messages: list[InferenceCaptured], start: float
        ) -> list[float]:
            sent[variant].clear()
            seen[variant].clear()
            complete[variant].clear()
            expected[variant] = len(messages)
            interval = 1 / plan.rate
            for i, message in enumerate(messages):
                await asyncio.sleep(max(0.0, start + i * interval - time.perf_counter()))
                await send(variant, message)
            async with asyncio.timeout(30):
                await complete[variant].wait()
            return [seen[variant][m.inference_id] * 1000 for m in messages]

        async def both(size: str, count: int, rep: int) -> dict[str, list[float]]:
            first, second = order(rep, list(variants))
            start = time.perf_counter() + 0.01
            results = await asyncio.gather(
                stream(first, make_messages(size, count), start),
                stream(second, make_messages(size, count), start + 0.5 / plan.rate),
            )
            return {first: results[0], second: results[1]}

        await asyncio.gather(*(c.start() for c in consumers.values()))
        try:
            await asyncio.gather(*(c.wait_assigned() for c in consumers.values()))
            # Warm-up: the first records after a join also wait for the offset reset.
            await both("small", 5, 0)
            for size in ("small", "large"):
                for rep in range(plan.reps):
                    values = await both(size, plan.latency[size], rep)
                    for variant in variants:
                        for q in (50, 99):
                            name = f"{phase}.latency.{size}.{variant}.p{q}"
                            self.rec.add(
                                name,
                                percentile(values[variant], q),
                                label=f"{phase} · latency {size} · {variant} · p{q}",
                                unit="ms",
                                better="lower",
                            )
                        self.log(
                            f"latency {size} {variant} rep {rep}: "
                            f"p50 {percentile(values[variant], 50):.2f} "
                            f"p99 {percentile(values[variant], 99):.2f} ms"
                        )
                for q in (50, 99):
                    p = f"{phase}.latency.{size}"
                    self.rec.ratio(
                        f"{p}.p{q}",
                        f"{p}.wrapper.p{q}",
                        f"{p}.raw.p{q}",
                        f"{phase} · latency {size} p{q}: publish→EventConsumer ÷ raw→raw",
                    )
        finally:
            await asyncio.gather(*(c.stop() for c in consumers.values()))

    # --- (c) consume throughput -----------------------------------------------------------

    async def consume(self, phase: str) -> None:
        topic = self.topic("consume")
        async with self.producers() as (_, wrapper):
            await self.create(topic)
            await self._consume(phase, wrapper, topic)
        await self.drop(topic)

    async def _consume(
        self, phase: str, wrapper: EventProducer, topic: Topic[InferenceCaptured]
    ) -> None:
        plan = self.plan
        # Pre-fill through EventProducer so the records carry the real envelope headers.
        messages = make_messages("small", plan.consume)
        started = time.perf_counter()
        for i in range(0, len(messages), CHUNK):
            chunk = messages[i : i + CHUNK]
            await asyncio.gather(*(wrapper.publish(topic, m, key=m.inference_id) for m in chunk))
        self.log(f"pre-filled {len(messages)} records in {time.perf_counter() - started:.1f}s")

        async def once(variant: str, group_id: str) -> tuple[float, float]:
            count = 0
            first = last = 0.0
            done = asyncio.Event()

            def handled() -> None:
                nonlocal count, first, last
                count += 1
                if count == 1:
                    first = time.perf_counter()
                if count == plan.consume:
                    last = time.perf_counter()
                    done.set()

            async def raw_handler(message: InferenceCaptured) -> None:
                handled()

            async def wrapper_handler(event: Event[InferenceCaptured]) -> None:
                handled()

            consumer: RawConsumer | EventConsumer
            if variant == "raw":
                consumer = RawConsumer(
                    self.settings, group_id=group_id, topics=[topic.name], handler=raw_handler
                )
            else:
                consumer = EventConsumer(
                    self.settings,
                    group_id=group_id,
                    topics=[topic],
                    handler=wrapper_handler,
                    source="bench-wrapper",
                    producer=wrapper,
                )
            joining = time.perf_counter()
            await consumer.start()
            try:
                await consumer.wait_assigned()
                joined = time.perf_counter() - joining
                async with asyncio.timeout(120):
                    await done.wait()
            finally:
                await consumer.stop()
            return (count - 1) / (last - first), joined

        for rep in range(plan.reps):
            for variant in order(rep, ["raw", "wrapper"]):
                group_id = f"bench-{self.run_id}-consume-{phase}-{variant}-{rep}"
                rate, joined = await once(variant, group_id)
                self.join_s[variant].append(joined)
                name = f"{phase}.consume.small.{variant}"
                label = (
                    "raw loop (parse, handler, commit per batch)"
                    if variant == "raw"
                    else "EventConsumer"
                )
                self.rec.add(
                    name,
                    rate,
                    label=f"{phase} · consume small · {label}",
                    unit="msg/s",
                    better="higher",
                )
                self.log(f"{name} rep {rep}: {rate:,.0f} msg/s (join {joined:.2f}s)")
        p = f"{phase}.consume.small"
        self.rec.ratio(
            p,
            f"{p}.wrapper",
            f"{p}.raw",
            f"{phase} · consume small: EventConsumer ÷ raw loop",
        )

    # --- driver ---------------------------------------------------------------------------

    async def main(self) -> None:
        self.admin = admin_client(self.settings, "bench-admin")
        await self.admin.start()
        try:
            for phase in self.plan.phases:
                if phase == "otel-sdk":
                    install_sdk_telemetry()
                started = time.perf_counter()
                await self.produce(phase)
                self.log(f"{phase} produce took {time.perf_counter() - started:.1f}s")
                started = time.perf_counter()
                await self.latency(phase)
                self.log(f"{phase} latency took {time.perf_counter() - started:.1f}s")
                started = time.perf_counter()
                await self.consume(phase)
                self.log(f"{phase} consume took {time.perf_counter() - started:.1f}s")
        finally:
            await self.admin.close()


def install_sdk_telemetry() -> None:
    """What a service's ``main()`` does: SDK tracer (sampling every trace) and meter providers."""
    from mlbus.core.telemetry import setup_telemetry

    # No span exporter (the service default): spans are recorded, then dropped at their end.
    setup_telemetry(
        "mlbus-bench",
        TelemetrySettings(traces_exporter="none", metrics_exporter="prometheus"),
        metrics_port=0,
    )


def _median(figures: dict[str, dict[str, Any]], name: str) -> float | None:
    figure = figures.get(name)
    return statistics.median(figure["runs"]) if figure and figure["runs"] else None


def notes(bench: Bench, sizes: dict[str, int]) -> list[str]:
    """Plain-language facts of this run that the tables do not show directly."""
    figures, settings = bench.rec.figures, bench.settings
    header_bytes = sum(
        len(k) + len(v) for k, v in build_headers(InferenceCaptured, source="bench-wrapper")
    )
    out = [
        f"Messages: `{InferenceCaptured.DESCRIPTOR.full_name}`, {sizes['small']} B (small) and "
        f"{sizes['large']} B (large) serialized, one-partition topics, keyed by inference id. "
        f"The envelope headers add {header_bytes} B per record (plus about 55 B of "
        "`traceparent` when a span is recording).",
        f"Client settings are the `KafkaSettings` defaults: acks={settings.acks}, "
        f"linger_ms={settings.linger_ms}, max_batch_size={settings.max_batch_size}, "
        f"fetch_max_wait_ms={settings.fetch_max_wait_ms}, "
        f"max_poll_records={settings.max_poll_records}; only the session is shorter "
        f"({settings.session_timeout_ms} ms) to make the group joins faster.",
    ]
    seq_w = _median(figures, "otel-api.produce.small.publish_sequential")
    seq_r = _median(figures, "otel-api.produce.small.raw_send_and_wait")
    if seq_w and seq_r:
        out.append(
            "`publish()` awaits the acknowledgement of each record, so publishing one at a "
            f"time is bound by linger_ms ({settings.linger_ms} ms) plus a round trip: "
            f"{seq_w:,.0f} msg/s, the same as raw `send_and_wait()` ({seq_r:,.0f} msg/s). "
            "Bulk publishing needs one task per record (`asyncio.gather`); keep the "
            f"batches bounded (chunks of {CHUNK} here): one unbounded gather is slower "
            "and degrades as N grows (aiokafka wakes every waiting `send()` each time a "
            "full batch drains)."
        )
    joins = bench.join_s["raw"] + bench.join_s["wrapper"]
    if joins:
        out.append(
            f"Group join (not part of any figure): median {statistics.median(joins):.2f} s, "
            "which is session_timeout_ms / 2 on the embedded broker."
        )
    out.append(
        "otel-api = no OpenTelemetry SDK in the process (the library default, as in most "
        "tests); otel-sdk = after `setup_telemetry` as a service's `main()` calls it "
        "(every span sampled and recorded, no span exporter; Prometheus metric reader). "
        "Raw aiokafka does no telemetry in either phase."
    )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark against ``args.bootstrap_servers``; return its figures."""
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    bench = Bench(args.bootstrap_servers, plan, verbose=args.verbose)
    asyncio.run(bench.main())

    sizes = {size: make_messages(size, 1)[0].ByteSize() for size in PAYLOAD_BYTES}
    return {
        "title": TITLE,
        "repetitions": plan.reps,
        "config": {
            "plan": plan.__dict__,
            "message_bytes": sizes,
            "message_type": InferenceCaptured.DESCRIPTOR.full_name,
            "topic_partitions": 1,
            "kafka_settings": bench.settings.model_dump(
                include={
                    "acks",
                    "linger_ms",
                    "max_batch_size",
                    "compression_type",
                    "fetch_max_wait_ms",
                    "max_poll_records",
                    "session_timeout_ms",
                    "heartbeat_interval_ms",
                }
            ),
            "group_join_s": bench.join_s,
        },
        "figures": bench.rec.figures,
        "ratios": bench.rec.ratios,
        "notes": notes(bench, sizes),
    }
