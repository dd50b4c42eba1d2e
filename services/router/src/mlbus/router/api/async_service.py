"""``mlbus.router.v1.RouterService``: asynchronous invocation (the contract is in
:mod:`mlbus.core.async_inference`).

InvokeAsync checks the request, decides inline vs claim check, publishes it to the
endpoint's request topic and answers at once; the endpoint's workers do the rest.
GetAsyncResult reads the outcome from the object store, where the workers put it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from mlbus.core import async_inference as ai
from mlbus.core.errors import InvalidArgument, NotFound
from mlbus.core.messaging import EventProducer, TopicCatalogue
from mlbus.core.messaging.topics import check_endpoint_name
from mlbus.core.storage import ObjectStore
from mlbus.inference.v1 import events_pb2 as ev
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.v1 import router_pb2 as rpb

log = logging.getLogger(__name__)

_JSON = "application/json"
_PROTOBUF = "application/x-protobuf"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,245}")


class AsyncInferenceService:
    """InvokeAsync and GetAsyncResult."""

    def __init__(
        self,
        table: RoutingTable,
        producer: EventProducer,
        catalogue: TopicCatalogue,
        *,
        inline_max_bytes: int,
        default_timeout_s: float,
        max_timeout_s: float,
    ) -> None:
        self.table = table
        self.producer = producer
        self.catalogue = catalogue
        self.inline_max_bytes = inline_max_bytes
        self.default_timeout_s = default_timeout_s
        self.max_timeout_s = max_timeout_s
        self._store: ObjectStore | None = None

    @property
    def store(self) -> ObjectStore:
        """The object store (opened when the router starts)."""
        if self._store is None:
            raise RuntimeError("the object store is not open yet")
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store

    def _check_endpoint(self, endpoint: str) -> str:
        if not endpoint:
            raise InvalidArgument("endpoint: required")
        try:
            check_endpoint_name(endpoint)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if self.table.find(endpoint) is None and not self.table.is_pending(endpoint):
            self.table.get(endpoint)  # NOT_FOUND naming the deployed endpoints
        return endpoint

    async def InvokeAsync(
        self, request: rpb.InvokeAsyncRequest, context: Any
    ) -> rpb.InvokeAsyncResponse:
        endpoint = self._check_endpoint(request.endpoint)
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgument(
                "input: give either request (a v2 ModelInferRequest) or input_uri"
            )
        inline = request.request
        inference_id = request.inference_id or (inline.id if which == "request" else "")
        inference_id = ai.check_inference_id(inference_id or ai.new_inference_id())
        timeout = request.timeout_seconds or self.default_timeout_s
        if not 0 < timeout <= self.max_timeout_s:
            raise InvalidArgument(
                f"timeout_seconds: expected 0 < t <= {self.max_timeout_s:g}, got {request.timeout_seconds:g}"
            )
        if request.reply_topic and not _TOPIC.fullmatch(request.reply_topic):
            raise InvalidArgument(
                f"reply_topic {request.reply_topic!r}: expected 1-245 characters of [A-Za-z0-9._-]"
            )
        store = self.store
        response = rpb.InvokeAsyncResponse(
            inference_id=inference_id,
            output_uri=store.uri_for(ai.output_key(endpoint, inference_id)),
            failure_uri=store.uri_for(ai.failure_key(endpoint, inference_id)),
        )
        if await store.exists(store.uri_for(ai.completion_key(endpoint, inference_id))) or (
            await store.exists(response.failure_uri)
        ):
            return response  # finished already: the same id gives the same result
        now_ms = int(time.time() * 1000)
        headers: list[tuple[str, bytes]] = [
            (ai.H_INFERENCE_ID, inference_id.encode()),
            (ai.H_RECEIVE_TIME, str(now_ms).encode()),
            (ai.H_DEADLINE, str(now_ms + int(timeout * 1000)).encode()),
        ]
        if request.reply_topic:
            headers.append((ai.H_REPLY_TOPIC, request.reply_topic.encode()))
        value = pb.ModelInferRequest(model_name=endpoint, id=inference_id)
        if which == "request":
            if inline.model_name and inline.model_name != endpoint:
                raise InvalidArgument(
                    f"request.model_name {inline.model_name!r}: must be empty or the endpoint "
                    f"name {endpoint!r}"
                )
            body = pb.ModelInferRequest()
            body.CopyFrom(inline)
            body.model_name = endpoint
            body.id = body.id or inference_id
            if body.ByteSize() <= self.inline_max_bytes:
                value = body
            else:
                ref = await store.put(
                    ai.input_key(endpoint, inference_id),
                    body.SerializeToString(),
                    content_type=_PROTOBUF,
                )
                headers += [
                    (ai.H_INPUT_URI, ref.uri.encode()),
                    (ai.H_INPUT_SHA256, ref.sha256.encode()),
                    (ai.H_INPUT_CONTENT_TYPE, _PROTOBUF.encode()),
                ]
                response.input_offloaded = True
        else:
            content_type = request.input_content_type or _PROTOBUF
            if content_type not in (_PROTOBUF, _JSON):
                raise InvalidArgument(
                    f"input_content_type {content_type!r}: expected {_PROTOBUF} or {_JSON}"
                )
            try:
                info = await store.stat(request.input_uri)
            except (InvalidArgument, NotFound) as exc:
                raise InvalidArgument(f"input_uri: {exc.message}") from None
            headers += [
                (ai.H_INPUT_URI, info.uri.encode()),
                (ai.H_INPUT_CONTENT_TYPE, content_type.encode()),
            ]
            if info.sha256:
                headers.append((ai.H_INPUT_SHA256, info.sha256.encode()))
            response.input_offloaded = True
        await self.producer.publish(
            self.catalogue.async_requests(endpoint),
            value,
            key=inference_id,
            event_id=f"{endpoint}/{inference_id}/requested/{now_ms}",
            headers=headers,
        )
        log.info(
            "async inference queued",
            extra={
                "endpoint": endpoint,
                "inference_id": inference_id,
                "offloaded": response.input_offloaded,
            },
        )
        return response

    async def GetAsyncResult(
        self, request: rpb.GetAsyncResultRequest, context: Any
    ) -> rpb.GetAsyncResultResponse:
        if not request.endpoint:
            raise InvalidArgument("endpoint: required")
        try:
            check_endpoint_name(request.endpoint)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        inference_id = ai.check_inference_id(request.inference_id)
        store = self.store
        endpoint = request.endpoint
        result = rpb.GetAsyncResultResponse(inference_id=inference_id)
        completion_uri = store.uri_for(ai.completion_key(endpoint, inference_id))
        failure_uri = store.uri_for(ai.failure_key(endpoint, inference_id))
        if await store.exists(completion_uri):
            completion = ev.AsyncInferenceCompleted.FromString(
                await store.read_bytes(completion_uri)
            )
            result.status = rpb.ASYNC_RESULT_STATUS_SUCCEEDED
            result.completion.CopyFrom(completion)
            result.output.CopyFrom(completion.output)
            result.response.ParseFromString(
                await store.read_bytes(
                    completion.output.uri, expected_sha256=completion.output.sha256 or None
                )
            )
        elif await store.exists(failure_uri):
            failure = ev.AsyncInferenceFailed.FromString(await store.read_bytes(failure_uri))
            result.status = (
                rpb.ASYNC_RESULT_STATUS_EXPIRED
                if failure.status == ev.ASYNC_INFERENCE_STATUS_EXPIRED
                else rpb.ASYNC_RESULT_STATUS_FAILED
            )
            result.failure.CopyFrom(failure)
            result.error.CopyFrom(failure.error)
        else:
            result.status = rpb.ASYNC_RESULT_STATUS_PENDING
        return result
