"""Consuming events at least once: decode, handle in order, retry, dead-letter, then commit.

One :class:`EventConsumer` is one member of a consumer group running one loop task. The
records of a partition are handled strictly in order, one at a time, each inside a CONSUMER
span whose parent is the trace context the record carries. An offset is committed only once
its record was handled or dead-lettered:

* a record that cannot be decoded (bad bytes, another ``ce_type``) goes to ``<topic>.dlq`` at
  once, with headers naming the error and where the record came from;
* a handler raising :class:`RetryableError` is retried with exponential backoff
  (``retry_backoff_ms`` doubling, ``retry_attempts`` times), then dead-lettered;
* any other handler exception dead-letters the record at once;
* if the dead-letter publish itself fails, the partition stops where it is (nothing is
  committed or skipped) and tries again after a backoff.

Handlers must be idempotent by event id (``event.id``): after a crash or a rebalance the
records after the last commit are delivered again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Generic

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord, TopicPartition
from google.protobuf.message import Message
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from typing_extensions import TypeVar

from mlbus.core.messaging.envelope import Envelope, EventDecodeError, decode, format_time
from mlbus.core.messaging.producer import INSTRUMENTATION, EventProducer
from mlbus.core.messaging.topics import Topic, ensure_topics
from mlbus.core.settings import KafkaSettings
from mlbus.core.telemetry import extract_kafka_context

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message, default=Message)

H_ERROR: Final = "mlbus-error"
H_ERROR_TYPE: Final = "mlbus-error-type"
H_SOURCE_TOPIC: Final = "mlbus-source-topic"
H_SOURCE_PARTITION: Final = "mlbus-source-partition"
H_SOURCE_OFFSET: Final = "mlbus-source-offset"
H_FAILED_AT: Final = "mlbus-failed-at"
H_ATTEMPTS: Final = "mlbus-attempts"
H_CONSUMER_GROUP: Final = "mlbus-consumer-group"
#: Headers a dead letter gets on top of the original record's.
DLQ_HEADERS: Final = (
    H_ERROR,
    H_ERROR_TYPE,
    H_SOURCE_TOPIC,
    H_SOURCE_PARTITION,
    H_SOURCE_OFFSET,
    H_FAILED_AT,
    H_ATTEMPTS,
    H_CONSUMER_GROUP,
)
_MAX_ERROR_TEXT: Final = 4000
#: Longest pause of a partition whose dead-letter publish keeps failing.
_MAX_BLOCKED_S: Final = 30.0
#: How long one poll waits for records when there are none.
_POLL_TIMEOUT_MS: Final = 500


class RetryableError(Exception):
    """Raised by a handler for a failure that may pass if tried again (a dependency is down, a
    deadline expired); the consumer retries with backoff before dead-lettering."""


@dataclass(frozen=True, slots=True)
class Event(Generic[M]):
    """One decoded record handed to a handler."""

    message: M
    topic: Topic[M]
    #: The key as text (UTF-8, undecodable bytes replaced); ``raw_key`` has the bytes.
    key: str | None
    raw_key: bytes | None
    envelope: Envelope
    partition: int
    offset: int
    #: The record's timestamp (producer create time, or broker append time).
    timestamp: datetime
    #: 1 on first delivery to the handler in this process, 2 on its first retry, ...
    attempt: int = 1

    @property
    def id(self) -> str:
        """The event id (``ce_id``) to deduplicate by."""
        return self.envelope.id

    @property
    def headers(self) -> tuple[tuple[str, bytes], ...]:
        """All headers of the record."""
        return self.envelope.headers


Handler = Callable[[Event[Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that was sent to its dead-letter topic (given to ``on_dead_letter``)."""

    topic: Topic[Any]
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int
    error: BaseException
    #: The decoded message; None when the record could not be decoded (a poison message).
    message: Any = None


DeadLetterHook = Callable[[DeadLetter], Awaitable[None]]


# --- telemetry --------------------------------------------------------------------------------

_tracer = trace.get_tracer(INSTRUMENTATION)
_meter = metrics.get_meter(INSTRUMENTATION)
_consumed = _meter.create_counter(
    "mlbus.messaging.records.consumed", unit="{record}", description="Records fetched for handling."
)
_handled = _meter.create_counter(
    "mlbus.messaging.records.handled", unit="{record}", description="Records the handler accepted."
)
_dead_lettered = _meter.create_counter(
    "mlbus.messaging.records.dead_lettered",
    unit="{record}",
    description="Records sent to the dead-letter topic.",
)
_dropped = _meter.create_counter(
    "mlbus.messaging.records.dropped",
    unit="{record}",
    description="Failed records of topics without a dead-letter topic (logged, then skipped).",
)
_retries = _meter.create_counter(
    "mlbus.messaging.handler.retries",
    unit="{retry}",
    description="Handler retries after RetryableError.",
)
_duration = _meter.create_histogram(
    "mlbus.messaging.handler.duration", unit="s", description="Time of one handler call."
)
_live_consumers: weakref.WeakSet[EventConsumer] = weakref.WeakSet()


def _observe_lag(options: CallbackOptions) -> Iterable[Observation]:
    for consumer in list(_live_consumers):
        yield from consumer._lag_observations()


_meter.create_observable_gauge(
    "mlbus.messaging.consumer.lag",
    callbacks=[_observe_lag],
    unit="{record}",
    description="Records not yet handled per partition: end offset minus next offset to handle.",
)


# --- consumer ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _PartitionState:
    """What this member knows about one assigned partition during one assignment."""

    tp: TopicPartition
    topic: Topic[Any]
    #: Offset after the last handled or dead-lettered record: what a commit stores.
    next_offset: int | None = None
    committed: int | None = None
    #: Offset of the first record fetched in this assignment (lag before anything is handled).
    first_seen: int | None = None
    active: bool = True
    #: Set when the in-flight record should give up waiting (stop, revocation).
    interrupted: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    blocked_until: float = 0.0
    blocked_failures: int = 0


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owner._on_assigned(assigned)


def consumer_config(
    settings: KafkaSettings,
    *,
    group_id: str,
    source: str,
    fetch_max_wait_ms: int | None = None,
    max_poll_records: int | None = None,
    max_handle_s: float | None = None,
) -> dict[str, Any]:
    """Keyword arguments for :class:`AIOKafkaConsumer` from ``settings``.

    ``fetch_max_wait_ms`` overrides the setting for one consumer (e.g. a longer wait for a
    queue whose latency matters less than the idle polling it costs); so does
    ``max_poll_records``. ``max_handle_s`` is the longest one record's handler may take
    (a queue of long requests): the member then stays in its group while it handles a
    poll's records one after another (``max_poll_interval_ms``), and while the record in
    hand finishes when its partition is revoked (``rebalance_timeout_ms``). Without it, a
    member busy longer than aiokafka's 5 minutes (or, at a rebalance, the session timeout)
    was dropped from the group and its uncommitted records were run again elsewhere while
    it still ran them.
    """
    wait_ms = settings.fetch_max_wait_ms if fetch_max_wait_ms is None else fetch_max_wait_ms
    records = settings.max_poll_records if max_poll_records is None else max_poll_records
    timing: dict[str, Any] = {}
    if max_handle_s is not None:
        timing = {
            "max_poll_interval_ms": int(max(300.0, max_handle_s * records + 60.0) * 1000),
            "rebalance_timeout_ms": int(
                max(settings.session_timeout_ms / 1000, max_handle_s + 30.0) * 1000
            ),
        }
    return {
        **timing,
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": f"{settings.client_id_prefix}-{source}",
        "group_id": group_id,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "fetch_max_wait_ms": wait_ms,
        "max_poll_records": records,
        "max_partition_fetch_bytes": settings.max_partition_fetch_bytes,
        "fetch_max_bytes": max(50 * 1024 * 1024, settings.max_partition_fetch_bytes),
        "request_timeout_ms": max(settings.request_timeout_ms, settings.session_timeout_ms + 5000),
        "security_protocol": settings.security_protocol,
        # Commits are explicit, after handling (auto-commit also hangs after a broker restart).
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_uncommitted",
    }


class EventConsumer:
    """A consumer-group member that hands decoded events of ``topics`` to ``handler``.

    ``start()`` creates the topics (and DLQs) when missing, joins the group and spawns the loop
    task; ``stop()`` lets the current record finish, commits and leaves the group. ``producer``
    (started by its owner) publishes dead letters; without one the consumer runs its own.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        group_id: str,
        topics: Sequence[Topic[Any]],
        handler: Handler,
        source: str,
        producer: EventProducer | None = None,
        retry_on: tuple[type[BaseException], ...] = (RetryableError,),
        on_dead_letter: DeadLetterHook | None = None,
        concurrent_partitions: bool = False,
        fetch_max_wait_ms: int | None = None,
        max_poll_records: int | None = None,
        max_handle_s: float | None = None,
    ) -> None:
        if not topics:
            raise ValueError("EventConsumer needs at least one topic")
        by_name: dict[str, Topic[Any]] = {}
        for topic in topics:
            if by_name.setdefault(topic.name, topic) != topic:
                raise ValueError(f"topic {topic.name} given twice with different declarations")
        self.settings = settings
        self.group_id = group_id
        self.source = source
        self.topics: tuple[Topic[Any], ...] = tuple(by_name.values())
        self._by_name = by_name
        self._handler = handler
        self._retry_on = retry_on
        #: Called after a record went to the DLQ (e.g. to tell its sender); errors are logged.
        self._on_dead_letter = on_dead_letter
        #: Handle the partitions of one poll concurrently (order is kept within a partition).
        self.concurrent_partitions = concurrent_partitions
        #: Overrides ``settings.fetch_max_wait_ms`` for this consumer when set.
        self.fetch_max_wait_ms = fetch_max_wait_ms
        #: Overrides ``settings.max_poll_records`` for this consumer when set.
        self.max_poll_records = max_poll_records
        #: The longest one record's handling may take (see :func:`consumer_config`).
        self.max_handle_s = max_handle_s
        self._producer = producer
        self._own_producer = producer is None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._states: dict[TopicPartition, _PartitionState] = {}
        self._assigned = asyncio.Event()
        self._stopping = False
        #: True while the loop waits for records or sleeps: only then may stop() cancel it.
        self._idle = False

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the loop task runs."""
        return self._task is not None and not self._task.done()

    @property
    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions this member holds now."""
        return frozenset(tp for tp, s in self._states.items() if s.active)

    async def start(self) -> None:
        """Ensure topics, join the group and start handling in a background task."""
        if self._task is not None:
            raise RuntimeError("EventConsumer was started already")
        if self.settings.create_topics:
            await ensure_topics(self.settings, self.topics)
        if self._producer is None:
            self._producer = EventProducer(self.settings, self.source)
        if self._own_producer:
            await self._producer.start()
        consumer = AIOKafkaConsumer(
            **consumer_config(
                self.settings,
                group_id=self.group_id,
                source=self.source,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                max_poll_records=self.max_poll_records,
                max_handle_s=self.max_handle_s,
            )
        )
        consumer.subscribe(topics=list(self._by_name), listener=_Listener(self))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            if self._own_producer:
                await self._producer.stop()
            raise
        self._consumer = consumer
        self._stopping = False
        _live_consumers.add(self)
        self._task = asyncio.create_task(self._run(), name=f"mlbus-consumer-{self.group_id}")

    async def stop(self, timeout: float | None = None) -> None:
        """Finish the record in hand, commit what was handled, leave the group.

        A handler still busy after ``timeout`` seconds (default: the session timeout) is
        cancelled; its record is not committed and will be delivered again.
        """
        task, consumer = self._task, self._consumer
        if task is None or consumer is None:
            return
        if asyncio.current_task() is task:
            raise RuntimeError("stop() cannot be awaited from inside the handler")
        self._stopping = True
        for state in self._states.values():
            state.interrupted.set()
        if not task.done():
            if self._idle:
                task.cancel()
            grace = timeout if timeout is not None else self.settings.session_timeout_ms / 1000
            done, _ = await asyncio.wait({task}, timeout=grace)
            if not done:
                log.warning(
                    "handler did not finish within %.1fs; cancelling it",
                    grace,
                    extra={"group_id": self.group_id},
                )
                task.cancel()
                await asyncio.wait({task})
        error = None if task.cancelled() else task.exception()
        if error is not None:
            log.error("consumer loop had failed", exc_info=error, extra={"group_id": self.group_id})
        try:
            await self._commit(list(self._states.values()))
        finally:
            _live_consumers.discard(self)
            self._states.clear()
            self._assigned.clear()
            self._task = None
            self._consumer = None
            try:
                await consumer.stop()
            finally:
                if self._own_producer and self._producer is not None:
                    await self._producer.stop()

    async def run(self) -> None:
        """Start if needed and wait until the consumer is stopped; raises if the loop failed."""
        if self._task is None:
            await self.start()
        task = self._task
        assert task is not None
        await asyncio.wait({task})
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error

    async def wait_assigned(self, timeout: float = 30.0) -> frozenset[TopicPartition]:
        """Wait until the group join gave this member partitions; return them.

        Raises TimeoutError after ``timeout`` seconds (e.g. more members than partitions).
        """
        async with asyncio.timeout(timeout):
            while True:
                await self._assigned.wait()
                assignment = self.assignment
                if assignment:
                    return assignment
                self._assigned.clear()

    async def __aenter__(self) -> EventConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- rebalance ------------------------------------------------------------------------

    def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            topic = self._by_name.get(tp.topic)
            if topic is None:
                continue
            previous = self._states.get(tp)
            if previous is not None:
                # Records fetched under the previous assignment must not be handled any more.
                previous.active = False
                previous.interrupted.set()
            self._states[tp] = _PartitionState(tp, topic)
        if self.assignment:
            self._assigned.set()
        log.info(
            "partitions assigned",
            extra={"group_id": self.group_id, "partitions": sorted(map(str, assigned))},
        )

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        states = [s for tp in revoked if (s := self._states.get(tp)) is not None]
        for state in states:
            state.active = False
            state.interrupted.set()
        for state in states:
            # The record in hand finishes first, so its offset is in the commit below.
            async with state.lock:
                pass
        await self._commit(states)
        for state in states:
            if self._states.get(state.tp) is state:
                del self._states[state.tp]
        if not self.assignment:
            self._assigned.clear()

    # --- loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        error_backoff = max(self.settings.retry_backoff_ms, 100) / 1000
        while not self._stopping:
            self._resume_due(consumer)
            self._idle = True
            try:
                batch = await consumer.getmany(timeout_ms=_POLL_TIMEOUT_MS)
            except KafkaError as exc:
                # Coordinator and fetch errors surface here; aiokafka recovers (rejoins) itself.
                log.warning("poll failed: %s", exc, extra={"group_id": self.group_id})
                await asyncio.sleep(error_backoff)
                continue
            finally:
                self._idle = False
            touched: list[_PartitionState] = []
            work = []
            for tp, records in batch.items():
                state = self._states.get(tp)
                if state is None or not records:
                    continue
                touched.append(state)
                if state.first_seen is None:
                    state.first_seen = records[0].offset
                if self.concurrent_partitions:
                    work.append(self._handle_partition(consumer, state, records))
                    continue
                await self._handle_partition(consumer, state, records)
                if self._stopping:
                    break
            if work:
                await asyncio.gather(*work)
            await self._commit([s for s in touched if s.active])

    async def _handle_partition(
        self,
        consumer: AIOKafkaConsumer,
        state: _PartitionState,
        records: list[ConsumerRecord[bytes, bytes]],
    ) -> None:
        for record in records:
            if self._stopping or not state.active:
                return
            async with state.lock:
                if not state.active:
                    return
                done = await self._process(state, record)
                if done:
                    state.next_offset = record.offset + 1
                    state.blocked_failures = 0
            if not done:
                if state.active and not self._stopping:
                    self._block(consumer, state, record.offset)
                return

    def _block(self, consumer: AIOKafkaConsumer, state: _PartitionState, offset: int) -> None:
        # Dead-lettering failed: go back to the record and pause the partition for a while.
        state.blocked_failures += 1
        delay = min(
            _MAX_BLOCKED_S,
            max(self.settings.retry_backoff_ms, 100) / 1000 * 2 ** (state.blocked_failures - 1),
        )
        state.blocked_until = time.monotonic() + delay
        consumer.seek(state.tp, offset)
        consumer.pause(state.tp)
        log.error(
            "partition %s blocked at offset %d for %.1fs: the dead-letter topic is not writable",
            state.tp,
            offset,
            delay,
            extra={"group_id": self.group_id},
        )

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        due = [s.tp for s in self._states.values() if s.active and 0 < s.blocked_until <= now]
        for state in self._states.values():
            if state.tp in due:
                state.blocked_until = 0.0
        if due:
            consumer.resume(*due)

    async def _commit(self, states: Sequence[_PartitionState]) -> None:
        consumer = self._consumer
        pending = {
            s: s.next_offset
            for s in states
            if s.next_offset is not None and s.next_offset != s.committed
        }
        if consumer is None or not pending:
            return
        try:
            await consumer.commit({s.tp: offset for s, offset in pending.items()})
        except KafkaError as exc:
            # E.g. the group rebalanced meanwhile: the records are delivered again (at least once).
            log.warning("commit failed: %s", exc, extra={"group_id": self.group_id})
            return
        for state, offset in pending.items():
            state.committed = offset

    # --- one record -------------------------------------------------------------------------

    async def _process(self, state: _PartitionState, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Handle or dead-letter one record; False if it must be tried again later."""
        topic = state.topic
        attributes = {
            "messaging.destination.name": topic.name,
            "messaging.consumer.group.name": self.group_id,
        }
        _consumed.add(1, attributes)
        parent = extract_kafka_context(record.headers)
        with _tracer.start_as_current_span(
            f"{topic.name} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                **attributes,
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
                "messaging.message.body.size": len(record.value or b""),
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            if record.key is not None:
                span.set_attribute(
                    "messaging.kafka.message.key", record.key.decode("utf-8", "replace")
                )
            try:
                envelope = Envelope.from_headers(
                    record.headers, fallback_id=f"{record.topic}/{record.partition}/{record.offset}"
                )
                span.set_attribute("messaging.message.id", envelope.id)
                message = decode(topic.message_type, envelope, record.value)
            except EventDecodeError as exc:
                _mark_failed(span, exc)
                return await self._dead_letter(state, record, exc, attempts=1)

            attempt = 0
            while True:
                attempt += 1
                event: Event[Any] = Event(
                    message=message,
                    topic=topic,
                    key=None if record.key is None else record.key.decode("utf-8", "replace"),
                    raw_key=record.key,
                    envelope=envelope,
                    partition=record.partition,
                    offset=record.offset,
                    timestamp=datetime.fromtimestamp(record.timestamp / 1000, UTC),
                    attempt=attempt,
                )
                started = time.perf_counter()
                try:
                    await self._handler(event)
                except self._retry_on as exc:
                    _duration.record(
                        time.perf_counter() - started, {**attributes, "outcome": "retryable_error"}
                    )
                    span.record_exception(exc)
                    if attempt > self.settings.retry_attempts:
                        _mark_failed(span, exc)
                        return await self._dead_letter(
                            state, record, exc, attempts=attempt, message=message
                        )
                    delay = self.settings.retry_backoff_ms / 1000 * 2 ** (attempt - 1)
                    _retries.add(1, attributes)
                    log.warning(
                        "handler failed (attempt %d of %d), retrying in %.2fs: %s",
                        attempt,
                        self.settings.retry_attempts + 1,
                        delay,
                        exc,
                        extra={
                            "topic": topic.name,
                            "partition": record.partition,
                            "offset": record.offset,
                            "event_id": envelope.id,
                        },
                    )
                    if not await self._backoff(state, delay):
                        return False
                except Exception as exc:
                    _duration.record(
                        time.perf_counter() - started, {**attributes, "outcome": "error"}
                    )
                    _mark_failed(span, exc)
                    return await self._dead_letter(
                        state, record, exc, attempts=attempt, message=message
                    )
                else:
                    _duration.record(time.perf_counter() - started, {**attributes, "outcome": "ok"})
                    _handled.add(1, attributes)
                    return True

    async def _backoff(self, state: _PartitionState, delay: float) -> bool:
        """Sleep ``delay`` seconds; False if stop or revocation interrupted the wait."""
        if state.interrupted.is_set():
            return False
        try:
            async with asyncio.timeout(delay):
                await state.interrupted.wait()
        except TimeoutError:
            return True
        return False

    async def _dead_letter(
        self,
        state: _PartitionState,
        record: ConsumerRecord[bytes, bytes],
        error: BaseException,
        *,
        attempts: int,
        message: Any = None,
    ) -> bool:
        topic = state.topic
        error_type = f"{type(error).__module__}.{type(error).__qualname__}"
        where = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "error_type": error_type,
            "group_id": self.group_id,
        }
        attributes = {
            "messaging.destination.name": topic.name,
            "messaging.consumer.group.name": self.group_id,
            "error.type": error_type,
        }
        if not topic.dlq:
            log.error("dropping record that failed: %s", error, extra=where)
            _dropped.add(1, attributes)
            return True
        headers = [(k, v) for k, v in record.headers if k not in DLQ_HEADERS]
        headers += [
            (H_ERROR, (str(error) or type(error).__name__)[:_MAX_ERROR_TEXT].encode()),
            (H_ERROR_TYPE, error_type.encode()),
            (H_SOURCE_TOPIC, record.topic.encode()),
            (H_SOURCE_PARTITION, str(record.partition).encode()),
            (H_SOURCE_OFFSET, str(record.offset).encode()),
            (H_FAILED_AT, format_time(datetime.now(UTC)).encode()),
            (H_ATTEMPTS, str(attempts).encode()),
            (H_CONSUMER_GROUP, self.group_id.encode()),
        ]
        assert self._producer is not None
        try:
            await self._producer.publish_raw(
                topic.dlq_name, record.value, key=record.key, headers=headers
            )
        except Exception:
            log.exception("could not publish to %s", topic.dlq_name, extra=where)
            return False
        _dead_lettered.add(1, attributes)
        log.warning("record sent to %s: %s", topic.dlq_name, error, extra=where)
        if self._on_dead_letter is not None:
            letter = DeadLetter(
                topic=topic,
                key=record.key,
                headers=tuple(record.headers),
                partition=record.partition,
                offset=record.offset,
                error=error,
                message=message,
            )
            try:
                await self._on_dead_letter(letter)
            except Exception:
                log.exception("dead-letter hook failed", extra=where)
        return True

    # --- metrics --------------------------------------------------------------------------

    def _lag_observations(self) -> list[Observation]:
        consumer = self._consumer
        if consumer is None:
            return []
        observations = []
        for tp, state in list(self._states.items()):
            position = state.next_offset if state.next_offset is not None else state.first_seen
            if not state.active or position is None:
                continue
            try:
                end = consumer.highwater(tp)
            except (AssertionError, KafkaError):
                continue
            if end is None:
                continue
            observations.append(
                Observation(
                    max(0, end - position),
                    {
                        "messaging.destination.name": tp.topic,
                        "messaging.destination.partition.id": str(tp.partition),
                        "messaging.consumer.group.name": self.group_id,
                    },
                )
            )
        return observations


def _mark_failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("error.type", type(error).__qualname__)
