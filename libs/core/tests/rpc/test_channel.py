"""create_channel: default deadline for every call kind; wait_for_ready."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import grpc
import pytest

from mlbus.core.errors import Unavailable
from mlbus.core.rpc import RpcServer, create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings

SERVICE = "mlbus.test.v1.TestService"
SHORT = GrpcSettings(default_deadline_s=0.2)


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def test_default_deadline_applies_when_caller_sets_none(
    shared_server: tuple[RpcServer, object],
) -> None:
    async with create_channel(shared_server[0].address, SHORT) as channel:
        slow = channel.unary_unary(method("Slow"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await slow(b"0.6")
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        # An explicit timeout wins over the default.
        assert await slow(b"0.6", timeout=5) == b"done"


async def test_default_deadline_applies_to_streaming_calls(
    shared_server: tuple[RpcServer, object],
) -> None:
    async def never_ending() -> AsyncIterator[bytes]:
        await asyncio.Event().wait()
        yield b""

    async with create_channel(shared_server[0].address, SHORT) as channel:
        call = channel.stream_unary(method("Collect"))(never_ending())
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call, timeout=5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        call = channel.stream_stream(method("Chat"))()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await asyncio.wait_for(call.read(), timeout=5)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_wait_for_ready_returns_once_serving(
    shared_server: tuple[RpcServer, object],
) -> None:
    async with create_channel(shared_server[0].address, GrpcSettings()) as channel:
        await wait_for_ready(channel, timeout=5)
        await wait_for_ready(channel, timeout=5, service=SERVICE)


async def test_wait_for_ready_names_target_when_nothing_listens() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no server
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = f"127.0.0.1:{port}"
    async with create_channel(target, GrpcSettings()) as channel:
        with pytest.raises(Unavailable) as info:
            await wait_for_ready(channel, timeout=0.3)
    assert target in info.value.message
    assert info.value.details["target"] == target
    assert info.value.details["last_status"]


async def test_wait_for_ready_unknown_service_is_not_ready(
    shared_server: tuple[RpcServer, object],
) -> None:
    async with create_channel(shared_server[0].address, GrpcSettings()) as channel:
        with pytest.raises(Unavailable) as info:
            await wait_for_ready(channel, timeout=0.2, service="mlbus.nope.v1.Missing")
    assert "NOT_FOUND" in info.value.message
