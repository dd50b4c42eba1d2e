"""Asynchronous inference: the worker's handler for its endpoint's request topic.

Workers of an endpoint's production variants share one consumer group on
``mlbus.inference.<endpoint>.requests.v1``; partitions are handled concurrently, so what
is queued reaches the dynamic batcher together. For each request (the contract is in
:mod:`mlbus.core.async_inference`):

1. If its outcome is already in the object store it is not run again: the notification is
   only (re)sent when the ``notified`` marker is missing — so a redelivery after a crash
   gives neither a second result nor, normally, a second notification (the event id is
   deterministic, so a consumer can drop the rare duplicate).
2. A request past its deadline is not run: EXPIRED. One whose input (inline, or claim-
   checked in the object store) is invalid, or that the model refuses, fails for good:
   FAILED with the error. A run still going at the deadline is abandoned: FAILED with
   DEADLINE_EXCEEDED. The model still loading (UNAVAILABLE) is retried with backoff.
3. On success the response goes to ``output.pb`` (written only if absent: of two workers
   racing on one redelivered request, one wins and the other stays silent), the
   completion record beside it, then the notification to the result topic (and the
   request's reply topic), then the marker.

Undecodable records go to the dead-letter topic (by the consumer) and get a FAILED
notification too, when their inference id can be told from the headers or key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.common.v1 import common_pb2
from mlbus.core import async_inference as ai
from mlbus.core.errors import AlreadyExists, InvalidArgument, MlbusError, Unavailable
from mlbus.core.messaging import DeadLetter, Event, EventProducer, RetryableError, Topic
from mlbus.core.messaging.envelope import JSON
from mlbus.core.storage import ObjectStore
from mlbus.inference.api.converters import decode_request, encode_response
from mlbus.inference.v1 import events_pb2 as ev
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.worker import Worker

log = logging.getLogger(__name__)

_STATUS = {
    "EXPIRED": ev.ASYNC_INFERENCE_STATUS_EXPIRED,
    "FAILED": ev.ASYNC_INFERENCE_STATUS_FAILED,
}


def _ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _ms(text: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(text) / 1000, UTC)
    except (TypeError, ValueError):
        return None


class AsyncRequestHandler:
    """Runs one endpoint's asynchronous requests on this worker's model."""

    def __init__(
        self,
        worker: Worker,
        store: ObjectStore | None,
        producer: EventProducer,
        *,
        requests: Topic[pb.ModelInferRequest],
        results: Topic[ev.AsyncInferenceCompleted],
        errors: Topic[ev.AsyncInferenceFailed],
        endpoint: str,
        variant: str,
        model_version: int,
        default_timeout_s: float,
    ) -> None:
        self.worker = worker
        self._store = store
        self.producer = producer
        self.requests = requests
        self.results = results
        self.errors = errors
        self.endpoint = endpoint
        self.variant = variant
        self.model_version = model_version
        self.default_timeout_s = default_timeout_s
        #: Counts since start (tests, logs).
        self.succeeded = 0
        self.failed = 0
        self.skipped = 0

    @property
    def store(self) -> ObjectStore:
        """The object store results go to (opened by the app once the model is loaded)."""
        if self._store is None:
            raise Unavailable("the asynchronous handler has no object store yet")
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store

    def _uri(self, key: str) -> str:
        return self.store.uri_for(key)

    # --- the handler -------------------------------------------------------------------

    async def handle(self, event: Event[Any]) -> None:
        """Consumer handler: run one request (idempotently). The object store or the model
        being unavailable is retried (then the request is dead-lettered, and failed)."""
        try:
            await self._handle(event)
        except Unavailable as exc:
            raise RetryableError(str(exc)) from exc

    async def _handle(self, event: Event[Any]) -> None:
        headers = event.headers
        request: pb.ModelInferRequest = event.message
        inference_id = (
            ai.header(headers, ai.H_INFERENCE_ID) or request.id or (event.key or "")
        ) or event.id.replace("/", ":")
        receive = _ms(ai.header(headers, ai.H_RECEIVE_TIME)) or event.timestamp
        deadline = _ms(ai.header(headers, ai.H_DEADLINE))
        if deadline is None:
            deadline = datetime.fromtimestamp(receive.timestamp() + self.default_timeout_s, UTC)
        reply = ai.header(headers, ai.H_REPLY_TOPIC)
        try:
            ai.check_inference_id(inference_id)
        except InvalidArgument as exc:
            # Cannot name its result: tell the sender, store nothing.
            await self._notify_failure(
                self._failure(
                    inference_id,
                    "FAILED",
                    "INVALID_ARGUMENT",
                    str(exc),
                    receive,
                    None,
                    event.attempt,
                ),
                reply,
                event_id=f"{self.endpoint}/{event.id}/failed",
            )
            return
        if await self._already_done(inference_id, reply):
            self.skipped += 1
            return
        output_uri = self._uri(ai.output_key(self.endpoint, inference_id))
        if await self.store.exists(output_uri):
            # An earlier delivery ran it and wrote its output, then stopped before the
            # completion record: the request succeeded (whatever its deadline says now).
            response = pb.ModelInferResponse.FromString(await self.store.read_bytes(output_uri))
            await self._succeed(inference_id, response, receive, receive, reply)
            return
        now = datetime.now(UTC)
        if now >= deadline:
            failure = self._failure(
                inference_id,
                "EXPIRED",
                "DEADLINE_EXCEEDED",
                f"not started before its deadline {deadline.isoformat()} "
                f"(waited {(now - receive).total_seconds():.1f}s in the queue)",
                receive,
                None,
                event.attempt,
            )
            await self._fail(inference_id, failure, reply)
            return
        started = datetime.now(UTC)
        try:
            request = await self._load_input(request, headers)
            response = await asyncio.wait_for(
                self._run(request, inference_id), timeout=(deadline - started).total_seconds()
            )
        except TimeoutError:
            failure = self._failure(
                inference_id,
                "FAILED",
                "DEADLINE_EXCEEDED",
                f"not finished before its deadline {deadline.isoformat()}",
                receive,
                started,
                event.attempt,
            )
            await self._fail(inference_id, failure, reply)
            return
        except MlbusError as exc:
            failure = self._failure(
                inference_id, "FAILED", exc.code.name, exc.message, receive, started, event.attempt
            )
            await self._fail(inference_id, failure, reply)
            return
        await self._succeed(inference_id, response, receive, started, reply)

    async def on_dead_letter(self, letter: DeadLetter) -> None:
        """Consumer hook: a request went to the DLQ (undecodable, or the store or model
        stayed unavailable through its retries); fail it and tell its sender."""
        headers = letter.headers
        inference_id = ai.header(headers, ai.H_INFERENCE_ID) or (
            letter.key.decode("utf-8", "replace") if letter.key else ""
        )
        if not inference_id:
            return
        if letter.message is None:
            code = "INVALID_ARGUMENT"
            text = f"request could not be decoded and was sent to {letter.topic.dlq_name}"
        else:
            code = "UNAVAILABLE" if isinstance(letter.error, RetryableError) else "INTERNAL"
            text = f"request could not be run and was sent to {letter.topic.dlq_name}"
        cause = letter.error.__cause__ if isinstance(letter.error, RetryableError) else None
        failure = self._failure(
            inference_id,
            "FAILED",
            code,
            f"{text}: {cause or letter.error}",
            datetime.now(UTC),
            None,
            1,
        )
        try:
            ai.check_inference_id(inference_id)
        except InvalidArgument:
            await self._notify_failure(
                failure,
                ai.header(headers, ai.H_REPLY_TOPIC),
                event_id=f"{self.endpoint}/{letter.partition}:{letter.offset}/failed",
            )
            return
        await self._fail(inference_id, failure, ai.header(headers, ai.H_REPLY_TOPIC))

    # --- steps -------------------------------------------------------------------------

    async def _load_input(
        self, request: pb.ModelInferRequest, headers: tuple[tuple[str, bytes], ...]
    ) -> pb.ModelInferRequest:
        uri = ai.header(headers, ai.H_INPUT_URI)
        if not uri:
            return request
        content_type = ai.header(headers, ai.H_INPUT_CONTENT_TYPE)
        if ai.rows_format(content_type) is not None:
            # Refused before reading: such a file may be far larger than this worker's memory.
            raise InvalidArgument(
                f"input {uri}: rows inputs ({', '.join(ai.ROWS_CONTENT_TYPES)}) go through "
                f"InvokeAsync or CreateTransformJob, not the request topic (content type "
                f"{content_type!r})"
            )
        sha = ai.header(headers, ai.H_INPUT_SHA256) or None
        try:
            data = await self.store.read_bytes(uri, expected_sha256=sha)
        except Unavailable:
            raise  # the store, not the input: retried
        except MlbusError as exc:
            raise InvalidArgument(f"input {uri}: {exc.message}") from exc
        loaded = pb.ModelInferRequest()
        try:
            if ai.header(headers, ai.H_INPUT_CONTENT_TYPE).startswith(JSON):
                json_format.Parse(data.decode("utf-8"), loaded)
            else:
                loaded.ParseFromString(data)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"input {uri}: not a valid inference.ModelInferRequest: {exc}"
            ) from exc
        return loaded

    async def _run(self, request: pb.ModelInferRequest, inference_id: str) -> pb.ModelInferResponse:
        if not request.model_name:
            request.model_name = self.endpoint
        if not request.id:
            request.id = inference_id
        engine = self.worker.ready_engine(request.model_name, request.model_version)
        signature = engine.runner.signature
        decoded = decode_request(request, signature)
        outputs = await engine.infer(decoded.inputs, decoded.outputs)
        return encode_response(
            request,
            decoded,
            outputs,
            signature,
            model_version=self.worker.version,
            variant=self.variant,
        )

    async def _already_done(self, inference_id: str, reply: str) -> bool:
        """True if this request's outcome exists (its notification is re-sent if needed)."""
        if await self.store.exists(self._uri(ai.notified_key(self.endpoint, inference_id))):
            return True
        for key, message_type, topic in (
            (
                ai.completion_key(self.endpoint, inference_id),
                ev.AsyncInferenceCompleted,
                self.results,
            ),
            (ai.failure_key(self.endpoint, inference_id), ev.AsyncInferenceFailed, self.errors),
        ):
            uri = self._uri(key)
            if await self.store.exists(uri):
                record: Message = message_type.FromString(await self.store.read_bytes(uri))
                await self._publish(topic, record, inference_id, reply)
                await self._mark_notified(inference_id)
                return True
        return False

    def _failure(
        self,
        inference_id: str,
        status: str,
        code: str,
        message: str,
        receive: datetime,
        started: datetime | None,
        attempts: int,
    ) -> ev.AsyncInferenceFailed:
        failure = ev.AsyncInferenceFailed(
            inference_id=inference_id,
            endpoint=self.endpoint,
            variant=self.variant if started is not None else "",
            model_version=self.model_version if started is not None else 0,
            status=_STATUS[status],
            error=common_pb2.ErrorInfo(code=code, message=message),
            receive_time=_ts(receive),
            end_time=_ts(datetime.now(UTC)),
            attempts=attempts,
        )
        if started is not None:
            failure.start_time.CopyFrom(_ts(started))
        return failure

    async def _fail(self, inference_id: str, failure: ev.AsyncInferenceFailed, reply: str) -> None:
        if await self.store.exists(self._uri(ai.output_key(self.endpoint, inference_id))):
            return  # another delivery succeeded (its completion follows its output)
        try:
            await self.store.put(
                ai.failure_key(self.endpoint, inference_id),
                failure.SerializeToString(),
                content_type="application/x-protobuf",
                if_absent=True,
            )
        except AlreadyExists:
            return  # another delivery recorded the outcome and notifies
        self.failed += 1
        log.info(
            "async inference failed",
            extra={
                "inference_id": inference_id,
                "code": failure.error.code,
                "error": failure.error.message,
            },
        )
        await self._publish(self.errors, failure, inference_id, reply)
        await self._mark_notified(inference_id)

    async def _notify_failure(
        self, failure: ev.AsyncInferenceFailed, reply: str, *, event_id: str
    ) -> None:
        self.failed += 1
        await self.producer.publish(
            self.errors, failure, key=failure.inference_id or None, event_id=event_id
        )
        if reply:
            await self.producer.publish(
                self._reply(reply, self.errors),
                failure,
                key=failure.inference_id or None,
                event_id=event_id,
            )

    async def _succeed(
        self,
        inference_id: str,
        response: pb.ModelInferResponse,
        receive: datetime,
        started: datetime,
        reply: str,
    ) -> None:
        try:
            output = await self.store.put(
                ai.output_key(self.endpoint, inference_id),
                response.SerializeToString(),
                content_type="application/x-protobuf",
                if_absent=True,
            )
        except AlreadyExists:
            stored = await self.store.stat(self._uri(ai.output_key(self.endpoint, inference_id)))
            output_uri, output_size = stored.uri, stored.size
            output_sha = stored.sha256
        else:
            output_uri, output_size, output_sha = output.uri, output.size, output.sha256
        completion = ev.AsyncInferenceCompleted(
            inference_id=inference_id,
            endpoint=self.endpoint,
            variant=self.variant,
            model_version=self.model_version,
            status=ev.ASYNC_INFERENCE_STATUS_SUCCEEDED,
            output=common_pb2.ObjectRef(
                uri=output_uri,
                sha256=output_sha or "",
                size_bytes=output_size,
                content_type="application/x-protobuf",
            ),
            receive_time=_ts(receive),
            start_time=_ts(started),
            end_time=_ts(datetime.now(UTC)),
        )
        try:
            await self.store.put(
                ai.completion_key(self.endpoint, inference_id),
                completion.SerializeToString(),
                content_type="application/x-protobuf",
                if_absent=True,
            )
        except AlreadyExists:
            return  # another delivery finished first and notifies
        self.succeeded += 1
        await self._publish(self.results, completion, inference_id, reply)
        await self._mark_notified(inference_id)

    def _reply(self, name: str, like: Topic[Any]) -> Topic[Any]:
        return Topic(
            name=name,
            message_type=like.message_type,
            partitions=1,
            key=like.key,
            description="caller's reply topic",
            dlq=False,
        )

    async def _publish(
        self, topic: Topic[Any], record: Message, inference_id: str, reply: str
    ) -> None:
        kind = "completed" if isinstance(record, ev.AsyncInferenceCompleted) else "failed"
        event_id = f"{self.endpoint}/{inference_id}/{kind}"
        await self.producer.publish(topic, record, key=inference_id, event_id=event_id)
        if reply:
            await self.producer.publish(
                self._reply(reply, topic), record, key=inference_id, event_id=event_id
            )

    async def _mark_notified(self, inference_id: str) -> None:
        with contextlib.suppress(AlreadyExists):
            await self.store.put(ai.notified_key(self.endpoint, inference_id), b"", if_absent=True)
