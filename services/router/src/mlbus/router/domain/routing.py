"""Which worker instance serves a request: endpoint → variant (weight, target, version) →
instance (least outstanding requests, bounded by the variant's max concurrency).

The routing table holds one :class:`Route` per endpoint. The deployment controller replaces
an endpoint's route in one assignment when a new configuration is ready (blue/green), and
adds or removes instances of a live pool when a worker is replaced after a crash. Requests
read the table without locks: everything runs on one event loop.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlbus.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)


@dataclass(eq=False)
class Instance:
    """One running worker that serves a variant."""

    id: str
    address: str
    #: The adapter's handle used to call the worker (a channel wrapper); opaque here.
    client: Any = None
    #: Requests forwarded to it and not answered yet (shadow copies included).
    outstanding: int = 0
    #: False once its process exited or it started draining: never picked again.
    healthy: bool = True

    def __repr__(self) -> str:
        return f"Instance({self.id!r}, {self.address}, outstanding={self.outstanding})"


@dataclass(eq=False)
class VariantPool:
    """A variant of an endpoint and the instances serving it."""

    name: str
    model_group: str
    model_version: int
    weight: float
    #: Most requests in flight on one instance; 0 = unlimited (the worker's own limit).
    max_concurrency: int = 0
    instances: list[Instance] = field(default_factory=list)
    #: ``time.monotonic()`` of the last request routed to it (scale-to-zero idleness).
    last_request: float = 0.0
    #: Set on a variant that scales to zero: starts its workers when it has none and waits
    #: up to the given seconds for one to be ready (True once one is).
    cold_start: Callable[[float], Awaitable[bool]] | None = None

    def ready_instances(self) -> list[Instance]:
        """Instances that may be picked now."""
        return [i for i in self.instances if i.healthy]

    def pick(self, rng: random.Random, exclude: Iterable[Instance] = ()) -> Instance | None:
        """The healthy instance with the fewest outstanding requests (ties broken at
        random), skipping ``exclude`` and instances at ``max_concurrency``; None if none."""
        instances = self.instances
        n = len(instances)
        if n == 0:
            return None
        excluded = tuple(exclude)
        limit = self.max_concurrency
        best: Instance | None = None
        start = rng.randrange(n) if n > 1 else 0
        for k in range(n):
            inst = instances[(start + k) % n]
            if not inst.healthy or inst in excluded:
                continue
            if limit and inst.outstanding >= limit:
                continue
            if best is None or inst.outstanding < best.outstanding:
                best = inst
        return best

    def unavailable_reason(self, endpoint: str) -> Unavailable | ResourceExhausted:
        """The error for a request :meth:`pick` found no instance for."""
        ready = self.ready_instances()
        if not ready:
            return Unavailable(
                f"endpoint {endpoint!r}: variant {self.name!r} has no ready instance "
                "(starting, restarting or stopped); retry shortly"
            )
        return ResourceExhausted(
            f"endpoint {endpoint!r}: variant {self.name!r} is at its max concurrency "
            f"({self.max_concurrency} per instance × {len(ready)} instance(s)); retry later"
        )


@dataclass(eq=False)
class Route:
    """How an endpoint's traffic is split, as of one configuration revision."""

    endpoint: str
    revision: int
    variants: tuple[VariantPool, ...]
    shadow: VariantPool | None = None
    #: Share of requests mirrored to ``shadow``, 0–100.
    shadow_percent: float = 0.0
    #: Set when the endpoint may not serve (e.g. every variant's version was rejected).
    blocked_reason: str = ""
    _cumulative: list[float] = field(default_factory=list, init=False, repr=False)
    _by_name: dict[str, VariantPool] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        total = 0.0
        for pool in self.variants:
            total += max(pool.weight, 0.0)
            self._cumulative.append(total)
        self._by_name = {pool.name: pool for pool in self.variants}

    def variant_names(self) -> list[str]:
        """Production variant names, in configuration order."""
        return [pool.name for pool in self.variants]

    def versions(self) -> list[int]:
        """Distinct model versions served by the production variants, ascending."""
        return sorted({pool.model_version for pool in self.variants})

    def choose(
        self, rng: random.Random, *, target_variant: str = "", model_version: str = ""
    ) -> VariantPool:
        """The production variant for one request.

        ``target_variant`` pins it by name (INVALID_ARGUMENT when unknown); a non-empty
        ``model_version`` restricts the choice to variants serving that version (NOT_FOUND
        when none does); otherwise variants are drawn by weight.
        """
        if self.blocked_reason:
            raise FailedPrecondition(
                f"endpoint {self.endpoint!r} cannot serve: {self.blocked_reason}"
            )
        if target_variant:
            pool = self._by_name.get(target_variant)
            if pool is None:
                raise InvalidArgument(
                    f"target_variant {target_variant!r}: endpoint {self.endpoint!r} has no such "
                    f"variant; expected one of {', '.join(self.variant_names()) or '(none)'}"
                )
            if model_version and str(pool.model_version) != model_version:
                raise NotFound(
                    f"endpoint {self.endpoint!r}: variant {pool.name!r} serves version "
                    f"{pool.model_version}, not the requested {model_version!r}"
                )
            return pool
        if model_version:
            matching = [p for p in self.variants if str(p.model_version) == model_version]
            if not matching:
                served = ", ".join(str(v) for v in self.versions()) or "(none)"
                raise NotFound(
                    f"endpoint {self.endpoint!r} serves no model version {model_version!r}; "
                    f"served versions: {served}"
                )
            return matching[0] if len(matching) == 1 else _by_weight(matching, rng)
        if len(self.variants) == 1:
            return self.variants[0]
        if not self.variants:
            raise Unavailable(f"endpoint {self.endpoint!r} has no production variant")
        total = self._cumulative[-1]
        if total <= 0:
            return self.variants[rng.randrange(len(self.variants))]
        index = bisect_right(self._cumulative, rng.random() * total)
        return self.variants[min(index, len(self.variants) - 1)]

    def pools(self) -> list[VariantPool]:
        """Production pools and the shadow pool, if any."""
        return [*self.variants, *([self.shadow] if self.shadow is not None else [])]


def _by_weight(pools: Sequence[VariantPool], rng: random.Random) -> VariantPool:
    total = sum(max(p.weight, 0.0) for p in pools)
    if total <= 0:
        return pools[rng.randrange(len(pools))]
    x = rng.random() * total
    for pool in pools:
        x -= max(pool.weight, 0.0)
        if x < 0:
            return pool
    return pools[-1]


class RoutingTable:
    """Endpoint name → its current :class:`Route`."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        #: Endpoints known but not routed yet (first deployment in progress, or failed).
        self._pending: dict[str, str] = {}

    def get(self, endpoint: str) -> Route:
        """The route of ``endpoint``; UNAVAILABLE while it is first being deployed,
        NOT_FOUND naming the known endpoints otherwise."""
        route = self._routes.get(endpoint)
        if route is None:
            pending = self._pending.get(endpoint)
            if pending is not None:
                raise Unavailable(f"endpoint {endpoint!r} is not serving yet: {pending}")
            known = ", ".join(sorted(self._routes)) or "(none deployed)"
            raise NotFound(
                f"endpoint {endpoint!r} is not deployed on this router; deployed: {known}"
            )
        return route

    def find(self, endpoint: str) -> Route | None:
        """The route of ``endpoint``, or None."""
        return self._routes.get(endpoint)

    def set(self, route: Route) -> None:
        """Make ``route`` the endpoint's route (one assignment: requests see old or new)."""
        self._routes[route.endpoint] = route
        self._pending.pop(route.endpoint, None)

    def mark_pending(self, endpoint: str, reason: str) -> None:
        """``endpoint`` has no route yet; requests get UNAVAILABLE with ``reason``."""
        if endpoint not in self._routes:
            self._pending[endpoint] = reason

    def is_pending(self, endpoint: str) -> bool:
        """True while ``endpoint`` is known but not routed yet."""
        return endpoint in self._pending

    def remove(self, endpoint: str) -> Route | None:
        """Stop routing to ``endpoint``; returns the route it had."""
        self._pending.pop(endpoint, None)
        return self._routes.pop(endpoint, None)

    def endpoints(self) -> list[str]:
        """Names of the routed endpoints, sorted."""
        return sorted(self._routes)

    def routes(self) -> list[Route]:
        """All routes, by endpoint name."""
        return [self._routes[name] for name in sorted(self._routes)]
