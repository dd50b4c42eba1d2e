"""ServiceApp: the start/stop order every service runs in, against the real broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.errors import Unavailable
from mlbus.core.messaging import Topic, TopicCatalogue
from mlbus.core.service import ServiceApp
from mlbus.core.settings import GrpcSettings, KafkaSettings, ServiceSettings
from mlbus.sdk.local.broker import free_port
from mlbus.testing.plugin import RunningApp


def make_settings(kafka: KafkaSettings) -> ServiceSettings:
    return ServiceSettings(grpc_port=0, kafka=kafka, grpc=GrpcSettings(shutdown_grace_s=1))


async def test_app_connects_bus_creates_topics_then_serves(
    kafka_settings: KafkaSettings,
    unique_name: Callable[[str], str],
    run_app: Callable[[ServiceApp], Awaitable[RunningApp]],
) -> None:
    kafka = kafka_settings.model_copy(update={"topic_namespace": unique_name("ns")})
    app = ServiceApp(make_settings(kafka))
    topics: list[Topic] = [app.catalogue.model_version_approved]
    app.topics.extend(topics)
    order: list[str] = []

    async def on_start() -> None:
        order.append("hook")
        assert app.producer is not None

    async def on_stop() -> None:
        order.append("stop-hook")

    app.on_start(on_start)
    app.on_stop(on_stop)
    running = await run_app(app)
    assert order == ["hook"]
    reply = await health_pb2_grpc.HealthStub(running.channel).Check(
        health_pb2.HealthCheckRequest(service=""), timeout=5
    )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers)
    await admin.start()
    try:
        names = set(await admin.list_topics())
    finally:
        await admin.close()
    expected = TopicCatalogue(kafka.topic_namespace).model_version_approved
    assert expected.name.startswith(kafka.topic_namespace + ".")
    assert {expected.name, expected.dlq_name} <= names

    await app.stop()
    assert order == ["hook", "stop-hook"]
    with pytest.raises(grpc.aio.AioRpcError):
        await health_pb2_grpc.HealthStub(running.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=1
        )


async def test_unreachable_bus_fails_start_with_a_clear_error() -> None:
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}", startup_timeout_s=1.5)
    app = ServiceApp(make_settings(kafka))
    with pytest.raises(Unavailable, match=r"Kafka at 127\.0\.0\.1:\d+ not reachable within 2s"):
        await app.start()
    await app.stop()


async def test_the_listening_port_is_written_to_the_port_file(tmp_path: Path) -> None:
    port_file = tmp_path / "run" / "registry.port"
    port_file.parent.mkdir()
    port_file.write_text("1\n")  # left by an earlier process: replaced, not appended to
    settings = ServiceSettings(
        grpc_port=0, port_file=port_file, grpc=GrpcSettings(shutdown_grace_s=1)
    )
    app = ServiceApp(settings, bus_required=False)
    try:
        port = await app.start()
        assert port > 0
        assert port_file.read_text() == f"{port}\n"
        assert sorted(p.name for p in port_file.parent.iterdir()) == ["registry.port"]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{int(port_file.read_text())}")
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
        finally:
            await channel.close(None)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await app.stop()
