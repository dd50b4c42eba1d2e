"""Composition root of the registry service: database, object store, staging, ONNX
inspection, the use cases, the outbox relay and the gRPC servicer, wired from settings.

The registry does not need Kafka to start or to serve: its events wait in the outbox and
the relay delivers them whenever the broker is reachable.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.exc import DBAPIError

from mlbus.core.errors import Unavailable
from mlbus.core.service import ServiceApp
from mlbus.core.storage import create_object_store
from mlbus.registry.adapters.database import Database, SqlOutboxStore
from mlbus.registry.adapters.kafka_publisher import KafkaOutboxPublisher
from mlbus.registry.adapters.onnx_inspector import OnnxInspector
from mlbus.registry.adapters.relay import OutboxRelay
from mlbus.registry.adapters.staging import LocalStagingArea
from mlbus.registry.api.servicer import SERVICE_NAME, RegistryServicer
from mlbus.registry.domain.registry import Registry, RegistryPolicy
from mlbus.registry.settings import RegistrySettings
from mlbus.registry.v1 import registry_pb2_grpc


class RegistryApp(ServiceApp):
    """The registry service, with its parts as attributes (for tests and tools)."""

    def __init__(self, settings: RegistrySettings) -> None:
        super().__init__(settings, bus_required=False)
        self.registry_settings = settings
        self.database = Database(
            settings.resolved_database_url(), pool_size=settings.database_pool_size
        )
        self.store = create_object_store(settings.storage)
        self.staging = LocalStagingArea(
            settings.resolved_staging_dir(), block_size=settings.chunk_size
        )
        self.outbox = SqlOutboxStore(self.database)
        self.publisher = KafkaOutboxPublisher(
            settings.kafka,
            self.catalogue,
            source=self.name,
            send_timeout_s=settings.outbox_send_timeout_s,
            verify_topics=settings.outbox_verify_topics,
        )
        retention = settings.outbox_retention_hours
        self.relay = OutboxRelay(
            self.outbox,
            self.publisher,
            batch_size=settings.outbox_batch_size,
            poll_interval_s=settings.outbox_poll_interval_s,
            backoff_initial_s=settings.outbox_backoff_initial_s,
            backoff_max_s=settings.outbox_backoff_max_s,
            retention=timedelta(hours=retention) if retention else None,
            drain_timeout_s=settings.outbox_drain_timeout_s,
        )
        self.registry = Registry(
            uow=self.database.unit_of_work,
            store=self.store,
            staging=self.staging,
            inspector=OnnxInspector(external_threshold=settings.onnx_external_threshold),
            policy=RegistryPolicy(
                allow_self_approval=settings.allow_self_approval,
                max_artifact_bytes=settings.max_artifact_bytes,
                default_page_size=settings.default_page_size,
                max_page_size=settings.max_page_size,
                download_chunk_size=settings.chunk_size,
                write_attempts=settings.write_attempts,
            ),
            on_commit=self.relay.notify,
        )
        self.server.add_service(
            registry_pb2_grpc.add_RegistryServiceServicer_to_server,
            RegistryServicer(self.registry),
            SERVICE_NAME,
        )
        self.on_start(self._start_parts)
        self.on_stop(self._stop_parts)

    async def _start_parts(self) -> None:
        try:
            await self.database.start(migrate=self.registry_settings.migrate_on_start)
        except (DBAPIError, OSError) as exc:
            raise Unavailable(f"registry database {self.database!r} not usable: {exc}") from exc
        await self.store.start()
        await self.staging.start()
        await self.relay.start()

    async def _stop_parts(self) -> None:
        await self.relay.stop()
        await self.store.aclose()
        await self.database.aclose()


def build_app(settings: RegistrySettings) -> RegistryApp:
    """Wire the registry service from its settings."""
    return RegistryApp(settings)
