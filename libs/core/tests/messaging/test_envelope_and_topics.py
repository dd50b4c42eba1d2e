"""Envelope headers, decoding and topic naming: pure tests, no broker."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from google.protobuf import json_format

from mlbus.core.messaging import (
    JSON,
    PROTOBUF,
    TOPICS,
    Envelope,
    EventDecodeError,
    Topic,
    TopicCatalogue,
    all_topics,
    async_requests,
    build_headers,
    decode,
    encode,
)
from mlbus.core.messaging.topics import wanted_partitions
from mlbus.inference.v2 import grpc_service_pb2 as v2
from mlbus.registry.v1 import events_pb2 as registry


def _approved() -> registry.ModelVersionApproved:
    return registry.ModelVersionApproved(model_group="churn", version=3, reason="looks good")


def test_headers_follow_the_cloudevents_kafka_binding() -> None:
    moment = datetime(2026, 11, 25, 12, 30, 1, 250000, tzinfo=UTC)
    headers = build_headers(
        registry.ModelVersionApproved,
        source="registry",
        event_id="ev-1",
        time=moment,
        extra=[("x-tenant", b"acme")],
    )
    names = dict(headers)
    assert names["ce_specversion"] == b"1.0"
    assert names["ce_id"] == b"ev-1"
    assert names["ce_type"] == b"mlbus.registry.v1.ModelVersionApproved"
    assert names["ce_source"] == b"registry"
    assert names["ce_time"] == b"2026-11-25T12:30:01.250000Z"
    assert names["content-type"] == PROTOBUF.encode()
    assert names["x-tenant"] == b"acme"

    envelope = Envelope.from_headers(headers, fallback_id="unused")
    assert (envelope.id, envelope.type, envelope.source) == (
        "ev-1",
        "mlbus.registry.v1.ModelVersionApproved",
        "registry",
    )
    assert envelope.time == moment
    assert envelope.get("x-tenant") == "acme"


def test_event_id_defaults_to_a_fresh_uuid4() -> None:
    first = dict(build_headers(registry.AliasMoved, source="s"))["ce_id"].decode()
    second = dict(build_headers(registry.AliasMoved, source="s"))["ce_id"].decode()
    assert first != second
    assert uuid.UUID(first).version == 4


def test_extra_headers_cannot_override_the_envelope() -> None:
    with pytest.raises(ValueError, match="ce_id"):
        build_headers(registry.AliasMoved, source="s", extra={"ce_id": b"x"})


def test_decode_checks_the_type_and_parses_protobuf_and_json() -> None:
    message = _approved()
    headers = build_headers(registry.ModelVersionApproved, source="s")
    envelope = Envelope.from_headers(headers, fallback_id="t/0/0")
    assert decode(registry.ModelVersionApproved, envelope, encode(message)) == message

    json_headers = build_headers(registry.ModelVersionApproved, source="s", content_type=JSON)
    json_envelope = Envelope.from_headers(json_headers, fallback_id="t/0/1")
    body = encode(message, JSON)
    assert json_format.Parse(body, registry.ModelVersionApproved()) == message
    assert decode(registry.ModelVersionApproved, json_envelope, body) == message

    with pytest.raises(
        EventDecodeError, match=re.escape("expected 'mlbus.registry.v1.ModelVersionRejected'")
    ):
        decode(registry.ModelVersionRejected, envelope, encode(message))
    with pytest.raises(EventDecodeError, match="not a valid"):
        decode(registry.ModelVersionApproved, envelope, b"\xff\xfe not protobuf")
    with pytest.raises(EventDecodeError, match="not a valid"):
        decode(registry.ModelVersionApproved, json_envelope, b"{not json")
    odd = Envelope.from_headers([("content-type", b"text/csv")], fallback_id="t/0/2")
    with pytest.raises(EventDecodeError, match="content-type"):
        decode(registry.ModelVersionApproved, odd, b"a,b")
    with pytest.raises(EventDecodeError, match="tombstone"):
        decode(registry.ModelVersionApproved, envelope, None)


def test_records_without_cloudevents_headers_are_accepted() -> None:
    # A third-party producer publishing a v2 request straight to the request topic.
    request = v2.ModelInferRequest(model_name="churn", id="inf-1")
    envelope = Envelope.from_headers(
        [("content-type", b"application/json; charset=utf-8")], fallback_id="topic/2/17"
    )
    assert envelope.id == "topic/2/17"
    assert envelope.type is None
    decoded = decode(v2.ModelInferRequest, envelope, json_format.MessageToJson(request).encode())
    assert decoded == request


def test_bad_ce_time_is_a_decode_error() -> None:
    with pytest.raises(EventDecodeError, match="ce_time"):
        Envelope.from_headers([("ce_time", b"yesterday")], fallback_id="t/0/0")


def test_catalogue_names_one_topic_per_event_type() -> None:
    topics = all_topics()
    names = [t.name for t in topics]
    assert len(set(names)) == len(names)
    assert len({t.message_type for t in topics}) == len(topics)
    assert TOPICS.model_version_approved.name == "mlbus.registry.model-version-approved.v1"
    assert TOPICS.model_version_approved.dlq_name == "mlbus.registry.model-version-approved.v1.dlq"
    assert TOPICS.endpoint_config_updated.message_type is registry.EndpointConfigUpdated
    for topic in topics:
        assert topic.name.startswith("mlbus.")
        assert topic.name.endswith(".v1")
        assert topic.dlq
        assert topic.key
        assert topic.description
    # Captured traffic and labels are joined by inference id: same key, same partition count.
    assert TOPICS.inference_captured.partitions == TOPICS.label_recorded.partitions
    assert TOPICS.inference_captured.key == TOPICS.label_recorded.key == "inference id"


def test_per_endpoint_topics_and_lookup() -> None:
    requests = async_requests("churn-v2")
    assert requests.name == "mlbus.inference.churn-v2.requests.v1"
    assert requests.message_type is v2.ModelInferRequest
    names = [t.name for t in TOPICS.endpoint_topics("churn-v2")]
    assert names == [
        "mlbus.inference.churn-v2.requests.v1",
        "mlbus.inference.churn-v2.results.v1",
        "mlbus.inference.churn-v2.errors.v1",
        "mlbus.inference.churn-v2.batch-chunks.v1",
    ]
    for name in names:
        found = TOPICS.get(name)
        assert found is not None
        assert found.name == name
    assert TOPICS.get(TOPICS.alias_moved.name) == TOPICS.alias_moved
    assert TOPICS.get("mlbus.inference.churn-v2.requests.v1.dlq") is None
    for bad in ("", "a.b", "-x", "x" * 64, "with space"):
        with pytest.raises(ValueError, match="endpoint name"):
            async_requests(bad)


def test_namespace_prefixes_every_topic() -> None:
    catalogue = TopicCatalogue("test-1234")
    assert catalogue.alias_moved.name == "test-1234.mlbus.registry.alias-moved.v1"
    assert catalogue.async_results("e").name == "test-1234.mlbus.inference.e.results.v1"
    assert catalogue.get("test-1234.mlbus.inference.e.results.v1") is not None
    assert catalogue.get("mlbus.inference.e.results.v1") is None
    with pytest.raises(ValueError, match="namespace"):
        TopicCatalogue("bad.namespace")


def test_topic_validation_and_dlq_partitions() -> None:
    with pytest.raises(ValueError, match="topic name"):
        Topic(name="bad name", message_type=registry.AliasMoved, partitions=1, key="k")
    with pytest.raises(ValueError, match="partitions"):
        Topic(name="ok", message_type=registry.AliasMoved, partitions=0, key="k")
    with pytest.raises(TypeError, match="protobuf"):
        Topic(name="ok", message_type=dict, partitions=1, key="k")  # type: ignore[type-var]
    a = Topic(name="a", message_type=registry.AliasMoved, partitions=3, key="k")
    b = Topic(name="b", message_type=registry.AliasMoved, partitions=2, key="k", dlq=False)
    assert wanted_partitions([a, b]) == {"a": 3, "a.dlq": 3, "b": 2}
    with pytest.raises(ValueError, match="declared with"):
        wanted_partitions(
            [a, Topic(name="a", message_type=registry.AliasMoved, partitions=1, key="k")]
        )
