"""The deployment controller's plans: a rejected version whose EndpointDegraded event
arrives before the configuration revision it degrades (they travel on different topics)
is never deployed with it; a revision needing more workers than ROUTER_MAX_WORKERS is not
deployed at all."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from mlbus.core.errors import Unavailable
from mlbus.core.settings import GrpcSettings
from mlbus.router.controller import ControllerSettings, DeploymentController
from mlbus.router.domain.deployment import EndpointPlan, VariantPlan, WorkerSpec
from mlbus.router.domain.routing import RoutingTable
from mlbus.router.metrics import RouterMetrics


class NeverStarts:
    """A worker backend whose workers never start (these tests look at plans only)."""

    async def spawn(self, spec: WorkerSpec, instance_id: str) -> Any:
        await asyncio.Event().wait()


def variant(name: str, version: int) -> VariantPlan:
    spec = WorkerSpec(
        endpoint="churn",
        variant=name,
        model_group="churn",
        model_version=version,
        artifact_uri=f"file:///v{version}.onnx",
        artifact_sha256="0" * 64,
    )
    return VariantPlan(spec, 1.0, 1)


def plan(revision: int) -> EndpointPlan:
    return EndpointPlan("churn", revision, (variant("blue", 3), variant("green", 4)))


def controller() -> DeploymentController:
    return DeploymentController(
        RoutingTable(),
        NeverStarts(),  # type: ignore[arg-type]
        grpc_settings=GrpcSettings(),
        settings=ControllerSettings(),
        metrics=RouterMetrics(),
    )


def served(c: DeploymentController) -> list[int]:
    desired = c._endpoints["churn"].desired
    assert desired is not None
    return [v.spec.model_version for v in desired.variants]


async def test_a_rejection_that_arrives_before_its_revision_is_applied_to_it() -> None:
    c = controller()
    try:
        assert c.degrade("churn", 2, "churn", 4, "rejected by bob: leaks labels")
        assert "churn" not in c._endpoints  # nothing deployed for it yet
        assert c.submit(plan(2))
        assert served(c) == [3]  # version 4 never deployed
        # A later revision does not inherit it (the registry would not have included a
        # rejected version in it).
        assert c.submit(plan(3))
        assert served(c) == [3, 4]
    finally:
        await c.stop()


async def test_a_rejection_of_an_older_revision_changes_nothing() -> None:
    c = controller()
    try:
        assert c.submit(plan(3))
        assert not c.degrade("churn", 2, "churn", 4, "stale")
        assert served(c) == [3, 4]
        assert c.degrade("churn", 3, "churn", 4, "rejected")
        assert served(c) == [3]
    finally:
        await c.stop()


async def test_a_revision_needing_more_workers_than_the_limit_is_not_deployed() -> None:
    c = DeploymentController(
        RoutingTable(),
        NeverStarts(),  # type: ignore[arg-type]
        grpc_settings=GrpcSettings(),
        settings=ControllerSettings(max_workers=3),
        metrics=RouterMetrics(),
    )
    try:
        assert c.submit(plan(1))  # two workers (they stay starting here)
        assert await c.wait_for(lambda: c.running_workers() == 2, timeout=5)
        fraud = dataclasses.replace(variant("blue", 1).spec, endpoint="fraud")
        other = EndpointPlan("fraud", 1, (VariantPlan(fraud, 1.0, 2),))
        assert c.submit(other)

        def refused() -> bool:
            state = c._endpoints["fraud"]
            return state.status == "failed"

        assert await c.wait_for(refused, timeout=5)
        error = c._endpoints["fraud"].error
        assert "needs 2 more worker processes" in error
        assert "runs 2 of at most 3 (ROUTER_MAX_WORKERS)" in error
        assert c.running_workers() == 2  # nothing started for it
        with pytest.raises(Unavailable, match="ROUTER_MAX_WORKERS"):
            c.table.get("fraud")
    finally:
        await c.stop()
