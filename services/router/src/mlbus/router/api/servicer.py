"""The public front door: ``inference.GRPCInferenceService`` (Open Inference Protocol v2).

Endpoint name = model name. ModelInfer is registered with raw-bytes (de)serializers: the
router parses only the request's leading fields (:class:`InferRequestHeader`: model name,
version, id, parameters) to pick a variant and an instance, then forwards the caller's
bytes unchanged and returns the worker's response bytes unchanged — the worker already
puts ``variant``, ``model_version`` and ``inference_id`` in the response parameters.
Input tensors are never decoded on the router.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from typing import Any, Final

import grpc
from google.protobuf.message import DecodeError
from opentelemetry import trace

from mlbus.core.errors import InvalidArgument, Unavailable
from mlbus.core.telemetry import inject_grpc_metadata
from mlbus.inference.v2 import grpc_service_pb2 as pb
from mlbus.router.api.shadow import ShadowMirror
from mlbus.router.domain.routing import Instance, RoutingTable, VariantPool
from mlbus.router.metrics import RouterMetrics
from mlbus.router.v1.routing_pb2 import InferRequestHeader

SERVICE_NAME: Final = "inference.GRPCInferenceService"
#: Request parameter (string) and metadata key that pin a production variant.
TARGET_VARIANT_PARAMETER: Final = "target_variant"
TARGET_VARIANT_HEADER: Final = "mlbus-target-variant"
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class _LocalUnavailable(grpc.aio.AioRpcError):
    """UNAVAILABLE made up by the router for a worker call that could not complete."""

    def __init__(self, details: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            details=details,
            debug_error_string="",
        )


def _version() -> str:
    try:
        return importlib_metadata.version("mlbus-router")
    except importlib_metadata.PackageNotFoundError:
        return "0"


def _outgoing_metadata() -> list[tuple[str, str]]:
    metadata: list[tuple[str, str]] = []
    if trace.get_current_span().get_span_context().is_valid:
        inject_grpc_metadata(metadata)
    return metadata


class RouterInferenceServicer:
    """Routes v2 calls to the workers of the routing table."""

    def __init__(
        self,
        table: RoutingTable,
        metrics: RouterMetrics,
        shadow: ShadowMirror,
        *,
        default_timeout_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.table = table
        self.metrics = metrics
        self.shadow = shadow
        self.default_timeout_s = default_timeout_s
        self._rng = rng or random.Random()
        self._server_metadata = pb.ServerMetadataResponse(
            name="mlbus-router", version=_version(), extensions=[]
        )

    def handler(self) -> grpc.GenericRpcHandler[Any, Any]:
        """The generic handler to register on the server."""

        def unary(behavior: Any, request_type: Any, response_type: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                behavior,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
                "ServerReady": unary(
                    self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse
                ),
                "ServerMetadata": unary(
                    self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
                ),
                "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
                "ModelMetadata": unary(
                    self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse
                ),
                # Raw bytes both ways: forwarded without decoding the tensors.
                "ModelInfer": grpc.unary_unary_rpc_method_handler(self.model_infer),
            },
        )

    # --- server ------------------------------------------------------------------------

    async def server_live(
        self, request: pb.ServerLiveRequest, context: Any
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(
        self, request: pb.ServerReadyRequest, context: Any
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return self._server_metadata

    # --- model -------------------------------------------------------------------------

    async def model_ready(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        route = self.table.find(request.name)
        if route is None or route.blocked_reason:
            return pb.ModelReadyResponse(ready=False)
        # A variant scaled to zero counts as ready: a request starts it (cold start).
        ready = any(
            pool.ready_instances() or (pool.cold_start is not None and not pool.instances)
            for pool in route.variants
            if not request.version or str(pool.model_version) == request.version
        )
        return pb.ModelReadyResponse(ready=ready)

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        if not request.name:
            raise InvalidArgument("name: required, the endpoint name")
        route = self.table.get(request.name)
        pool = route.choose(self._rng, model_version=request.version)
        pool.last_request = time.monotonic()
        instance = pool.pick(self._rng)
        if instance is None and pool.cold_start is not None and not pool.instances:
            instance = await self._cold_start(context, route.endpoint, pool)
        if instance is None:
            raise pool.unavailable_reason(route.endpoint)
        try:
            response: pb.ModelMetadataResponse = await instance.client.metadata(
                request, timeout=self._timeout(context), metadata=_outgoing_metadata()
            )
        except grpc.aio.AioRpcError as exc:
            await self._abort_with(context, exc)
            raise  # pragma: no cover - abort raises
        if not request.version:
            del response.versions[:]
            response.versions.extend(str(v) for v in route.versions())
        return response

    async def model_infer(self, request: bytes, context: Any) -> bytes:
        started = time.perf_counter()
        try:
            header = InferRequestHeader.FromString(request)
        except DecodeError as exc:
            raise InvalidArgument(
                f"request body: not a valid inference.ModelInferRequest ({exc})"
            ) from exc
        if not header.model_name:
            raise InvalidArgument("model_name: required, the endpoint name")
        route = self.table.get(header.model_name)
        target = ""
        param = header.parameters.get(TARGET_VARIANT_PARAMETER)
        if param is not None:
            if param.WhichOneof("parameter_choice") != "string_param":
                raise InvalidArgument(
                    f"parameters[{TARGET_VARIANT_PARAMETER!r}]: expected a string_param naming "
                    f"a variant, got {param.WhichOneof('parameter_choice') or 'nothing'}"
                )
            target = param.string_param
        if not target:
            for key, value in context.invocation_metadata() or ():
                if key == TARGET_VARIANT_HEADER:
                    target = value if isinstance(value, str) else bytes(value).decode()
                    break
        pool = route.choose(self._rng, target_variant=target, model_version=header.model_version)
        pool.last_request = time.monotonic()
        instance = pool.pick(self._rng)
        if instance is None and pool.cold_start is not None and not pool.instances:
            instance = await self._cold_start(context, route.endpoint, pool)
        if instance is None:
            error = pool.unavailable_reason(route.endpoint)
            self.metrics.request(
                route.endpoint, pool.name, error.code.name, time.perf_counter() - started
            )
            raise error
        metadata = _outgoing_metadata()
        response = await self._forward(
            context, route.endpoint, pool, instance, request, metadata, started
        )
        shadow = route.shadow
        if (
            shadow is not None
            and route.shadow_percent > 0
            and (route.shadow_percent >= 100 or self._rng.random() * 100 < route.shadow_percent)
        ):
            self.shadow.submit(route.endpoint, shadow, request, response, metadata)
        self.metrics.request(route.endpoint, pool.name, "OK", time.perf_counter() - started)
        return response

    async def _forward(
        self,
        context: Any,
        endpoint: str,
        pool: VariantPool,
        instance: Instance,
        request: bytes,
        metadata: Sequence[tuple[str, str]],
        started: float,
    ) -> bytes:
        tried: list[Instance] = []
        while True:
            instance.outstanding += 1
            try:
                response: bytes = await instance.client.infer(
                    request, timeout=self._timeout(context), metadata=metadata
                )
                return response
            except grpc.aio.AioRpcError as exc:
                error = exc
            except asyncio.CancelledError:
                # The call to the worker was cancelled under us (its channel closed because
                # the worker went away), not the caller's call: answer it elsewhere.
                if context.cancelled() or instance.healthy:
                    raise
                error = _LocalUnavailable(f"worker {instance.id} went away during the call")
            finally:
                instance.outstanding -= 1
            tried.append(instance)
            retry = None
            if error.code() is _UNAVAILABLE and len(tried) == 1:
                # Connection refused or the worker is stopping: once more, elsewhere.
                retry = pool.pick(self._rng, exclude=tried)
            if retry is None:
                self.metrics.request(
                    endpoint, pool.name, error.code().name, time.perf_counter() - started
                )
                await self._abort_with(context, error)
                raise error  # pragma: no cover - abort raises
            self.metrics.retried(endpoint, pool.name)
            instance = retry

    async def _cold_start(self, context: Any, endpoint: str, pool: VariantPool) -> Instance:
        """Start a scaled-to-zero variant's workers and wait (within the call's deadline)."""
        assert pool.cold_start is not None
        timeout = self._timeout(context)
        if not await pool.cold_start(timeout):
            raise Unavailable(
                f"endpoint {endpoint!r}: variant {pool.name!r} was scaled to zero and no "
                f"worker was ready within the call's deadline ({timeout:.1f}s); retry shortly"
            )
        instance = pool.pick(self._rng)
        if instance is None:
            raise pool.unavailable_reason(endpoint)
        return instance

    def _timeout(self, context: Any) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.default_timeout_s
        return max(float(remaining), 0.001)

    @staticmethod
    async def _abort_with(context: Any, exc: grpc.aio.AioRpcError) -> None:
        """Fail the caller's call with the worker's status, message and details."""
        metadata: Any = exc.trailing_metadata() or ()
        trailing = tuple((k, v) for k, v in metadata if not k.startswith("grpc-"))
        await context.abort(exc.code(), exc.details() or exc.code().name, trailing)
