"""Protobuf ↔ SDK models, in one place (``to_model`` functions read the API's messages,
``to_pb`` functions write them). Pure functions: no I/O."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import events_pb2, registry_pb2
from mlbus.sdk.registry.models import (
    AliasResult,
    ApprovalStatus,
    AuditEntry,
    BatchingConfig,
    DataCaptureConfig,
    Endpoint,
    EndpointConfig,
    EndpointSpec,
    EndpointStatus,
    EndpointVariant,
    Lineage,
    ModelCard,
    ModelGroup,
    ModelSignature,
    ModelVersion,
    ObjectRef,
    RejectResult,
    ShadowVariant,
    TensorSpec,
    VariantMode,
)

# --- enums -----------------------------------------------------------------------------


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    """``APPROVAL_STATUS_APPROVED`` → ``APPROVED``; a value this client does not know
    (a newer server) → ``UNSPECIFIED``."""
    try:
        name: str = enum.Name(value)
    except ValueError:
        return "UNSPECIFIED"
    return name.removeprefix(prefix)


def approval_status_to_model(value: int) -> ApprovalStatus:
    """``common.v1.ApprovalStatus`` → ``"APPROVED"`` etc."""
    name = _enum_name(common_pb2.ApprovalStatus, value, "APPROVAL_STATUS_")
    return name  # type: ignore[return-value]


def approval_status_to_pb(value: ApprovalStatus | None) -> common_pb2.ApprovalStatus.ValueType:
    """``"APPROVED"`` → ``APPROVAL_STATUS_APPROVED``; None → UNSPECIFIED."""
    return common_pb2.ApprovalStatus.Value(f"APPROVAL_STATUS_{value or 'UNSPECIFIED'}")


def endpoint_status_to_model(value: int) -> EndpointStatus:
    """``EndpointStatus`` → ``"ACTIVE"`` etc."""
    name = _enum_name(registry_pb2.EndpointStatus, value, "ENDPOINT_STATUS_")
    return name  # type: ignore[return-value]


def variant_mode_to_model(value: int) -> VariantMode:
    """``VariantMode`` → ``"REALTIME"`` / ``"SERVERLESS"``."""
    name = _enum_name(events_pb2.VariantMode, value, "VARIANT_MODE_")
    return name  # type: ignore[return-value]


def variant_mode_to_pb(value: VariantMode) -> events_pb2.VariantMode.ValueType:
    """``"REALTIME"`` → ``VARIANT_MODE_REALTIME``."""
    return events_pb2.VariantMode.Value(f"VARIANT_MODE_{value}")


# --- scalars and small messages ----------------------------------------------------------


def time_to_model(message: Message, field: str) -> datetime | None:
    """A Timestamp field as an aware UTC datetime; None when the field is unset."""
    if not message.HasField(field):
        return None
    stamp: Timestamp = getattr(message, field)
    return stamp.ToDatetime(tzinfo=UTC)


def _actor(message: Message, field: str) -> str:
    if not message.HasField(field):
        return ""
    actor: common_pb2.Actor = getattr(message, field)
    return actor.name


def actor_to_pb(name: str) -> common_pb2.Actor:
    """An actor name as the API's ``Actor``."""
    return common_pb2.Actor(name=name)


def object_ref_to_model(message: Message, field: str) -> ObjectRef | None:
    """An ObjectRef field; None when unset."""
    if not message.HasField(field):
        return None
    ref: common_pb2.ObjectRef = getattr(message, field)
    return ObjectRef(
        uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes, content_type=ref.content_type
    )


def object_ref_to_pb(ref: ObjectRef) -> common_pb2.ObjectRef:
    """:class:`ObjectRef` → ``common.v1.ObjectRef``."""
    return common_pb2.ObjectRef(
        uri=ref.uri, sha256=ref.sha256, size_bytes=ref.size_bytes, content_type=ref.content_type
    )


def signature_to_model(message: Message, field: str) -> ModelSignature | None:
    """A ModelSignature field; None when unset."""
    if not message.HasField(field):
        return None
    sig: common_pb2.ModelSignature = getattr(message, field)

    def specs(items: Any) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(name=t.name, datatype=t.datatype, shape=tuple(t.shape)) for t in items
        )

    return ModelSignature(inputs=specs(sig.inputs), outputs=specs(sig.outputs), opset=sig.opset)


# --- model groups and versions -----------------------------------------------------------


def model_group_to_model(pb: registry_pb2.ModelGroup) -> ModelGroup:
    """``ModelGroup`` message → :class:`ModelGroup`."""
    return ModelGroup(
        name=pb.name,
        description=pb.description,
        tags=dict(pb.tags),
        latest_version=pb.latest_version,
        created_by=_actor(pb, "created_by"),
        create_time=time_to_model(pb, "create_time"),
        update_time=time_to_model(pb, "update_time"),
    )


def lineage_to_model(pb: registry_pb2.Lineage) -> Lineage:
    """``Lineage`` message → :class:`Lineage`."""
    return Lineage(
        training_job_id=pb.training_job_id,
        dataset_uri=pb.dataset_uri,
        dataset_sha256=pb.dataset_sha256,
        code_version=pb.code_version,
        parent_version=pb.parent_version,
    )


def lineage_to_pb(lineage: Lineage) -> registry_pb2.Lineage:
    """:class:`Lineage` → ``Lineage`` message."""
    return registry_pb2.Lineage(**lineage.model_dump())


def model_card_to_model(pb: registry_pb2.ModelCard) -> ModelCard:
    """``ModelCard`` message → :class:`ModelCard`."""
    return ModelCard(
        intended_use=pb.intended_use,
        limitations=pb.limitations,
        evaluation=pb.evaluation,
        owner=pb.owner,
    )


def model_card_to_pb(card: ModelCard) -> registry_pb2.ModelCard:
    """:class:`ModelCard` → ``ModelCard`` message."""
    return registry_pb2.ModelCard(**card.model_dump())


def model_version_to_model(pb: registry_pb2.ModelVersion) -> ModelVersion:
    """``ModelVersion`` message → :class:`ModelVersion`."""
    return ModelVersion(
        model_group=pb.model_group,
        version=pb.version,
        artifact=object_ref_to_model(pb, "artifact"),
        signature=signature_to_model(pb, "signature"),
        approval_status=approval_status_to_model(pb.approval_status),
        status_reason=pb.status_reason,
        metrics=dict(pb.metrics),
        hyperparameters=dict(pb.hyperparameters),
        lineage=lineage_to_model(pb.lineage),
        model_card=model_card_to_model(pb.model_card),
        tags=dict(pb.tags),
        aliases=tuple(pb.aliases),
        description=pb.description,
        registered_by=_actor(pb, "registered_by"),
        register_time=time_to_model(pb, "register_time"),
        update_time=time_to_model(pb, "update_time"),
        baseline=object_ref_to_model(pb, "baseline"),
    )


def reject_result_to_model(pb: registry_pb2.RejectModelVersionResponse) -> RejectResult:
    """``RejectModelVersionResponse`` → :class:`RejectResult`."""
    return RejectResult(
        model_version=model_version_to_model(pb.model_version),
        degraded_endpoints=tuple(pb.degraded_endpoints),
    )


def alias_result_to_model(alias: str, pb: registry_pb2.SetAliasResponse) -> AliasResult:
    """``SetAliasResponse`` → :class:`AliasResult`."""
    return AliasResult(
        alias=alias,
        model_version=model_version_to_model(pb.model_version),
        previous_version=pb.previous_version,
    )


def _json_or_raw(text: str) -> Any:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def audit_entry_to_model(pb: registry_pb2.AuditEntry) -> AuditEntry:
    """``AuditEntry`` message → :class:`AuditEntry` (before/after JSON decoded)."""
    return AuditEntry(
        id=pb.id,
        entity_type=pb.entity_type,
        entity_id=pb.entity_id,
        action=pb.action,
        actor=_actor(pb, "actor"),
        reason=pb.reason,
        time=time_to_model(pb, "time"),
        before=_json_or_raw(pb.before_json),
        after=_json_or_raw(pb.after_json),
    )


# --- endpoints ---------------------------------------------------------------------------


def variant_to_model(pb: events_pb2.EndpointVariant) -> EndpointVariant:
    """``EndpointVariant`` message → :class:`EndpointVariant`."""
    batching = None
    if pb.HasField("batching"):
        batching = BatchingConfig(
            max_batch_size=pb.batching.max_batch_size,
            max_queue_delay_micros=pb.batching.max_queue_delay_micros,
        )
    return EndpointVariant(
        name=pb.name,
        model_group=pb.model_group,
        model_version=pb.model_version,
        weight=pb.weight,
        instance_count=pb.instance_count,
        mode=variant_mode_to_model(pb.mode),
        max_concurrency=pb.max_concurrency,
        batching=batching,
        scale_to_zero_after_seconds=pb.scale_to_zero_after_seconds,
        artifact=object_ref_to_model(pb, "artifact"),
        signature=signature_to_model(pb, "signature"),
    )


def variant_to_pb(variant: EndpointVariant) -> events_pb2.EndpointVariant:
    """:class:`EndpointVariant` → message; artifact and signature are left out (the
    registry resolves them)."""
    pb = events_pb2.EndpointVariant(
        name=variant.name,
        model_group=variant.model_group,
        model_version=variant.model_version,
        weight=variant.weight,
        instance_count=variant.instance_count,
        mode=variant_mode_to_pb(variant.mode),
        max_concurrency=variant.max_concurrency,
        scale_to_zero_after_seconds=variant.scale_to_zero_after_seconds,
    )
    if variant.batching is not None:
        pb.batching.CopyFrom(
            events_pb2.BatchingConfig(
                max_batch_size=variant.batching.max_batch_size,
                max_queue_delay_micros=variant.batching.max_queue_delay_micros,
            )
        )
    return pb


def shadow_to_model(message: Message, field: str) -> ShadowVariant | None:
    """A ShadowVariant field; None when unset."""
    if not message.HasField(field):
        return None
    pb: events_pb2.ShadowVariant = getattr(message, field)
    return ShadowVariant(variant=variant_to_model(pb.variant), sampling_percent=pb.sampling_percent)


def data_capture_to_model(message: Message, field: str) -> DataCaptureConfig | None:
    """A DataCaptureConfig field; None when unset."""
    if not message.HasField(field):
        return None
    pb: events_pb2.DataCaptureConfig = getattr(message, field)
    return DataCaptureConfig(sampling_percent=pb.sampling_percent)


def endpoint_spec_to_pb(spec: EndpointSpec) -> registry_pb2.EndpointConfigSpec:
    """:class:`EndpointSpec` → ``EndpointConfigSpec``."""
    pb = registry_pb2.EndpointConfigSpec(
        variants=[variant_to_pb(v) for v in spec.variants], description=spec.description
    )
    if spec.shadow is not None:
        pb.shadow.CopyFrom(
            events_pb2.ShadowVariant(
                variant=variant_to_pb(spec.shadow.variant),
                sampling_percent=spec.shadow.sampling_percent,
            )
        )
    if spec.data_capture is not None:
        pb.data_capture.CopyFrom(
            events_pb2.DataCaptureConfig(sampling_percent=spec.data_capture.sampling_percent)
        )
    return pb


def endpoint_config_to_model(pb: registry_pb2.EndpointConfig) -> EndpointConfig:
    """``EndpointConfig`` message → :class:`EndpointConfig`."""
    return EndpointConfig(
        endpoint=pb.endpoint,
        revision=pb.revision,
        variants=tuple(variant_to_model(v) for v in pb.variants),
        shadow=shadow_to_model(pb, "shadow"),
        data_capture=data_capture_to_model(pb, "data_capture"),
        description=pb.description,
        created_by=_actor(pb, "created_by"),
        create_time=time_to_model(pb, "create_time"),
        rolled_back_from=pb.rolled_back_from,
    )


def endpoint_to_model(pb: registry_pb2.Endpoint) -> Endpoint:
    """``Endpoint`` message → :class:`Endpoint`."""
    return Endpoint(
        name=pb.name,
        status=endpoint_status_to_model(pb.status),
        status_reason=pb.status_reason,
        current_config=(
            endpoint_config_to_model(pb.current_config) if pb.HasField("current_config") else None
        ),
        create_time=time_to_model(pb, "create_time"),
        update_time=time_to_model(pb, "update_time"),
    )


def str_map(values: Mapping[str, object] | None) -> dict[str, str]:
    """Tags / hyperparameters as the API's ``map<string, string>`` (values stringified)."""
    return {str(k): str(v) for k, v in (values or {}).items()}


def float_map(values: Mapping[str, float] | None) -> dict[str, float]:
    """Metrics as the API's ``map<string, double>``."""
    return {str(k): float(v) for k, v in (values or {}).items()}
