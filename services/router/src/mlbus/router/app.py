"""Composition root of the router: routing table, front door, deployment controller.

Start order: bus connection → controller's registry-event consumer → gRPC server (the
front door answers at once; endpoints appear as their workers become ready) → registry
bootstrap in the background. Stop order: server (in-flight calls finish) → consumer →
shadow copies → workers (SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import functools
import os
from typing import Any, cast

from mlbus.core.messaging import EventConsumer, Topic
from mlbus.core.rpc import create_channel
from mlbus.core.service import ServiceApp
from mlbus.core.settings import shared_env
from mlbus.core.storage import ObjectStore, open_object_store
from mlbus.router.adapters.queue_depth import KafkaQueueDepth
from mlbus.router.adapters.registry_source import RegistrySource
from mlbus.router.adapters.workers import ProcessBackend, WorkerClient
from mlbus.router.api.async_service import AsyncInferenceService
from mlbus.router.api.router_service import SERVICE_NAME as ROUTER_SERVICE_NAME
from mlbus.router.api.router_service import RouterServicer
from mlbus.router.api.servicer import SERVICE_NAME, RouterInferenceServicer
from mlbus.router.api.shadow import ShadowMirror
from mlbus.router.controller import ControllerSettings, DeploymentController
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.metrics import RouterMetrics
from mlbus.router.settings import RouterSettings
from mlbus.router.transform import TransformService
from mlbus.router.v1 import router_pb2_grpc


class RouterApp(ServiceApp):
    """The router service with its controller."""

    def __init__(self, settings: RouterSettings) -> None:
        super().__init__(settings)
        self.router_settings = settings
        self.metrics = RouterMetrics()
        self.table = RoutingTable()
        self.shadow = ShadowMirror(
            self.metrics,
            max_in_flight=settings.shadow_max_in_flight,
            timeout_s=settings.shadow_timeout_s,
        )
        self.servicer = RouterInferenceServicer(
            self.table,
            self.metrics,
            self.shadow,
            default_timeout_s=settings.grpc.default_deadline_s,
        )
        self.server.add_generic_handler(self.servicer.handler(), SERVICE_NAME)
        self.async_service = AsyncInferenceService(
            self.table,
            self.producer,
            self.catalogue,
            inline_max_bytes=settings.async_inline_max_bytes,
            default_timeout_s=settings.async_default_timeout_s,
            max_timeout_s=settings.async_max_timeout_s,
        )
        self.transform = TransformService(self.table, self.producer, self.catalogue)
        self._store: ObjectStore | None = None
        self.on_start(self._open_store)
        # Workers inherit this process's environment (PATH, virtualenv), then the router's
        # effective shared settings (same bus, object store, telemetry), then worker_env.
        base_env = {**os.environ, **shared_env(settings), **settings.worker_env}
        self.backend = ProcessBackend(
            command=settings.worker_command,
            base_env=base_env,
            log_dir=settings.home / "logs" / "workers",
            host=settings.worker_host,
        )
        self.queue_depth = KafkaQueueDepth(settings.kafka, self.catalogue)
        self.controller = DeploymentController(
            self.table,
            self.backend,
            grpc_settings=settings.grpc,
            settings=ControllerSettings(
                ready_timeout_s=settings.worker_ready_timeout_s,
                start_attempts=settings.worker_start_attempts,
                max_workers=settings.max_workers,
                drain_timeout_s=settings.worker_drain_timeout_s,
                stop_grace_s=settings.worker_stop_grace_s,
                restart_backoff_s=settings.worker_restart_backoff_s,
                restart_backoff_max_s=settings.worker_restart_backoff_max_s,
                scale_poll_interval_s=settings.scale_poll_interval_s,
                serverless_idle_s=settings.serverless_idle_s,
            ),
            metrics=self.metrics,
            queue_depth=self.queue_depth,
            client_factory=functools.partial(
                WorkerClient, coalesce_s=settings.worker_stream_coalesce_us / 1e6
            ),
        )
        self.server.add_service(
            router_pb2_grpc.add_RouterServiceServicer_to_server,
            RouterServicer(self.async_service, self.transform, self.controller),
            ROUTER_SERVICE_NAME,
        )
        self.source: RegistrySource | None = None
        if settings.controller_enabled:
            self.source = RegistrySource(
                self.controller, create_channel(settings.registry_address, settings.grpc)
            )
            topics = [
                cast(Topic[Any], self.catalogue.endpoint_config_updated),
                cast(Topic[Any], self.catalogue.endpoint_deleted),
                cast(Topic[Any], self.catalogue.endpoint_degraded),
            ]
            self.topics.extend(topics)
            self.add_consumer(
                EventConsumer(
                    settings.kafka,
                    group_id=settings.controller_group_id,
                    topics=topics,
                    handler=self.source.handle,
                    source=self.name,
                    producer=self.producer,
                )
            )
            self.on_start(self._start_source)
        self.on_stop(self._close_store)
        self.on_stop(self.queue_depth.close)
        # Stop hooks run in reverse: workers last, after the shadow copies.
        self.on_stop(self.controller.stop)
        self.on_stop(self.shadow.stop)
        if self.source is not None:
            self.on_stop(self.source.stop)

    async def _open_store(self) -> None:
        self._store = await open_object_store(self.router_settings.storage)
        self.async_service.store = self._store
        self.transform.store = self._store
        await self.transform.resume()

    async def _close_store(self) -> None:
        await self.transform.stop()
        if self._store is not None:
            await self._store.aclose()
            self._store = None

    async def _start_source(self) -> None:
        assert self.source is not None
        self.source.start()


def build_app(settings: RouterSettings) -> RouterApp:
    """Wire the router service from its settings."""
    return RouterApp(settings)
