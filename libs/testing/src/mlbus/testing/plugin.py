"""pytest plugin (entry point ``mlbus``): real parts for tests.

- ``kafka_broker``: the embedded broker on a free loopback port, once per test session
  (set ``MLBUS_TEST_KAFKA_BOOTSTRAP`` to use an external Kafka such as Apache Kafka instead);
- ``kafka_settings``: :class:`KafkaSettings` pointing at it;
- ``unique_name``: a factory of names no other test uses (topics, groups, databases);
- ``postgres_url`` / ``redis_url``: the machine's PostgreSQL and Redis, each test session
  with its own database / key prefix (skipped with a clear reason when they are not running,
  except in CI, where that fails the test);
- ``run_app``: start a service's ``ServiceApp`` in-process on a free port with a ready channel;
- ``span_exporter``: the spans this process finished, for trace assertions;
- ``onnx_linear_model``, ``onnx_sklearn_classifier``, ``onnx_sklearn_regressor``: real ONNX
  models built by the test (:mod:`mlbus.testing.onnx_fixtures`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.service import ServiceApp
from mlbus.core.settings import KafkaSettings
from mlbus.sdk.local.broker import BrokerProcess, free_port, start_broker

pytest_plugins = ("mlbus.testing.onnx_fixtures",)

POSTGRES_ADMIN_URL_ENV = "MLBUS_TEST_POSTGRES_URL"
REDIS_URL_ENV = "MLBUS_TEST_REDIS_URL"
KAFKA_ENV = "MLBUS_TEST_KAFKA_BOOTSTRAP"


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer machine without the service; fail in CI, where it must be there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a broker for this session: external if configured, else embedded."""
    external = os.environ.get(KAFKA_ENV)
    if external:
        yield external
        return
    log_path: Path = tmp_path_factory.mktemp("broker") / "broker.log"
    broker: BrokerProcess = start_broker(port=free_port(), log_path=log_path)
    try:
        yield broker.bootstrap_servers
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    """Kafka settings for the session's broker, with the recommended embedded-broker timings."""
    return KafkaSettings(bootstrap_servers=kafka_bootstrap)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_name("orders")`` → ``orders-<test>-<random>``: safe for topics, groups, databases."""
    test = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")

    def make(prefix: str) -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}".lower()

    return make


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """SQLAlchemy URL of a fresh PostgreSQL database for this session, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    admin = os.environ.get(POSTGRES_ADMIN_URL_ENV, "postgresql://postgres@127.0.0.1:5432/test")
    name = f"mlbus_test_{uuid.uuid4().hex[:10]}"
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL not reachable at {admin}: {exc}")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = admin.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the machine's Redis (tests must namespace their keys with ``unique_name``)."""
    redis = pytest.importorskip("redis")
    url = os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:6379/0")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        _unavailable(f"Redis not reachable at {url}: {exc}")
    finally:
        client.close()
    return url


@dataclass
class RunningApp:
    """A service app started in-process by :func:`run_app`, with a ready channel to it."""

    app: ServiceApp
    port: int
    channel: grpc.aio.Channel

    @property
    def target(self) -> str:
        """``127.0.0.1:<port>`` of the app's gRPC server."""
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def run_app() -> AsyncIterator[Callable[[ServiceApp], Awaitable[RunningApp]]]:
    """``running = await run_app(app)``: start a ServiceApp in-process (its settings should use
    port 0), wait until its health check reports SERVING, and stop it after the test."""
    started: list[RunningApp] = []

    async def start(app: ServiceApp) -> RunningApp:
        port = await app.start()
        channel = create_channel(f"127.0.0.1:{port}", app.settings.grpc)
        running = RunningApp(app, port, channel)
        started.append(running)
        await wait_for_ready(channel, timeout=10)
        return running

    yield start
    for running in reversed(started):
        await running.channel.close(None)
        await running.app.stop()


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Finished spans of this process (an SDK tracer provider is installed once if needed)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter
