"""The trainer for real: the registry and the trainer started in-process from their
composition roots on the session's broker (a topic namespace per module), jobs run as real
child processes on data sets the tests make, models registered in the real registry.

Test modules cannot import this file, so helpers hang off :class:`Stack`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest

from mlbus.common.v1 import common_pb2
from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings, KafkaSettings, StorageSettings, TelemetrySettings
from mlbus.registry.app import build_app as build_registry
from mlbus.registry.settings import RegistrySettings
from mlbus.sdk.registry import AsyncRegistryClient
from mlbus.trainer.app import TrainerApp, build_app
from mlbus.trainer.settings import TrainerSettings
from mlbus.trainer.v1 import events_pb2 as ev
from mlbus.trainer.v1 import trainer_pb2 as pb
from mlbus.trainer.v1 import trainer_pb2_grpc

TERMINAL = {ev.JOB_STATUS_COMPLETED, ev.JOB_STATUS_FAILED, ev.JOB_STATUS_STOPPED}
MIB = 1024 * 1024


def classification_csv(path: Path, rows: int = 300, features: int = 5, seed: int = 0) -> Path:
    """A binary classification data set: features f0.., target ``label``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    label = x[:, 0] + 0.5 * x[:, 1] - 0.25 * x[:, 2] + 0.3 * rng.standard_normal(rows) > 0
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(features)])
    frame["label"] = label.astype(int)
    frame.to_csv(path, index=False)
    return path


def regression_parquet(path: Path, rows: int = 300, features: int = 4, seed: int = 1) -> Path:
    """A regression data set as Parquet: features x0.., target ``y``, a categorical column."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(features)])
    frame["y"] = 3 * x[:, 0] - 2 * x[:, 1] + 0.1 * rng.standard_normal(rows) + 10
    frame.to_parquet(path)
    return path


def mixed_frame(rows: int, seed: int) -> pd.DataFrame:
    """Numeric ``tenure`` and ``spend``, string ``plan`` and ``sales region`` (6 missing),
    and two targets that depend on all of them: ``churned`` (0/1) and ``revenue``."""
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "team"], rows, p=[0.5, 0.3, 0.2])
    region = rng.choice(["eu", "us", "apac"], rows).astype(object)
    tenure = rng.uniform(0, 5, rows)
    spend = rng.standard_normal(rows)
    effect = np.array([{"basic": 1.0, "pro": -0.5, "team": -1.5}[p] for p in plan])
    score = effect + (region == "us") - tenure / 2.5 + spend
    revenue = 10 - 3 * effect + 2 * (region == "eu") + tenure + 0.2 * rng.standard_normal(rows)
    region[rng.choice(rows, 6, replace=False)] = None
    return pd.DataFrame(
        {
            "tenure": tenure,
            "plan": plan,
            "spend": spend,
            "sales region": region,
            "churned": (score + 0.3 * rng.standard_normal(rows) > 0).astype(int),
            "revenue": revenue.astype(float),
        }
    )


def trainer_settings(home: Path, kafka: KafkaSettings, registry: str, **kw: Any) -> TrainerSettings:
    """Trainer settings for tests: free ports, quick polls and leases, small grace."""
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": 0,
        "home": home,
        "kafka": kafka,
        "storage": StorageSettings(root=home / "objects"),
        "telemetry": TelemetrySettings(metrics_exporter="none"),
        "grpc": GrpcSettings(shutdown_grace_s=1.0),
        "registry_address": registry,
        "poll_interval_s": 0.2,
        "lease_s": 3.0,
        "log_flush_interval_s": 0.1,
        "stop_grace_s": 2.0,
        "max_concurrent_jobs": 3,
        "trainer_id": f"trainer-{uuid.uuid4().hex[:6]}",
        "consumer_group": f"trainer-test-{uuid.uuid4().hex[:6]}",
    }
    values.update(kw)
    return TrainerSettings(**values)


@dataclass
class Stack:
    """Registry + trainer; ``registry`` is an SDK client acting as ``approver``."""

    home: Path
    kafka: KafkaSettings
    registry_target: str
    registry: AsyncRegistryClient
    trainer: TrainerApp
    channel: grpc.aio.Channel
    stub: trainer_pb2_grpc.TrainerServiceStub
    settings: TrainerSettings
    extra: list[Any] = field(default_factory=list)

    async def submit(
        self,
        spec: ev.JobSpec,
        *,
        kind: int = ev.JOB_KIND_TRAINING,
        job_id: str = "",
        experiment: str = "",
        actor: str = "alice",
    ) -> pb.Job:
        """SubmitJob; the job as accepted."""
        response = await self.stub.SubmitJob(
            pb.SubmitJobRequest(
                job_id=job_id,
                kind=kind,
                experiment=experiment,
                spec=spec,
                actor=common_pb2.Actor(name=actor),
            ),
            timeout=10,
        )
        return response.job

    async def describe(
        self, job_id: str, stub: trainer_pb2_grpc.TrainerServiceStub | None = None
    ) -> pb.Job:
        """DescribeJob."""
        response = await (stub or self.stub).DescribeJob(
            pb.DescribeJobRequest(job_id=job_id), timeout=10
        )
        return response.job

    async def wait(
        self,
        job_id: str,
        statuses: set[int] = TERMINAL,
        timeout: float = 90.0,
        stub: trainer_pb2_grpc.TrainerServiceStub | None = None,
    ) -> pb.Job:
        """Poll DescribeJob until the job is in one of ``statuses``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                job = await self.describe(job_id, stub)
                if job.status in statuses:
                    return job
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                job = None
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not in {statuses} after {timeout}s: {job}")
            await asyncio.sleep(0.1)

    async def logs(self, job_id: str, follow: bool = False) -> list[str]:
        """The job's log lines."""
        lines: list[str] = []
        async for response in self.stub.StreamJobLogs(
            pb.StreamJobLogsRequest(job_id=job_id, follow=follow), timeout=120
        ):
            lines.extend(x.text for x in response.lines)
        return lines

    def spec(self, data: Path, **kw: Any) -> ev.JobSpec:
        """A JobSpec on ``data`` (absolute path)."""
        memory = kw.pop("max_memory_bytes", 0)
        runtime = kw.pop("max_runtime_s", 0)
        spec = ev.JobSpec(input_uri=str(data), **kw)
        if memory:
            spec.limits.max_memory_bytes = memory
        if runtime:
            spec.limits.max_runtime.FromMilliseconds(int(runtime * 1000))
        return spec

    classification_csv = staticmethod(classification_csv)
    regression_parquet = staticmethod(regression_parquet)
    mixed_frame = staticmethod(mixed_frame)

    @staticmethod
    async def wait_until(
        predicate: Callable[[], Awaitable[bool] | bool], *, timeout: float, what: str
    ) -> None:
        """See :func:`wait_until`."""
        await wait_until(predicate, timeout=timeout, what=what)


async def wait_until(
    predicate: Callable[[], Awaitable[bool] | bool], *, timeout: float, what: str
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_settings: KafkaSettings
) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("trainer-stack")
    kafka = kafka_settings.model_copy(
        update={"topic_namespace": f"trainer-{uuid.uuid4().hex[:10]}"}
    )
    registry_app = build_registry(
        RegistrySettings(
            grpc_port=0,
            metrics_port=0,
            home=home,
            kafka=kafka,
            storage=StorageSettings(root=home / "objects"),
            grpc=GrpcSettings(shutdown_grace_s=1.0),
            outbox_poll_interval_s=0.1,
            outbox_backoff_initial_s=0.05,
            outbox_backoff_max_s=0.5,
        )
    )
    registry_port = await registry_app.start()
    registry_target = f"127.0.0.1:{registry_port}"
    registry = AsyncRegistryClient(registry_target, actor="approver")
    settings = trainer_settings(home, kafka, registry_target)
    trainer = build_app(settings)
    port = await trainer.start()
    channel = create_channel(f"127.0.0.1:{port}", settings.grpc)
    await wait_for_ready(channel, timeout=10)
    try:
        yield Stack(
            home=home,
            kafka=kafka,
            registry_target=registry_target,
            registry=registry,
            trainer=trainer,
            channel=channel,
            stub=trainer_pb2_grpc.TrainerServiceStub(channel),
            settings=settings,
        )
    finally:
        await channel.close(None)
        await trainer.stop()
        await registry.close()
        await registry_app.stop()
