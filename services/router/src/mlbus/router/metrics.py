"""The router's OpenTelemetry instruments, and plain counters tests and status can read.

Every data point carries the endpoint and variant (``mlbus.endpoint``, ``mlbus.variant``).
A routed request costs one histogram measurement on the hot path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

INSTRUMENTATION: Final = "mlbus.router"

_SECONDS_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_DIFF_BUCKETS: Final = (0.0, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 10.0)


@dataclass
class ShadowStats:
    """Running totals of one endpoint's shadow comparisons."""

    mirrored: int = 0
    ok: int = 0
    errors: int = 0
    dropped: int = 0
    #: Shadow responses whose outputs differed from production (beyond equality).
    differing: int = 0
    max_abs_diff: float = 0.0
    latency_sum_s: float = 0.0


@dataclass
class RouterStats:
    """Running totals since start (tests, status)."""

    requests: dict[tuple[str, str], int] = field(default_factory=dict)
    retries: int = 0
    worker_restarts: int = 0
    #: (endpoint, variant, "up" | "down") → scale events.
    scale_events: dict[tuple[str, str, str], int] = field(default_factory=dict)
    shadow: dict[str, ShadowStats] = field(default_factory=dict)

    def shadow_for(self, endpoint: str) -> ShadowStats:
        """The shadow totals of ``endpoint`` (created on first use)."""
        stats = self.shadow.get(endpoint)
        if stats is None:
            stats = self.shadow[endpoint] = ShadowStats()
        return stats


class RouterMetrics:
    """Request, shadow and deployment instruments of the router."""

    def __init__(self, *, meter_provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(INSTRUMENTATION, meter_provider=meter_provider)
        self.stats = RouterStats()
        self._duration = meter.create_histogram(
            "mlbus.router.request.duration",
            unit="s",
            description="ModelInfer time through the router, by endpoint, variant and gRPC "
            "status (its count is the request count).",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._retries = meter.create_counter(
            "mlbus.router.request.retries",
            unit="{retry}",
            description="Requests retried on another instance after UNAVAILABLE.",
        )
        self._shadow_requests = meter.create_counter(
            "mlbus.router.shadow.requests",
            unit="{request}",
            description="Mirrored requests by outcome: ok, error, dropped (too many in flight).",
        )
        self._shadow_duration = meter.create_histogram(
            "mlbus.router.shadow.duration",
            unit="s",
            description="Shadow variant response time.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._shadow_diff = meter.create_histogram(
            "mlbus.router.shadow.prediction_diff",
            unit="1",
            description="Largest absolute difference between shadow and production outputs "
            "(1 for a differing non-numeric output).",
            explicit_bucket_boundaries_advisory=_DIFF_BUCKETS,
        )
        self._restarts = meter.create_counter(
            "mlbus.router.worker.restarts",
            unit="{restart}",
            description="Workers replaced after exiting while serving.",
        )
        self._deploy_failed = meter.create_counter(
            "mlbus.router.deployment.failures",
            unit="{deployment}",
            description="Endpoint revisions whose workers did not come up.",
        )
        self._scale_events = meter.create_counter(
            "mlbus.router.scale.events",
            unit="{event}",
            description="Variants scaled to zero (direction=down) or started from zero (up).",
        )
        self._cold_start = meter.create_histogram(
            "mlbus.router.scale.cold_start.duration",
            unit="s",
            description="Time from a scale-up decision to the variant's first ready worker.",
            explicit_bucket_boundaries_advisory=(*_SECONDS_BUCKETS[8:], 30.0, 60.0, 120.0),
        )
        self._queue_depth: dict[str, int] = {}
        meter.create_observable_gauge(
            "mlbus.router.queue.depth",
            callbacks=[self._observe_queue_depth],
            unit="{record}",
            description="Asynchronous requests and batch chunks queued for an endpoint that "
            "scales to zero (its workers' consumer lag; read by the router, so it is there "
            "while the endpoint has no worker).",
        )
        self._ready: dict[tuple[str, str], int] = {}
        meter.create_observable_gauge(
            "mlbus.router.workers.ready",
            callbacks=[self._observe_ready],
            unit="{worker}",
            description="Workers serving each variant.",
        )
        self._attrs: dict[tuple[str, str, str], dict[str, str]] = {}

    def _attributes(self, endpoint: str, variant: str, status: str = "") -> dict[str, str]:
        key = (endpoint, variant, status)
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {"mlbus.endpoint": endpoint, "mlbus.variant": variant}
            if status:
                attrs["rpc.grpc.status"] = status
            self._attrs[key] = attrs
        return attrs

    def request(self, endpoint: str, variant: str, status: str, seconds: float) -> None:
        """One routed ModelInfer finished."""
        self._duration.record(seconds, self._attributes(endpoint, variant, status))
        key = (endpoint, variant)
        self.stats.requests[key] = self.stats.requests.get(key, 0) + 1

    def retried(self, endpoint: str, variant: str) -> None:
        """A request was retried on another instance."""
        self._retries.add(1, self._attributes(endpoint, variant))
        self.stats.retries += 1

    def shadow_dropped(self, endpoint: str, variant: str) -> None:
        """A mirrored request was not sent: too many shadow calls in flight."""
        self._shadow_requests.add(1, {**self._attributes(endpoint, variant), "outcome": "dropped"})
        self.stats.shadow_for(endpoint).dropped += 1

    def shadow_result(
        self, endpoint: str, variant: str, *, seconds: float, error: bool, diff: float | None
    ) -> None:
        """A mirrored request finished; ``diff`` is the largest output difference."""
        attrs = self._attributes(endpoint, variant)
        stats = self.stats.shadow_for(endpoint)
        stats.mirrored += 1
        self._shadow_requests.add(1, {**attrs, "outcome": "error" if error else "ok"})
        self._shadow_duration.record(seconds, attrs)
        stats.latency_sum_s += seconds
        if error:
            stats.errors += 1
            return
        stats.ok += 1
        if diff is not None:
            self._shadow_diff.record(diff, attrs)
            if diff > 0:
                stats.differing += 1
            stats.max_abs_diff = max(stats.max_abs_diff, diff)

    def worker_restarted(self, endpoint: str, variant: str) -> None:
        """A worker exited while serving and is being replaced."""
        self._restarts.add(1, self._attributes(endpoint, variant))
        self.stats.worker_restarts += 1

    def deployment_failed(self, endpoint: str) -> None:
        """A revision's workers did not come up."""
        self._deploy_failed.add(1, {"mlbus.endpoint": endpoint})

    def scaled(
        self, endpoint: str, variant: str, direction: str, *, cold_start_s: float | None = None
    ) -> None:
        """A variant scaled to zero ("down") or up from zero ("up", with its cold start)."""
        attrs = self._attributes(endpoint, variant)
        self._scale_events.add(1, {**attrs, "direction": direction})
        if cold_start_s is not None:
            self._cold_start.record(cold_start_s, attrs)
        key = (endpoint, variant, direction)
        self.stats.scale_events[key] = self.stats.scale_events.get(key, 0) + 1

    def set_queue_depth(self, endpoint: str, depth: int | None) -> None:
        """The last queue depth read for ``endpoint``; None removes it (unknown or gone)."""
        if depth is None:
            self._queue_depth.pop(endpoint, None)
        else:
            self._queue_depth[endpoint] = depth

    def _observe_queue_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"mlbus.endpoint": e}) for e, n in self._queue_depth.items()]

    def set_ready_workers(self, counts: dict[tuple[str, str], int]) -> None:
        """Replace the ready-worker counts per (endpoint, variant)."""
        self._ready = dict(counts)

    def _observe_ready(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(n, {"mlbus.endpoint": e, "mlbus.variant": v})
            for (e, v), n in self._ready.items()
        ]
