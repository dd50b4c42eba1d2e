"""Batch transform jobs: :class:`Transformer` runs an endpoint's model over files in the
object store through the router's transform jobs.

    from mlbus.sdk import Transformer

    with Transformer("churn") as churn:
        job = churn.transform("file:///data/in/scores.csv", "file:///data/out/",
                              join_input=True, wait=True)
        job.status, job.records_done, job.outputs

Each input file gives ``<output>/<file name>.out`` (records in input order) and, when some
records failed, ``<file name>.errors.jsonl`` listing their line numbers and reasons.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from mlbus.router.v1 import events_pb2 as rev
from mlbus.router.v1 import router_pb2 as rpb
from mlbus.router.v1 import router_pb2_grpc as rpb_grpc
from mlbus.sdk.defaults import default_router
from mlbus.sdk.errors import DeadlineExceeded, MlbusError, from_rpc_error

__all__ = ["TransformJob", "Transformer"]

_STATUS = {
    rev.TRANSFORM_JOB_STATUS_PENDING: "PENDING",
    rev.TRANSFORM_JOB_STATUS_IN_PROGRESS: "IN_PROGRESS",
    rev.TRANSFORM_JOB_STATUS_COMPLETED: "COMPLETED",
    rev.TRANSFORM_JOB_STATUS_COMPLETED_WITH_ERRORS: "COMPLETED_WITH_ERRORS",
    rev.TRANSFORM_JOB_STATUS_FAILED: "FAILED",
    rev.TRANSFORM_JOB_STATUS_STOPPING: "STOPPING",
    rev.TRANSFORM_JOB_STATUS_STOPPED: "STOPPED",
}
TERMINAL = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "STOPPED"})


@dataclass(frozen=True, slots=True)
class TransformJob:
    """A transform job as DescribeTransformJob reports it."""

    job_id: str
    endpoint: str
    status: str
    reason: str
    records_total: int
    records_done: int
    records_failed: int
    chunks_total: int
    chunks_done: int
    records_per_second: float
    eta_seconds: float
    outputs: list[str] = field(default_factory=list)
    error_files: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        """True once it completed, failed or stopped."""
        return self.status in TERMINAL

    @classmethod
    def from_pb(cls, job: rpb.TransformJob) -> TransformJob:
        """From the API message."""
        return cls(
            job_id=job.job_id,
            endpoint=job.spec.endpoint,
            status=_STATUS.get(job.status, "PENDING"),
            reason=job.reason,
            records_total=job.records_total,
            records_done=job.records_done,
            records_failed=job.records_failed,
            chunks_total=job.chunks_total,
            chunks_done=job.chunks_done,
            records_per_second=job.records_per_second,
            eta_seconds=job.eta_seconds,
            outputs=[o.uri for o in job.outputs],
            error_files=[o.uri for o in job.error_files],
        )


class Transformer:
    """Batch transform jobs of one endpoint (or of any, for describe/list/stop)."""

    def __init__(
        self,
        endpoint: str = "",
        target: str | None = None,
        *,
        timeout: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        self.endpoint = endpoint
        self.target = target or default_router()
        self.timeout = timeout
        self.poll_interval = poll_interval
        self._channel = grpc.insecure_channel(self.target)
        self._stub = rpb_grpc.RouterServiceStub(self._channel)

    def __enter__(self) -> Transformer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: str, request: object) -> object:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_rpc_error(
                exc, target=self.target, service="router", timeout=self.timeout
            ) from None

    def transform(
        self,
        input_uri: str,
        output_uri: str,
        *,
        content_type: str = "",
        split: str = "line",
        strategy: str = "multi_record",
        max_payload_mb: float = 0.0,
        max_records_per_batch: int = 0,
        records_per_chunk: int = 0,
        csv_header: bool | None = None,
        input_filter: str = "",
        join_input: bool = False,
        output_filter: str = "",
        max_failure_percent: float | None = None,
        job_id: str = "",
        wait: bool = False,
        wait_timeout: float = 86400.0,
        progress: Callable[[TransformJob], None] | None = None,
    ) -> TransformJob:
        """Start a job over ``input_uri`` (a file or a directory) into ``output_uri``; with
        ``wait``, follow it until it ends (``progress`` is called on every poll)."""
        if not self.endpoint:
            raise ValueError("Transformer(endpoint=...) is needed to start a job")
        spec = rpb.TransformJobSpec(
            endpoint=self.endpoint,
            input_uri=input_uri,
            output_uri=output_uri,
            content_type=content_type,
            split_type=rpb.SPLIT_TYPE_NONE if split.lower() == "none" else rpb.SPLIT_TYPE_LINE,
            batch_strategy=(
                rpb.BATCH_STRATEGY_SINGLE_RECORD
                if strategy.lower() in ("single", "single_record")
                else rpb.BATCH_STRATEGY_MULTI_RECORD
            ),
            max_payload_mb=max_payload_mb,
            max_records_per_batch=max_records_per_batch,
            records_per_chunk=records_per_chunk,
            input_filter=input_filter,
            join_source=rpb.JOIN_SOURCE_INPUT if join_input else rpb.JOIN_SOURCE_NONE,
            output_filter=output_filter,
            job_id=job_id,
        )
        if csv_header is not None:
            spec.csv_header = csv_header
        if max_failure_percent is not None:
            spec.max_failure_percent = max_failure_percent
        response = self._call("CreateTransformJob", rpb.CreateTransformJobRequest(spec=spec))
        job = TransformJob.from_pb(response.job)  # type: ignore[attr-defined]
        if not wait:
            return job
        return self.wait(job.job_id, timeout=wait_timeout, progress=progress)

    def describe(self, job_id: str) -> TransformJob:
        """The job's status and progress."""
        response = self._call(
            "DescribeTransformJob", rpb.DescribeTransformJobRequest(job_id=job_id)
        )
        return TransformJob.from_pb(response.job)  # type: ignore[attr-defined]

    def list(self) -> list[TransformJob]:
        """Jobs (of this endpoint, if set), newest first."""
        response = self._call(
            "ListTransformJobs", rpb.ListTransformJobsRequest(endpoint=self.endpoint)
        )
        return [TransformJob.from_pb(j) for j in response.jobs]  # type: ignore[attr-defined]

    def stop(self, job_id: str, reason: str = "") -> TransformJob:
        """Stop a job; chunks not started are skipped."""
        response = self._call(
            "StopTransformJob", rpb.StopTransformJobRequest(job_id=job_id, reason=reason)
        )
        return TransformJob.from_pb(response.job)  # type: ignore[attr-defined]

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 86400.0,
        progress: Callable[[TransformJob], None] | None = None,
    ) -> TransformJob:
        """Poll until the job ends; DeadlineExceeded after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.describe(job_id)
            if progress is not None:
                progress(job)
            if job.done:
                return job
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"transform job {job_id} not done within {timeout:g} s ({job.status})"
                )
            time.sleep(self.poll_interval)


def raise_for_status(job: TransformJob) -> TransformJob:
    """``job``, or MlbusError when it FAILED."""
    if job.status == "FAILED":
        raise MlbusError(f"transform job {job.job_id} failed: {job.reason}")
    return job
