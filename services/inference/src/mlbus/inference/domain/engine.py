"""Runs a loaded model for requests: in executor threads, batched when the model allows it.

The event loop never runs the model itself. Session runs go to a thread pool of
``max_concurrent_runs`` threads; with dynamic batching on (``max_batch_size > 1`` and a
model whose inputs and outputs all have an open first dimension) requests go through a
:class:`~mlbus.inference.domain.batching.DynamicBatcher` first. A request that cannot be
merged (a scalar input, inputs with differing first dimensions, more rows than
``max_batch_size``) runs on its own. If a merged run fails, its requests are run one by
one so that only the faulty one fails; if a merged run's outputs cannot be split back
(the model's first dimension is not a batch dimension), batching is turned off for good.
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
    ) -> None:
        self.runner = runner
        self.metrics = metrics
        self.max_batch_size = max_batch_size
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

    async def infer(self, inputs: dict[str, Array], outputs: tuple[str, ...]) -> Outputs:
        """Compute ``outputs`` for validated ``inputs``; raises the model's errors."""
        if self._batcher is not None and not self._split_failed.is_set():
            rows = batch_rows(inputs)
            if rows is not None and 0 < rows <= self.max_batch_size:
                return await self._batcher.submit(inputs, outputs, rows)
        loop = asyncio.get_running_loop()
        ctx = otel_context.get_current()
        try:
            return await loop.run_in_executor(self._executor, self._run_one, inputs, outputs, ctx)
        finally:
            self.metrics.session_run(batch_rows(inputs) or 1, 1)

    # --- executor threads ------------------------------------------------------------

    def _run_one(
        self, inputs: Mapping[str, Array], outputs: Sequence[str], ctx: otel_context.Context
    ) -> Outputs:
        with _tracer.start_as_current_span(
            SPAN_NAME,
            context=ctx,
            attributes={"mlbus.batch.requests": 1, "mlbus.batch.rows": batch_rows(inputs) or 1},
        ):
            return self.runner.run(inputs, outputs)

    def _run_batch(self, batch: Sequence[Pending]) -> list[Outcome]:
        if len(batch) == 1:
            item = batch[0]
            try:
                return [self._run_one(item.inputs, item.outputs, item.context)]
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
                pieces = split_outputs(self.runner.run(merged, self._all_outputs), rows)
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
                outcomes.append(self._run_one(item.inputs, item.outputs, item.context))
            except Exception as exc:
                outcomes.append(exc)
        # Counted here (from a thread): the merged attempt was counted at dispatch.
        self.metrics.batch_fallback([item.rows for item in batch])
        return outcomes

    # --- loop callbacks --------------------------------------------------------------

    def _on_dispatch(self, batch: Sequence[Pending], now: float) -> None:
        for item in batch:
            self.metrics.queue_delay(now - item.enqueued)
        self.metrics.session_run(sum(item.rows for item in batch), len(batch))
        self.metrics.batch_dispatched(len(batch))
