"""The status-event relay on a real broker and database: events another replica left
unsent long enough are published by this one (a replica that went away for good loses
none), and stopping publishes what is pending instead of cancelling a batch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from sqlalchemy import insert, update

from mlbus.core.messaging import EventProducer, TopicCatalogue, ensure_topics
from mlbus.core.settings import KafkaSettings
from mlbus.trainer.adapters import tables as t
from mlbus.trainer.adapters.database import Database, SqlJobStore
from mlbus.trainer.domain.models import Job, JobKind, JobSpec
from mlbus.trainer.events.kafka import OutboxRelay
from mlbus.trainer.v1 import events_pb2 as ev


def job(job_id: str) -> Job:
    return Job(
        job_id=job_id,
        kind=JobKind.TRAINING,
        experiment="exp",
        spec=JobSpec(algorithm="linear-regression", input_uri="/x.csv", target_column="y"),
        actor="alice",
        create_time=datetime.now(UTC),
    )


def pending_event(j: Job) -> tuple[str, bytes]:
    message = ev.JobStatusChanged(job_id=j.job_id, status=ev.JOB_STATUS_PENDING)
    return f"{j.job_id}/PENDING", message.SerializeToString()


async def published(kafka: KafkaSettings, topic: str, count: int) -> dict[str, str]:
    """``count`` records of ``topic``: key → ce_id."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 30
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:
                    assert record.key is not None
                    found[record.key.decode()] = dict(record.headers)["ce_id"].decode()
    finally:
        await consumer.stop()
    return found


@dataclass
class Setup:
    kafka: KafkaSettings
    catalogue: TopicCatalogue
    database: Database


@pytest.fixture
async def setup(
    kafka_settings: KafkaSettings, unique_name: Callable[[str], str], tmp_path: Path
) -> AsyncIterator[Setup]:
    """A topic namespace of the test's own on the session's broker, and a jobs database."""
    kafka = kafka_settings.model_copy(update={"topic_namespace": unique_name("relay")})
    catalogue = TopicCatalogue(kafka.topic_namespace)
    await ensure_topics(kafka, [catalogue.job_status_changed])
    database = Database(f"sqlite:///{tmp_path / 'jobs.db'}")
    await database.start(migrate=True)
    try:
        yield Setup(kafka, catalogue, database)
    finally:
        await database.aclose()


async def test_events_a_gone_replica_left_are_published_by_another(setup: Setup) -> None:
    kafka, catalogue, database = setup.kafka, setup.catalogue, setup.database
    gone = SqlJobStore(database, "replica-gone")
    alive = SqlJobStore(database, "replica-b")
    await gone.insert(job("old"), pending_event)
    await gone.insert(job("recent"), pending_event)
    await alive.insert(job("mine"), pending_event)
    async with database.transaction() as conn:  # written two minutes ago, never sent
        await conn.execute(
            update(t.outbox)
            .where(t.outbox.c.job_id == "old")
            .values(create_time=datetime.now(UTC) - timedelta(minutes=2))
        )
    async with EventProducer(kafka, source="test") as producer:
        relay = OutboxRelay(alive, producer, catalogue, adopt_after=timedelta(minutes=1))
        assert await relay.relay_once() == 2
        assert await relay.relay_once() == 0
    # The recent one may still be sent by its own replica: left alone.
    left = await gone.pending_events(["replica-gone", "replica-b"], 10)
    assert [e.job_id for e in left] == ["recent"]
    assert await published(kafka, catalogue.job_status_changed.name, 2) == {
        "old": "old/PENDING",
        "mine": "mine/PENDING",
    }


async def test_stopping_publishes_what_is_pending(setup: Setup) -> None:
    kafka, catalogue, database = setup.kafka, setup.catalogue, setup.database
    store = SqlJobStore(database, "replica-a")
    async with EventProducer(kafka, source="test") as producer:
        # A long poll interval: only stop() can make these go now. (A stop timeout far
        # longer than the work: each event waits for its acknowledgement, and a loaded CI
        # machine once took more than 5 s for 250 of them.)
        relay = OutboxRelay(
            store, producer, catalogue, poll_interval_s=30, batch_size=20, stop_timeout_s=60
        )
        await relay.start()
        for i in range(50):  # several batches
            await store.insert(job(f"job-{i}"), pending_event)
        await relay.stop()
    assert await store.pending_events(["replica-a"], 10) == []
    found = await published(kafka, catalogue.job_status_changed.name, 50)
    assert len(found) == 50
    assert found["job-49"] == "job-49/PENDING"


async def test_each_jobs_events_are_published_in_order(setup: Setup) -> None:
    kafka, catalogue, database = setup.kafka, setup.catalogue, setup.database
    store = SqlJobStore(database, "replica-a")
    statuses = [ev.JOB_STATUS_PENDING, ev.JOB_STATUS_RUNNING, ev.JOB_STATUS_COMPLETED]
    now = datetime.now(UTC)
    async with database.transaction() as conn:  # 3 events each for 30 jobs, interleaved
        for status in statuses:
            for i in range(30):
                message = ev.JobStatusChanged(job_id=f"job-{i}", status=status)
                await conn.execute(
                    insert(t.outbox).values(
                        trainer_id="replica-a",
                        event_id=f"job-{i}/{status}",
                        job_id=f"job-{i}",
                        payload=message.SerializeToString(),
                        create_time=now,
                    )
                )
    async with EventProducer(kafka, source="test") as producer:
        relay = OutboxRelay(store, producer, catalogue)
        assert await relay.relay_once() == 90
    consumer = AIOKafkaConsumer(
        catalogue.job_status_changed.name,
        bootstrap_servers=kafka.bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
    )
    await consumer.start()
    seen: dict[str, list[int]] = {}
    try:
        deadline = time.monotonic() + 30
        while sum(map(len, seen.values())) < 90 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                for record in records:  # a partition's records, in its order
                    message = ev.JobStatusChanged.FromString(record.value)
                    seen.setdefault(message.job_id, []).append(message.status)
    finally:
        await consumer.stop()
    assert seen == {f"job-{i}": statuses for i in range(30)}
