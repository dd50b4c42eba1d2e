"""``mlbus.router.v1.RouterService``: asynchronous invocation (the contract is in
:mod:`mlbus.core.async_inference`).

InvokeAsync checks the request, decides inline vs claim check, publishes it to the
endpoint's request topic and answers at once; the endpoint's workers do the rest.
GetAsyncResult reads the outcome from the object store, where the workers put it.

A file of rows (CSV, JSON Lines, Parquet at ``input_uri``) is not one v2 request: it runs
as an internal transform job on the endpoint's workers (:mod:`mlbus.router.transform`,
job id :func:`~mlbus.router.transform.internal_job_id`), so it is read and run in chunks of
rows and never whole. When the job ends, :meth:`AsyncInferenceService.finish_rows` writes
the outcome beside the other async results (``completion.pb`` or ``failure.pb``, only if
absent) and publishes the notification with the workers' event ids, then the ``notified``
marker: exactly one visible outcome, also across router restarts (the transform service
runs the hook again for a job that ended before the restart).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel

from mlbus.common.v1 import common_pb2
from mlbus.core import async_inference as ai
from mlbus.core import transform as tf
from mlbus.core.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from mlbus.core.messaging import EventProducer, Topic, TopicCatalogue
from mlbus.core.messaging.topics import check_endpoint_name
from mlbus.core.storage import ObjectStore
from mlbus.inference.v1 import events_pb2 as ev
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.transform import InternalJob, JobStatus, TransformService, internal_job_id
from mlbus.router.v1 import router_pb2 as rpb

log = logging.getLogger(__name__)

_JSON = "application/json"
_PROTOBUF = "application/x-protobuf"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,245}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUEST_TYPES = (_PROTOBUF, _JSON)


class RowsOwner(BaseModel):
    """What the finish hook of a rows job needs (``InternalJob.owner``)."""

    endpoint: str
    inference_id: str
    reply_topic: str = ""
    receive_ms: int


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


def _object_ref(ref: Any) -> common_pb2.ObjectRef:
    return common_pb2.ObjectRef(
        uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size, content_type=ref.content_type
    )


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
        self._transform: TransformService | None = None

    def attach(self, transform: TransformService) -> None:
        """Run files of rows as internal jobs of ``transform`` and publish their outcome
        when they end."""
        self._transform = transform
        transform.on_finished(self.finish_rows)

    @property
    def transform(self) -> TransformService:
        """The transform service rows inputs run on."""
        if self._transform is None:
            raise Unavailable("rows inputs need the transform service, which is not attached")
        return self._transform

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
        try:
            inference_id = ai.check_inference_id(inference_id or ai.new_inference_id())
        except InvalidArgument as exc:
            # Name the field the id came from: the request's own, or the inline request's.
            field = "inference_id" if request.inference_id else "request.id"
            raise InvalidArgument(f"{field}: {exc.message.removeprefix('inference_id ')}") from None
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
        content_type = ai.media_type(request.input_content_type)
        rows_kind = ai.ROWS_CONTENT_TYPES.get(content_type)
        if which == "request" and rows_kind is not None:
            raise InvalidArgument(
                f"input_content_type {request.input_content_type!r}: applies to input_uri only "
                "(an inline request is a v2 ModelInferRequest; a file of rows goes in "
                "input_uri)"
            )
        if request.input_sha256 and not _SHA256.fullmatch(request.input_sha256):
            raise InvalidArgument(
                f"input_sha256 {request.input_sha256!r}: expected 64 lower-case hex digits"
            )
        if request.HasField("rows") and rows_kind is None:
            raise InvalidArgument(
                "rows: only for a file of rows at input_uri (input_content_type one of "
                f"{', '.join(ai.ROWS_CONTENT_TYPES)})"
            )
        transform = self._transform
        found = transform.find(internal_job_id(endpoint, inference_id)) if transform else None
        if found is not None and found[1].internal is not None:
            # The id names a rows inference already: the same job, whatever this call asks.
            return self._rows_response(inference_id, found[0].job_id, found[1].internal)
        response = rpb.InvokeAsyncResponse(
            inference_id=inference_id,
            output_uri=store.uri_for(ai.output_key(endpoint, inference_id)),
            failure_uri=store.uri_for(ai.failure_key(endpoint, inference_id)),
        )
        if await store.exists(store.uri_for(ai.completion_key(endpoint, inference_id))) or (
            await store.exists(response.failure_uri)
        ):
            return response  # finished already: the same id gives the same result
        if which == "input_uri" and rows_kind is not None:
            return await self._invoke_rows(request, endpoint, inference_id, timeout, rows_kind)
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
            content_type = content_type or _PROTOBUF
            if content_type not in _REQUEST_TYPES:
                raise InvalidArgument(
                    f"input_content_type {request.input_content_type!r}: expected a v2 request "
                    f"({', '.join(_REQUEST_TYPES)}) or a file of rows "
                    f"({', '.join(ai.ROWS_CONTENT_TYPES)})"
                )
            info = await self._stat_input(request.input_uri)
            sha = self._check_sha(request, info)
            headers += [
                (ai.H_INPUT_URI, info.uri.encode()),
                (ai.H_INPUT_CONTENT_TYPE, content_type.encode()),
            ]
            if sha:
                headers.append((ai.H_INPUT_SHA256, sha.encode()))
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

    async def _stat_input(self, uri: str) -> Any:
        try:
            return await self.store.stat(uri)
        except (InvalidArgument, NotFound) as exc:
            raise InvalidArgument(f"input_uri: {exc.message}") from None

    @staticmethod
    def _check_sha(request: rpb.InvokeAsyncRequest, info: Any) -> str:
        """The SHA-256 the input is pinned to: the caller's (refused at once when the store
        knows the object's and it differs), else the store's; '' if neither is known."""
        expected: str = request.input_sha256
        if expected and info.sha256 and info.sha256 != expected:
            raise InvalidArgument(
                f"input_sha256: expected {expected}, but the object at input_uri has {info.sha256}"
            )
        return expected or info.sha256 or ""

    def _rows_response(
        self, inference_id: str, job_id: str, internal: InternalJob
    ) -> rpb.InvokeAsyncResponse:
        owner = RowsOwner.model_validate(internal.owner)
        store = self.store
        return rpb.InvokeAsyncResponse(
            inference_id=inference_id,
            output_uri=store.uri_for(internal.output_key),
            failure_uri=store.uri_for(ai.failure_key(owner.endpoint, inference_id)),
            input_offloaded=True,
            job_id=job_id,
        )

    async def _invoke_rows(
        self,
        request: rpb.InvokeAsyncRequest,
        endpoint: str,
        inference_id: str,
        timeout: float,
        kind: str,
    ) -> rpb.InvokeAsyncResponse:
        """Start the internal transform job of a file of rows (or find the one started by
        an earlier call with the same id)."""
        transform = self.transform
        store = self.store
        uri = request.input_uri
        if uri.endswith("/"):
            raise InvalidArgument(
                f"input_uri {uri!r}: expected one object; for a directory of files use "
                "CreateTransformJob"
            )
        info = await self._stat_input(uri)
        sha = self._check_sha(request, info)
        rows = request.rows
        per_chunk = rows.records_per_chunk or 10_000
        if not 1 <= per_chunk <= 1_000_000:
            raise InvalidArgument(
                f"rows.records_per_chunk: expected 1-1000000, got {rows.records_per_chunk}"
            )
        if rows.max_records_per_batch < 0:
            raise InvalidArgument(
                f"rows.max_records_per_batch: expected 0 (default) or more, got "
                f"{rows.max_records_per_batch}"
            )
        if rows.HasField("max_failure_percent") and not 0 <= rows.max_failure_percent <= 100:
            raise InvalidArgument(
                f"rows.max_failure_percent: expected 0-100, got {rows.max_failure_percent:g}"
            )
        if kind == tf.JSONL:
            try:
                tf.compile_jsonpath(rows.input_filter)
            except InvalidArgument as exc:
                raise InvalidArgument(f"rows.input_filter: {exc.message}") from None
        job_id = internal_job_id(endpoint, inference_id)
        prefix = ai.result_prefix(endpoint, inference_id)
        output_type = tf.JSONL if kind == tf.JSONL else tf.CSV
        now_ms = int(time.time() * 1000)
        internal = InternalJob(
            output_key=prefix + ("output.jsonl" if output_type == tf.JSONL else "output.csv"),
            errors_key=prefix + "errors.jsonl",
            output_content_type=output_type,
            source_content_type=kind,
            input_sha256=sha,
            deadline=now_ms / 1000 + timeout,
            parquet_to_csv=kind == tf.PARQUET,
            owner=RowsOwner(
                endpoint=endpoint,
                inference_id=inference_id,
                reply_topic=request.reply_topic,
                receive_ms=now_ms,
            ).model_dump(),
        )
        spec = rpb.TransformJobSpec(
            endpoint=endpoint,
            input_uri=info.uri,
            content_type=kind,
            split_type=rpb.SPLIT_TYPE_LINE,
            batch_strategy=rpb.BATCH_STRATEGY_MULTI_RECORD,
            max_records_per_batch=rows.max_records_per_batch,
            records_per_chunk=per_chunk,
            output_uri=store.uri_for_prefix(prefix),
            input_filter=rows.input_filter,
            job_id=job_id,
        )
        if rows.HasField("csv_header"):
            spec.csv_header = rows.csv_header
        if rows.HasField("max_failure_percent"):
            spec.max_failure_percent = rows.max_failure_percent
        try:
            job, internal = await transform.create_internal(spec, internal)
        except InvalidArgument as exc:
            # The transform job's checks name its spec's fields; the caller gave them as
            # rows options.
            for field in ("input_filter", "max_records_per_batch", "max_failure_percent"):
                if exc.message.startswith(f"spec.{field}: "):
                    raise InvalidArgument(f"rows.{exc.message.removeprefix('spec.')}") from None
            raise
        log.info(
            "async rows inference started",
            extra={
                "endpoint": endpoint,
                "inference_id": inference_id,
                "job_id": job.job_id,
                "content_type": kind,
            },
        )
        return self._rows_response(inference_id, job.job_id, internal)

    # --- the outcome of a rows job --------------------------------------------------------

    async def finish_rows(self, manifest: tf.JobManifest, status: JobStatus) -> None:
        """Finish hook of the transform service: record and announce the outcome of the
        rows inference ``status.internal`` ran (idempotent; raises to be retried)."""
        internal = status.internal
        if internal is None or "inference_id" not in internal.owner:
            return
        owner = RowsOwner.model_validate(internal.owner)
        endpoint, inference_id = owner.endpoint, owner.inference_id
        store = self.store
        if await store.exists(store.uri_for(ai.notified_key(endpoint, inference_id))):
            return
        for key, message_type in (
            (ai.completion_key(endpoint, inference_id), ev.AsyncInferenceCompleted),
            (ai.failure_key(endpoint, inference_id), ev.AsyncInferenceFailed),
        ):
            uri = store.uri_for(key)
            if await store.exists(uri):
                # Recorded before a restart: (re)send it.
                await self._announce(message_type.FromString(await store.read_bytes(uri)), owner)
                return
        record = await self._rows_outcome(manifest, status, owner)
        key = (
            ai.completion_key(endpoint, inference_id)
            if isinstance(record, ev.AsyncInferenceCompleted)
            else ai.failure_key(endpoint, inference_id)
        )
        try:
            await store.put(
                key,
                record.SerializeToString(),
                content_type=_PROTOBUF,
                if_absent=True,
            )
        except AlreadyExists:
            # Another writer recorded this id's outcome first: that one is the result.
            stored = type(record).FromString(await store.read_bytes(store.uri_for(key)))
            record = stored
        await self._announce(record, owner)
        log.info(
            "async rows inference finished",
            extra={
                "endpoint": endpoint,
                "inference_id": inference_id,
                "job_id": manifest.job_id,
                "status": status.status,
                "records": manifest.records_total,
                "failed": status.records_failed,
            },
        )

    async def _rows_outcome(
        self, manifest: tf.JobManifest, status: JobStatus, owner: RowsOwner
    ) -> ev.AsyncInferenceCompleted | ev.AsyncInferenceFailed:
        total, failed = manifest.records_total, status.records_failed
        errors = status.error_files[0] if status.error_files else None
        variant, version = "", 0
        route = self.table.find(owner.endpoint)
        if route is not None and len(route.variants) == 1:
            variant, version = route.variants[0].name, route.variants[0].model_version
        receive = _ts(owner.receive_ms / 1000)
        start = _ts(status.start_time or status.create_time)
        end = _ts(status.end_time or time.time())
        every_failed = bool(total) and failed >= total
        if status.status in ("COMPLETED", "COMPLETED_WITH_ERRORS") and not every_failed:
            completion = ev.AsyncInferenceCompleted(
                inference_id=owner.inference_id,
                endpoint=owner.endpoint,
                variant=variant,
                model_version=version,
                status=ev.ASYNC_INFERENCE_STATUS_SUCCEEDED,
                output=_object_ref(status.outputs[0]),
                receive_time=receive,
                start_time=start,
                end_time=end,
                records_total=total,
                records_failed=failed,
            )
            if errors is not None:
                completion.errors.CopyFrom(_object_ref(errors))
            return completion
        if status.status == "STOPPED":
            code, message = "CANCELLED", f"stopped: {status.reason or 'stop requested'}"
        elif every_failed:
            code = "INVALID_ARGUMENT"
            message = f"every record failed ({failed} of {total})"
            if errors is not None:
                message += f"; see {errors.uri}{await self._first_error(errors.uri)}"
        else:
            # Over max_failure_percent (INVALID_ARGUMENT), past the deadline, or the input
            # could not be read (the job says why).
            code = status.reason_code or ("INVALID_ARGUMENT" if failed else "INTERNAL")
            message = status.reason or "the transform job failed"
        details = {
            "job_id": manifest.job_id,
            "records_total": str(total),
            "records_failed": str(failed),
        }
        if errors is not None:
            details["errors_uri"] = errors.uri
        failure = ev.AsyncInferenceFailed(
            inference_id=owner.inference_id,
            endpoint=owner.endpoint,
            variant=variant,
            model_version=version,
            status=ev.ASYNC_INFERENCE_STATUS_FAILED,
            error=common_pb2.ErrorInfo(code=code, message=message, details=details),
            receive_time=receive,
            end_time=end,
            attempts=1,
        )
        if status.start_time:
            failure.start_time.CopyFrom(start)
        return failure

    async def _first_error(self, uri: str) -> str:
        """'; first: line N: <error>' from an errors file, or '' if it cannot be read."""
        with contextlib.suppress(Exception):
            async for block in self.store.get(uri, chunk_size=64 * 1024):
                first = json.loads(block.split(b"\n", 1)[0])
                return f"; first: line {first['line']}: {first['error']}"
        return ""

    async def _announce(self, record: Message, owner: RowsOwner) -> None:
        """Publish an outcome to the endpoint's result or error topic (and the reply topic)
        with the workers' event id, then write the ``notified`` marker."""
        endpoint, inference_id = owner.endpoint, owner.inference_id
        completed = isinstance(record, ev.AsyncInferenceCompleted)
        topic: Topic[Any] = (
            self.catalogue.async_results(endpoint)
            if completed
            else self.catalogue.async_errors(endpoint)
        )
        event_id = f"{endpoint}/{inference_id}/{'completed' if completed else 'failed'}"
        await self.producer.publish(topic, record, key=inference_id, event_id=event_id)
        if owner.reply_topic:
            reply: Topic[Any] = Topic(
                name=owner.reply_topic,
                message_type=topic.message_type,
                partitions=1,
                key=topic.key,
                description="caller's reply topic",
                dlq=False,
            )
            await self.producer.publish(reply, record, key=inference_id, event_id=event_id)
        with contextlib.suppress(AlreadyExists):
            await self.store.put(ai.notified_key(endpoint, inference_id), b"", if_absent=True)

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
        found = (
            self._transform.find(internal_job_id(endpoint, inference_id))
            if self._transform is not None
            else None
        )
        if found is not None and found[1].internal is not None:
            manifest, status = found
            result.rows.job_id = manifest.job_id
            result.rows.records_total = manifest.records_total if manifest.split_done else 0
            result.rows.records_done = status.records_done
            result.rows.records_failed = status.records_failed
            if status.error_files:
                result.rows.errors.CopyFrom(_object_ref(status.error_files[0]))
        if await store.exists(completion_uri):
            completion = ev.AsyncInferenceCompleted.FromString(
                await store.read_bytes(completion_uri)
            )
            result.status = rpb.ASYNC_RESULT_STATUS_SUCCEEDED
            result.completion.CopyFrom(completion)
            result.output.CopyFrom(completion.output)
            if completion.output.content_type in ("", _PROTOBUF):
                result.response.ParseFromString(
                    await store.read_bytes(
                        completion.output.uri, expected_sha256=completion.output.sha256 or None
                    )
                )
            else:
                # A file of rows: the output is a file, read at output.uri.
                result.rows.records_total = completion.records_total
                result.rows.records_done = completion.records_total
                result.rows.records_failed = completion.records_failed
                if completion.HasField("errors"):
                    result.rows.errors.CopyFrom(completion.errors)
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
