"""The database: migrations from empty, idempotent upgrades, schema equal to the code's,
an append-only audit table, one outbox relay per PostgreSQL database; and the service
starting on its default SQLite file without a broker."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import DBAPIError

from mlbus.common.v1 import common_pb2
from mlbus.core.settings import KafkaSettings
from mlbus.registry.adapters.database import Database, SqlOutboxStore, SqlSession
from mlbus.registry.adapters.migrations import (
    current_revision,
    head_revision,
    run_downgrade,
    run_upgrade,
)
from mlbus.registry.adapters.tables import metadata
from mlbus.registry.api.servicer import SERVICE_NAME
from mlbus.registry.ports import RetryableConflict
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.sdk.local.broker import free_port

TABLES = {
    "model_groups",
    "model_group_tags",
    "model_versions",
    "model_aliases",
    "audit_log",
    "endpoints",
    "endpoint_configs",
    "endpoint_model_refs",
    "outbox",
}


def _state(conn: Connection) -> tuple[str | None, set[str], list[Any]]:
    tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
    diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    return current_revision(conn), tables, diff


async def test_migrations_from_empty_upgrade_twice_and_back(fresh_database_url: str) -> None:
    database = Database(fresh_database_url)
    try:
        async with database.transaction(write=False) as conn:
            assert await conn.run_sync(current_revision) is None
        await database.start(migrate=True)
        async with database.transaction(write=False) as conn:
            revision, tables, diff = await conn.run_sync(_state)
        assert revision == head_revision() == "0001"
        assert tables == TABLES
        assert diff == [], "the migrations and tables.py disagree"

        async with database.transaction(write=True) as conn:
            await conn.execute(
                text(
                    "INSERT INTO model_groups (name, description, latest_version, created_by, "
                    "create_time, update_time) VALUES ('kept', '', 0, 'a', :t, :t)"
                ),
                {"t": "2026-01-01 00:00:00+00:00"},
            )
        # `alembic upgrade head` again changes nothing and keeps the data.
        await database.migrate("head")
        async with database.transaction(write=True) as conn:
            await conn.run_sync(run_upgrade, "head")
        async with database.transaction(write=False) as conn:
            assert await conn.run_sync(_state) == (revision, tables, [])
            names = (await conn.execute(text("SELECT name FROM model_groups"))).scalars().all()
            assert names == ["kept"]

        async with database.transaction(write=True) as conn:
            await conn.run_sync(run_downgrade, "base")
        async with database.transaction(write=False) as conn:
            assert (await conn.run_sync(_state))[:2] == (None, set())
        await database.migrate()
        async with database.transaction(write=False) as conn:
            assert (await conn.run_sync(_state))[:2] == ("0001", TABLES)
    finally:
        await database.aclose()


async def test_audit_log_is_append_only(fresh_database_url: str) -> None:
    database = Database(fresh_database_url)
    try:
        await database.start(migrate=True)
        async with database.transaction(write=True) as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_log (entity_type, entity_id, action, actor, reason, time) "
                    "VALUES ('model_group', 'g', 'created', 'a', '', :t)"
                ),
                {"t": "2026-01-01 00:00:00+00:00"},
            )
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
            with pytest.raises(DBAPIError, match="append-only"):
                async with database.transaction(write=True) as conn:
                    await conn.execute(text(statement))
        async with database.transaction(write=False) as conn:
            actors = (await conn.execute(text("SELECT actor FROM audit_log"))).scalars().all()
        assert actors == ["a"]
    finally:
        await database.aclose()


async def test_one_outbox_relay_per_database(fresh_database_url: str) -> None:
    first, second = Database(fresh_database_url), Database(fresh_database_url)
    try:
        await first.start(migrate=True)
        await second.start(migrate=False)
        a, b = SqlOutboxStore(first), SqlOutboxStore(second)
        assert await a.try_lead()
        if first.is_sqlite:
            # One registry process per SQLite file: it always leads.
            assert await b.try_lead()
            return
        assert not await b.try_lead()
        assert await a.try_lead()  # still leading
        await a.resign()
        assert await b.try_lead()
        assert not await a.try_lead()
        await b.resign()
    finally:
        await first.aclose()
        await second.aclose()


async def test_service_starts_on_its_default_sqlite_file_without_a_broker(
    start_registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    nobody = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")
    async with start_registry("", kafka=nobody) as registry:
        database_file = Path(registry.settings.home) / "registry.db"
        assert database_file.exists()
        assert registry.app.database.url.database == str(database_file.resolve())
        health = health_pb2_grpc.HealthStub(registry.channel)
        status = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        group = unique_name("g")
        version = await registry.register(group, onnx_linear_model(), create_group=True)
        assert version.version == 1
        got = await registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=group))
        assert got.model_group.created_by == common_pb2.Actor(name="alice")
        # The events wait in the outbox for a broker.
        assert await registry.outbox_count(pending_only=True) == 2


def _sqlite_file(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'units.db'}"


async def _groups(database: Database) -> list[str]:
    async with database.transaction(write=False) as session:
        return list((await session.execute(text("SELECT name FROM model_groups"))).scalars())


def _insert_group(name: str) -> Any:
    return text(
        "INSERT INTO model_groups (name, description, latest_version, created_by, create_time, "
        f"update_time) VALUES ('{name}', '', 0, 'a', :t, :t)"
    ).bindparams(t="2026-01-01 00:00:00+00:00")


async def test_sqlite_runs_a_transaction_in_one_thread_hop(tmp_path: Path) -> None:
    database = Database(_sqlite_file(tmp_path))
    try:
        await database.start(migrate=True)
        hops = 0
        submit = database._submit

        def counting(fn: Any, *args: Any, **kwargs: Any) -> Any:
            nonlocal hops
            hops += 1
            return submit(fn, *args, **kwargs)

        database._submit = counting  # type: ignore[method-assign]

        async def write(session: SqlSession) -> None:
            await session.execute(_insert_group("a"))
            await session.execute(_insert_group("b"))

        async def read(session: SqlSession) -> list[str]:
            names = await session.execute(text("SELECT name FROM model_groups ORDER BY name"))
            return list(names.scalars())

        await database.run(write, write=True)
        assert hops == 1
        assert await database.run(read, write=False) == ["a", "b"]
        assert hops == 2
    finally:
        await database.aclose()


async def test_sqlite_work_that_suspends_is_refused_and_rolled_back(tmp_path: Path) -> None:
    database = Database(_sqlite_file(tmp_path))
    try:
        await database.start(migrate=True)

        async def work(session: SqlSession) -> None:
            await session.execute(_insert_group("suspends"))
            await asyncio.sleep(0)  # not the session: the unit of work cannot run it

        with pytest.raises(RuntimeError, match="may await only"):
            await database.run(work, write=True)
        assert await _groups(database) == []
    finally:
        await database.aclose()


async def test_sqlite_write_cancelled_before_commit_rolls_back_and_frees_the_lock(
    tmp_path: Path,
) -> None:
    database = Database(_sqlite_file(tmp_path))
    started, release = threading.Event(), threading.Event()
    try:
        await database.start(migrate=True)

        async def slow(session: SqlSession) -> None:
            await session.execute(_insert_group("cancelled"))
            started.set()
            release.wait(10)  # blocks its database thread, not the event loop

        task = asyncio.create_task(database.run(slow, write=True))
        assert await asyncio.to_thread(started.wait, 10)

        async def quick(session: SqlSession) -> None:
            await session.execute(_insert_group("next"))

        # The next writer queues until the first has ended on its thread.
        queued = asyncio.create_task(database.run(quick, write=True))
        task.cancel()
        await asyncio.sleep(0.05)
        assert not queued.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(queued, 10)
        assert await _groups(database) == ["next"]
    finally:
        release.set()
        await database.aclose()


async def test_sqlite_writer_locked_out_by_another_process_gets_a_retryable_conflict(
    tmp_path: Path,
) -> None:
    database = Database(_sqlite_file(tmp_path), sqlite_timeout_s=0.1)
    try:
        await database.start(migrate=True)
        other = sqlite3.connect(tmp_path / "units.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock

            async def write(session: SqlSession) -> None:
                await session.execute(_insert_group("locked-out"))

            with pytest.raises(RetryableConflict, match="database is locked"):
                await database.run(write, write=True)
            other.execute("ROLLBACK")
            await database.run(write, write=True)
        finally:
            other.close()
        assert await _groups(database) == ["locked-out"]
    finally:
        await database.aclose()
