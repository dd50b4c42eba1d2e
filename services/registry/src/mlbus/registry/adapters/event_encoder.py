"""Domain events → the protobuf messages of ``mlbus.registry.v1`` events, and the catalogue
topics they go to."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from mlbus.core.messaging.topics import Topic, TopicCatalogue
from mlbus.registry.api.converters import (
    actor_to_pb,
    approval_status_to_pb,
    artifact_to_pb,
    shadow_to_pb,
    signature_to_pb,
    timestamp,
    variant_to_pb,
)
from mlbus.registry.domain import events
from mlbus.registry.v1 import events_pb2


def registry_topics(catalogue: TopicCatalogue) -> list[Topic[Any]]:
    """Every topic the registry publishes to."""
    return [
        catalogue.model_group_created,
        catalogue.model_group_updated,
        catalogue.model_version_registered,
        catalogue.model_version_updated,
        catalogue.model_version_approved,
        catalogue.model_version_rejected,
        catalogue.alias_moved,
        catalogue.alias_deleted,
        catalogue.endpoint_config_updated,
        catalogue.endpoint_degraded,
        catalogue.endpoint_deleted,
    ]


def _group_created(e: events.ModelGroupCreated) -> Message:
    return events_pb2.ModelGroupCreated(
        model_group=e.model_group,
        description=e.group.description,
        tags=e.group.tags,
        actor=actor_to_pb(e.actor),
        create_time=timestamp(e.time),
    )


def _group_updated(e: events.ModelGroupUpdated) -> Message:
    return events_pb2.ModelGroupUpdated(
        model_group=e.model_group,
        description=e.group.description,
        tags=e.group.tags,
        actor=actor_to_pb(e.actor),
        update_time=timestamp(e.time),
    )


def _version_registered(e: events.ModelVersionRegistered) -> Message:
    v = e.version
    message = events_pb2.ModelVersionRegistered(
        model_group=v.model_group,
        version=v.version,
        artifact=artifact_to_pb(v.artifact),
        signature=signature_to_pb(v.signature),
        approval_status=approval_status_to_pb(v.approval_status),
        actor=actor_to_pb(e.actor),
        register_time=timestamp(e.time),
        training_job_id=v.lineage.training_job_id,
        dataset_version=v.lineage.dataset_version,
        metrics=v.metrics,
        tags=v.tags,
        description=v.description,
        hyperparameters=v.hyperparameters,
        dataset_uri=v.lineage.dataset_uri,
        dataset_sha256=v.lineage.dataset_sha256,
        code_version=v.lineage.code_version,
        parent_version=v.lineage.parent_version,
    )
    if v.baseline is not None:
        message.baseline.CopyFrom(artifact_to_pb(v.baseline))
    return message


def _version_updated(e: events.ModelVersionUpdated) -> Message:
    v = e.version
    return events_pb2.ModelVersionUpdated(
        model_group=v.model_group,
        version=v.version,
        changed_fields=list(e.changed_fields),
        description=v.description,
        metrics=v.metrics,
        tags=v.tags,
        actor=actor_to_pb(e.actor),
        update_time=timestamp(e.time),
    )


def _version_approved(e: events.ModelVersionApproved) -> Message:
    v = e.version
    return events_pb2.ModelVersionApproved(
        model_group=v.model_group,
        version=v.version,
        artifact=artifact_to_pb(v.artifact),
        signature=signature_to_pb(v.signature),
        actor=actor_to_pb(e.actor),
        reason=e.reason,
        approve_time=timestamp(e.time),
    )


def _version_rejected(e: events.ModelVersionRejected) -> Message:
    return events_pb2.ModelVersionRejected(
        model_group=e.version.model_group,
        version=e.version.version,
        actor=actor_to_pb(e.actor),
        reason=e.reason,
        reject_time=timestamp(e.time),
        previous_status=approval_status_to_pb(e.previous_status),
        degraded_endpoints=list(e.degraded_endpoints),
    )


def _alias_moved(e: events.AliasMoved) -> Message:
    return events_pb2.AliasMoved(
        model_group=e.model_group,
        alias=e.alias,
        version=e.version,
        previous_version=e.previous_version,
        actor=actor_to_pb(e.actor),
        reason=e.reason,
        move_time=timestamp(e.time),
    )


def _alias_deleted(e: events.AliasDeleted) -> Message:
    return events_pb2.AliasDeleted(
        model_group=e.model_group,
        alias=e.alias,
        previous_version=e.previous_version,
        actor=actor_to_pb(e.actor),
        reason=e.reason,
        delete_time=timestamp(e.time),
    )


def _config_updated(e: events.EndpointConfigUpdated) -> Message:
    spec = e.config.spec
    message = events_pb2.EndpointConfigUpdated(
        endpoint=e.endpoint,
        config_revision=e.config.revision,
        variants=[variant_to_pb(v) for v in spec.variants],
        actor=actor_to_pb(e.actor),
        update_time=timestamp(e.time),
        rolled_back_from=e.config.rolled_back_from,
        description=spec.description,
    )
    if spec.shadow is not None:
        message.shadow.CopyFrom(shadow_to_pb(spec.shadow))
    if spec.data_capture is not None:
        message.data_capture.sampling_percent = spec.data_capture.sampling_percent
    return message


def _endpoint_degraded(e: events.EndpointDegraded) -> Message:
    return events_pb2.EndpointDegraded(
        endpoint=e.endpoint,
        config_revision=e.config_revision,
        reason=e.reason,
        model_group=e.model_group,
        model_version=e.model_version,
        actor=actor_to_pb(e.actor),
        degrade_time=timestamp(e.time),
    )


def _endpoint_deleted(e: events.EndpointDeleted) -> Message:
    return events_pb2.EndpointDeleted(
        endpoint=e.endpoint,
        config_revision=e.config_revision,
        actor=actor_to_pb(e.actor),
        delete_time=timestamp(e.time),
    )


_ENCODERS: dict[type[events.DomainEvent], Callable[[Any], Message]] = {
    events.ModelGroupCreated: _group_created,
    events.ModelGroupUpdated: _group_updated,
    events.ModelVersionRegistered: _version_registered,
    events.ModelVersionUpdated: _version_updated,
    events.ModelVersionApproved: _version_approved,
    events.ModelVersionRejected: _version_rejected,
    events.AliasMoved: _alias_moved,
    events.AliasDeleted: _alias_deleted,
    events.EndpointConfigUpdated: _config_updated,
    events.EndpointDegraded: _endpoint_degraded,
    events.EndpointDeleted: _endpoint_deleted,
}


def encode_event(event: events.DomainEvent) -> Message:
    """The protobuf message of ``event``."""
    try:
        encoder = _ENCODERS[type(event)]
    except KeyError:
        raise TypeError(f"no protobuf encoding for {type(event).__name__}") from None
    return encoder(event)
