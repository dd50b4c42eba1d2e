"""Trace context flows client → server; spans carry the RPC attributes; access log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

SERVICE = "mlbus.test.v1.TestService"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def finished(
    spans: InMemorySpanExporter, predicate: Callable[[Sequence[ReadableSpan]], bool]
) -> list[ReadableSpan]:
    """Wait (bounded) until the finished spans satisfy ``predicate``: client spans end in
    a callback once the call completed, a moment after the caller got its answer."""
    for _ in range(200):
        current = list(spans.get_finished_spans())
        if predicate(current):
            return current
        await asyncio.sleep(0.005)
    raise AssertionError(f"spans never matched: {[(s.name, s.kind) for s in current]}")


def one(found: Sequence[ReadableSpan], kind: SpanKind, name: str) -> ReadableSpan:
    matches = [s for s in found if s.kind is kind and s.name == name]
    assert len(matches) == 1, [(s.name, s.kind) for s in found]
    return matches[0]


def has(kind: SpanKind, name: str) -> Callable[[Sequence[ReadableSpan]], bool]:
    return lambda found: any(s.kind is kind and s.name == name for s in found)


def both(name: str) -> Callable[[Sequence[ReadableSpan]], bool]:
    """Client and server span of ``name`` finished. Either can end last: the server
    sends an abort's status before its span ends."""
    return lambda found: has(SpanKind.CLIENT, name)(found) and has(SpanKind.SERVER, name)(found)


async def test_server_span_continues_the_client_span(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        reply = await channel.unary_unary(method("TraceIds"))(b"")

    name = f"{SERVICE}/TraceIds"
    found = await finished(spans, both(name))
    client = one(found, SpanKind.CLIENT, name)
    server = one(found, SpanKind.SERVER, name)
    trace_id = caller.get_span_context().trace_id
    assert client.context.trace_id == trace_id
    assert server.context.trace_id == trace_id
    assert client.parent is not None
    assert client.parent.span_id == caller.get_span_context().span_id
    assert server.parent is not None
    assert server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    # The server span is current while the servicer runs.
    assert reply.decode() == f"{trace_id:032x}/{server.context.span_id:016x}"
    for span in (client, server):
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == SERVICE
        assert span.attributes["rpc.method"] == "TraceIds"
        assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.OK.value[0]
        assert span.status.status_code is StatusCode.UNSET


async def test_caller_errors_mark_the_client_span_only(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(method("Echo"))(b"raise:NotFound")

    name = f"{SERVICE}/Echo"
    found = await finished(spans, both(name))
    client = one(found, SpanKind.CLIENT, name)
    server = one(found, SpanKind.SERVER, name)
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    assert client.attributes is not None
    assert server.attributes is not None
    assert client.attributes["rpc.grpc.status_code"] == not_found
    assert server.attributes["rpc.grpc.status_code"] == not_found
    assert client.status.status_code is StatusCode.ERROR
    # NOT_FOUND is the caller's problem, not a server fault (OTel RPC conventions).
    assert server.status.status_code is StatusCode.UNSET


async def test_server_faults_mark_the_server_span(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(method("Echo"))(b"raise:boom")

    name = f"{SERVICE}/Echo"
    found = await finished(spans, both(name))
    server = one(found, SpanKind.SERVER, name)
    assert server.status.status_code is StatusCode.ERROR
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]


async def test_streaming_spans_end_with_the_stream_status(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    call = channel.unary_stream(method("Count"))(b"2:raise:Unavailable")
    with pytest.raises(grpc.aio.AioRpcError):
        async for _ in call:
            pass

    name = f"{SERVICE}/Count"
    found = await finished(spans, both(name))
    unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
    for kind in (SpanKind.CLIENT, SpanKind.SERVER):
        span = one(found, kind, name)
        assert span.attributes is not None
        assert span.attributes["rpc.grpc.status_code"] == unavailable
        assert span.status.status_code is StatusCode.ERROR


async def test_health_checks_are_not_traced(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    await channel.unary_unary(method("Echo"))(b"marker")
    found = await finished(spans, has(SpanKind.CLIENT, f"{SERVICE}/Echo"))
    assert not [s for s in found if "Health" in s.name]


async def test_access_log_line_per_call(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mlbus.core.rpc.access")
    await channel.unary_unary(method("Echo"))(b"hi")
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(method("Echo"))(b"raise:PermissionDenied")

    # The line is written as the call ends on the server, which for an abort is just
    # after the client got the status: wait (bounded) for it.
    for _ in range(200):
        records = [r for r in caplog.records if r.name == "mlbus.core.rpc.access"]
        if len(records) >= 2:
            break
        await asyncio.sleep(0.005)
    assert [(r.rpc_method, r.grpc_status) for r in records] == [  # type: ignore[attr-defined]
        (method("Echo"), "OK"),
        (method("Echo"), "PERMISSION_DENIED"),
    ]
    assert all(r.levelno == logging.DEBUG for r in records)
    assert all(r.duration_ms >= 0 for r in records)  # type: ignore[attr-defined]


async def test_every_call_kind_gets_a_client_span_with_context_propagated(
    channel: grpc.aio.Channel, spans: InMemorySpanExporter
) -> None:
    async def two() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    await channel.unary_unary(method("Echo"))(b"x")
    assert [m async for m in channel.unary_stream(method("Count"))(b"2")] == [b"0", b"1"]
    assert await channel.stream_unary(method("Collect"))(two()) == b"a,b"
    assert [m async for m in channel.stream_stream(method("Chat"))(two())] == [b"re:a", b"re:b"]

    names = [f"{SERVICE}/{m}" for m in ("Echo", "Count", "Collect", "Chat")]
    found = await finished(spans, lambda got: all(both(n)(got) for n in names))
    for name in names:
        client = one(found, SpanKind.CLIENT, name)
        server = one(found, SpanKind.SERVER, name)
        assert server.parent is not None
        assert server.parent.span_id == client.context.span_id
