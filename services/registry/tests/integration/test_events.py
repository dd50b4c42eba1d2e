"""Every change is published through the outbox: one event per change, on its catalogue
topic, keyed by model group or endpoint, with the outbox event id as ``ce_id``, in order
per key, and with enough content to rebuild the registry's state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mlbus.common.v1 import common_pb2
from mlbus.registry.adapters.event_encoder import registry_topics
from mlbus.registry.v1 import events_pb2 as ev
from mlbus.registry.v1 import registry_pb2 as pb

ACTOR = common_pb2.Actor(name="ops")


async def test_each_change_is_published_in_order_with_its_outbox_id(
    registry: Any,
    unique_name: Callable[[str], str],
    onnx_linear_model: Any,
    read_events: Any,
) -> None:
    group = unique_name("g")
    endpoint = unique_name("e")
    await registry.create_group(group, description="d", tags={"t": "1"})
    await registry.stub.UpdateModelGroup(
        pb.UpdateModelGroupRequest(name=group, description="d2", actor=ACTOR)
    )
    v1 = await registry.register(
        group,
        onnx_linear_model(seed=1),
        metrics={"auc": 0.9},
        lineage=pb.Lineage(dataset_uri="file:///d.csv", dataset_sha256="b" * 64),
    )
    await registry.approve(group, 1, reason="ok")
    await registry.stub.UpdateModelVersion(
        pb.UpdateModelVersionRequest(model_group=group, version=1, set_tags={"k": "v"}, actor=ACTOR)
    )
    await registry.stub.SetAlias(
        pb.SetAliasRequest(model_group=group, alias="production", version=1, actor=ACTOR)
    )
    await registry.stub.DeleteAlias(
        pb.DeleteAliasRequest(model_group=group, alias="production", actor=ACTOR, reason="x")
    )
    await registry.stub.CreateEndpoint(
        pb.CreateEndpointRequest(
            name=endpoint,
            config=pb.EndpointConfigSpec(
                variants=[
                    ev.EndpointVariant(
                        name="blue", model_group=group, model_version=1, weight=1, instance_count=1
                    )
                ]
            ),
            actor=ACTOR,
        )
    )
    await registry.stub.RejectModelVersion(
        pb.RejectModelVersionRequest(
            model_group=group, version=1, actor=ACTOR, reason="leak", force=True
        )
    )
    await registry.stub.DeleteEndpoint(pb.DeleteEndpointRequest(name=endpoint, actor=ACTOR))

    group_ids = await registry.outbox_ids(group)
    endpoint_ids = await registry.outbox_ids(endpoint)
    wanted = set(group_ids) | set(endpoint_ids)
    topics = registry_topics(registry.catalogue)
    received = await read_events(
        registry.settings.kafka.bootstrap_servers,
        topics,
        until=lambda records: wanted <= {r.envelope.id for r in records},
    )
    mine = [r for r in received if r.envelope.id in wanted]
    assert len(mine) == len(wanted), "an event was delivered twice"

    def kinds(key: str) -> list[str]:
        return [type(r.message).__name__ for r in mine if r.key == key]

    # Different topics interleave on the wire: compare the order per key and topic with the
    # outbox order (ids), and each key's set of event types.
    for key, ids in ((group, group_ids), (endpoint, endpoint_ids)):
        for topic in {r.topic for r in mine if r.key == key}:
            on_topic = [r.envelope.id for r in mine if r.key == key and r.topic == topic]
            assert on_topic == [i for i in ids if i in on_topic]
    assert sorted(kinds(group)) == sorted(
        [
            "ModelGroupCreated",
            "ModelGroupUpdated",
            "ModelVersionRegistered",
            "ModelVersionApproved",
            "ModelVersionUpdated",
            "AliasMoved",
            "AliasDeleted",
            "ModelVersionRejected",
        ]
    )
    assert sorted(kinds(endpoint)) == sorted(
        ["EndpointConfigUpdated", "EndpointDegraded", "EndpointDeleted"]
    )
    by_type = {type(r.message).__name__: r for r in mine}
    for record in mine:
        assert record.envelope.type == record.message.DESCRIPTOR.full_name
        assert record.envelope.source == "registry"
        assert registry.catalogue.get(record.topic).message_type is type(record.message)

    registered = by_type["ModelVersionRegistered"].message
    assert registered.artifact.sha256 == v1.artifact.sha256
    assert registered.signature == v1.signature
    assert registered.dataset_version == f"file:///d.csv@{'b' * 64}"
    assert dict(registered.metrics) == {"auc": 0.9}
    approved = by_type["ModelVersionApproved"].message
    assert approved.artifact == v1.artifact
    assert approved.actor.name == "bob"
    rejected = by_type["ModelVersionRejected"].message
    assert rejected.previous_status == common_pb2.APPROVAL_STATUS_APPROVED
    assert list(rejected.degraded_endpoints) == [endpoint]
    assert list(by_type["ModelVersionUpdated"].message.changed_fields) == ["tags"]
    assert by_type["ModelGroupUpdated"].message.description == "d2"
    config = by_type["EndpointConfigUpdated"].message
    assert config.config_revision == 1
    assert config.variants[0].artifact == v1.artifact
    assert by_type["EndpointDegraded"].message.model_version == 1
    assert by_type["EndpointDeleted"].message.config_revision == 2
    assert by_type["AliasDeleted"].message.previous_version == 1
    # The topics were created with the catalogue's partition counts.
    partitions = await registry_partition_counts(registry, topics)
    assert set(partitions.values()) == {topics[0].partitions}


async def registry_partition_counts(registry: Any, topics: list[Any]) -> dict[str, int]:
    from mlbus.core.messaging.topics import ensure_topics

    settings = registry.settings.kafka.model_copy(update={"create_topics": False})
    return await ensure_topics(settings, topics)
