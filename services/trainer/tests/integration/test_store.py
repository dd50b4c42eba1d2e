"""The jobs store on real SQLite and PostgreSQL: migrations, idempotent insert, one winner
per claim, conditional transitions with their outbox events, pages and logs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from mlbus.trainer.adapters.database import Database, JobFilter, SqlJobStore
from mlbus.trainer.domain.models import Job, JobKind, JobSpec, JobStatus, LogLine


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlJobStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    database = Database(url)
    await database.start(migrate=True)
    try:
        yield SqlJobStore(database, "writer")
    finally:
        if request.param == "postgresql":
            async with database.transaction() as conn:
                await conn.execute(
                    text("DELETE FROM jobs; DELETE FROM job_logs; DELETE FROM trainer_outbox")
                )
        await database.aclose()


def job(job_id: str, minute: int = 0) -> Job:
    return Job(
        job_id=job_id,
        kind=JobKind.TRAINING,
        experiment="exp",
        spec=JobSpec(algorithm="linear-regression", input_uri="/x.csv", target_column="y"),
        actor="alice",
        create_time=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute),
    )


def event(j: Job) -> tuple[str, bytes]:
    return f"{j.job_id}/{j.status.value}", j.status.value.encode()


async def test_insert_claim_transition_and_events(store: SqlJobStore) -> None:
    _, new = await store.insert(job("a"), event)
    assert new
    again, new = await store.insert(job("a").model_copy(update={"actor": "mallory"}), event)
    assert not new
    assert again.actor == "alice"

    lease = datetime.now(UTC) + timedelta(seconds=30)
    claims = await asyncio.gather(*(store.claim("a", f"t{i}", lease) for i in range(4)))
    winners = [c for c in claims if c is not None]
    assert len(winners) == 1
    holder = winners[0].trainer_id
    assert await store.claimable(10) == []

    other = "t9" if holder != "t9" else "t8"
    assert (
        await store.transition(
            "a", expect=[JobStatus.PENDING], holder=other, status=JobStatus.RUNNING
        )
        is None
    )
    running = await store.transition(
        "a",
        expect=[JobStatus.PENDING],
        holder=holder,
        event=event,
        status=JobStatus.RUNNING,
        start_time=datetime.now(UTC),
    )
    assert running is not None
    assert running.status == JobStatus.RUNNING
    assert running.start_time is not None
    assert running.start_time.tzinfo is not None
    events = await store.pending_events(["writer"], 10)
    assert [e.event_id for e in events] == ["a/PENDING", "a/RUNNING"]
    await store.mark_sent([e.id for e in events])
    assert await store.pending_events(["writer"], 10) == []
    flagged = await store.request_stop("a", "stopped by bob")
    assert flagged is not None
    renewal = await store.renew(holder, ["a"], lease)
    assert renewal.stop == {"a"}
    assert renewal.lost == set()


async def test_an_ended_job_keeps_its_status(store: SqlJobStore) -> None:
    await store.insert(job("done"))
    lease = datetime.now(UTC) + timedelta(seconds=30)
    assert await store.claim("done", "t1", lease) is not None
    for before, after in (
        (JobStatus.PENDING, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.COMPLETED),
    ):
        assert await store.transition("done", expect=[before], holder="t1", status=after)
    # A stop that comes late finds nothing to change.
    assert await store.request_stop("done", "stopped by bob") is None
    assert (
        await store.transition("done", expect=[JobStatus.RUNNING], status=JobStatus.STOPPED) is None
    )
    with pytest.raises(ValueError, match="a transition from COMPLETED was asked for"):
        await store.transition("done", expect=[JobStatus.COMPLETED], status=JobStatus.STOPPED)
    stored = await store.get("done")
    assert stored is not None
    assert (stored.status, stored.reason, stored.stop_requested) == (JobStatus.COMPLETED, "", False)


async def test_pages_newest_first_and_logs(store: SqlJobStore) -> None:
    for i in range(5):
        await store.insert(job(f"j{i}", minute=i))
    first, token = await store.list_jobs(JobFilter(experiment="exp"), page_size=2)
    assert [j.job_id for j in first] == ["j4", "j3"]
    second, token = await store.list_jobs(
        JobFilter(experiment="exp"), page_size=2, page_token=token
    )
    third, token = await store.list_jobs(JobFilter(experiment="exp"), page_size=2, page_token=token)
    assert [j.job_id for j in second + third] == ["j2", "j1", "j0"]
    assert token == ""

    now = datetime.now(UTC)
    await store.append_logs(
        "j0", [LogLine(number=n, time=now, text=f"line {n}") for n in range(1, 6)]
    )
    assert await store.last_log_number("j0") == 5
    assert [x.text for x in await store.read_logs("j0", 4, 10)] == ["line 4", "line 5"]


async def test_a_database_shared_with_the_registry_migrates_both(postgres_url: str) -> None:
    """Registry and trainer may share one PostgreSQL database: each keeps its own Alembic
    version table, so neither mistakes the other's revision for its own."""
    from mlbus.registry.adapters.database import Database as RegistryDatabase

    registry = RegistryDatabase(postgres_url)
    await registry.start(migrate=True)
    await registry.aclose()
    database = Database(postgres_url)
    await database.start(migrate=True)
    try:
        store = SqlJobStore(database, "writer")
        _, new = await store.insert(job("shared-1"), event)
        assert new
        async with database.transaction() as conn:
            await conn.execute(
                text("DELETE FROM jobs; DELETE FROM job_logs; DELETE FROM trainer_outbox")
            )
    finally:
        await database.aclose()


async def test_unsent_events_of_other_writers_count_once_stale(store: SqlJobStore) -> None:
    other = SqlJobStore(store.db, "other")
    await other.insert(job("theirs"), event)
    await store.insert(job("ours"), event)
    assert [e.job_id for e in await store.pending_events(["writer"], 10)] == ["ours"]
    before = datetime.now(UTC) - timedelta(minutes=1)
    assert [e.job_id for e in await store.pending_events(["writer"], 10, stale_before=before)] == [
        "ours"
    ]
    later = datetime.now(UTC) + timedelta(seconds=1)
    assert [e.job_id for e in await store.pending_events(["writer"], 10, stale_before=later)] == [
        "theirs",
        "ours",
    ]


async def test_a_lease_renewed_after_the_job_looked_orphaned_is_not_taken_over(
    store: SqlJobStore,
) -> None:
    await store.insert(job("leased"))
    past = datetime.now(UTC) - timedelta(seconds=1)
    assert await store.claim("leased", "t1", past) is not None  # t1's lease ran out...
    [orphan] = await store.orphans("t2", own=False)
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert (await store.renew("t1", ["leased"], later)).lost == set()  # ...and t1 renewed it
    assert not await store.take_over(orphan, "t2", later)  # so t2 may not take it
    assert (await store.get("leased")).trainer_id == "t1"  # type: ignore[union-attr]

    # When t1 really is gone, t2 takes the job, and t1 learns at its next renewal.
    assert await store.renew("t1", ["leased"], past) is not None
    [orphan] = await store.orphans("t2", own=False)
    assert await store.take_over(orphan, "t2", later)
    renewal = await store.renew("t1", ["leased"], later)
    assert renewal.lost == {"leased"}
    assert (await store.get("leased")).trainer_id == "t2"  # type: ignore[union-attr]
    # A replica recovering its own jobs at start takes them whatever their lease.
    [own] = await store.orphans("t2", own=True)
    assert await store.take_over(own, "t2", later)


async def test_concurrent_inserts_of_one_id_make_one_job(store: SqlJobStore) -> None:
    results = await asyncio.gather(*(store.insert(job("twice"), event) for _ in range(4)))
    assert sorted(new for _, new in results) == [False, False, False, True]
    assert {stored.job_id for stored, _ in results} == {"twice"}
    assert [e.job_id for e in await store.pending_events(["writer"], 10)] == ["twice"]
