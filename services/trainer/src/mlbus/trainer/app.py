"""Composition root of the trainer service: jobs database, object store, registry client,
child-process launcher, executor and scheduler, the job-request consumer, the status
relay and the gRPC servicer, wired from settings."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, cast

from sqlalchemy.exc import DBAPIError

from mlbus.core.errors import Unavailable
from mlbus.core.messaging import EventConsumer, Topic
from mlbus.core.service import ServiceApp
from mlbus.core.storage import create_object_store
from mlbus.trainer.adapters.artifacts import StoreArtifacts
from mlbus.trainer.adapters.checkpoints import StoreCheckpoints
from mlbus.trainer.adapters.database import Database, SqlJobStore
from mlbus.trainer.adapters.datasets import DatasetStager, code_version
from mlbus.trainer.adapters.process import ChildProcess, child_env
from mlbus.trainer.adapters.registry import RegistryRegistrar
from mlbus.trainer.api.servicer import SERVICE_NAME, TrainerServicer
from mlbus.trainer.domain.executor import Executor, ExecutorConfig
from mlbus.trainer.domain.rules import LimitPolicy
from mlbus.trainer.domain.scheduler import Scheduler
from mlbus.trainer.domain.service import TrainerService
from mlbus.trainer.domain.tuning import TuningCoordinator
from mlbus.trainer.events.kafka import (
    JobRequestHandler,
    KafkaRequestPublisher,
    OutboxRelay,
    make_event,
)
from mlbus.trainer.settings import TrainerSettings
from mlbus.trainer.v1 import trainer_pb2_grpc


def _version() -> str:
    try:
        return importlib.metadata.version("mlbus-trainer")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class TrainerApp(ServiceApp):
    """The trainer service, with its parts as attributes (for tests and tools)."""

    def __init__(self, settings: TrainerSettings) -> None:
        super().__init__(settings)
        self.trainer_settings = settings
        self.topics.extend(
            [
                cast(Topic[Any], self.catalogue.job_requested),
                cast(Topic[Any], self.catalogue.job_status_changed),
            ]
        )
        self.trainer_id = settings.resolved_trainer_id()
        self.database = Database(settings.resolved_database_url())
        self.store = SqlJobStore(self.database, self.trainer_id)
        self.objects = create_object_store(settings.storage)
        self.registrar = RegistryRegistrar(
            settings.registry_address,
            timeout_s=settings.registry_timeout_s,
            attempts=settings.registry_attempts,
            grpc=settings.grpc,
        )
        env = child_env()

        def launch(
            argv: list[str], cwd: Path, runtime: float, memory: int, on_line: Any
        ) -> ChildProcess:
            return ChildProcess(
                argv,
                cwd=cwd,
                env=env,
                max_runtime_s=runtime,
                max_memory_bytes=memory or settings.default_max_memory_bytes,
                check_interval_s=settings.memory_check_interval_s,
                stop_grace_s=settings.stop_grace_s,
                on_line=on_line,
            )

        version = _version()

        async def version_of(script: Path | None) -> str:
            return await code_version(script, version)

        self.executor = Executor(
            self.store,
            stager=DatasetStager(self.objects),
            artifacts=StoreArtifacts(self.objects),
            checkpoints=StoreCheckpoints(self.objects),
            registrar=self.registrar,
            launcher=launch,
            make_event=make_event,
            code_version=version_of,
            config=ExecutorConfig(
                trainer_id=self.trainer_id,
                work_dir=settings.resolved_work_dir(),
                lease_s=settings.lease_s,
                parity_atol=settings.parity_atol,
                parity_rtol=settings.parity_rtol,
                log_flush_interval_s=settings.log_flush_interval_s,
                max_log_line_chars=settings.max_log_line_chars,
                mlbus_version=version,
                max_categories=settings.max_categories,
                checkpoint_sync_interval_s=settings.checkpoint_sync_interval_s,
            ),
        )
        self.scheduler = Scheduler(
            self.store,
            self.executor,
            trainer_id=self.trainer_id,
            capacity=settings.max_concurrent_jobs,
            poll_interval_s=settings.poll_interval_s,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            make_event=make_event,
        )
        self.tuning = TuningCoordinator(
            self.store, self.executor, self.scheduler, make_event=make_event
        )
        self.scheduler.tuning_runner = self.tuning.run
        self.service = TrainerService(
            self.store,
            self.scheduler,
            KafkaRequestPublisher(self.producer, self.catalogue),
            policy=LimitPolicy(
                default_runtime_s=settings.default_max_runtime_s,
                max_runtime_s=settings.max_runtime_s,
                default_memory_bytes=settings.default_max_memory_bytes,
                max_memory_bytes=settings.max_memory_bytes,
            ),
            make_event=make_event,
            default_page_size=settings.default_page_size,
            max_page_size=settings.max_page_size,
            log_poll_interval_s=settings.log_flush_interval_s,
        )
        self.relay = OutboxRelay(self.store, self.producer, self.catalogue)
        self.consumer = EventConsumer(
            settings.kafka,
            group_id=settings.consumer_group,
            topics=[self.catalogue.job_requested],
            handler=JobRequestHandler(self.service),
            source=self.name,
            producer=self.producer,
        )
        self.add_consumer(self.consumer)
        self.server.add_service(
            trainer_pb2_grpc.add_TrainerServiceServicer_to_server,
            TrainerServicer(self.service),
            SERVICE_NAME,
        )
        self.on_start(self._start_parts)
        self.on_stop(self._stop_parts)

    async def _start_parts(self) -> None:
        try:
            await self.database.start(migrate=self.trainer_settings.migrate_on_start)
        except (DBAPIError, OSError) as exc:
            raise Unavailable(f"trainer database {self.database!r} not usable: {exc}") from exc
        await self.objects.start()
        self.trainer_settings.resolved_work_dir().mkdir(parents=True, exist_ok=True)
        await self.relay.start()
        await self.scheduler.start()

    async def _stop_parts(self) -> None:
        await self.scheduler.stop(self.trainer_settings.stop_grace_s)
        await self.relay.stop()
        await self.objects.aclose()
        await self.database.aclose()


def build_app(settings: TrainerSettings) -> TrainerApp:
    """Wire the trainer service from its settings."""
    return TrainerApp(settings)
