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


def stream_handler(infer: Any) -> Any:
    """``infer`` (batches, context) → async iterator of replies, as WorkerStreamService/Infer."""
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


def stream_service(answer: Any) -> Any:
    async def infer(batches: Any, context: Any) -> Any:
        async for batch in batches:
            yield wpb.StreamInferResponses(responses=[answer(r) for r in batch.requests])

    return stream_handler(infer)


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

    handler = stream_handler(infer)
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


class GatedWorker:
    """A stream service that records the requests of every message it receives and answers
    each at once, except ``b"hold"`` requests, answered when :attr:`release` is set."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.received = asyncio.Event()
        self.release = asyncio.Event()

    def handler(self) -> Any:
        async def infer(batches: Any, context: Any) -> Any:
            answers: asyncio.Queue[wpb.StreamInferResponse] = asyncio.Queue()

            async def later(request: wpb.StreamInferRequest) -> None:
                await self.release.wait()
                answers.put_nowait(wpb.StreamInferResponse(sequence=request.sequence))

            async def read() -> None:
                async for batch in batches:
                    self.messages.append([r.request for r in batch.requests])
                    self.received.set()
                    for r in batch.requests:
                        if r.request == b"hold":
                            tasks.add(asyncio.create_task(later(r)))
                        else:
                            answers.put_nowait(wpb.StreamInferResponse(sequence=r.sequence))

            tasks: set[asyncio.Task[None]] = set()
            reader = asyncio.create_task(read())
            try:
                while True:
                    yield wpb.StreamInferResponses(responses=[await answers.get()])
            finally:
                reader.cancel()
                for task in tasks:
                    task.cancel()

        return stream_handler(infer)

    async def next_message(self, timeout: float) -> list[bytes]:
        count = len(self.messages)
        while len(self.messages) == count:
            self.received.clear()
            await asyncio.wait_for(self.received.wait(), timeout)
        return self.messages[count]


async def test_requests_to_a_busy_worker_share_a_message_and_a_lone_one_goes_at_once() -> None:
    worker = GatedWorker()
    server, address = await serve([worker.handler()])
    # A wait this long would time the test out: every send below has another reason to go.
    client = WorkerClient(address, GrpcSettings(), coalesce_s=30.0)
    try:
        # Nothing else unanswered: written at once.
        await asyncio.wait_for(client.infer(b"alone", timeout=5), 5)
        assert worker.messages == [[b"alone"]]
        # The worker is busy with one request: the next ones wait for each other...
        busy = asyncio.ensure_future(client.infer(b"hold", timeout=20))
        assert await worker.next_message(5) == [b"hold"]
        queued = [asyncio.ensure_future(client.infer(b"q%d" % i, timeout=20)) for i in range(3)]
        await asyncio.sleep(0.3)
        assert len(worker.messages) == 2, "requests to a busy worker were sent one by one"
        # ... and go together as soon as the worker has answered everything else.
        worker.release.set()
        await asyncio.wait_for(asyncio.gather(busy, *queued), 5)
        assert worker.messages[2] == [b"q0", b"q1", b"q2"]
        assert client.stream.messages_sent == 3
    finally:
        await client.close()
        await server.stop(None)


@pytest.mark.parametrize(("coalesce_s", "at_least_s"), [(0.2, 0.15), (0.0, 0.0)])
async def test_a_held_request_goes_when_its_wait_is_over(
    coalesce_s: float, at_least_s: float
) -> None:
    worker = GatedWorker()
    server, address = await serve([worker.handler()])
    client = WorkerClient(address, GrpcSettings(), coalesce_s=coalesce_s)
    try:
        busy = asyncio.ensure_future(client.infer(b"hold", timeout=20))
        assert await worker.next_message(5) == [b"hold"]
        loop = asyncio.get_running_loop()
        sent = loop.time()
        waiting = asyncio.ensure_future(client.infer(b"next", timeout=20))
        assert await worker.next_message(5) == [b"next"]
        waited = loop.time() - sent
        assert at_least_s <= waited < at_least_s + 2.0
        await asyncio.wait_for(waiting, 5)
        assert not busy.done()  # the timer, not an answer, sent it
        worker.release.set()
        await asyncio.wait_for(busy, 5)
    finally:
        await client.close()
        await server.stop(None)


async def test_a_caller_cancelled_while_its_write_waits_leaves_the_stream_working() -> None:
    # The worker reads one message, then nothing until `go`: the requests written after it
    # fill the flow-control windows until a write has to wait. Its caller goes away (a
    # client deadline or cancellation) while it waits; gRPC cancels a whole stream whose
    # write is cancelled, so the write must not run in that caller's task.
    go = asyncio.Event()
    streams = 0

    async def infer(batches: Any, context: Any) -> Any:
        nonlocal streams
        streams += 1

        def answers(batch: wpb.StreamInferRequests) -> wpb.StreamInferResponses:
            return wpb.StreamInferResponses(
                responses=[
                    wpb.StreamInferResponse(sequence=r.sequence, response=r.request[:4])
                    for r in batch.requests
                ]
            )

        received = batches.__aiter__()
        first = await received.__anext__()
        await go.wait()
        yield answers(first)
        async for batch in received:
            yield answers(batch)

    server, address = await serve([stream_handler(infer)])
    client = WorkerClient(address, GrpcSettings(), coalesce_s=0)
    big = b"big!" * (200 * 1024 // 4)  # 200 KiB: on the stream, under its size limit
    try:
        held = asyncio.ensure_future(client.infer(b"held", timeout=30))
        await asyncio.sleep(0.2)
        filling: list[asyncio.Future[bytes]] = []
        stream = client.stream._stream
        assert stream is not None
        for _ in range(400):  # ~80 MiB at most; windows and socket buffers hold a few MiB
            filling.append(asyncio.ensure_future(client.infer(big, timeout=30)))
            await asyncio.sleep(0.005)
            if stream.writing:
                await asyncio.sleep(0.1)
                if stream.writing:
                    break
        else:
            pytest.fail("no write had to wait")
        writer = filling.pop()  # its request is the one being written
        writer.cancel()
        await asyncio.sleep(0.1)
        later = asyncio.ensure_future(client.infer(b"late", timeout=30))
        go.set()
        assert await asyncio.wait_for(held, 10) == b"held"
        assert await asyncio.wait_for(asyncio.gather(*filling), 20) == [b"big!"] * len(filling)
        assert await asyncio.wait_for(later, 10) == b"late"
        assert writer.cancelled()
        assert streams == 1  # the same stream throughout
    finally:
        go.set()
        await client.close()
        await server.stop(None)
