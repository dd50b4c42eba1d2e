"""A trainer that dies mid-job never leaves the job RUNNING: a real trainer process is
SIGKILLed (its jobs die with it) and another replica fails its jobs once their lease
expires, or runs them again, from the checkpoints the killed attempt left; a trainer that
shuts down re-queues its jobs while they have attempts left, and the next start runs them
again."""

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
from mlbus.core.settings import StorageSettings
from mlbus.core.storage import create_object_store
from mlbus.sdk.local.broker import free_port
from mlbus.trainer.app import build_app
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

# Leaves a mark per attempt in its checkpoint directory, and says what it found there.
SLOW = """
import time
from pathlib import Path
from sklearn.linear_model import LogisticRegression

def train(data, hyperparameters):
    marks = Path(data.checkpoint_dir) / "attempts"
    earlier = marks.read_text() if marks.exists() else ""
    marks.write_text(earlier + "x")
    print(f"working; earlier attempts: {len(earlier)}", flush=True)
    time.sleep(float(hyperparameters.get("seconds", 120)))
    return LogisticRegression().fit(data.X_train, data.y_train)
"""

# Three epochs; after each, the epoch is written to the checkpoint directory (to a .tmp
# name, then renamed, so it is never copied half-written). The first attempt is killed in
# its first epoch; the next one reads the checkpoint and goes on from there.
RESUMABLE = """
import json
import os
import time
from pathlib import Path

from sklearn.linear_model import LogisticRegression


def train(data, hyperparameters):
    state = Path(os.environ["MLBUS_CHECKPOINT_DIR"]) / "state.json"
    assert str(state.parent) == data.checkpoint_dir
    epoch = 0
    if state.exists():
        epoch = json.loads(state.read_text())["epoch"]
        print(f"resumed from epoch {epoch}", flush=True)
    while epoch < 3:
        epoch += 1
        data.report(epoch, epoch=epoch)
        state.with_suffix(".tmp").write_text(json.dumps({"epoch": epoch}))
        state.with_suffix(".tmp").replace(state)
        if epoch == 1:
            time.sleep(120)  # the trainer is killed meanwhile
    return LogisticRegression().fit(data.X_train, data.y_train)
"""


def _job_processes(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "mlbus.trainer.child" in cmdline and marker in cmdline:
            found.append(p)
    return found


def _trainer_process(
    stack: Any, home: Path, port: int, database: str, trainer_id: str, **settings: str
) -> subprocess.Popen[bytes]:
    """A trainer in its own process (``settings``: more TRAINER_* variables)."""
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
        "TRAINER_TRAINER_ID": trainer_id,
        "TRAINER_LEASE_S": "3",
        "TRAINER_POLL_INTERVAL_S": "0.2",
        "TRAINER_CONSUMER_GROUP": f"crash-{uuid.uuid4().hex[:8]}",
        **{f"TRAINER_{name.upper()}": value for name, value in settings.items()},
    }
    return subprocess.Popen(
        [sys.executable, "-m", "mlbus.trainer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(home / "trainer.log").open("wb"),
    )


async def test_killed_trainer_leaves_no_job_running(stack: Any, tmp_path: Path) -> None:
    home = tmp_path / "crashy"
    home.mkdir()
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    port = free_port()
    process = _trainer_process(stack, home, port, database, "crashy")
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
        hyperparameters={"seconds": "2"},
    )
    submitted = await stub.SubmitJob(
        pb.SubmitJobRequest(
            kind=ev.JOB_KIND_TRAINING, spec=spec, actor=common_pb2.Actor(name="alice")
        ),
        timeout=10,
    )
    job_id = submitted.job.job_id

    async def working() -> bool:
        async for response in stub.StreamJobLogs(
            pb.StreamJobLogsRequest(job_id=job_id), timeout=10
        ):
            if any(x.text.startswith("working") for x in response.lines):
                return True
        return False

    await stack.wait_until(working, timeout=30, what="the job to start working")
    await channel.close(None)
    # Shutting down, the trainer copies the job's checkpoint directory (its periodic copy
    # is 10 s away) before it re-queues the job.
    await first.stop()

    second = build_app(settings)
    port = await second.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await stack.wait(job_id, timeout=60, stub=stub)
        assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
        assert job.attempts == 2
        lines = [
            x.text
            async for r in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id), timeout=10)
            for x in r.lines
        ]
        assert [x for x in lines if x.startswith("working")] == [
            "working; earlier attempts: 0",
            "working; earlier attempts: 1",
        ]
    finally:
        await channel.close(None)
        await second.stop()


async def test_a_rerun_after_a_crash_resumes_from_the_checkpoint(
    stack: Any, tmp_path: Path
) -> None:
    home = tmp_path / "resumer"
    home.mkdir()
    database = f"sqlite:///{tmp_path / 'resume.db'}"
    port = free_port()
    process = _trainer_process(
        stack, home, port, database, "resumer", max_attempts="2", checkpoint_sync_interval_s="0.2"
    )
    objects = create_object_store(StorageSettings(root=home / "objects"))
    await objects.start()

    async def kept(job_id: str) -> list[str]:
        prefix = f"trainer-checkpoints/{job_id}/"
        return [objects.key_for(i.uri)[len(prefix) :] async for i in objects.list(prefix)]

    try:
        channel = create_channel(f"127.0.0.1:{port}", stack.settings.grpc)
        await wait_for_ready(channel, timeout=60)
        data = stack.classification_csv(tmp_path / "d.csv", rows=60)
        (tmp_path / "resumable.py").write_text(RESUMABLE)
        spec = stack.spec(
            data,
            algorithm="custom",
            script_uri=str(tmp_path / "resumable.py"),
            target_column="label",
        )
        submitted = await trainer_pb2_grpc.TrainerServiceStub(channel).SubmitJob(
            pb.SubmitJobRequest(
                kind=ev.JOB_KIND_TRAINING, spec=spec, actor=common_pb2.Actor(name="alice")
            ),
            timeout=10,
        )
        job_id = submitted.job.job_id
        await channel.close(None)

        async def copied() -> bool:
            return "state.json" in await kept(job_id)

        # The first epoch's checkpoint reached the object store: kill the trainer.
        await stack.wait_until(copied, timeout=60, what="the checkpoint copy")
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        await stack.wait_until(
            lambda: not _job_processes(str(home)), timeout=10, what="the job process to die"
        )
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # The trainer comes back (same name: it takes its job over at once) and runs it again.
    settings = stack.settings.model_copy(
        update={
            "database_url": database,
            "trainer_id": "resumer",
            "max_attempts": 2,
            "home": tmp_path / "again",
            "storage": StorageSettings(root=home / "objects"),
        }
    )
    again = build_app(settings)
    port = await again.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    try:
        stub = trainer_pb2_grpc.TrainerServiceStub(channel)
        job = await stack.wait(job_id, timeout=60, stub=stub)
        assert job.status == ev.JOB_STATUS_COMPLETED, job.reason
        assert job.attempts == 2
        lines = [
            x.text
            async for r in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id), timeout=10)
            for x in r.lines
        ]
        assert any("checkpoints: 1 file(s) of an earlier attempt restored" in x for x in lines)
        assert "resumed from epoch 1" in lines
        # The second attempt went on with epochs 2 and 3 only.
        assert {h.name: list(h.values) for h in job.history}["validation_epoch"] == [2.0, 3.0]
        # The job has ended: its checkpoints are not kept any longer.
        assert await kept(job_id) == []
    finally:
        await channel.close(None)
        await again.stop()
        await objects.aclose()
