"""The outbox relay: publishes what the registry's transactions queued, in order.

Every change writes its events to the outbox table in its own transaction; this task
reads unsent rows in id order, publishes them (:class:`~mlbus.registry.ports.OutboxPublisher`)
and marks them sent. A commit wakes it at once; otherwise it polls. When publishing fails
(broker down, topics gone) it drops the connection and retries with exponential backoff,
while the registry keeps serving and queuing; once the broker is back everything queued
is delivered, in order per key. A row published but not yet marked sent is published again
after a crash: delivery is at least once, and consumers dedupe by ``ce_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from opentelemetry import metrics

from mlbus.registry.domain.registry import utcnow
from mlbus.registry.ports import OutboxPublisher, OutboxStore

log = logging.getLogger(__name__)

_meter = metrics.get_meter("mlbus.registry.outbox")
_published = _meter.create_counter(
    "mlbus.registry.outbox.published", unit="{event}", description="Events relayed to Kafka."
)
_failures = _meter.create_counter(
    "mlbus.registry.outbox.failures",
    unit="{attempt}",
    description="Relay attempts that failed (the relay backs off and retries).",
)

PURGE_INTERVAL_S = 3600.0


class OutboxRelay:
    """Relays the outbox from a background task (:meth:`start` / :meth:`stop`)."""

    def __init__(
        self,
        store: OutboxStore,
        publisher: OutboxPublisher,
        *,
        batch_size: int = 200,
        poll_interval_s: float = 1.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        retention: timedelta | None = timedelta(days=7),
        drain_timeout_s: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._retention = retention
        self._drain_timeout_s = drain_timeout_s
        self._clock = clock
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_purge = 0.0
        #: Events published since start, and failed attempts (for tests and status).
        self.published = 0
        self.failures = 0

    def notify(self) -> None:
        """Something was committed: look at the outbox now instead of at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        """Start relaying in the background. Never waits for the broker."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="registry-outbox-relay")

    async def stop(self) -> None:
        """Publish what is pending for up to ``drain_timeout_s`` (if the broker answers),
        then stop and give up the relay's lead."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._drain_timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            await self._publisher.reset()
            with contextlib.suppress(Exception):
                await self._store.resign()

    async def _pause(self, seconds: float, *, wake_on_notify: bool) -> None:
        waiters = [asyncio.ensure_future(self._stop.wait())]
        if wake_on_notify:
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def _relay_batch(self) -> int:
        records = await self._store.pending(self._batch_size)
        if not records:
            return 0
        sent, error = await self._publisher.publish(records)
        if sent:
            await self._store.mark_sent(sent, self._clock())
            self.published += len(sent)
            _published.add(len(sent))
        if error is not None:
            raise error
        return len(records)

    async def _purge_if_due(self) -> None:
        if self._retention is None:
            return
        loop_time = asyncio.get_running_loop().time()
        if self._last_purge and loop_time - self._last_purge < PURGE_INTERVAL_S:
            return
        self._last_purge = loop_time
        purged = await self._store.purge_sent(self._clock() - self._retention)
        if purged:
            log.info("purged %d relayed events from the outbox", purged)

    async def _run(self) -> None:
        delay = self._backoff_initial_s
        failing = 0
        while True:
            # Cleared before reading, so a commit during this round triggers another one.
            self._wake.clear()
            try:
                if not await self._store.try_lead():
                    # Another registry relays this database.
                    if self._stop.is_set():
                        return
                    await self._pause(self._poll_interval_s, wake_on_notify=False)
                    continue
                count = await self._relay_batch()
                await self._purge_if_due()
            except Exception as exc:
                failing += 1
                self.failures += 1
                _failures.add(1)
                log.warning(
                    "outbox relay: publishing failed (%s: %s); retrying in %.1f s",
                    type(exc).__name__,
                    exc,
                    delay,
                    extra={"attempt": failing},
                )
                await self._publisher.reset()
                if self._stop.is_set():
                    return
                # Commits do not cut the backoff short: that would hammer a broker that is down.
                await self._pause(delay, wake_on_notify=False)
                delay = min(delay * 2, self._backoff_max_s)
                continue
            if failing:
                log.info("outbox relay: publishing again after %d failed attempts", failing)
                failing = 0
                delay = self._backoff_initial_s
            if count < self._batch_size:
                if self._stop.is_set():
                    return
                await self._pause(self._poll_interval_s, wake_on_notify=True)
