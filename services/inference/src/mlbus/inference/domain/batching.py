"""Dynamic batching: requests merged along their first dimension into one run, and split back.

Two requests can share a run when they carry the same inputs with the same datatypes and
the same dimensions after the first (:func:`batch_key`). The :class:`DynamicBatcher` keeps
a FIFO of such requests and one task that forms batches:

- it waits for a free run slot *before* forming a batch, so requests that arrive while
  every slot is busy accumulate and go together in the next run;
- a batch is the oldest waiting request plus the later compatible ones, in order, up to
  ``max_batch_size`` rows;
- it is dispatched at once when it is full or its row count is a preferred size; otherwise
  it waits until the oldest request has waited ``max_queue_delay`` (0: not at all) and then
  goes with what it has;
- the run itself (merge, session run, split, and the one-by-one fallback when a merged run
  fails) happens in an executor thread; a done-callback hands each caller its result.

Requests whose callers gave up (cancelled, deadline) are skipped when a batch is formed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from opentelemetry import context as otel_context

from mlbus.core.errors import Unavailable
from mlbus.inference.domain.tensors import Array

log = logging.getLogger(__name__)

Outputs = dict[str, Array]
#: Result of one request in a batch: its outputs, or the error it failed with.
Outcome = Outputs | BaseException


class BatchSplitError(ValueError):
    """A merged run's outputs cannot be split back: an output's first dimension is not the
    batch's row count (the model's first dimension is not a batch dimension after all)."""


def batch_rows(inputs: Mapping[str, Array]) -> int | None:
    """The first dimension all inputs share, or None (a scalar input, or differing rows)."""
    rows: int | None = None
    for array in inputs.values():
        if array.ndim == 0:
            return None
        if rows is None:
            rows = int(array.shape[0])
        elif array.shape[0] != rows:
            return None
    return rows


def batch_key(inputs: Mapping[str, Array]) -> Hashable:
    """What must be equal for two requests to be merged: per input, its name, dtype and
    dimensions after the first."""
    return tuple(
        sorted((name, array.dtype.str, tuple(array.shape[1:])) for name, array in inputs.items())
    )


def merge_inputs(parts: Sequence[Mapping[str, Array]]) -> dict[str, Array]:
    """Concatenate each input of ``parts`` along the first dimension (same keys required)."""
    if len(parts) == 1:
        return dict(parts[0])
    return {name: np.concatenate([part[name] for part in parts], axis=0) for name in parts[0]}


def split_outputs(outputs: Mapping[str, Array], rows: Sequence[int]) -> list[Outputs]:
    """Cut each output of a merged run back into per-request pieces of ``rows`` rows."""
    total = sum(rows)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise BatchSplitError(
                f"output {name!r} has shape {list(array.shape)} after a merged run of "
                f"{total} rows; expected its first dimension to be {total}"
            )
    pieces: list[Outputs] = []
    start = 0
    for count in rows:
        pieces.append({name: array[start : start + count] for name, array in outputs.items()})
        start += count
    return pieces


@dataclass(eq=False, slots=True)
class Pending:
    """A request waiting in the batcher."""

    inputs: dict[str, Array]
    outputs: tuple[str, ...]
    rows: int
    key: Hashable
    future: asyncio.Future[Outputs]
    enqueued: float
    """Event-loop time when it was submitted."""
    context: otel_context.Context = field(default_factory=otel_context.get_current)
    """Trace context of the caller (the batch's span links to it)."""


#: Runs a batch in an executor thread; returns one outcome per request, in order.
RunBatch = Callable[[Sequence[Pending]], list[Outcome]]
#: Called on the loop when a batch is dispatched (batch, loop time) — for metrics.
OnDispatch = Callable[[Sequence[Pending], float], None]


class DynamicBatcher:
    """Merges concurrent compatible requests into batches for ``run_batch`` (see module doc).

    One task per batcher; no task per request: callers await the future :meth:`submit`
    returns.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        executor: concurrent.futures.Executor,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        preferred_batch_sizes: Sequence[int] = (),
        max_concurrent_runs: int = 1,
        on_dispatch: OnDispatch | None = None,
    ) -> None:
        if max_batch_size < 2:
            raise ValueError(f"max_batch_size: expected at least 2, got {max_batch_size}")
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max(0.0, max_queue_delay_s)
        self.preferred = frozenset(preferred_batch_sizes)
        self._slots = asyncio.Semaphore(max_concurrent_runs)
        self._on_dispatch = on_dispatch
        self._pending: deque[Pending] = deque()
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._running = 0  # batches dispatched and not finished

    @property
    def waiting(self) -> int:
        """Requests queued and not yet dispatched."""
        return len(self._pending)

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running."""
        return not self._pending and self._running == 0

    def start(self) -> None:
        """Start the batching task (on the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._form_and_dispatch(), name="inference-batcher"
            )

    async def stop(self) -> None:
        """Stop forming batches; requests still queued fail with UNAVAILABLE. Batches already
        running finish (the executor's owner waits for them)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(Unavailable("the worker is stopping"))

    def submit(
        self, inputs: dict[str, Array], outputs: tuple[str, ...], rows: int
    ) -> asyncio.Future[Outputs]:
        """Queue a request of ``rows`` rows (1..max_batch_size); await the returned future
        for its outputs. Cancelling the awaiting task withdraws the request."""
        if self._closed or self._task is None:
            raise Unavailable("the batcher is not running")
        if not 0 < rows <= self.max_batch_size:
            raise ValueError(f"rows: expected 1..{self.max_batch_size}, got {rows}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._pending.append(Pending(inputs, outputs, rows, batch_key(inputs), future, loop.time()))
        self._arrived.set()
        return future

    # --- the batching task ----------------------------------------------------------

    async def _form_and_dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            self._dispatch(batch)

    def _collect(self) -> tuple[list[Pending], int, bool]:
        """The batch the oldest live request heads now: (items, rows, full)."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()  # its caller gave up
        first = self._pending[0]
        items: list[Pending] = []
        rows = 0
        for item in self._pending:
            if item.key != first.key or item.future.done():
                continue
            if rows + item.rows > self.max_batch_size:
                return items, rows, True
            items.append(item)
            rows += item.rows
        return items, rows, rows >= self.max_batch_size

    async def _next_batch(self) -> list[Pending]:
        loop = asyncio.get_running_loop()
        while True:
            while self._pending and self._pending[0].future.done():
                self._pending.popleft()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            items, rows, full = self._collect()
            deadline = self._pending[0].enqueued + self.max_queue_delay_s
            if full or rows in self.preferred or loop.time() >= deadline:
                taken = set(map(id, items))
                self._pending = deque(p for p in self._pending if id(p) not in taken)
                return items
            # Wait for another request or the oldest one's deadline, whichever comes first.
            self._arrived.clear()
            timer = loop.call_at(deadline, self._arrived.set)
            try:
                await self._arrived.wait()
            finally:
                timer.cancel()

    def _dispatch(self, batch: list[Pending]) -> None:
        loop = asyncio.get_running_loop()
        if self._on_dispatch is not None:
            self._on_dispatch(batch, loop.time())
        try:
            running = asyncio.wrap_future(self._executor.submit(self._run_batch, batch), loop=loop)
        except RuntimeError as exc:  # executor shut down
            self._slots.release()
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Unavailable(f"the worker is stopping: {exc}"))
            return
        self._running += 1
        running.add_done_callback(functools.partial(self._finish, batch))

    def _finish(self, batch: list[Pending], running: asyncio.Future[list[Outcome]]) -> None:
        self._running -= 1
        self._slots.release()
        outcomes: Sequence[Any]
        if running.cancelled():
            outcomes = [Unavailable("the batch was cancelled")] * len(batch)
        elif running.exception() is not None:
            error = running.exception()
            log.error("batch run failed unexpectedly", exc_info=error)
            outcomes = [error] * len(batch)
        else:
            outcomes = running.result()
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.future.done():
                continue
            if isinstance(outcome, BaseException):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
