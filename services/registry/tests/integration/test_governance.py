"""Governance over gRPC: the approval state machine, the self-approval policy, aliases and
the audit log."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2 as pb

FAILED = grpc.StatusCode.FAILED_PRECONDITION
INVALID = grpc.StatusCode.INVALID_ARGUMENT
APPROVED = common_pb2.APPROVAL_STATUS_APPROVED
REJECTED = common_pb2.APPROVAL_STATUS_REJECTED


def reject(group: str, version: int, *, reason: str = "bad", force: bool = False) -> Any:
    return pb.RejectModelVersionRequest(
        model_group=group,
        version=version,
        actor=common_pb2.Actor(name="bob"),
        reason=reason,
        force=force,
    )


async def test_approval_state_machine(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    for seed in range(3):
        await registry.register(group, onnx_linear_model(seed=seed), create_group=True)

    approved = await registry.approve(group, 1, reason="offline eval passed")
    assert approved.approval_status == APPROVED
    assert approved.status_reason == "offline eval passed"
    await expect_error(
        registry.approve(group, 1),
        FAILED,
        f"model version {group}/1 is APPROVED; it cannot move to APPROVED",
    )

    await expect_error(
        registry.stub.RejectModelVersion(reject(group, 2, reason="  ")),
        INVALID,
        "reason: required when rejecting",
    )
    rejected = (await registry.stub.RejectModelVersion(reject(group, 2))).model_version
    assert rejected.approval_status == REJECTED
    assert rejected.status_reason == "bad"
    await expect_error(
        registry.approve(group, 2),
        FAILED,
        "is REJECTED; it cannot move to APPROVED (allowed from REJECTED: none, it is final)",
    )
    await expect_error(registry.stub.RejectModelVersion(reject(group, 2)), FAILED, "REJECTED")

    # Withdrawing an approval: APPROVED → REJECTED.
    withdrawn = (
        await registry.stub.RejectModelVersion(reject(group, 1, reason="drift found"))
    ).model_version
    assert withdrawn.approval_status == REJECTED

    entries = await registry.audit(f"{group}/", "model_version")
    transitions = [
        (e.entity_id, e.action, json.loads(e.before_json or "null"), json.loads(e.after_json))
        for e in entries
        if e.action in ("approved", "rejected")
    ]
    assert transitions == [
        (
            f"{group}/1",
            "approved",
            {"approval_status": "PENDING_MANUAL_APPROVAL"},
            {"approval_status": "APPROVED"},
        ),
        (
            f"{group}/2",
            "rejected",
            {"approval_status": "PENDING_MANUAL_APPROVAL"},
            {"approval_status": "REJECTED"},
        ),
        (
            f"{group}/1",
            "rejected",
            {"approval_status": "APPROVED"},
            {"approval_status": "REJECTED"},
        ),
    ]
    assert all(e.actor.name == "bob" for e in entries if e.action != "registered")
    await expect_error(
        registry.approve(group, 7), grpc.StatusCode.NOT_FOUND, f"model version {group}/7"
    )


async def test_registrant_cannot_approve_their_own_version(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.register(group, onnx_linear_model(), create_group=True, actor="alice")
    await expect_error(
        registry.approve(group, 1, actor="alice"),
        grpc.StatusCode.PERMISSION_DENIED,
        "registered by 'alice'",
        "REGISTRY_ALLOW_SELF_APPROVAL",
    )
    assert [e.action for e in await registry.audit(f"{group}/")] == ["registered"]
    assert (await registry.approve(group, 1, actor="bob")).approval_status == APPROVED


async def test_self_approval_when_policy_allows_it(
    start_registry: Any,
    own_database_url: str,
    unique_name: Callable[[str], str],
    onnx_linear_model: Any,
) -> None:
    async with start_registry(own_database_url, allow_self_approval=True) as registry:
        group = unique_name("g")
        await registry.register(group, onnx_linear_model(), create_group=True, actor="alice")
        approved = await registry.approve(group, 1, actor="alice")
        assert approved.approval_status == APPROVED


async def test_an_alias_names_one_version_per_group(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    for seed in range(2):
        await registry.register(group, onnx_linear_model(seed=seed), create_group=True)

    def set_alias(alias: str, version: int) -> Any:
        return registry.stub.SetAlias(
            pb.SetAliasRequest(
                model_group=group,
                alias=alias,
                version=version,
                actor=common_pb2.Actor(name="bob"),
                reason="promote",
            )
        )

    first = await set_alias("production", 1)
    assert first.previous_version == 0
    assert list(first.model_version.aliases) == ["production"]
    await set_alias("champion", 1)
    moved = await set_alias("production", 2)
    assert moved.previous_version == 1
    assert list(moved.model_version.aliases) == ["production"]

    async def version(number: int) -> Any:
        request = pb.GetModelVersionRequest(model_group=group, version=number)
        return (await registry.stub.GetModelVersion(request)).model_version

    assert list((await version(1)).aliases) == ["champion"]
    by_alias = await registry.stub.GetModelVersion(
        pb.GetModelVersionRequest(model_group=group, alias="production")
    )
    assert by_alias.model_version.version == 2
    # Setting an alias to where it points already changes nothing.
    assert (await set_alias("production", 2)).previous_version == 2

    await registry.stub.DeleteAlias(
        pb.DeleteAliasRequest(
            model_group=group, alias="production", actor=common_pb2.Actor(name="bob")
        )
    )
    await expect_error(
        registry.stub.GetModelVersion(
            pb.GetModelVersionRequest(model_group=group, alias="production")
        ),
        grpc.StatusCode.NOT_FOUND,
        f"alias 'production' of model group '{group}' does not exist",
    )
    await expect_error(set_alias("3", 1), INVALID, "alias:", "not a plain number")
    await expect_error(set_alias("Prod", 1), INVALID, "alias:")
    await expect_error(set_alias("staging", 5), grpc.StatusCode.NOT_FOUND, f"{group}/5")

    entries = await registry.audit(f"{group}@", "alias")
    assert [(e.entity_id, e.action) for e in entries] == [
        (f"{group}@production", "alias_set"),
        (f"{group}@champion", "alias_set"),
        (f"{group}@production", "alias_set"),
        (f"{group}@production", "alias_deleted"),
    ]
    assert json.loads(entries[2].before_json) == {"version": 1}
    assert json.loads(entries[2].after_json) == {"version": 2}


async def test_audit_log_pages_and_filters(
    registry: Any, unique_name: Callable[[str], str], onnx_linear_model: Any, expect_error: Any
) -> None:
    group = unique_name("g")
    await registry.register(group, onnx_linear_model(), create_group=True)
    await registry.approve(group, 1)
    everything = await registry.audit(group)
    assert [(e.entity_type, e.action) for e in everything] == [
        ("model_group", "created"),
        ("model_version", "registered"),
        ("model_version", "approved"),
    ]
    assert [e.id for e in everything] == sorted(e.id for e in everything)
    first = await registry.stub.ListAuditEntries(
        pb.ListAuditEntriesRequest(entity_id_prefix=group, page=common_pb2.PageRequest(page_size=2))
    )
    second = await registry.stub.ListAuditEntries(
        pb.ListAuditEntriesRequest(
            entity_id_prefix=group,
            page=common_pb2.PageRequest(page_token=first.page.next_page_token),
        )
    )
    assert list(first.entries) + list(second.entries) == everything
    await expect_error(
        registry.stub.ListAuditEntries(pb.ListAuditEntriesRequest(entity_type="models")),
        INVALID,
        "entity_type: expected one of model_group, model_version, alias, endpoint",
    )
