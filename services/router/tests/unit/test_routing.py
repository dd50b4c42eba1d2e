"""Routing decisions: variant by weight, target and version; instance by least outstanding
requests within the variant's max concurrency."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from mlbus.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from mlbus.router.domain.routing import Instance, Route, RoutingTable, VariantPool


def pool(
    name: str, weight: float = 1.0, version: int = 1, n: int = 1, limit: int = 0
) -> VariantPool:
    return VariantPool(
        name=name,
        model_group="churn",
        model_version=version,
        weight=weight,
        max_concurrency=limit,
        instances=[Instance(f"{name}/{i}", f"127.0.0.1:{9000 + i}") for i in range(n)],
    )


def test_weights_split_traffic_within_binomial_tolerance() -> None:
    route = Route("churn", 1, (pool("blue", 70), pool("green", 30)))
    rng = random.Random(7)
    n = 20_000
    counts = Counter(route.choose(rng).name for _ in range(n))
    sigma = math.sqrt(n * 0.7 * 0.3)
    assert abs(counts["blue"] - 0.7 * n) < 4 * sigma
    assert counts["blue"] + counts["green"] == n


def test_zero_weight_variant_gets_no_traffic_unless_targeted() -> None:
    route = Route("churn", 1, (pool("blue", 1), pool("canary", 0)))
    rng = random.Random(1)
    assert {route.choose(rng).name for _ in range(500)} == {"blue"}
    assert route.choose(rng, target_variant="canary").name == "canary"


def test_target_variant_pins_and_unknown_target_names_the_choices() -> None:
    route = Route("churn", 1, (pool("blue", 99), pool("green", 1)))
    rng = random.Random(2)
    assert {route.choose(rng, target_variant="green").name for _ in range(100)} == {"green"}
    with pytest.raises(InvalidArgument, match=r"target_variant 'red'.*expected one of blue, green"):
        route.choose(rng, target_variant="red")


def test_model_version_selects_the_variant_serving_it() -> None:
    route = Route("churn", 1, (pool("blue", 1, version=3), pool("green", 1, version=4)))
    rng = random.Random(3)
    assert {route.choose(rng, model_version="4").name for _ in range(50)} == {"green"}
    with pytest.raises(NotFound, match=r"no model version '9'; served versions: 3, 4"):
        route.choose(rng, model_version="9")
    with pytest.raises(NotFound, match="serves version 3, not the requested '4'"):
        route.choose(rng, target_variant="blue", model_version="4")


def test_blocked_endpoint_refuses_with_its_reason() -> None:
    route = Route("churn", 1, (), blocked_reason="model churn version 3 was rejected")
    with pytest.raises(FailedPrecondition, match="version 3 was rejected"):
        route.choose(random.Random())


def test_least_outstanding_instance_is_picked() -> None:
    p = pool("blue", n=3)
    p.instances[0].outstanding = 5
    p.instances[1].outstanding = 1
    p.instances[2].outstanding = 3
    rng = random.Random(4)
    assert all(p.pick(rng) is p.instances[1] for _ in range(20))


def test_ties_are_spread_over_instances() -> None:
    p = pool("blue", n=4)
    rng = random.Random(5)
    picked = Counter(p.pick(rng).id for _ in range(400))  # type: ignore[union-attr]
    assert len(picked) == 4
    assert min(picked.values()) > 50


def test_unhealthy_and_excluded_instances_are_skipped() -> None:
    p = pool("blue", n=3)
    p.instances[0].healthy = False
    rng = random.Random(6)
    assert p.pick(rng, exclude=[p.instances[1]]) is p.instances[2]
    p.instances[2].healthy = False
    assert p.pick(rng, exclude=[p.instances[1]]) is None


def test_max_concurrency_bounds_each_instance() -> None:
    p = pool("blue", n=2, limit=2)
    rng = random.Random(8)
    for _ in range(4):
        inst = p.pick(rng)
        assert inst is not None
        inst.outstanding += 1
    assert [i.outstanding for i in p.instances] == [2, 2]
    assert p.pick(rng) is None
    error = p.unavailable_reason("churn")
    assert isinstance(error, ResourceExhausted)
    assert "max concurrency (2 per instance × 2 instance(s))" in str(error)


def test_no_ready_instance_is_unavailable() -> None:
    p = pool("blue", n=1)
    p.instances[0].healthy = False
    assert p.pick(random.Random()) is None
    assert isinstance(p.unavailable_reason("churn"), Unavailable)


def test_table_names_deployed_endpoints_when_one_is_missing() -> None:
    table = RoutingTable()
    table.set(Route("churn", 1, (pool("blue"),)))
    table.set(Route("fraud", 2, (pool("a"),)))
    assert table.get("churn").revision == 1
    with pytest.raises(
        NotFound, match="'nope' is not deployed on this router; deployed: churn, fraud"
    ):
        table.get("nope")
    assert table.remove("churn") is not None
    assert table.endpoints() == ["fraud"]


def test_endpoint_being_deployed_is_unavailable_not_missing() -> None:
    table = RoutingTable()
    table.mark_pending("churn", "revision 1 is being deployed")
    with pytest.raises(
        Unavailable, match="'churn' is not serving yet: revision 1 is being deployed"
    ):
        table.get("churn")
    table.set(Route("churn", 1, (pool("blue"),)))
    assert table.get("churn").revision == 1
    table.mark_pending("churn", "revision 2 is being deployed")
    assert table.get("churn").revision == 1  # an update keeps serving the old route
    table.remove("churn")
    with pytest.raises(NotFound):
        table.get("churn")
