"""``mlbus.inference.v1.WorkerStreamService``: ModelInfer requests multiplexed on a stream.

The router keeps one such stream open per worker and sends each forwarded request as a
message on it (see protos/mlbus/inference/v1/worker.proto): a message on an open stream
costs a fraction of a unary call in gRPC Python. Each request runs as its own task — exactly
what :meth:`InferenceServicer.infer` does for a unary call, within the deadline the message
carries — and its response (or error status) is written as soon as it is ready, so a slow
request never holds back the others.

Most requests finish without ever waiting (a small model runs inline on the event loop), so
each request's coroutine takes its first step at once, in the reader (as Python 3.12's
eager tasks do): one that finishes there costs no task, no deadline timer and no extra turn
of the loop, and the answers of one incoming message leave together; only a request that
has to wait (a run in a thread, the dynamic batcher) becomes a task, with a timer for its
deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from mlbus.core.eager import start_eagerly
from mlbus.core.errors import MlbusError
from mlbus.core.rpc.interceptors import details_to_metadata
from mlbus.core.telemetry import extract_grpc_context
from mlbus.inference.api.servicer import InferenceServicer
from mlbus.inference.v1 import worker_pb2 as wpb
from mlbus.inference.v2 import grpc_service_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "mlbus.inference.v1.WorkerStreamService"
_SPAN_NAME: Final = "inference.GRPCInferenceService/ModelInfer"
_SPAN_ATTRIBUTES: Final = {
    "rpc.system": "grpc",
    "rpc.service": "inference.GRPCInferenceService",
    "rpc.method": "ModelInfer",
    "mlbus.transport": "worker-stream",
}
_OK: Final = grpc.StatusCode.OK.value[0]
#: Cancellation message of a request task whose deadline passed.
_DEADLINE: Final = "mlbus: the request's deadline passed"


def _code(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class WorkerStreamServicer:
    """Answers the router's stream of ModelInfer requests with ``servicer``'s logic."""

    def __init__(self, servicer: InferenceServicer) -> None:
        self._servicer = servicer
        self._tracer = trace.get_tracer("mlbus.inference")

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler to register on the worker's server."""
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Infer": grpc.stream_stream_rpc_method_handler(
                    self.infer_stream,
                    request_deserializer=wpb.StreamInferRequests.FromString,
                    response_serializer=wpb.StreamInferResponses.SerializeToString,
                )
            },
        )

    async def infer_stream(self, batches: Any, context: Any) -> AsyncIterator[Any]:
        """Read requests until the sender closes; answer each as it completes (answers
        that complete while the previous message is being written go out together)."""
        ready = asyncio.Event()
        outbox: list[wpb.StreamInferResponse] = []
        tasks: set[asyncio.Task[wpb.StreamInferResponse]] = set()
        reading = True
        loop = asyncio.get_running_loop()

        def answered(task: asyncio.Task[wpb.StreamInferResponse]) -> None:
            tasks.discard(task)
            if task.cancelled():
                return  # the stream is closing
            failure = task.exception()
            if failure is not None:  # _one answers every Exception; this is a bug
                log.error("a streamed ModelInfer failed to answer", exc_info=failure)
                return
            outbox.append(task.result())
            ready.set()

        def start(message: wpb.StreamInferRequest) -> None:
            # The request's first step, now (see the module doc), in a context of its own.
            deadline = (
                loop.time() + message.timeout_seconds if message.timeout_seconds > 0 else None
            )
            task, answer = start_eagerly(
                self._one(message, deadline), context=contextvars.copy_context()
            )
            if task is None:
                assert answer is not None
                outbox.append(answer)
                return
            tasks.add(task)
            task.add_done_callback(answered)
            if deadline is not None:
                timer = loop.call_at(deadline, task.cancel, _DEADLINE)
                task.add_done_callback(lambda _: timer.cancel())

        async def read() -> None:
            nonlocal reading
            try:
                async for batch in batches:
                    for message in batch.requests:
                        start(message)
                    if outbox:
                        ready.set()
                while tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                reading = False
                ready.set()

        reader = asyncio.create_task(read())
        try:
            while True:
                if not outbox:
                    if not reading:
                        break
                    await ready.wait()
                    ready.clear()
                    continue
                sending = wpb.StreamInferResponses(responses=outbox)
                outbox.clear()
                yield sending
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _one(
        self, message: wpb.StreamInferRequest, deadline: float | None
    ) -> wpb.StreamInferResponse:
        """Answer one request (``deadline``: loop time; a task running this is cancelled
        with :data:`_DEADLINE` when it passes)."""
        reply = wpb.StreamInferResponse(sequence=message.sequence)
        token = None
        span = None
        if message.metadata:
            parent = extract_grpc_context(message.metadata.items())
            span = self._tracer.start_span(
                _SPAN_NAME, context=parent, kind=SpanKind.SERVER, attributes=_SPAN_ATTRIBUTES
            )
            token = otel_context.attach(trace.set_span_in_context(span, parent))
        try:
            try:
                request = pb.ModelInferRequest.FromString(message.request)
            except DecodeError as exc:
                reply.code = _code(grpc.StatusCode.INVALID_ARGUMENT)
                reply.message = f"request body: not a valid inference.ModelInferRequest ({exc})"
                return reply
            try:
                response = await self._servicer.infer(request)
            except asyncio.CancelledError as exc:
                if exc.args and exc.args[0] == _DEADLINE:
                    raise TimeoutError from None
                raise
            if deadline is not None and asyncio.get_running_loop().time() > deadline:
                # Ran inline past its deadline (no await to interrupt): the caller has given
                # up, as a unary call's caller would have.
                raise TimeoutError
            reply.response = response.SerializeToString()
            reply.code = _OK
        except TimeoutError:
            reply.code = _code(grpc.StatusCode.DEADLINE_EXCEEDED)
            reply.message = "Deadline Exceeded"
        except MlbusError as exc:
            reply.code = _code(exc.code)
            reply.message = exc.message
            for key, value in details_to_metadata(exc.details):
                reply.trailers[key] = value if isinstance(value, bytes) else value.encode()
        except Exception as exc:
            log.error("unhandled %s in a streamed ModelInfer", type(exc).__name__, exc_info=exc)
            reply.code = _code(grpc.StatusCode.INTERNAL)
            reply.message = f"internal error ({type(exc).__name__}); see the worker's log"
        finally:
            if span is not None:
                if reply.code != _OK:
                    span.set_attribute("rpc.grpc.status_code", reply.code)
                span.end()
            if token is not None:
                otel_context.detach(token)
        return reply
