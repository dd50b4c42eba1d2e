"""Concurrent changes stay consistent: distinct version numbers, one approval, one alias
target, one group created."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2 as pb


async def test_concurrent_registrations_get_distinct_numbers(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    await registry.create_group(group)
    count = 6
    versions = await asyncio.gather(
        *(registry.register(group, onnx_linear_model(seed=i)) for i in range(count))
    )
    numbers = sorted(v.version for v in versions)
    assert numbers == list(range(1, count + 1))
    # Each number belongs to the bytes registered under it.
    for version in versions:
        got = await registry.stub.GetModelVersion(
            pb.GetModelVersionRequest(model_group=group, version=version.version)
        )
        assert got.model_version.artifact.sha256 == version.artifact.sha256
    group_now = (await registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=group))).model_group
    assert group_now.latest_version == count
    registered = [e.entity_id for e in await registry.audit(f"{group}/")]
    assert sorted(registered) == sorted(f"{group}/{n}" for n in numbers)


async def test_concurrent_registrations_into_a_new_group_create_it_once(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    versions = await asyncio.gather(
        *(registry.register(group, onnx_linear_model(seed=i), create_group=True) for i in range(3))
    )
    assert sorted(v.version for v in versions) == [1, 2, 3]
    created = [e for e in await registry.audit(group, "model_group") if e.entity_id == group]
    assert [e.action for e in created] == ["created"]


async def test_two_approvals_at_once_leave_one_approval(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    await registry.register(group, onnx_linear_model(), create_group=True)
    results = await asyncio.gather(
        registry.approve(group, 1, actor="bob", reason="first"),
        registry.approve(group, 1, actor="carol", reason="second"),
        return_exceptions=True,
    )
    succeeded = [r for r in results if not isinstance(r, BaseException)]
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(succeeded) == 1, results
    assert len(failed) == 1, results
    error = failed[0]
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "is APPROVED; it cannot move to APPROVED" in (error.details() or "")

    approvals = [e for e in await registry.audit(f"{group}/") if e.action == "approved"]
    assert len(approvals) == 1
    winner = succeeded[0]
    assert approvals[0].actor.name == ("bob" if winner.status_reason == "first" else "carol")
    assert approvals[0].reason == winner.status_reason
    assert json.loads(approvals[0].before_json) == {"approval_status": "PENDING_MANUAL_APPROVAL"}
    # One ModelVersionApproved event queued: group created, registered, approved.
    assert await registry.outbox_count(group) == 3


async def test_concurrent_alias_moves_leave_one_target(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    group = unique_name("g")
    for seed in range(4):
        await registry.register(group, onnx_linear_model(seed=seed), create_group=True)
    await asyncio.gather(
        *(
            registry.stub.SetAlias(
                pb.SetAliasRequest(
                    model_group=group,
                    alias="production",
                    version=v,
                    actor=common_pb2.Actor(name="bob"),
                )
            )
            for v in range(1, 5)
        )
    )
    listed = await registry.stub.ListModelVersions(pb.ListModelVersionsRequest(model_group=group))
    holders = [v.version for v in listed.model_versions if "production" in v.aliases]
    assert len(holders) == 1
    target = (
        await registry.stub.GetModelVersion(
            pb.GetModelVersionRequest(model_group=group, alias="production")
        )
    ).model_version.version
    assert holders == [target]
    # The audit trail replays to the same target.
    moves = [json.loads(e.after_json)["version"] for e in await registry.audit(f"{group}@")]
    assert moves[-1] == target


async def test_a_version_cannot_be_rejected_while_an_endpoint_takes_it(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any
) -> None:
    from mlbus.registry.v1 import events_pb2 as ev

    group = unique_name("g")
    endpoint = unique_name("e")
    actor = common_pb2.Actor(name="ops")

    def config(version: int) -> pb.EndpointConfigSpec:
        return pb.EndpointConfigSpec(
            variants=[
                ev.EndpointVariant(
                    name="blue",
                    model_group=group,
                    model_version=version,
                    weight=1,
                    instance_count=1,
                )
            ]
        )

    await registry.approved(group, onnx_linear_model(seed=0))
    await registry.stub.CreateEndpoint(
        pb.CreateEndpointRequest(name=endpoint, config=config(1), actor=actor)
    )
    for seed in range(1, 5):
        version = (await registry.approved(group, onnx_linear_model(seed=seed))).version
        results = await asyncio.gather(
            registry.stub.UpdateEndpoint(
                pb.UpdateEndpointRequest(name=endpoint, config=config(version), actor=actor)
            ),
            registry.stub.RejectModelVersion(
                pb.RejectModelVersionRequest(
                    model_group=group, version=version, actor=actor, reason="race"
                )
            ),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 1, results
        assert isinstance(errors[0], grpc.aio.AioRpcError)
        assert errors[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        current = (
            await registry.stub.GetEndpoint(pb.GetEndpointRequest(name=endpoint))
        ).endpoint.current_config
        status = (
            await registry.stub.GetModelVersion(
                pb.GetModelVersionRequest(model_group=group, version=version)
            )
        ).model_version.approval_status
        serves_it = current.variants[0].model_version == version
        assert serves_it != (status == common_pb2.APPROVAL_STATUS_REJECTED)
