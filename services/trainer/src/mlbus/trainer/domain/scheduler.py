"""Which jobs this replica runs, and what becomes of jobs whose replica went away.

- A job request (from the topic or SubmitJob) is *offered* to the replica that received it:
  it claims the job when it has a free slot, else leaves it PENDING and unclaimed.
- Every poll, the replica renews the leases of its running jobs (learning of stop
  requests made on other replicas), claims unclaimed PENDING jobs while it has room, and
  recovers jobs whose replica's lease expired.
- At start-up it recovers its own unfinished jobs at once (it runs none of them yet).

A recovered RUNNING job is run again while it has attempts left (``max_attempts``), else it
FAILS saying why; a job claimed but never started is released. Trials of a tuning job are
never claimed from the pool: their tuning job runs them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from mlbus.trainer.domain.executor import Executor, RunningJob
from mlbus.trainer.domain.models import Job, JobKind, JobStatus, utcnow
from mlbus.trainer.ports import JobStore, MakeEvent

log = logging.getLogger(__name__)

#: Runs a tuning job (its trials as children of ``running``).
TuningRunner = Callable[[Job, RunningJob], Awaitable[None]]


class Scheduler:
    """This replica's share of the work (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        *,
        trainer_id: str,
        capacity: int,
        poll_interval_s: float,
        lease_s: float,
        max_attempts: int,
        make_event: MakeEvent,
    ) -> None:
        self.store = store
        self.executor = executor
        self.trainer_id = trainer_id
        self.capacity = capacity
        self.poll_interval_s = poll_interval_s
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.make_event = make_event
        self.tuning_runner: TuningRunner | None = None
        self.running: dict[str, RunningJob] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._claim_lock = asyncio.Lock()
        self._stopping = False

    def lease_until(self) -> datetime:
        """When a claim made now expires."""
        return utcnow() + timedelta(seconds=self.lease_s)

    @property
    def free_slots(self) -> int:
        """How many more jobs this replica takes now."""
        return 0 if self._stopping else max(0, self.capacity - len(self.running))

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover this replica's unfinished jobs, then poll in the background."""
        await self.recover(own=True)
        self._loop_task = asyncio.create_task(self._loop(), name="mlbus-trainer-scheduler")

    async def stop(self, grace_s: float) -> None:
        """Stop polling, stop running jobs, and settle them as interrupted."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        running = list(self.running.values())
        for handle in running:
            for each in handle.handles():
                each.abandoned = True
            handle.stop("the trainer is shutting down")
        tasks = [r.task for r in running if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s + 5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        for handle in running:
            for each in handle.handles():
                job = await self.store.get(each.job_id)
                if job is not None and not job.status.terminal:
                    await self.settle_interrupted(job, own=True, shutdown=True)

    def wake(self) -> None:
        """Look for work now instead of at the next poll."""
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduler poll failed")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)

    async def poll(self) -> None:
        """One round: renew leases, pass on stop requests, recover, claim."""
        handles = {h.job_id: h for r in list(self.running.values()) for h in r.handles()}
        renewal = await self.store.renew(self.trainer_id, list(handles), self.lease_until())
        for job_id in renewal.lost:
            running = handles.get(job_id)
            if running is not None and not running.abandoned:
                # Its lease ran out (this replica could not renew it in time, e.g. the
                # database was unreachable) and another replica took the job over: it must
                # not run here too. Nothing of this run is recorded (the job is not ours).
                log.warning("job %s was taken over by another replica; stopping it here", job_id)
                running.abandoned = running.lost = True
                running.stop("another replica took the job over (this replica's lease ran out)")
        for job_id in renewal.stop - renewal.lost:
            running = handles.get(job_id)
            if running is not None and not running.stop_reason:
                job = await self.store.get(job_id)
                running.stop(job.reason if job and job.reason else "stop requested")
        await self.recover(own=False)
        while self.free_slots > 0:
            candidates = await self.store.claimable(self.free_slots)
            if not candidates:
                break
            taken = 0
            for job_id in candidates:
                if await self.offer(job_id):
                    taken += 1
            if not taken:
                break

    # --- claiming ----------------------------------------------------------------------

    async def offer(self, job_id: str) -> bool:
        """Claim the PENDING job and start it if this replica has room; whether it did."""
        async with self._claim_lock:
            if self.free_slots <= 0 or job_id in self.running:
                return False
            job = await self.store.claim(job_id, self.trainer_id, self.lease_until())
            if job is None:
                return False
            self.launch(job)
            return True

    def launch(self, job: Job, running: RunningJob | None = None) -> RunningJob:
        """Run a job this replica holds in the background; its handle."""
        handle = running or RunningJob(job.job_id)
        self.running[job.job_id] = handle
        handle.task = asyncio.create_task(self._run(job, handle), name=f"mlbus-job-{job.job_id}")
        return handle

    async def _run(self, job: Job, handle: RunningJob) -> None:
        try:
            if job.kind == JobKind.TUNING and self.tuning_runner is not None:
                await self.tuning_runner(job, handle)
            else:
                await self.executor.run(job, handle)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("job %s: unexpected failure", job.job_id)
        finally:
            self.running.pop(job.job_id, None)
            if not self._stopping:
                self.wake()

    # --- recovery ----------------------------------------------------------------------

    async def recover(self, *, own: bool) -> None:
        """Settle jobs whose replica is gone (this one, restarted, with ``own``)."""
        for job in await self.store.orphans(self.trainer_id, own=own):
            if job.job_id in self.running:
                continue
            if not own and not await self.store.take_over(job, self.trainer_id, self.lease_until()):
                continue
            await self.settle_interrupted(job, own=own)

    async def settle_interrupted(self, job: Job, *, own: bool, shutdown: bool = False) -> None:
        """Release, re-queue or fail a job whose replica stopped while holding it."""
        if job.status == JobStatus.PENDING:
            await self._release(job)
            return
        if shutdown:
            who = f"trainer {self.trainer_id} shut down"
        elif own:
            who = f"trainer {self.trainer_id} restarted"
        else:
            who = f"trainer {job.trainer_id} stopped responding"
        why = f"{who} while the job was running"
        if job.parent_job_id:
            reason = f"{why} (a tuning trial is not retried on its own)"
            await self._fail(job, reason)
        elif job.attempts < self.max_attempts:
            requeued = await self.store.transition(
                job.job_id,
                expect=[JobStatus.RUNNING],
                holder=self.trainer_id,
                event=self.make_event,
                status=JobStatus.PENDING,
                reason=f"{why}; run again (attempt {job.attempts + 1} of {self.max_attempts})",
                trainer_id="",
            )
            if requeued is not None:
                log.warning("job %s re-queued: %s", job.job_id, why)
                self.wake()
        else:
            await self._fail(job, f"{why} (attempt {job.attempts} of {self.max_attempts})")

    async def _release(self, job: Job) -> None:
        await self.store.transition(
            job.job_id, expect=[JobStatus.PENDING], holder=self.trainer_id, trainer_id=""
        )

    async def _fail(self, job: Job, reason: str) -> None:
        failed = await self.store.transition(
            job.job_id,
            expect=[JobStatus.RUNNING],
            holder=self.trainer_id,
            event=self.make_event,
            status=JobStatus.FAILED,
            reason=reason,
            end_time=utcnow(),
        )
        if failed is not None:
            log.warning("job %s FAILED: %s", job.job_id, reason)
            await self.executor.discard_checkpoints(job.job_id)
