"""What the registry's use cases need from the outside world, as abstract interfaces.

Implementations live in ``adapters/``: SQL (SQLite or PostgreSQL) behind
:class:`UnitOfWork` and :class:`OutboxStore`, onnx behind :class:`ArtifactInspector`, a
local directory behind :class:`StagingArea`, Kafka behind :class:`OutboxPublisher`.
The object store is :class:`mlbus.core.storage.ObjectStore`, itself an interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from mlbus.registry.domain.events import DomainEvent
from mlbus.registry.domain.models import (
    ApprovalStatus,
    AuditEntry,
    Endpoint,
    EndpointConfig,
    ModelGroup,
    ModelVersion,
    Signature,
)

T = TypeVar("T")

#: Row lock taken by a read in a write transaction: exclusive, shared, or none.
Lock = Literal["update", "share"] | None


class RetryableConflict(Exception):
    """A concurrent transaction got in the way (lock timeout, deadlock, lost race on a
    unique key); the whole unit of work may be retried."""


@dataclass(frozen=True, slots=True)
class LiveEndpointUse:
    """A live endpoint whose configuration in force serves a given version."""

    endpoint: str
    variants: tuple[str, ...]


class UnitOfWork(ABC):
    """One database transaction: everything done through it commits together or not at all.

    A use case hands its work to a :class:`UnitOfWorkRunner`:
    ``await run(work, write=True)`` calls ``work(uow)`` in a transaction that commits when
    it returns and rolls back when it raises. The work may await only this unit of work's
    methods (and its own helpers that do): it must not suspend on anything else (the
    object store, a sleep, another call), because a runner may drive it synchronously (on
    SQLite the whole transaction runs on a database thread, in one hop from the event
    loop). Write work may run again after a :class:`RetryableConflict`.
    """

    # -- model groups -----------------------------------------------------------------

    @abstractmethod
    async def get_group(self, name: str, *, lock: Lock = None) -> ModelGroup | None:
        """The group, or None."""

    @abstractmethod
    async def add_group(self, group: ModelGroup) -> None:
        """Insert a new group."""

    @abstractmethod
    async def update_group(self, group: ModelGroup) -> None:
        """Store a group's description, tags and update time."""

    @abstractmethod
    async def list_groups(
        self, *, name_prefix: str, tags: dict[str, str], after: str | None, limit: int
    ) -> list[ModelGroup]:
        """Groups by name, after ``after``, having all ``tags``."""

    @abstractmethod
    async def next_version_number(self, group: str, now: datetime) -> int:
        """Atomically raise the group's latest version by one and return it."""

    # -- model versions ---------------------------------------------------------------

    @abstractmethod
    async def get_version(
        self, group: str, version: int, *, lock: Lock = None
    ) -> ModelVersion | None:
        """The version with its aliases, or None."""

    @abstractmethod
    async def find_version_by_request_id(self, group: str, request_id: str) -> ModelVersion | None:
        """The version registered with this idempotency key, or None."""

    @abstractmethod
    async def add_version(self, version: ModelVersion) -> None:
        """Insert a new version."""

    @abstractmethod
    async def update_version(self, version: ModelVersion) -> None:
        """Store a version's status, metadata and update time."""

    @abstractmethod
    async def list_versions(
        self, group: str, *, status: ApprovalStatus | None, before: int | None, limit: int
    ) -> list[ModelVersion]:
        """Versions of ``group``, newest first, numbered below ``before``."""

    # -- aliases ----------------------------------------------------------------------

    @abstractmethod
    async def get_alias(self, group: str, alias: str) -> int | None:
        """The version ``alias`` points at, or None."""

    @abstractmethod
    async def set_alias(self, group: str, alias: str, version: int, now: datetime) -> None:
        """Point ``alias`` at ``version`` (creating it if new)."""

    @abstractmethod
    async def delete_alias(self, group: str, alias: str) -> None:
        """Remove ``alias``."""

    # -- audit ------------------------------------------------------------------------

    @abstractmethod
    async def add_audit(self, entry: AuditEntry) -> None:
        """Append an entry to the audit log."""

    @abstractmethod
    async def list_audit(
        self, *, entity_type: str, entity_id_prefix: str, after: int | None, limit: int
    ) -> list[AuditEntry]:
        """Audit entries oldest first, with id above ``after``."""

    # -- endpoints --------------------------------------------------------------------

    @abstractmethod
    async def get_endpoint(self, name: str, *, lock: Lock = None) -> Endpoint | None:
        """The endpoint with its configuration in force, or None."""

    @abstractmethod
    async def save_endpoint(self, endpoint: Endpoint, *, new: bool) -> None:
        """Insert (``new``) or update an endpoint's status, revisions and times."""

    @abstractmethod
    async def add_endpoint_config(self, config: EndpointConfig) -> None:
        """Store a new configuration revision."""

    @abstractmethod
    async def get_endpoint_config(self, endpoint: str, revision: int) -> EndpointConfig | None:
        """One stored revision, or None."""

    @abstractmethod
    async def list_endpoint_configs(
        self, endpoint: str, *, before: int | None, limit: int
    ) -> list[EndpointConfig]:
        """Configurations newest first, with revision below ``before``."""

    @abstractmethod
    async def list_endpoints(
        self, *, include_deleted: bool, after: str | None, limit: int
    ) -> list[Endpoint]:
        """Endpoints by name, after ``after``."""

    @abstractmethod
    async def live_endpoints_using(self, group: str, version: int) -> list[LiveEndpointUse]:
        """Endpoints (not deleted) whose configuration in force serves the version."""

    # -- outbox -----------------------------------------------------------------------

    @abstractmethod
    async def add_event(self, event: DomainEvent) -> None:
        """Queue ``event`` in the outbox; it is published after this transaction commits."""


class UnitOfWorkRunner(Protocol):
    """Runs ``work`` in one unit of work and returns its result; ``write=True`` for work
    that changes state. See :class:`UnitOfWork` for what the work may await."""

    def __call__(
        self, work: Callable[[UnitOfWork], Coroutine[Any, Any, T]], *, write: bool
    ) -> Coroutine[Any, Any, T]: ...


class ArtifactInspector(ABC):
    """Validates a model file and derives its signature."""

    @abstractmethod
    def inspect(self, path: Path) -> Signature:
        """Blocking. Raise InvalidArgument when the file is not a valid model."""


class StagedArtifact(ABC):
    """An upload held on local disk while it is validated."""

    path: Path
    sha256: str
    size: int

    @abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The staged bytes, streamed."""

    @abstractmethod
    async def discard(self) -> None:
        """Remove the staged file. Idempotent."""


class StagingArea(ABC):
    """Where uploads wait, hashed and size-limited, before they enter the object store."""

    @abstractmethod
    async def stage(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> StagedArtifact:
        """Write ``chunks`` to a local file while hashing; ResourceExhausted past
        ``max_bytes``. Nothing is left behind when this raises or is cancelled."""


@dataclass(frozen=True, slots=True)
class OutboxRecord:
    """One queued event as stored: ``payload`` is the serialized protobuf message."""

    id: int
    event_id: str
    event_type: str
    key: str
    payload: bytes
    create_time: datetime


class OutboxStore(ABC):
    """The relay's view of the outbox table."""

    @abstractmethod
    async def pending(self, limit: int) -> list[OutboxRecord]:
        """Unsent records, oldest (lowest id) first."""

    @abstractmethod
    async def mark_sent(self, ids: Sequence[int], now: datetime) -> None:
        """Record that these were published."""

    @abstractmethod
    async def purge_sent(self, before: datetime) -> int:
        """Delete records sent before ``before``; returns how many."""

    @abstractmethod
    async def try_lead(self) -> bool:
        """Whether this process may relay (one relay per database at a time)."""

    @abstractmethod
    async def resign(self) -> None:
        """Give up relaying, so another process may take over."""


class OutboxPublisher(ABC):
    """Publishes outbox records to the bus."""

    @abstractmethod
    async def publish(self, records: Sequence[OutboxRecord]) -> tuple[list[int], Exception | None]:
        """Publish ``records`` keeping the order of each key; returns the ids acknowledged
        and the error that stopped the rest (None if all were)."""

    @abstractmethod
    async def reset(self) -> None:
        """Drop the connection after a failure; the next publish reconnects."""
