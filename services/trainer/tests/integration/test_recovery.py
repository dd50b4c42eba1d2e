"""A trainer that dies mid-job never leaves the job RUNNING: a real trainer process is
SIGKILLed (its jobs die with it) and another replica fails its jobs once their lease
expires; a trainer that shuts down re-queues its jobs while they have attempts left, and
the next start runs them again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil

from mlbus.common.v1 import common_pb2
from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.sdk.local.broker import free_port
from mlbus.trainer.app import build_app
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

SLOW = """
import time
from sklearn.linear_model import LogisticRegression

def train(data, hyperparameters):
    print("working", flush=True)
    time.sleep(float(hyperparameters.get("seconds", 120)))
    return LogisticRegression().fit(data.X_train, data.y_train)
"""


def _job_processes(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "mlbus.trainer.child" in cmdline and marker in cmdline:
            found.append(p)
    return found


async def test_killed_trainer_leaves_no_job_running(stack: Any, tmp_path: Path) -> None:
    home = tmp_path / "crashy"
    home.mkdir()
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    port = free_port()
    env = {
        **os.environ,
        "MLBUS_KAFKA_BOOTSTRAP_SERVERS": stack.kafka.bootstrap_servers,
        "MLBUS_KAFKA_TOPIC_NAMESPACE": f"crash-{uuid.uuid4().hex[:8]}",
        "MLBUS_STORAGE_ROOT": str(home / "objects"),
        "MLBUS_TELEMETRY_METRICS_EXPORTER": "none",
        "TRAINER_HOME": str(home),
        "TRAINER_GRPC_PORT": str(port),
        "TRAINER_METRICS_PORT": "0",
        "TRAINER_DATABASE_URL": database,
        "TRAINER_TRAINER_ID": "crashy",
        "TRAINER_LEASE_S": "3",
        "TRAINER_POLL_INTERVAL_S": "0.2",
        "TRAINER_CONSUMER_GROUP": f"crash-{uuid.uuid4().hex[:8]}",
    }
    process = subprocess.Popen(  # noqa: ASYNC220 - a plain child, killed by the test
        [sys.executable, "-m", "mlbus.trainer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "trainer.log").open("wb"),
    )
    try:
        channel = create_channel(f"127.0.0.1:{port}", stack.settings.grpc)
        await wait_for_ready(channel, timeout=60)
        crashy = trainer_pb2_grpc.TrainerServiceStub(channel)
        data = stack.classification_csv(tmp_path / "d.csv", rows=60)
        (tmp_path / "slow.py").write_text(SLOW)
        spec = stack.spec(
            data, algorithm="custom", script_uri=str(tmp_path / "slow.py"), target_column="label"
        )
        submitted = await crashy.SubmitJob(
            pb.SubmitJobRequest(
                kind=ev.JOB_KIND_TRAINING, spec=spec, actor=common_pb2.Actor(name="alice")
            ),
            timeout=10,
        )
        job_id = submitted.job.job_id
        await stack.wait(job_id, {ev.JOB_STATUS_RUNNING}, timeout=60, stub=crashy)
        await channel.close(None)
        await stack.wait_until(
            lambda: bool(_job_processes(str(home))), timeout=30, what="the job process"
        )
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        # The job's process died with its trainer (parent-death signal).
        await stack.wait_until(
            lambda: not _job_processes(str(home)), timeout=10, what="the job process to die"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # Another replica on the same database settles the job once the lease ran out.
    other_settings = stack.settings.model_copy(
        update={
            "database_url": database,
            "trainer_id": "other",
            "max_attempts": 1,
            "home": tmp_path / "other",
        }
    )
    other = build_app(other_settings)
    port = await other.start()
    channel = create_channel(f"127.0.0.1:{port}", other_settings.grpc)
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await stack.wait(job_id, timeout=30, stub=stub)
        assert job.status == ev.JOB_STATUS_FAILED
        assert (
            job.reason
            == "trainer crashy stopped responding while the job was running (attempt 1 of 1)"
        )
    finally:
        await channel.close(None)
        await other.stop()


async def test_shutdown_requeues_and_restart_runs_again(stack: Any, tmp_path: Path) -> None:
    settings = stack.settings.model_copy(
        update={
            "database_url": f"sqlite:///{tmp_path / 'restart.db'}",
            "trainer_id": "restarting",
            "max_attempts": 2,
            "home": tmp_path,
        }
    )
    first = build_app(settings)
    port = await first.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    stub = trainer_pb2_grpc.TrainerServiceStub(channel)
    data = stack.classification_csv(tmp_path / "d.csv", rows=60)
    (tmp_path / "slow.py").write_text(SLOW)
    spec = stack.spec(
        data,
        algorithm="custom",
        script_uri=str(tmp_path / "slow.py"),
        target_column="label",
        hyperparameters={"seconds": "3"},
    )
    submitted = await stub.SubmitJob(
        pb.SubmitJobRequest(
            kind=ev.JOB_KIND_TRAINING, spec=spec, actor=common_pb2.Actor(name="alice")
        ),
        timeout=10,
    )
    job_id = submitted.job.job_id
    await stack.wait(job_id, {ev.JOB_STATUS_RUNNING}, timeout=30, stub=stub)
    await channel.close(None)
    await first.stop()

    second = build_app(settings)
    port = await second.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await stack.wait(job_id, timeout=60, stub=stub)
        assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
        assert job.attempts == 2
    finally:
        await channel.close(None)
        await second.stop()
