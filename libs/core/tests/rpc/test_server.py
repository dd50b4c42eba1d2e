"""RpcServer: health, reflection, graceful stop, limits, port ownership, signals."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mlbus.core.errors import Unavailable
from mlbus.core.rpc import RpcServer, create_channel, create_server, run_until_signal
from mlbus.core.rpc import wait_for_ready as wait_ready
from mlbus.core.settings import GrpcSettings

SERVICE = "mlbus.test.v1.TestService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

StartServer = Callable[..., Awaitable[tuple[RpcServer, Any]]]


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def check(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def test_health_serving_after_start_for_server_and_each_service(
    start_server: StartServer,
) -> None:
    server, _ = await start_server()
    assert server.services == (SERVICE,)
    async with create_channel(server.address, GrpcSettings()) as channel:
        assert await check(channel) == SERVING
        assert await check(channel, SERVICE) == SERVING

        await server.set_serving(False)
        assert await check(channel) == NOT_SERVING
        assert await check(channel, SERVICE) == NOT_SERVING
        with pytest.raises(Unavailable) as info:
            await wait_ready(channel, timeout=0.3, service=SERVICE)
        assert server.address in info.value.message
        assert "NOT_SERVING" in info.value.message

        await server.set_serving(True)
        await wait_ready(channel, timeout=5, service=SERVICE)


async def test_health_not_serving_once_stop_begins(start_server: StartServer) -> None:
    server, _ = await start_server()
    async with create_channel(server.address, GrpcSettings()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert (await watch.read()).status == SERVING

        stopping = asyncio.create_task(server.stop(grace=10))
        assert (await watch.read()).status == NOT_SERVING
        # The watcher hangs up, and with nothing else in flight the stop is quick.
        watch.cancel()
        await asyncio.wait_for(stopping, timeout=5)

    with pytest.raises(grpc.aio.AioRpcError):
        async with create_channel(server.address, GrpcSettings()) as channel:
            await check(channel)


async def test_reflection_lists_services(channel: grpc.aio.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    [response] = [r async for r in call]
    names = {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_graceful_stop_lets_in_flight_call_finish(start_server: StartServer) -> None:
    server, gate = await start_server()
    async with create_channel(server.address, GrpcSettings()) as channel:
        in_flight = asyncio.ensure_future(channel.unary_unary(method("Gated"))(b""))
        await asyncio.wait_for(gate.started.wait(), timeout=5)

        stopping = asyncio.create_task(server.stop(grace=10))
        # New calls are refused while the in-flight one is still running.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(method("Echo"))(b"late", timeout=5)
        # UNAVAILABLE or CANCELLED, depending on how far the shutdown got.
        assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert not stopping.done()

        gate.release.set()
        assert await in_flight == b"released"
        await asyncio.wait_for(stopping, timeout=5)


async def test_stop_cancels_calls_still_running_after_grace(start_server: StartServer) -> None:
    server, gate = await start_server()
    async with create_channel(server.address, GrpcSettings()) as channel:
        in_flight = asyncio.ensure_future(channel.unary_unary(method("Gated"))(b""))
        await asyncio.wait_for(gate.started.wait(), timeout=5)
        await asyncio.wait_for(server.stop(grace=0.2), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await in_flight
        assert info.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)


async def test_message_size_limit_is_enforced(start_server: StartServer) -> None:
    limit = 64 * 1024
    server, _ = await start_server(GrpcSettings(max_message_bytes=limit))
    # The client allows more, so the server's limit is the one that bites.
    async with create_channel(server.address, GrpcSettings()) as channel:
        echo = channel.unary_unary(method("Echo"))
        assert await echo(b"x" * (limit // 2)) == b"x" * (limit // 2)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await echo(b"x" * (limit + 1))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    # And a client with a small limit refuses a large response.
    big_server, _ = await start_server()
    async with create_channel(big_server.address, GrpcSettings(max_message_bytes=limit)) as ch:
        repeat = ch.unary_unary(method("Repeat"))
        assert len(await repeat(str(limit).encode())) == limit
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await repeat(str(limit + 1).encode())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_two_servers_cannot_share_a_port(start_server: StartServer) -> None:
    server, _ = await start_server()
    second = create_server(
        service_name="second", settings=GrpcSettings(), host="127.0.0.1", port=server.port
    )
    with pytest.raises(OSError, match=str(server.port)):
        await second.start()


async def test_services_cannot_be_added_after_start(start_server: StartServer) -> None:
    server, _ = await start_server()
    handler = grpc.method_handlers_generic_handler("mlbus.test.v1.Other", {})
    with pytest.raises(RuntimeError):
        server.add_generic_handler(handler)


async def test_run_until_signal_stops_gracefully_then_runs_callbacks(
    start_server: StartServer,
) -> None:
    server, _ = await start_server()
    calls: list[str] = []

    async def close_async() -> None:
        # The server is already stopped when callbacks run.
        await asyncio.wait_for(server.wait_for_termination(), timeout=1)
        calls.append("async")

    def broken() -> None:
        raise RuntimeError("callback failure must not stop the others")

    original = signal.getsignal(signal.SIGTERM)
    runner = asyncio.create_task(
        run_until_signal(
            server, on_shutdown=[lambda: calls.append("sync"), broken, close_async], grace=1
        )
    )
    for _ in range(100):  # until the handler is installed (the task's first step)
        if signal.getsignal(signal.SIGTERM) is not original:
            break
        await asyncio.sleep(0)
    assert signal.getsignal(signal.SIGTERM) is not original

    os.kill(os.getpid(), signal.SIGTERM)
    received = await asyncio.wait_for(runner, timeout=5)

    assert received is signal.SIGTERM
    assert calls == ["sync", "async"]
    with pytest.raises(grpc.aio.AioRpcError):
        async with create_channel(server.address, GrpcSettings()) as channel:
            await check(channel)
