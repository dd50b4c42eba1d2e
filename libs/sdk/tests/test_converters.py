"""Protobuf → SDK models: plain Python values, enums as names, unset fields as None, and
JSON (``to_dict``) with stable keys; SDK models → requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import events_pb2, registry_pb2
from mlbus.sdk.registry import (
    EndpointVariant,
    Lineage,
    ModelCard,
    ModelVersion,
)
from mlbus.sdk.registry import _ops as ops
from mlbus.sdk.registry import converters as conv


def stamp(text: str) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.fromisoformat(text))
    return ts


def version_pb() -> registry_pb2.ModelVersion:
    return registry_pb2.ModelVersion(
        model_group="churn",
        version=3,
        artifact=common_pb2.ObjectRef(
            uri="file:///objects/ab/cd",
            sha256="ab" * 32,
            size_bytes=1234,
            content_type="application/x-onnx",
        ),
        signature=common_pb2.ModelSignature(
            inputs=[common_pb2.TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
            outputs=[common_pb2.TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
            opset=17,
        ),
        approval_status=common_pb2.APPROVAL_STATUS_APPROVED,
        status_reason="good auc",
        metrics={"auc": 0.91},
        hyperparameters={"max_depth": "6"},
        lineage=registry_pb2.Lineage(training_job_id="job-1", parent_version=2),
        model_card=registry_pb2.ModelCard(owner="team-a"),
        tags={"team": "a"},
        aliases=["production"],
        description="d",
        registered_by=common_pb2.Actor(name="alice"),
        register_time=stamp("2025-06-01T12:00:00+00:00"),
    )


def test_model_version_fields_are_plain_python() -> None:
    v = conv.model_version_to_model(version_pb())
    assert v.approval_status == "APPROVED"
    assert v.registered_by == "alice"
    assert v.register_time == datetime(2025, 6, 1, 12, tzinfo=UTC)
    assert v.update_time is None  # unset Timestamp → None, not the epoch
    assert v.baseline is None
    assert v.artifact is not None
    assert v.artifact.size_bytes == 1234
    assert v.signature is not None
    assert v.signature.inputs[0].shape == (-1, 4)
    assert v.metrics == {"auc": 0.91}
    assert v.lineage == Lineage(training_job_id="job-1", parent_version=2)
    assert v.model_card == ModelCard(owner="team-a")
    assert v.aliases == ("production",)
    assert v.ref == "churn/3"


def test_to_dict_is_json_with_stable_keys() -> None:
    data = conv.model_version_to_model(version_pb()).to_dict()
    assert list(data) == list(ModelVersion.model_fields)
    assert data["register_time"] == "2025-06-01T12:00:00Z"
    assert data["update_time"] is None
    assert data["signature"]["inputs"][0] == {"name": "x", "datatype": "FP32", "shape": [-1, 4]}
    assert json.loads(json.dumps(data)) == data


def test_unknown_enum_value_from_a_newer_server_is_unspecified() -> None:
    pb = registry_pb2.ModelVersion(model_group="g", version=1)
    pb.approval_status = 42  # type: ignore[assignment]
    assert conv.model_version_to_model(pb).approval_status == "UNSPECIFIED"


def test_audit_entry_decodes_before_and_after_json() -> None:
    pb = registry_pb2.AuditEntry(
        id=7,
        entity_type="model_version",
        entity_id="churn/3",
        action="approved",
        actor=common_pb2.Actor(name="bob"),
        before_json='{"approval_status": "PENDING_MANUAL_APPROVAL"}',
        after_json="not json",
    )
    entry = conv.audit_entry_to_model(pb)
    assert entry.actor == "bob"
    assert entry.before == {"approval_status": "PENDING_MANUAL_APPROVAL"}
    assert entry.after == "not json"
    assert conv.audit_entry_to_model(registry_pb2.AuditEntry(id=1)).before is None


def test_endpoint_round_trip_and_resolved_fields_are_not_sent() -> None:
    variant = events_pb2.EndpointVariant(
        name="blue",
        model_group="churn",
        model_version=3,
        weight=90,
        instance_count=2,
        mode=events_pb2.VARIANT_MODE_SERVERLESS,
        max_concurrency=8,
        batching=events_pb2.BatchingConfig(max_batch_size=16, max_queue_delay_micros=500),
        scale_to_zero_after_seconds=300,
        artifact=common_pb2.ObjectRef(uri="file:///x", sha256="00" * 32),
    )
    pb = registry_pb2.Endpoint(
        name="churn",
        status=registry_pb2.ENDPOINT_STATUS_DEGRADED,
        status_reason="version 3 rejected",
        current_config=registry_pb2.EndpointConfig(
            endpoint="churn",
            revision=4,
            variants=[variant],
            shadow=events_pb2.ShadowVariant(
                variant=events_pb2.EndpointVariant(
                    name="next", model_group="churn", model_version=4
                ),
                sampling_percent=10,
            ),
            rolled_back_from=2,
        ),
    )
    endpoint = conv.endpoint_to_model(pb)
    assert endpoint.status == "DEGRADED"
    assert endpoint.revision == 4
    config = endpoint.current_config
    assert config is not None
    assert config.data_capture is None
    assert config.variants[0].mode == "SERVERLESS"
    assert config.variants[0].batching is not None
    assert config.variants[0].batching.max_queue_delay_micros == 500
    assert config.variants[0].scale_to_zero_after_seconds == 300
    assert config.shadow is not None
    assert config.shadow.sampling_percent == 10

    spec_pb = conv.endpoint_spec_to_pb(config.spec())
    sent = spec_pb.variants[0]
    assert not sent.HasField("artifact")  # the registry resolves it
    assert sent.mode == events_pb2.VARIANT_MODE_SERVERLESS
    assert sent.batching.max_batch_size == 16
    assert sent.scale_to_zero_after_seconds == 300
    assert spec_pb.shadow.sampling_percent == 10
    assert not spec_pb.HasField("data_capture")


def test_variant_mode_accepts_lower_case_and_sets_the_instance_default() -> None:
    variant = EndpointVariant(name="a", model_group="g", model_version=1, mode="serverless")  # type: ignore[arg-type]
    assert variant.mode == "SERVERLESS"
    assert variant.instance_count == 0  # started on demand
    assert EndpointVariant(name="a", model_group="g", model_version=1).instance_count == 1
    explicit = EndpointVariant(
        name="a", model_group="g", model_version=1, mode="SERVERLESS", instance_count=2
    )
    assert explicit.instance_count == 2  # what the caller said; the registry judges it
    with pytest.raises(ValueError, match="mode"):
        EndpointVariant(name="a", model_group="g", model_version=1, mode="batch")  # type: ignore[arg-type]


def test_register_header_carries_metadata_and_optional_messages() -> None:
    message = ops.register_header(
        group="churn",
        artifact_uri="",
        expected_sha256="ab" * 32,
        metrics={"auc": 1},
        hyperparameters={"depth": 6, "lr": 0.1},
        lineage={"dataset_uri": "s3://d", "parent_version": 1},
        model_card=None,
        tags={"team": "a"},
        description="",
        baseline=None,
        request_id="r1",
        create_group=True,
        actor="alice",
    )
    header = message.header
    assert header.hyperparameters == {"depth": "6", "lr": "0.1"}
    assert header.metrics == {"auc": 1.0}
    assert header.lineage.dataset_uri == "s3://d"
    assert not header.HasField("model_card")
    assert not header.HasField("baseline")
    assert header.actor.name == "alice"
    assert header.create_group


def test_version_selector_needs_exactly_one() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ops.get_version("g", None, None)
    with pytest.raises(ValueError, match="exactly one"):
        ops.get_version("g", 1, "production")
    with pytest.raises(ValueError, match=">= 1"):
        ops.get_version("g", 0, None)
    request = ops.get_version("g", None, "production").request
    assert request.WhichOneof("selector") == "alias"


def test_update_only_sets_optional_fields_when_given() -> None:
    untouched = ops.update_group("g", None, None, (), "a").request
    assert not untouched.HasField("description")
    cleared = ops.update_group("g", "", None, (), "a").request
    assert cleared.HasField("description")  # "" clears, None keeps


def test_list_versions_status_filter() -> None:
    paged = ops.list_versions("g", "pending", 5)
    request = paged.request("tok")
    assert request.approval_status == common_pb2.APPROVAL_STATUS_PENDING_MANUAL_APPROVAL
    assert (request.page.page_size, request.page.page_token) == (5, "tok")
    with pytest.raises(ValueError, match="unknown approval status"):
        ops.list_versions("g", "maybe", 0)


def test_endpoint_spec_arguments() -> None:
    variant = EndpointVariant(name="a", model_group="g", model_version=1)
    spec = ops.endpoint_spec([{"name": "a", "model_group": "g", "model_version": 1}], None, 5, "d")
    assert spec.variants == (variant,)
    assert spec.data_capture is not None
    assert spec.data_capture.sampling_percent == 5
    assert ops.endpoint_spec(spec, None, None, "") is spec
    with pytest.raises(ValueError, match="not both"):
        ops.endpoint_spec(spec, None, None, "other description")
    with pytest.raises(TypeError, match="expected EndpointVariant or a mapping"):
        ops.endpoint_spec(["a"], None, None, "")  # type: ignore[list-item]
