"""The worker's OpenTelemetry instruments, and plain counters tests and logs can read.

Instruments come from the global meter provider (``setup_telemetry`` installs it in
``main()``); without one they cost next to nothing. Every data point carries the endpoint
and variant, so one Prometheus query covers all workers of a variant.

A synchronous measurement costs the SDK several microseconds, a noticeable share of a small
model's whole request, so the hot path makes one per request (its duration). Session runs
and their rows are plain counters read when metrics are collected (observable counters);
histograms of rows and requests per run, and of queue delays, are recorded for runs the
dynamic batcher forms, where a run is worth several requests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

INSTRUMENTATION: Final = "mlbus.inference"

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
_ROWS_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass
class WorkerStats:
    """Running totals since start (read by tests and the shutdown log line)."""

    requests: int = 0
    session_runs: int = 0
    inline_runs: int = 0
    """Session runs made on the event loop (the others ran in executor threads)."""
    session_rows: int = 0
    batched_runs: int = 0
    batch_fallbacks: int = 0
    captured: int = 0
    capture_dropped: int = 0


class InferenceMetrics:
    """Request, batching and capture instruments of one worker."""

    def __init__(
        self, endpoint: str, variant: str, *, meter_provider: metrics.MeterProvider | None = None
    ) -> None:
        meter = metrics.get_meter(INSTRUMENTATION, meter_provider=meter_provider)
        self.base: dict[str, str] = {"mlbus.endpoint": endpoint, "mlbus.variant": variant}
        self.stats = WorkerStats()
        # Run counts are updated from the loop and from executor threads (fallbacks).
        self._lock = threading.Lock()
        # The duration histogram's count is the request count (by status): no separate
        # counter, so a request costs one measurement.
        self._duration = meter.create_histogram(
            "mlbus.inference.request.duration",
            unit="s",
            description="ModelInfer time from receipt to response, by gRPC status "
            "(its count is the request count).",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._status_attributes: dict[str, dict[str, str]] = {}
        self._run_attributes = {
            "inline": {**self.base, "mlbus.inference.run": "inline"},
            "thread": {**self.base, "mlbus.inference.run": "thread"},
        }
        meter.create_observable_counter(
            "mlbus.inference.session.runs",
            callbacks=[self._observe_runs],
            unit="{run}",
            description="ONNX Runtime session runs, by where they ran (mlbus.inference.run: "
            "inline on the event loop, or in a thread).",
        )
        meter.create_observable_counter(
            "mlbus.inference.session.rows",
            callbacks=[self._observe_rows],
            unit="{row}",
            description="Rows computed by ONNX Runtime session runs (÷ runs: rows per run).",
        )
        self._batch_rows = meter.create_histogram(
            "mlbus.inference.batch.size",
            unit="{row}",
            description="Rows per session run the dynamic batcher dispatched (its count is "
            "the number of such runs).",
            explicit_bucket_boundaries_advisory=_ROWS_BUCKETS,
        )
        self._batch_requests = meter.create_histogram(
            "mlbus.inference.batch.requests",
            unit="{request}",
            description="Requests merged into one session run by the dynamic batcher.",
            explicit_bucket_boundaries_advisory=_ROWS_BUCKETS,
        )
        self._queue_delay = meter.create_histogram(
            "mlbus.inference.queue.delay",
            unit="s",
            description="Time a request waited in the batcher before its batch was dispatched.",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._captured = meter.create_counter(
            "mlbus.inference.capture.published",
            unit="{record}",
            description="Captured request/response records acknowledged by the bus.",
        )
        self._dropped = meter.create_counter(
            "mlbus.inference.capture.dropped",
            unit="{record}",
            description="Sampled records not captured, by reason (queue_full, too_large, "
            "publish_failed, stopping).",
        )

    def request_done(self, status: str, seconds: float) -> None:
        """One ModelInfer call ended with ``status`` (a gRPC status name)."""
        attributes = self._status_attributes.get(status)
        if attributes is None:
            attributes = self._status_attributes[status] = {**self.base, "rpc.grpc.status": status}
        self.stats.requests += 1
        self._duration.record(seconds, attributes)

    def session_run(self, rows: int, *, inline: bool = False) -> None:
        """One session run of a single request's ``rows`` rows (called on the loop)."""
        stats = self.stats
        with self._lock:
            stats.session_runs += 1
            stats.session_rows += rows
            if inline:
                stats.inline_runs += 1

    def batch_dispatched(self, rows: int, requests: int) -> None:
        """The dynamic batcher dispatched ``requests`` requests of ``rows`` rows in all as one
        run (> 1 request: merged)."""
        stats = self.stats
        with self._lock:
            stats.session_runs += 1
            stats.session_rows += rows
            if requests > 1:
                stats.batched_runs += 1
        self._batch_rows.record(rows, self.base)
        self._batch_requests.record(requests, self.base)

    def batch_fallback(self, rows: Sequence[int]) -> None:
        """A merged run failed and its requests (of ``rows`` rows each) were run one by one."""
        stats = self.stats
        with self._lock:
            stats.batch_fallbacks += 1
            stats.session_runs += len(rows)
            stats.session_rows += sum(rows)

    def _observe_runs(self, options: CallbackOptions) -> Iterable[Observation]:
        stats = self.stats
        inline = stats.inline_runs
        return [
            Observation(inline, self._run_attributes["inline"]),
            Observation(stats.session_runs - inline, self._run_attributes["thread"]),
        ]

    def _observe_rows(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.stats.session_rows, self.base)]

    def queue_delay(self, seconds: float) -> None:
        """A request waited ``seconds`` in the batcher."""
        self._queue_delay.record(seconds, self.base)

    def capture_published(self, count: int) -> None:
        """``count`` captured records were acknowledged."""
        self.stats.captured += count
        self._captured.add(count, self.base)

    def capture_dropped(self, reason: str, count: int = 1) -> None:
        """``count`` sampled records were dropped for ``reason``."""
        self.stats.capture_dropped += count
        self._dropped.add(count, {**self.base, "reason": reason})
