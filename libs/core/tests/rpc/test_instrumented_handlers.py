"""create_server applies tracing, access log and error mapping to each method handler at
registration (no per-call interceptor chain); with extra interceptors it uses the chain, and
the extras run inside tracing and error mapping."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mlbus.core import errors
from mlbus.core.rpc import RpcServer, create_server
from mlbus.core.rpc.interceptors import HEALTH_SERVICE, instrument_handler
from mlbus.core.settings import GrpcSettings

from .conftest import SERVICE, Gate, build_test_handler
from .test_tracing import finished


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


async def test_each_method_handler_is_wrapped_once_not_per_call() -> None:
    wrapped: list[str] = []

    def wrap(handler: Any, full_method: str) -> Any:
        wrapped.append(full_method)
        return instrument_handler(handler, full_method)

    server = RpcServer(
        service_name="rpc-test",
        settings=GrpcSettings(),
        host="127.0.0.1",
        port=0,
        interceptors=(),
        wrap_handler=wrap,
    )
    server.add_generic_handler(build_test_handler(Gate()), SERVICE)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            for i in range(5):
                reply = await channel.unary_unary(method("Echo"))(b"x%d" % i, timeout=5)
                assert reply == b"x%d" % i
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(method("Echo"))(b"raise:NotFound", timeout=5)
            assert info.value.code() is grpc.StatusCode.NOT_FOUND  # mapped by the wrapper
            assert await channel.unary_unary(method("Repeat"))(b"3", timeout=5) == b"xxx"
    finally:
        await server.stop(0)
    assert wrapped == [method("Echo"), method("Repeat")]


async def test_health_probes_get_error_mapping_only(spans: InMemorySpanExporter) -> None:
    async def check(request: bytes, context: object) -> bytes:
        raise errors.Unavailable("not yet")

    wrapped = instrument_handler(
        grpc.unary_unary_rpc_method_handler(check), f"/{HEALTH_SERVICE}/Check"
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": wrapped})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(f"/{HEALTH_SERVICE}/Check")(b"", timeout=5)
    finally:
        await server.stop(0)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert info.value.details() == "not yet"
    assert not [s for s in spans.get_finished_spans() if HEALTH_SERVICE in s.name]


class _Refuser(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """An extra interceptor whose wrapped behaviour refuses b"refuse" with an MlbusError."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary

        async def behaviour(request: bytes, context: Any) -> Any:
            if request == b"refuse":
                raise errors.PermissionDenied("refused by the extra interceptor")
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(behaviour)


async def test_extra_interceptors_run_inside_tracing_and_error_mapping(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    server = create_server(
        service_name="rpc-test",
        settings=GrpcSettings(),
        host="127.0.0.1",
        port=0,
        extra_interceptors=[_Refuser()],
    )
    server.add_generic_handler(build_test_handler(Gate()))
    await server.start()
    caplog.set_level(logging.DEBUG, logger="mlbus.core.rpc.access")
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            assert await channel.unary_unary(method("Echo"))(b"hello", timeout=5) == b"hello"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary(method("Echo"))(b"refuse", timeout=5)
    finally:
        await server.stop(0)
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details() == "refused by the extra interceptor"
    name = f"{SERVICE}/Echo"
    found = await finished(
        spans, lambda s: len([x for x in s if x.name == name and x.kind is SpanKind.SERVER]) >= 2
    )
    codes = sorted(
        s.attributes["rpc.grpc.status_code"]  # type: ignore[index]
        for s in found
        if s.name == name and s.kind is SpanKind.SERVER
    )
    assert codes == [grpc.StatusCode.OK.value[0], grpc.StatusCode.PERMISSION_DENIED.value[0]]
    access = [r.getMessage() for r in caplog.records if r.name == "mlbus.core.rpc.access"]
    assert any("PERMISSION_DENIED" in line for line in access), access
