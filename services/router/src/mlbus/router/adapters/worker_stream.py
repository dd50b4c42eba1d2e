"""ModelInfer requests to one worker multiplexed on a long-lived stream.

A unary call in gRPC Python costs several times a message on an open stream (measured on
the 2-core bench machine: ~0.8 ms per unary round trip vs ~0.2 ms per message ping-pong on
a stream, with an echo server). A proxy pays that per request, so the router keeps one
``mlbus.inference.v1.WorkerStreamService/Infer`` stream open per worker and sends each
forwarded request as a message with a sequence number, the caller's remaining deadline and
trace context; answers come back in completion order and are matched by sequence number.

Coalescing: a message costs the router and the worker far more CPU than a request in it
(measured with the small bench model: ~210 µs of worker CPU per request at one request per
message, ~90 µs at eight), yet under load requests reach the router one by one. So a request
that finds others on its stream still unanswered — the worker is busy — waits in the
stream's outbox up to ``coalesce_s`` (``ROUTER_WORKER_STREAM_COALESCE_US``) for company, and
the outbox goes as one message when that time is up, when the worker has answered everything
else (it would otherwise sit idle), or when it holds :data:`OUTBOX_MAX_REQUESTS` requests or
:data:`OUTBOX_MAX_BYTES`. A request on an idle stream goes at once, so a lone caller never
waits; requests that arrive while a message is being written go in the next one.

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

from mlbus.core.eager import start_eagerly
from mlbus.inference.v1 import worker_pb2 as wpb

STREAM_INFER: Final = "/mlbus.inference.v1.WorkerStreamService/Infer"
#: Requests larger than this go as unary calls: one big message would hold up every
#: smaller one queued behind it on the shared stream.
STREAM_MAX_REQUEST_BYTES: Final = 256 * 1024
#: An outbox this full is sent without waiting for more.
OUTBOX_MAX_REQUESTS: Final = 64
OUTBOX_MAX_BYTES: Final = 256 * 1024
#: Default longest wait of a request for others to share its message (see the module doc).
DEFAULT_COALESCE_S: Final = 0.001
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
        #: Requests not written yet: the next write takes them all in one message.
        self.outbox = wpb.StreamInferRequests()
        self.outbox_bytes = 0
        #: A write (task) is in progress; it sends whatever the outbox holds when it ends.
        self.writing = False
        #: Sends a held outbox when the coalescing wait is over.
        self.timer: asyncio.TimerHandle | None = None

    def cancel_timer(self) -> None:
        """End a coalescing wait without writing (the caller writes, or the stream ended)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    @property
    def unanswered(self) -> int:
        """Requests written to the worker and not answered yet (a caller that gave up
        leaves its request in the outbox but no longer pending: never below 0)."""
        return max(0, len(self.pending) - len(self.outbox.requests))


class WorkerStream:
    """Multiplexes ModelInfer requests on one stream to a worker (opened on first use)."""

    def __init__(
        self, channel: grpc.aio.Channel, *, coalesce_s: float = DEFAULT_COALESCE_S
    ) -> None:
        self._coalesce_s = coalesce_s
        self._open = channel.stream_stream(
            STREAM_INFER,
            request_serializer=wpb.StreamInferRequests.SerializeToString,
            response_deserializer=wpb.StreamInferResponses.FromString,
        )
        self._stream: _Stream | None = None
        self._sequence = itertools.count(1)
        self._writes: set[asyncio.Task[None]] = set()
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
                if stream.timer is not None and not stream.unanswered:
                    # The worker has answered everything: no point keeping it waiting.
                    self._start_writing(stream)
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
            stream.cancel_timer()
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
        stream.outbox_bytes += len(request)
        write_now = not stream.writing and not self._hold(stream)
        try:
            if write_now:
                self._write_eagerly(stream)
            async with asyncio.timeout(timeout + _DEADLINE_GRACE_S):
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

    def _hold(self, stream: _Stream) -> bool:
        """True when the outbox should wait for more requests (see the module doc); starts
        the timer that ends the wait."""
        if (
            self._coalesce_s > 0
            and stream.unanswered
            and len(stream.outbox.requests) < OUTBOX_MAX_REQUESTS
            and stream.outbox_bytes < OUTBOX_MAX_BYTES
        ):
            if stream.timer is None:
                stream.timer = asyncio.get_running_loop().call_later(
                    self._coalesce_s, self._start_writing, stream
                )
            return True
        stream.cancel_timer()
        return False

    def _start_writing(self, stream: _Stream) -> None:
        """Write the outbox from a task of its own (the timer ran out, or the worker
        answered everything)."""
        stream.cancel_timer()
        if stream.writing or stream.failed is not None or not len(stream.outbox.requests):
            return
        stream.writing = True
        task = asyncio.get_running_loop().create_task(self._write(stream))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _write_eagerly(self, stream: _Stream) -> None:
        """Start writing the outbox now, in the caller, and finish the write in a task of
        its own: a caller cancelled while the write waits (on the worker's flow control)
        must not cancel it, since gRPC then cancels the whole stream and fails every other
        request on it."""
        stream.writing = True
        task, _ = start_eagerly(self._write(stream))
        if task is not None:
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def _write(self, stream: _Stream) -> None:
        """Write the outbox, and whatever queued up meanwhile, until it is empty (one write
        at a time per stream: requests that arrive during a write go in the next message).
        Never runs in a caller's task (see :meth:`_write_eagerly`)."""
        stream.writing = True
        broken = False
        try:
            while len(stream.outbox.requests) and stream.failed is None:
                batch, stream.outbox = stream.outbox, wpb.StreamInferRequests()
                stream.outbox_bytes = 0
                self.messages_sent += 1
                try:
                    await stream.call.write(batch)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    # The stream is breaking; its reader fails the requests with the reason.
                    broken = True
                    return
        finally:
            stream.writing = False
            if not broken and len(stream.outbox.requests) and stream.failed is None:
                # The write was cancelled (the client is closing) with requests queued.
                self._start_writing(stream)

    async def close(self) -> None:
        """Half-close the stream and stop reading (pending requests fail UNAVAILABLE)."""
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.cancel_timer()
        stream.call.cancel()
        if stream.reader is not None:
            stream.reader.cancel()
            await asyncio.gather(stream.reader, return_exceptions=True)
