"""SQL storage with SQLAlchemy 2 (async): a SQLite file by default, PostgreSQL by URL.

Transactions:

- PostgreSQL runs READ COMMITTED; the use cases take row locks (``FOR UPDATE`` /
  ``FOR SHARE``) where concurrent changes must serialise.
- SQLite has one writer at a time anyway. A write transaction starts with
  ``BEGIN IMMEDIATE`` (it takes the write lock up front, so two writers never deadlock
  upgrading read locks) and, within this process, waits on an asyncio lock first, so
  writers queue instead of spinning on SQLITE_BUSY. Readers use WAL snapshots and never
  wait.

Errors that mean "a concurrent transaction got in the way" (deadlock, serialization
failure, lock timeout, a lost race on a unique key) become
:class:`~mlbus.registry.ports.RetryableConflict`; the use cases retry those.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from google.protobuf.message import Message
from sqlalchemy import (
    Connection,
    Row,
    Select,
    and_,
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


def _advisory_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


#: PostgreSQL advisory lock keys: one migrator at a time, one relay per database.
MIGRATION_LOCK: Final = _advisory_key("mlbus.registry.migrations")
RELAY_LOCK: Final = _advisory_key("mlbus.registry.outbox-relay")

#: SQLSTATEs of transactions that lost a race: serialization failure, deadlock, unique
#: violation, lock not available.
_RETRYABLE_SQLSTATES: Final = frozenset({"40001", "40P01", "23505", "55P03"})


def normalize_url(url: str) -> str:
    """The async-driver form of a database URL: ``postgresql://`` → ``postgresql+psycopg://``,
    ``sqlite://`` → ``sqlite+aiosqlite://``. Other backends and drivers are refused."""
    for plain, driver in (
        ("postgresql://", "postgresql+psycopg://"),
        ("postgres://", "postgresql+psycopg://"),
        ("sqlite://", "sqlite+aiosqlite://"),
    ):
        if url.startswith(plain):
            url = driver + url[len(plain) :]
    if not url.startswith(("postgresql+psycopg://", "sqlite+aiosqlite://")):
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"database URL scheme {scheme!r}: expected postgresql+psycopg:// (or postgresql://) "
            "or sqlite+aiosqlite:// (or sqlite://)"
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


class Database:
    """The registry database: engine, transactions, units of work and migrations."""

    def __init__(self, url: str, *, pool_size: int = 5, sqlite_timeout_s: float = 30.0) -> None:
        self.url: URL = make_url(normalize_url(url))
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(
                self.url, connect_args={"timeout": sqlite_timeout_s}
            )
            self._install_sqlite_hooks()
        else:
            self.engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    def __repr__(self) -> str:
        return f"Database({self.url.render_as_string(hide_password=True)!r})"

    def _install_sqlite_hooks(self) -> None:
        sync_engine = self.engine.sync_engine

        @event.listens_for(sync_engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (the "begin" hook below) issue BEGIN, not the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(sync_engine, "begin")
        def _begin(connection: Connection) -> None:
            write = connection.get_execution_options().get("mlbus_write", False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    async def start(self, *, migrate: bool) -> None:
        """Create the SQLite file's directory and, if asked, migrate the schema to head."""
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            await asyncio.to_thread(_make_parent_dir, self.url.database)
        if migrate:
            await self.migrate("head")

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction: committed when the block ends normally, rolled back
        on an exception. Races with concurrent transactions raise RetryableConflict."""
        lock = self._write_lock if write else None
        if lock is not None:
            await lock.acquire()
        try:
            async with self.engine.connect() as conn:
                if self.is_sqlite:
                    await conn.execution_options(mlbus_write=write)
                try:
                    async with conn.begin():
                        yield conn
                except DBAPIError as exc:
                    if is_retryable(exc):
                        raise RetryableConflict(str(exc.orig)) from exc
                    raise
        finally:
            if lock is not None:
                lock.release()

    @asynccontextmanager
    async def _unit_of_work(self, *, write: bool) -> AsyncIterator[UnitOfWork]:
        async with self.transaction(write=write) as conn:
            yield SqlUnitOfWork(conn)

    def unit_of_work(self, *, write: bool) -> AbstractAsyncContextManager[UnitOfWork]:
        """A :class:`~mlbus.registry.ports.UnitOfWork` (the use cases' factory)."""
        return self._unit_of_work(write=write)

    async def migrate(self, revision: str = "head") -> None:
        """Upgrade the schema to ``revision`` in one transaction (one migrator at a time)."""
        async with self.transaction(write=True) as conn:
            if not self.is_sqlite:
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK}
                )
            await conn.run_sync(run_upgrade, revision)


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


class SqlUnitOfWork(UnitOfWork):
    """A :class:`~mlbus.registry.ports.UnitOfWork` on one connection's transaction."""

    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    # -- model groups -----------------------------------------------------------------

    async def _tags(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        found: dict[str, dict[str, str]] = {name: {} for name in names}
        if not names:
            return found
        rows = await self._conn.execute(
            select(t.model_group_tags).where(t.model_group_tags.c.model_group.in_(names))
        )
        for row in rows:
            found[row.model_group][row.key] = row.value
        return found

    async def get_group(self, name: str, *, lock: Lock = None) -> ModelGroup | None:
        statement = _locked(select(t.model_groups).where(t.model_groups.c.name == name), lock)
        row = (await self._conn.execute(statement)).first()
        if row is None:
            return None
        return _group(row, (await self._tags([name]))[name])

    async def _insert_tags(self, group: str, tags: dict[str, str]) -> None:
        if tags:
            await self._conn.execute(
                insert(t.model_group_tags),
                [{"model_group": group, "key": k, "value": v} for k, v in tags.items()],
            )

    async def add_group(self, group: ModelGroup) -> None:
        await self._conn.execute(
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
        await self._conn.execute(
            update(t.model_groups)
            .where(t.model_groups.c.name == group.name)
            .values(description=group.description, update_time=group.update_time)
        )
        await self._conn.execute(
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
        rows = list(await self._conn.execute(statement))
        found = await self._tags([row.name for row in rows])
        return [_group(row, found[row.name]) for row in rows]

    async def next_version_number(self, group: str, now: datetime) -> int:
        groups = t.model_groups
        result = await self._conn.execute(
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
        rows = await self._conn.execute(
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
        # One round trip: the version joined with its aliases (one row per alias).
        versions, aliases = t.model_versions, t.model_aliases
        statement = (
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
            .where(versions.c.model_group == group, versions.c.version == version)
        )
        if lock is not None:
            # Lock the version row only (not the nullable side of the join).
            statement = statement.with_for_update(of=versions, read=lock == "share")
        rows = list(await self._conn.execute(statement))
        if not rows:
            return None
        return _version(rows[0], [r.alias_name for r in rows if r.alias_name is not None])

    async def find_version_by_request_id(self, group: str, request_id: str) -> ModelVersion | None:
        versions = t.model_versions
        row = (
            await self._conn.execute(
                select(versions).where(
                    versions.c.model_group == group, versions.c.request_id == request_id
                )
            )
        ).first()
        if row is None:
            return None
        return _version(row, (await self._aliases(group, [row.version]))[row.version])

    async def add_version(self, version: ModelVersion) -> None:
        await self._conn.execute(
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
        await self._conn.execute(
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
        rows = list(await self._conn.execute(statement))
        found = await self._aliases(group, [row.version for row in rows])
        return [_version(row, found[row.version]) for row in rows]

    # -- aliases ----------------------------------------------------------------------

    async def get_alias(self, group: str, alias: str) -> int | None:
        aliases = t.model_aliases
        value = (
            await self._conn.execute(
                select(aliases.c.version).where(
                    aliases.c.model_group == group, aliases.c.alias == alias
                )
            )
        ).scalar_one_or_none()
        return None if value is None else int(value)

    async def set_alias(self, group: str, alias: str, version: int, now: datetime) -> None:
        aliases = t.model_aliases
        result = await self._conn.execute(
            update(aliases)
            .where(aliases.c.model_group == group, aliases.c.alias == alias)
            .values(version=version, update_time=now)
        )
        if result.rowcount == 0:
            await self._conn.execute(
                insert(aliases).values(
                    model_group=group, alias=alias, version=version, update_time=now
                )
            )

    async def delete_alias(self, group: str, alias: str) -> None:
        aliases = t.model_aliases
        await self._conn.execute(
            delete(aliases).where(aliases.c.model_group == group, aliases.c.alias == alias)
        )

    # -- audit ------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> None:
        await self._conn.execute(
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
        return [_audit(row) for row in await self._conn.execute(statement)]

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
        row = (await self._conn.execute(statement)).first()
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
            await self._conn.execute(insert(t.endpoints).values(name=endpoint.name, **values))
        else:
            await self._conn.execute(
                update(t.endpoints).where(t.endpoints.c.name == endpoint.name).values(**values)
            )

    async def add_endpoint_config(self, config: EndpointConfig) -> None:
        await self._conn.execute(
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
        await self._conn.execute(insert(t.endpoint_model_refs), refs)

    async def get_endpoint_config(self, endpoint: str, revision: int) -> EndpointConfig | None:
        configs = t.endpoint_configs
        row = (
            await self._conn.execute(
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
        return [_config(row) for row in await self._conn.execute(statement)]

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
        for row in await self._conn.execute(statement):
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
        rows = await self._conn.execute(
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
        await self._conn.execute(
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
        async with self._db.transaction(write=False) as conn:
            rows = await conn.execute(
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

    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        if not ids:
            return
        async with self._db.transaction(write=True) as conn:
            await conn.execute(
                update(t.outbox).where(t.outbox.c.id.in_(list(ids))).values(sent_time=now)
            )

    async def purge_sent(self, before: datetime) -> int:
        async with self._db.transaction(write=True) as conn:
            result = await conn.execute(delete(t.outbox).where(t.outbox.c.sent_time < before))
            return int(result.rowcount)

    async def count_pending(self) -> int:
        """How many events wait to be relayed (for tests and metrics)."""
        async with self._db.transaction(write=False) as conn:
            value = (
                await conn.execute(
                    select(func.count()).select_from(t.outbox).where(t.outbox.c.sent_time.is_(None))
                )
            ).scalar_one()
            return int(value)

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
        conn = await self._db.engine.connect()
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
