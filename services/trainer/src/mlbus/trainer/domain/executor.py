"""Running one job on this replica: claim → RUNNING → inputs staged → child process under
limits → result collected → artifacts stored → model registered → COMPLETED, or FAILED /
STOPPED with the reason.

Log lines the child writes are numbered and written to the job store in batches, so
StreamJobLogs on any replica can follow them. Per-iteration metrics arrive as events and
are passed to ``on_iteration`` (tuning jobs prune trials with them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from mlbus.trainer.child.protocol import EXIT_MEMORY, Result, Task, parse_event
from mlbus.trainer.domain.models import (
    ArtifactRef,
    Job,
    JobKind,
    JobResult,
    JobStatus,
    LogLine,
    utcnow,
)
from mlbus.trainer.ports import (
    Artifacts,
    CheckpointMirror,
    Checkpoints,
    JobStore,
    MakeEvent,
    Registrar,
    Stager,
)

log = logging.getLogger(__name__)

IterationCallback = Callable[[int, dict[str, float]], None]


class Process(Protocol):
    """A started child (see :class:`mlbus.trainer.adapters.process.ChildProcess`)."""

    def stop(self, reason: str) -> None: ...

    async def run(self) -> Any: ...


#: Makes the child process of a task: (argv, cwd, max runtime, max memory, line callback).
Launcher = Callable[[list[str], Path, float, int, Callable[[str], None]], Process]


@dataclass
class ExecutorConfig:
    """What the executor takes from the trainer's settings."""

    trainer_id: str
    work_dir: Path
    lease_s: float
    parity_atol: float
    parity_rtol: float
    log_flush_interval_s: float
    max_log_line_chars: int
    mlbus_version: str
    max_categories: int = 50
    checkpoint_sync_interval_s: float = 10.0


@dataclass
class RunningJob:
    """A job this replica runs: how to stop it, and what its process reports."""

    job_id: str
    on_iteration: IterationCallback | None = None
    process: Process | None = None
    stop_reason: str = ""
    history: dict[str, list[float]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    #: A tuning job's running trials (stopped with it).
    children: list[RunningJob] = field(default_factory=list)
    #: Set when the trainer shuts down: the job is left to be settled as interrupted.
    abandoned: bool = False
    #: Set when a tuning job stopped this trial early for doing worse than the median.
    pruned: bool = False
    #: Set when another replica took the job over: nothing of this run may be recorded.
    lost: bool = False

    def handles(self) -> list[RunningJob]:
        """This job and its running trials."""
        return [self, *(h for c in self.children for h in c.handles())]

    def stop(self, reason: str) -> None:
        """Stop the job's process (SIGTERM, then SIGKILL after the grace period)."""
        if not self.stop_reason:
            self.stop_reason = reason
        if self.process is not None:
            self.process.stop(reason)
        for child in self.children:
            child.stop(reason)


class LogWriter:
    """Numbers a job's log lines and writes them to the store in batches.

    No write is ever cancelled halfway: a cancelled write had already taken its lines out
    of the buffer, so they were lost (the last lines of a job, such as "process ended",
    went missing when a batch was being written as the job's process ended). Closing
    waits for a write in progress, and the final write outlives a cancelled caller. A
    write that fails keeps its lines for the next one; the final write is tried a few
    times before the lines are given up, with an error logged.
    """

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        *,
        first: int,
        interval_s: float,
        max_chars: int,
        close_attempts: int = 3,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.next_number = first
        self.interval_s = interval_s
        self.max_chars = max_chars
        self.close_attempts = close_attempts
        self._buffer: list[LogLine] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def write(self, text: str) -> None:
        """Queue one line."""
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + " [cut]"
        self._buffer.append(LogLine(number=self.next_number, time=utcnow(), text=text))
        self.next_number += 1

    @property
    def pending(self) -> int:
        """Lines queued and not yet stored."""
        return len(self._buffer)

    async def flush(self) -> bool:
        """Write the queued lines now; False if the store refused them (they stay queued)."""
        lines, self._buffer = self._buffer, []
        if not lines:
            return True
        try:
            await self.store.append_logs(self.job_id, lines)
        except Exception:
            log.exception("writing log lines of job %s failed", self.job_id)
            self._buffer = lines + self._buffer
            return False
        return True

    async def _loop(self) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval_s)
            await self.flush()

    def start(self) -> None:
        """Flush every interval from now on."""
        self._task = asyncio.create_task(self._loop(), name=f"mlbus-trainer-logs-{self.job_id}")

    async def close(self) -> None:
        """Stop flushing and write what is left (after a write in progress has ended).

        The writing goes on in a task of its own: cancelling the caller (the trainer
        stopping, out of patience with a job) does not cancel a write halfway."""
        self._closing.set()
        await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        if self._task is not None:
            try:
                await self._task
            except Exception:
                log.exception("the log writer of job %s failed", self.job_id)
        for attempt in range(self.close_attempts):
            if await self.flush():
                return
            if attempt + 1 < self.close_attempts:
                await asyncio.sleep(min(self.interval_s * 2**attempt, 2.0))
        log.error(
            "job %s: %d log lines could not be stored and are lost", self.job_id, self.pending
        )


def _signal_name(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return signal.Signals(-returncode).name
    return f"exit status {returncode}"


class JobFailure(Exception):
    """A job ends FAILED with this message as its reason."""


class Executor:
    """Runs jobs of this replica (see the module docstring)."""

    def __init__(
        self,
        store: JobStore,
        *,
        stager: Stager,
        artifacts: Artifacts,
        checkpoints: Checkpoints,
        registrar: Registrar,
        launcher: Launcher,
        make_event: MakeEvent,
        code_version: Callable[[Path | None], Awaitable[str]],
        config: ExecutorConfig,
    ) -> None:
        self.store = store
        self.stager = stager
        self.artifacts = artifacts
        self.checkpoints = checkpoints
        self.registrar = registrar
        self.launcher = launcher
        self.make_event = make_event
        self.code_version = code_version
        self.config = config

    def _lease(self) -> Any:
        return utcnow() + timedelta(seconds=self.config.lease_s)

    async def start(self, job: Job) -> Job | None:
        """PENDING → RUNNING for this replica; None if the job is no longer ours to run."""
        now = utcnow()
        return await self.store.transition(
            job.job_id,
            expect=[JobStatus.PENDING],
            holder=self.config.trainer_id,
            event=self.make_event,
            status=JobStatus.RUNNING,
            start_time=now,
            end_time=None,
            reason="",
            attempts=job.attempts + 1,
            stop_requested=False,
            lease_expires=self._lease(),
        )

    async def finish(
        self, job: Job, status: JobStatus, reason: str = "", result: JobResult | None = None
    ) -> Job | None:
        """RUNNING → an end status (only while this replica holds the job)."""
        changes: dict[str, Any] = {"status": status, "reason": reason, "end_time": utcnow()}
        if result is not None:
            changes["result"] = result
        ended = await self.store.transition(
            job.job_id,
            expect=[JobStatus.RUNNING],
            holder=self.config.trainer_id,
            event=self.make_event,
            **changes,
        )
        if ended is not None:
            log.info(
                "job %s %s%s",
                job.job_id,
                status.value,
                f": {reason}" if reason else "",
                extra={"job_id": job.job_id, "status": status.value},
            )
        return ended

    async def run(self, job: Job, running: RunningJob) -> Job | None:
        """Run a claimed PENDING job to its end; the job as it ended (None: not ours)."""
        started = await self.start(job)
        if started is None:
            return None
        work = self.config.work_dir / f"{job.job_id}-{started.attempts}"
        logs = LogWriter(
            self.store,
            job.job_id,
            first=await self.store.last_log_number(job.job_id) + 1,
            interval_s=self.config.log_flush_interval_s,
            max_chars=self.config.max_log_line_chars,
        )
        logs.start()
        try:
            status, reason, result = await self._run_in(started, running, work, logs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: the trainer failed running it", job.job_id)
            status, reason, result = (
                JobStatus.FAILED,
                f"trainer error: {type(exc).__name__}: {exc}",
                None,
            )
        finally:
            await logs.close()
            await asyncio.to_thread(shutil.rmtree, work, True)
        if running.abandoned and status != JobStatus.COMPLETED:
            # Left to be settled as interrupted; a job that completed meanwhile has its
            # result (its model may be registered already) and is recorded as such.
            return None
        if result is None and running.history:
            # A job stopped or failed midway keeps the metrics it reported per iteration
            # (e.g. a trial stopped early: the curve that got it stopped).
            result = JobResult(history=dict(running.history))
        ended = await self.finish(started, status, reason, result)
        if ended is not None:
            await self.discard_checkpoints(job.job_id)
        return ended

    async def discard_checkpoints(self, job_id: str) -> None:
        """Delete the kept checkpoints of a job that has ended (no attempt will need them)."""
        try:
            await self.checkpoints.discard(job_id)
        except Exception:
            log.exception("deleting the checkpoints of job %s failed", job_id)

    async def _sync_checkpoints(self, mirror: CheckpointMirror, logs: LogWriter) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.config.checkpoint_sync_interval_s)
            try:
                await mirror.sync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failing:
                    logs.write(f"[mlbus] copying the checkpoints to {mirror.uri} failed: {exc}")
                    log.warning("job %s: copying its checkpoints failed: %s", logs.job_id, exc)
                failing = True
            else:
                failing = False

    async def _run_in(
        self, job: Job, running: RunningJob, work: Path, logs: LogWriter
    ) -> tuple[JobStatus, str, JobResult | None]:
        await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
        spec = job.spec
        try:
            staged = await self.stager.stage(spec.input_uri, work, "input")
            validation = (
                await self.stager.stage(spec.validation_uri, work, "validation")
                if spec.validation_uri
                else None
            )
            script = (
                await self.stager.stage(spec.script_uri, work, "script")
                if spec.script_uri
                else None
            )
        except Exception as exc:
            if running.stop_reason:
                return JobStatus.STOPPED, running.stop_reason, None
            return JobStatus.FAILED, str(exc), None
        logs.write(f"input {spec.input_uri} (sha256 {staged.sha256})")
        checkpoint_dir = work / "checkpoints"
        mirror = self.checkpoints.mirror(job.job_id, checkpoint_dir)
        try:
            restored = await mirror.restore()
        except Exception as exc:
            logs.write(f"[mlbus] restoring the checkpoints from {mirror.uri} failed: {exc}")
        else:
            if restored:
                logs.write(
                    f"[mlbus] checkpoints: {restored} file(s) of an earlier attempt restored "
                    f"from {mirror.uri}"
                )
        output_dir = work / "output"
        task = Task(
            job_id=job.job_id,
            kind=job.kind.value,
            algorithm=spec.algorithm,
            hyperparameters=dict(spec.hyperparameters),
            target_column=spec.target_column,
            input_path=str(staged.path),
            validation_path=str(validation.path) if validation else "",
            script_path=str(script.path) if script else "",
            output_dir=str(output_dir),
            work_dir=str(work),
            validation_fraction=spec.validation_fraction,
            seed=spec.seed,
            parity_atol=self.config.parity_atol,
            parity_rtol=self.config.parity_rtol,
            objective_metric=spec.tuning.objective_metric if spec.tuning else "",
            dataset_uri=spec.input_uri,
            dataset_sha256=staged.sha256,
            max_categories=self.config.max_categories,
            checkpoint_dir=str(checkpoint_dir),
        )
        task_file = work / "task.json"
        task.save(task_file)

        def on_line(line: str) -> None:
            event = parse_event(line)
            if event is None:
                logs.write(line)
                return
            if event.get("event") == "iteration":
                values = {k: float(v) for k, v in (event.get("metrics") or {}).items()}
                for name, value in values.items():
                    running.history.setdefault(f"validation_{name}", []).append(value)
                if running.on_iteration is not None:
                    running.on_iteration(int(event.get("step", 0)), values)
            elif event.get("event") == "phase":
                logs.write(f"[mlbus] {event.get('phase')}")

        limits = spec.limits
        process = self.launcher(
            [sys.executable, "-m", "mlbus.trainer.child", str(task_file)],
            work,
            float(limits.max_runtime_s or 3600.0),
            int(limits.max_memory_bytes or 0),
            on_line,
        )
        running.process = process
        if running.stop_reason:
            process.stop(running.stop_reason)
        syncing = asyncio.create_task(
            self._sync_checkpoints(mirror, logs), name=f"mlbus-trainer-checkpoints-{job.job_id}"
        )
        try:
            outcome = await process.run()
        finally:
            syncing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await syncing
        if running.abandoned:
            # The trainer is shutting down: the job runs again later, from these files.
            try:
                await mirror.sync()
            except Exception as exc:
                log.warning("job %s: copying its checkpoints failed: %s", job.job_id, exc)
        logs.write(
            f"[mlbus] process ended ({_signal_name(outcome.returncode)}) after "
            f"{outcome.runtime_s:.1f}s, peak memory {outcome.peak_rss_bytes / 2**20:.0f} MiB"
        )
        child = Result.load(work)
        finished = outcome.returncode == 0 and child is not None and child.ok
        # A stop or a limit decides the outcome only if it cut the process short: one that
        # finished with its result (the signal came as it exited) has COMPLETED.
        if outcome.cause == "stop" and not finished:
            return JobStatus.STOPPED, running.stop_reason or outcome.detail, None
        if outcome.cause in ("time", "memory") and not finished:
            return JobStatus.FAILED, outcome.detail, None
        if running.stop_reason:
            logs.write(
                f"[mlbus] stop request ({running.stop_reason}) came too late: the job's process "
                "had already ended, and the job ends as it did"
            )
        if outcome.returncode == EXIT_MEMORY:
            return JobStatus.FAILED, child.reason if child else "memory limit exceeded", None
        if outcome.returncode != 0 or child is None or not child.ok:
            reason = (
                child.reason
                if child is not None and child.reason
                else (
                    f"the job's process ended with {_signal_name(outcome.returncode)} and no result"
                )
            )
            return JobStatus.FAILED, reason, None
        if running.lost:
            # Another replica runs the job now: registering this run's model would give it
            # a version its job never records.
            return JobStatus.STOPPED, running.stop_reason, None
        try:
            result = await self._collect(
                job, child, work, staged.sha256, script.path if script else None
            )
        except JobFailure as exc:
            return JobStatus.FAILED, str(exc), None
        except Exception as exc:
            return JobStatus.FAILED, f"{type(exc).__name__}: {exc}", None
        return JobStatus.COMPLETED, "", result

    async def _collect(
        self, job: Job, child: Result, work: Path, dataset_sha256: str, script: Path | None
    ) -> JobResult:
        code_version = await self.code_version(script)
        history = {**child.history}
        artifacts: dict[str, ArtifactRef] = {}
        if job.kind == JobKind.PROCESSING:
            for name in child.outputs:
                ref = await self.artifacts.put_output(
                    job.spec.output_uri, name, work / "output" / name
                )
                artifacts[name] = ArtifactRef(**ref)
            return JobResult(
                artifacts=artifacts,
                hyperparameters=dict(job.spec.hyperparameters),
                dataset_sha256=dataset_sha256,
                code_version=code_version,
            )
        model = work / child.model_file
        baseline = work / child.baseline_file
        artifacts["model.onnx"] = ArtifactRef(
            **await self.artifacts.put_file(model, "application/x-onnx")
        )
        artifacts["baseline.json"] = ArtifactRef(
            **await self.artifacts.put_file(baseline, "application/json")
        )
        metrics = dict(child.metrics)
        metrics["parity_max_abs_diff"] = float(child.parity.get("max_abs_diff", 0.0))
        result = JobResult(
            metrics=metrics,
            history=history,
            artifacts=artifacts,
            hyperparameters=dict(child.hyperparameters or job.spec.hyperparameters),
            dataset_sha256=dataset_sha256,
            code_version=code_version,
        )
        if job.spec.model_group:
            registered = await self.register(job, result, model_path=model)
            result = result.model_copy(
                update={"model_group": registered[0], "model_version": registered[1]}
            )
        return result

    async def register(
        self,
        job: Job,
        result: JobResult,
        *,
        model_path: Path | None,
        lineage_job_id: str = "",
        tags: dict[str, str] | None = None,
    ) -> tuple[str, int]:
        """Register a run's model in ``job.spec.model_group``; (group, version)."""
        model = result.artifacts["model.onnx"]
        baseline = result.artifacts.get("baseline.json")
        try:
            registered = await self.registrar.register(
                actor=job.actor,
                model_group=job.spec.model_group,
                model=model_path,
                artifact_uri="" if model_path is not None else model.uri,
                expected_sha256=model.sha256,
                metrics={k: v for k, v in result.metrics.items() if k != "fit_seconds"},
                hyperparameters=result.hyperparameters,
                lineage={
                    "training_job_id": lineage_job_id or job.job_id,
                    "dataset_uri": job.spec.input_uri,
                    "dataset_sha256": result.dataset_sha256,
                    "code_version": result.code_version,
                },
                baseline=(
                    {
                        "uri": baseline.uri,
                        "sha256": baseline.sha256,
                        "size_bytes": baseline.size,
                        "content_type": baseline.content_type,
                    }
                    if baseline
                    else None
                ),
                tags={
                    "mlbus.job_id": job.job_id,
                    "mlbus.experiment": job.experiment,
                    "mlbus.algorithm": job.spec.algorithm,
                    **(tags or {}),
                },
                request_id=f"trainer-{job.job_id}",
                description=f"{job.spec.algorithm} trained by job {job.job_id}",
            )
        except Exception as exc:
            raise JobFailure(str(exc)) from exc
        return str(registered.model_group), int(registered.version)
