"""The registry, for real: its gRPC server on port 0 built by the composition root, a real
channel, the object store in a temporary directory, the session's broker, and the database
parametrised over SQLite and PostgreSQL.

Test modules cannot import this file, so helpers hang off :class:`RegistryHandle` and
fixtures.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from google.protobuf.message import Message
from sqlalchemy import func, select

from mlbus.common.v1 import common_pb2
from mlbus.core.messaging.envelope import Envelope, decode
from mlbus.core.messaging.topics import Topic
from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings, KafkaSettings, StorageSettings
from mlbus.registry.adapters import tables
from mlbus.registry.app import RegistryApp, build_app
from mlbus.registry.settings import RegistrySettings
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.registry.v1 import registry_pb2_grpc
from mlbus.testing.plugin import POSTGRES_ADMIN_URL_ENV

DEFAULT_CHUNK = 64 * 1024


async def wait_until(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float, what: str
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)


@dataclass
class Received:
    """One record read back from a registry topic."""

    topic: str
    key: str
    partition: int
    offset: int
    envelope: Envelope
    message: Message


async def existing_partitions(bootstrap: str, names: Sequence[str]) -> dict[str, int]:
    """Partition counts of those of ``names`` that exist (an all-topics metadata request,
    which never auto-creates a topic)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.bootstrap()
        cluster = await client.fetch_all_metadata()
    finally:
        await client.close()
    counts: dict[str, int] = {}
    for name in names:
        found = cluster.partitions_for_topic(name)
        if found:
            counts[name] = len(found)
    return counts


async def read_events(
    bootstrap: str,
    topics: Sequence[Topic[Any]],
    *,
    until: Callable[[list[Received]], bool],
    timeout: float = 20.0,
) -> list[Received]:
    """Read ``topics`` from the beginning (no consumer group) until ``until(records)``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
    )
    await consumer.start()
    received: list[Received] = []
    by_name = {t.name: t for t in topics}
    assigned: dict[str, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while not until(received):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s; received {len(received)} events: "
                    f"{[(r.topic.rsplit('.', 2)[-2], r.key) for r in received]}"
                )
            if len(assigned) < len(by_name):
                # Topics appear as the relay creates them; assign what exists so far.
                found = await existing_partitions(bootstrap, list(by_name))
                if found != assigned:
                    new = [
                        TopicPartition(name, p)
                        for name, count in found.items()
                        if name not in assigned
                        for p in range(count)
                    ]
                    # Re-assigning resets positions: keep those of partitions read so far.
                    kept = {tp: await consumer.position(tp) for tp in consumer.assignment()}
                    consumer.assign([*kept, *new])
                    for tp, position in kept.items():
                        consumer.seek(tp, position)
                    await consumer.seek_to_beginning(*new)
                    assigned = found
            if not assigned:
                # getmany() with nothing assigned waits for an assignment, forever.
                await asyncio.sleep(0.05)
                continue
            async with asyncio.timeout(10):
                batches = await consumer.getmany(timeout_ms=100)
            for tp, records in batches.items():
                topic = by_name[tp.topic]
                for record in records:
                    envelope = Envelope.from_headers(record.headers, fallback_id="")
                    received.append(
                        Received(
                            topic=tp.topic,
                            key=(record.key or b"").decode(),
                            partition=tp.partition,
                            offset=record.offset,
                            envelope=envelope,
                            message=decode(topic.message_type, envelope, record.value),
                        )
                    )
    finally:
        await consumer.stop()
    return received


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@dataclass
class RegistryHandle:
    """A running registry app with a channel, a stub and test helpers."""

    app: RegistryApp
    channel: grpc.aio.Channel
    settings: RegistrySettings
    stub: registry_pb2_grpc.RegistryServiceAsyncStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = registry_pb2_grpc.RegistryServiceStub(self.channel)

    @property
    def catalogue(self) -> Any:
        """The app's topic catalogue (namespaced)."""
        return self.app.catalogue

    # -- calls ------------------------------------------------------------------------

    async def create_group(self, name: str, *, actor: str = "alice", **fields: Any) -> Any:
        request = pb.CreateModelGroupRequest(
            name=name, actor=common_pb2.Actor(name=actor), **fields
        )
        return (await self.stub.CreateModelGroup(request)).model_group

    def header(
        self, group: str, *, actor: str = "alice", **fields: Any
    ) -> pb.RegisterModelVersionHeader:
        return pb.RegisterModelVersionHeader(
            model_group=group, actor=common_pb2.Actor(name=actor), **fields
        )

    async def register_stream(
        self,
        header: pb.RegisterModelVersionHeader,
        data: bytes,
        *,
        chunk_size: int = DEFAULT_CHUNK,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Any:
        async def requests() -> AsyncIterator[pb.RegisterModelVersionRequest]:
            yield pb.RegisterModelVersionRequest(header=header)
            for chunk in _chunks(data, chunk_size):
                yield pb.RegisterModelVersionRequest(chunk=chunk)

        response = await self.stub.RegisterModelVersion(requests(), metadata=metadata)
        return response.model_version

    async def register(
        self, group: str, data: bytes, *, actor: str = "alice", **fields: Any
    ) -> Any:
        return await self.register_stream(self.header(group, actor=actor, **fields), data)

    async def approve(
        self, group: str, version: int, *, actor: str = "bob", reason: str = "looks good"
    ) -> Any:
        request = pb.ApproveModelVersionRequest(
            model_group=group, version=version, actor=common_pb2.Actor(name=actor), reason=reason
        )
        return (await self.stub.ApproveModelVersion(request)).model_version

    async def approved(self, group: str, data: bytes, **fields: Any) -> Any:
        """Register ``data`` (creating the group) and approve it; the approved version."""
        version = await self.register(group, data, create_group=True, **fields)
        return await self.approve(group, version.version)

    async def audit(self, prefix: str, entity_type: str = "") -> list[Any]:
        """Every audit entry whose entity id starts with ``prefix``, oldest first."""
        entries: list[Any] = []
        token = ""
        while True:
            response = await self.stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(
                    entity_type=entity_type,
                    entity_id_prefix=prefix,
                    page=common_pb2.PageRequest(page_size=100, page_token=token),
                )
            )
            entries += response.entries
            token = response.page.next_page_token
            if not token:
                return entries

    # -- state behind the API -----------------------------------------------------------

    async def outbox_count(self, key: str | None = None, *, pending_only: bool = False) -> int:
        """Outbox rows (all, or for one key)."""
        statement = select(func.count()).select_from(tables.outbox)
        if key is not None:
            statement = statement.where(tables.outbox.c.key == key)
        if pending_only:
            statement = statement.where(tables.outbox.c.sent_time.is_(None))
        async with self.app.database.transaction(write=False) as conn:
            return int((await conn.execute(statement)).scalar_one())

    async def outbox_ids(self, key: str) -> list[str]:
        """Event ids queued for ``key``, in outbox order."""
        outbox = tables.outbox
        async with self.app.database.transaction(write=False) as conn:
            rows = await conn.execute(
                select(outbox.c.event_id).where(outbox.c.key == key).order_by(outbox.c.id)
            )
            return [row.event_id for row in rows]

    async def stored_objects(self) -> list[str]:
        """URIs of the content-addressed objects in the store."""
        return [info.uri async for info in self.app.store.list("sha256/")]

    def staged_files(self) -> list[Path]:
        """Files in the staging directory."""
        directory = self.settings.resolved_staging_dir()
        return sorted(directory.iterdir()) if directory.exists() else []


async def expect_rpc_error(
    call: Awaitable[Any], code: grpc.StatusCode, *fragments: str
) -> grpc.aio.AioRpcError:
    """Await ``call`` expecting ``code`` and a message containing every fragment."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    error = caught.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    for fragment in fragments:
        assert fragment in (error.details() or ""), f"{fragment!r} not in {error.details()!r}"
    return error


def make_settings(
    home: Path, database_url: str, kafka: KafkaSettings, **overrides: Any
) -> RegistrySettings:
    """Registry settings for tests: free ports, everything under ``home``, short timings."""
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": 0,
        "home": home,
        "database_url": database_url,
        "kafka": kafka,
        "storage": StorageSettings(root=home / "objects"),
        "grpc": GrpcSettings(shutdown_grace_s=1.0),
        "outbox_poll_interval_s": 0.2,
        "outbox_backoff_initial_s": 0.05,
        "outbox_backoff_max_s": 0.5,
        "outbox_send_timeout_s": 3.0,
        "outbox_drain_timeout_s": 2.0,
    }
    values.update(overrides)
    return RegistrySettings(**values)


@asynccontextmanager
async def running_registry(settings: RegistrySettings) -> AsyncIterator[RegistryHandle]:
    """Start the registry app from ``settings``; stop it afterwards."""
    app = build_app(settings)
    try:
        await app.start()
        channel = create_channel(app.server.address, settings.grpc)
        try:
            await wait_for_ready(channel, timeout=10)
            yield RegistryHandle(app, channel, settings)
        finally:
            await channel.close(None)
    finally:
        await app.stop()


def _postgres_admin() -> str:
    return os.environ.get(POSTGRES_ADMIN_URL_ENV, "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's registry database: a SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('registry-db') / 'registry.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def fresh_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own for one test (migrations, relay leadership)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    psycopg = pytest.importorskip("psycopg")
    request.getfixturevalue("postgres_url")  # skips (or fails in CI) without PostgreSQL
    admin = _postgres_admin()
    name = f"mlbus_reg_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
async def registry(
    database_url: str, kafka_settings: KafkaSettings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RegistryHandle]:
    """The registry shared by the tests of one database (tests use unique names)."""
    home = tmp_path_factory.mktemp("registry")
    kafka = kafka_settings.model_copy(update={"topic_namespace": f"reg-{uuid.uuid4().hex[:8]}"})
    async with running_registry(make_settings(home, database_url, kafka)) as handle:
        yield handle


@pytest.fixture
def start_registry(
    tmp_path: Path, kafka_settings: KafkaSettings
) -> Callable[..., AbstractAsyncContextManager[RegistryHandle]]:
    """``async with start_registry(database_url, **settings) as handle``: a registry of the
    test's own (its own home, object store and topic namespace)."""

    def start(database_url: str, **overrides: Any) -> AbstractAsyncContextManager[RegistryHandle]:
        home = tmp_path / f"registry-{uuid.uuid4().hex[:6]}"
        kafka = overrides.pop(
            "kafka",
            kafka_settings.model_copy(update={"topic_namespace": f"reg-{uuid.uuid4().hex[:8]}"}),
        )
        return running_registry(make_settings(home, database_url, kafka, **overrides))

    return start


@pytest.fixture
def own_database_url(database_url: str, tmp_path: Path) -> str:
    """A database for a test's own registry: its own SQLite file (one relay per file), or
    the session's PostgreSQL database (relay leadership keeps one relay per database)."""
    if database_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'own.db'}"
    return database_url


@pytest.fixture
def expect_error() -> Callable[..., Awaitable[grpc.aio.AioRpcError]]:
    """``await expect_error(call, code, *fragments)``: the call fails with ``code`` and a
    message containing every fragment; returns the error."""
    return expect_rpc_error


@pytest.fixture(name="read_events")
def read_events_fixture() -> Callable[..., Awaitable[list[Received]]]:
    """``await read_events(bootstrap, topics, until=..., timeout=...)``: see
    :func:`read_events`."""
    return read_events
