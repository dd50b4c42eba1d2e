"""Domain events: the facts the registry publishes (through its outbox) after each change.

Each is written in the same transaction as the change it reports. ``key`` is the entity
whose order matters (the model group or the endpoint); ``event_id`` becomes the record's
``ce_id``, so consumers can drop duplicates.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from mlbus.registry.domain.models import (
    ApprovalStatus,
    EndpointConfig,
    Frozen,
    ModelGroup,
    ModelVersion,
)


class DomainEvent(Frozen):
    """Base of every registry event."""

    event_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    actor: str
    time: datetime

    @property
    def key(self) -> str:
        """Record key: the entity whose events must stay in order."""
        raise NotImplementedError


class _GroupEvent(DomainEvent):
    model_group: str

    @property
    def key(self) -> str:
        return self.model_group


class _EndpointEvent(DomainEvent):
    endpoint: str

    @property
    def key(self) -> str:
        return self.endpoint


class ModelGroupCreated(_GroupEvent):
    """A model group was created."""

    group: ModelGroup


class ModelGroupUpdated(_GroupEvent):
    """A model group's description or tags changed (the event carries the new state)."""

    group: ModelGroup


class ModelVersionRegistered(_GroupEvent):
    """A model version was registered."""

    version: ModelVersion


class ModelVersionUpdated(_GroupEvent):
    """A model version's metadata changed (description, metrics, tags, model card)."""

    version: ModelVersion
    changed_fields: tuple[str, ...]


class ModelVersionApproved(_GroupEvent):
    """A model version was approved."""

    version: ModelVersion
    reason: str = ""


class ModelVersionRejected(_GroupEvent):
    """A model version was rejected (or its approval withdrawn)."""

    version: ModelVersion
    reason: str
    previous_status: ApprovalStatus
    degraded_endpoints: tuple[str, ...] = ()


class AliasMoved(_GroupEvent):
    """An alias now points at another version (previous_version 0: it is new)."""

    alias: str
    version: int
    previous_version: int = 0
    reason: str = ""


class AliasDeleted(_GroupEvent):
    """An alias was removed."""

    alias: str
    previous_version: int
    reason: str = ""


class EndpointConfigUpdated(_EndpointEvent):
    """An endpoint got a new configuration revision (created, updated or rolled back);
    the endpoint is ACTIVE again."""

    config: EndpointConfig


class EndpointDegraded(_EndpointEvent):
    """A version an endpoint serves was rejected with force; the endpoint needs a new
    configuration."""

    config_revision: int
    reason: str
    model_group: str
    model_version: int


class EndpointDeleted(_EndpointEvent):
    """An endpoint was deleted (``config_revision`` is one past its last configuration's)."""

    config_revision: int
