"""Endpoint configurations over gRPC: validation naming the field, versioned updates,
history, rollback, deletion, and the rule that no unapproved version ever reaches a
configuration (create, update, rollback, shadow)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
from sqlalchemy import select, update

from mlbus.common.v1 import common_pb2
from mlbus.registry.adapters import tables
from mlbus.registry.v1 import events_pb2 as ev
from mlbus.registry.v1 import registry_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
FAILED = grpc.StatusCode.FAILED_PRECONDITION
ACTIVE = pb.ENDPOINT_STATUS_ACTIVE
DEGRADED = pb.ENDPOINT_STATUS_DEGRADED
DELETED = pb.ENDPOINT_STATUS_DELETED
ACTOR = common_pb2.Actor(name="ops")


def variant(name: str, group: str, version: int, **fields: Any) -> ev.EndpointVariant:
    values: dict[str, Any] = {"weight": 1.0, "instance_count": 1}
    values.update(fields)
    return ev.EndpointVariant(name=name, model_group=group, model_version=version, **values)


def spec(*variants: ev.EndpointVariant, **fields: Any) -> pb.EndpointConfigSpec:
    return pb.EndpointConfigSpec(variants=list(variants), **fields)


class Endpoints:
    """Calls on one endpoint."""

    def __init__(self, registry: Any, name: str) -> None:
        self.stub = registry.stub
        self.name = name

    async def create(self, config: pb.EndpointConfigSpec) -> Any:
        request = pb.CreateEndpointRequest(name=self.name, config=config, actor=ACTOR)
        return (await self.stub.CreateEndpoint(request)).endpoint

    async def update(self, config: pb.EndpointConfigSpec, expected_revision: int = 0) -> Any:
        request = pb.UpdateEndpointRequest(
            name=self.name, config=config, actor=ACTOR, expected_revision=expected_revision
        )
        return (await self.stub.UpdateEndpoint(request)).endpoint

    async def rollback(self, to_revision: int) -> Any:
        request = pb.RollbackEndpointRequest(
            name=self.name, to_revision=to_revision, actor=ACTOR, reason="bad canary"
        )
        return (await self.stub.RollbackEndpoint(request)).endpoint

    async def get(self) -> Any:
        return (await self.stub.GetEndpoint(pb.GetEndpointRequest(name=self.name))).endpoint

    async def history(self) -> list[Any]:
        response = await self.stub.ListEndpointConfigs(
            pb.ListEndpointConfigsRequest(name=self.name)
        )
        return list(response.configs)


async def test_create_update_history_and_rollback(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    v1 = await registry.approved(group, onnx_linear_model(seed=1))
    v2 = await registry.approved(group, onnx_linear_model(seed=2))
    endpoint = Endpoints(registry, unique_name("e"))

    created = await endpoint.create(
        spec(
            variant(
                "blue", group, 1, instance_count=2, batching=ev.BatchingConfig(max_batch_size=8)
            ),
            data_capture=ev.DataCaptureConfig(sampling_percent=10),
            description="first",
        )
    )
    assert created.status == ACTIVE
    config = created.current_config
    assert config.revision == 1
    assert config.created_by.name == "ops"
    blue = config.variants[0]
    # The registry fills in what the deployment controller needs.
    assert blue.artifact == v1.artifact
    assert blue.signature == v1.signature
    assert blue.mode == ev.VARIANT_MODE_REALTIME
    assert blue.batching.max_batch_size == 8
    assert config.data_capture.sampling_percent == 10

    canary = spec(
        variant("blue", group, 1, weight=9),
        variant("green", group, 2, weight=1),
        shadow=ev.ShadowVariant(variant=variant("mirror", group, 2), sampling_percent=5),
    )
    await expect_error(
        endpoint.update(canary, expected_revision=7),
        FAILED,
        "is at revision 1, not the expected_revision 7",
    )
    updated = await endpoint.update(canary, expected_revision=1)
    assert updated.current_config.revision == 2
    assert [v.name for v in updated.current_config.variants] == ["blue", "green"]
    assert updated.current_config.variants[1].artifact == v2.artifact
    assert updated.current_config.shadow.variant.artifact == v2.artifact

    rolled = await endpoint.rollback(1)
    current = rolled.current_config
    assert current.revision == 3
    assert current.rolled_back_from == 1
    assert [(v.name, v.model_version) for v in current.variants] == [("blue", 1)]
    assert current.description == "first"
    assert not current.HasField("shadow")

    history = await endpoint.history()
    assert [c.revision for c in history] == [3, 2, 1]
    assert history[2] == config
    for bad in (0, 3, 9):
        await expect_error(endpoint.rollback(bad), INVALID, "to_revision", "(1 to 2)")

    entries = await registry.audit(endpoint.name, "endpoint")
    assert [e.action for e in entries] == ["created", "updated", "rolled_back"]
    assert entries[-1].reason == "bad canary"

    await expect_error(
        endpoint.create(spec(variant("blue", group, 1))),
        grpc.StatusCode.ALREADY_EXISTS,
        "exists already",
    )


async def test_unapproved_versions_never_reach_a_configuration(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model(seed=1))  # 1: approved
    await registry.register(group, onnx_linear_model(seed=2))  # 2: pending
    await registry.register(group, onnx_linear_model(seed=3))  # 3: rejected
    await registry.stub.RejectModelVersion(
        pb.RejectModelVersionRequest(model_group=group, version=3, actor=ACTOR, reason="bias")
    )
    endpoint = Endpoints(registry, unique_name("e"))

    # create
    await expect_error(
        endpoint.create(spec(variant("blue", group, 1), variant("green", group, 2))),
        FAILED,
        f"variants[1] 'green': model version {group}/2 is PENDING_MANUAL_APPROVAL",
        "only APPROVED versions can be deployed",
    )
    await expect_error(
        endpoint.create(spec(variant("blue", group, 3))),
        FAILED,
        f"variants[0] 'blue': model version {group}/3 is REJECTED",
    )
    await expect_error(
        endpoint.create(spec(variant("blue", group, 9))),
        grpc.StatusCode.NOT_FOUND,
        f"variants[0] 'blue': model version {group}/9 does not exist",
    )
    await expect_error(
        endpoint.get(), grpc.StatusCode.NOT_FOUND, f"endpoint '{endpoint.name}' does not exist"
    )

    # update (production variant and shadow)
    await endpoint.create(spec(variant("blue", group, 1)))
    await expect_error(
        endpoint.update(spec(variant("blue", group, 2))),
        FAILED,
        f"variants[0] 'blue': model version {group}/2 is PENDING_MANUAL_APPROVAL",
    )
    await expect_error(
        endpoint.update(
            spec(
                variant("blue", group, 1),
                shadow=ev.ShadowVariant(variant=variant("mirror", group, 3), sampling_percent=1),
            )
        ),
        FAILED,
        f"shadow.variant 'mirror': model version {group}/3 is REJECTED",
    )

    # rollback to a revision whose version was rejected since
    await registry.approve(group, 2)
    await endpoint.update(spec(variant("green", group, 2)))  # revision 2
    await endpoint.update(spec(variant("blue", group, 1)))  # revision 3
    await registry.stub.RejectModelVersion(
        pb.RejectModelVersionRequest(model_group=group, version=2, actor=ACTOR, reason="drift")
    )
    await expect_error(
        endpoint.rollback(2),
        FAILED,
        f"variants[0] 'green': model version {group}/2 is REJECTED",
    )

    # Nothing of the refused attempts was stored or published.
    history = await endpoint.history()
    assert [c.revision for c in history] == [3, 2, 1]
    served = {(v.model_group, v.model_version) for c in history for v in c.variants}
    served |= {
        (c.shadow.variant.model_group, c.shadow.variant.model_version)
        for c in history
        if c.HasField("shadow")
    }
    assert (group, 3) not in served
    assert await registry.outbox_count(endpoint.name) == 3


async def test_configuration_fields_are_validated(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model())
    endpoint = Endpoints(registry, unique_name("e"))
    cases = [
        (spec(), "variants: expected at least one production variant"),
        (spec(variant("blue", group, 1, weight=0)), "variants[0].weight: expected a number > 0"),
        (
            spec(variant("blue", group, 1), variant("blue", group, 1)),
            "variants[1].name: variant names must be unique",
        ),
        (
            spec(variant("blue", group, 1, instance_count=0)),
            "variants[0].instance_count: expected 1 to 1000 instances for a REALTIME variant",
        ),
        (
            spec(variant("blue", group, 1, mode=ev.VARIANT_MODE_SERVERLESS, instance_count=2)),
            "variants[0].instance_count: expected 0 for a SERVERLESS variant",
        ),
        (
            spec(
                variant("blue", group, 1),
                shadow=ev.ShadowVariant(variant=variant("m", group, 1), sampling_percent=150),
            ),
            "shadow.sampling_percent: expected a percentage from 0 to 100, got 150",
        ),
        (
            spec(variant("blue", group, 1), data_capture=ev.DataCaptureConfig(sampling_percent=-1)),
            "data_capture.sampling_percent",
        ),
        (
            spec(variant("Blue!", group, 1)),
            "variants[0].name: expected 1-63 lower-case letters",
        ),
        (spec(variant("blue", group, 0)), "variants[0].model_version: expected a version number"),
        (
            spec(variant("blue", group, 1, batching=ev.BatchingConfig(max_queue_delay_micros=-5))),
            "variants[0].batching.max_queue_delay_micros",
        ),
        (
            spec(variant("blue", group, 1, scale_to_zero_after_seconds=-1)),
            "variants[0].scale_to_zero_after_seconds: expected 0 (never) to 604800 seconds, got -1",
        ),
        (
            spec(variant("blue", group, 1, scale_to_zero_after_seconds=604801)),
            "variants[0].scale_to_zero_after_seconds: expected 0 (never) to 604800 seconds, "
            "got 604801",
        ),
        (
            spec(
                variant("blue", group, 1),
                shadow=ev.ShadowVariant(
                    variant=variant("m", group, 1, scale_to_zero_after_seconds=60),
                    sampling_percent=5,
                ),
            ),
            "shadow.variant.scale_to_zero_after_seconds: expected 0 on a shadow variant "
            "(shadow variants are not scaled to zero), got 60",
        ),
        (
            spec(variant("blue", group, 1), variant("green", group, 1, mode=99)),  # type: ignore[arg-type]
            "variants[1].mode: expected one of VARIANT_MODE_UNSPECIFIED, VARIANT_MODE_REALTIME",
        ),
    ]
    for config, message in cases:
        await expect_error(endpoint.create(config), INVALID, message)
    await expect_error(
        Endpoints(registry, "bad name").create(spec(variant("blue", group, 1))), INVALID, "name:"
    )
    serverless = await endpoint.create(
        spec(
            variant(
                "blue",
                group,
                1,
                mode=ev.VARIANT_MODE_SERVERLESS,
                instance_count=0,
                max_concurrency=4,
            )
        )
    )
    assert serverless.current_config.variants[0].mode == ev.VARIANT_MODE_SERVERLESS


async def test_scale_to_zero_is_stored_served_published_and_versioned(
    registry: Any,
    unique_name: Callable[[str], str],
    onnx_linear_model: Any,
    read_events: Any,
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model())
    endpoint = Endpoints(registry, unique_name("e"))

    def idle(config: Any) -> list[int]:
        return [v.scale_to_zero_after_seconds for v in config.variants]

    serverless = variant(
        "burst", group, 1, mode=ev.VARIANT_MODE_SERVERLESS, instance_count=0, weight=1
    )
    first = spec(variant("blue", group, 1, scale_to_zero_after_seconds=300), serverless)
    created = await endpoint.create(first)
    assert idle(created.current_config) == [300, 0]
    assert idle((await endpoint.get()).current_config) == [300, 0]

    # Only the idle time changes: that is a new configuration revision like any other.
    second = spec(variant("blue", group, 1, scale_to_zero_after_seconds=600), serverless)
    updated = await endpoint.update(second, expected_revision=1)
    assert updated.current_config.revision == 2
    assert idle(updated.current_config) == [600, 0]
    assert [(c.revision, idle(c)) for c in await endpoint.history()] == [
        (2, [600, 0]),
        (1, [300, 0]),
    ]
    listed: list[Any] = []
    token = ""
    while True:
        response = await registry.stub.ListEndpoints(
            pb.ListEndpointsRequest(page=common_pb2.PageRequest(page_size=1000, page_token=token))
        )
        listed += [e for e in response.endpoints if e.name == endpoint.name]
        token = response.page.next_page_token
        if not token:
            break
    assert [idle(e.current_config) for e in listed] == [[600, 0]]

    topic = registry.catalogue.endpoint_config_updated
    wanted = set(await registry.outbox_ids(endpoint.name))
    received = await read_events(
        registry.settings.kafka.bootstrap_servers,
        [topic],
        until=lambda records: wanted <= {r.envelope.id for r in records},
    )
    published = {
        r.message.config_revision: idle(r.message) for r in received if r.envelope.id in wanted
    }
    assert published == {1: [300, 0], 2: [600, 0]}


async def test_a_configuration_stored_without_scale_to_zero_reads_as_0(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model())
    endpoint = Endpoints(registry, unique_name("e"))
    await endpoint.create(spec(variant("blue", group, 1, scale_to_zero_after_seconds=300)))
    await endpoint.update(spec(variant("blue", group, 1)))

    # Rows written before the field existed have no key for it in their spec JSON.
    configs = tables.endpoint_configs
    where = (configs.c.endpoint == endpoint.name) & (configs.c.revision == 1)
    async with registry.app.database.transaction(write=True) as conn:
        stored = json.loads(
            (await conn.execute(select(configs.c.spec_json).where(where))).scalar_one()
        )
        assert stored["variants"][0].pop("scale_to_zero_after_seconds") == 300
        await conn.execute(update(configs).where(where).values(spec_json=json.dumps(stored)))

    history = await endpoint.history()
    assert [(c.revision, c.variants[0].scale_to_zero_after_seconds) for c in history] == [
        (2, 0),
        (1, 0),
    ]
    rolled = await endpoint.rollback(1)
    assert rolled.current_config.variants[0].scale_to_zero_after_seconds == 0


async def test_variants_must_take_the_same_inputs(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model(n_features=4))
    await registry.approved(group, onnx_linear_model(n_features=4, input_name="features"))
    await expect_error(
        Endpoints(registry, unique_name("e")).create(
            spec(variant("blue", group, 1), variant("green", group, 2))
        ),
        FAILED,
        "variants[1] 'green'",
        "all variants of an endpoint must take the same inputs",
    )


async def test_rejecting_a_served_version_needs_force_and_degrades(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model(seed=1))
    await registry.approved(group, onnx_linear_model(seed=2))
    live = Endpoints(registry, unique_name("e"))
    shadowed = Endpoints(registry, unique_name("s"))
    await live.create(spec(variant("blue", group, 1)))
    await shadowed.create(
        spec(
            variant("blue", group, 2),
            shadow=ev.ShadowVariant(variant=variant("mirror", group, 1), sampling_percent=5),
        )
    )

    def reject(force: bool) -> Any:
        return registry.stub.RejectModelVersion(
            pb.RejectModelVersionRequest(
                model_group=group, version=1, actor=ACTOR, reason="leak found", force=force
            )
        )

    await expect_error(
        reject(False),
        FAILED,
        f"model version {group}/1 is served by live endpoint(s)",
        f"{live.name} (blue)",
        f"{shadowed.name} (mirror)",
        "with force",
    )
    version = (
        await registry.stub.GetModelVersion(pb.GetModelVersionRequest(model_group=group, version=1))
    ).model_version
    assert version.approval_status == common_pb2.APPROVAL_STATUS_APPROVED

    response = await reject(True)
    assert sorted(response.degraded_endpoints) == sorted([live.name, shadowed.name])
    assert response.model_version.approval_status == common_pb2.APPROVAL_STATUS_REJECTED
    degraded = await live.get()
    assert degraded.status == DEGRADED
    assert f"model version {group}/1 was rejected by ops: leak found" == degraded.status_reason
    assert [e.action for e in await registry.audit(live.name, "endpoint")] == [
        "created",
        "degraded",
    ]

    # A new configuration with approved versions makes it active again.
    healed = await live.update(spec(variant("blue", group, 2)))
    assert healed.status == ACTIVE
    assert healed.status_reason == ""


async def test_delete_keeps_history_and_frees_the_version(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model(seed=1))
    endpoint = Endpoints(registry, unique_name("e"))
    await endpoint.create(spec(variant("blue", group, 1)))
    await registry.stub.DeleteEndpoint(pb.DeleteEndpointRequest(name=endpoint.name, actor=ACTOR))

    gone = await endpoint.get()
    assert gone.status == DELETED
    assert gone.current_config.revision == 1
    listed = await registry.stub.ListEndpoints(pb.ListEndpointsRequest())
    assert endpoint.name not in [e.name for e in listed.endpoints]
    with_deleted = await registry.stub.ListEndpoints(pb.ListEndpointsRequest(include_deleted=True))
    assert endpoint.name in [e.name for e in with_deleted.endpoints]
    await expect_error(
        endpoint.update(spec(variant("blue", group, 1))),
        grpc.StatusCode.NOT_FOUND,
        "(it was deleted)",
    )
    await expect_error(
        registry.stub.DeleteEndpoint(pb.DeleteEndpointRequest(name=endpoint.name, actor=ACTOR)),
        grpc.StatusCode.NOT_FOUND,
    )
    # A deleted endpoint does not hold its versions.
    await registry.stub.RejectModelVersion(
        pb.RejectModelVersionRequest(model_group=group, version=1, actor=ACTOR, reason="old")
    )
    # The name can be used again; revisions continue past the deletion (revision 2).
    await registry.approved(group, onnx_linear_model(seed=2))
    again = await endpoint.create(spec(variant("blue", group, 2)))
    assert again.status == ACTIVE
    assert again.current_config.revision == 3
    await expect_error(endpoint.rollback(2), grpc.StatusCode.NOT_FOUND, "used by a deletion")
    assert [e.action for e in await registry.audit(endpoint.name, "endpoint")] == [
        "created",
        "deleted",
        "created",
    ]


async def test_list_endpoints_pages(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    await registry.approved(group, onnx_linear_model())
    names = sorted(unique_name("e") for _ in range(3))
    for name in names:
        await Endpoints(registry, name).create(spec(variant("blue", group, 1)))
    seen: list[str] = []
    token = ""
    while True:
        response = await registry.stub.ListEndpoints(
            pb.ListEndpointsRequest(page=common_pb2.PageRequest(page_size=2, page_token=token))
        )
        seen += [e.name for e in response.endpoints if e.name in names]
        for listed in response.endpoints:
            if listed.name in names:
                assert listed.current_config.variants[0].model_group == group
        token = response.page.next_page_token
        if not token:
            break
    assert seen == names
