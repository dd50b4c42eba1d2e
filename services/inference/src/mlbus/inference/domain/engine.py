"""Runs a loaded model for requests: in executor threads, batched when the model allows it,
or on the event loop itself when a run is cheaper than handing it to a thread.

Session runs go to a thread pool of ``max_concurrent_runs`` threads; with dynamic batching
on (``max_batch_size > 1`` and a model whose inputs and outputs all have an open first
dimension) requests go through a :class:`~mlbus.inference.domain.batching.DynamicBatcher`
first. A request that cannot be merged (a scalar input, inputs with differing first
dimensions, more rows than ``max_batch_size``) runs on its own. If a merged run fails, its
requests are run one by one so that only the faulty one fails; if a merged run's outputs
cannot be split back (the model's first dimension is not a batch dimension), batching is
turned off for good.

Inline runs: handing a run to a thread and back costs tens of microseconds of event-loop
work plus two GIL hand-overs, far more than a small model's run (~10 µs for a small MLP).
So every run is timed (:class:`RunCost`, seeded by the warm-up), and a request whose
estimated run time is at most ``inline_run_max_us`` runs on the loop, synchronously, when
nothing else is running or queued (with batching on, only when ``max_queue_delay_us`` is 0:
a request that would wait for others is never run inline). A request would run alone at
that moment anyway; inline it just skips the hand-off. Until a run has been timed, runs go
to the threads; a request estimated at up to 4× the limit still runs inline now and then
(one in 8), so that the estimate follows the model's real inline cost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link

from mlbus.inference.domain.batching import (
    BatchSplitError,
    DynamicBatcher,
    Outcome,
    Outputs,
    Pending,
    batch_rows,
    merge_inputs,
    split_outputs,
)
from mlbus.inference.domain.tensors import Array
from mlbus.inference.metrics import InferenceMetrics
from mlbus.inference.ports import ModelRunner

log = logging.getLogger(__name__)

SPAN_NAME: Final = "onnxruntime run"
_tracer = trace.get_tracer("mlbus.inference")


class RunCost:
    """Running estimates of how long a session run takes, from the runs timed so far.

    Two exponentially weighted averages: of runs made inline (wall time: what they cost the
    loop) and of runs made in threads (that thread's CPU time, which waiting for the GIL
    does not inflate). A run timed inline can only look slower than it is (another thread
    held the GIL when it wanted it back, the machine was busy), so that average follows a
    faster run quickly and a slower one slowly. A thread run usually looks slower than the
    same run inline (it starts on a cold cache: ~27 µs in a thread for a run of ~9 µs
    inline, for a small MLP here). The estimate is the lower of the two. Requests with more
    rows than usual are assumed to cost proportionally more; fewer rows are never assumed
    cheaper than a usual run.
    """

    __slots__ = ("inline", "rows", "threaded")

    #: Weight of the newest timing: thread runs; inline runs faster / slower than usual.
    ALPHA = 0.25
    ALPHA_DOWN = 0.5
    ALPHA_UP = 0.1

    def __init__(self) -> None:
        self.inline: float | None = None
        """Estimated seconds of a usual run made inline; None until one was."""
        self.threaded: float | None = None
        """Estimated seconds of a usual run made in a thread (or in the warm-up)."""
        self.rows = 1.0
        """Rows of a usual run (weighted average)."""

    def observe(self, seconds: float, rows: int, *, inline: bool) -> None:
        """A run of ``rows`` rows took ``seconds`` (called from the loop and from threads;
        a lost update under a race only delays the estimate)."""
        if inline:
            current = self.inline
            if current is None:
                self.inline = seconds
            else:
                alpha = self.ALPHA_DOWN if seconds < current else self.ALPHA_UP
                self.inline = current + alpha * (seconds - current)
        else:
            current = self.threaded
            self.threaded = (
                seconds if current is None else current + self.ALPHA * (seconds - current)
            )
        self.rows += self.ALPHA * (rows - self.rows)

    def estimate(self, rows: int) -> float:
        """Expected seconds of an inline run over ``rows`` rows (infinite before the first
        timing)."""
        inline, threaded = self.inline, self.threaded
        if inline is None:
            if threaded is None:
                return math.inf
            seconds = threaded
        else:
            seconds = inline if threaded is None or inline < threaded else threaded
        return seconds * max(1.0, rows / self.rows)


class InferenceEngine:
    """Executes inferences of one model; see the module docstring for the policy."""

    def __init__(
        self,
        runner: ModelRunner,
        metrics: InferenceMetrics,
        *,
        max_batch_size: int = 1,
        max_queue_delay_us: int = 0,
        preferred_batch_sizes: Sequence[int] = (),
        max_concurrent_runs: int = 1,
        inline_run_max_us: int = 0,
        warm_run_s: float | None = None,
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        #: Estimated cost of a session run (decides inline runs).
        self.cost = RunCost()
        if warm_run_s is not None:
            self.cost.observe(warm_run_s, 1, inline=False)
        self._inline_max_s = inline_run_max_us / 1e6
        self._probe_in = self.PROBE_EVERY
        # With a queue delay, a request waits for others on purpose: never inline then.
        self._inline_with_batcher = max_queue_delay_us == 0
        self._threaded = 0  # unbatched runs handed to the executor and not finished
        self._executor = ThreadPoolExecutor(
            max_workers=max_concurrent_runs, thread_name_prefix="onnxruntime"
        )
        self._all_outputs = runner.signature.output_names
        self._split_failed = threading.Event()
        self._batcher: DynamicBatcher | None = None
        if max_batch_size > 1 and runner.signature.batchable:
            self._batcher = DynamicBatcher(
                self._run_batch,
                self._executor,
                max_batch_size=max_batch_size,
                max_queue_delay_s=max_queue_delay_us / 1e6,
                preferred_batch_sizes=preferred_batch_sizes,
                max_concurrent_runs=max_concurrent_runs,
                on_dispatch=self._on_dispatch,
            )
        elif max_batch_size > 1:
            log.info(
                "dynamic batching off: the model's inputs and outputs do not all have an "
                "open first dimension",
                extra={"max_batch_size": max_batch_size},
            )

    @property
    def batching(self) -> bool:
        """True while requests go through the dynamic batcher."""
        return self._batcher is not None and not self._split_failed.is_set()

    def start(self) -> None:
        """Start the batcher task (on the running loop)."""
        if self._batcher is not None:
            self._batcher.start()

    async def stop(self) -> None:
        """Fail queued requests, then wait for running session runs to finish."""
        if self._batcher is not None:
            await self._batcher.stop()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    #: One request in this many that could run inline but is estimated at up to
    #: PROBE_FACTOR × the limit runs inline anyway, so an estimate pushed up by a busy
    #: moment (or by thread timings) can come back down.
    PROBE_EVERY: Final = 8
    PROBE_FACTOR: Final = 4

    def _may_run_inline(self, rows: int) -> bool:
        if self._threaded:
            return False
        batcher = self._batcher
        batching = batcher is not None and not self._split_failed.is_set()
        if batching and not (self._inline_with_batcher and batcher is not None and batcher.idle):
            return False
        estimate = self.cost.estimate(rows)
        if estimate <= self._inline_max_s:
            return True
        if estimate <= self.PROBE_FACTOR * self._inline_max_s:
            self._probe_in -= 1
            if self._probe_in <= 0:
                self._probe_in = self.PROBE_EVERY
                return True
        return False

    async def infer(self, inputs: dict[str, Array], outputs: tuple[str, ...]) -> Outputs:
        """Compute ``outputs`` for validated ``inputs``; raises the model's errors."""
        rows = batch_rows(inputs)
        count = rows or 1
        if self._inline_max_s > 0 and self._may_run_inline(count):
            self.metrics.session_run(count, inline=True)
            return self._run_one(inputs, outputs, None, count, inline=True)
        if rows is not None and 0 < rows <= self.max_batch_size:
            batcher = self._batcher
            if batcher is not None and not self._split_failed.is_set():
                return await batcher.submit(inputs, outputs, rows)
        loop = asyncio.get_running_loop()
        ctx = otel_context.get_current()
        self._threaded += 1
        try:
            return await loop.run_in_executor(
                self._executor, self._run_one, inputs, outputs, ctx, count
            )
        finally:
            self._threaded -= 1
            self.metrics.session_run(count)

    # --- session runs (executor threads, or the loop for inline runs) ----------------

    def _timed_run(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], rows: int, *, inline: bool
    ) -> Outputs:
        # Inline, the wall time is what the run cost the loop. In an executor thread, the
        # wall time would include waiting for the GIL after the run (up to the 5 ms switch
        # interval while the loop is busy), which says nothing about the run; the thread's
        # CPU time does not (ONNX Runtime's intra-op threads share the work with the calling
        # thread, so it still tracks the run's duration).
        clock = time.perf_counter if inline else time.thread_time
        started = clock()
        try:
            return self.runner.run(inputs, outputs)
        finally:
            self.cost.observe(clock() - started, rows, inline=inline)

    def _run_one(
        self,
        inputs: Mapping[str, Array],
        outputs: Sequence[str],
        ctx: otel_context.Context | None,
        rows: int,
        *,
        inline: bool = False,
    ) -> Outputs:
        # The run's span is only worth its cost (tens of µs) when it is recorded: its parent
        # (the request's server span) is, or there is none and the sampler may pick it.
        parent = trace.get_current_span(ctx)
        if parent.get_span_context().is_valid and not parent.is_recording():
            return self._timed_run(inputs, outputs, rows, inline=inline)
        with _tracer.start_as_current_span(
            SPAN_NAME,
            context=ctx,
            attributes={"mlbus.batch.requests": 1, "mlbus.batch.rows": rows},
        ):
            return self._timed_run(inputs, outputs, rows, inline=inline)

    def _run_batch(self, batch: Sequence[Pending]) -> list[Outcome]:
        if len(batch) == 1:
            item = batch[0]
            try:
                return [self._run_one(item.inputs, item.outputs, item.context, item.rows)]
            except Exception as exc:
                return [exc]
        rows = [item.rows for item in batch]
        links = [
            Link(span.get_span_context())
            for span in (trace.get_current_span(item.context) for item in batch)
            if span.get_span_context().is_valid
        ]
        with _tracer.start_as_current_span(
            SPAN_NAME,
            context=batch[0].context,
            links=links,
            attributes={"mlbus.batch.requests": len(batch), "mlbus.batch.rows": sum(rows)},
        ) as span:
            try:
                merged = merge_inputs([item.inputs for item in batch])
                total = sum(rows)
                merged_outputs = self._timed_run(merged, self._all_outputs, total, inline=False)
                pieces = split_outputs(merged_outputs, rows)
            except Exception as exc:
                span.record_exception(exc)
                if isinstance(exc, BatchSplitError) and not self._split_failed.is_set():
                    self._split_failed.set()
                    log.error("dynamic batching turned off: %s", exc)
                else:
                    log.warning(
                        "merged run of %d requests failed (%s); running them one by one",
                        len(batch),
                        exc,
                    )
                return self._run_each(batch)
        return [
            {name: piece[name] for name in item.outputs}
            for item, piece in zip(batch, pieces, strict=True)
        ]

    def _run_each(self, batch: Sequence[Pending]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for item in batch:
            try:
                outcomes.append(self._run_one(item.inputs, item.outputs, item.context, item.rows))
            except Exception as exc:
                outcomes.append(exc)
        # Counted here (from a thread): the merged attempt was counted at dispatch.
        self.metrics.batch_fallback([item.rows for item in batch])
        return outcomes

    # --- loop callbacks --------------------------------------------------------------

    def _on_dispatch(self, batch: Sequence[Pending], now: float) -> None:
        for item in batch:
            self.metrics.queue_delay(now - item.enqueued)
        self.metrics.batch_dispatched(sum(item.rows for item in batch), len(batch))
