"""The synchronous trainer client (scripts, notebooks, the CLI). Results are the
``mlbus.trainer.v1`` protobuf messages; :func:`job_to_dict` gives plain JSON values."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
from google.protobuf import json_format

from mlbus.common.v1 import common_pb2
from mlbus.core.rpc.channel import channel_options
from mlbus.core.settings import GrpcSettings
from mlbus.sdk.defaults import default_actor
from mlbus.sdk.errors import MlbusError, from_rpc_error
from mlbus.sdk.registry.client import actor_metadata
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

#: Environment variable naming the trainer (``host:port``).
TRAINER_ENV = "MLBUS_TRAINER"
#: The trainer of a local stack (``mlbus up``).
DEFAULT_TRAINER = "127.0.0.1:50054"
TERMINAL = frozenset({ev.JOB_STATUS_COMPLETED, ev.JOB_STATUS_FAILED, ev.JOB_STATUS_STOPPED})

KINDS = {
    "training": ev.JOB_KIND_TRAINING,
    "processing": ev.JOB_KIND_PROCESSING,
    "tuning": ev.JOB_KIND_TUNING,
}
STATUSES = {
    "pending": ev.JOB_STATUS_PENDING,
    "running": ev.JOB_STATUS_RUNNING,
    "completed": ev.JOB_STATUS_COMPLETED,
    "failed": ev.JOB_STATUS_FAILED,
    "stopped": ev.JOB_STATUS_STOPPED,
}


def default_trainer() -> str:
    """``$MLBUS_TRAINER`` or ``127.0.0.1:50054``."""
    return os.environ.get(TRAINER_ENV) or DEFAULT_TRAINER


def status_name(status: int) -> str:
    """``COMPLETED`` for JOB_STATUS_COMPLETED, ..."""
    return ev.JobStatus.Name(status).removeprefix("JOB_STATUS_")  # type: ignore[arg-type]


def kind_name(kind: int) -> str:
    """``TRAINING`` for JOB_KIND_TRAINING, ..."""
    return ev.JobKind.Name(kind).removeprefix("JOB_KIND_")  # type: ignore[arg-type]


def job_to_dict(job: pb.Job) -> dict[str, Any]:
    """A Job as JSON values (proto field names; enums without their prefix)."""
    value: dict[str, Any] = json_format.MessageToDict(
        job, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    value["status"] = status_name(job.status)
    value["kind"] = kind_name(job.kind)
    value["model_version"] = job.model_version  # int64: a string in proto JSON
    value["duration_s"] = job.duration.ToTimedelta().total_seconds()
    value.pop("duration", None)
    return value


class TrainerClient:
    """Client of ``mlbus.trainer.v1.TrainerService``; every call has a deadline."""

    def __init__(
        self,
        target: str | None = None,
        *,
        actor: str | None = None,
        timeout: float = 30.0,
        settings: GrpcSettings | None = None,
    ) -> None:
        self.target = target or default_trainer()
        self.actor = actor or default_actor()
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            self.target, options=channel_options(settings or GrpcSettings())
        )
        self._stub = trainer_pb2_grpc.TrainerServiceStub(self._channel)

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        deadline = timeout or self.timeout
        try:
            return getattr(self._stub, method)(
                request, timeout=deadline, metadata=actor_metadata(self.actor)
            )
        except grpc.RpcError as exc:
            raise from_rpc_error(
                exc, target=self.target, timeout=deadline, service="trainer"
            ) from None

    def submit(
        self, kind: str, spec: ev.JobSpec, *, experiment: str = "", job_id: str = ""
    ) -> pb.Job:
        """Submit a job (``kind``: training, processing or tuning); the job as accepted."""
        request = pb.SubmitJobRequest(
            job_id=job_id,
            kind=KINDS[kind],
            experiment=experiment,
            spec=spec,
            actor=common_pb2.Actor(name=self.actor),
        )
        return self._call("SubmitJob", request).job  # type: ignore[no-any-return]

    def submit_training(self, spec: ev.JobSpec, **kw: Any) -> pb.Job:
        """Submit a training job."""
        return self.submit("training", spec, **kw)

    def describe(self, job_id: str) -> pb.Job:
        """The job as stored."""
        return self._call("DescribeJob", pb.DescribeJobRequest(job_id=job_id)).job  # type: ignore[no-any-return]

    def list_jobs(
        self, *, experiment: str = "", status: str = "", kind: str = "", limit: int | None = None
    ) -> Iterator[pb.Job]:
        """Jobs, newest first (every page is fetched)."""
        token = ""
        count = 0
        while True:
            request = pb.ListJobsRequest(experiment=experiment)
            if status:
                request.status = STATUSES[status.lower()]
            if kind:
                request.kind = KINDS[kind.lower()]
            request.page.page_token = token
            response = self._call("ListJobs", request)
            for job in response.jobs:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield job
            token = response.page.next_page_token
            if not token:
                return

    def stop(self, job_id: str, reason: str = "") -> pb.Job:
        """Stop a job (a running one gets SIGTERM, then SIGKILL after the grace period)."""
        request = pb.StopJobRequest(
            job_id=job_id, reason=reason, actor=common_pb2.Actor(name=self.actor)
        )
        return self._call("StopJob", request).job  # type: ignore[no-any-return]

    def logs(
        self, job_id: str, *, follow: bool = False, from_line: int = 0
    ) -> Iterator[pb.LogLine]:
        """The job's log lines; with ``follow``, until it ended."""
        request = pb.StreamJobLogsRequest(job_id=job_id, follow=follow, from_line=from_line)
        try:
            for response in self._stub.StreamJobLogs(
                request,
                timeout=None if follow else self.timeout,
                metadata=tuple((k, v) for k, v in actor_metadata(self.actor)),
            ):
                yield from response.lines
        except grpc.RpcError as exc:
            raise from_rpc_error(
                exc, target=self.target, timeout=self.timeout, service="trainer"
            ) from None

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_s: float = 0.5,
        on_update: Callable[[pb.Job], None] | None = None,
    ) -> pb.Job:
        """Poll until the job ended; the ended job. ``on_update`` sees every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.describe(job_id)
            if on_update is not None:
                on_update(job)
            if job.status in TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise MlbusError(f"job {job_id} still {status_name(job.status)} after {timeout}s")
            time.sleep(poll_s)

    def experiments(self) -> list[pb.Experiment]:
        """Experiments with their run counts."""
        return list(self._call("ListExperiments", pb.ListExperimentsRequest()).experiments)

    def runs(
        self, experiment: str, *, order_by: str = "", ascending: bool = False, limit: int = 0
    ) -> list[pb.Job]:
        """An experiment's runs, sorted by ``order_by`` (largest first unless ``ascending``)."""
        request = pb.ListRunsRequest(
            experiment=experiment, order_by=order_by, ascending=ascending, limit=limit
        )
        return list(self._call("ListRuns", request).runs)
