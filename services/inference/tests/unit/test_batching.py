"""Batch merge/split and the DynamicBatcher's policy, with a fake model (pure domain)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mlbus.core.errors import InvalidArgument, Unavailable
from mlbus.inference.domain.batching import (
    BatchSplitError,
    batch_key,
    batch_rows,
    merge_inputs,
    split_outputs,
)
from mlbus.inference.domain.datatypes import from_name
from mlbus.inference.domain.engine import InferenceEngine
from mlbus.inference.domain.errors import InputRejected
from mlbus.inference.domain.signature import ModelSignature, TensorSpec
from mlbus.inference.domain.tensors import Array
from mlbus.inference.metrics import InferenceMetrics


def test_rows_and_keys() -> None:
    a = {"x": np.zeros((3, 4), np.float32), "s": np.empty((3,), object)}
    assert batch_rows(a) == 3
    assert batch_rows({"x": np.zeros((3, 4)), "y": np.zeros((2, 4))}) is None
    assert batch_rows({"x": np.zeros(())}) is None
    same = {"s": np.empty((5,), object), "x": np.zeros((5, 4), np.float32)}
    assert batch_key(a) == batch_key(same)
    assert batch_key(a) != batch_key({**a, "x": np.zeros((3, 5), np.float32)})
    assert batch_key(a) != batch_key({**a, "x": np.zeros((3, 4), np.float64)})


def test_merge_then_split_gives_each_request_its_rows_back() -> None:
    parts = [
        {"x": np.full((1, 2), 1.0), "s": np.array(["a"], dtype=object)},
        {"x": np.full((3, 2), 2.0), "s": np.array(["b", "c", "d"], dtype=object)},
    ]
    merged = merge_inputs(parts)
    assert merged["x"].shape == (4, 2)
    assert merged["s"].tolist() == ["a", "b", "c", "d"]
    pieces = split_outputs({"y": merged["x"] * 10, "t": merged["s"]}, [1, 3])
    np.testing.assert_array_equal(pieces[0]["y"], np.full((1, 2), 10.0))
    np.testing.assert_array_equal(pieces[1]["y"], np.full((3, 2), 20.0))
    assert pieces[1]["t"].tolist() == ["b", "c", "d"]
    with pytest.raises(BatchSplitError, match=r"output 'sum' has shape \[1, 2\] after a merged"):
        split_outputs({"sum": merged["x"].sum(axis=0, keepdims=True)}, [1, 3])


X = TensorSpec("x", from_name("FP32"), (-1, 2))  # type: ignore[arg-type]
Y = TensorSpec("y", from_name("FP32"), (-1, 2))  # type: ignore[arg-type]


class FakeModel:
    """y = x + 1, row by row; fails on rows holding -1; can be held to let requests queue."""

    def __init__(self, *, reduce: bool = False) -> None:
        self.signature = ModelSignature((X,), (Y,))
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.reduce = reduce
        self.lock = threading.Lock()

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        self.gate.wait(5)
        x = inputs["x"]
        with self.lock:
            self.calls.append(int(x.shape[0]))
        if (x == -1).any():
            raise InputRejected("the model refused the input: -1")
        y = x + 1
        if self.reduce:
            y = y.sum(axis=0, keepdims=True)
        return {"y": y}


def engine_for(model: FakeModel, **options: object) -> InferenceEngine:
    engine = InferenceEngine(model, InferenceMetrics("m", "v"), **options)  # type: ignore[arg-type]
    engine.start()
    return engine


def rows(value: float, count: int = 1) -> dict[str, Array]:
    return {"x": np.full((count, 2), value, np.float32)}


async def burst(
    engine: InferenceEngine, model: FakeModel, requests: list[dict[str, Array]]
) -> list:
    """Hold the model while the requests queue, then release it; outcomes in order."""
    model.gate.clear()
    blocker = asyncio.ensure_future(engine.infer(rows(0.0), ("y",)))
    # The blocker is dispatched (and its thread waits at the gate) before the others queue.
    while engine.metrics.stats.session_runs == 0:  # noqa: ASYNC110 - engine state, no event
        await asyncio.sleep(0.001)
    tasks = [asyncio.ensure_future(engine.infer(r, ("y",))) for r in requests]
    for _ in range(3):
        await asyncio.sleep(0)  # each task reaches submit() (or the executor) at its first step
    model.gate.set()
    await blocker
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_concurrent_requests_share_runs_and_get_their_own_rows() -> None:
    model = FakeModel()
    engine = engine_for(model, max_batch_size=8)
    try:
        outcomes = await burst(engine, model, [rows(i, 1 + i % 2) for i in range(6)])
        for i, outcome in enumerate(outcomes):
            np.testing.assert_array_equal(outcome["y"], np.full((1 + i % 2, 2), i + 1.0))
        # 1 blocker run + the 9 queued rows in one run (max 8 rows → two runs at most).
        assert len(model.calls) <= 3
        assert sum(model.calls) == 1 + 9
        assert max(model.calls) <= 8
    finally:
        await engine.stop()


async def test_a_failing_request_in_a_batch_fails_alone() -> None:
    model = FakeModel()
    engine = engine_for(model, max_batch_size=8)
    try:
        outcomes = await burst(engine, model, [rows(1), rows(-1), rows(3)])
        np.testing.assert_array_equal(outcomes[0]["y"], np.full((1, 2), 2.0))
        assert isinstance(outcomes[1], InvalidArgument)
        np.testing.assert_array_equal(outcomes[2]["y"], np.full((1, 2), 4.0))
        assert engine.metrics.stats.batch_fallbacks == 1
    finally:
        await engine.stop()


async def test_incompatible_shapes_are_not_merged() -> None:
    model = FakeModel()
    model.signature = ModelSignature(
        (TensorSpec("x", X.datatype, (-1, -1)),), (TensorSpec("y", X.datatype, (-1, -1)),)
    )
    engine = engine_for(model, max_batch_size=8)
    try:
        wide = {"x": np.full((1, 3), 5.0, np.float32)}
        outcomes = await burst(engine, model, [rows(1), wide, rows(2)])
        assert outcomes[1]["y"].shape == (1, 3)
        assert outcomes[2]["y"].shape == (1, 2)
        # The two [*, 2] requests went together; the [*, 3] one on its own.
        assert sorted(model.calls[1:]) == [1, 2]
    finally:
        await engine.stop()


async def test_outputs_that_do_not_split_turn_batching_off() -> None:
    model = FakeModel(reduce=True)
    engine = engine_for(model, max_batch_size=8)
    try:
        outcomes = await burst(engine, model, [rows(1), rows(2)])
        assert [o["y"].tolist() for o in outcomes] == [[[2.0, 2.0]], [[3.0, 3.0]]]
        assert not engine.batching
        result = await engine.infer(rows(1, 2), ("y",))
        assert result["y"].tolist() == [[4.0, 4.0]]
    finally:
        await engine.stop()


async def test_delay_waits_for_more_but_full_and_preferred_batches_go_at_once() -> None:
    model = FakeModel()
    engine = engine_for(model, max_batch_size=4, max_queue_delay_us=200_000)
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        await engine.infer(rows(1), ("y",))
        assert loop.time() - started >= 0.19  # alone: waited out the delay
        started = loop.time()
        await asyncio.gather(*(engine.infer(rows(i), ("y",)) for i in range(4)))
        assert loop.time() - started < 0.15  # full at 4 rows: no wait
        assert model.calls[-1] == 4
    finally:
        await engine.stop()
    model = FakeModel()
    engine = engine_for(
        model, max_batch_size=8, max_queue_delay_us=2_000_000, preferred_batch_sizes=[2]
    )
    try:
        started = loop.time()
        await asyncio.gather(engine.infer(rows(1), ("y",)), engine.infer(rows(2), ("y",)))
        assert loop.time() - started < 0.5
        assert model.calls == [2]
    finally:
        await engine.stop()


async def test_cancelled_callers_are_skipped_and_stop_fails_the_queue() -> None:
    model = FakeModel()
    engine = engine_for(model, max_batch_size=4, max_queue_delay_us=5_000_000)
    try:
        gone = asyncio.ensure_future(engine.infer(rows(1), ("y",)))
        await asyncio.sleep(0.01)
        gone.cancel()
        waiting = asyncio.ensure_future(engine.infer(rows(2), ("y",)))
        await asyncio.sleep(0.01)
    finally:
        await engine.stop()
    with pytest.raises(Unavailable, match="stopping"):
        await waiting
    assert model.calls == []


async def test_requests_too_big_for_a_batch_run_alone() -> None:
    model = FakeModel()
    engine = engine_for(model, max_batch_size=2)
    try:
        result = await engine.infer(rows(1, 5), ("y",))
        assert result["y"].shape == (5, 2)
        assert model.calls == [5]
    finally:
        await engine.stop()


async def test_batcher_runs_in_threads_not_on_the_loop() -> None:
    seen: list[str] = []

    class ThreadModel(FakeModel):
        def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
            seen.append(threading.current_thread().name)
            return super().run(inputs, outputs)

    for size in (1, 4):
        engine = engine_for(ThreadModel(), max_batch_size=size)
        try:
            await engine.infer(rows(1), ("y",))
        finally:
            await engine.stop()
    assert all(name.startswith("onnxruntime") for name in seen), seen


def test_executor_is_bounded_by_max_concurrent_runs() -> None:
    engine = InferenceEngine(FakeModel(), InferenceMetrics("m", "v"), max_concurrent_runs=3)  # type: ignore[arg-type]
    assert isinstance(engine._executor, ThreadPoolExecutor)
    assert engine._executor._max_workers == 3
    engine._executor.shutdown()


async def test_instruments_record_requests_runs_batches_and_queue_delay() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    metrics = InferenceMetrics("m", "blue", meter_provider=MeterProvider(metric_readers=[reader]))
    model = FakeModel()
    engine = InferenceEngine(model, metrics, max_batch_size=8)  # type: ignore[arg-type]
    engine.start()
    try:
        await burst(engine, model, [rows(1), rows(2, 3)])
    finally:
        await engine.stop()
    metrics.request_done("OK", 0.002)
    metrics.request_done("INVALID_ARGUMENT", 0.001)
    metrics.capture_dropped("queue_full", 2)

    data = reader.get_metrics_data()
    points: dict[str, list] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points[metric.name] = list(metric.data.data_points)
    durations = points["mlbus.inference.request.duration"]
    requests = {p.attributes["rpc.grpc.status"]: p.count for p in durations}
    assert requests == {"OK": 1, "INVALID_ARGUMENT": 1}
    assert all(p.attributes["mlbus.endpoint"] == "m" for p in durations)
    rows_hist = points["mlbus.inference.batch.size"][0]  # the blocker + one batch
    assert (rows_hist.count, rows_hist.sum, rows_hist.max) == (2, 5, 4)
    merged = points["mlbus.inference.batch.requests"][0]
    assert (merged.count, merged.max) == (2, 2)
    assert points["mlbus.inference.queue.delay"][0].count == 3
    assert points["mlbus.inference.request.duration"][0].explicit_bounds[0] == 0.0001
    dropped = points["mlbus.inference.capture.dropped"][0]
    assert (dropped.value, dropped.attributes["reason"]) == (2, "queue_full")
