"""A real grpc.aio server on port 0 serving a test service registered as a generic handler
(identity bytes (de)serializers, so no generated protos are needed), and a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mlbus.core import errors
from mlbus.core.rpc import RpcServer, create_channel, create_server
from mlbus.core.settings import GrpcSettings
from mlbus.core.telemetry import current_trace_ids

SERVICE = "mlbus.test.v1.TestService"

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _error_for(request: bytes) -> Exception | None:
    """``b"raise:<ErrorType>"`` → that MlbusError; ``b"raise:boom"`` → RuntimeError."""
    if not request.startswith(b"raise:"):
        return None
    name = request.removeprefix(b"raise:").decode()
    if name == "boom":
        return RuntimeError("secret internals: password=hunter2")
    if name == "notimpl":
        return NotImplementedError("not yet")
    error_type = getattr(errors, name)
    return error_type(
        f"{name} happened", details={"field": "x", "expected": "FP32 [-1, 30]", "model": "zürich"}
    )


@dataclass
class Gate:
    """Lets a test hold a call inside the servicer."""

    started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def build_test_handler(gate: Gate) -> grpc.GenericRpcHandler[Any, Any]:
    async def echo(request: bytes, context: Context) -> bytes:
        error = _error_for(request)
        if error is not None:
            raise error
        return request

    async def trace_ids(request: bytes, context: Context) -> bytes:
        ids = current_trace_ids()
        return f"{ids.get('trace_id', '')}/{ids.get('span_id', '')}".encode()

    async def repeat(request: bytes, context: Context) -> bytes:
        return b"x" * int(request)

    async def slow(request: bytes, context: Context) -> bytes:
        await asyncio.sleep(float(request.decode()))
        return b"done"

    async def gated(request: bytes, context: Context) -> bytes:
        gate.started.set()
        await gate.release.wait()
        return b"released"

    async def count(request: bytes, context: Context) -> AsyncIterator[bytes]:
        # b"<n>" or b"<n>:raise:<ErrorType>": n messages, then maybe an error mid-stream.
        n, _, error_spec = request.partition(b":")
        for i in range(int(n)):
            yield str(i).encode()
        error = _error_for(error_spec)
        if error is not None:
            raise error

    async def count_writer(request: bytes, context: Context) -> None:
        # Same as count, through the context.write() API.
        n, _, error_spec = request.partition(b":")
        for i in range(int(n)):
            await context.write(str(i).encode())
        error = _error_for(error_spec)
        if error is not None:
            raise error

    async def collect(requests: AsyncIterator[bytes], context: Context) -> bytes:
        received = []
        async for request in requests:
            error = _error_for(request)
            if error is not None:
                raise error
            received.append(request)
        return b",".join(received)

    async def chat(requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for request in requests:
            error = _error_for(request)
            if error is not None:
                raise error
            yield b"re:" + request

    def unary(fn: Callable[..., Awaitable[bytes]]) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(fn)

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(echo),
            "TraceIds": unary(trace_ids),
            "Repeat": unary(repeat),
            "Slow": unary(slow),
            "Gated": unary(gated),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "CountWriter": grpc.unary_stream_rpc_method_handler(count_writer),
            "Collect": grpc.stream_unary_rpc_method_handler(collect),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
        },
    )


StartServer = Callable[..., Awaitable[tuple[RpcServer, Gate]]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Factory of started test servers (port 0); all stopped at teardown."""
    servers: list[RpcServer] = []

    async def start(settings: GrpcSettings | None = None) -> tuple[RpcServer, Gate]:
        gate = Gate()
        server = create_server(
            service_name="rpc-test",
            settings=settings or GrpcSettings(shutdown_grace_s=1.0),
            host="127.0.0.1",
            port=0,
        )
        server.add_generic_handler(build_test_handler(gate))
        servers.append(server)
        await server.start()
        return server, gate

    yield start
    for server in servers:
        await server.stop(0)


@pytest.fixture(scope="module")
async def shared_server() -> AsyncIterator[tuple[RpcServer, Gate]]:
    """One server for the tests that do not stop it."""
    gate = Gate()
    server = create_server(
        service_name="rpc-test", settings=GrpcSettings(), host="127.0.0.1", port=0
    )
    server.add_generic_handler(build_test_handler(gate), SERVICE)
    await server.start()
    yield server, gate
    await server.stop(0)


@pytest.fixture(scope="module")
async def channel(shared_server: tuple[RpcServer, Gate]) -> AsyncIterator[grpc.aio.Channel]:
    async with create_channel(shared_server[0].address, GrpcSettings()) as ch:
        yield ch


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Collects finished spans. The global provider can be set once per process: reuse an
    SDK provider someone installed, else install one."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    span_exporter.clear()
    yield span_exporter
    span_exporter.clear()
