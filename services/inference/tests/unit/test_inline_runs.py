"""Inline session runs: cheap runs go on the event loop, expensive or concurrent ones to the
threads, and a failing inline run fails only its own request (pure domain, fake models)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from mlbus.core.errors import InvalidArgument
from mlbus.inference.domain.datatypes import from_name
from mlbus.inference.domain.engine import InferenceEngine, RunCost
from mlbus.inference.domain.errors import InputRejected
from mlbus.inference.domain.signature import ModelSignature, TensorSpec
from mlbus.inference.domain.tensors import Array
from mlbus.inference.metrics import InferenceMetrics

FP32 = from_name("FP32")
assert FP32 is not None
SIGNATURE = ModelSignature((TensorSpec("x", FP32, (-1, 2)),), (TensorSpec("y", FP32, (-1, 2)),))


class Model:
    """y = x + 1; refuses rows holding -1; burns ``cpu_s`` of CPU per run (not sleep: runs
    are timed by CPU time in threads); records the thread of every run."""

    def __init__(self, cpu_s: float = 0.0) -> None:
        self.signature = SIGNATURE
        self.cpu_s = cpu_s
        self.threads: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def run(self, inputs: Mapping[str, Array], outputs: Sequence[str]) -> dict[str, Array]:
        self.threads.append(threading.current_thread().name)
        self.gate.wait(5)
        if self.cpu_s:
            until = time.thread_time() + self.cpu_s
            while time.thread_time() < until:
                pass
        x = inputs["x"]
        if (x == -1).any():
            raise InputRejected("the model refused the input: -1")
        return {"y": x + 1}


def rows(value: float, count: int = 1) -> dict[str, Array]:
    return {"x": np.full((count, 2), value, np.float32)}


def engine_for(model: Model, **options: object) -> InferenceEngine:
    engine = InferenceEngine(model, InferenceMetrics("m", "v"), **options)  # type: ignore[arg-type]
    engine.start()
    return engine


MAIN = threading.current_thread().name


def test_run_cost_estimate() -> None:
    cost = RunCost()
    assert cost.estimate(1) == math.inf  # nothing timed yet: never inline
    cost.observe(0.000_030, 1, inline=False)
    assert cost.estimate(1) == pytest.approx(0.000_030)  # from thread runs until...
    cost.observe(0.000_010, 1, inline=True)
    assert cost.estimate(1) == pytest.approx(0.000_010)  # ...one was timed inline: the lower
    cost.observe(0.000_210, 1, inline=True)  # one slow inline run moves it a little
    assert cost.estimate(1) == pytest.approx(0.000_030)
    assert cost.inline == pytest.approx(0.000_030)
    cost.observe(0.000_010, 1, inline=True)  # and a fast one most of the way back
    assert cost.inline == pytest.approx(0.000_020)
    assert cost.estimate(10) == pytest.approx(0.000_200)  # more rows: proportionally more
    for _ in range(60):
        cost.observe(0.001, 1, inline=True)
        cost.observe(0.001, 1, inline=False)
    assert cost.estimate(1) == pytest.approx(0.001, rel=0.01)  # follows a slower model
    assert cost.estimate(1) == cost.estimate(0)  # fewer rows are never assumed cheaper


async def test_cheap_runs_go_inline_once_timed() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=10_000)
    try:
        for i in range(5):
            result = await engine.infer(rows(i), ("y",))
            np.testing.assert_array_equal(result["y"], np.full((1, 2), i + 1.0))
    finally:
        await engine.stop()
    # The first run had no timing yet and went to a thread; the others ran on the loop.
    assert model.threads[0].startswith("onnxruntime")
    assert model.threads[1:] == [MAIN] * 4
    stats = engine.metrics.stats
    assert (stats.session_runs, stats.inline_runs, stats.session_rows) == (5, 4, 5)


async def test_expensive_runs_stay_in_threads() -> None:
    model = Model(cpu_s=0.003)
    engine = engine_for(model, inline_run_max_us=1_000)
    try:
        for i in range(4):
            await engine.infer(rows(i), ("y",))
    finally:
        await engine.stop()
    assert all(name.startswith("onnxruntime") for name in model.threads), model.threads
    assert engine.cost.estimate(1) >= 0.002
    assert engine.metrics.stats.inline_runs == 0


async def test_inline_off_by_default_and_with_zero() -> None:
    for options in ({}, {"inline_run_max_us": 0}):
        model = Model()
        engine = engine_for(model, **options)
        try:
            for i in range(3):
                await engine.infer(rows(i), ("y",))
        finally:
            await engine.stop()
        assert all(name.startswith("onnxruntime") for name in model.threads)


async def test_large_requests_of_a_cheap_model_go_to_threads() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=1_000)
    try:
        await engine.infer(rows(1), ("y",))  # timed in a thread
        engine.cost.inline = 0.000_050  # a usual one-row run: 50 µs
        await engine.infer(rows(1), ("y",))  # 50 µs estimated: inline
        await engine.infer(rows(1, 100), ("y",))  # 100 rows → 5 ms estimated: thread
    finally:
        await engine.stop()
    assert model.threads[1] == MAIN
    assert model.threads[2].startswith("onnxruntime")


async def test_a_failing_inline_run_fails_alone() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=10_000)
    try:
        await engine.infer(rows(0), ("y",))  # timed in a thread
        outcomes = await asyncio.gather(
            engine.infer(rows(1), ("y",)),
            engine.infer(rows(-1), ("y",)),
            engine.infer(rows(3), ("y",)),
            return_exceptions=True,
        )
        after = await engine.infer(rows(4), ("y",))
    finally:
        await engine.stop()
    np.testing.assert_array_equal(outcomes[0]["y"], np.full((1, 2), 2.0))  # type: ignore[index]
    assert isinstance(outcomes[1], InvalidArgument)
    assert "refused the input" in outcomes[1].message
    np.testing.assert_array_equal(outcomes[2]["y"], np.full((1, 2), 4.0))  # type: ignore[index]
    np.testing.assert_array_equal(after["y"], np.full((1, 2), 5.0))
    assert model.threads[1:] == [MAIN] * 4


async def test_no_inline_run_while_a_thread_run_is_in_flight() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=10_000)
    try:
        await engine.infer(rows(0), ("y",))  # timed: cheap
        engine.cost.inline = 0.000_050
        model.gate.clear()
        held = asyncio.ensure_future(engine.infer(rows(1, 5000), ("y",)))  # 250 ms: a thread
        while len(model.threads) < 2:  # noqa: ASYNC110 - the model's state, no event
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(engine.infer(rows(2), ("y",)))
        await asyncio.sleep(0.01)
        assert not second.done()  # queued behind the held run, not run on the loop
        model.gate.set()
        await asyncio.gather(held, second)
    finally:
        await engine.stop()
    assert all(name.startswith("onnxruntime") for name in model.threads[1:]), model.threads


async def test_with_batching_inline_only_when_the_batcher_is_idle_and_never_with_a_delay() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=10_000, max_batch_size=8)
    try:
        await engine.infer(rows(0), ("y",))  # through the batcher, in a thread: timed
        engine.cost.inline = 0.000_050
        await engine.infer(rows(1), ("y",))  # batcher idle: inline
        model.gate.clear()
        # 5000 rows: 250 ms estimated, and more than a batch: alone, in a thread.
        blocker = asyncio.ensure_future(engine.infer(rows(1, 5000), ("y",)))
        while len(model.threads) < 3:  # noqa: ASYNC110 - the model's state, no event
            await asyncio.sleep(0.001)
        queued = [asyncio.ensure_future(engine.infer(rows(i), ("y",))) for i in range(3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        await asyncio.gather(blocker, *queued)
    finally:
        await engine.stop()
    assert model.threads[1] == MAIN
    assert all(name.startswith("onnxruntime") for name in model.threads[2:]), model.threads

    delayed = Model()
    engine = engine_for(delayed, inline_run_max_us=10_000, max_batch_size=8, max_queue_delay_us=1)
    try:
        for i in range(3):
            await engine.infer(rows(i), ("y",))
    finally:
        await engine.stop()
    assert all(name.startswith("onnxruntime") for name in delayed.threads)


async def test_the_warm_up_timing_lets_the_first_request_run_inline() -> None:
    model = Model()
    engine = engine_for(model, inline_run_max_us=1_000, warm_run_s=0.000_020)
    try:
        await engine.infer(rows(1), ("y",))
    finally:
        await engine.stop()
    assert model.threads == [MAIN]


async def test_runs_estimated_somewhat_above_the_limit_are_probed_inline_now_and_then() -> None:
    model = Model(cpu_s=0.002)
    engine = engine_for(model, inline_run_max_us=1_000)  # 2 ms: within 4× the limit
    try:
        for i in range(1 + 2 * InferenceEngine.PROBE_EVERY):
            await engine.infer(rows(i), ("y",))
    finally:
        await engine.stop()
    assert model.threads.count(MAIN) == 2, model.threads  # one in PROBE_EVERY
    assert engine.cost.inline is not None
    assert engine.cost.inline >= 0.0015

    slow = Model(cpu_s=0.005)  # beyond 4× the limit: never inline
    engine = engine_for(slow, inline_run_max_us=1_000)
    try:
        for i in range(1 + InferenceEngine.PROBE_EVERY):
            await engine.infer(rows(i), ("y",))
    finally:
        await engine.stop()
    assert MAIN not in slow.threads
