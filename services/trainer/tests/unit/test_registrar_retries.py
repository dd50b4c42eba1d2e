"""The trainer's registrar retries a registration whose answer did not come in time, with
the same request id: a registration that committed before its answer was lost is then
returned by the registry (idempotent by request id), not left failing the job. The registry
here is a small real gRPC server that answers the first call too late."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc

from mlbus.core.settings import GrpcSettings
from mlbus.registry.v1 import registry_pb2 as pb
from mlbus.registry.v1 import registry_pb2_grpc
from mlbus.trainer.adapters.registry import RegistryRegistrar


class SlowOnce(registry_pb2_grpc.RegistryServiceServicer):
    """Registers by request id; the first answer comes after the caller's deadline."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.versions: dict[str, int] = {}

    async def RegisterModelVersion(
        self, requests: Any, context: Any
    ) -> pb.RegisterModelVersionResponse:
        header = None
        async for request in requests:
            if request.HasField("header"):
                header = request.header
        assert header is not None
        self.calls.append(header.request_id)
        version = self.versions.setdefault(header.request_id, len(self.versions) + 1)
        if len(self.calls) == 1:
            await asyncio.sleep(2)  # committed, but the answer is late
        return pb.RegisterModelVersionResponse(
            model_version=pb.ModelVersion(model_group=header.model_group, version=version)
        )


async def test_a_registration_answered_too_late_is_retried_with_its_request_id(
    tmp_path: Path,
) -> None:
    servicer = SlowOnce()
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx bytes")
    try:
        registrar = RegistryRegistrar(
            f"127.0.0.1:{port}", timeout_s=0.5, attempts=3, grpc=GrpcSettings(), backoff_s=0.01
        )
        registered = await registrar.register(
            actor="alice",
            model_group="churn",
            model=model,
            metrics={},
            hyperparameters={},
            lineage={},
            baseline=None,
            tags={},
            request_id="trainer-job-1",
            description="",
        )
    finally:
        await server.stop(None)
    assert (registered.model_group, registered.version) == ("churn", 1)
    assert servicer.calls == ["trainer-job-1", "trainer-job-1"]
