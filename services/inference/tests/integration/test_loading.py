"""Model loading: checksum verified before anything is served, NOT_SERVING until warm."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mlbus.core.rpc import create_channel
from mlbus.core.settings import StorageSettings
from mlbus.core.storage import LocalObjectStore, ObjectStore
from mlbus.inference.app import build_app
from mlbus.inference.domain.errors import ModelLoadError
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.inference.worker import ModelState

pytestmark = pytest.mark.asyncio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_a_checksum_mismatch_keeps_the_worker_from_ever_serving(
    put_artifact, worker_settings, onnx_models, caplog: pytest.LogCaptureFixture
) -> None:
    ref = await put_artifact(onnx_models.mixed())
    wrong = ("0" if ref.sha256[0] != "0" else "1") + ref.sha256[1:]
    settings = worker_settings(ref).model_copy(update={"artifact_sha256": wrong})
    app = build_app(settings)
    try:
        with (
            caplog.at_level(logging.ERROR, logger="mlbus.inference"),
            pytest.raises(ModelLoadError) as info,
        ):
            await app.start()
        assert info.value.message == (
            f"artifact {ref.uri}: checksum mismatch: expected sha256 {wrong}, "
            f"got {ref.sha256}; refusing to serve it"
        )
        assert app.worker.state is ModelState.FAILED
        assert app.worker.engine is None
        assert any("model load failed: artifact" in r.getMessage() for r in caplog.records)
    finally:
        await app.stop()


@pytest.mark.parametrize("problem", ["missing", "not onnx"])
async def test_an_artifact_that_is_missing_or_not_onnx_fails_the_load(
    put_artifact, worker_settings, problem: str
) -> None:
    ref = await put_artifact(b"these bytes are not an ONNX model")
    settings = worker_settings(ref)
    if problem == "missing":
        settings = settings.model_copy(update={"artifact_uri": ref.uri + "-gone"})
        message = r"^artifact file://.*-gone: .*"
    else:
        message = r"^ONNX Runtime cannot load the model: "
    app = build_app(settings)
    try:
        with pytest.raises(ModelLoadError, match=message):
            await app.start()
    finally:
        await app.stop()


async def test_health_is_not_serving_until_the_model_is_loaded_and_warm(
    put_artifact, worker_settings, onnx_models, artifact_root
) -> None:
    ref = await put_artifact(onnx_models.mixed())
    release = asyncio.Event()
    fetching = asyncio.Event()

    class HeldStore(LocalObjectStore):
        """The real local store, whose reads wait until the test lets them go."""

        async def read_bytes(self, uri: str, *, expected_sha256: str | None = None) -> bytes:
            fetching.set()
            await release.wait()
            return await super().read_bytes(uri, expected_sha256=expected_sha256)

    async def open_held(settings: StorageSettings) -> ObjectStore:
        store = HeldStore(settings.root)
        await store.start()
        return store

    settings = worker_settings(ref).model_copy(update={"grpc_port": 0})
    app = build_app(settings, open_store=open_held)
    starting = asyncio.ensure_future(app.start())
    channel = None
    try:
        await asyncio.wait_for(fetching.wait(), 10)
        channel = create_channel(app.server.address, settings.grpc)
        health = health_pb2_grpc.HealthStub(channel)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == NOT_SERVING
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="m"))).ready
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(pb.ModelInferRequest(model_name="m"))
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == "model 'm' is loading; retry when it is ready"

        release.set()
        port = await asyncio.wait_for(starting, 20)
        assert port == app.server.port
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == SERVING
        assert (await stub.ModelReady(pb.ModelReadyRequest(name="m"))).ready
        assert app.worker.load_seconds is not None
    finally:
        release.set()
        if not starting.done():
            starting.cancel()
        if channel is not None:
            await channel.close(None)
        await app.stop()
