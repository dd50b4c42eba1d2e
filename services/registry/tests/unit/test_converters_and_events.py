"""Protobuf converters round-trip, and every domain event has an encoding on a registry
topic of the catalogue."""

from __future__ import annotations

from datetime import UTC, datetime

from mlbus.common.v1 import common_pb2
from mlbus.core.messaging.topics import TopicCatalogue
from mlbus.registry.adapters.event_encoder import encode_event, registry_topics
from mlbus.registry.api import converters as cv
from mlbus.registry.domain import events
from mlbus.registry.domain.models import (
    ApprovalStatus,
    ArtifactRef,
    BatchingConfig,
    DataCapture,
    EndpointConfig,
    EndpointConfigSpec,
    EndpointStatus,
    ModelGroup,
    ModelVersion,
    ShadowVariant,
    Signature,
    TensorSpec,
    Variant,
    VariantMode,
)
from mlbus.registry.v1 import events_pb2, registry_pb2

NOW = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ART = ArtifactRef(
    uri="file:///x", sha256="a" * 64, size_bytes=10, content_type="application/x-onnx"
)
SIG = Signature(inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 4)),), opset=17)
GROUP = ModelGroup(name="churn", created_by="alice", create_time=NOW, update_time=NOW)
VERSION = ModelVersion(
    model_group="churn",
    version=2,
    artifact=ART,
    signature=SIG,
    registered_by="alice",
    register_time=NOW,
    update_time=NOW,
)


def test_enums_map_both_ways() -> None:
    for status in ApprovalStatus:
        assert cv.approval_status_to_domain(cv.approval_status_to_pb(status)) is status
    assert cv.approval_status_to_domain(common_pb2.APPROVAL_STATUS_UNSPECIFIED) is None
    for mode in VariantMode:
        assert cv.variant_mode_to_domain(cv.variant_mode_to_pb(mode)) is mode
    assert cv.variant_mode_to_domain(events_pb2.VARIANT_MODE_UNSPECIFIED) is VariantMode.REALTIME
    for endpoint_status in EndpointStatus:
        assert registry_pb2.EndpointStatus.Name(cv.endpoint_status_to_pb(endpoint_status)).endswith(
            endpoint_status.value
        )


def test_endpoint_spec_round_trips() -> None:
    spec = EndpointConfigSpec(
        variants=(
            Variant(
                name="blue",
                model_group="churn",
                model_version=2,
                weight=0.7,
                instance_count=2,
                max_concurrency=8,
                batching=BatchingConfig(max_batch_size=16, max_queue_delay_micros=500),
                scale_to_zero_after_seconds=300,
            ),
        ),
        shadow=ShadowVariant(
            variant=Variant(
                name="m", model_group="churn", model_version=1, mode=VariantMode.SERVERLESS
            ),
            sampling_percent=5,
        ),
        data_capture=DataCapture(sampling_percent=1.5),
        description="d",
    )
    config = EndpointConfig(endpoint="e", revision=4, spec=spec, created_by="ops", create_time=NOW)
    message = cv.config_to_pb(config)
    as_request = registry_pb2.EndpointConfigSpec(
        variants=message.variants,
        shadow=message.shadow,
        data_capture=message.data_capture,
        description=message.description,
    )
    assert cv.spec_to_domain(as_request) == spec
    assert message.variants[0].scale_to_zero_after_seconds == 300
    assert message.create_time.ToDatetime(tzinfo=UTC) == NOW

    event = encode_event(
        events.EndpointConfigUpdated(endpoint="e", config=config, actor="ops", time=NOW)
    )
    assert isinstance(event, events_pb2.EndpointConfigUpdated)
    assert [v.scale_to_zero_after_seconds for v in event.variants] == [300]


def test_version_round_trips_through_its_message() -> None:
    message = cv.version_to_pb(VERSION.model_copy(update={"aliases": ("production",)}))
    assert message.artifact.sha256 == ART.sha256
    assert list(message.signature.inputs[0].shape) == [-1, 4]
    assert message.approval_status == common_pb2.APPROVAL_STATUS_PENDING_MANUAL_APPROVAL
    assert list(message.aliases) == ["production"]
    assert not message.HasField("baseline")


def _concrete(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= _concrete(sub) if sub.__name__.startswith("_") else {sub} | _concrete(sub)
    return found


def test_every_event_encodes_to_a_registry_topic() -> None:
    catalogue = TopicCatalogue()
    types = {t.message_type for t in registry_topics(catalogue)}
    config = EndpointConfig(
        endpoint="e",
        revision=1,
        spec=EndpointConfigSpec(
            variants=(Variant(name="b", model_group="churn", model_version=2),)
        ),
        created_by="ops",
        create_time=NOW,
    )
    common = {"actor": "ops", "time": NOW}
    samples: list[events.DomainEvent] = [
        events.ModelGroupCreated(model_group="churn", group=GROUP, **common),
        events.ModelGroupUpdated(model_group="churn", group=GROUP, **common),
        events.ModelVersionRegistered(model_group="churn", version=VERSION, **common),
        events.ModelVersionUpdated(
            model_group="churn", version=VERSION, changed_fields=("tags",), **common
        ),
        events.ModelVersionApproved(model_group="churn", version=VERSION, **common),
        events.ModelVersionRejected(
            model_group="churn",
            version=VERSION,
            reason="r",
            previous_status=ApprovalStatus.APPROVED,
            **common,
        ),
        events.AliasMoved(model_group="churn", alias="p", version=2, **common),
        events.AliasDeleted(model_group="churn", alias="p", previous_version=2, **common),
        events.EndpointConfigUpdated(endpoint="e", config=config, **common),
        events.EndpointDegraded(
            endpoint="e",
            config_revision=1,
            reason="r",
            model_group="churn",
            model_version=2,
            **common,
        ),
        events.EndpointDeleted(endpoint="e", config_revision=2, **common),
    ]
    assert {type(e) for e in samples} == _concrete(events.DomainEvent)
    encoded = [encode_event(e) for e in samples]
    assert {type(m) for m in encoded} == types
    assert {e.key for e in samples} == {"churn", "e"}
