"""Protobuf ↔ domain converters, explicit in both directions.

``*_to_pb`` turn domain models into API (and event) messages; ``*_to_domain`` turn request
messages into domain models and commands. Field presence follows the proto: unset
optional fields become None.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.common.v1 import common_pb2
from mlbus.core.errors import InvalidArgument
from mlbus.registry.domain.models import (
    ApprovalStatus,
    ArtifactRef,
    AuditEntry,
    BatchingConfig,
    DataCapture,
    Endpoint,
    EndpointConfig,
    EndpointConfigSpec,
    EndpointStatus,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelVersion,
    ShadowVariant,
    Signature,
    TensorSpec,
    Variant,
    VariantMode,
)
from mlbus.registry.domain.paging import PageRequest
from mlbus.registry.domain.registry import RegisterVersion, VersionChanges
from mlbus.registry.v1 import events_pb2, registry_pb2

# --- small parts -------------------------------------------------------------------------


def timestamp(moment: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def actor_to_pb(name: str) -> common_pb2.Actor:
    """An Actor message."""
    return common_pb2.Actor(name=name)


def approval_status_to_pb(status: ApprovalStatus) -> common_pb2.ApprovalStatus.ValueType:
    """``APPROVED`` → ``APPROVAL_STATUS_APPROVED``."""
    return common_pb2.ApprovalStatus.Value(f"APPROVAL_STATUS_{status.value}")


def _enum_name(enum: Any, value: int, field: str) -> str:
    """The name of ``value`` in the proto ``enum``; an unknown number is InvalidArgument."""
    try:
        return str(enum.Name(value))
    except ValueError:
        raise InvalidArgument(
            f"{field}: expected one of {', '.join(enum.keys())}, got {value}",
            details={"field": field},
        ) from None


def approval_status_to_domain(value: int, field: str = "approval_status") -> ApprovalStatus | None:
    """The enum value of a request; UNSPECIFIED → None."""
    name = _enum_name(common_pb2.ApprovalStatus, value, field)
    if name == "APPROVAL_STATUS_UNSPECIFIED":
        return None
    return ApprovalStatus(name.removeprefix("APPROVAL_STATUS_"))


def endpoint_status_to_pb(status: EndpointStatus) -> registry_pb2.EndpointStatus.ValueType:
    """``DEGRADED`` → ``ENDPOINT_STATUS_DEGRADED``."""
    return registry_pb2.EndpointStatus.Value(f"ENDPOINT_STATUS_{status.value}")


def variant_mode_to_pb(mode: VariantMode) -> events_pb2.VariantMode.ValueType:
    """``SERVERLESS`` → ``VARIANT_MODE_SERVERLESS``."""
    return events_pb2.VariantMode.Value(f"VARIANT_MODE_{mode.value}")


def variant_mode_to_domain(value: int, field: str = "mode") -> VariantMode:
    """The variant mode of a request; UNSPECIFIED means REALTIME (the default)."""
    name = _enum_name(events_pb2.VariantMode, value, field)
    if name == "VARIANT_MODE_UNSPECIFIED":
        return VariantMode.REALTIME
    return VariantMode(name.removeprefix("VARIANT_MODE_"))


def artifact_to_pb(ref: ArtifactRef) -> common_pb2.ObjectRef:
    """An ObjectRef message."""
    return common_pb2.ObjectRef(
        uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes, content_type=ref.content_type
    )


def artifact_to_domain(ref: common_pb2.ObjectRef) -> ArtifactRef:
    """An ArtifactRef from a request's ObjectRef."""
    return ArtifactRef(
        uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes, content_type=ref.content_type
    )


def signature_to_pb(signature: Signature) -> common_pb2.ModelSignature:
    """A ModelSignature message."""

    def spec(tensor: TensorSpec) -> common_pb2.TensorSpec:
        return common_pb2.TensorSpec(
            name=tensor.name, datatype=tensor.datatype, shape=list(tensor.shape)
        )

    return common_pb2.ModelSignature(
        inputs=[spec(t) for t in signature.inputs],
        outputs=[spec(t) for t in signature.outputs],
        opset=signature.opset,
    )


def lineage_to_pb(lineage: Lineage) -> registry_pb2.Lineage:
    """A Lineage message."""
    return registry_pb2.Lineage(**lineage.model_dump())


def lineage_to_domain(lineage: registry_pb2.Lineage) -> Lineage:
    """Lineage from a request."""
    return Lineage(
        training_job_id=lineage.training_job_id,
        dataset_uri=lineage.dataset_uri,
        dataset_sha256=lineage.dataset_sha256,
        code_version=lineage.code_version,
        parent_version=lineage.parent_version,
    )


def model_card_to_pb(card: ModelCard) -> registry_pb2.ModelCard:
    """A ModelCard message."""
    return registry_pb2.ModelCard(**card.model_dump())


def model_card_to_domain(card: registry_pb2.ModelCard) -> ModelCard:
    """A model card from a request."""
    return ModelCard(
        intended_use=card.intended_use,
        limitations=card.limitations,
        evaluation=card.evaluation,
        owner=card.owner,
    )


def page_to_domain(page: common_pb2.PageRequest) -> PageRequest:
    """The page a list request asks for."""
    return PageRequest(size=page.page_size, token=page.page_token)


def page_to_pb(next_token: str) -> common_pb2.PageResponse:
    """Where a listing continues."""
    return common_pb2.PageResponse(next_page_token=next_token)


# --- model groups and versions -----------------------------------------------------------


def group_to_pb(group: ModelGroup) -> registry_pb2.ModelGroup:
    """A ModelGroup message."""
    return registry_pb2.ModelGroup(
        name=group.name,
        description=group.description,
        tags=group.tags,
        latest_version=group.latest_version,
        created_by=actor_to_pb(group.created_by),
        create_time=timestamp(group.create_time),
        update_time=timestamp(group.update_time),
    )


def version_to_pb(version: ModelVersion) -> registry_pb2.ModelVersion:
    """A ModelVersion message."""
    message = registry_pb2.ModelVersion(
        model_group=version.model_group,
        version=version.version,
        artifact=artifact_to_pb(version.artifact),
        signature=signature_to_pb(version.signature),
        approval_status=approval_status_to_pb(version.approval_status),
        status_reason=version.status_reason,
        metrics=version.metrics,
        hyperparameters=version.hyperparameters,
        lineage=lineage_to_pb(version.lineage),
        model_card=model_card_to_pb(version.model_card),
        tags=version.tags,
        aliases=list(version.aliases),
        description=version.description,
        registered_by=actor_to_pb(version.registered_by),
        register_time=timestamp(version.register_time),
        update_time=timestamp(version.update_time),
    )
    if version.baseline is not None:
        message.baseline.CopyFrom(artifact_to_pb(version.baseline))
    return message


def register_to_domain(
    header: registry_pb2.RegisterModelVersionHeader, actor: str
) -> RegisterVersion:
    """The registration command of a RegisterModelVersion header."""
    baseline = artifact_to_domain(header.baseline) if header.HasField("baseline") else None
    return RegisterVersion(
        model_group=header.model_group,
        actor=actor,
        artifact_uri=header.artifact_uri,
        expected_sha256=header.expected_sha256,
        metrics=dict(header.metrics),
        hyperparameters=dict(header.hyperparameters),
        lineage=lineage_to_domain(header.lineage),
        model_card=model_card_to_domain(header.model_card),
        tags=dict(header.tags),
        description=header.description,
        baseline=baseline if baseline is not None and baseline.uri else None,
        request_id=header.request_id,
        create_group=header.create_group,
    )


def version_changes_to_domain(request: registry_pb2.UpdateModelVersionRequest) -> VersionChanges:
    """The metadata changes of an UpdateModelVersion request."""
    return VersionChanges(
        description=request.description if request.HasField("description") else None,
        set_metrics=dict(request.set_metrics),
        set_tags=dict(request.set_tags),
        remove_tags=tuple(request.remove_tags),
        model_card=model_card_to_domain(request.model_card)
        if request.HasField("model_card")
        else None,
    )


def audit_to_pb(entry: AuditEntry) -> registry_pb2.AuditEntry:
    """An AuditEntry message; before/after as compact JSON with sorted keys."""

    def dump(value: object) -> str:
        return "" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))

    return registry_pb2.AuditEntry(
        id=entry.id,
        entity_type=entry.entity_type,
        entity_id=entry.entity_id,
        action=entry.action,
        actor=actor_to_pb(entry.actor),
        reason=entry.reason,
        time=timestamp(entry.time),
        before_json=dump(entry.before),
        after_json=dump(entry.after),
    )


# --- endpoints ---------------------------------------------------------------------------


def variant_to_pb(variant: Variant) -> events_pb2.EndpointVariant:
    """An EndpointVariant message (artifact and signature when resolved)."""
    message = events_pb2.EndpointVariant(
        name=variant.name,
        model_group=variant.model_group,
        model_version=variant.model_version,
        weight=variant.weight,
        instance_count=variant.instance_count,
        mode=variant_mode_to_pb(variant.mode),
        max_concurrency=variant.max_concurrency,
        scale_to_zero_after_seconds=variant.scale_to_zero_after_seconds,
    )
    if variant.artifact is not None:
        message.artifact.CopyFrom(artifact_to_pb(variant.artifact))
    if variant.signature is not None:
        message.signature.CopyFrom(signature_to_pb(variant.signature))
    if variant.batching is not None:
        message.batching.CopyFrom(
            events_pb2.BatchingConfig(
                max_batch_size=variant.batching.max_batch_size,
                max_queue_delay_micros=variant.batching.max_queue_delay_micros,
            )
        )
    return message


def variant_to_domain(variant: events_pb2.EndpointVariant, field: str = "variant") -> Variant:
    """A variant from a request; artifact and signature are ignored (the registry fills them)."""
    batching = None
    if variant.HasField("batching"):
        batching = BatchingConfig(
            max_batch_size=variant.batching.max_batch_size,
            max_queue_delay_micros=variant.batching.max_queue_delay_micros,
        )
    return Variant(
        name=variant.name,
        model_group=variant.model_group,
        model_version=variant.model_version,
        weight=variant.weight,
        instance_count=variant.instance_count,
        mode=variant_mode_to_domain(variant.mode, f"{field}.mode"),
        max_concurrency=variant.max_concurrency,
        batching=batching,
        scale_to_zero_after_seconds=variant.scale_to_zero_after_seconds,
    )


def shadow_to_pb(shadow: ShadowVariant) -> events_pb2.ShadowVariant:
    """A ShadowVariant message."""
    return events_pb2.ShadowVariant(
        variant=variant_to_pb(shadow.variant), sampling_percent=shadow.sampling_percent
    )


def spec_to_domain(spec: registry_pb2.EndpointConfigSpec) -> EndpointConfigSpec:
    """An endpoint configuration spec from a request."""
    shadow = None
    if spec.HasField("shadow"):
        shadow = ShadowVariant(
            variant=variant_to_domain(spec.shadow.variant, "shadow.variant"),
            sampling_percent=spec.shadow.sampling_percent,
        )
    capture = None
    if spec.HasField("data_capture"):
        capture = DataCapture(sampling_percent=spec.data_capture.sampling_percent)
    return EndpointConfigSpec(
        variants=tuple(variant_to_domain(v, f"variants[{i}]") for i, v in enumerate(spec.variants)),
        shadow=shadow,
        data_capture=capture,
        description=spec.description,
    )


def config_to_pb(config: EndpointConfig) -> registry_pb2.EndpointConfig:
    """An EndpointConfig message."""
    spec = config.spec
    message = registry_pb2.EndpointConfig(
        endpoint=config.endpoint,
        revision=config.revision,
        variants=[variant_to_pb(v) for v in spec.variants],
        description=spec.description,
        created_by=actor_to_pb(config.created_by),
        create_time=timestamp(config.create_time),
        rolled_back_from=config.rolled_back_from,
    )
    if spec.shadow is not None:
        message.shadow.CopyFrom(shadow_to_pb(spec.shadow))
    if spec.data_capture is not None:
        message.data_capture.CopyFrom(
            events_pb2.DataCaptureConfig(sampling_percent=spec.data_capture.sampling_percent)
        )
    return message


def endpoint_to_pb(endpoint: Endpoint) -> registry_pb2.Endpoint:
    """An Endpoint message."""
    message = registry_pb2.Endpoint(
        name=endpoint.name,
        status=endpoint_status_to_pb(endpoint.status),
        status_reason=endpoint.status_reason,
        create_time=timestamp(endpoint.create_time),
        update_time=timestamp(endpoint.update_time),
    )
    if endpoint.current_config is not None:
        message.current_config.CopyFrom(config_to_pb(endpoint.current_config))
    return message
