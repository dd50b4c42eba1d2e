"""Asynchronous inference: sustained requests/s and end-to-end latency, InvokeAsync → the
completion notification on the endpoint's result topic, for small inline payloads.

The stack is ``bench_transform``'s: the registry and the router in this process, the
router's controller spawning one real worker process (``python -m mlbus.inference``) for an
endpoint serving scikit-learn's logistic regression on 30 features (skl2onnx). Every
request is one row, FP32 [1, 30] in raw contents (~200 bytes serialized): well under the
inline limit, so it travels on the request topic itself.

A reader in this process follows ``mlbus.inference.<endpoint>.results.v1`` (no consumer
group, from the end, ``fetch_max_wait_ms`` 10) and stamps each ``AsyncInferenceCompleted``
when it arrives; a request's latency is that stamp minus the moment just before its
``InvokeAsync`` call. Per repetition, in this order:

* ``realtime``: ModelInfer through the router, one call at a time (the same row), as the
  reference for what the model and the front door cost without the topic hops;
* ``light``: InvokeAsync at a steady 25 requests/s (latency with no queue);
* ``sustained``: InvokeAsync keeping ``window`` requests outstanding (submitted, no
  notification yet) until ``count`` requests completed or ``duration`` passed: the
  sustained rate and the latency under that load.

Every request must complete with a notification; the ones missing when a phase ends are
counted (and named in the notes). Figures are medians over repetitions; a request's
latency samples are pooled within a phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from bench_transform import FEATURES, Stack, build_model  # noqa: E402

TITLE = "Asynchronous inference: InvokeAsync → completion notification, small inline payloads"


@dataclass(frozen=True)
class Plan:
    reps: int
    realtime: int = 300
    light: int = 150
    light_rate: float = 25.0
    window: int = 64
    count: int = 3000
    duration_s: float = 20.0


FULL = Plan(reps=3)
QUICK = Plan(reps=1, realtime=100, light=50, count=600, duration_s=8.0)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Notifications:
    """Completion notifications of one endpoint, stamped on arrival."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.arrived: dict[str, float] = {}
        self._waiters: dict[str, asyncio.Future[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self.consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=10,
        )
        await self.consumer.start()
        deadline = time.monotonic() + 30
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no partitions of {self.topic}")
            await asyncio.sleep(0.05)
        for tp in self.consumer.assignment():
            await self.consumer.position(tp)  # resolve "latest" before anything is sent
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        from mlbus.inference.v1 import events_pb2 as ev

        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    inference_id = ev.AsyncInferenceCompleted.FromString(record.value).inference_id
                    self.arrived.setdefault(inference_id, now)
                    waiter = self._waiters.pop(inference_id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(now)

    def wait(self, inference_id: str) -> asyncio.Future[float]:
        """A future set to the arrival time of ``inference_id``'s notification."""
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if inference_id in self.arrived:
            future.set_result(self.arrived[inference_id])
        else:
            self._waiters[inference_id] = future
        return future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.consumer.stop()


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan) -> None:
        self.args = args
        self.plan = plan
        self.runs: dict[str, list[float]] = {}
        self.meta: dict[str, tuple[str, str, str]] = {}
        self.missing: list[str] = []
        self.requests = 0

    def log(self, text: str) -> None:
        if self.args.verbose:
            print(f"  {text}", flush=True)

    def add(self, key: str, value: float, label: str, unit: str, better: str) -> None:
        self.runs.setdefault(key, []).append(value)
        self.meta[key] = (label, unit, better)

    async def main(self) -> None:
        from mlbus.router.v1 import router_pb2_grpc as rpb_grpc

        with tempfile.TemporaryDirectory(prefix="mlbus-bench-async-") as tmp:
            stack = Stack(self.args.bootstrap_servers, Path(tmp) / "home")
            await stack.start()
            try:
                endpoint = "bench-async"
                await stack.deploy(endpoint, build_model(), 1)
                self.stub = rpb_grpc.RouterServiceStub(stack.channel)
                from mlbus.inference.v2 import grpc_service_pb2_grpc as pb_grpc

                self.infer_stub = pb_grpc.GRPCInferenceServiceStub(stack.channel)
                self.endpoint = endpoint
                row = np.random.default_rng(0).standard_normal((1, FEATURES)).astype(np.float32)
                self.request = self._request(row)
                self.notes_ = Notifications(
                    self.args.bootstrap_servers,
                    stack.router.catalogue.async_results(endpoint).name,
                )
                await self.notes_.start()
                try:
                    await self.warm_up()
                    for rep in range(self.plan.reps):
                        self.log(f"repetition {rep + 1}/{self.plan.reps}")
                        await self.realtime()
                        await self.light(rep)
                        await self.sustained(rep)
                finally:
                    await self.notes_.stop()
            finally:
                await stack.stop()

    def _request(self, row: np.ndarray) -> Any:
        from mlbus.inference.v2 import grpc_service_pb2 as pb

        request = pb.ModelInferRequest(model_name="bench-async")
        request.inputs.add(name="x", datatype="FP32", shape=list(row.shape))
        request.raw_input_contents.append(row.tobytes())
        return request

    async def invoke(self, inference_id: str) -> float:
        """Submit one request; the moment just before the call."""
        from mlbus.router.v1 import router_pb2 as rpb

        started = time.perf_counter()
        await self.stub.InvokeAsync(
            rpb.InvokeAsyncRequest(
                endpoint=self.endpoint, request=self.request, inference_id=inference_id
            ),
            timeout=30,
        )
        self.requests += 1
        return started

    async def warm_up(self) -> None:
        """Until notifications come back (the worker's consumer group has joined)."""
        deadline = time.monotonic() + 120
        while True:
            inference_id = f"warm-{uuid.uuid4().hex[:12]}"
            await self.invoke(inference_id)
            try:
                await asyncio.wait_for(self.notes_.wait(inference_id), 10)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise RuntimeError("no completion notification within 120 s") from None
        for _ in range(20):
            inference_id = f"warm-{uuid.uuid4().hex[:12]}"
            await self.invoke(inference_id)
            await asyncio.wait_for(self.notes_.wait(inference_id), 30)

    async def realtime(self) -> None:
        latencies = []
        for _ in range(self.plan.realtime):
            started = time.perf_counter()
            await self.infer_stub.ModelInfer(self.request, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
        self.add(
            "realtime_p50",
            percentile(latencies, 0.5),
            "ModelInfer via the router, c=1: p50",
            "ms",
            "lower",
        )
        self.add(
            "realtime_p99",
            percentile(latencies, 0.99),
            "ModelInfer via the router, c=1: p99",
            "ms",
            "lower",
        )
        self.log(
            f"realtime c=1: p50 {percentile(latencies, 0.5):.2f} ms, "
            f"p99 {percentile(latencies, 0.99):.2f} ms"
        )

    async def _finish(
        self, pending: dict[str, tuple[float, asyncio.Future[float]]], phase: str, wait_s: float
    ) -> list[float]:
        """Latencies (ms) of ``pending`` once their notifications arrived (up to ``wait_s``)."""
        futures = [future for _, future in pending.values()]
        if futures:
            await asyncio.wait(futures, timeout=wait_s)
        latencies = []
        missing = 0
        for started, future in pending.values():
            if future.done():
                latencies.append((future.result() - started) * 1000)
            else:
                future.cancel()
                missing += 1
        if missing:
            self.missing.append(f"{phase}: {missing} of {len(pending)} without a notification")
        return latencies

    async def light(self, rep: int) -> None:
        plan = self.plan
        pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        period = 1 / plan.light_rate
        began = time.perf_counter()
        for k in range(plan.light):
            delay = began + k * period - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            inference_id = f"light-{rep}-{k}-{uuid.uuid4().hex[:6]}"
            future = self.notes_.wait(inference_id)
            pending[inference_id] = (await self.invoke(inference_id), future)
        latencies = await self._finish(pending, f"repetition {rep + 1} light", 30)
        self.add(
            "light_p50",
            percentile(latencies, 0.5),
            f"InvokeAsync → notification at {plan.light_rate:g} req/s: p50",
            "ms",
            "lower",
        )
        self.add(
            "light_p99",
            percentile(latencies, 0.99),
            f"InvokeAsync → notification at {plan.light_rate:g} req/s: p99",
            "ms",
            "lower",
        )
        self.log(
            f"async at {plan.light_rate:g}/s: p50 {percentile(latencies, 0.5):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms"
        )

    async def sustained(self, rep: int) -> None:
        plan = self.plan
        pending: dict[str, tuple[float, asyncio.Future[float]]] = {}
        slots = asyncio.Semaphore(plan.window)
        submitted = 0
        began = time.perf_counter()
        end = began + plan.duration_s

        def release(_: asyncio.Future[float]) -> None:
            slots.release()

        while submitted < plan.count and time.perf_counter() < end:
            await slots.acquire()
            inference_id = f"load-{rep}-{submitted}-{uuid.uuid4().hex[:6]}"
            future = self.notes_.wait(inference_id)
            future.add_done_callback(release)
            pending[inference_id] = (await self.invoke(inference_id), future)
            submitted += 1
        latencies = await self._finish(pending, f"repetition {rep + 1} sustained", 60)
        done = [f.result() for _, f in pending.values() if f.done() and not f.cancelled()]
        elapsed = (max(done) - began) if done else float("nan")
        rate = len(done) / elapsed if done else 0.0
        self.add(
            "sustained_rate",
            rate,
            f"InvokeAsync with {plan.window} outstanding: completions/s",
            "req/s",
            "higher",
        )
        self.add(
            "sustained_p50",
            percentile(latencies, 0.5),
            f"InvokeAsync with {plan.window} outstanding: p50",
            "ms",
            "lower",
        )
        self.add(
            "sustained_p99",
            percentile(latencies, 0.99),
            f"InvokeAsync with {plan.window} outstanding: p99",
            "ms",
            "lower",
        )
        self.log(
            f"async sustained ({plan.window} outstanding, {len(done)} requests): {rate:,.0f}/s, "
            f"p50 {percentile(latencies, 0.5):.1f} ms, p99 {percentile(latencies, 0.99):.1f} ms"
        )

    def result(self) -> dict[str, Any]:
        plan = self.plan
        figures = {
            key: {"label": label, "unit": unit, "better": better, "runs": self.runs[key]}
            for key, (label, unit, better) in self.meta.items()
        }
        ratios = {
            "light_vs_realtime_p50": {
                "label": "async p50 at a light load ÷ real-time c=1 p50",
                "numerator": "light_p50",
                "denominator": "realtime_p50",
                "per_message_cost": False,
            },
        }
        notes = []
        if self.args.quick:
            notes.append("QUICK RUN: 1 repetition, fewer requests; not for comparison.")
        notes.append(
            f"One worker (default settings: batching off, one session run at a time). Per "
            f"repetition: {plan.realtime} real-time calls, {plan.light} async requests at "
            f"{plan.light_rate:g}/s, then async requests with {plan.window} outstanding until "
            f"{plan.count} completed or {plan.duration_s:g} s passed. Requests submitted in all: "
            f"{self.requests:,}."
        )
        notes.append(
            "Latency runs from just before InvokeAsync to the completion notification reaching "
            "a reader in the benchmark process (result topic, fetch_max_wait_ms 10): it "
            "includes the router's publish (linger_ms 5), the worker's fetch, the run, the "
            "result and outcome written to the object store (put-if-absent, fsync) and the "
            "notification's publish and fetch."
        )
        notes.append("In the ratio table 'wrapper' reads as asynchronous and 'raw' as real-time.")
        if self.missing:
            notes.append("MISSING NOTIFICATIONS: " + "; ".join(self.missing) + ".")
        else:
            notes.append("Every request got its completion notification.")
        return {
            "title": TITLE,
            "repetitions": plan.reps,
            "config": {"plan": plan.__dict__},
            "figures": figures,
            "ratios": ratios,
            "notes": notes,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(**{**plan.__dict__, "reps": args.reps})
    bench = Bench(args, plan)
    asyncio.run(bench.main())
    return bench.result()
