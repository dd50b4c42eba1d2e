"""The router for real: the registry and the router started in-process from their
composition roots on the session's broker, and the workers the controller spawns as real
``python -m mlbus.inference`` processes serving real ONNX models.

One stack per test module (workers take seconds to start); each test uses endpoints of its
own. Test modules cannot import this file, so helpers hang off :class:`Stack`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from mlbus.core.rpc import create_channel, wait_for_ready
from mlbus.core.settings import GrpcSettings, KafkaSettings, StorageSettings, TelemetrySettings
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.registry.app import build_app as build_registry
from mlbus.registry.settings import RegistrySettings
from mlbus.router.app import RouterApp, build_app
from mlbus.router.settings import RouterSettings
from mlbus.sdk.registry import AsyncRegistryClient
from mlbus.testing.onnx_models import linear_model


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], *, timeout: float, what: str
) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    pause = 0.01
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.2)


def infer_request(
    endpoint: str,
    x: np.ndarray,
    *,
    version: str = "",
    request_id: str = "",
    **parameters: str,
) -> pb.ModelInferRequest:
    """A v2 request with ``x`` as input ``x`` (raw contents)."""
    request = pb.ModelInferRequest(model_name=endpoint, model_version=version, id=request_id)
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    return request


def output(response: pb.ModelInferResponse, name: str = "y") -> np.ndarray:
    """An FP32 output of a response (raw contents)."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name == name:
            return np.frombuffer(response.raw_output_contents[index], dtype=np.float32).reshape(
                tuple(tensor.shape)
            )
    raise KeyError(name)


def linear_reference(model_seed: int, x: np.ndarray) -> np.ndarray:
    """What ``linear_model(4, 1, seed=model_seed)`` computes."""
    rng = np.random.default_rng(model_seed)
    w = rng.standard_normal((4, 1)).astype(np.float32)
    b = rng.standard_normal(1).astype(np.float32)
    return x @ w + b


@dataclass
class Stack:
    """Registry + router; ``registry`` is an SDK client (self-approval allowed)."""

    home: Path
    registry: AsyncRegistryClient
    router: RouterApp
    channel: grpc.aio.Channel
    stub: pb_grpc.GRPCInferenceServiceStub
    registry_target: str
    router_target: str
    settings: RouterSettings

    async def model(self, group: str, seed: int) -> int:
        """Register and approve ``linear_model(4, 1, seed)`` in ``group``; its version."""
        version = await self.registry.register(
            linear_model(4, 1, seed=seed),
            group=group,
            create_group=True,
            metrics={"seed": float(seed)},
        )
        await self.registry.approve(group, version.version, reason="test")
        return version.version

    async def deployed(self, endpoint: str, revision: int, timeout: float = 90.0) -> None:
        """Wait until the router routes ``endpoint`` at ``revision`` or later."""
        controller = self.router.controller

        def done() -> bool:
            return controller.applied_revision(endpoint) >= revision

        if not await controller.wait_for(done, timeout):
            raise AssertionError(
                f"endpoint {endpoint} not deployed at revision {revision} within {timeout}s: "
                f"{controller.describe()}"
            )

    async def create(self, endpoint: str, variants: Sequence[Mapping[str, Any]], **kw: Any) -> int:
        """Create ``endpoint`` and wait until it serves; its revision."""
        created = await self.registry.create_endpoint(endpoint, list(variants), **kw)
        revision = created.current_config.revision
        await self.deployed(endpoint, revision)
        return revision

    async def infer(
        self,
        endpoint: str,
        x: np.ndarray,
        *,
        metadata: Sequence[tuple[str, str]] = (),
        timeout: float = 10.0,
        **kw: Any,
    ) -> pb.ModelInferResponse:
        """One ModelInfer through the router."""
        response: pb.ModelInferResponse = await self.stub.ModelInfer(
            infer_request(endpoint, x, **kw), timeout=timeout, metadata=tuple(metadata)
        )
        return response

    # Helpers for test modules (which cannot import this file).
    request = staticmethod(infer_request)
    output = staticmethod(output)
    reference = staticmethod(linear_reference)
    wait_until = staticmethod(wait_until)

    async def read_topic(self, topic: str, *, count: int, timeout: float = 30.0) -> list[Any]:
        """At least ``count`` records of ``topic`` from its start (fewer on timeout)."""
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=self.settings.kafka.bootstrap_servers,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        records: list[Any] = []
        try:
            deadline = time.monotonic() + timeout
            while len(records) < count and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=200)
                for part in batch.values():
                    records.extend(part)
        finally:
            await consumer.stop()
        return records

    def workers(self, endpoint: str) -> list[dict[str, Any]]:
        """The controller's view of ``endpoint``'s workers."""
        for item in self.router.controller.describe():
            if item["endpoint"] == endpoint:
                return list(item["workers"])
        return []


def router_settings(
    home: Path, kafka: KafkaSettings, registry_target: str, **kw: Any
) -> RouterSettings:
    """Router settings for tests: free ports, quick timings, quiet workers."""
    values: dict[str, Any] = {
        "grpc_port": 0,
        "metrics_port": 0,
        "home": home,
        "kafka": kafka,
        "storage": StorageSettings(root=home / "objects"),
        "telemetry": TelemetrySettings(metrics_exporter="none"),
        "grpc": GrpcSettings(shutdown_grace_s=1.0),
        "registry_address": registry_target,
        "worker_ready_timeout_s": 60.0,
        "worker_drain_timeout_s": 10.0,
        "worker_stop_grace_s": 5.0,
        "worker_restart_backoff_s": 0.2,
        "controller_group_id": f"router-test-{uuid.uuid4().hex[:8]}",
    }
    values.update(kw)
    return RouterSettings(**values)


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, kafka_settings: KafkaSettings
) -> AsyncIterator[Stack]:
    home = tmp_path_factory.mktemp("router-stack")
    kafka = kafka_settings.model_copy(update={"topic_namespace": f"router-{uuid.uuid4().hex[:10]}"})
    registry_app = build_registry(
        RegistrySettings(
            grpc_port=0,
            metrics_port=0,
            home=home,
            kafka=kafka,
            storage=StorageSettings(root=home / "objects"),
            grpc=GrpcSettings(shutdown_grace_s=1.0),
            allow_self_approval=True,
            outbox_poll_interval_s=0.1,
            outbox_backoff_initial_s=0.05,
            outbox_backoff_max_s=0.5,
        )
    )
    registry_port = await registry_app.start()
    registry_target = f"127.0.0.1:{registry_port}"
    registry = AsyncRegistryClient(registry_target, actor="tester")
    settings = router_settings(home, kafka, registry_target)
    router = build_app(settings)
    router_port = await router.start()
    channel = create_channel(f"127.0.0.1:{router_port}", settings.grpc)
    await wait_for_ready(channel, timeout=10)
    try:
        yield Stack(
            home=home,
            registry=registry,
            router=router,
            channel=channel,
            stub=pb_grpc.GRPCInferenceServiceStub(channel),
            registry_target=registry_target,
            router_target=f"127.0.0.1:{router_port}",
            settings=settings,
        )
    finally:
        await channel.close(None)
        await router.stop()
        await registry.close()
        await registry_app.stop()


@pytest.fixture
def endpoint_name(unique_name: Callable[[str], str]) -> str:
    """A fresh endpoint (and model group) name for this test."""
    return unique_name("ep")[:60].strip("-")
