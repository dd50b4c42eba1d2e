"""SQL storage with SQLAlchemy 2: a SQLite file by default, PostgreSQL by URL.

How each backend is driven:

- PostgreSQL: SQLAlchemy's asyncio layer over psycopg, a connection pool, READ COMMITTED.
  The use cases take row locks (``FOR UPDATE`` / ``FOR SHARE``) where concurrent changes
  must serialise.
- SQLite: the standard ``sqlite3`` module under a synchronous engine. SQLite calls block,
  so they run on a small pool of database threads, and a whole transaction, the use
  case's work included, runs in one hop to such a thread (see :meth:`Database.run`): a read
  of a version costs one thread round trip, not one per DB-API call as through aiosqlite
  (about 0.3 ms each on a busy 2-core machine; see bench/RESULTS.md). SQLite has one
  writer at a time anyway. A write transaction starts with ``BEGIN IMMEDIATE`` (it takes
  the write lock up front, so two writers never deadlock upgrading read locks) and,
  within this process, waits on an asyncio lock first, so writers queue on the event loop
  instead of holding threads while SQLite's busy handler spins. Reads use WAL snapshots
  and never wait.

Errors that mean "a concurrent transaction got in the way" (deadlock, serialization
failure, lock timeout, a lost race on a unique key) become
:class:`~mlbus.registry.ports.RetryableConflict`; the use cases retry those.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from google.protobuf.message import Message
from sqlalchemy import (
    Connection,
    CursorResult,
    Engine,
    Executable,
    Row,
    Select,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from mlbus.registry.adapters import tables as t
from mlbus.registry.adapters.event_encoder import encode_event
from mlbus.registry.adapters.migrations import run_upgrade
from mlbus.registry.domain.events import DomainEvent
from mlbus.registry.domain.models import (
    ApprovalStatus,
    ArtifactRef,
    AuditEntry,
    Endpoint,
    EndpointConfig,
    EndpointConfigSpec,
    EndpointStatus,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelVersion,
    Signature,
)
from mlbus.registry.ports import (
    LiveEndpointUse,
    Lock,
    OutboxRecord,
    OutboxStore,
    RetryableConflict,
    UnitOfWork,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
P = ParamSpec("P")

#: Bound parameters of one statement, or of an executemany.
Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]]


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


#: PostgreSQL advisory lock keys: one migrator at a time, one relay per database.
MIGRATION_LOCK: Final = _advisory_key("mlbus.registry.migrations")
RELAY_LOCK: Final = _advisory_key("mlbus.registry.outbox-relay")

#: SQLSTATEs of transactions that lost a race: serialization failure, deadlock, unique
#: violation, lock not available.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505", "55P03"})

_SQLITE_DRIVERS: Final = ("sqlite://", "sqlite+pysqlite://", "sqlite+aiosqlite://")


def normalize_url(url: str) -> str:
    """The driver form of a database URL: ``postgresql://`` → ``postgresql+psycopg://``
    (asyncio); ``sqlite://``, and ``sqlite+aiosqlite://`` as older settings spell it, →
    ``sqlite+pysqlite://`` (the standard sqlite3 module). Other backends and drivers are
    refused."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        *((prefix, "sqlite+pysqlite://") for prefix in _SQLITE_DRIVERS),
    ):
        if url.startswith(plain):
            url = driver + url[len(plain) :]
    if not url.startswith(("postgresql+psycopg://", "sqlite+pysqlite://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"database URL scheme {scheme!r}: expected postgresql+psycopg:// (or postgresql://) "
            "or sqlite:// (also sqlite+pysqlite://, sqlite+aiosqlite://)"
        )
    return url


def is_retryable(exc: DBAPIError) -> bool:
    """Whether ``exc`` means a concurrent transaction got in the way."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    message = str(exc.orig)
    if isinstance(exc, IntegrityError) and "UNIQUE constraint failed" in message:
        return True
    return isinstance(exc, OperationalError) and "database is locked" in message


def _make_parent_dir(path: str) -> None:
    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@contextlib.contextmanager
def _conflicts_retryable() -> Iterator[None]:
    try:
        yield
    except DBAPIError as exc:
        if is_retryable(exc):
            raise RetryableConflict(str(exc.orig)) from exc
        raise


def run_to_end(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends to its end, synchronously, and return its result.

    This is how a SQLite transaction runs its (async) work on a database thread: the
    session's methods there are plain calls, so awaiting them never suspends. Work that
    awaits anything else (a sleep, another connection, the object store) is a bug: it
    raises RuntimeError (and the transaction rolls back)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coroutine.close()
    raise RuntimeError(
        "a SQLite transaction's work suspended on something other than its own session; "
        "the work of a unit of work may await only the unit of work's methods"
    )


class _Abandoned(Exception):
    """The caller of a SQLite transaction was cancelled before it committed."""


# -- sessions: one connection inside a transaction --------------------------------------


class SqlSession(ABC):
    """A connection inside a transaction, the same to callers on both backends."""

    @abstractmethod
    async def execute(
        self, statement: Executable, parameters: Parameters | None = None
    ) -> CursorResult[Any]:
        """Run a statement; the result is fully buffered."""

    @abstractmethod
    async def run_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``fn(connection, ...)`` on the synchronous connection (Alembic, inspection)."""


class _AsyncSession(SqlSession):
    """PostgreSQL: an asyncio connection."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def execute(
        self, statement: Executable, parameters: Parameters | None = None
    ) -> CursorResult[Any]:
        return await self._conn.execute(statement, parameters)

    async def run_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._conn.run_sync(fn, *args, **kwargs)


class _DirectSession(SqlSession):
    """SQLite, on the database thread that runs the whole transaction: plain calls (an
    await of these never suspends; see :func:`run_to_end`)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def execute(
        self, statement: Executable, parameters: Parameters | None = None
    ) -> CursorResult[Any]:
        return self._conn.execute(statement, parameters)

    async def run_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return fn(self._conn, *args, **kwargs)


class _ThreadSession(SqlSession):
    """SQLite, driven from the event loop: every call is one hop to a database thread
    (for :meth:`Database.transaction`, which tests and tools use)."""

    def __init__(self, database: Database, conn: Connection) -> None:
        self._db = database
        self._conn = conn

    async def execute(
        self, statement: Executable, parameters: Parameters | None = None
    ) -> CursorResult[Any]:
        return await self._db.in_thread(self._conn.execute, statement, parameters)

    async def run_sync(
        self, fn: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await self._db.in_thread(fn, self._conn, *args, **kwargs)


# -- the database -------------------------------------------------------------------------


class Database:
    """The registry database: engines, transactions, units of work and migrations.

    On SQLite, ``pool_size`` is both the number of pooled connections and of the database
    threads transactions run on; on PostgreSQL it is the pool size (as many more
    connections may be opened under load)."""

    def __init__(self, url: str, *, pool_size: int = 5, sqlite_timeout_s: float = 30.0) -> None:
        self.url: URL = make_url(normalize_url(url))
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._async_engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._threads = pool_size
        if self.is_sqlite:
            connect_args = {"timeout": sqlite_timeout_s, "check_same_thread": False}
            if self.url.database in (None, "", ":memory:"):
                # One in-memory database is one connection: share it, one thread at a time.
                self._sync_engine = create_engine(
                    self.url, connect_args=connect_args, poolclass=StaticPool
                )
                self._threads = 1
            else:
                self._sync_engine = create_engine(
                    self.url,
                    connect_args=connect_args,
                    pool_size=pool_size,
                    max_overflow=pool_size,
                )
            self._install_sqlite_hooks(self._sync_engine)
        else:
            self._async_engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    @property
    def async_engine(self) -> AsyncEngine:
        """The PostgreSQL engine (SQLite has none: its transactions run on threads)."""
        if self._async_engine is None:
            raise RuntimeError(f"{self!r} is SQLite: it has no asyncio engine")
        return self._async_engine

    @property
    def sync_engine(self) -> Engine:
        """The SQLite engine (for tools and benchmarks; PostgreSQL has an asyncio one)."""
        if self._sync_engine is None:
            raise RuntimeError(f"{self!r} is PostgreSQL: its engine is `async_engine`")
        return self._sync_engine

    @staticmethod
    def _install_sqlite_hooks(engine: Engine) -> None:
        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (the "begin" hook below) issue BEGIN, not the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            write = connection.get_execution_options().get("mlbus_write", False)
            statement = "BEGIN IMMEDIATE" if write else "BEGIN"
            # Straight to the driver: SQLAlchemy's statement machinery costs ~0.1 ms here.
            # Its errors ("database is locked" after the busy timeout) are wrapped as
            # SQLAlchemy would, so they are recognised as conflicts.
            try:
                connection.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
            except sqlite3.Error as exc:
                raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc

    def _submit(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._threads, thread_name_prefix="registry-sqlite"
            )
        # Carry the caller's context variables (trace context, log fields) along.
        context = contextvars.copy_context()
        return self._executor.submit(context.run, functools.partial(fn, *args, **kwargs))

    async def in_thread(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(...)`` on a SQLite database thread, awaited without blocking the loop."""
        return await asyncio.wrap_future(self._submit(fn, *args, **kwargs))

    async def start(self, *, migrate: bool) -> None:
        """Create the SQLite file's directory and, if asked, migrate the schema to head."""
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            await asyncio.to_thread(_make_parent_dir, self.url.database)
        if migrate:
            await self.migrate("head")

    async def aclose(self) -> None:
        """Wait for running SQLite transactions, then close every pooled connection."""
        if self._async_engine is not None:
            await self._async_engine.dispose()
            return
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)
        if self._sync_engine is not None:
            await asyncio.to_thread(self._sync_engine.dispose)

    # -- transactions -------------------------------------------------------------------

    async def run(self, work: Callable[[SqlSession], Coroutine[Any, Any, T]], *, write: bool) -> T:
        """``work(session)`` in one transaction and its result: committed when it returns,
        rolled back when it raises. Races with concurrent transactions raise
        RetryableConflict.

        On SQLite the whole of ``work`` runs synchronously on a database thread, in one hop
        from the event loop, so it may await only the session's methods (see
        :func:`run_to_end`). If the caller is cancelled while it runs, it rolls back unless
        it has already reached its commit."""
        if not self.is_sqlite:
            async with self.transaction(write=write) as session:
                return await work(session)
        abandoned = threading.Event()
        if not write:
            future = self._submit(self._run_sqlite, work, write=False, abandoned=abandoned)
        else:
            lock = self._write_lock
            assert lock is not None
            await lock.acquire()
            try:
                future = self._submit(self._run_sqlite, work, write=True, abandoned=abandoned)
            except BaseException:
                lock.release()
                raise
            # The next writer may start when this one has ended on its thread, not when the
            # awaiting task is cancelled.
            loop = asyncio.get_running_loop()

            def release(_: object) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                    loop.call_soon_threadsafe(lock.release)

            future.add_done_callback(release)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def _run_sqlite(
        self,
        work: Callable[[SqlSession], Coroutine[Any, Any, T]],
        *,
        write: bool,
        abandoned: threading.Event,
    ) -> T:
        assert self._sync_engine is not None
        with _conflicts_retryable(), self._sync_engine.connect() as conn:
            conn.execution_options(mlbus_write=write)
            with conn.begin():
                result = run_to_end(work(_DirectSession(conn)))
                if abandoned.is_set():
                    raise _Abandoned
            return result

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[SqlSession]:
        """A session in a transaction: committed when the block ends normally, rolled back
        on an exception. Races with concurrent transactions raise RetryableConflict.

        The use cases go through :meth:`run` (on SQLite one thread hop per transaction);
        this form, one hop per statement on SQLite, is for tests and tools."""
        if self._async_engine is not None:
            with _conflicts_retryable():
                async with self._async_engine.connect() as conn, conn.begin():
                    yield _AsyncSession(conn)
            return
        lock = self._write_lock if write else None
        if lock is not None:
            await lock.acquire()
        try:
            sync_conn = await self.in_thread(self._sqlite_begin, write)
            try:
                with _conflicts_retryable():
                    yield _ThreadSession(self, sync_conn)
                    await self.in_thread(sync_conn.commit)
            finally:
                await self.in_thread(sync_conn.close)  # rolls back what was not committed
        finally:
            if lock is not None:
                lock.release()

    def _sqlite_begin(self, write: bool) -> Connection:
        assert self._sync_engine is not None
        with _conflicts_retryable():
            conn = self._sync_engine.connect()
            try:
                conn.execution_options(mlbus_write=write)
                conn.begin()
            except BaseException:
                conn.close()
                raise
        return conn

    async def unit_of_work(
        self, work: Callable[[UnitOfWork], Coroutine[Any, Any, T]], *, write: bool
    ) -> T:
        """``work`` in one :class:`~mlbus.registry.ports.UnitOfWork` (the use cases'
        :class:`~mlbus.registry.ports.UnitOfWorkRunner`)."""

        async def run(session: SqlSession) -> T:
            return await work(SqlUnitOfWork(session))

        return await self.run(run, write=write)

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` in one transaction (one migrator at a time)."""

        async def upgrade(session: SqlSession) -> None:
            if not self.is_sqlite:
                await session.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            await session.run_sync(run_upgrade, revision)

        await self.run(upgrade, write=True)


def _locked(statement: Select[Any], lock: Lock) -> Select[Any]:
    # SQLite ignores FOR UPDATE/SHARE; its writers are serialised by BEGIN IMMEDIATE.
    if lock == "update":
        return statement.with_for_update()
    if lock == "share":
        return statement.with_for_update(read=True)
    return statement


def _group(row: Row[Any], tags: dict[str, str]) -> ModelGroup:
    return ModelGroup(
        name=row.name,
        description=row.description,
        tags=tags,
        latest_version=row.latest_version,
        created_by=row.created_by,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _version(row: Row[Any], aliases: Sequence[str]) -> ModelVersion:
    return ModelVersion(
        model_group=row.model_group,
        version=row.version,
        artifact=ArtifactRef(
            uri=row.artifact_uri,
            sha256=row.artifact_sha256,
            size_bytes=row.artifact_size,
            content_type=row.artifact_content_type,
        ),
        signature=Signature.model_validate_json(row.signature_json),
        approval_status=ApprovalStatus(row.approval_status),
        status_reason=row.status_reason,
        metrics=json.loads(row.metrics_json),
        hyperparameters=json.loads(row.hyperparameters_json),
        lineage=Lineage.model_validate_json(row.lineage_json),
        model_card=ModelCard.model_validate_json(row.model_card_json),
        tags=json.loads(row.tags_json),
        aliases=tuple(sorted(aliases)),
        description=row.description,
        registered_by=row.registered_by,
        register_time=row.register_time,
        update_time=row.update_time,
        baseline=ArtifactRef.model_validate_json(row.baseline_json) if row.baseline_json else None,
        request_id=row.request_id,
    )


def _version_values(version: ModelVersion) -> dict[str, Any]:
    return {
        "approval_status": str(version.approval_status),
        "status_reason": version.status_reason,
        "metrics_json": _json(version.metrics),
        "tags_json": _json(version.tags),
        "model_card_json": version.model_card.model_dump_json(),
        "description": version.description,
        "update_time": version.update_time,
    }


def _config(row: Row[Any]) -> EndpointConfig:
    return EndpointConfig(
        endpoint=row.endpoint,
        revision=row.revision,
        spec=EndpointConfigSpec.model_validate_json(row.spec_json),
        created_by=row.created_by,
        create_time=row.create_time,
        rolled_back_from=row.rolled_back_from,
    )


def _audit(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        id=row.id,
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        action=row.action,
        actor=row.actor,
        reason=row.reason,
        time=row.time,
        before=json.loads(row.before_json) if row.before_json else None,
        after=json.loads(row.after_json) if row.after_json else None,
    )


def _get_version_statement() -> Select[Any]:
    # One round trip: the version joined with its aliases (one row per alias).
    versions, aliases = t.model_versions, t.model_aliases
    return (
        select(versions, aliases.c.alias.label("alias_name"))
        .select_from(
            versions.outerjoin(
                aliases,
                and_(
                    aliases.c.model_group == versions.c.model_group,
                    aliases.c.version == versions.c.version,
                ),
            )
        )
        .where(
            versions.c.model_group == bindparam("group"),
            versions.c.version == bindparam("version"),
        )
    )


#: Built once: the hottest read (GetModelVersion) skips building the statement and its
#: cache key on every call. Locked forms lock the version row only (not the nullable side
#: of the join).
_GET_VERSION: Final = _get_version_statement()
_GET_VERSION_LOCKED: Final = {
    lock: _GET_VERSION.with_for_update(of=t.model_versions, read=lock == "share")
    for lock in ("update", "share")
}


class SqlUnitOfWork(UnitOfWork):
    """A :class:`~mlbus.registry.ports.UnitOfWork` on one session's transaction."""

    def __init__(self, session: SqlSession) -> None:
        self._session = session

    # -- model groups -----------------------------------------------------------------

    async def _tags(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {name: {} for name in names}
        if not names:
            return found
        rows = await self._session.execute(
            select(t.model_group_tags).where(t.model_group_tags.c.model_group.in_(names))
        )
        for row in rows:
            found[row.model_group][row.key] = row.value
        return found

    async def get_group(self, name: str, *, lock: Lock = None) -> ModelGroup | None:
        statement = _locked(select(t.model_groups).where(t.model_groups.c.name == name), lock)
        row = (await self._session.execute(statement)).first()
        if row is None:
            return None
        return _group(row, (await self._tags([name]))[name])

    async def _insert_tags(self, group: str, tags: dict[str, str]) -> None:
        if tags:
            await self._session.execute(
                insert(t.model_group_tags),
                [{"model_group": group, "key": k, "value": v} for k, v in tags.items()],
            )

    async def add_group(self, group: ModelGroup) -> None:
        await self._session.execute(
            insert(t.model_groups).values(
                name=group.name,
                description=group.description,
                latest_version=group.latest_version,
                created_by=group.created_by,
                create_time=group.create_time,
                update_time=group.update_time,
            )
        )
        await self._insert_tags(group.name, group.tags)

    async def update_group(self, group: ModelGroup) -> None:
        await self._session.execute(
            update(t.model_groups)
            .where(t.model_groups.c.name == group.name)
            .values(description=group.description, update_time=group.update_time)
        )
        await self._session.execute(
            delete(t.model_group_tags).where(t.model_group_tags.c.model_group == group.name)
        )
        await self._insert_tags(group.name, group.tags)

    async def list_groups(
        self, *, name_prefix: str, tags: dict[str, str], after: str | None, limit: int
    ) -> list[ModelGroup]:
        groups = t.model_groups
        statement = select(groups).order_by(groups.c.name).limit(limit)
        if name_prefix:
            statement = statement.where(groups.c.name.startswith(name_prefix, autoescape=True))
        if after is not None:
            statement = statement.where(groups.c.name > after)
        tag_table = t.model_group_tags
        for key, value in tags.items():
            statement = statement.where(
                exists().where(
                    tag_table.c.model_group == groups.c.name,
                    tag_table.c.key == key,
                    tag_table.c.value == value,
                )
            )
        rows = list(await self._session.execute(statement))
        found = await self._tags([row.name for row in rows])
        return [_group(row, found[row.name]) for row in rows]

    async def next_version_number(self, group: str, now: datetime) -> int:
        groups = t.model_groups
        result = await self._session.execute(
            update(groups)
            .where(groups.c.name == group)
            .values(latest_version=groups.c.latest_version + 1, update_time=now)
            .returning(groups.c.latest_version)
        )
        number: int = result.scalar_one()
        return number

    # -- model versions ---------------------------------------------------------------

    async def _aliases(self, group: str, versions: Sequence[int]) -> dict[int, list[str]]:
        found: dict[int, list[str]] = {v: [] for v in versions}
        if not versions:
            return found
        aliases = t.model_aliases
        rows = await self._session.execute(
            select(aliases.c.alias, aliases.c.version).where(
                aliases.c.model_group == group, aliases.c.version.in_(versions)
            )
        )
        for row in rows:
            found[row.version].append(row.alias)
        return found

    async def get_version(
        self, group: str, version: int, *, lock: Lock = None
    ) -> ModelVersion | None:
        statement = _GET_VERSION if lock is None else _GET_VERSION_LOCKED[lock]
        rows = list(await self._session.execute(statement, {"group": group, "version": version}))
        if not rows:
            return None
        return _version(rows[0], [r.alias_name for r in rows if r.alias_name is not None])

    async def find_version_by_request_id(self, group: str, request_id: str) -> ModelVersion | None:
        versions = t.model_versions
        row = (
            await self._session.execute(
                select(versions).where(
                    versions.c.model_group == group, versions.c.request_id == request_id
                )
            )
        ).first()
        if row is None:
            return None
        return _version(row, (await self._aliases(group, [row.version]))[row.version])

    async def add_version(self, version: ModelVersion) -> None:
        await self._session.execute(
            insert(t.model_versions).values(
                model_group=version.model_group,
                version=version.version,
                artifact_uri=version.artifact.uri,
                artifact_sha256=version.artifact.sha256,
                artifact_size=version.artifact.size_bytes,
                artifact_content_type=version.artifact.content_type,
                signature_json=version.signature.model_dump_json(),
                hyperparameters_json=_json(version.hyperparameters),
                lineage_json=version.lineage.model_dump_json(),
                registered_by=version.registered_by,
                register_time=version.register_time,
                baseline_json=version.baseline.model_dump_json() if version.baseline else None,
                request_id=version.request_id,
                **_version_values(version),
            )
        )

    async def update_version(self, version: ModelVersion) -> None:
        versions = t.model_versions
        await self._session.execute(
            update(versions)
            .where(
                versions.c.model_group == version.model_group,
                versions.c.version == version.version,
            )
            .values(**_version_values(version))
        )

    async def list_versions(
        self, group: str, *, status: ApprovalStatus | None, before: int | None, limit: int
    ) -> list[ModelVersion]:
        versions = t.model_versions
        statement = (
            select(versions)
            .where(versions.c.model_group == group)
            .order_by(versions.c.version.desc())
            .limit(limit)
        )
        if status is not None:
            statement = statement.where(versions.c.approval_status == str(status))
        if before is not None:
            statement = statement.where(versions.c.version < before)
        rows = list(await self._session.execute(statement))
        found = await self._aliases(group, [row.version for row in rows])
        return [_version(row, found[row.version]) for row in rows]

    # -- aliases ----------------------------------------------------------------------

    async def get_alias(self, group: str, alias: str) -> int | None:
        aliases = t.model_aliases
        value = (
            await self._session.execute(
                select(aliases.c.version).where(
                    aliases.c.model_group == group, aliases.c.alias == alias
                )
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    async def set_alias(self, group: str, alias: str, version: int, now: datetime) -> None:
        aliases = t.model_aliases
        result = await self._session.execute(
            update(aliases)
            .where(aliases.c.model_group == group, aliases.c.alias == alias)
            .values(version=version, update_time=now)
        )
        if result.rowcount == 0:
            await self._session.execute(
                insert(aliases).values(
                    model_group=group, alias=alias, version=version, update_time=now
                )
            )

    async def delete_alias(self, group: str, alias: str) -> None:
        aliases = t.model_aliases
        await self._session.execute(
            delete(aliases).where(aliases.c.model_group == group, aliases.c.alias == alias)
        )

    # -- audit ------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._session.execute(
            insert(t.audit_log).values(
                entity_type=entry.entity_type,
                entity_id=entry.entity_id,
                action=entry.action,
                actor=entry.actor,
                reason=entry.reason,
                time=entry.time,
                before_json=None if entry.before is None else _json(entry.before),
                after_json=None if entry.after is None else _json(entry.after),
            )
        )

    async def list_audit(
        self, *, entity_type: str, entity_id_prefix: str, after: int | None, limit: int
    ) -> list[AuditEntry]:
        audit = t.audit_log
        statement = select(audit).order_by(audit.c.id).limit(limit)
        if entity_type:
            statement = statement.where(audit.c.entity_type == entity_type)
        if entity_id_prefix:
            statement = statement.where(
                audit.c.entity_id.startswith(entity_id_prefix, autoescape=True)
            )
        if after is not None:
            statement = statement.where(audit.c.id > after)
        return [_audit(row) for row in await self._session.execute(statement)]

    # -- endpoints --------------------------------------------------------------------

    @staticmethod
    def _endpoint(row: Row[Any], config: EndpointConfig | None) -> Endpoint:
        return Endpoint(
            name=row.name,
            status=EndpointStatus(row.status),
            status_reason=row.status_reason,
            revision=row.revision,
            current_config=config,
            create_time=row.create_time,
            update_time=row.update_time,
        )

    async def get_endpoint(self, name: str, *, lock: Lock = None) -> Endpoint | None:
        statement = _locked(select(t.endpoints).where(t.endpoints.c.name == name), lock)
        row = (await self._session.execute(statement)).first()
        if row is None:
            return None
        config = None
        if row.current_revision:
            config = await self.get_endpoint_config(name, row.current_revision)
        return self._endpoint(row, config)

    async def save_endpoint(self, endpoint: Endpoint, *, new: bool) -> None:
        values = {
            "status": str(endpoint.status),
            "status_reason": endpoint.status_reason,
            "revision": endpoint.revision,
            "current_revision": endpoint.current_config.revision if endpoint.current_config else 0,
            "create_time": endpoint.create_time,
            "update_time": endpoint.update_time,
        }
        if new:
            await self._session.execute(insert(t.endpoints).values(name=endpoint.name, **values))
        else:
            await self._session.execute(
                update(t.endpoints).where(t.endpoints.c.name == endpoint.name).values(**values)
            )

    async def add_endpoint_config(self, config: EndpointConfig) -> None:
        await self._session.execute(
            insert(t.endpoint_configs).values(
                endpoint=config.endpoint,
                revision=config.revision,
                spec_json=config.spec.model_dump_json(),
                created_by=config.created_by,
                create_time=config.create_time,
                rolled_back_from=config.rolled_back_from,
            )
        )
        refs = [
            {
                "endpoint": config.endpoint,
                "revision": config.revision,
                "variant": variant.name,
                "model_group": variant.model_group,
                "model_version": variant.model_version,
                "shadow": field.startswith("shadow"),
            }
            for field, variant in config.spec.all_variants()
        ]
        await self._session.execute(insert(t.endpoint_model_refs), refs)

    async def get_endpoint_config(self, endpoint: str, revision: int) -> EndpointConfig | None:
        configs = t.endpoint_configs
        row = (
            await self._session.execute(
                select(configs).where(
                    configs.c.endpoint == endpoint, configs.c.revision == revision
                )
            )
        ).first()
        return None if row is None else _config(row)

    async def list_endpoint_configs(
        self, endpoint: str, *, before: int | None, limit: int
    ) -> list[EndpointConfig]:
        configs = t.endpoint_configs
        statement = (
            select(configs)
            .where(configs.c.endpoint == endpoint)
            .order_by(configs.c.revision.desc())
            .limit(limit)
        )
        if before is not None:
            statement = statement.where(configs.c.revision < before)
        return [_config(row) for row in await self._session.execute(statement)]

    async def list_endpoints(
        self, *, include_deleted: bool, after: str | None, limit: int
    ) -> list[Endpoint]:
        endpoints, configs = t.endpoints, t.endpoint_configs
        statement = (
            select(
                endpoints,
                configs.c.endpoint,
                configs.c.revision,
                configs.c.spec_json,
                configs.c.created_by,
                configs.c.create_time.label("config_create_time"),
                configs.c.rolled_back_from,
            )
            .outerjoin(
                configs,
                and_(
                    configs.c.endpoint == endpoints.c.name,
                    configs.c.revision == endpoints.c.current_revision,
                ),
            )
            .order_by(endpoints.c.name)
            .limit(limit)
        )
        if not include_deleted:
            statement = statement.where(endpoints.c.status != str(EndpointStatus.DELETED))
        if after is not None:
            statement = statement.where(endpoints.c.name > after)
        result: list[Endpoint] = []
        for row in await self._session.execute(statement):
            config = None
            if row.spec_json is not None:
                config = EndpointConfig(
                    endpoint=row.name,
                    revision=row.current_revision,
                    spec=EndpointConfigSpec.model_validate_json(row.spec_json),
                    created_by=row.created_by,
                    create_time=row.config_create_time,
                    rolled_back_from=row.rolled_back_from,
                )
            result.append(self._endpoint(row, config))
        return result

    async def live_endpoints_using(self, group: str, version: int) -> list[LiveEndpointUse]:
        refs, endpoints = t.endpoint_model_refs, t.endpoints
        rows = await self._session.execute(
            select(refs.c.endpoint, refs.c.variant)
            .join(
                endpoints,
                and_(
                    endpoints.c.name == refs.c.endpoint,
                    endpoints.c.current_revision == refs.c.revision,
                ),
            )
            .where(
                refs.c.model_group == group,
                refs.c.model_version == version,
                endpoints.c.status != str(EndpointStatus.DELETED),
            )
            .order_by(refs.c.endpoint, refs.c.variant)
        )
        uses: dict[str, list[str]] = {}
        for row in rows:
            uses.setdefault(row.endpoint, []).append(row.variant)
        return [LiveEndpointUse(name, tuple(variants)) for name, variants in uses.items()]

    # -- outbox -----------------------------------------------------------------------

    async def add_event(self, event: DomainEvent) -> None:
        message: Message = encode_event(event)
        await self._session.execute(
            insert(t.outbox).values(
                event_id=event.event_id,
                event_type=message.DESCRIPTOR.full_name,
                key=event.key,
                payload=message.SerializeToString(),
                create_time=event.time,
            )
        )


class SqlOutboxStore(OutboxStore):
    """The outbox table for the relay. On PostgreSQL one relay per database holds a
    session advisory lock (on a connection kept out of the pool while it leads); SQLite
    has one registry process per file, so it always leads."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._leader: AsyncConnection | None = None

    async def pending(self, limit: int) -> list[OutboxRecord]:
        outbox = t.outbox

        async def read(session: SqlSession) -> list[OutboxRecord]:
            rows = await session.execute(
                select(outbox)
                .where(outbox.c.sent_time.is_(None))
                .order_by(outbox.c.id)
                .limit(limit)
            )
            return [
                OutboxRecord(
                    id=row.id,
                    event_id=row.event_id,
                    event_type=row.event_type,
                    key=row.key,
                    payload=bytes(row.payload),
                    create_time=row.create_time,
                )
                for row in rows
            ]

        return await self._db.run(read, write=False)

    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        if not ids:
            return

        async def mark(session: SqlSession) -> None:
            await session.execute(
                update(t.outbox).where(t.outbox.c.id.in_(list(ids))).values(sent_time=now)
            )

        await self._db.run(mark, write=True)

    async def purge_sent(self, before: datetime) -> int:
        async def purge(session: SqlSession) -> int:
            result = await session.execute(delete(t.outbox).where(t.outbox.c.sent_time < before))
            return int(result.rowcount)

        return await self._db.run(purge, write=True)

    async def count_pending(self) -> int:
        """How many events wait to be relayed (for tests and metrics)."""

        async def count(session: SqlSession) -> int:
            statement = (
                select(func.count()).select_from(t.outbox).where(t.outbox.c.sent_time.is_(None))
            )
            return int((await session.execute(statement)).scalar_one())

        return await self._db.run(count, write=False)

    async def try_lead(self) -> bool:
        if self._db.is_sqlite:
            return True
        if self._leader is not None:
            try:
                await self._leader.execute(text("SELECT 1"))
                await self._leader.commit()
                return True
            except DBAPIError:
                log.warning("lost the outbox relay's database connection (and its lead)")
                await self._drop_leader()
                return False
        conn = await self._db.async_engine.connect()
        try:
            got = (
                await conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": RELAY_LOCK})
            ).scalar_one()
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        if got:
            self._leader = conn
            log.info("this registry now relays the outbox")
            return True
        await conn.close()
        return False

    async def _drop_leader(self) -> None:
        conn, self._leader = self._leader, None
        if conn is not None:
            # Never hand a connection holding a session lock back to the pool.
            await conn.invalidate()
            await conn.close()

    async def resign(self) -> None:
        conn = self._leader
        if conn is None:
            return
        try:
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": RELAY_LOCK})
            await conn.commit()
            self._leader = None
            await conn.close()
        except DBAPIError:
            await self._drop_leader()
