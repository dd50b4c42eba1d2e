"""Limits and stopping with real child processes: memory, wall clock, StopJob (SIGTERM,
then SIGKILL after the grace period)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
