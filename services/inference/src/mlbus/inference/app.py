"""Composition root of the inference worker: metrics, worker, capture, servicer, app.

Start order (``ServiceApp.start``): bus connection and capture topic → capture task → gRPC
server listening with health NOT_SERVING (ServerLive true, ServerReady false) → model
fetched, verified, loaded and warmed ("model ready" logged) → health SERVING and
"service ready" logged.
A model that cannot be loaded makes ``start`` raise ModelLoadError; ``main`` then exits
with status 3. Without a configured model the server is SERVING as soon as it listens.
"""

from __future__ import annotations

from typing import Any, cast

from mlbus.core.messaging import Topic
from mlbus.core.service import ServiceApp
from mlbus.core.storage import open_object_store
from mlbus.inference.adapters.artifacts import StoreOpener
from mlbus.inference.adapters.capture import CaptureIdentity, CapturePublisher
from mlbus.inference.api.servicer import SERVICE_NAME, InferenceServicer
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.settings import InferenceSettings
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.inference.worker import Worker


class InferenceApp(ServiceApp):
    """A ServiceApp whose server listens NOT_SERVING while the model loads, and turns
    SERVING only once the model answered its warm-up inference; :meth:`start` raises
    ModelLoadError when it cannot."""

    def __init__(self, settings: InferenceSettings, *, open_store: StoreOpener) -> None:
        super().__init__(settings)
        self.inference_settings = settings
        self.metrics = InferenceMetrics(settings.model_name, settings.variant)
        self.worker = Worker(settings, self.metrics, open_store=open_store)
        capture_topic = self.catalogue.inference_captured
        self.topics.append(cast(Topic[Any], capture_topic))
        self.capture = CapturePublisher(
            self.producer,
            capture_topic,
            self.metrics,
            CaptureIdentity(
                endpoint=settings.model_name,
                variant=settings.variant,
                model_group=settings.model_group,
                model_version=settings.model_version,
                shadow=settings.shadow,
            ),
            percent=settings.capture_percent if settings.serves_model else 0.0,
            queue_size=settings.capture_queue_size,
            max_payload_bytes=settings.capture_max_payload_bytes,
        )
        self.servicer = InferenceServicer(
            self.worker,
            self.capture,
            self.metrics,
            max_concurrent_requests=settings.max_concurrent_requests,
        )
        self.server.add_service(
            pb_grpc.add_GRPCInferenceServiceServicer_to_server, self.servicer, SERVICE_NAME
        )
        # ServiceApp.start() starts the gRPC server as its last step; here that step listens
        # NOT_SERVING, loads and warms the model, and only then turns SERVING. (A
        # "before serving" hook in ServiceApp would make this wrapping unnecessary.)
        self._listen = self.server.start
        self.server.start = self._listen_then_load  # type: ignore[method-assign]
        self.on_start(self.capture.start)
        # Stop hooks run in reverse: the engine first (queued requests fail, running ones
        # finish), then the capture queue is flushed while the producer is still up.
        self.on_stop(self.capture.stop)
        self.on_stop(self.worker.stop)

    async def _listen_then_load(self, *, serving: bool = True) -> int:
        port = await self._listen(serving=False)
        await self.worker.load()
        await self.server.set_serving(serving)
        return port


def build_app(
    settings: InferenceSettings, *, open_store: StoreOpener = open_object_store
) -> InferenceApp:
    """Wire the inference worker from its settings (``open_store`` opens the object store
    the artifact is read from)."""
    return InferenceApp(settings, open_store=open_store)
