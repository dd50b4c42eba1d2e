"""ErrorInterceptor: MlbusError → its status, anything else → INTERNAL logged once."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mlbus.core.errors import ERROR_TYPES, MlbusError
from mlbus.core.rpc import (
    ErrorInterceptor,
    RpcServer,
    create_channel,
    details_to_metadata,
    error_details,
)
from mlbus.core.settings import GrpcSettings

SERVICE = "mlbus.test.v1.TestService"
EXPECTED_DETAILS = {"field": "x", "expected": "FP32 [-1, 30]", "model": "zürich"}


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def error_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """ERROR records of mlbus' rpc code and of grpc (which logs servicer exceptions)."""
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("mlbus.core.rpc", "grpc"))
    ]


@pytest.mark.parametrize("error_type", ERROR_TYPES, ids=lambda t: t.__name__)
async def test_mlbus_error_maps_to_its_status_message_and_details(
    channel: grpc.aio.Channel, error_type: type[MlbusError], caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(method("Echo"))(f"raise:{error_type.__name__}".encode())

    assert info.value.code() == error_type.code
    assert info.value.details() == f"{error_type.__name__} happened"
    trailing = info.value.trailing_metadata()
    assert ("mlbus-field", "x") in tuple(trailing)
    assert error_details(trailing) == EXPECTED_DETAILS
    assert error_records(caplog) == []  # expected errors are not logged as errors


async def test_unexpected_exception_is_internal_without_leaking_and_logged_once(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(method("Echo"))(b"raise:boom")

    assert info.value.code() == grpc.StatusCode.INTERNAL
    message = info.value.details()
    assert re.fullmatch(r"internal error; trace id [0-9a-f]{32}", message), message
    assert "secret" not in message
    assert "hunter2" not in message
    assert "RuntimeError" not in message
    # Only records about this call: a stray record from an earlier test's server on the
    # shared loop must not count, but a second log of this exception (ours or grpc's) must.
    mine = [
        r
        for r in error_records(caplog)
        if "/Echo" in r.getMessage() or (r.exc_info and "hunter2" in str(r.exc_info[1]))
    ]
    [record] = mine
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert f"/{SERVICE}/Echo" in record.getMessage()
    # The log line and the server span carry the trace id the client got.
    trace_id = message.rsplit(" ", 1)[1]
    assert trace_id in record.getMessage()
    # abort() sends the status before the server span ends: wait (bounded) for the span.
    for _ in range(200):
        server_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
        if server_spans:
            break
        await asyncio.sleep(0.005)
    [server_span] = server_spans
    assert format(server_span.context.trace_id, "032x") == trace_id
    assert server_span.events[0].name == "exception"


async def test_without_tracing_the_message_and_log_share_an_error_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail(request: bytes, context: object) -> bytes:
        raise ValueError("secret")

    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE, {"Fail": grpc.unary_unary_rpc_method_handler(fail)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await ch.unary_unary(method("Fail"))(b"", timeout=5)
    finally:
        await server.stop(0)

    assert info.value.code() == grpc.StatusCode.INTERNAL
    match = re.fullmatch(r"internal error; error id ([0-9a-f]{32})", info.value.details())
    assert match
    [record] = error_records(caplog)
    assert record.error_id == match.group(1)  # type: ignore[attr-defined]


async def test_not_implemented_is_unimplemented_and_not_an_error(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(method("Echo"))(b"raise:notimpl")

    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error_records(caplog) == []


@pytest.mark.parametrize("streaming_method", ["Count", "CountWriter"])
async def test_mlbus_error_mid_stream_after_messages(
    channel: grpc.aio.Channel, streaming_method: str
) -> None:
    call = channel.unary_stream(method(streaming_method))(b"2:raise:NotFound")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in call:
            received.append(message)

    assert received == [b"0", b"1"]
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "NotFound happened"
    assert error_details(info.value.trailing_metadata()) == EXPECTED_DETAILS


async def test_unexpected_exception_mid_stream_is_internal_and_logged_once(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    call = channel.unary_stream(method("Count"))(b"3:raise:boom")
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in call:
            received.append(message)

    assert received == [b"0", b"1", b"2"]
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "hunter2" not in info.value.details()
    assert len(error_records(caplog)) == 1


async def test_stream_completes_ok_without_error(channel: grpc.aio.Channel) -> None:
    call = channel.unary_stream(method("Count"))(b"3")
    assert [m async for m in call] == [b"0", b"1", b"2"]
    assert await call.code() == grpc.StatusCode.OK


async def test_errors_in_client_streaming_methods(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.stream_unary(method("Collect"))(requests(b"a", b"raise:InvalidArgument"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    call = channel.stream_stream(method("Chat"))(requests(b"a", b"raise:FailedPrecondition"))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for message in call:
            received.append(message)
    assert received == [b"re:a"]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_details(info.value.trailing_metadata()) == EXPECTED_DETAILS


async def test_client_streaming_methods_succeed(channel: grpc.aio.Channel) -> None:
    assert await channel.stream_unary(method("Collect"))(requests(b"a", b"b")) == b"a,b"
    # The writer API goes through the client interceptors too.
    call = channel.stream_stream(method("Chat"))()
    await call.write(b"x")
    assert await call.read() == b"re:x"
    await call.write(b"y")
    await call.done_writing()
    assert await call.read() == b"re:y"
    assert await call.read() is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


def test_details_encoding_round_trips_non_ascii_and_odd_keys() -> None:
    details = {"field": "x", "Model Name": "zürich", "raw-bin": "v"}
    pairs = details_to_metadata(details)
    assert ("mlbus-field", "x") in pairs
    assert ("mlbus-model-name-bin", "zürich".encode()) in pairs
    assert ("mlbus-raw-bin", b"v") in pairs
    assert error_details(pairs) == {"field": "x", "model-name": "zürich", "raw": "v"}


async def test_client_cancellation_passes_through_and_is_not_an_error(
    start_server: Callable[..., Awaitable[tuple[RpcServer, Any]]],
    caplog: pytest.LogCaptureFixture,
    spans: InMemorySpanExporter,
) -> None:
    server, gate = await start_server()
    async with create_channel(server.address, GrpcSettings()) as channel:
        call = channel.unary_unary(method("Gated"))(b"")
        await asyncio.wait_for(gate.started.wait(), timeout=5)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        # The servicer saw CancelledError; the server span records CANCELLED.
        for _ in range(200):
            server_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.SERVER]
            if server_spans:
                break
            await asyncio.sleep(0.005)
        [server_span] = server_spans
        assert server_span.attributes is not None
        assert server_span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert error_records(caplog) == []
