"""The trainer's use cases: submit, describe, list, stop, logs, experiments and runs."""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from mlbus.core.errors import FailedPrecondition, InvalidArgument, NotFound
from mlbus.trainer.domain import rules
from mlbus.trainer.domain.models import (
    Experiment,
    Job,
    JobKind,
    JobSpec,
    JobStatus,
    LogLine,
    utcnow,
)
from mlbus.trainer.domain.scheduler import Scheduler
from mlbus.trainer.ports import JobStore, MakeEvent, Publisher

log = logging.getLogger(__name__)

LOG_BATCH = 500


@dataclass(frozen=True, slots=True)
class Submission:
    """A job request, from gRPC or the topic."""

    job_id: str
    kind: JobKind
    experiment: str
    spec: JobSpec
    actor: str


@dataclass(frozen=True, slots=True)
class Listing:
    """Filters of ListJobs."""

    experiment: str = ""
    status: JobStatus | None = None
    kind: JobKind | None = None
    parent_job_id: str | None = None


class TrainerService:
    """What the servicer and the job-request consumer call."""

    def __init__(
        self,
        store: JobStore,
        scheduler: Scheduler,
        publisher: Publisher,
        *,
        policy: rules.LimitPolicy,
        make_event: MakeEvent,
        default_page_size: int,
        max_page_size: int,
        log_poll_interval_s: float,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.publisher = publisher
        self.policy = policy
        self.make_event = make_event
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.log_poll_interval_s = log_poll_interval_s

    def check(self, submission: Submission, *, need_id: bool) -> Job:
        """The new job of a submission, checked (InvalidArgument naming the field)."""
        if submission.kind not in (JobKind.TRAINING, JobKind.PROCESSING, JobKind.TUNING):
            raise InvalidArgument("kind: expected TRAINING, PROCESSING or TUNING")
        if need_id and not submission.job_id:
            raise InvalidArgument("job_id: required on a job request event")
        job_id = submission.job_id or f"job-{uuid.uuid4().hex[:12]}"
        rules.check_job_id(job_id)
        if not submission.actor:
            raise InvalidArgument("actor: required (the request's actor or x-mlbus-actor)")
        return Job(
            job_id=job_id,
            kind=submission.kind,
            experiment=rules.check_experiment(submission.experiment),
            spec=rules.check_spec(submission.kind, submission.spec, self.policy),
            actor=submission.actor,
            status=JobStatus.PENDING,
            create_time=utcnow(),
        )

    async def submit(self, submission: Submission) -> Job:
        """SubmitJob: store the job PENDING, publish its request, offer it to this replica.
        A known job id returns the stored job."""
        job = self.check(submission, need_id=False)
        stored, new = await self.store.insert(job, self.make_event)
        if new:
            try:
                await self.publisher.publish_request(stored)
            except Exception as exc:
                # The job is stored; any replica's poll runs it even without the event.
                log.warning("publishing the request of job %s failed: %s", stored.job_id, exc)
            if await self.scheduler.offer(stored.job_id):
                stored = await self.store.get(stored.job_id) or stored
        return stored

    async def accept(self, submission: Submission) -> Job:
        """A job request from the topic: the same job as SubmitJob's, offered to this replica
        (a redelivered request changes nothing)."""
        job = self.check(submission, need_id=True)
        stored, _ = await self.store.insert(job, self.make_event)
        if stored.status == JobStatus.PENDING:
            await self.scheduler.offer(stored.job_id)
        return stored

    async def describe(self, job_id: str) -> Job:
        """DescribeJob."""
        if not job_id:
            raise InvalidArgument("job_id: required", details={"field": "job_id"})
        job = await self.store.get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found", details={"job_id": job_id})
        return job

    async def list_jobs(
        self, listing: Listing, page_size: int, page_token: str
    ) -> tuple[list[Job], str]:
        """ListJobs, newest first."""
        if page_size < 0:
            raise InvalidArgument(
                f"page.page_size: expected 0 (the default, {self.default_page_size}) or a "
                f"positive number (at most {self.max_page_size} are returned), got {page_size}",
                details={"field": "page.page_size"},
            )
        size = min(page_size or self.default_page_size, self.max_page_size)
        return await self.store.list_jobs(listing, page_size=size, page_token=page_token)

    async def stop(self, job_id: str, reason: str, actor: str) -> Job:
        """StopJob: a PENDING job is STOPPED at once; a RUNNING one gets SIGTERM (then SIGKILL
        after the grace period) from its replica. A STOPPED job is returned as it is; one
        that COMPLETED or FAILED (also while this request was on its way) is
        FailedPrecondition, and keeps its status and result."""
        text = f"stopped by {actor}" + (f": {reason}" if reason else "")
        # Each step is a conditional update; one that finds the job moved on (claimed,
        # ended, re-queued) looks at it again.
        for _ in range(5):
            job = await self.describe(job_id)
            if job.status == JobStatus.PENDING:
                stopped = await self.store.transition(
                    job_id,
                    expect=[JobStatus.PENDING],
                    event=self.make_event,
                    status=JobStatus.STOPPED,
                    reason=text,
                    end_time=utcnow(),
                )
                if stopped is not None:
                    return stopped
            elif job.status == JobStatus.RUNNING:
                flagged = await self.store.request_stop(job_id, text)
                if flagged is not None:
                    running = self.scheduler.running.get(job_id)
                    if running is not None:
                        running.stop(text)
                    return flagged
            elif job.status == JobStatus.STOPPED:
                return job
            else:
                raise _already_ended(job)
        return await self.describe(job_id)

    async def logs(
        self, job_id: str, *, follow: bool, from_line: int
    ) -> AsyncIterator[tuple[list[LogLine], JobStatus]]:
        """StreamJobLogs: batches of lines; with ``follow``, until the job ended and every
        line was sent."""
        # The status is read before the lines: a job's lines are all stored before it
        # ends, so lines read after seeing it ended are the last ones.
        status = (await self.describe(job_id)).status
        number = max(1, from_line)
        while True:
            lines = await self.store.read_logs(job_id, number, LOG_BATCH)
            if lines:
                number = lines[-1].number + 1
                yield lines, status
                if len(lines) == LOG_BATCH:
                    continue
            if not follow or status.terminal:
                return
            await asyncio.sleep(self.log_poll_interval_s)
            status = (await self.describe(job_id)).status

    async def experiments(self) -> list[Experiment]:
        """ListExperiments."""
        return await self.store.experiments()

    async def runs(self, experiment: str, order_by: str, ascending: bool, limit: int) -> list[Job]:
        """ListRuns: by ``order_by`` (runs without that metric last), else newest first."""
        if not experiment:
            raise InvalidArgument("experiment: required")
        runs = await self.store.runs(experiment)
        if order_by:

            def key(job: Job) -> tuple[int, float]:
                value = job.result.metrics.get(order_by)
                if value is None or not math.isfinite(value):
                    return (1, 0.0)
                return (0, value if ascending else -value)

            runs.sort(key=key)
        return runs[:limit] if limit > 0 else runs


def _already_ended(job: Job) -> FailedPrecondition:
    """The error of StopJob on a job that COMPLETED or FAILED (like SageMaker's
    StopTrainingJob, which refuses a job that is already Completed)."""
    when = f" at {job.end_time.isoformat(timespec='seconds')}" if job.end_time else ""
    return FailedPrecondition(
        f"job {job.job_id} cannot be stopped: it already {job.status.value}{when}; "
        "only a PENDING or RUNNING job can be stopped",
        details={"job_id": job.job_id, "status": job.status.value},
    )
