"""The trainer on the bus: job requests in (consumer group), status events out (relayed from
the outbox), and SubmitJob's copy of each request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError

from mlbus.core.errors import InvalidArgument
from mlbus.core.messaging import Event, EventProducer, RetryableError, TopicCatalogue
from mlbus.trainer.adapters.database import OutboxEvent, SqlJobStore
from mlbus.trainer.api import converters as conv
from mlbus.trainer.domain.models import Job, StatusChange, utcnow
from mlbus.trainer.domain.service import TrainerService
from mlbus.trainer.v1 import events_pb2 as ev

log = logging.getLogger(__name__)


class InvalidJobRequest(Exception):
    """A job request that can never become a job (it goes to the DLQ with this reason)."""


def make_event(job: Job) -> tuple[str, bytes]:
    """The JobStatusChanged event of a job as it is now: (event id, payload)."""
    change = StatusChange.of(job, utcnow())
    return str(uuid.uuid4()), conv.status_changed(change).SerializeToString()


class KafkaRequestPublisher:
    """Publishes SubmitJob's jobs on the job-requested topic (keyed by job id)."""

    def __init__(self, producer: EventProducer, catalogue: TopicCatalogue) -> None:
        self.producer = producer
        self.catalogue = catalogue

    async def publish_request(self, job: Job) -> None:
        """Publish the job's JobRequested; its event id is derived from the job id."""
        await self.producer.publish(
            self.catalogue.job_requested,
            conv.job_requested(job),
            key=job.job_id,
            event_id=f"{job.job_id}/requested",
        )


class JobRequestHandler:
    """Turns job requests from the topic into jobs (the same ones SubmitJob makes)."""

    def __init__(self, service: TrainerService) -> None:
        self.service = service

    async def __call__(self, event: Event[Any]) -> None:
        message: ev.JobRequested = event.message
        try:
            submission = conv.submission(
                message.job_id or (event.key or ""),
                message.kind,
                message.experiment,
                message.spec,
                message.actor.name,
            )
            self.service.check(submission, need_id=True)
        except InvalidArgument as exc:
            raise InvalidJobRequest(f"malformed job request: {exc.message}") from exc
        try:
            await self.service.accept(submission)
        except (DBAPIError, OSError) as exc:
            raise RetryableError(f"jobs database unavailable: {exc}") from exc


class OutboxRelay:
    """Publishes this replica's status events from the outbox, in order, at least once
    (each with its outbox event id as ``ce_id``, so consumers can drop duplicates).

    Events another writer left unsent for ``adopt_after`` are published too: a replica
    that went away for good (a pod replaced under a new name, a host retired) would
    otherwise leave its last events — a job's COMPLETED among them — unsent for ever. A
    replica that is only slow to publish may then see some of its events published twice,
    which the ``ce_id`` makes harmless."""

    def __init__(
        self,
        store: SqlJobStore,
        producer: EventProducer,
        catalogue: TopicCatalogue,
        *,
        poll_interval_s: float = 0.2,
        batch_size: int = 200,
        retention: timedelta = timedelta(days=7),
        adopt_after: timedelta = timedelta(minutes=1),
        stop_timeout_s: float = 5.0,
    ) -> None:
        self.store = store
        self.producer = producer
        self.catalogue = catalogue
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.retention = retention
        self.adopt_after = adopt_after
        self.stop_timeout_s = stop_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    def notify(self) -> None:
        """Publish now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Relay in the background."""
        self._task = asyncio.create_task(self._loop(), name="mlbus-trainer-relay")

    async def stop(self) -> None:
        """Publish what is pending (for up to ``stop_timeout_s``), then stop.

        The loop is asked to end, not cancelled: a cancelled batch may have been published
        without being marked sent (it would all go again at the next start)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_timeout_s)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except Exception:
                log.exception("the status-event relay failed")
        try:
            left = await self.store.pending_events([self.store.writer_id], 1)
        except Exception as exc:
            log.warning("cannot tell whether status events are left unsent: %s", exc)
            return
        if left:
            log.warning(
                "status events are left unsent at stop; this replica publishes them when it "
                "starts again, any other after %.0fs",
                self.adopt_after.total_seconds(),
            )

    async def relay_once(self) -> int:
        """Publish one batch; how many were published."""
        events = await self.store.pending_events(
            [self.store.writer_id],
            self.batch_size,
            stale_before=datetime.now(UTC) - self.adopt_after,
        )
        sent: list[int] = []
        # One job's events go one after another, in order; different jobs' at once (each
        # publish waits for its acknowledgement: one at a time, a batch of 200 took seconds).
        by_job: dict[str, list[OutboxEvent]] = {}
        for item in events:
            by_job.setdefault(item.job_id, []).append(item)

        async def publish_in_order(items: list[OutboxEvent]) -> None:
            for item in items:
                await self.producer.publish(
                    self.catalogue.job_status_changed,
                    ev.JobStatusChanged.FromString(item.payload),
                    key=item.job_id,
                    event_id=item.event_id,
                )
                sent.append(item.id)

        try:
            results = await asyncio.gather(
                *(publish_in_order(items) for items in by_job.values()), return_exceptions=True
            )
        finally:
            await self.store.mark_sent(sent)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
        return len(sent)

    async def _loop(self) -> None:
        backoff = self.poll_interval_s
        rounds = 0
        while True:
            self._wake.clear()  # before the batch: a notify() meanwhile means "go again"
            try:
                count = await self.relay_once()
                backoff = self.poll_interval_s
                rounds += 1
                if rounds % 3000 == 0:
                    await self.store.purge_sent(self.retention)
                if count == self.batch_size:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("relaying status events failed: %s", exc)
                backoff = min(backoff * 2, 10.0)
            if self._stopping:
                return  # everything pending went (or could not go: logged by stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=backoff)
