"""ModelInfer requests to one worker multiplexed on a long-lived stream.

A unary call in gRPC Python costs several times a message on an open stream (measured on
the 2-core bench machine: ~0.8 ms per unary round trip vs ~0.2 ms per message ping-pong on
a stream, with an echo server). A proxy pays that per request, so the router keeps one
``mlbus.inference.v1.WorkerStreamService/Infer`` stream open per worker and sends each
forwarded request as a message with a sequence number, the caller's remaining deadline and
trace context; answers come back in completion order and are matched by sequence number.

Failure semantics are a unary call's: a per-request error arrives as that request's status
(the stream stays open); if the stream itself breaks (worker gone, channel closed) every
request on it fails UNAVAILABLE — which the front door retries once elsewhere — and the
next request opens a new stream. A worker without the service (UNIMPLEMENTED) makes the
client fall back to unary calls for good.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable
from typing import Any, Final

import grpc

from mlbus.inference.v1 import worker_pb2 as wpb

STREAM_INFER: Final = "/mlbus.inference.v1.WorkerStreamService/Infer"
#: Requests larger than this go as unary calls: one big message would hold up every
#: smaller one queued behind it on the shared stream.
STREAM_MAX_REQUEST_BYTES: Final = 256 * 1024
#: Extra time the router waits past the deadline it passed on (the worker answers
#: DEADLINE_EXCEEDED itself at the deadline; this only covers a worker that went silent).
_DEADLINE_GRACE_S: Final = 1.0
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}


class StreamCallError(grpc.aio.AioRpcError):
    """A streamed request's failure, shaped like the unary call's ``AioRpcError``."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: Iterable[tuple[str, str | bytes]] = (),
        *,
        stream_failed: bool = False,
    ) -> None:
        super().__init__(
            code,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(*trailing),
            details=details,
            debug_error_string="",
        )
        #: True when the stream broke (not an answer about this request).
        self.stream_failed = stream_failed


class _Stream:
    """One open stream and the requests awaiting an answer on it."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[wpb.StreamInferResponse]] = {}
        self.failed: StreamCallError | None = None
        self.reader: asyncio.Task[None] | None = None
        #: Requests not written yet: whoever writes takes them all in one message.
        self.outbox = wpb.StreamInferRequests()
        self.writing = False


class WorkerStream:
    """Multiplexes ModelInfer requests on one stream to a worker (opened on first use)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._open = channel.stream_stream(
            STREAM_INFER,
            request_serializer=wpb.StreamInferRequests.SerializeToString,
            response_deserializer=wpb.StreamInferResponses.FromString,
        )
        self._stream: _Stream | None = None
        self._sequence = itertools.count(1)
        self._flushes: set[asyncio.Task[None]] = set()
        #: Set once the worker answered UNIMPLEMENTED: use unary calls.
        self.unsupported = False
        #: Requests sent and messages written since start (status, tests).
        self.requests_sent = 0
        self.messages_sent = 0

    def _current(self) -> _Stream:
        stream = self._stream
        if stream is None or stream.failed is not None:
            stream = self._stream = _Stream(self._open())  # type: ignore[call-arg]
            stream.reader = asyncio.create_task(self._read(stream), name="worker-stream-reader")
        return stream

    async def _read(self, stream: _Stream) -> None:
        failure = StreamCallError(
            grpc.StatusCode.UNAVAILABLE, "worker stream closed", stream_failed=True
        )
        try:
            async for replies in stream.call:
                for reply in replies.responses:
                    future = stream.pending.pop(reply.sequence, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
            failure = StreamCallError(
                grpc.StatusCode.UNAVAILABLE, "the worker ended the stream", stream_failed=True
            )
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
            else:
                code = grpc.StatusCode.UNAVAILABLE
            failure = StreamCallError(
                code,
                f"worker stream failed: {exc.details() or exc.code().name}",
                stream_failed=True,
            )
        finally:
            stream.failed = failure
            if self._stream is stream:
                self._stream = None
            for future in stream.pending.values():
                if not future.done():
                    future.set_exception(failure)
            stream.pending.clear()

    async def infer(
        self, request: bytes, *, timeout: float, metadata: Iterable[tuple[str, str]] = ()
    ) -> bytes:
        """The worker's serialized ModelInferResponse; raises :class:`StreamCallError`."""
        stream = self._current()
        sequence = next(self._sequence)
        future: asyncio.Future[wpb.StreamInferResponse] = asyncio.get_running_loop().create_future()
        stream.pending[sequence] = future
        self.requests_sent += 1
        message = stream.outbox.requests.add(
            sequence=sequence, request=request, timeout_seconds=timeout
        )
        for key, value in metadata:
            message.metadata[key] = value
        try:
            async with asyncio.timeout(timeout + _DEADLINE_GRACE_S):
                if not stream.writing:
                    await self._flush(stream)
                reply = await future
        except TimeoutError:
            raise StreamCallError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded (no answer from the worker)"
            ) from None
        finally:
            stream.pending.pop(sequence, None)
        if reply.code == 0:
            return bytes(reply.response)
        trailing = [
            (key, value if key.endswith("-bin") else value.decode("utf-8", "replace"))
            for key, value in reply.trailers.items()
        ]
        raise StreamCallError(
            _CODES.get(reply.code, grpc.StatusCode.UNKNOWN), reply.message, trailing
        )

    async def _flush(self, stream: _Stream) -> None:
        """Write the outbox, and whatever queued up meanwhile, until it is empty. Requests
        that arrive while a message is being written wait for the next one (one write at a
        time per stream), so under load one message carries many requests."""
        stream.writing = True
        try:
            while len(stream.outbox.requests) and stream.failed is None:
                batch, stream.outbox = stream.outbox, wpb.StreamInferRequests()
                self.messages_sent += 1
                try:
                    await stream.call.write(batch)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    # The stream is breaking; its reader fails the requests with the reason.
                    return
        finally:
            stream.writing = False
            if len(stream.outbox.requests) and stream.failed is None:
                # This writer was cancelled (its caller went away) with requests queued.
                task = asyncio.get_running_loop().create_task(self._flush(stream))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)

    async def close(self) -> None:
        """Half-close the stream and stop reading (pending requests fail UNAVAILABLE)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.call.cancel()
        if stream.reader is not None:
            stream.reader.cancel()
            await asyncio.gather(stream.reader, return_exceptions=True)
