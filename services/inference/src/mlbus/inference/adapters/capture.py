"""Data capture: a sampled share of request/response pairs to the capture topic, off the
response path.

``offer`` is synchronous and cheap: it samples, then puts a reference to the two messages
on a bounded in-memory queue, or counts a drop when the queue is full. One background task
serialises the records and publishes them, up to ``PUBLISH_BATCH`` at a time, each under
the trace context of its request. A slow or unreachable bus therefore fills the queue and
makes captures drop (counted in ``mlbus.inference.capture.dropped``); it never delays an
inference.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Final

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import context as otel_context

from mlbus.core.messaging import EventProducer, Topic
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.v1.events_pb2 import InferenceCaptured
from mlbus.inference.v2 import grpc_service_pb2 as pb

log = logging.getLogger(__name__)

#: Most records published concurrently by the capture task (the producer batches them).
PUBLISH_BATCH: Final = 64
#: Least interval between two warnings about failed publishes.
_WARN_INTERVAL_S: Final = 30.0


@dataclass(slots=True)
class _Capture:
    request: pb.ModelInferRequest
    response: pb.ModelInferResponse
    inference_id: str
    received: float
    """Wall-clock time the request was received (seconds since the epoch)."""
    latency_s: float
    context: otel_context.Context = field(default_factory=otel_context.get_current)


@dataclass(frozen=True, slots=True)
class CaptureIdentity:
    """What every captured record says about the worker that served it."""

    endpoint: str
    variant: str
    model_group: str
    model_version: int
    shadow: bool


class CapturePublisher:
    """Samples inferences and publishes them as ``InferenceCaptured`` (see module doc)."""

    def __init__(
        self,
        producer: EventProducer,
        topic: Topic[InferenceCaptured],
        metrics: InferenceMetrics,
        identity: CaptureIdentity,
        *,
        percent: float,
        queue_size: int,
        max_payload_bytes: int,
        stop_timeout_s: float = 5.0,
        rng: random.Random | None = None,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._identity = identity
        self.percent = percent
        self._max_payload = max_payload_bytes
        self._stop_timeout_s = stop_timeout_s
        self._rng = rng or random.Random()
        self._queue: asyncio.Queue[_Capture] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0
        #: Records of the batch being published that the bus acknowledged so far.
        self._acked = 0

    @property
    def enabled(self) -> bool:
        """True when any share of the traffic is captured."""
        return self.percent > 0

    @property
    def backlog(self) -> int:
        """Records waiting to be published."""
        return self._queue.qsize()

    async def drained(self) -> None:
        """Return once every record offered so far is published or dropped."""
        await self._queue.join()

    def offer(
        self,
        request: pb.ModelInferRequest,
        response: pb.ModelInferResponse,
        *,
        inference_id: str,
        received: float,
        latency_s: float,
    ) -> None:
        """Capture this inference if it is sampled; never blocks, never raises."""
        if self.percent <= 0 or (self.percent < 100 and self._rng.random() * 100 >= self.percent):
            return
        if self._task is None:
            self._metrics.capture_dropped("stopping")
            return
        # Checked here, not when publishing, so the queue's memory stays bounded by
        # queue size × max payload.
        if request.ByteSize() + response.ByteSize() > self._max_payload:
            self._metrics.capture_dropped("too_large")
            return
        try:
            self._queue.put_nowait(_Capture(request, response, inference_id, received, latency_s))
        except asyncio.QueueFull:
            self._metrics.capture_dropped("queue_full")

    async def start(self) -> None:
        """Start the publishing task (only when capture is enabled)."""
        if self.enabled and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._publish_forever(), name="inference-capture"
            )

    async def stop(self) -> None:
        """Publish what is queued for up to ``stop_timeout_s``, then drop the rest (counted)."""
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), self._stop_timeout_s)
        except TimeoutError:
            log.warning(
                "capture: %d record(s) still queued at shutdown are dropped", self._queue.qsize()
            )
        task.cancel()
        await asyncio.wait([task])
        left = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            self._queue.task_done()
            left += 1
        if left:
            self._metrics.capture_dropped("stopping", left)

    # --- the publishing task ---------------------------------------------------------

    async def _publish_forever(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < PUBLISH_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._acked = 0
            try:
                await self._publish(batch)
            except asyncio.CancelledError:
                # Stopped mid-batch (the drain timed out): what was not acknowledged counts
                # as dropped at stop, like what was still queued.
                if len(batch) > self._acked:
                    self._metrics.capture_dropped("stopping", len(batch) - self._acked)
                raise
            except Exception:
                log.exception("capture: publishing a batch failed")
                self._metrics.capture_dropped("publish_failed", len(batch) - self._acked)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _publish(self, batch: list[_Capture]) -> None:
        records = [(self._record(item), item) for item in batch]
        results = await asyncio.gather(
            *(self._publish_one(record, item) for record, item in records), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            self._metrics.capture_dropped("publish_failed", len(failures))
            now = time.monotonic()
            if now - self._last_warning >= _WARN_INTERVAL_S:
                self._last_warning = now
                log.warning(
                    "capture: %d record(s) could not be published: %s",
                    len(failures),
                    failures[0],
                )

    async def _publish_one(self, record: InferenceCaptured, item: _Capture) -> None:
        token = otel_context.attach(item.context)
        try:
            # The event id is the capture's own: inference ids come from clients, which
            # reuse them (a mirrored request's production and shadow copies share one), and
            # consumers drop records whose event id they have seen.
            await self._producer.publish(
                self._topic, record, key=item.inference_id, event_id=uuid.uuid4().hex
            )
            self._acked += 1
            self._metrics.capture_published(1)
        finally:
            otel_context.detach(token)

    def _record(self, item: _Capture) -> InferenceCaptured:
        identity = self._identity
        record = InferenceCaptured(
            inference_id=item.inference_id,
            endpoint=identity.endpoint,
            variant=identity.variant,
            model_group=identity.model_group,
            model_version=identity.model_version,
            request=item.request.SerializeToString(),
            response=item.response.SerializeToString(),
            shadow=identity.shadow,
        )
        record.latency.CopyFrom(_duration(item.latency_s))
        stamp = Timestamp()
        stamp.FromNanoseconds(int(item.received * 1e9))
        record.request_time.CopyFrom(stamp)
        return record


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration
