"""SQL storage of jobs, log lines and status events: SQLite by default, PostgreSQL by URL.

SQLAlchemy Core on its asyncio layer (aiosqlite, psycopg). The trainer's load is a few
writes per job and a log batch every quarter second, so the simple path suffices:

- SQLite: every transaction starts with ``BEGIN IMMEDIATE`` (it takes the write lock up
  front, so two writers, in one process or two replicas on one file, queue on the busy
  timeout instead of failing to upgrade a read lock), in WAL mode, and within this process
  transactions queue on an asyncio lock first.
- PostgreSQL: READ COMMITTED; the claims and transitions are single conditional UPDATEs,
  so two replicas never both win one job.

Times are stored in UTC; SQLite gives them back naive and they are made aware on reading.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import and_, delete, event, func, insert, or_, select, text, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from mlbus.core.errors import InvalidArgument
from mlbus.trainer.adapters import tables as t
from mlbus.trainer.adapters.migrations import run_upgrade
from mlbus.trainer.domain.models import (
    Experiment,
    Job,
    JobKind,
    JobResult,
    JobSpec,
    JobStatus,
    LogLine,
)
from mlbus.trainer.ports import Renewal

log = logging.getLogger(__name__)

#: Builds the status event of a job as it is after a change: (event id, payload).
MakeEvent = Callable[[Job], tuple[str, bytes]]

_MIGRATION_LOCK: Final = int.from_bytes(
    hashlib.sha256(b"mlbus.trainer.migrations").digest()[:8], "big", signed=True
)


def normalize_url(url: str) -> str:
    """The asyncio driver form of a database URL (``sqlite+aiosqlite://``,
    ``postgresql+psycopg://``); other backends are refused."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite+pysqlite://", "sqlite+aiosqlite://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            url = driver + url[len(plain) :]
    if not url.startswith(("postgresql+psycopg://", "sqlite+aiosqlite://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"database URL scheme {scheme!r}: expected postgresql:// (or postgresql+psycopg://) "
            "or sqlite:///path"
        )
    return url


def _aware(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


class Database:
    """The engine, its start-up (migrations) and transactions."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        safe = self.url.split("@", 1)[-1] if "@" in self.url else self.url
        return f"Database({safe!r})"

    @property
    def engine(self) -> AsyncEngine:
        """The started engine."""
        if self._engine is None:
            raise RuntimeError("Database is not started")
        return self._engine

    async def start(self, *, migrate: bool) -> None:
        """Create the engine (and the SQLite file's directory); migrate to head if asked."""
        if self._engine is not None:
            return
        if self.is_sqlite:
            path = self.url.split(":///", 1)[-1]
            if path and path != ":memory:":
                Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once, at start-up
            engine = create_async_engine(self.url, connect_args={"timeout": 30})

            @event.listens_for(engine.sync_engine, "connect")
            def _on_connect(dbapi_connection: Any, record: Any) -> None:
                # Transactions are begun by hand below (BEGIN IMMEDIATE), not by the driver.
                dbapi_connection.isolation_level = None
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.close()

            @event.listens_for(engine.sync_engine, "begin")
            def _on_begin(connection: Any) -> None:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        else:
            engine = create_async_engine(
                self.url,
                pool_size=self._pool_size,
                max_overflow=self._pool_size,
                pool_pre_ping=True,
            )
        self._engine = engine
        if migrate:
            async with self.transaction() as conn:
                if not self.is_sqlite:
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK}
                    )
                await conn.run_sync(run_upgrade)

    async def aclose(self) -> None:
        """Dispose of the engine."""
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """One transaction, committed when the block ends without an error."""
        if self.is_sqlite:
            async with self._lock, self.engine.begin() as conn:
                yield conn
        else:
            async with self.engine.begin() as conn:
                yield conn


# --- rows ------------------------------------------------------------------------------


def _job_values(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "kind": job.kind.value,
        "experiment": job.experiment,
        "parent_job_id": job.parent_job_id,
        "spec_json": job.spec.model_dump_json(),
        "actor": job.actor,
        "status": job.status.value,
        "reason": job.reason,
        "create_time": _utc(job.create_time),
        "start_time": _utc(job.start_time),
        "end_time": _utc(job.end_time),
        "attempts": job.attempts,
        "trainer_id": job.trainer_id,
        "stop_requested": job.stop_requested,
        "result_json": job.result.model_dump_json(),
    }


def _job(row: Row[Any]) -> Job:
    m = row._mapping
    return Job(
        job_id=m["job_id"],
        kind=JobKind(m["kind"]),
        experiment=m["experiment"],
        parent_job_id=m["parent_job_id"],
        spec=JobSpec.model_validate_json(m["spec_json"]),
        actor=m["actor"],
        status=JobStatus(m["status"]),
        reason=m["reason"],
        create_time=_aware(m["create_time"]) or datetime.now(UTC),
        start_time=_aware(m["start_time"]),
        end_time=_aware(m["end_time"]),
        attempts=m["attempts"],
        trainer_id=m["trainer_id"],
        stop_requested=bool(m["stop_requested"]),
        result=JobResult.model_validate_json(m["result_json"]),
    )


@dataclass(frozen=True, slots=True)
class JobFilter:
    """What ListJobs narrows to; empty fields do not filter."""

    experiment: str = ""
    status: JobStatus | None = None
    kind: JobKind | None = None
    parent_job_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A status event waiting to be published."""

    id: int
    event_id: str
    job_id: str
    payload: bytes


def _token(moment: datetime, job_id: str, filters: JobFilter) -> str:
    raw = json.dumps([moment.isoformat(), job_id, _filter_hash(filters)])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _filter_hash(filters: JobFilter) -> str:
    text_ = f"{filters.experiment}|{filters.status}|{filters.kind}|{filters.parent_job_id}"
    return hashlib.sha256(text_.encode()).hexdigest()[:16]


def _untoken(token: str, filters: JobFilter) -> tuple[datetime, str]:
    try:
        moment, job_id, digest = json.loads(base64.urlsafe_b64decode(token.encode()))
        when = datetime.fromisoformat(moment)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"page.page_token: not a token this server gave ({exc})") from None
    if digest != _filter_hash(filters):
        raise InvalidArgument("page.page_token: given with other filters than the first page")
    return when, str(job_id)


class SqlJobStore:
    """Jobs, log lines and the outbox in SQL (see the module docstring)."""

    def __init__(self, database: Database, writer_id: str) -> None:
        self.db = database
        #: This replica: the events it writes are the ones its relay publishes.
        self.writer_id = writer_id

    # --- jobs ---------------------------------------------------------------------------

    async def insert(self, job: Job, event: MakeEvent | None = None) -> tuple[Job, bool]:
        """Insert ``job`` unless its id exists; the stored job and whether it was new (two
        inserts of one id at once: one is new, the other gets the stored job)."""
        try:
            async with self.db.transaction() as conn:
                found = (
                    await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job.job_id))
                ).first()
                if found is not None:
                    return _job(found), False
                values = _job_values(job)
                values["update_time"] = datetime.now(UTC)
                await conn.execute(insert(t.jobs).values(**values))
                if event is not None:
                    await self._add_event(conn, job, event)
        except sa_exc.IntegrityError:
            # Another transaction inserted the id between our read and our insert
            # (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises them).
            stored = await self.get(job.job_id)
            if stored is None:
                raise
            return stored, False
        return job, True

    async def get(self, job_id: str) -> Job | None:
        """The job, or None."""
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).first()
        return None if row is None else _job(row)

    async def list_jobs(
        self, filters: JobFilter, *, page_size: int, page_token: str = ""
    ) -> tuple[list[Job], str]:
        """Newest first, ``page_size`` at most; the jobs and the next page's token."""
        query = select(t.jobs)
        if filters.experiment:
            query = query.where(t.jobs.c.experiment == filters.experiment)
        if filters.status is not None:
            query = query.where(t.jobs.c.status == filters.status.value)
        if filters.kind is not None:
            query = query.where(t.jobs.c.kind == filters.kind.value)
        if filters.parent_job_id is not None:
            query = query.where(t.jobs.c.parent_job_id == filters.parent_job_id)
        if page_token:
            moment, job_id = _untoken(page_token, filters)
            query = query.where(
                or_(
                    t.jobs.c.create_time < _utc(moment),
                    and_(t.jobs.c.create_time == _utc(moment), t.jobs.c.job_id < job_id),
                )
            )
        query = query.order_by(t.jobs.c.create_time.desc(), t.jobs.c.job_id.desc())
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(page_size + 1))).all()
        jobs = [_job(r) for r in rows[:page_size]]
        more = len(rows) > page_size
        token = _token(jobs[-1].create_time, jobs[-1].job_id, filters) if more and jobs else ""
        return jobs, token

    async def transition(
        self,
        job_id: str,
        *,
        expect: Sequence[JobStatus],
        holder: str | None = None,
        event: MakeEvent | None = None,
        **changes: Any,
    ) -> Job | None:
        """Apply ``changes`` to the job if its status is one of ``expect`` (and, with
        ``holder``, that replica holds it); the job after, or None if it did not match.
        ``event`` builds the status event from the job after; it goes to the outbox.

        Only PENDING and RUNNING jobs change: a job that ended (COMPLETED, FAILED, STOPPED)
        keeps its status and result, whatever comes late (a stop request, a recovery)."""
        ended = [s.value for s in expect if s.terminal]
        if ended:
            raise ValueError(
                f"job {job_id}: a transition from {', '.join(ended)} was asked for; "
                "expected PENDING or RUNNING (a job that ended keeps its status)"
            )
        values = {k: (_utc(v) if isinstance(v, datetime) else v) for k, v in changes.items()}
        if "status" in values and isinstance(values["status"], JobStatus):
            values["status"] = values["status"].value
        if "result" in values:
            values["result_json"] = changes["result"].model_dump_json()
            del values["result"]
        values["update_time"] = datetime.now(UTC)
        condition = and_(t.jobs.c.job_id == job_id, t.jobs.c.status.in_([s.value for s in expect]))
        if holder is not None:
            condition = and_(condition, t.jobs.c.trainer_id == holder)
        async with self.db.transaction() as conn:
            result = await conn.execute(update(t.jobs).where(condition).values(**values))
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).one()
            job = _job(row)
            if event is not None:
                await self._add_event(conn, job, event)
        return job

    async def claim(self, job_id: str, trainer_id: str, lease_until: datetime) -> Job | None:
        """Take the PENDING job for ``trainer_id`` if nobody holds it (or the holder's lease
        expired, or it is ``trainer_id`` already); the job, or None."""
        now = datetime.now(UTC)
        condition = and_(
            t.jobs.c.job_id == job_id,
            t.jobs.c.status == JobStatus.PENDING.value,
            or_(
                t.jobs.c.trainer_id == "",
                t.jobs.c.trainer_id == trainer_id,
                t.jobs.c.lease_expires < now,
            ),
        )
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(t.jobs)
                .where(condition)
                .values(trainer_id=trainer_id, lease_expires=lease_until, update_time=now)
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).one()
        return _job(row)

    async def claimable(self, limit: int) -> list[str]:
        """Oldest PENDING top-level jobs nobody holds (or whose holder's lease expired)."""
        now = datetime.now(UTC)
        query = (
            select(t.jobs.c.job_id)
            .where(
                t.jobs.c.status == JobStatus.PENDING.value,
                t.jobs.c.parent_job_id == "",
                or_(t.jobs.c.trainer_id == "", t.jobs.c.lease_expires < now),
            )
            .order_by(t.jobs.c.create_time)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def renew(
        self, trainer_id: str, job_ids: Sequence[str], lease_until: datetime
    ) -> Renewal:
        """Extend this replica's leases on ``job_ids``: which of them were asked to stop,
        and which another replica holds now."""
        if not job_ids:
            return Renewal()
        async with self.db.transaction() as conn:
            await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.trainer_id == trainer_id, t.jobs.c.job_id.in_(list(job_ids)))
                .values(lease_expires=lease_until)
            )
            rows = (
                await conn.execute(
                    select(t.jobs.c.job_id, t.jobs.c.trainer_id, t.jobs.c.stop_requested).where(
                        t.jobs.c.job_id.in_(list(job_ids))
                    )
                )
            ).all()
        return Renewal(
            stop={r.job_id for r in rows if r.stop_requested},
            lost={r.job_id for r in rows if r.trainer_id != trainer_id},
        )

    async def orphans(self, trainer_id: str, *, own: bool) -> list[Job]:
        """Unfinished jobs whose replica is gone: with ``own``, those of ``trainer_id``
        (which just started, so runs none of them); else those whose lease expired."""
        active = [JobStatus.PENDING.value, JobStatus.RUNNING.value]
        query = select(t.jobs).where(t.jobs.c.status.in_(active))
        if own:
            query = query.where(t.jobs.c.trainer_id == trainer_id)
        else:
            query = query.where(
                t.jobs.c.trainer_id != "",
                t.jobs.c.trainer_id != trainer_id,
                t.jobs.c.lease_expires < datetime.now(UTC),
            )
        async with self.db.engine.connect() as conn:
            return [_job(r) for r in (await conn.execute(query.order_by(t.jobs.c.create_time)))]

    async def take_over(self, job: Job, trainer_id: str, lease_until: datetime) -> bool:
        """Move an orphaned job to ``trainer_id`` if nobody took it meanwhile and its lease
        is still expired (its holder may have renewed it since it was found orphaned); a
        job of ``trainer_id`` itself (recovered at start) is taken whatever its lease."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(t.jobs)
                .where(
                    t.jobs.c.job_id == job.job_id,
                    t.jobs.c.trainer_id == job.trainer_id,
                    t.jobs.c.status == job.status.value,
                    or_(
                        t.jobs.c.trainer_id == trainer_id,
                        t.jobs.c.lease_expires < datetime.now(UTC),
                    ),
                )
                .values(trainer_id=trainer_id, lease_expires=lease_until)
            )
            return bool(result.rowcount == 1)

    async def request_stop(self, job_id: str, reason: str) -> Job | None:
        """Flag a RUNNING job so its replica stops it (at its next poll, or at once when it
        is this one); the job after, or None if it is not RUNNING."""
        async with self.db.transaction() as conn:
            result = await conn.execute(
                update(t.jobs)
                .where(t.jobs.c.job_id == job_id, t.jobs.c.status == JobStatus.RUNNING.value)
                .values(stop_requested=True, reason=reason, update_time=datetime.now(UTC))
            )
            if result.rowcount != 1:
                return None
            row = (await conn.execute(select(t.jobs).where(t.jobs.c.job_id == job_id))).one()
        return _job(row)

    # --- experiments --------------------------------------------------------------------

    async def experiments(self) -> list[Experiment]:
        """Experiments with their run (training job) counts, by name."""
        query = (
            select(
                t.jobs.c.experiment,
                func.count().label("runs"),
                func.max(t.jobs.c.create_time).label("last"),
            )
            .where(t.jobs.c.kind == JobKind.TRAINING.value)
            .group_by(t.jobs.c.experiment)
            .order_by(t.jobs.c.experiment)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [Experiment(name=r[0], run_count=r[1], last_run_time=_aware(r[2])) for r in rows]

    async def runs(self, experiment: str) -> list[Job]:
        """Every run (training job, tuning trials included) of ``experiment``, newest first."""
        query = (
            select(t.jobs)
            .where(t.jobs.c.experiment == experiment, t.jobs.c.kind == JobKind.TRAINING.value)
            .order_by(t.jobs.c.create_time.desc(), t.jobs.c.job_id.desc())
        )
        async with self.db.engine.connect() as conn:
            return [_job(r) for r in (await conn.execute(query)).all()]

    # --- logs ---------------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[LogLine]) -> None:
        """Store log lines (numbers given by the caller, increasing)."""
        if not lines:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                insert(t.job_logs),
                [
                    {"job_id": job_id, "number": x.number, "time": _utc(x.time), "text": x.text}
                    for x in lines
                ],
            )

    async def last_log_number(self, job_id: str) -> int:
        """Number of the job's last stored line; 0 if none."""
        async with self.db.engine.connect() as conn:
            value = (
                await conn.execute(
                    select(func.max(t.job_logs.c.number)).where(t.job_logs.c.job_id == job_id)
                )
            ).scalar()
        return int(value or 0)

    async def read_logs(self, job_id: str, from_number: int, limit: int) -> list[LogLine]:
        """Lines numbered ``from_number`` and on, at most ``limit``."""
        query = (
            select(t.job_logs)
            .where(t.job_logs.c.job_id == job_id, t.job_logs.c.number >= from_number)
            .order_by(t.job_logs.c.number)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            LogLine(number=r.number, time=_aware(r.time) or datetime.now(UTC), text=r.text)
            for r in rows
        ]

    # --- outbox -------------------------------------------------------------------------

    async def _add_event(self, conn: AsyncConnection, job: Job, event: MakeEvent) -> None:
        event_id, payload = event(job)
        await conn.execute(
            insert(t.outbox).values(
                trainer_id=self.writer_id,
                event_id=event_id,
                job_id=job.job_id,
                payload=payload,
                create_time=datetime.now(UTC),
            )
        )

    async def pending_events(
        self, trainer_ids: Sequence[str], limit: int, *, stale_before: datetime | None = None
    ) -> list[OutboxEvent]:
        """Unsent events written by ``trainer_ids`` — and, with ``stale_before``, unsent
        events of any writer created before then — oldest first."""
        mine = t.outbox.c.trainer_id.in_(list(trainer_ids))
        which = (
            mine if stale_before is None else or_(mine, t.outbox.c.create_time < _utc(stale_before))
        )
        query = (
            select(t.outbox)
            .where(t.outbox.c.sent_time.is_(None), which)
            .order_by(t.outbox.c.id)
            .limit(limit)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [OutboxEvent(r.id, r.event_id, r.job_id, r.payload) for r in rows]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """Record that these events were published."""
        if not ids:
            return
        async with self.db.transaction() as conn:
            await conn.execute(
                update(t.outbox)
                .where(t.outbox.c.id.in_(list(ids)))
                .values(sent_time=datetime.now(UTC))
            )

    async def purge_sent(self, older_than: timedelta) -> None:
        """Delete published events older than ``older_than``."""
        cutoff = datetime.now(UTC) - older_than
        async with self.db.transaction() as conn:
            await conn.execute(
                delete(t.outbox).where(
                    t.outbox.c.sent_time.is_not(None), t.outbox.c.sent_time < cutoff
                )
            )
