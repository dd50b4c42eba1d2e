"""Batch transform jobs: split the input into chunks for the endpoint's workers, follow
their progress in the object store, assemble the output in input order.

The contract with the workers is :mod:`mlbus.core.transform`. The router is the only
writer of ``job.json`` and ``status.json``; a chunk counts as done once its ``.done``
marker exists, so progress survives worker crashes (redelivered chunks are skipped or
finish the same files) and router restarts (unfinished jobs are picked up at start: the
split is redone — same chunks, same keys — and chunks already done are skipped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from mlbus.common.v1 import common_pb2
from mlbus.core import async_inference as ai
from mlbus.core import transform as tf
from mlbus.core.errors import AlreadyExists, InvalidArgument, NotFound
from mlbus.core.messaging import EventProducer, TopicCatalogue
from mlbus.core.messaging.topics import check_endpoint_name
from mlbus.core.storage import ObjectStore
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.v1 import events_pb2 as rev
from mlbus.router.v1 import router_pb2 as rpb

log = logging.getLogger(__name__)

Status = Literal[
    "PENDING", "IN_PROGRESS", "COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "STOPPING", "STOPPED"
]
_TERMINAL = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "STOPPED"}
_PB_STATUS = {
    "PENDING": rev.TRANSFORM_JOB_STATUS_PENDING,
    "IN_PROGRESS": rev.TRANSFORM_JOB_STATUS_IN_PROGRESS,
    "COMPLETED": rev.TRANSFORM_JOB_STATUS_COMPLETED,
    "COMPLETED_WITH_ERRORS": rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS,
    "FAILED": rev.TRANSFORM_JOB_STATUS_FAILED,
    "STOPPING": rev.TRANSFORM_JOB_STATUS_STOPPING,
    "STOPPED": rev.TRANSFORM_JOB_STATUS_STOPPED,
}


class Ref(BaseModel):
    """An object written by the job."""

    uri: str
    sha256: str = ""
    size: int = 0
    content_type: str = ""


class JobStatus(BaseModel):
    """``status.json``: where a job is."""

    job_id: str
    status: Status = "PENDING"
    reason: str = ""
    records_done: int = 0
    records_failed: int = 0
    chunks_done: int = 0
    create_time: float = Field(default_factory=time.time)
    start_time: float = 0.0
    end_time: float = 0.0
    outputs: list[Ref] = Field(default_factory=list)
    error_files: list[Ref] = Field(default_factory=list)
    spec: dict[str, Any] = Field(default_factory=dict)


def _status_key(job_id: str) -> str:
    return tf.job_prefix(job_id) + "status.json"


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    if seconds:
        stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


class _Job:
    def __init__(self, manifest: tf.JobManifest, status: JobStatus) -> None:
        self.manifest = manifest
        self.status = status
        self.done: dict[int, tuple[int, int]] = {}
        self.task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.last_event = 0.0


class TransformService:
    """Creates, runs, describes and stops transform jobs."""

    def __init__(
        self,
        table: RoutingTable,
        producer: EventProducer,
        catalogue: TopicCatalogue,
        *,
        poll_interval_s: float = 0.25,
    ) -> None:
        self.table = table
        self.producer = producer
        self.catalogue = catalogue
        self.poll_interval_s = poll_interval_s
        self._store: ObjectStore | None = None
        self._jobs: dict[str, _Job] = {}

    @property
    def store(self) -> ObjectStore:
        """The object store (opened when the router starts)."""
        if self._store is None:
            raise RuntimeError("the object store is not open yet")
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store

    # --- lifecycle ---------------------------------------------------------------------

    async def resume(self) -> None:
        """Load every job in the store; restart the unfinished ones."""
        store = self.store
        async for info in store.list("transform/"):
            if not info.uri.endswith("/status.json"):
                continue
            try:
                status = JobStatus.model_validate_json(await store.read_bytes(info.uri))
                manifest = tf.JobManifest.model_validate_json(
                    await store.read_bytes(store.uri_for(tf.manifest_key(status.job_id)))
                )
            except (NotFound, ValueError):
                log.warning("unreadable transform job skipped", extra={"uri": info.uri})
                continue
            job = _Job(manifest, status)
            self._jobs[status.job_id] = job
            if status.status not in _TERMINAL:
                log.info("resuming transform job", extra={"job_id": status.job_id})
                job.task = asyncio.create_task(self._run(job), name=f"transform-{status.job_id}")

    async def stop(self) -> None:
        """Stop following jobs (they resume at the next start)."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- API ---------------------------------------------------------------------------

    async def create(self, spec: rpb.TransformJobSpec) -> rpb.TransformJob:
        """Check ``spec``, record the job and start it in the background."""
        manifest, files = await self._plan(spec)
        if manifest.job_id in self._jobs or await self.store.exists(
            self.store.uri_for(_status_key(manifest.job_id))
        ):
            raise AlreadyExists(f"transform job {manifest.job_id!r} exists")
        manifest.files = files
        status = JobStatus(job_id=manifest.job_id, spec=_spec_dict(spec, manifest))
        job = _Job(manifest, status)
        self._jobs[manifest.job_id] = job
        await self._save_manifest(job)
        await self._save_status(job)
        job.task = asyncio.create_task(self._run(job), name=f"transform-{manifest.job_id}")
        log.info(
            "transform job created",
            extra={
                "job_id": manifest.job_id,
                "endpoint": manifest.endpoint,
                "files": [f.name for f in files],
            },
        )
        return self.describe_job(job)

    def get(self, job_id: str) -> rpb.TransformJob:
        """The job's description; NOT_FOUND if there is none."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"transform job {job_id!r} not found")
        return self.describe_job(job)

    def list_jobs(self, endpoint: str = "") -> list[rpb.TransformJob]:
        """Jobs, newest first."""
        jobs = sorted(self._jobs.values(), key=lambda j: j.status.create_time, reverse=True)
        return [
            self.describe_job(j) for j in jobs if not endpoint or j.manifest.endpoint == endpoint
        ]

    async def stop_job(self, job_id: str, reason: str) -> rpb.TransformJob:
        """Stop a job; chunks not started are skipped."""
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"transform job {job_id!r} not found")
        if job.status.status in _TERMINAL:
            return self.describe_job(job)
        job.status.status = "STOPPING"
        job.status.reason = reason or "stop requested"
        job.manifest.stopped = True
        await self._save_manifest(job)
        await self._save_status(job)
        job.stop_requested.set()
        return self.describe_job(job)

    def describe_job(self, job: _Job) -> rpb.TransformJob:
        """The API view of a job."""
        m, s = job.manifest, job.status
        elapsed = (s.end_time or time.time()) - s.start_time if s.start_time else 0.0
        rate = s.records_done / elapsed if elapsed > 0 else 0.0
        left = max(m.records_total - s.records_done, 0)
        eta = left / rate if rate > 0 and m.split_done and s.status not in _TERMINAL else 0.0
        out = rpb.TransformJob(
            job_id=m.job_id,
            status=_PB_STATUS[s.status],
            reason=s.reason,
            records_total=m.records_total,
            records_done=s.records_done,
            records_failed=s.records_failed,
            chunks_total=m.chunks_total,
            chunks_done=s.chunks_done,
            records_per_second=rate,
            eta_seconds=eta,
            create_time=_ts(s.create_time),
        )
        out.spec.CopyFrom(_spec_pb(s.spec))
        if s.end_time:
            out.end_time.CopyFrom(_ts(s.end_time))
        for ref in s.outputs:
            out.outputs.add(
                uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size, content_type=ref.content_type
            )
        for ref in s.error_files:
            out.error_files.add(
                uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size, content_type=ref.content_type
            )
        return out

    # --- planning ----------------------------------------------------------------------

    async def _plan(self, spec: rpb.TransformJobSpec) -> tuple[tf.JobManifest, list[tf.InputFile]]:
        store = self.store
        endpoint = spec.endpoint
        if not endpoint:
            raise InvalidArgument("spec.endpoint: required")
        try:
            check_endpoint_name(endpoint)
        except ValueError as exc:
            raise InvalidArgument(f"spec.endpoint: {exc}") from None
        if self.table.find(endpoint) is None and not self.table.is_pending(endpoint):
            self.table.get(endpoint)
        job_id = ai.check_inference_id(spec.job_id or ai.new_inference_id())
        if not spec.input_uri:
            raise InvalidArgument(
                "spec.input_uri: required (a file or a directory in the object store)"
            )
        if not spec.output_uri:
            raise InvalidArgument("spec.output_uri: required (an object-store prefix)")
        try:
            output_prefix = store.key_for(spec.output_uri.rstrip("/") + "/x")[:-1]
        except InvalidArgument as exc:
            raise InvalidArgument(f"spec.output_uri: {exc.message}") from None
        files = await self._input_files(spec.input_uri)
        kind = spec.content_type or tf.content_type_for(files[0].name) or ""
        if kind not in tf.CONTENT_TYPES:
            raise InvalidArgument(
                f"spec.content_type: cannot tell the type of {files[0].name!r}; expected one of "
                f"{', '.join(tf.CONTENT_TYPES)}"
            )
        others = [f.name for f in files if (tf.content_type_for(f.name) or kind) != kind]
        if others and not spec.content_type:
            raise InvalidArgument(
                f"spec.input_uri: files of several types ({', '.join(others[:3])}, ...)"
            )
        split: Literal["line", "none"] = (
            "none" if spec.split_type == rpb.SPLIT_TYPE_NONE else "line"
        )
        if split == "none" and kind == tf.PARQUET:
            raise InvalidArgument(
                "spec.split_type: NONE is not supported for Parquet (use LINE: rows)"
            )
        if kind == tf.JSONL:
            tf.compile_jsonpath(spec.input_filter)
            tf.compile_jsonpath(spec.output_filter)
        percent = spec.max_failure_percent if spec.HasField("max_failure_percent") else 100.0
        if not 0 <= percent <= 100:
            raise InvalidArgument(f"spec.max_failure_percent: expected 0-100, got {percent:g}")
        per_chunk = spec.records_per_chunk or 10_000
        if not 1 <= per_chunk <= 1_000_000:
            raise InvalidArgument(f"spec.records_per_chunk: expected 1-1000000, got {per_chunk}")
        manifest = tf.JobManifest(
            job_id=job_id,
            endpoint=endpoint,
            content_type=kind,
            split_type=split,
            batch_strategy=(
                "single_record"
                if spec.batch_strategy == rpb.BATCH_STRATEGY_SINGLE_RECORD
                else "multi_record"
            ),
            max_payload_bytes=int((spec.max_payload_mb or 6.0) * 1024 * 1024),
            max_records_per_batch=spec.max_records_per_batch or 1000,
            records_per_chunk=per_chunk,
            csv_header=spec.csv_header if spec.HasField("csv_header") else True,
            input_filter=spec.input_filter,
            join_input=spec.join_source == rpb.JOIN_SOURCE_INPUT,
            output_filter=spec.output_filter,
            max_failure_percent=percent,
            output_uri=store.uri_for(output_prefix.rstrip("/") + "/x")[:-1],
        )
        if kind == tf.CSV and manifest.csv_header and spec.input_filter:
            header = await self._csv_header(files[0].uri)
            tf.parse_columns(spec.input_filter, header)
        return manifest, files

    async def _input_files(self, uri: str) -> list[tf.InputFile]:
        store = self.store
        info = None
        if not uri.endswith("/"):
            try:
                info = await store.stat(uri)
            except InvalidArgument as exc:
                raise InvalidArgument(f"spec.input_uri: {exc.message}") from None
            except NotFound:
                info = None
        if info is not None:
            return [tf.InputFile(name=uri.rstrip("/").rsplit("/", 1)[-1], uri=info.uri)]
        try:
            prefix = store.key_for(uri.rstrip("/") + "/x")[:-1]
        except InvalidArgument as exc:
            raise InvalidArgument(f"spec.input_uri: {exc.message}") from None
        found = sorted([o async for o in store.list(prefix)], key=lambda o: o.uri)
        files = [
            tf.InputFile(name=o.uri.rsplit("/", 1)[-1], uri=o.uri)
            for o in found
            if not o.uri.rsplit("/", 1)[-1].startswith(".")
        ]
        if not files:
            raise InvalidArgument(f"spec.input_uri: no object and no files under {uri!r}")
        return files

    async def _csv_header(self, uri: str) -> list[str]:
        async for first in self._lines(uri):
            return [c.strip() for c in first.decode("utf-8", "replace").split(",")]
        return []

    async def _lines(self, uri: str) -> AsyncIterator[bytes]:
        rest = b""
        async for block in self.store.get(uri):
            data = rest + block
            lines = data.split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line
        if rest:
            yield rest

    # --- running -----------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        try:
            if not job.manifest.split_done:
                await self._split(job)
            await self._follow(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("transform job failed", extra={"job_id": job.manifest.job_id})
            job.status.status = "FAILED"
            job.status.reason = f"{type(exc).__name__}: {exc}"
            job.status.end_time = time.time()
            await self._save_status(job)
            await self._event(job, force=True)

    async def _split(self, job: _Job) -> None:
        m, store = job.manifest, self.store
        topic = self.catalogue.batch_chunks(m.endpoint)
        job.status.status = "IN_PROGRESS"
        job.status.start_time = job.status.start_time or time.time()
        await self._save_status(job)
        await self._event(job, force=True)
        index = 0
        records_total = 0
        for item in m.files:
            item.first_chunk = index
            item.chunk_count = 0
            item.records = 0
            if m.content_type == tf.CSV and m.csv_header:
                item.columns = await self._csv_header(item.uri)
            await self._save_manifest(job)
            async for first, count, data in self._chunks(m, item):
                if job.stop_requested.is_set():
                    break
                ref: common_pb2.ObjectRef
                if data is None:
                    ref = common_pb2.ObjectRef(uri=item.uri)
                else:
                    put = await store.put(tf.chunk_key(m.job_id, index, "in"), data)
                    ref = common_pb2.ObjectRef(uri=put.uri, sha256=put.sha256, size_bytes=put.size)
                await self.producer.publish(
                    topic,
                    rev.BatchChunkRequested(
                        job_id=m.job_id,
                        chunk_index=index,
                        input=ref,
                        first_record_index=first,
                        record_count=count,
                        endpoint=m.endpoint,
                    ),
                    key=f"{m.job_id}/{index}",
                    event_id=f"{m.job_id}/{index}",
                )
                index += 1
                item.chunk_count += 1
                item.records += count
                records_total += count
                m.chunks_total = index
                m.records_total = records_total
        m.split_done = True
        await self._save_manifest(job)
        log.info(
            "transform job split",
            extra={"job_id": m.job_id, "chunks": index, "records": records_total},
        )

    async def _chunks(
        self, m: tf.JobManifest, item: tf.InputFile
    ) -> AsyncIterator[tuple[int, int, bytes | None]]:
        """(first record index in the file, record count, chunk bytes or None for Parquet)."""
        if m.content_type == tf.PARQUET:
            from io import BytesIO

            import pyarrow.parquet as pq

            data = await self.store.read_bytes(item.uri)
            meta = await asyncio.to_thread(lambda: pq.ParquetFile(BytesIO(data)).metadata)
            total = int(meta.num_rows)
            for first in range(0, total, m.records_per_chunk):
                yield first, min(m.records_per_chunk, total - first), None
            return
        if m.split_type == "none":
            yield 0, 1, await self.store.read_bytes(item.uri)
            return
        skip_header = m.content_type == tf.CSV and m.csv_header
        buffer: list[bytes] = []
        first = 0
        seen = 0
        async for line in self._lines(item.uri):
            if skip_header:
                skip_header = False
                continue
            if not line.strip():
                seen += 1
                continue
            if not buffer:
                first = seen
            buffer.append(line)
            seen += 1
            if len(buffer) >= m.records_per_chunk:
                yield first, len(buffer), b"\n".join(buffer) + b"\n"
                buffer = []
        if buffer:
            yield first, len(buffer), b"\n".join(buffer) + b"\n"

    async def _follow(self, job: _Job) -> None:
        m, store = job.manifest, self.store
        prefix = tf.job_prefix(m.job_id) + "chunks/"
        while True:
            async for info in store.list(prefix):
                if not info.uri.endswith(".done"):
                    continue
                index = int(info.uri.rsplit("/", 1)[-1].split(".")[0])
                if index in job.done:
                    continue
                counts = json.loads(await store.read_bytes(info.uri))
                job.done[index] = (int(counts["records"]), int(counts["failed"]))
            job.status.chunks_done = len(job.done)
            job.status.records_done = sum(r for r, _ in job.done.values())
            job.status.records_failed = sum(f for _, f in job.done.values())
            if job.stop_requested.is_set() or m.stopped:
                job.status.status = "STOPPED"
                job.status.end_time = time.time()
                await self._save_status(job)
                await self._event(job, force=True)
                return
            if m.split_done and len(job.done) >= m.chunks_total:
                await self._finish(job)
                return
            await self._event(job)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.stop_requested.wait(), self.poll_interval_s)

    async def _finish(self, job: _Job) -> None:
        m, s, store = job.manifest, job.status, self.store
        total = m.records_total
        failed_percent = 100.0 * s.records_failed / total if total else 0.0
        if s.records_failed and failed_percent > m.max_failure_percent:
            s.status = "FAILED"
            s.reason = (
                f"{s.records_failed} of {total} records failed ({failed_percent:.1f}%), more than "
                f"max_failure_percent {m.max_failure_percent:g}"
            )
        out_prefix = store.key_for(m.output_uri.rstrip("/") + "/x")[:-1]
        for item in m.files:
            chunks = range(item.first_chunk, item.first_chunk + item.chunk_count)
            output = await store.put(
                f"{out_prefix}{item.name}.out",
                self._concat(m.job_id, chunks, "out"),
                content_type=m.content_type if m.content_type != tf.PARQUET else tf.JSONL,
            )
            s.outputs.append(
                Ref(
                    uri=output.uri,
                    sha256=output.sha256,
                    size=output.size,
                    content_type=output.content_type,
                )
            )
            if any(job.done.get(i, (0, 0))[1] for i in chunks):
                errors = await store.put(
                    f"{out_prefix}{item.name}.errors.jsonl",
                    self._concat(m.job_id, chunks, "err"),
                    content_type=tf.JSONL,
                )
                s.error_files.append(
                    Ref(
                        uri=errors.uri,
                        sha256=errors.sha256,
                        size=errors.size,
                        content_type=errors.content_type,
                    )
                )
        if s.status != "FAILED":
            s.status = "COMPLETED_WITH_ERRORS" if s.records_failed else "COMPLETED"
            if s.records_failed:
                s.reason = f"{s.records_failed} of {total} records failed; see the error files"
        s.end_time = time.time()
        await self._save_status(job)
        await self._event(job, force=True)
        log.info(
            "transform job finished",
            extra={
                "job_id": m.job_id,
                "status": s.status,
                "records": total,
                "failed": s.records_failed,
                "duration_s": round(s.end_time - s.start_time, 3),
            },
        )

    async def _concat(
        self, job_id: str, chunks: range, suffix: Literal["out", "err"]
    ) -> AsyncIterator[bytes]:
        for index in chunks:
            async for block in self.store.get(
                self.store.uri_for(tf.chunk_key(job_id, index, suffix))
            ):
                yield block

    async def _save_manifest(self, job: _Job) -> None:
        await self.store.put(
            tf.manifest_key(job.manifest.job_id),
            job.manifest.model_dump_json().encode(),
            content_type="application/json",
        )

    async def _save_status(self, job: _Job) -> None:
        await self.store.put(
            _status_key(job.manifest.job_id),
            job.status.model_dump_json().encode(),
            content_type="application/json",
        )

    async def _event(self, job: _Job, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - job.last_event < 1.0:
            return
        job.last_event = now
        s, m = job.status, job.manifest
        message = rev.TransformJobStatusChanged(
            job_id=m.job_id,
            status=_PB_STATUS[s.status],
            records_done=s.records_done,
            records_total=m.records_total if m.split_done else 0,
            records_failed=s.records_failed,
            reason=s.reason,
            change_time=_ts(time.time()),
        )
        if s.outputs:
            message.output.CopyFrom(
                common_pb2.ObjectRef(uri=s.outputs[0].uri, sha256=s.outputs[0].sha256)
            )
        try:
            await self.producer.publish(
                self.catalogue.transform_job_status_changed, message, key=m.job_id
            )
        except Exception:
            log.warning(
                "cannot publish transform job status", exc_info=True, extra={"job_id": m.job_id}
            )


def _spec_dict(spec: rpb.TransformJobSpec, manifest: tf.JobManifest) -> dict[str, Any]:
    from google.protobuf import json_format

    out = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    out["job_id"] = manifest.job_id
    out["content_type"] = manifest.content_type
    return out


def _spec_pb(data: dict[str, Any]) -> rpb.TransformJobSpec:
    from google.protobuf import json_format

    return json_format.ParseDict(data, rpb.TransformJobSpec(), ignore_unknown_fields=True)
