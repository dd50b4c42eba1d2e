"""Limits and stopping with real child processes: memory, wall clock, StopJob (SIGTERM,
then SIGKILL after the grace period), and a stop that comes as the job finishes."""

from __future__ import annotations

import os
import select
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb

MIB = 1024 * 1024

HOG = """
import time
import numpy as np

def train(data, hyperparameters):
    blocks = []
    for _ in range(400):
        blocks.append(np.ones(8_000_000))  # 64 MB each, touched
        time.sleep(0.05)
    raise AssertionError("the memory limit should have stopped this job")
"""

SLEEPER = """
import signal
import time

def train(data, hyperparameters):
    if hyperparameters.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("sleeping", flush=True)
    time.sleep(120)
"""

QUICK = """
from sklearn.linear_model import LogisticRegression

def train(data, hyperparameters):
    print("trained", flush=True)
    return LogisticRegression().fit(data.X_train, data.y_train)
"""


def script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


async def test_memory_limit_fails_the_job(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "d.csv", rows=50)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(script(tmp_path, "hog.py", HOG)),
        target_column="label",
        max_memory_bytes=600 * MIB,
    )
    job = await stack.wait((await stack.submit(spec)).job_id, timeout=60)
    assert job.status == ev.JOB_STATUS_FAILED
    assert job.reason.startswith("memory limit exceeded: the job used ")
    assert "limit of 600 MiB" in job.reason


async def test_time_limit_fails_the_job(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "d.csv", rows=50)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(script(tmp_path, "sleep.py", SLEEPER)),
        target_column="label",
        max_runtime_s=5,
    )
    job = await stack.wait((await stack.submit(spec)).job_id, timeout=60)
    assert job.status == ev.JOB_STATUS_FAILED
    assert job.reason == "time limit exceeded: the job ran longer than 5s"
    assert 5 <= job.duration.ToTimedelta().total_seconds() < 15


@pytest.mark.parametrize("ignore_sigterm", [False, True], ids=["sigterm", "sigkill-after-grace"])
async def test_stop_job(stack: Any, tmp_path: Path, ignore_sigterm: bool) -> None:
    data = stack.classification_csv(tmp_path / "d.csv", rows=50)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(script(tmp_path, "sleep.py", SLEEPER)),
        target_column="label",
        hyperparameters={"ignore_sigterm": "true"} if ignore_sigterm else {},
    )
    job_id = (await stack.submit(spec)).job_id

    async def sleeping() -> bool:
        return "sleeping" in await stack.logs(job_id)

    await stack.wait_until(sleeping, timeout=60, what="the job to start sleeping")
    asked = time.monotonic()
    stopped = await stack.stub.StopJob(
        pb.StopJobRequest(job_id=job_id, reason="enough"),
        metadata=[("x-mlbus-actor", "carol")],
        timeout=10,
    )
    assert stopped.job.status in (ev.JOB_STATUS_RUNNING, ev.JOB_STATUS_STOPPED)
    job = await stack.wait(job_id, timeout=30)
    took = time.monotonic() - asked
    assert job.status == ev.JOB_STATUS_STOPPED
    assert job.reason == "stopped by carol: enough"
    grace = stack.settings.stop_grace_s
    if ignore_sigterm:
        assert grace <= took < grace + 5  # killed once the grace period was over
    else:
        assert took < grace
    # A stopped job stays stopped; stopping it again changes nothing.
    again = await stack.stub.StopJob(
        pb.StopJobRequest(job_id=job_id), metadata=[("x-mlbus-actor", "carol")], timeout=10
    )
    assert again.job.reason == "stopped by carol: enough"


async def test_stop_pending_job(stack: Any, tmp_path: Path) -> None:
    data = stack.classification_csv(tmp_path / "d.csv", rows=50)
    path = str(script(tmp_path, "sleep.py", SLEEPER))
    spec = stack.spec(data, algorithm="custom", script_uri=path, target_column="label")
    # Fill every slot, so the next job waits PENDING.
    fillers = [(await stack.submit(spec)).job_id for _ in range(stack.settings.max_concurrent_jobs)]
    waiting = await stack.submit(spec)
    assert waiting.status == ev.JOB_STATUS_PENDING
    stopped = await stack.stub.StopJob(
        pb.StopJobRequest(job_id=waiting.job_id, reason="not needed"),
        metadata=[("x-mlbus-actor", "carol")],
        timeout=10,
    )
    assert stopped.job.status == ev.JOB_STATUS_STOPPED
    for job_id in fillers:
        await stack.stub.StopJob(
            pb.StopJobRequest(job_id=job_id), metadata=[("x-mlbus-actor", "carol")], timeout=10
        )
    for job_id in fillers:
        assert (await stack.wait(job_id, timeout=30)).status == ev.JOB_STATUS_STOPPED
    assert (await stack.describe(waiting.job_id)).status == ev.JOB_STATUS_STOPPED


def wait_until_exited(pid: int, timeout: float = 30.0) -> None:
    """Block (the event loop too) until the process has exited; it is not reaped."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and reaped already
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    assert ready, f"process {pid} still running after {timeout} s"


async def test_a_stop_as_the_job_finishes_keeps_it_completed(stack: Any, tmp_path: Path) -> None:
    """StopJob reaching the job's replica once the child has exited with its result, before
    the trainer has seen the exit: the job COMPLETES and its model is registered."""
    data = stack.classification_csv(tmp_path / "d.csv", rows=60)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(script(tmp_path, "quick.py", QUICK)),
        target_column="label",
        model_group="late-stop",
    )
    job_id = f"late-stop-{uuid.uuid4().hex[:8]}"
    executor = stack.trainer.executor
    launch = executor.launcher
    held: list[int] = []

    def launcher(
        argv: list[str], cwd: Path, runtime: float, memory: int, on_line: Callable[[str], None]
    ) -> Any:
        def hold_then_stop(line: str) -> None:
            on_line(line)
            if line != "trained" or cwd.name != f"{job_id}-1":
                return
            # The child goes on (export, parity, baseline, result) and exits while the
            # event loop is held here; then StopJob's stop reaches the job's handle.
            assert process.pid is not None
            wait_until_exited(process.pid)
            held.append(process.pid)
            stack.trainer.scheduler.running[job_id].stop("stopped by carol: too late")

        process = launch(argv, cwd, runtime, memory, hold_then_stop)
        return process

    executor.launcher = launcher
    try:
        await stack.submit(spec, job_id=job_id)
        job = await stack.wait(job_id, timeout=60)
    finally:
        executor.launcher = launch
    assert held, "the stop was not made once the child had exited"
    assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
    assert job.reason == ""
    version = await stack.registry.get_version("late-stop", job.model_version)
    assert version.lineage.training_job_id == job_id
    lines = await stack.logs(job_id)
    assert (
        "[mlbus] stop request (stopped by carol: too late) came too late: the job's process had "
        "already ended, and the job ends as it did"
    ) in lines

    # StopJob on the COMPLETED job is refused, naming its status; the job is unchanged.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stack.stub.StopJob(
            pb.StopJobRequest(job_id=job_id, reason="enough"),
            metadata=[("x-mlbus-actor", "carol")],
            timeout=10,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ended = job.end_time.ToDatetime().isoformat(timespec="seconds")
    assert refused.value.details() == (
        f"job {job_id} cannot be stopped: it already COMPLETED at {ended}+00:00; "
        "only a PENDING or RUNNING job can be stopped"
    )
    again = await stack.describe(job_id)
    assert again.status == ev.JOB_STATUS_COMPLETED
    assert again.model_version == job.model_version
    assert not again.reason
