"""Composition root of the inference worker: metrics, worker, capture, servicer, app.

Start order (``ServiceApp.start``): bus connection and capture topic → capture task → gRPC
server listening with health NOT_SERVING (ServerLive true, ServerReady false) → model
fetched, verified, loaded and warmed ("model ready" logged) → health SERVING and
"service ready" logged.
A model that cannot be loaded makes ``start`` raise ModelLoadError; ``main`` then exits
with status 3. Without a configured model the server is SERVING as soon as it listens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from mlbus.core.async_inference import async_group_id, batch_group_id
from mlbus.core.messaging import EventConsumer, Topic
from mlbus.core.service import ServiceApp
from mlbus.core.storage import ObjectStore, open_object_store
from mlbus.inference.adapters.artifacts import StoreOpener
from mlbus.inference.adapters.capture import CaptureIdentity, CapturePublisher
from mlbus.inference.api.servicer import SERVICE_NAME, InferenceServicer
from mlbus.inference.api.stream import SERVICE_NAME as STREAM_SERVICE_NAME
from mlbus.inference.api.stream import WorkerStreamServicer
from mlbus.inference.events.async_requests import AsyncRequestHandler
from mlbus.inference.events.batch_chunks import BatchChunkHandler
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.settings import InferenceSettings
from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc
from mlbus.inference.worker import Worker

log = logging.getLogger(__name__)


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
        # The router's hop: the same requests multiplexed on a long-lived stream.
        self.server.add_generic_handler(
            WorkerStreamServicer(self.servicer).handler(), STREAM_SERVICE_NAME
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
        self._open_store = open_store
        self.async_consumer: EventConsumer | None = None
        self.async_handler: AsyncRequestHandler | None = None
        self.batch_consumer: EventConsumer | None = None
        self.batch_handler: BatchChunkHandler | None = None
        self._async_store: ObjectStore | None = None
        self._async_start: asyncio.Task[None] | None = None
        if settings.serves_model and settings.async_enabled and not settings.shadow:
            endpoint = settings.model_name
            topics: list[Topic[Any]] = [
                cast(Topic[Any], self.catalogue.async_requests(endpoint)),
                cast(Topic[Any], self.catalogue.async_results(endpoint)),
                cast(Topic[Any], self.catalogue.async_errors(endpoint)),
            ]
            self.topics.extend(topics)
            self.async_handler = AsyncRequestHandler(
                self.worker,
                None,
                self.producer,
                requests=self.catalogue.async_requests(endpoint),
                results=self.catalogue.async_results(endpoint),
                errors=self.catalogue.async_errors(endpoint),
                endpoint=endpoint,
                variant=settings.variant,
                model_version=settings.model_version,
                default_timeout_s=settings.async_timeout_s,
            )
            self.async_consumer = EventConsumer(
                settings.kafka,
                group_id=async_group_id(endpoint),
                topics=[topics[0]],
                handler=self.async_handler.handle,
                source=self.name,
                producer=self.producer,
                on_dead_letter=self.async_handler.on_dead_letter,
                concurrent_partitions=True,
                fetch_max_wait_ms=settings.queue_fetch_max_wait_ms,
                # A request may run until its deadline (async_timeout_s by default). (Fewer
                # records per poll cost a quarter of the throughput of small requests.)
                max_handle_s=settings.async_timeout_s,
            )
            self.batch_handler = BatchChunkHandler(self.worker, None, endpoint=endpoint)
            batch_topic = cast(Topic[Any], self.catalogue.batch_chunks(endpoint))
            self.topics.append(batch_topic)
            self.batch_consumer = EventConsumer(
                settings.kafka,
                group_id=batch_group_id(endpoint),
                topics=[batch_topic],
                handler=self.batch_handler.handle,
                on_dead_letter=self.batch_handler.on_dead_letter,
                source=self.name,
                producer=self.producer,
                concurrent_partitions=True,
                fetch_max_wait_ms=settings.queue_fetch_max_wait_ms,
                max_handle_s=settings.batch_chunk_max_s,
            )
            # Registered last, so it runs first on stop: no new async work for a stopping model.
            self.on_stop(self._stop_async)

    async def _start_async(self) -> None:
        # Only once the model answered its warm-up: queued requests and chunks then run at
        # once instead of failing on a model still loading.
        if self.async_consumer is None or self.async_handler is None:
            return
        try:
            self._async_store = await self._open_store(self.settings.storage)
            self.async_handler.store = self._async_store
            await self.async_consumer.start()
            if self.batch_consumer is not None and self.batch_handler is not None:
                self.batch_handler.store = self._async_store
                await self.batch_consumer.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Real-time serving goes on; queued requests wait in the topic for another worker.
            log.exception("cannot consume asynchronous requests")

    async def _stop_async(self) -> None:
        if self._async_start is not None and not self._async_start.done():
            self._async_start.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._async_start
        # Both leave their groups at once: a stopping worker should not wait twice.
        await asyncio.gather(
            *(
                c.stop()
                for c in (self.async_consumer, self.batch_consumer)
                if c is not None and c.running
            )
        )
        if self._async_store is not None:
            await self._async_store.aclose()
            self._async_store = None

    async def _listen_then_load(self, *, serving: bool = True) -> int:
        port = await self._listen(serving=False)
        # Before the model loads: the router reads the port to probe readiness.
        self.announce_port(port)
        await self.worker.load()
        await self.server.set_serving(serving)
        # After SERVING, in the background: joining the request topic's group takes seconds
        # and must delay neither real-time traffic nor the service's signal handling.
        if self.async_consumer is not None:
            self._async_start = asyncio.create_task(
                self._start_async(), name="async-consumer-start"
            )
        return port


def build_app(
    settings: InferenceSettings, *, open_store: StoreOpener = open_object_store
) -> InferenceApp:
    """Wire the inference worker from its settings (``open_store`` opens the object store
    the artifact is read from)."""
    return InferenceApp(settings, open_store=open_store)
