"""The router's client for one worker, against small in-process gRPC servers: the stream
hop, its fallback to unary calls, and failures shaped like unary ones."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from mlbus.core.settings import GrpcSettings
from mlbus.inference.v1 import worker_pb2 as wpb
from mlbus.router.adapters.worker_stream import StreamCallError
from mlbus.router.adapters.workers import WorkerClient

pytestmark = pytest.mark.asyncio

V2 = "inference.GRPCInferenceService"
STREAM = "mlbus.inference.v1.WorkerStreamService"


async def serve(handlers: list[Any]) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def unary_echo() -> Any:
    async def infer(request: bytes, context: Any) -> bytes:
        return b"unary:" + request

    return grpc.method_handlers_generic_handler(
        V2, {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}
    )


def stream_service(answer: Any) -> Any:
    async def infer(batches: Any, context: Any) -> Any:
        async for batch in batches:
            yield wpb.StreamInferResponses(responses=[answer(r) for r in batch.requests])

    return grpc.method_handlers_generic_handler(
        STREAM,
        {
            "Infer": grpc.stream_stream_rpc_method_handler(
                infer,
                request_deserializer=wpb.StreamInferRequests.FromString,
                response_serializer=wpb.StreamInferResponses.SerializeToString,
            )
        },
    )


async def test_a_worker_without_the_stream_service_gets_unary_calls() -> None:
    server, address = await serve([unary_echo()])
    client = WorkerClient(address, GrpcSettings())
    try:
        assert await client.infer(b"abc", timeout=5) == b"unary:abc"
        assert client.stream.unsupported
        assert await client.infer(b"def", timeout=5) == b"unary:def"
        assert client.unary_requests == 2
    finally:
        await client.close()
        await server.stop(None)


async def test_streamed_answers_and_errors_look_like_unary_ones() -> None:
    def answer(request: wpb.StreamInferRequest) -> wpb.StreamInferResponse:
        if request.request == b"bad":
            return wpb.StreamInferResponse(
                sequence=request.sequence,
                code=grpc.StatusCode.INVALID_ARGUMENT.value[0],
                message="input 'x': expected FP32, got FP64",
                trailers={"mlbus-input": b"x"},
            )
        assert request.metadata["traceparent"] == "00-abc"
        assert 0 < request.timeout_seconds <= 5
        return wpb.StreamInferResponse(sequence=request.sequence, response=b"s:" + request.request)

    server, address = await serve([unary_echo(), stream_service(answer)])
    client = WorkerClient(address, GrpcSettings())
    meta = [("traceparent", "00-abc")]
    try:
        results = await asyncio.gather(
            *(client.infer(f"r{i}".encode(), timeout=5, metadata=meta) for i in range(50))
        )
        assert results == [f"s:r{i}".encode() for i in range(50)]
        assert client.stream.requests_sent == 50
        # 50 requests issued together travel in far fewer messages.
        assert client.stream.messages_sent < 50
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.infer(b"bad", timeout=5, metadata=meta)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "input 'x': expected FP32, got FP64"
        assert ("mlbus-input", "x") in list(info.value.trailing_metadata())
        assert client.unary_requests == 0
    finally:
        await client.close()
        await server.stop(None)


async def test_a_broken_stream_fails_its_requests_unavailable_and_reopens() -> None:
    hold = asyncio.Event()

    async def infer(batches: Any, context: Any) -> Any:
        async for _ in batches:
            await hold.wait()  # never answers; the server goes away instead
        yield wpb.StreamInferResponses()

    handler = grpc.method_handlers_generic_handler(
        STREAM,
        {
            "Infer": grpc.stream_stream_rpc_method_handler(
                infer,
                request_deserializer=wpb.StreamInferRequests.FromString,
                response_serializer=wpb.StreamInferResponses.SerializeToString,
            )
        },
    )
    server, address = await serve([handler])
    client = WorkerClient(address, GrpcSettings())
    try:
        pending = asyncio.ensure_future(client.infer(b"x", timeout=20))
        await asyncio.sleep(0.3)
        await server.stop(None)
        with pytest.raises(StreamCallError) as info:
            await asyncio.wait_for(pending, 10)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.stream_failed
    finally:
        hold.set()
        await client.close()
