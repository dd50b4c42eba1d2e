"""``inference.GRPCInferenceService`` (Open Inference Protocol v2) of the worker: thin —
convert, call the worker, convert back. Errors are MlbusErrors mapped by the interceptor."""

from __future__ import annotations

import asyncio
import time
from importlib import metadata as importlib_metadata
from typing import Any, Final

import grpc

from mlbus.core.errors import MlbusError, ResourceExhausted
from mlbus.inference.adapters.capture import CapturePublisher
from mlbus.inference.api.converters import decode_request, encode_response
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.inference.worker import Worker

#: Full name of the service, for health and reflection.
SERVICE_NAME: Final = "inference.GRPCInferenceService"
SERVER_NAME: Final = "mlbus-inference"
PLATFORM: Final = "onnxruntime_onnx"

Context = grpc.aio.ServicerContext[Any, Any]


def _server_version() -> str:
    try:
        return importlib_metadata.version("mlbus-inference")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The v2 endpoints of one worker."""

    def __init__(
        self,
        worker: Worker,
        capture: CapturePublisher,
        metrics: InferenceMetrics,
        *,
        max_concurrent_requests: int,
    ) -> None:
        self._worker = worker
        self._capture = capture
        self._metrics = metrics
        self._max_in_flight = max_concurrent_requests
        self._in_flight = 0
        self._metadata = pb.ServerMetadataResponse(name=SERVER_NAME, version=_server_version())

    @property
    def in_flight(self) -> int:
        """ModelInfer calls in progress."""
        return self._in_flight

    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._worker.server_ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return self._metadata

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._worker.model_ready(request.name, request.version))

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        signature = self._worker.signature(request.name, request.version)
        T = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[self._worker.version],
            platform=PLATFORM,
            inputs=[
                T(name=t.name, datatype=t.datatype.name, shape=t.shape or ())
                for t in signature.inputs
            ],
            outputs=[
                T(name=t.name, datatype=t.datatype.name, shape=t.shape or ())
                for t in signature.outputs
            ],
        )

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: Context
    ) -> pb.ModelInferResponse:
        return await self.infer(request)

    async def infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        """One inference, however it arrived (unary call or the router's stream); raises
        an MlbusError for a request the model cannot answer."""
        started = time.perf_counter()
        received = time.time()
        status = "OK"
        if self._in_flight >= self._max_in_flight:
            self._metrics.request_done("RESOURCE_EXHAUSTED", time.perf_counter() - started)
            raise ResourceExhausted(
                f"the worker is at its limit of {self._max_in_flight} concurrent requests; "
                "retry later or on another instance"
            )
        self._in_flight += 1
        try:
            engine = self._worker.ready_engine(request.model_name, request.model_version)
            signature = engine.runner.signature
            decoded = decode_request(request, signature)
            outputs = await engine.infer(decoded.inputs, decoded.outputs)
            response = encode_response(
                request,
                decoded,
                outputs,
                signature,
                model_version=self._worker.version,
                variant=self._worker.settings.variant,
            )
        except MlbusError as exc:
            status = exc.code.name
            raise
        except asyncio.CancelledError:
            status = "CANCELLED"
            raise
        except BaseException:
            status = "INTERNAL"
            raise
        finally:
            self._in_flight -= 1
            elapsed = time.perf_counter() - started
            self._metrics.request_done(status, elapsed)
        self._capture.offer(
            request,
            response,
            inference_id=decoded.inference_id,
            received=received,
            latency_s=elapsed,
        )
        return response
