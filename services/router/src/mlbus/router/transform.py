"""Batch transform jobs: split the input into chunks for the endpoint's workers, follow
their progress in the object store, assemble the output in input order.

The contract with the workers is :mod:`mlbus.core.transform`. The router is the only
writer of ``job.json`` and ``status.json``; a chunk counts as done once its ``.done``
marker exists, so progress survives worker crashes (redelivered chunks are skipped or
finish the same files) and router restarts (unfinished jobs are picked up at start: the
split is redone — same chunks, same keys — and chunks already done are skipped).

A job may also run on behalf of the router's asynchronous inference (InvokeAsync with a
file of rows): :meth:`TransformService.create_internal` starts it with an
:class:`InternalJob` that fixes where its output goes, pins the input's SHA-256, sets a
deadline and converts Parquet input into CSV chunks (so workers read each chunk alone, never
the whole file); the hooks given to :meth:`TransformService.on_finished` then run once the
job has ended — also for a job that ended before a router restart, until they succeed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from mlbus.common.v1 import common_pb2
from mlbus.core import async_inference as ai
from mlbus.core import transform as tf
from mlbus.core.errors import AlreadyExists, InvalidArgument, MlbusError, NotFound
from mlbus.core.messaging import EventProducer, TopicCatalogue
from mlbus.core.messaging.topics import check_endpoint_name
from mlbus.core.storage import IntegrityError, LocalObjectStore, ObjectStore
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.v1 import events_pb2 as rev
from mlbus.router.v1 import router_pb2 as rpb

log = logging.getLogger(__name__)

#: Largest max_payload_mb of a job (SageMaker's MaxPayloadInMB allows up to 100).
MAX_PAYLOAD_MB = 100
#: Largest max_records_per_batch of a job.
MAX_RECORDS_PER_BATCH = 100_000
#: Bytes read from an input file at a time while splitting it by line. Larger blocks split
#: no faster, but they are allocated on several threads, and glibc's arenas then keep more:
#: splitting 1 GiB grew the router's peak RSS by ~150 MiB with 8 MiB blocks, ~70 with 1 MiB.
SPLIT_BLOCK_BYTES = 1024 * 1024
#: Chunks being written to the object store and published at once during a split.
SPLIT_IN_FLIGHT = 4
#: Default chunk size (records_per_chunk not given): about this many bytes of input, as
#: SageMaker's MaxPayloadInMB. A chunk's fixed costs (a Kafka record, two or three objects
#: written, a poll of the worker) are then small next to its parse: 10,000-record chunks of
#: the benchmark's 222 MB CSV cost ~25 % more CPU than 8 MiB ones (~36,000 records).
CHUNK_BYTES = 8 * 1024 * 1024
#: ... but a smaller input still gives at least this many chunks (to spread over several
#: workers), of at least MIN_CHUNK_BYTES.
MIN_CHUNKS = 16
MIN_CHUNK_BYTES = 64 * 1024
#: Most rows in a Parquet chunk sized by bytes (workers read Parquet rows one by one).
PARQUET_CHUNK_ROWS = 10_000
#: Once the split is done and at most this many chunks are left, ``.done`` markers are
#: looked for every FINAL_POLL_INTERVAL_S instead of every ``poll_interval_s``: the job's end
#: is then seen (and the output assembled) sooner.
FINAL_CHUNKS = 8
FINAL_POLL_INTERVAL_S = 0.05
#: Job ids starting with this are reserved for the jobs InvokeAsync starts.
INTERNAL_JOB_PREFIX = "async."
#: Bytes hashed or copied at a time when a Parquet input is checked or fetched.
COPY_BLOCK_BYTES = 8 * 1024 * 1024
#: Longest wait between two attempts of a failing finish hook.
HOOK_BACKOFF_MAX_S = 30.0
#: ASCII whitespace (what ``bytes.strip`` removes): a line of only these is blank.
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True

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


class InternalJob(BaseModel):
    """What a job run for another part of the router (an InvokeAsync rows input) fixes."""

    #: Keys of the assembled output and (if records failed) the errors file.
    output_key: str
    errors_key: str
    output_content_type: str
    #: Content type of the input file as given (the manifest names the chunks' format).
    source_content_type: str
    #: SHA-256 the input must have (checked while it is read); empty: not checked.
    input_sha256: str = ""
    #: Epoch seconds after which the job is given up (FAILED, DEADLINE_EXCEEDED); 0: none.
    deadline: float = 0.0
    #: Parquet input is cut into CSV chunks (no header; the columns are in the manifest).
    parquet_to_csv: bool = False
    #: Opaque to this service: what the finish hooks need.
    owner: dict[str, Any] = Field(default_factory=dict)


class JobStatus(BaseModel):
    """``status.json``: where a job is."""

    job_id: str
    status: Status = "PENDING"
    reason: str = ""
    #: gRPC status code name of a FAILED job's cause (e.g. INVALID_ARGUMENT).
    reason_code: str = ""
    records_done: int = 0
    records_failed: int = 0
    chunks_done: int = 0
    create_time: float = Field(default_factory=time.time)
    start_time: float = 0.0
    end_time: float = 0.0
    outputs: list[Ref] = Field(default_factory=list)
    error_files: list[Ref] = Field(default_factory=list)
    spec: dict[str, Any] = Field(default_factory=dict)
    internal: InternalJob | None = None
    #: Set once the finish hooks of an internal job succeeded.
    hooks_done: bool = False


def _status_key(job_id: str) -> str:
    return tf.job_prefix(job_id) + "status.json"


def _ts(seconds: float) -> Timestamp:
    stamp = Timestamp()
    if seconds:
        stamp.FromDatetime(datetime.fromtimestamp(seconds, UTC))
    return stamp


#: A finish hook: called with the job's manifest and final status.
FinishHook = Callable[[tf.JobManifest, JobStatus], Awaitable[None]]


def internal_job_id(endpoint: str, inference_id: str) -> str:
    """The id of the job that runs ``endpoint``'s asynchronous inference ``inference_id``
    (readable when it fits in an id, else a digest)."""
    readable = f"{INTERNAL_JOB_PREFIX}{endpoint}.{inference_id}"
    if len(readable) <= 200:
        return readable
    digest = hashlib.sha256(f"{endpoint}/{inference_id}".encode()).hexdigest()[:40]
    return f"{INTERNAL_JOB_PREFIX}{digest}"


class _Job:
    def __init__(self, manifest: tf.JobManifest, status: JobStatus) -> None:
        self.manifest = manifest
        self.status = status
        self.done: dict[int, tuple[int, int]] = {}
        self.task: asyncio.Task[None] | None = None
        self.stop_requested = asyncio.Event()
        self.last_event = 0.0
        #: Set whenever the router looked for new done markers.
        self.polled = asyncio.Event()
        #: Index of the file being split in this run (its first_chunk is this run's).
        self.splitting = -1
        #: Set when the job's outputs may become visible (see _stream_outputs).
        self.release = asyncio.Event()
        self.outputs: asyncio.Task[list[Ref]] | None = None


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
        self._hooks: list[FinishHook] = []
        #: Internal jobs being created (a second InvokeAsync with the id waits for the first).
        self._creating: dict[str, asyncio.Future[None]] = {}

    @property
    def store(self) -> ObjectStore:
        """The object store (opened when the router starts)."""
        if self._store is None:
            raise RuntimeError("the object store is not open yet")
        return self._store

    @store.setter
    def store(self, store: ObjectStore) -> None:
        self._store = store

    def on_finished(self, hook: FinishHook) -> None:
        """Run ``hook`` when an internal job has ended (retried until it returns)."""
        self._hooks.append(hook)

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
            elif status.internal is not None and not status.hooks_done:
                # Ended before the router stopped, but its outcome may not be out yet.
                job.task = asyncio.create_task(
                    self._run_hooks(job), name=f"transform-hooks-{status.job_id}"
                )

    async def stop(self) -> None:
        """Stop following jobs (they resume at the next start)."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- API ---------------------------------------------------------------------------

    async def create(self, spec: rpb.TransformJobSpec) -> rpb.TransformJob:
        """Check ``spec``, record the job and start it in the background."""
        if spec.job_id.startswith(INTERNAL_JOB_PREFIX):
            raise InvalidArgument(
                f"spec.job_id {spec.job_id!r}: ids starting with {INTERNAL_JOB_PREFIX!r} are "
                "reserved for the jobs InvokeAsync starts for files of rows"
            )
        # The id is taken before the first await: two calls with the same job_id at once
        # must not both create it (each would publish every chunk).
        job_id = spec.job_id
        if job_id and (job_id in self._jobs or job_id in self._creating):
            raise AlreadyExists(f"transform job {job_id!r} exists")
        future: asyncio.Future[None] | None = None
        if job_id:
            future = self._creating[job_id] = asyncio.get_running_loop().create_future()
        try:
            manifest, files = await self._plan(spec)
            if manifest.job_id in self._jobs or await self.store.exists(
                self.store.uri_for(_status_key(manifest.job_id))
            ):
                raise AlreadyExists(f"transform job {manifest.job_id!r} exists")
            job = await self._start(spec, manifest, files, None)
        finally:
            if future is not None:
                self._creating.pop(job_id, None)
                future.set_result(None)
        return self.describe_job(job)

    async def create_internal(
        self, spec: rpb.TransformJobSpec, internal: InternalJob
    ) -> tuple[rpb.TransformJob, InternalJob]:
        """Start the job ``spec.job_id`` for ``internal``, or return the one with that id
        (created before, or being created): its description and its InternalJob, which is
        the first caller's."""
        job_id = spec.job_id
        while True:
            job = self._jobs.get(job_id)
            if job is not None and job.status.internal is not None:
                return self.describe_job(job), job.status.internal
            if job is not None:
                raise AlreadyExists(f"transform job {job_id!r} exists and is not internal")
            pending = self._creating.get(job_id)
            if pending is None:
                break
            # Another call is creating it: wait, then look again (and create it if that
            # call failed).
            await asyncio.wait([pending])
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creating[job_id] = future
        try:
            manifest, files = await self._plan(spec)
            if internal.parquet_to_csv:
                # Workers get CSV chunks (no header: the manifest holds the column names).
                manifest.content_type = tf.CSV
                manifest.csv_header = False
            job = await self._start(spec, manifest, files, internal)
        finally:
            self._creating.pop(job_id, None)
            future.set_result(None)
        return self.describe_job(job), internal

    def find(self, job_id: str) -> tuple[tf.JobManifest, JobStatus] | None:
        """The manifest and status of job ``job_id``, if it is known."""
        job = self._jobs.get(job_id)
        return (job.manifest, job.status) if job is not None else None

    async def _start(
        self,
        spec: rpb.TransformJobSpec,
        manifest: tf.JobManifest,
        files: list[tf.InputFile],
        internal: InternalJob | None,
    ) -> _Job:
        manifest.files = files
        status = JobStatus(
            job_id=manifest.job_id, spec=_spec_dict(spec, manifest), internal=internal
        )
        if internal is not None:
            status.spec["content_type"] = internal.source_content_type
        job = _Job(manifest, status)
        self._jobs[manifest.job_id] = job
        try:
            await self._save_manifest(job)
            await self._save_status(job)
        except BaseException:
            del self._jobs[manifest.job_id]  # not recorded: a retry creates it afresh
            raise
        job.task = asyncio.create_task(self._run(job), name=f"transform-{manifest.job_id}")
        log.info(
            "transform job created",
            extra={
                "job_id": manifest.job_id,
                "endpoint": manifest.endpoint,
                "files": [f.name for f in files],
                "internal": internal is not None,
            },
        )
        return job

    def get(self, job_id: str) -> rpb.TransformJob:
        """The job's description; NOT_FOUND if there is none."""
        if not job_id:
            raise InvalidArgument("job_id: required")
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
        if not job_id:
            raise InvalidArgument("job_id: required")
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
        try:
            job_id = ai.check_inference_id(spec.job_id or ai.new_inference_id())
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"spec.job_id: {exc.message.removeprefix('inference_id ')}"
            ) from None
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
        csv_header = spec.csv_header if spec.HasField("csv_header") else True
        for field, text in (
            ("input_filter", spec.input_filter),
            ("output_filter", spec.output_filter),
        ):
            if not text:
                continue
            try:
                if kind == tf.JSONL:
                    tf.compile_jsonpath(text)
                elif kind == tf.CSV and (field == "output_filter" or not csv_header):
                    tf.parse_columns(text, [])  # by 0-based index only
            except InvalidArgument as exc:
                how = (
                    " (a CSV output filter picks columns of the output line by 0-based index)"
                    if field == "output_filter" and kind == tf.CSV
                    else " (without a header, CSV columns are picked by 0-based index)"
                    if kind == tf.CSV
                    else ""
                )
                raise InvalidArgument(f"spec.{field}: {exc.message}{how}") from None
        payload_mb = spec.max_payload_mb
        if payload_mb and not (math.isfinite(payload_mb) and 0 < payload_mb <= MAX_PAYLOAD_MB):
            raise InvalidArgument(
                f"spec.max_payload_mb: expected 0 (the default, 6) or a number above 0 and at "
                f"most {MAX_PAYLOAD_MB}, got {payload_mb:g}"
            )
        per_batch = spec.max_records_per_batch
        if per_batch and not 1 <= per_batch <= MAX_RECORDS_PER_BATCH:
            raise InvalidArgument(
                f"spec.max_records_per_batch: expected 0 (the default, 1000) or 1-"
                f"{MAX_RECORDS_PER_BATCH}, got {per_batch}"
            )
        percent = spec.max_failure_percent if spec.HasField("max_failure_percent") else 100.0
        if not 0 <= percent <= 100:
            raise InvalidArgument(f"spec.max_failure_percent: expected 0-100, got {percent:g}")
        per_chunk = spec.records_per_chunk
        if per_chunk and not 1 <= per_chunk <= 1_000_000:
            raise InvalidArgument(f"spec.records_per_chunk: expected 1-1000000, got {per_chunk}")
        total_bytes = sum(f.size for f in files)
        chunk_bytes = (
            0
            if per_chunk
            else min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, -(-total_bytes // MIN_CHUNKS)))
        )
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
            records_per_chunk=per_chunk or 0,
            chunk_bytes=chunk_bytes,
            csv_header=csv_header,
            input_filter=spec.input_filter,
            join_input=spec.join_source == rpb.JOIN_SOURCE_INPUT,
            output_filter=spec.output_filter,
            max_failure_percent=percent,
            output_uri=store.uri_for(output_prefix.rstrip("/") + "/x")[:-1],
        )
        if kind == tf.CSV and manifest.csv_header and spec.input_filter:
            header = await self._csv_header(files[0].uri)
            try:
                tf.parse_columns(spec.input_filter, header)
            except InvalidArgument as exc:
                raise InvalidArgument(f"spec.input_filter: {exc.message}") from None
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
            return [
                tf.InputFile(
                    name=uri.rstrip("/").rsplit("/", 1)[-1],
                    uri=info.uri,
                    size=info.size,
                    modified=info.modified.timestamp(),
                )
            ]
        try:
            prefix = store.key_for(uri.rstrip("/") + "/x")[:-1]
        except InvalidArgument as exc:
            raise InvalidArgument(f"spec.input_uri: {exc.message}") from None
        found = sorted([o async for o in store.list(prefix)], key=lambda o: o.uri)
        files = [
            tf.InputFile(
                name=o.uri.rsplit("/", 1)[-1],
                uri=o.uri,
                size=o.size,
                modified=o.modified.timestamp(),
            )
            for o in found
            if not o.uri.rsplit("/", 1)[-1].startswith(".")
        ]
        if not files:
            raise InvalidArgument(f"spec.input_uri: no object and no files under {uri!r}")
        return files

    async def _csv_header(self, uri: str) -> list[str]:
        """The column names in the first line of a CSV file (a CSV record itself)."""
        first = b""
        async for block in self.store.get(uri, chunk_size=64 * 1024):
            first += block
            if b"\n" in first:
                break
        if not first:
            return []
        line = first.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8-sig", "replace")
        return [c.strip() for c in next(csv.reader([line]), [""])]

    # --- running -----------------------------------------------------------------------

    async def _run(self, job: _Job) -> None:
        # Progress is followed while the input is still being split: workers finish the
        # first chunks long before the last ones are cut.
        follower: asyncio.Task[None] | None = None
        try:
            if not job.manifest.split_done:
                follower = asyncio.create_task(self._follow(job), name="transform-follow")
                await self._split(job)
                await follower
            else:
                await self._follow(job)
        except asyncio.CancelledError:
            if follower is not None:
                follower.cancel()
            raise
        except Exception as exc:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(BaseException):
                    await follower
            if isinstance(exc, MlbusError):
                log.warning(
                    "transform job failed: %s",
                    exc.message,
                    extra={"job_id": job.manifest.job_id},
                )
                job.status.reason = exc.message
                job.status.reason_code = exc.code.name
            else:
                log.exception("transform job failed", extra={"job_id": job.manifest.job_id})
                job.status.reason = f"{type(exc).__name__}: {exc}"
                job.status.reason_code = "INTERNAL"
            job.status.status = "FAILED"
            job.status.end_time = time.time()
            # Workers skip the chunks still queued.
            job.manifest.stopped = True
            with contextlib.suppress(Exception):
                await self._save_manifest(job)
            await self._save_status(job)
            await self._event(job, force=True)
        if job.status.internal is not None:
            await self._run_hooks(job)

    async def _run_hooks(self, job: _Job) -> None:
        """The finish hooks of an ended internal job, retried with backoff until they pass;
        then its chunk inputs and outputs are deleted (the output file holds the lines)."""
        pause = 0.5
        while True:
            try:
                for hook in self._hooks:
                    await hook(job.manifest, job.status)
                break
            except Exception:
                log.warning(
                    "finish hook of transform job failed; retrying in %.1f s",
                    pause,
                    exc_info=True,
                    extra={"job_id": job.manifest.job_id},
                )
                await asyncio.sleep(pause)
                pause = min(pause * 2, HOOK_BACKOFF_MAX_S)
        store = self.store
        prefix = tf.job_prefix(job.manifest.job_id) + "chunks/"
        with contextlib.suppress(Exception):
            async for info in store.list(prefix):
                if info.uri.endswith((".in", ".out")):
                    await store.delete(info.uri)
        job.status.hooks_done = True
        await self._save_status(job)

    async def _split(self, job: _Job) -> None:
        m = job.manifest
        job.status.status = "IN_PROGRESS"
        job.status.start_time = job.status.start_time or time.time()
        await self._save_status(job)
        await self._event(job, force=True)
        index = 0
        records_total = 0
        # Up to SPLIT_IN_FLIGHT chunks are written and published at once while the next
        # ones are cut: a chunk's write waits on the disk and its publish on the broker.
        in_flight: set[asyncio.Task[None]] = set()
        internal = job.status.internal
        sha = (internal.input_sha256 if internal is not None else "") or None
        try:
            for position, item in enumerate(m.files):
                item.first_chunk = index
                item.chunk_count = 0
                item.records = 0
                job.splitting = position
                pieces: AsyncGenerator[Piece | None, None]
                if internal is not None and internal.parquet_to_csv:
                    pieces = self._parquet_chunks(m, item, sha, as_csv=True)
                elif m.content_type == tf.PARQUET:
                    pieces = self._parquet_chunks(m, item, sha, as_csv=False)
                else:
                    if m.content_type == tf.CSV and m.csv_header:
                        item.columns = await self._csv_header(item.uri)
                    pieces = self._chunks(m, item, sha)
                async with contextlib.aclosing(pieces):
                    if m.content_type == tf.PARQUET or (
                        internal is not None and internal.parquet_to_csv
                    ):
                        # Its first item is a placeholder: the schema is in item.columns then.
                        await anext(pieces, None)
                    await self._save_manifest(job)
                    async for piece in pieces:
                        if job.stop_requested.is_set():
                            break
                        assert piece is not None
                        while len(in_flight) >= SPLIT_IN_FLIGHT:
                            done, in_flight = await asyncio.wait(
                                in_flight, return_when=asyncio.FIRST_COMPLETED
                            )
                            for task in done:
                                task.result()
                        in_flight.add(asyncio.create_task(self._send_chunk(m, item, index, piece)))
                        index += 1
                        item.chunk_count += 1
                        item.records += piece.count
                        records_total += piece.count
                        m.chunks_total = index
                        m.records_total = records_total
            while in_flight:
                done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()
        finally:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
        m.split_done = True
        await self._save_manifest(job)
        log.info(
            "transform job split",
            extra={"job_id": m.job_id, "chunks": index, "records": records_total},
        )

    async def _send_chunk(
        self, m: tf.JobManifest, item: tf.InputFile, index: int, piece: Piece
    ) -> None:
        """Write a chunk file (when the chunk is not a part of the input) and publish it."""
        ref: common_pb2.ObjectRef
        if piece.data is None:
            ref = common_pb2.ObjectRef(uri=item.uri)
        else:
            put = await self.store.put(tf.chunk_key(m.job_id, index, "in"), piece.data)
            ref = common_pb2.ObjectRef(uri=put.uri, sha256=put.sha256, size_bytes=put.size)
        await self.producer.publish(
            self.catalogue.batch_chunks(m.endpoint),
            rev.BatchChunkRequested(
                job_id=m.job_id,
                chunk_index=index,
                input=ref,
                first_record_index=piece.first,
                record_count=piece.count,
                endpoint=m.endpoint,
                input_offset=piece.offset,
                input_length=piece.length,
            ),
            key=f"{m.job_id}/{index}",
            event_id=f"{m.job_id}/{index}",
        )

    async def _chunks(
        self, m: tf.JobManifest, item: tf.InputFile, sha256: str | None = None
    ) -> AsyncGenerator[Piece | None, None]:
        """The chunks of a CSV or JSON Lines file: byte ranges of whole lines (or, split type
        NONE, the whole file). The file is read once, a block at a time, and nothing of it is
        written: workers read their ranges. With ``sha256`` the input is checked on the way
        (InvalidArgument at the end if it differs: the job fails before it is assembled)."""
        if m.split_type == "none":
            yield Piece(0, 1)
            return
        cutter = LineCutter(
            m.records_per_chunk if not m.chunk_bytes else 0,
            target_bytes=m.chunk_bytes,
            skip_header=m.content_type == tf.CSV and m.csv_header,
        )
        try:
            async for block in self.store.get(
                item.uri, chunk_size=SPLIT_BLOCK_BYTES, expected_sha256=sha256
            ):
                # numpy over a few MB: off the event loop, which serves real-time traffic.
                for piece in await asyncio.to_thread(cutter.feed, block):
                    yield piece
        except IntegrityError as exc:
            raise InvalidArgument(f"input_sha256: {exc.message}") from None
        for piece in cutter.finish():
            yield piece

    async def _parquet_chunks(
        self, m: tf.JobManifest, item: tf.InputFile, sha256: str | None, *, as_csv: bool
    ) -> AsyncGenerator[Piece | None, None]:
        """A Parquet file as chunk files read a batch at a time (memory: about a row group
        and a chunk): Parquet files of the chunk's rows, or (``as_csv``, for InvokeAsync) CSV
        without a header. The first item is a placeholder (None) yielded once
        ``item.columns`` holds the file's column names."""
        async with self._local_file(item.uri, sha256) as path:
            chunks = await asyncio.to_thread(_ParquetChunks, path, m, as_csv=as_csv)
            try:
                item.columns = chunks.columns
                # Checked once here, against the file's schema: a filter naming no column
                # would otherwise fail every chunk on the workers.
                try:
                    tf.parse_columns(m.input_filter, item.columns)
                except InvalidArgument as exc:
                    raise InvalidArgument(f"spec.input_filter: {exc.message}") from None
                yield None
                first = 0
                while True:
                    piece = await asyncio.to_thread(chunks.next_chunk)
                    if piece is None:
                        return
                    count, data = piece
                    yield Piece(first, count, data=data)
                    first += count
            finally:
                chunks.close()

    @contextlib.asynccontextmanager
    async def _local_file(self, uri: str, sha256: str | None) -> AsyncIterator[Path]:
        """A local path holding the object at ``uri`` (the store's own file when the store
        is a local directory, else a temporary copy), checked against ``sha256``."""
        store = self.store
        if isinstance(store, LocalObjectStore):
            path = store.root / store.key_for(uri)
            if sha256 is not None:
                info = await store.stat(uri)
                actual = info.sha256 or await asyncio.to_thread(_file_sha256, path)
                if actual != sha256:
                    raise InvalidArgument(
                        f"input_sha256: expected {sha256}, the object at {uri} has {actual}"
                    )
            yield path
            return
        handle, name = tempfile.mkstemp(prefix="mlbus-parquet-", suffix=".parquet")
        try:
            with os.fdopen(handle, "wb") as out:
                try:
                    async for block in store.get(
                        uri, chunk_size=COPY_BLOCK_BYTES, expected_sha256=sha256
                    ):
                        await asyncio.to_thread(out.write, block)
                except IntegrityError as exc:
                    raise InvalidArgument(f"input_sha256: {exc.message}") from None
            yield Path(name)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(name)

    async def _follow(self, job: _Job) -> None:
        job.release.clear()
        job.outputs = asyncio.create_task(
            self._stream_outputs(job), name=f"transform-outputs-{job.manifest.job_id}"
        )
        try:
            await self._follow_chunks(job)
        finally:
            if not job.outputs.done():
                job.outputs.cancel()  # stopped, failed: nothing becomes visible
                await asyncio.gather(job.outputs, return_exceptions=True)

    async def _follow_chunks(self, job: _Job) -> None:
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
            job.polled.set()
            job.status.chunks_done = len(job.done)
            job.status.records_done = sum(r for r, _ in job.done.values())
            job.status.records_failed = sum(f for _, f in job.done.values())
            internal = job.status.internal
            if (
                internal is not None
                and internal.deadline
                and time.time() > internal.deadline
                and not (m.split_done and len(job.done) >= m.chunks_total)
            ):
                await self._give_up(job, internal.deadline)
                return
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
            interval = self.poll_interval_s
            if m.split_done and m.chunks_total - len(job.done) <= FINAL_CHUNKS:
                interval = min(interval, FINAL_POLL_INTERVAL_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job.stop_requested.wait(), interval)

    async def _give_up(self, job: _Job, deadline: float) -> None:
        """An internal job past its deadline: FAILED; workers skip its remaining chunks."""
        s = job.status
        s.status = "FAILED"
        s.reason_code = "DEADLINE_EXCEEDED"
        s.reason = (
            f"not finished before its deadline {datetime.fromtimestamp(deadline, UTC).isoformat()}"
            f" ({s.records_done} of {job.manifest.records_total or '?'} records done)"
        )
        s.end_time = time.time()
        job.manifest.stopped = True
        job.stop_requested.set()  # ends the split, if it is still going
        await self._save_manifest(job)
        await self._save_status(job)
        await self._event(job, force=True)

    async def _finish(self, job: _Job) -> None:
        m, s = job.manifest, job.status
        total = m.records_total
        failed_percent = 100.0 * s.records_failed / total if total else 0.0
        if s.records_failed and failed_percent > m.max_failure_percent:
            s.status = "FAILED"
            s.reason_code = "INVALID_ARGUMENT"
            s.reason = (
                f"{s.records_failed} of {total} records failed ({failed_percent:.1f}%), more than "
                f"max_failure_percent {m.max_failure_percent:g}"
            )
        changed = await self._changed_input(m)
        if changed:
            # Chunks read the input by byte range: some may have read another version of it.
            s.status = "FAILED"
            s.reason_code = "FAILED_PRECONDITION"
            s.reason = f"{changed}; an input must not change while its job runs"
            s.end_time = time.time()
            await self._save_status(job)
            await self._event(job, force=True)
            return
        internal = s.internal
        out_prefix = self._output_prefix(m)
        assert job.outputs is not None
        job.release.set()
        s.outputs, s.error_files = await job.outputs, []
        for item in m.files:
            chunks = range(item.first_chunk, item.first_chunk + item.chunk_count)
            if any(job.done.get(i, (0, 0))[1] for i in chunks):
                errors = await self._assemble(
                    (
                        internal.errors_key
                        if internal is not None
                        else f"{out_prefix}{item.name}.errors.jsonl"
                    ),
                    self._concat(
                        m.job_id, [i for i in chunks if job.done.get(i, (0, 0))[1]], "err"
                    ),
                    tf.JSONL,
                    if_absent=internal is not None,
                )
                s.error_files.append(errors)
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

    def _output_prefix(self, m: tf.JobManifest) -> str:
        return self.store.key_for(m.output_uri.rstrip("/") + "/x")[:-1]

    async def _stream_outputs(self, job: _Job) -> list[Ref]:
        """Assemble the job's outputs, one file after the other, while it runs: each chunk's
        lines are written out as soon as it and the chunks before it are done, so at the
        end only the last ones are left to copy. An output is committed (made visible) only
        once :meth:`_finish` sets ``job.release``; cancelled, it leaves nothing."""
        m, internal = job.manifest, job.status.internal
        out_prefix = self._output_prefix(m)
        refs = []
        for position, item in enumerate(m.files):
            refs.append(
                await self._assemble(
                    (
                        internal.output_key
                        if internal is not None
                        else f"{out_prefix}{item.name}.out"
                    ),
                    self._when_done(job, position),
                    (
                        internal.output_content_type
                        if internal is not None
                        else m.content_type
                        if m.content_type != tf.PARQUET
                        else tf.JSONL
                    ),
                    if_absent=internal is not None,
                )
            )
        return refs

    async def _when_done(self, job: _Job, position: int) -> AsyncGenerator[bytes, None]:
        """The output lines of the file at ``position``, chunk by chunk in order, each once
        it is done; then waits for ``job.release``."""
        m, item = job.manifest, job.manifest.files[position]

        async def polled() -> None:
            job.polled.clear()
            await job.polled.wait()

        while not (m.split_done or job.splitting >= position):
            await polled()  # the split has not reached the file (in this run) yet
        index = item.first_chunk
        while True:
            complete = m.split_done or job.splitting > position
            if complete and index >= item.first_chunk + item.chunk_count:
                break
            if index not in job.done:
                await polled()
                continue
            async for block in self._concat(m.job_id, [index], "out"):
                yield block
            index += 1
        await job.release.wait()

    async def _changed_input(self, m: tf.JobManifest) -> str:
        """What changed in the job's input files since the job was planned ('' if nothing)."""
        for item in m.files:
            if not item.modified:
                continue  # planned before sizes were recorded
            try:
                info = await self.store.stat(item.uri)
            except NotFound:
                return f"input file {item.uri} was deleted"
            if info.size != item.size or info.modified.timestamp() != item.modified:
                return (
                    f"input file {item.uri} changed (size {item.size} → {info.size}, modified "
                    f"{datetime.fromtimestamp(item.modified, UTC).isoformat()} → "
                    f"{info.modified.isoformat()})"
                )
        return ""

    async def _assemble(
        self, key: str, body: AsyncGenerator[bytes, None], content_type: str, *, if_absent: bool
    ) -> Ref:
        """Write an assembled file. ``if_absent`` (internal jobs, whose output is a visible
        result): a file written before a restart stays, and is described as it is."""
        store = self.store
        try:
            ref = await store.put(key, body, content_type=content_type, if_absent=if_absent)
        except AlreadyExists:
            await body.aclose()
            info = await store.stat(store.uri_for(key))
            return Ref(
                uri=info.uri,
                sha256=info.sha256 or "",
                size=info.size,
                content_type=info.content_type or content_type,
            )
        return Ref(uri=ref.uri, sha256=ref.sha256, size=ref.size, content_type=ref.content_type)

    async def _concat(
        self, job_id: str, chunks: Sequence[int], suffix: Literal["out", "err"]
    ) -> AsyncGenerator[bytes, None]:
        # Chunks without failed records may have no .err (workers write one only if needed).
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


@dataclass(frozen=True, slots=True)
class Piece:
    """One chunk cut from an input file: the index of its first line (after any header) or
    row in the file, its record count, and either its bytes in the file (``offset``,
    ``length``; length 0 with no data: the whole file) or the chunk file to write."""

    first: int
    count: int
    offset: int = 0
    length: int = 0
    data: bytes | None = None


class LineCutter:
    """Cuts a file fed block by block into chunks of whole lines: ``records`` non-blank
    lines each, or (``target_bytes``) about that many bytes each — a chunk ends with the
    first record line that takes it to ``target_bytes`` or more.

    A chunk is a byte range of the file (:class:`Piece` ``offset`` and ``length``, line ends
    included); blank lines (empty or whitespace only) are no records but stay in the chunk,
    so a worker numbers the chunk's lines as the file does; lines after the last record
    (blank ones at the end of the file) make no chunk. Newlines are found with numpy, a
    block at a time; nothing of the file is kept but an incomplete last line.
    """

    def __init__(
        self, records: int = 0, *, target_bytes: int = 0, skip_header: bool = False
    ) -> None:
        if (records >= 1) == (target_bytes >= 1):
            raise ValueError(
                f"expected records or target_bytes of at least 1, got {records}, {target_bytes}"
            )
        self.records = records
        self.target_bytes = target_bytes
        self._skip_header = skip_header
        self._partial = b""  # an incomplete last line
        self._offset = 0  # file offset of its first byte (of the next block, if none)
        self._start = 0  # file offset of the chunk being filled
        self._end = 0  # file offset after the last complete line
        self._filled = 0  # records in the chunk being filled
        self._first = 0  # line index of its first line
        self._line = 0  # line index of the next complete line

    def feed(self, block: bytes) -> list[Piece]:
        """The chunks completed by ``block``."""
        out: list[Piece] = []
        begin = 0
        if self._partial:
            # Complete the carried line alone: joining it to the whole block would copy it.
            newline = block.find(b"\n")
            if newline < 0:
                self._partial += block
                return []
            head = self._partial + block[: newline + 1]
            out = self._lines(head, 0, len(head), self._offset)
            self._offset += len(head)
            self._partial = b""
            begin = newline + 1
        end = block.rfind(b"\n", begin) + 1
        if end > begin:
            out += self._lines(block, begin, end, self._offset)
            self._offset += end - begin
        else:
            end = begin
        self._partial = block[end:]
        return out

    def finish(self) -> list[Piece]:
        """The last chunk (including a last line without a line end)."""
        out: list[Piece] = []
        if self._partial:
            size = self._offset + len(self._partial)
            # Cut as if the line ended there; the line end it does not have is not in a range.
            out = [
                Piece(p.first, p.count, p.offset, min(p.offset + p.length, size) - p.offset)
                for p in self.feed(b"\n")
            ]
            self._end = min(self._end, size)
            self._partial = b""
        if self._filled:
            out.append(Piece(self._first, self._filled, self._start, self._end - self._start))
            self._filled = 0
        return out

    def _lines(self, data: bytes, begin: int, end: int, base: int) -> list[Piece]:
        """The chunks completed by the whole lines ``data[begin:end]``, whose first byte is at
        file offset ``base``."""
        view = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=begin)
        ends = np.flatnonzero(view == 10)  # index of each line's newline
        start = 0
        if self._skip_header:
            self._skip_header = False
            start = int(ends[0]) + 1
            ends = ends[1:]
            self._start = self._end = base + start
            if not len(ends):
                return []
        # Blank: empty, or (rarely) starting with whitespace and holding nothing else.
        record: np.ndarray | None = None  # None: every line is a record
        maybe = np.flatnonzero(view[np.concatenate(([start], ends[:-1] + 1))] <= 32)
        for k in maybe.tolist():
            line_start = start if k == 0 else int(ends[k - 1]) + 1
            if not view[line_start : int(ends[k])].tobytes().strip():
                if record is None:
                    record = np.ones(len(ends), dtype=bool)
                record[k] = False
        # Records of this block up to and including each line.
        done = np.arange(1, len(ends) + 1) if record is None else np.cumsum(record)
        if self.records:
            if record is None:
                first_cut = self.records - self._filled - 1
                cuts = list(range(first_cut, len(ends), self.records))
            else:
                cuts = np.flatnonzero(record & ((done + self._filled) % self.records == 0)).tolist()
        else:
            cuts = []
            lines = np.arange(len(ends)) if record is None else np.flatnonzero(record)
            stops = ends[lines] + 1 + base  # file offset after each record line
            chunk_start = self._start
            while True:
                j = int(np.searchsorted(stops, chunk_start + self.target_bytes))
                if j >= len(stops):
                    break
                cuts.append(int(lines[j]))
                chunk_start = int(stops[j])
        out: list[Piece] = []
        before = 0  # records of this block before the chunk being filled
        for k in cuts:
            stop = base + int(ends[k]) + 1
            count = self._filled + int(done[k]) - before
            out.append(Piece(self._first, count, self._start, stop - self._start))
            before = int(done[k])
            self._filled = 0
            self._start = stop
            self._first = self._line + k + 1
        self._filled += int(done[-1]) - before
        self._end = base + (end - begin)
        self._line += len(ends)
        return out


def _spec_dict(spec: rpb.TransformJobSpec, manifest: tf.JobManifest) -> dict[str, Any]:
    from google.protobuf import json_format

    out = json_format.MessageToDict(spec, preserving_proto_field_name=True)
    out["job_id"] = manifest.job_id
    out["content_type"] = manifest.content_type
    return out


def _spec_pb(data: dict[str, Any]) -> rpb.TransformJobSpec:
    from google.protobuf import json_format

    return json_format.ParseDict(data, rpb.TransformJobSpec(), ignore_unknown_fields=True)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(COPY_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


class _ParquetChunks:
    """A Parquet file as chunk files of rows read a batch at a time: Parquet files with the
    input's schema, or (``as_csv``) CSV without a header — flat columns only, booleans
    written as 0/1 (workers read numbers), strings quoted where needed. Rows per chunk:
    the manifest's records_per_chunk, or the rows of about chunk_bytes of decoded data
    (at most PARQUET_CHUNK_ROWS)."""

    def __init__(self, path: Path, manifest: tf.JobManifest, *, as_csv: bool) -> None:
        import pyarrow.parquet as pq

        self._as_csv = as_csv
        self._file = pq.ParquetFile(path, memory_map=True)
        try:
            if as_csv:
                self._check(self._file.schema_arrow)
            rows = manifest.records_per_chunk
            if manifest.chunk_bytes:
                # The rows of about chunk_bytes of decoded data (workers turn each row into
                # Python values), and no more than the default of a records chunk.
                meta = self._file.metadata
                decoded = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
                total = max(int(meta.num_rows), 1)
                rows = min(
                    PARQUET_CHUNK_ROWS, max(1, -(-total * manifest.chunk_bytes // max(decoded, 1)))
                )
            self.columns = [str(name) for name in self._file.schema_arrow.names]
            self._batches: Iterator[Any] = self._file.iter_batches(batch_size=rows)
        except BaseException:
            self._file.close()
            raise

    @staticmethod
    def _check(schema: Any) -> None:
        import pyarrow as pa

        for field in schema:
            kind = field.type
            if not (
                pa.types.is_integer(kind)
                or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind)
                or pa.types.is_string(kind)
                or pa.types.is_large_string(kind)
                or pa.types.is_decimal(kind)
            ):
                raise InvalidArgument(
                    f"input_uri: Parquet column {field.name!r} is {kind}; InvokeAsync reads "
                    "flat columns (numbers, booleans, strings): use CreateTransformJob for "
                    "nested ones"
                )

    def next_chunk(self) -> tuple[int, bytes] | None:
        """(rows, chunk file bytes) of the next chunk; None after the last one."""
        import pyarrow as pa

        batch = next(self._batches, None)
        if batch is None:
            return None
        sink = pa.BufferOutputStream()
        if self._as_csv:
            import pyarrow.compute as pc
            import pyarrow.csv as pacsv

            columns = [
                pc.cast(column, pa.int8()) if pa.types.is_boolean(column.type) else column
                for column in batch.columns
            ]
            table = pa.Table.from_arrays(columns, names=[f"c{i}" for i in range(len(columns))])
            pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=False))
        else:
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_batches([batch]), sink)
        return batch.num_rows, sink.getvalue().to_pybytes()

    def close(self) -> None:
        self._file.close()
