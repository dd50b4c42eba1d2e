"""Model groups over gRPC: create, get, list with filters and pages, update, audit; the
actor rule; errors naming the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from mlbus.common.v1 import common_pb2
from mlbus.registry.v1 import registry_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_create_get_and_update_a_group(
    registry: Any, unique_name: Callable[[str], str], expect_error: Any
) -> None:
    name = unique_name("g")
    created = await registry.create_group(name, description="churn", tags={"team": "growth"})
    assert created.name == name
    assert created.latest_version == 0
    assert created.created_by.name == "alice"
    assert dict(created.tags) == {"team": "growth"}

    got = (await registry.stub.GetModelGroup(pb.GetModelGroupRequest(name=name))).model_group
    assert got == created

    await expect_error(
        registry.create_group(name), grpc.StatusCode.ALREADY_EXISTS, f"'{name}' exists already"
    )

    updated = (
        await registry.stub.UpdateModelGroup(
            pb.UpdateModelGroupRequest(
                name=name,
                description="churn v2",
                set_tags={"tier": "gold"},
                remove_tags=["team"],
                actor=common_pb2.Actor(name="carol"),
            )
        )
    ).model_group
    assert updated.description == "churn v2"
    assert dict(updated.tags) == {"tier": "gold"}
    assert updated.update_time.ToDatetime() >= created.update_time.ToDatetime()

    # A change that changes nothing is not audited.
    await registry.stub.UpdateModelGroup(
        pb.UpdateModelGroupRequest(name=name, set_tags={"tier": "gold"}, actor=created.created_by)
    )
    entries = await registry.audit(name, "model_group")
    assert [(e.action, e.actor.name) for e in entries] == [
        ("created", "alice"),
        ("updated", "carol"),
    ]
    assert '"tier":"gold"' in entries[1].after_json
    assert '"team":"growth"' in entries[1].before_json


async def test_actor_from_metadata_or_refused(
    registry: Any, unique_name: Callable[[str], str], expect_error: Any
) -> None:
    name = unique_name("g")
    request = pb.CreateModelGroupRequest(name=name)
    await expect_error(registry.stub.CreateModelGroup(request), INVALID, "actor", "x-mlbus-actor")
    response = await registry.stub.CreateModelGroup(
        request, metadata=(("x-mlbus-actor", "service:trainer"),)
    )
    assert response.model_group.created_by.name == "service:trainer"
    # The request field wins over the metadata.
    other = unique_name("g")
    response = await registry.stub.CreateModelGroup(
        pb.CreateModelGroupRequest(name=other, actor=common_pb2.Actor(name="dave")),
        metadata=(("x-mlbus-actor", "service:trainer"),),
    )
    assert response.model_group.created_by.name == "dave"


async def test_invalid_names_and_fields_are_named(registry: Any, expect_error: Any) -> None:
    for bad in ("", "Upper", "1starts-with-digit", "has space", "x" * 64):
        await expect_error(registry.create_group(bad), INVALID, "name:", "lower-case")
    await expect_error(
        registry.create_group("ok-name-tags", tags={"": "v"}), INVALID, "tags: expected keys"
    )
    await expect_error(
        registry.stub.GetModelGroup(pb.GetModelGroupRequest(name="no-such-group-here")),
        grpc.StatusCode.NOT_FOUND,
        "model group 'no-such-group-here' does not exist",
    )


async def test_list_filters_and_pages(
    registry: Any, unique_name: Callable[[str], str], expect_error: Any
) -> None:
    prefix = unique_name("p")
    names = [f"{prefix}-{i}" for i in range(5)]
    for i, name in enumerate(names):
        await registry.create_group(name, tags={"parity": "even" if i % 2 == 0 else "odd"})

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await registry.stub.ListModelGroups(
            pb.ListModelGroupsRequest(
                name_prefix=prefix, page=common_pb2.PageRequest(page_size=2, page_token=token)
            )
        )
        pages += 1
        assert len(response.model_groups) <= 2
        seen += [g.name for g in response.model_groups]
        token = response.page.next_page_token
        if not token:
            break
    assert seen == names
    assert pages == 3

    even = await registry.stub.ListModelGroups(
        pb.ListModelGroupsRequest(name_prefix=prefix, tags={"parity": "even"})
    )
    assert [g.name for g in even.model_groups] == names[0::2]
    assert all(dict(g.tags) == {"parity": "even"} for g in even.model_groups)

    first = await registry.stub.ListModelGroups(
        pb.ListModelGroupsRequest(name_prefix=prefix, page=common_pb2.PageRequest(page_size=1))
    )
    token = first.page.next_page_token
    await expect_error(
        registry.stub.ListModelGroups(
            pb.ListModelGroupsRequest(
                name_prefix=prefix,
                tags={"parity": "odd"},
                page=common_pb2.PageRequest(page_token=token),
            )
        ),
        INVALID,
        "page.page_token",
        "other filters",
    )
    await expect_error(
        registry.stub.ListModelGroups(
            pb.ListModelGroupsRequest(page=common_pb2.PageRequest(page_token="garbage!"))
        ),
        INVALID,
        "page.page_token",
    )
    await expect_error(
        registry.stub.ListModelGroups(
            pb.ListModelGroupsRequest(page=common_pb2.PageRequest(page_size=-1))
        ),
        INVALID,
        "page.page_size",
    )
